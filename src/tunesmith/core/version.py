"""The installed version of tunesmith, read from the package metadata: pyproject.toml is its one source."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("tunesmith")
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
