"""The one-way layers of docs/ARCHITECTURE.md, checked by import-linter with the contract in pyproject.toml: the
package keeps them, and a deliberate reach upwards (which would close a cycle) breaks the check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.server  # lint-imports as a subprocess

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    """import-linter on the ``tunesmith`` package found first under ``source_root``."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    # --no-cache: the cache is keyed by module names, and the copy below has the same names as the real package
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=source_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers():
    result = lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_check(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(REPO / "src" / "tunesmith", copy / "tunesmith", ignore=shutil.ignore_patterns("__pycache__"))
    check = copy / "tunesmith" / "data" / "check.py"
    # data -> training: training already imports data, so this closes a cycle as well as breaking the order
    check.write_text(check.read_text() + "\nfrom tunesmith.training import defaults  # noqa: E402,F401\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "tunesmith.data is not allowed to import tunesmith.training" in result.stdout
    assert "tunesmith.data.check -> tunesmith.training.defaults" in result.stdout
