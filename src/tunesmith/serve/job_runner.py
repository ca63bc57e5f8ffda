"""One fine-tuning job in its own process: ``python -m tunesmith.serve.job_runner JOB_ID``.

The worker starts it for a job it has marked running. The job becomes a TrainConfig and goes through
the same ``workflows.train.train`` as ``tunesmith train``, with hooks that record its progress as job
events (a metrics event per step) and checkpoint records.

Nothing is trained twice, whatever stopped an earlier attempt:
  - a registry version whose manifest names this job (``provenance``) means it was published before
    a crash: the job is marked succeeded with it;
  - a checkpoint in the run folder ``runs/NAME`` means it was interrupted: training resumes there;
  - otherwise training starts.

Every status change is conditional on the job still running, so a cancel is never overwritten.
Exit codes: 0 when the outcome is recorded (or there was nothing to do), 130 when training was
interrupted (SIGINT from the worker: a checkpoint was written, the job goes back to the queue).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from tunesmith.core import paths
from tunesmith.core.config import ResolvedConfig, Task, TrainConfig
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.evaluation.compare import PRIMARY, format_value, sample_size
from tunesmith.registry.store import version_for_job
from tunesmith.serve.datacheck import stored_path, user_text
from tunesmith.serve.job_store import HYPERPARAMETERS, JobStore, StepEventData
from tunesmith.serve.process import die_with_parent
from tunesmith.training.checkpoint import latest_checkpoint
from tunesmith.training.state import StepMetrics, TrainHooks
from tunesmith.workflows.train import train


def resolved_hyperparameters(config: TrainConfig, job) -> dict[str, Any]:
    """The job's hyperparameters as the run uses them: OpenAI's three as numbers, and every other training
    setting the job asked for (by its TrainConfig name), as resolved."""
    values = config.model_dump(mode="json")
    asked = [name for name in json.loads(job["hyperparameters"]) if name not in HYPERPARAMETERS]
    return {name: values.get(field) for name, field in [*HYPERPARAMETERS.items(), *zip(asked, asked)]}


class JobHooks:
    """Training progress as job events and checkpoint records."""

    def __init__(self, store: JobStore, job: dict, parent: int | None):
        self.store, self.job, self.parent = store, job, parent
        self.job_id, self.name = job["id"], job["registry_name"]
        self.reported = store.last_metrics_step(self.job_id)  # steps replayed after a restart are not repeated
        self.total_steps = 0
        self.valid_loss: float | None = None

    def as_hooks(self):
        return TrainHooks(on_start=self.on_start, on_metrics=self.on_metrics, on_checkpoint=self.on_checkpoint)

    def on_start(self, config: ResolvedConfig, total_steps: int, start_step: int) -> None:
        self.total_steps = total_steps
        hyperparameters = resolved_hyperparameters(config, self.job)
        self.store.update_job(self.job_id, resolved=hyperparameters)
        data = {
            **hyperparameters,
            "total_steps": total_steps,
            "learning_rate": config.lr,
            "task": config.task,
            "method": config.method,
            "precision": config.precision,
        }
        message = (
            "Fine-tuning job started" if start_step == 0 else f"Training continues at step {start_step}/{total_steps}"
        )
        self.store.add_event(self.job_id, message, data=data)

    def on_metrics(self, entry: StepMetrics) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            os.kill(os.getpid(), signal.SIGINT)  # the worker is gone (no PDEATHSIG here): checkpoint and stop
        if entry.val_loss is not None:
            self.valid_loss = entry.val_loss
        if entry.step <= self.reported:
            return
        self.reported = entry.step
        data = StepEventData(
            step=entry.step,
            total_steps=self.total_steps,
            train_loss=entry.loss,
            tokens_per_s=entry.tokens_per_s,
            epoch=entry.epoch,
        )
        message = f"Step {entry.step}/{self.total_steps}: training loss={entry.loss:.4f}"
        if entry.val_loss is not None:
            data.valid_loss = entry.val_loss
            message += f", validation loss={entry.val_loss:.4f}"
        self.store.add_event(self.job_id, message, type="metrics", data=data.to_json())

    def on_checkpoint(self, step: int, folder: Path, entry: StepMetrics) -> None:
        valid_loss = entry.val_loss if entry.val_loss is not None else self.valid_loss
        metrics = {"step": step, "train_loss": entry.loss, "valid_loss": valid_loss}
        if self.store.add_checkpoint(self.job_id, step, f"{self.name}:ckpt-step-{step}", metrics):
            self.store.add_event(self.job_id, f"Checkpoint created at step {step}", data={"step": step})


def job_config(store: JobStore, job) -> TrainConfig:
    """The job's TrainConfig: its files, model, name and seed, and the hyperparameters it was created with
    (OpenAI's names mapped to TrainConfig fields; any other key is a TrainConfig field, as serve.jobs checked)."""
    chosen = {
        HYPERPARAMETERS.get(name, name): value
        for name, value in json.loads(job["hyperparameters"]).items()
        if value != "auto"
    }
    files = {param: store.get_file(job[param]) for param in ("training_file", "validation_file") if job[param]}
    for param, row in files.items():
        if row is None:
            raise TunesmithError(f"{param} {job[param]} was deleted")
    train, val = files["training_file"], files.get("validation_file")
    assert train is not None  # checked just above
    return TrainConfig(
        data=stored_path(train),
        val_data=stored_path(val) if val else None,
        base=job["model"],
        name=job["registry_name"],
        seed=job["seed"],
        **chosen,
    )


def comparison_message(task: Task, comparison: dict[str, Any]) -> str:
    """``validation: accuracy fine-tuned 92.0% vs base 70.0% vs 8-shot 85.0%; fine-tuning helped``, from the
    comparison's JSON (what the event carries as its data)."""
    metric = PRIMARY[task][0]
    shown = {
        "fine_tuned": "fine-tuned",
        "base": "base",
        "few_shot": f"{comparison.get('few_shot', {}).get('shots', 0)}-shot",
    }
    parts = [
        f"{label} {format_value(metric, comparison[system][metric])}"
        for system, label in shown.items()
        if metric in comparison.get(system, {})
    ]
    helped = comparison.get("helped")
    verdict = "" if helped is None else "; fine-tuning helped" if helped else "; fine-tuning did not help"
    if comparison.get("helped") and comparison.get("helped_clearly") is False:
        verdict += f", but not clearly (within the noise of {sample_size(comparison['significance'])})"
    return f"validation: {metric} " + " vs ".join(parts) + verdict


def succeed(store: JobStore, job, version) -> None:
    """Record the published version (after training, or found again after a crash)."""
    manifest = version.manifest
    comparison = manifest.metrics.to_json()  # the event's data: the comparison as the manifest holds it
    if any(system in comparison for system in ("base", "few_shot", "fine_tuned")):
        store.add_event(job["id"], comparison_message(manifest.task, comparison), type="metrics", data=comparison)
    history = (version.path / "metrics.jsonl").read_text().splitlines()
    last = json.loads(history[-1]) if history else {}
    steps = manifest.training.steps if manifest.training else 0
    best_val_loss = manifest.training.best_val_loss if manifest.training else None
    store.add_checkpoint(
        job["id"],
        steps,
        version.ref,
        {"step": steps, "train_loss": last.get("loss"), "valid_loss": best_val_loss},
        replace=True,
    )
    store.add_event(job["id"], f"New fine-tuned model created: {version.ref}", data={"model": version.ref})
    # train() removes the run folder after publishing; a crash in between would have left it
    shutil.rmtree(paths.runs_dir() / job["registry_name"], ignore_errors=True)
    store.transition(
        job["id"],
        "succeeded",
        ("running",),
        "The job has successfully completed",
        fine_tuned_model=version.ref,
        trained_tokens=manifest.training.tokens if manifest.training else None,
        resolved=resolved_hyperparameters(manifest.config, job) if manifest.config else None,
    )


def fail(store: JobStore, job_id: str, code: str, message: str, param: str | None = None) -> None:
    store.transition(
        job_id, "failed", ("running",), message, level="error", error={"code": code, "message": message, "param": param}
    )


def run_job(store: JobStore, job, parent: int | None) -> int:
    job_id, name = job["id"], job["registry_name"]
    names = {
        str(stored_path(row)): row["filename"]
        for param in ("training_file", "validation_file")
        if job[param] and (row := store.get_file(job[param])) is not None
    }
    try:
        version = version_for_job(name, job_id)
        if version is None:
            hooks = JobHooks(store, job, parent).as_hooks()
            provenance = {
                "job": job_id,
                "training_file": job["training_file"],
                "validation_file": job["validation_file"],
            }
            if latest_checkpoint(paths.runs_dir() / name) is not None:
                result = train(resume=name, hooks=hooks, provenance=provenance)
            else:
                result = train(job_config(store, job), hooks=hooks, provenance=provenance)
            if result.version is None:
                return 130  # interrupted; the loop wrote a checkpoint
            version = result.version
        succeed(store, job, version)
    except DataError as problem:
        fail(store, job_id, "invalid_training_file", user_text(str(problem), names), "training_file")
    except TunesmithError as problem:
        fail(store, job_id, "training_failed", user_text(str(problem), names))
    except Exception as problem:  # a bug: the job says so, the traceback goes to the job's log
        traceback.print_exc()
        fail(
            store,
            job_id,
            "internal_error",
            f"internal error: {type(problem).__name__}: "
            f"{user_text(str(problem), names)} (traceback in {paths.job_logs_dir() / (job_id + '.log')})",
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The worker stops a runner with SIGINT. A server started in the background (`nohup tunesmith serve &`)
    # hands its children SIGINT ignored, and Python keeps it ignored: the training loop installs its own
    # handler, but loading and the closing evaluation would run on until the worker kills them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parent = die_with_parent()
    os.nice(10)  # training is background work: requests to the API (same cores) go first
    store = JobStore(paths.serve_db())
    job = store.get_job(argv[0])
    if job is None or job["status"] != "running":
        return 0
    try:
        return run_job(store, job, parent)
    except KeyboardInterrupt:  # SIGINT outside the loop (loading, evaluating): nothing half-written stays
        print("interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
