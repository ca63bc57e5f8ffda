"""Child processes that die with their parent: the worker with the server, a job runner with the worker."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "TUNESMITH_PARENT_PID"  # the pid a worker or runner must die with


PR_SET_PDEATHSIG = 1


def die_with_parent() -> int | None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has. Returns the
    parent's pid (None when started without one: a worker run by hand)."""
    expected = os.environ.pop(PARENT_ENV, None)
    if expected is None:
        return None
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(expected):  # the parent died before prctl took effect
        os._exit(0)
    return int(expected)
