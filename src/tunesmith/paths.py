"""Where tunesmith keeps its state.

Everything lives under one folder, ``TUNESMITH_HOME`` (default ``~/.tunesmith``):

    registry/NAME/VERSION/   immutable model versions (see ``tunesmith.registry``)
    runs/NAME/               work folders of unfinished runs: checkpoints, metrics, config
    cache/bases/NAME/        base models converted once to safetensors

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
