"""`tunesmith train --nproc N [--nnodes M --rdzv-endpoint HOST:PORT]`: the same command again, as N processes on
each of M machines, through PyTorch's own launcher (torchrun's elastic agent, run in this process).

    tunesmith train DATA ... --nproc 2
      = torchrun --standalone --nproc-per-node 2 -m tunesmith train DATA ...
    tunesmith train DATA ... --nproc 4 --nnodes 2 --rdzv-endpoint HOST:29500      (the same line on each machine)
      = torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m tunesmith train ...

Running the agent here rather than the torchrun command lets what goes wrong be said in one line instead of
torchrun's failure report: a port already taken (where torchrun would wait for ever on it), machines that never
join (a timeout, ``--join-timeout``), the process that failed first. The processes find each other through
torchrun's environment (training.distributed.join).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket

from tunesmith.core.errors import TunesmithError

# The launcher's flags and whether each takes a value: they are for this process, not for the ones it starts.
LAUNCH_FLAGS = {"--nproc": True, "--nnodes": True, "--rdzv-endpoint": True, "--join-timeout": True}
JOIN_TIMEOUT = 600  # seconds for every machine to join (torchrun's own default)


def without_launch_flags(argv: list[str]) -> list[str]:
    """``argv`` less the launcher's flags and their values (either spelling)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = LAUNCH_FLAGS[arg]
        elif arg.split("=", 1)[0] not in LAUNCH_FLAGS:
            kept.append(arg)
    return kept


def torchrun_arguments(
    argv: list[str], nproc: int, nnodes: int = 1, endpoint: str | None = None, join_timeout: int = JOIN_TIMEOUT
) -> list[str]:
    """torchrun's command line (less the program name) for ``argv`` on ``nproc`` processes per machine."""
    if nnodes == 1 and endpoint is None:
        # a rendezvous on a free local port: no address to give, no port to collide with
        where = ["--standalone"]
    else:
        where = [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
        where += [f"--rdzv-conf=join_timeout={join_timeout}"]
    return [*where, f"--nproc-per-node={nproc}", "-m", "tunesmith", *without_launch_flags(argv)]


def relaunch(
    argv: list[str], nproc: int, nnodes: int = 1, endpoint: str | None = None, join_timeout: int = JOIN_TIMEOUT
) -> int:
    """Run ``argv`` (a `train` command line) as ``nproc`` processes on each of ``nnodes`` machines; the exit
    code: 0, 128 + the signal that stopped them (Ctrl-C: 130; every process has checkpointed), or 1.

    Each process gets an equal share of the CPU's threads unless OMP_NUM_THREADS says otherwise (torchrun
    would set 1). Ctrl-C reaches every process from the terminal: the workers checkpoint and stop, and the
    agent here waits for them (up to 30 s) rather than dying first."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

    if nproc < 1:
        raise TunesmithError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if nnodes < 1:
        raise TunesmithError(f"--nnodes {nnodes}: give the number of machines, 1 or more")
    if nnodes > 1 and endpoint is None:
        raise TunesmithError(
            f"--nnodes {nnodes}: give --rdzv-endpoint HOST:PORT, the same on every machine (HOST: one of them, "
            "reachable from the others)"
        )
    if endpoint is not None:
        _check_endpoint(endpoint)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # The agent's warnings (a death signal received, workers shut down) repeat what the workers say themselves.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    # The agent turns stop signals into SignalException while it runs; the handlers are put back after.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        torchrun.run(torchrun.parse_args(torchrun_arguments(argv, nproc, nnodes, endpoint, join_timeout)))
    except SignalException as stopped:
        return 128 + stopped.sigval
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        how = f"was killed ({failure.signal_name()})" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
        raise TunesmithError(f"process {rank} of the run {how} first; its own message, if any, is above") from None
    except RendezvousTimeoutError:
        raise TunesmithError(
            f"not all {nnodes} machines joined at {endpoint} within {join_timeout} s: start the same command, with "
            "the same --nnodes and --rdzv-endpoint, on every machine (or wait longer: --join-timeout SECONDS)"
        ) from None
    except RendezvousError as failure:
        raise TunesmithError(f"the processes could not meet at {endpoint or 'localhost'}: {failure}") from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


def _check_endpoint(endpoint: str) -> None:
    """Refuse an endpoint whose port is taken on this machine: torchrun would wait on it for ever. (On the other
    machines the address is not local and there is nothing to check.)"""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise TunesmithError(f"--rdzv-endpoint {endpoint}: give HOST:PORT, e.g. 10.0.0.1:29500")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)}
    except socket.gaierror as unknown:
        raise TunesmithError(f"--rdzv-endpoint {endpoint}: cannot resolve {host} ({unknown.strerror})") from None
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, int(port)))
            except OSError as taken:
                if taken.errno == errno.EADDRINUSE:
                    raise TunesmithError(
                        f"--rdzv-endpoint {endpoint}: port {port} is already in use on this machine (another "
                        "program, or an earlier run still holding it); choose another port, the same on every "
                        "machine"
                    ) from None
                # EADDRNOTAVAIL: the address is another machine's; it hosts the rendezvous
