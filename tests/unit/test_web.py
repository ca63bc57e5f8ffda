"""The page's parts without a browser or a model: sessions and CSRF, the security headers, a job's event
stream resuming from Last-Event-ID, review queues (formats, errors, two reviewers at once), and the
vendored scripts against their recorded hashes. The browser tests are tests/integration/test_web_*.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tunesmith.core.errors import DataError
from tunesmith.feedback import queue as queues
from tunesmith.serve.app import ServeSettings, create_app
from tunesmith.serve.web import review_pages, security

REPO = Path(__file__).resolve().parents[2]


def token(client: TestClient, path: str = "/jobs") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return page.text.split('data-csrf="')[1].split('"')[0]


@pytest.fixture
def client(home) -> TestClient:
    return TestClient(create_app(), base_url="https://127.0.0.1:8000")


def test_without_a_key_the_first_visit_opens_a_session_that_guards_forms(client):
    first = client.get("/jobs")
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie
    assert first.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self'")
    assert first.headers["x-frame-options"] == "DENY"
    csrf = token(client)
    refused = client.post("/review/add", data={"model": "smollm2-135m", "prompt": "hi"})
    assert refused.status_code == 403 and "expired" in refused.text
    forged = client.post("/review/add", data={"model": "x", "prompt": "hi", "csrf_token": "0" * 40})
    assert forged.status_code == 403
    cross = client.post(
        "/review/add", data={"model": "x", "prompt": "hi", "csrf_token": csrf}, headers={"Origin": "http://evil.test"}
    )
    assert cross.status_code == 403 and "another site" in cross.text
    # a session from another key (or none) is not valid once the server has a key
    keyed = TestClient(create_app(ServeSettings(api_key="k")), base_url="https://127.0.0.1:8000")
    keyed.cookies.update(client.cookies)
    assert keyed.get("/jobs", headers={"accept": "text/html"}, follow_redirects=False).status_code == 303


def test_login_with_the_key_and_only_to_local_pages(home):
    client = TestClient(create_app(ServeSettings(api_key="sesame")), base_url="https://127.0.0.1:8000")
    assert client.get("/jobs/x/stream").status_code == 401
    wrong = client.post("/login", data={"key": "nope", "next": "/models"}, follow_redirects=False)
    assert wrong.status_code == 200 and "That is not this server" in wrong.text
    away = client.post("/login", data={"key": "sesame", "next": "//evil.test/x"}, follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/jobs"
    assert client.get("/models").status_code == 200
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 404


def test_a_jobs_stream_replays_and_resumes_from_last_event_id(client):
    store = client.app.state.store  # type: ignore[attr-defined]
    store.add_file("file-1", "data.jsonl", "file-1.jsonl", 10, "fine-tune")
    store.create_job("ftjob-1", "smollm2-135m", "file-1", None, None, 0, {}, "x-ft", None)
    store.add_event("ftjob-1", "Created")
    for step in (1, 2, 3):
        data = {"step": step, "total_steps": 3, "train_loss": 1.0 / step, "tokens_per_s": 1.0, "epoch": step / 3}
        store.add_event("ftjob-1", f"Step {step}", type="metrics", data=data)
    store.add_event("ftjob-1", "Checkpoint created at step 3", data={"step": 3})
    store.transition("ftjob-1", "cancelled", ("validating_files",), "Fine-tuning job cancelled")
    whole = client.get("/jobs/ftjob-1/stream").text
    kinds = [line.split(": ")[1] for line in whole.splitlines() if line.startswith("event: ")]
    assert kinds.count("step") == 3 and "checkpoint" in kinds and kinds[-1] == "end"
    ids = [int(line.split(": ")[1]) for line in whole.splitlines() if line.startswith("id: ")]
    assert ids == sorted(ids) and len(ids) == 6
    resumed = client.get("/jobs/ftjob-1/stream", headers={"Last-Event-ID": str(ids[2])}).text
    assert [int(line[4:]) for line in resumed.splitlines() if line.startswith("id: ")] == ids[3:]
    points = client.get("/jobs/ftjob-1/metrics.json").json()["points"]
    assert [p["step"] for p in points] == [1, 2, 3]
    page = client.get("/jobs/ftjob-1")
    assert "data.jsonl" in page.text and "cancelled" in page.text
    assert client.get("/jobs/ftjob-nope").status_code == 404


def test_review_queue_reads_prompts_and_test_files_and_names_bad_lines(home, tmp_path):
    data = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "one"},
        {"messages": [{"role": "user", "content": "two"}, {"role": "assistant", "content": "answer"}]},
        {"prompt": "three", "completion": "x"},
        {"text": "four", "label": "positive"},
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompts = queues.prompts_from_file(data)
    assert prompts == ["one", [{"role": "user", "content": "two"}], "three", "four"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2.*prompt"):
        queues.prompts_from_file(bad)
    queue = queues.create("smollm2-135m", "q", prompts, False, "mixed.jsonl", 16)
    assert queue.add_prompts(["one", "five"]) == 1 and queue.session().progress().total == 5
    assert queues.get(queue.id) == queue and queues.get("../etc") is None and queues.get("rq-zz") is None


def test_two_reviewers_never_record_one_prompt_twice(home):
    queue = queues.create("smollm2-135m", "q", ["a", "b"], False, "test", 16)
    key = queue.session().prompts[0].key
    queue.add_answer(key, "the answer", None)
    notes: list[str | None] = []
    barrier = threading.Barrier(2)

    def review(correction: str) -> None:
        barrier.wait()
        notes.append(review_pages._record(queue, key, "bad", correction))

    threads = [threading.Thread(target=review, args=(text,)) for text in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = queue.corrections_path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["verdict"] == "bad"
    assert sorted(notes, key=str) == ["Another reviewer has just reviewed that one; here is the next.", None]
    # and a reviewer is never lent an item another one is looking at
    session = queue.session()
    mine = review_pages._lease_next(queue.id, session, "reviewer-1")
    theirs = review_pages._lease_next(queue.id, session, "reviewer-2")
    assert mine is not None and theirs is None  # one prompt left, lent to the first reviewer
    assert review_pages._lease_next(queue.id, session, "reviewer-1") == mine  # and still theirs on reload


def test_a_pick_between_two_answers_is_a_correction_of_the_other(home):
    queue = queues.create("smollm2-135m", "q", ["p"], True, "test", 16)
    key = queue.session().prompts[0].key
    queue.add_answer(key, "greedy", "sampled")
    assert review_pages._record(queue, key, "b", "") is None
    line = json.loads(queue.corrections_path.read_text())
    assert line == {"prompt": "p", "response": "greedy", "verdict": "bad", "correction": "sampled"}


def test_vendored_scripts_match_their_recorded_hashes():
    script = REPO / "scripts/vendor_web.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_session_secret_is_private_and_kept(home):
    first = security.secret()
    assert security.secret() == first
    assert (home / "web-secret").stat().st_mode & 0o077 == 0


def test_train_next_version_makes_a_dpo_job_from_the_pairs(client):
    queue = queues.create("smollm2-135m", "q", ["p1", "p2", "p3"], False, "test", 16)
    session = queue.session()
    for prompt, verdict in zip(session.prompts, ("bad", "bad", "good")):
        correction = f"better answer to {prompt.prompt}" if verdict == "bad" else None
        session.record(prompt, f"answer to {prompt.prompt}", verdict, correction)
    csrf = token(client)
    done = client.post(f"/review/{queue.id}/train", data={"method": "dpo", "csrf_token": csrf}, follow_redirects=False)
    assert done.status_code == 303, done.text
    job = queue.meta["jobs"][0]
    assert job["method"] == "dpo" and job["data"] == {"sft.jsonl": 3, "pairs.jsonl": 2}
    row = client.app.state.store.job(job["id"])  # type: ignore[attr-defined]
    assert json.loads(row["hyperparameters"])["method"] == "dpo" and row["model"] == "smollm2-135m"
    assert row["status"] == "queued"  # the pairs passed the data check as preference data
    stored = client.app.state.store.get_file(row["training_file"])  # type: ignore[attr-defined]
    assert stored["filename"] == f"{queue.id}-pairs.jsonl"
