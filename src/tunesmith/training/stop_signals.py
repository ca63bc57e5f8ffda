"""Ctrl-C and SIGTERM during training: checkpoint and stop after the current step, not in the middle of one."""

from __future__ import annotations

import signal
import time


class StopSignals:
    """First Ctrl-C (or SIGTERM: what torchrun, a scheduler or `docker stop` sends) asks the loop to checkpoint
    and stop after the current step; a second Ctrl-C aborts. A second signal within DUPLICATE_S of the first is
    the same request: under torchrun a Ctrl-C reaches each worker from the terminal and again from the agent."""

    DUPLICATE_S = 2.0

    def __init__(self):
        self.requested = False
        self._first: float | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self._first is None:
            self.requested, self._first = True, now
        elif signum == signal.SIGINT and now - self._first > self.DUPLICATE_S:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
