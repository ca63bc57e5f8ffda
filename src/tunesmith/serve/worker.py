"""The worker: runs fine-tuning jobs from the queue, one at a time, each in its own process.

    python -m tunesmith.serve.worker      started by `tunesmith serve` (or alone beside `serve --no-worker`)

Why a separate process: training takes every core for minutes, so it must not share the API
process; and a job in its own child process (serve.job_runner) can be stopped at once (SIGKILL on
cancel) without harming the worker.

Life cycle
  - One worker per TUNESMITH_HOME: it holds an exclusive ``flock`` on ``worker.lock``; a second one
    waits for it.
  - It dies with the server, even when the server is SIGKILLed: Linux ``PR_SET_PDEATHSIG`` (and a
    check that the parent is still the one that started it, plus a poll of ``getppid`` elsewhere).
    A runner dies with its worker the same way.
  - Loop: first a job left ``running`` by a worker that died (it resumes from its last checkpoint),
    else the oldest ``queued`` one; then ``job_runner JOB_ID`` runs it, with its output in
    ``jobs/JOB_ID.log``. Every 0.5 s the worker looks at the job: when the API has cancelled it, the
    runner is killed and its run folder removed.
  - SIGTERM (the server stopping): the runner gets SIGINT, writes a checkpoint and exits; the job is
    queued again, to resume when a worker next starts.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tunesmith.core import paths
from tunesmith.registry import store as registry
from tunesmith.registry.store import version_for_job
from tunesmith.serve.datacheck import validate_job
from tunesmith.serve.job_store import JobStore
from tunesmith.serve.process import PARENT_ENV, die_with_parent

IDLE_POLL_S = 1.0
RUNNING_POLL_S = 0.5
STOP_GRACE_S = 20  # a runner's time to checkpoint after SIGINT
STALE_VALIDATION_S = 60  # a job validating this long was left by a server that stopped mid-request


def start_worker() -> subprocess.Popen:
    """The worker for this process's TUNESMITH_HOME, as a child that dies with it. Its own session, so a
    Ctrl-C in the terminal reaches only the server, which then stops the worker in order (stop_worker)."""
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    return subprocess.Popen([sys.executable, "-m", "tunesmith.serve.worker"], env=env, start_new_session=True)


def stop_worker(process: subprocess.Popen) -> None:
    """Graceful: the running job writes a checkpoint and is queued again; killed if that takes too long."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S + 5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Worker:
    def __init__(self, store: JobStore, parent: int | None):
        self.store, self.parent = store, parent
        self.stopping = False

    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True

    def orphaned(self) -> bool:
        """The fallback where PDEATHSIG does not exist: the parent is gone when we were re-parented."""
        return self.parent is not None and os.getppid() != self.parent

    def run(self) -> None:
        lock = self.acquire_lock()
        if lock is None:
            return
        self.clean_cancelled()
        while not (self.stopping or self.orphaned()):
            try:
                self.revalidate_stale()
                job = self.next_job()
                if job is not None:
                    self.run_job(job)
                    continue
            except Exception:  # a bug or a full disk must not leave the server without a worker
                traceback.print_exc()
            time.sleep(IDLE_POLL_S)

    def acquire_lock(self):
        handle = open(paths.home() / "worker.lock", "a+")
        waiting = False
        while not (self.stopping or self.orphaned()):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if not waiting:
                    log(f"another worker runs the jobs of {paths.home()}; waiting for it to stop")
                    waiting = True
                time.sleep(IDLE_POLL_S)
        return None

    def next_job(self):
        """A job a dead worker left running (it resumes), else the oldest queued one."""
        for job in self.store.jobs_with_status("running"):  # only ours can run while we hold the lock
            kill_stray_runner(job)
            step = checkpoint_step(paths.runs_dir() / job["registry_name"])
            if version_for_job(job["registry_name"], job["id"]) is not None:
                message = "Picked up again after a restart; the model was already published"
            elif step is not None:
                message = f"Resumed from checkpoint at step {step} after a restart"
            else:
                message = "Restarted from the beginning after a restart (no checkpoint yet)"
            self.store.add_event(job["id"], message, level="warn")
            return job
        return self.store.claim_next()

    def status(self, job_id: str) -> str:
        job = self.store.get_job(job_id)
        assert job is not None  # jobs are never deleted
        return job["status"]

    def run_job(self, job) -> None:
        job_id = job["id"]
        log(f"running {job_id}")
        logs = paths.job_logs_dir()
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{job_id}.log", "ab") as output:
            runner = subprocess.Popen(
                [sys.executable, "-m", "tunesmith.serve.job_runner", job_id],
                env={**os.environ, PARENT_ENV: str(os.getpid())},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.store.update_job(job_id, runner_pid=runner.pid)
        while runner.poll() is None:
            if self.stopping or self.orphaned():
                self.interrupt(runner, job_id)
                return
            if self.status(job_id) == "cancelled":
                runner.kill()
                runner.wait()
                break
            time.sleep(RUNNING_POLL_S)
        status = self.status(job_id)
        if status == "cancelled":
            discard_run(job)
            self.store.add_event(job_id, "Training stopped; its checkpoints were removed")
        elif status == "running":  # the runner ended without saying how
            if runner.returncode == 130:  # interrupted by someone else: it checkpointed, so it can go on
                self.store.transition(
                    job_id,
                    "queued",
                    ("running",),
                    "Training was interrupted; the job is queued again and resumes from its last checkpoint",
                    level="warn",
                )
            else:
                self.fail(job_id, runner.returncode, logs / f"{job_id}.log")
        log(f"{job_id}: {self.status(job_id)}")

    def interrupt(self, runner: subprocess.Popen, job_id: str) -> None:
        """Server stopping: let the runner checkpoint, then queue the job again for the next start."""
        runner.send_signal(signal.SIGINT)
        try:
            runner.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()
        self.store.transition(
            job_id,
            "queued",
            ("running",),
            "The server stopped; the job is queued again and resumes from its last checkpoint when the server starts",
            level="warn",
        )

    def fail(self, job_id: str, returncode: int, log_file: Path) -> None:
        if returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
            if returncode == -signal.SIGKILL:
                how += " (out of memory?)"
        else:
            how = f"exited with code {returncode}"
        lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []  # \r splits too
        tail = "\n".join(lines[-20:])[-3000:]
        message = f"internal error: the training process {how}. Last lines of {log_file}:\n{tail}"
        self.store.transition(
            job_id,
            "failed",
            ("running",),
            message,
            level="error",
            error={"code": "internal_error", "param": None, "message": message},
        )

    def revalidate_stale(self) -> None:
        for job in self.store.jobs_with_status("validating_files"):
            if time.time() - job["created_at"] > STALE_VALIDATION_S:
                validate_job(self.store, job["id"])

    def clean_cancelled(self) -> None:
        """Run folders of jobs cancelled while no worker could clean up after them (server killed)."""
        for job in self.store.jobs_with_status("cancelled"):
            if (paths.runs_dir() / job["registry_name"]).exists():
                discard_run(job)


def discard_run(job) -> None:
    """A cancelled job leaves nothing: no run folder, no registry version (it may have published just
    before the cancel arrived)."""
    shutil.rmtree(paths.runs_dir() / job["registry_name"], ignore_errors=True)
    version = version_for_job(job["registry_name"], job["id"])
    if version is not None:
        registry.remove(version.ref)


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of a run's latest checkpoint, read as training.checkpoint.latest_checkpoint reads it
    (without importing torch into the worker, which would triple its memory)."""
    try:
        name = (run_dir / "checkpoints" / "LATEST").read_text().strip()
    except OSError:
        return None
    return int(name.split("-")[1]) if (run_dir / "checkpoints" / name / "state.pt").is_file() else None


def kill_stray_runner(job) -> None:
    """Where PDEATHSIG does not exist a runner can outlive its worker; two must never train one run."""
    pid = job["runner_pid"]
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        if pid and job["id"] in cmdline.read_bytes().decode(errors="replace").split("\0"):
            os.kill(pid, signal.SIGKILL)
            deadline = time.time() + 10
            while Path(f"/proc/{pid}").exists() and _proc_state(pid) != "Z" and time.time() < deadline:
                time.sleep(0.05)
    except OSError:
        pass  # gone already, or no /proc here


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def log(message: str) -> None:
    print(f"tunesmith worker: {message}", file=sys.stderr, flush=True)


def main() -> int:
    parent = die_with_parent()
    worker = Worker(JobStore(paths.serve_db()), parent)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
