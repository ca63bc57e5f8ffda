"""A fine-tuning job's runner in-process on the tiny model: events, checkpoints, the published version,
nothing trained twice after a crash, and failures that say why in the user's terms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunesmith.core import paths
from tunesmith.registry import store as registry
from tunesmith.serve.job_runner import comparison_message, run_job
from tunesmith.serve.job_store import JobStore, job_object

# classification: the closing comparison scores labels (fast) instead of generating from a random model
ROWS = [
    {"text": f"Customer: CU-{1000 + i} Issue: no signal.", "label": "positive" if i % 2 else "negative"}
    for i in range(24)
]

# Training the tiny model: two threads on its tiny matrices wait on each other, 4-10x slower on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def running_job(store: JobStore, home, model: str, lines: list, hyperparameters: dict) -> str:
    (home / "files").mkdir(parents=True, exist_ok=True)
    (home / "files" / "file-t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines))
    store.add_file("file-t", "calls.jsonl", "file-t.jsonl", 1, "fine-tune")
    store.create_job(
        "ftjob-t",
        model,
        "file-t",
        None,
        "calls",
        0,
        {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"} | hyperparameters,
        "calls-t",
        None,
    )
    store.transition("ftjob-t", "queued", ("validating_files",))
    assert store.claim_next()["id"] == "ftjob-t"
    return "ftjob-t"


def messages(store: JobStore, job_id: str) -> list[str]:
    rows, _ = store.list_events(job_id, None, 1000)
    return [row["message"] for row in reversed(rows)]


def test_a_job_trains_publishes_and_is_never_trained_twice(home, tiny_model_dir):
    store = JobStore(paths.serve_db())
    job_id = running_job(
        store, home, str(tiny_model_dir), ROWS, {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 30.0}
    )
    assert run_job(store, store.get_job(job_id), parent=None) == 0

    job = job_object(store.get_job(job_id))
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == "calls-t:1" and job["error"] is None
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 30.0}
    assert job["trained_tokens"] > 0 and job["finished_at"]
    version = registry.get("calls-t:1")
    assert version.manifest["provenance"]["job"] == job_id
    assert version.manifest["config"]["lr"] == pytest.approx(30 * 3e-4)
    assert not (home / "runs" / "calls-t").exists()

    said = messages(store, job_id)
    assert said[0] == "Fine-tuning job started" and said[-1] == "The job has successfully completed"
    metrics = [row for row in store.list_events(job_id, None, 1000)[0] if row["type"] == "metrics"]
    steps = [json.loads(row["data"]) for row in reversed(metrics) if "step" in json.loads(row["data"])]
    assert [entry["step"] for entry in steps] == list(range(1, 13))  # 22 train rows / 4, 2 epochs
    assert all(entry["total_steps"] == 12 and entry["train_loss"] > 0 for entry in steps)
    assert any("valid_loss" in entry for entry in steps)
    comparison = [row for row in metrics if row["message"].startswith("validation: accuracy fine-tuned")]
    assert len(comparison) == 1 and "fine_tuned" in json.loads(comparison[0]["data"])
    assert "New fine-tuned model created: calls-t:1" in said
    checkpoints = [(row["step"], row["model"]) for row in store.list_checkpoints(job_id, None, 100)[0]]
    assert checkpoints == [
        (12, "calls-t:1"),
        (9, "calls-t:ckpt-step-9"),
        (6, "calls-t:ckpt-step-6"),
        (3, "calls-t:ckpt-step-3"),
    ]

    # a crash after publishing, before the job was marked: the next attempt finds the version again
    assert store.transition(job_id, "running", ("succeeded",), fine_tuned_model=None)
    assert run_job(store, store.get_job(job_id), parent=None) == 0
    assert [v.ref for v in registry.versions("calls-t")] == ["calls-t:1"]
    assert store.get_job(job_id)["fine_tuned_model"] == "calls-t:1"
    assert messages(store, job_id).count("Fine-tuning job started") == 1


def test_failures_name_the_users_file_and_the_cause(home, tiny_model_dir):
    store = JobStore(paths.serve_db())
    job_id = running_job(store, home, str(tiny_model_dir), ROWS[:4], {})
    # the stored file went bad after it was checked (the data check runs again before training)
    (home / "files" / "file-t.jsonl").write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    assert run_job(store, store.get_job(job_id), parent=None) == 0
    error = job_object(store.get_job(job_id))["error"]
    assert error["code"] == "invalid_training_file" and error["param"] == "training_file"
    assert "calls.jsonl:2" in error["message"] and str(home) not in error["message"]
    assert store.get_job(job_id)["status"] == "failed"
    assert registry.list_models() == []


def test_a_cancelled_job_is_not_marked_succeeded(home, tiny_model_dir):
    store = JobStore(paths.serve_db())
    job_id = running_job(store, home, "/no/such/model", ROWS, {})
    store.transition(job_id, "cancelled", ("running",))
    assert run_job(store, store.get_job(job_id), parent=None) == 0  # fails to load; the cancel stays
    assert store.get_job(job_id)["status"] == "cancelled" and store.get_job(job_id)["error"] is None


def test_comparison_message_says_how_clearly_it_helped():
    comparison = {
        "base": {"accuracy": 0.5},
        "few_shot": {"accuracy": 0.6, "shots": 8},
        "fine_tuned": {"accuracy": 0.65},
        "helped": True,
        "helped_clearly": False,
        "significance": {"few_shot": {"n": 32, "clear": False}},
    }
    assert comparison_message("classify", comparison) == (
        "validation: accuracy fine-tuned 65.0% vs base 50.0% vs 8-shot 60.0%; fine-tuning helped, "
        "but not clearly (within the noise of 32 examples)"
    )
    assert comparison_message("classify", comparison | {"helped_clearly": True}).endswith("; fine-tuning helped")


@pytest.mark.server  # a Python subprocess
def test_the_runner_obeys_sigint_even_when_started_ignoring_it(home):
    """A server started in the background (`nohup tunesmith serve &`) hands its children SIGINT ignored;
    the worker still stops a runner with SIGINT, also outside the training loop (loading, evaluating)."""
    child = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited from a background server\n"
        "from tunesmith.serve import job_runner\n"
        "assert job_runner.main(['ftjob-none']) == 0  # no such job: nothing to run\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
