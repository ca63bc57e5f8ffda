"""The worker process on the tiny model: it runs queued jobs one at a time in runner processes, a failed
job says why, a second worker on the same home waits for the first, and SIGTERM ends it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import wait_until
from tunesmith.core import paths
from tunesmith.serve.job_store import JobStore

ROWS = [
    {"text": f"Customer: CU-{1000 + i} Issue: no signal.", "label": "positive" if i % 2 else "negative"}
    for i in range(24)
]

pytestmark = pytest.mark.server  # worker processes


def queue(store: JobStore, job_id: str, model: str) -> None:
    store.create_job(
        job_id,
        model,
        "file-t",
        None,
        None,
        0,
        {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": "auto"},
        f"m-{job_id[-1]}",
        None,
    )
    store.transition(job_id, "queued", ("validating_files",))


def start_worker(log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.serve.worker"], env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT
    )


def test_worker_runs_jobs_in_order_and_a_second_worker_waits(home, tiny_model_dir, tmp_path):
    store = JobStore(paths.serve_db())
    (home / "files").mkdir(parents=True)
    (home / "files" / "file-t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    store.add_file("file-t", "calls.jsonl", "file-t.jsonl", 1, "fine-tune")
    queue(store, "ftjob-1", str(tiny_model_dir))
    queue(store, "ftjob-2", "/no/such/model")

    logs = [open(tmp_path / f"worker-{i}.log", "wb") for i in range(2)]
    first, second = start_worker(logs[0]), None
    try:
        # A claimed job means the first worker holds the lock, so the second one is the one that waits.
        wait_until(lambda: store.get_job("ftjob-1")["status"] != "queued", 60, "the first worker to claim ftjob-1")
        second = start_worker(logs[1])
        wait_until(
            lambda: not store.jobs_with_status("queued", "running"),
            120,
            "both jobs to finish",
            details=lambda: (tmp_path / "worker-0.log").read_text(),
        )
        done, failed = store.get_job("ftjob-1"), store.get_job("ftjob-2")
        assert done["status"] == "succeeded", (tmp_path / "worker-0.log").read_text()
        assert done["fine_tuned_model"] == "m-1:1" and failed["started_at"] >= done["finished_at"]
        assert failed["status"] == "failed"
        error = json.loads(failed["error"])
        assert error["code"] == "training_failed" and "/no/such/model" in error["message"]
        assert (home / "jobs" / "ftjob-1.log").read_text().strip()  # the runner's output

        wait_until(
            lambda: second.poll() is not None or "waiting for it to stop" in (tmp_path / "worker-1.log").read_text(),
            60,
            "the second worker to find the first one's lock",
        )
        assert second.poll() is None and "waiting for it to stop" in (tmp_path / "worker-1.log").read_text()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
        for log in logs:
            log.close()
