"""Evaluation runs the page starts: ``tunesmith eval`` in a child process, its HTML report and JSON kept.

An evaluation takes minutes (every test example through the model and its baselines), so it runs beside
the server, not in it: a child process writing ``$TUNESMITH_HOME/reports/ID/`` (report.html, result.json,
log.txt, and meta.json first, saying what runs). A page reads that folder; nothing is held in memory, so a
reload or another reviewer sees the same state. The report is the one ``tunesmith eval --report`` writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.core import paths
from tunesmith.core.durable import atomic_write_text
from tunesmith.serve.protocol import new_id

LATENCY_SAMPLES = 4  # single requests timed per system: the report's latency, at a quarter of the CLI's cost


@dataclass(frozen=True)
class Evaluation:
    id: str
    folder: Path
    meta: dict

    @property
    def state(self) -> str:
        """running, done, or failed (its log says why)."""
        if (self.folder / "report.html").exists() and (self.folder / "result.json").exists():
            return "done"
        pid = self.meta.get("pid")
        if pid and _alive(pid):
            return "running"
        return "failed"

    def result(self) -> dict | None:
        path = self.folder / "result.json"
        return json.loads(path.read_text()) if path.exists() else None

    def log_tail(self, chars: int = 3000) -> str:
        path = self.folder / "log.txt"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def reports_dir() -> Path:
    return paths.home() / "reports"


def start(model: str, data: Path, data_name: str, purpose: str = "") -> Evaluation:
    """``tunesmith eval MODEL --data DATA`` in a child process; returns at once."""
    eval_id = new_id("eval")
    folder = reports_dir() / eval_id
    folder.mkdir(parents=True)
    meta = {"model": model, "data": data_name, "purpose": purpose, "created_at": int(time.time())}
    command = [
        sys.executable, "-m", "tunesmith", "eval", model, "--data", str(data),
        "--report", str(folder / "report.html"), "--json", str(folder / "result.json"),
        "--latency-samples", str(LATENCY_SAMPLES),
    ]  # fmt: skip
    with open(folder / "log.txt", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    meta["pid"] = process.pid
    atomic_write_text(folder / "meta.json", json.dumps(meta))
    return Evaluation(eval_id, folder, meta)


def get(eval_id: str) -> Evaluation | None:
    if not eval_id.startswith("eval-") or not eval_id[5:].isalnum():  # an id, never a path
        return None
    folder = reports_dir() / eval_id
    if not (folder / "meta.json").exists():
        return None
    return Evaluation(eval_id, folder, json.loads((folder / "meta.json").read_text()))


def for_model(model: str) -> list[Evaluation]:
    """The evaluations of ``model``, newest first."""
    found = [get(folder.name) for folder in reports_dir().glob("eval-*")] if reports_dir().exists() else []
    return sorted(
        (e for e in found if e is not None and e.meta["model"] == model),
        key=lambda e: e.meta["created_at"],
        reverse=True,
    )


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it when it has ended
        return finished == 0
    except ChildProcessError:  # not our child (a restarted server): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/cmdline").exists() and b"tunesmith" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return True
