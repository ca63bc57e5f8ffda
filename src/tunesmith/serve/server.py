"""``tunesmith serve``: the API process (uvicorn) and beside it the worker process that trains.

The worker is a child of this process and dies with it, even on SIGKILL (see serve.worker); the
queue in SQLite survives, so a job that was running when the server died resumes from its last
checkpoint when the server starts again.
"""

from __future__ import annotations

import ipaddress
import signal

import uvicorn

from tunesmith.core.errors import TunesmithError
from tunesmith.serve import worker
from tunesmith.serve.app import ServeSettings, create_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    if not api_key and not is_loopback(host):
        raise TunesmithError(
            f"refusing to serve on {host} without an API key: anyone who can reach this machine could use "
            "and train models. Set --api-key KEY (or TUNESMITH_API_KEY), or bind to 127.0.0.1"
        )


def serve(host: str, port: int, settings: ServeSettings, worker_enabled: bool = True, log_level: str = "info") -> None:
    check_bind(host, settings.api_key)
    app = create_app(settings)  # opens the store (creating it) before the worker looks at it
    process = None
    if worker_enabled:
        process = worker.start_worker()
    # uvicorn re-raises the signal that stopped it once it has shut down. SIGTERM's default action would
    # end this process there and then (the worker would die by PDEATHSIG, its job unsaved); as an
    # exception it reaches `finally`, which stops the worker in order: the job checkpoints and is queued again.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        if process is not None:
            worker.stop_worker(process)


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)
