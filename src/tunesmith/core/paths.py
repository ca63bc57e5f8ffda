"""Where tunesmith keeps its state.

Everything lives under one folder, ``TUNESMITH_HOME`` (default ``~/.tunesmith``):

    registry/NAME/VERSION/   immutable model versions (see ``tunesmith.registry``)
    runs/NAME/               work folders of unfinished runs: checkpoints, metrics, config
    cache/bases/NAME/        base models converted once to safetensors
    serve.db                 `tunesmith serve`: uploaded files, fine-tuning jobs, their events (SQLite)
    files/ID.EXT             uploaded files, named by their id (the user's file name is only in serve.db)
    jobs/ID.log              output of each fine-tuning job's training process
    worker.lock              held by the one worker that runs jobs for this home

``TUNESMITH_CACHE`` may point the cache elsewhere (tests share one converted base model
across many throw-away homes that way).
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".tunesmith").expanduser()


def cache_dir() -> Path:
    override = os.environ.get("TUNESMITH_CACHE")
    return Path(override).expanduser() if override else home() / "cache"


def registry_dir() -> Path:
    return home() / "registry"


def runs_dir() -> Path:
    return home() / "runs"


def serve_db() -> Path:
    return home() / "serve.db"


def files_dir() -> Path:
    return home() / "files"


def job_logs_dir() -> Path:
    return home() / "jobs"
