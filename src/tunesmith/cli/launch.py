"""`tunesmith train --nproc N`: the same command again, as N processes under PyTorch's launcher.

    tunesmith train DATA ... --nproc 2
      = python -m torch.distributed.run --standalone --nproc-per-node 2 -m tunesmith train DATA ...

On several machines, run torchrun yourself on each (README: More than one process). The processes find each
other through torchrun's environment (training.distributed.join).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tunesmith.core.errors import TunesmithError


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its --nproc flag and value (either spelling)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on a free local port: no address to give, no port to collide with
        f"--nproc-per-node={nproc}",
        "-m",
        "tunesmith",
        *without_nproc(argv),
    ]


def relaunch(argv: list[str], nproc: int) -> int:
    """Run ``argv`` (a `train` command line) as ``nproc`` processes; their exit code.

    Each process gets an equal share of the CPU's threads unless OMP_NUM_THREADS says otherwise (torchrun
    would set 1). Ctrl-C reaches every process from the terminal: the workers checkpoint and stop, and this
    one waits for them rather than dying first."""
    if nproc < 1:
        raise TunesmithError(f"--nproc {nproc}: give the number of processes, 1 or more")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    process = subprocess.Popen(torchrun_command(argv, nproc), env=env)
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    forward = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, forward)
    # torchrun reports workers that stopped on Ctrl-C as failed (1); the command says what happened: 130.
    return 130 if interrupted and code != 0 else code
