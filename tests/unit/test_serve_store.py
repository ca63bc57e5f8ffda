"""Files and fine-tuning jobs: the SQLite store in-process, then the HTTP API against a real
`tunesmith serve --no-worker` with the official OpenAI client (no model weights needed: jobs stay queued)."""

from __future__ import annotations

import json

import openai
import pytest

from tunesmith.serve.job_store import UNFINISHED, JobStore, UnknownCursor, event_object, job_object

ROWS = [
    {"text": f"review number {i} was {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
    for i in range(12)
]
HYPER = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


def jsonl(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "serve.db")


def new_job(store: JobStore, job_id: str, status: str = "queued") -> None:
    store.create_job(job_id, "smollm2-135m", "file-a", None, None, 0, HYPER, f"m-{job_id}", None)
    if status != "validating_files":
        assert store.transition(job_id, status, ("validating_files",))


# --------------------------------------------------------------------------- the store


def test_transitions_are_conditional_and_carry_their_event(store):
    new_job(store, "ftjob-1", "validating_files")
    assert store.transition("ftjob-1", "queued", ("validating_files",), "validated")
    assert not store.transition("ftjob-1", "succeeded", ("running",), "never written")
    assert store.transition("ftjob-1", "cancelled", UNFINISHED, "cancelled by the user")
    # the worker finishing after a cancel must not overwrite it
    assert not store.transition("ftjob-1", "succeeded", ("running",), "done", fine_tuned_model="m:1")
    job = job_object(store.get_job("ftjob-1"))
    assert job["status"] == "cancelled" and job["fine_tuned_model"] is None and job["finished_at"]
    events, _ = store.list_events("ftjob-1", None, 10)
    assert [event["message"] for event in events] == ["cancelled by the user", "validated"]  # newest first


def test_claim_hands_out_the_oldest_queued_job_once(store):
    for job_id in ("ftjob-a", "ftjob-b"):
        new_job(store, job_id)
    assert store.claim_next()["id"] == "ftjob-a"
    assert store.claim_next()["id"] == "ftjob-b"
    assert store.claim_next() is None
    assert [job["id"] for job in store.jobs_with_status("running")] == ["ftjob-a", "ftjob-b"]


def test_pagination_newest_first_with_after_and_limit(store):
    for i in range(5):
        new_job(store, f"ftjob-{i}")
    rows, more = store.list_jobs(None, 2)
    assert [row["id"] for row in rows] == ["ftjob-4", "ftjob-3"] and more
    rows, more = store.list_jobs("ftjob-3", 2)
    assert [row["id"] for row in rows] == ["ftjob-2", "ftjob-1"] and more
    rows, more = store.list_jobs("ftjob-1", 2)
    assert [row["id"] for row in rows] == ["ftjob-0"] and not more
    with pytest.raises(UnknownCursor):
        store.list_jobs("ftjob-nope", 2)


def test_events_checkpoints_and_reported_steps(store):
    new_job(store, "ftjob-1", "running")
    for step in (1, 2, 3):
        store.add_event("ftjob-1", f"Step {step}", type="metrics", data={"step": step, "train_loss": 1.0 / step})
    store.add_event("ftjob-1", "Checkpoint created at step 9", data={"step": 9})  # not a metrics event
    assert store.last_metrics_step("ftjob-1") == 3
    assert store.last_metrics_step("ftjob-other") == 0
    newest, _ = store.list_events("ftjob-1", None, 2)
    assert [event_object(row)["type"] for row in newest] == ["message", "metrics"]
    assert event_object(newest[1])["data"] == {"step": 3, "train_loss": 1 / 3}

    store.add_checkpoint("ftjob-1", 2, "m:ckpt-step-2", {"step": 2})
    store.add_checkpoint("ftjob-1", 2, "m:ckpt-step-2", {"step": 2, "replayed": True})  # kept: the first
    store.add_checkpoint("ftjob-1", 4, "m:ckpt-step-4", {"step": 4})
    store.add_checkpoint("ftjob-1", 4, "m:1", {"step": 4, "final": True}, replace=True)  # the published model
    rows, more = store.list_checkpoints("ftjob-1", None, 10)
    assert [(row["step"], row["model"], json.loads(row["metrics"])) for row in rows] == [
        (4, "m:1", {"step": 4, "final": True}),
        (2, "m:ckpt-step-2", {"step": 2}),
    ]
    assert not more


def test_a_file_an_unfinished_job_uses_cannot_be_deleted(store):
    store.add_file("file-a", "a.jsonl", "file-a.jsonl", 10, "fine-tune")
    new_job(store, "ftjob-1")
    assert store.delete_file("file-a")["id"] == "ftjob-1"
    assert store.get_file("file-a") is not None
    store.transition("ftjob-1", "cancelled", UNFINISHED)
    assert store.delete_file("file-a") is None
    assert store.get_file("file-a") is None


# --------------------------------------------------------------------------- the HTTP API


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)


@pytest.mark.server
def test_files_upload_list_retrieve_content_delete(home, start_server):
    api = client(start_server(extra_args=("--no-worker",)))
    data = jsonl(ROWS)
    uploaded = api.files.create(file=("../../x.jsonl", data), purpose="fine-tune")
    assert uploaded.filename == "x.jsonl" and uploaded.bytes == len(data) and uploaded.purpose == "fine-tune"
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    # the client's name is only a label: the file lies in files/ under its id
    assert sorted(p.name for p in (home / "files").iterdir()) == [f"{uploaded.id}.jsonl"]
    assert not (home.parent.parent / "x.jsonl").exists() and not (home / "x.jsonl").exists()

    second = api.files.create(file=("b.csv", b"text,label\ngood,pos\nbad,neg\n"), purpose="fine-tune")
    assert [f.id for f in api.files.list()] == [second.id, uploaded.id]
    assert [f.id for f in api.files.list(order="asc")] == [uploaded.id, second.id]
    assert api.files.retrieve(uploaded.id).model_dump() == uploaded.model_dump()
    assert api.files.content(uploaded.id).content == data

    deleted = api.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    assert not (home / "files" / f"{uploaded.id}.jsonl").exists()
    with pytest.raises(openai.NotFoundError) as missing:
        api.files.retrieve(uploaded.id)
    assert missing.value.body["param"] == "file_id"

    with pytest.raises(openai.BadRequestError) as bad:
        api.files.create(
            file=("reviews.jsonl", jsonl(ROWS[:2] + ['{"text": oops}', {"text": "x", "label": ""}])),
            purpose="fine-tune",
        )
    assert "reviews.jsonl:3" in bad.value.message and "bad JSON" in bad.value.message
    assert "reviews.jsonl:4" in bad.value.message and str(home) not in bad.value.message
    with pytest.raises(openai.BadRequestError) as wrong:
        api.files.create(file=("a.jsonl", data), purpose="assistants")
    assert wrong.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as extension:
        api.files.create(file=("model.bin", data), purpose="fine-tune")
    assert extension.value.body["param"] == "file"
    assert sorted(p.name for p in (home / "files").iterdir()) == [f"{second.id}.csv"]  # nothing else kept


@pytest.mark.server
def test_uploads_over_the_limit_or_without_the_key_are_refused(home, start_server):
    server = start_server(api_key="sk-test", extra_args=("--no-worker", "--max-upload-mb", "0.001"))  # 1048 bytes
    api = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    small = jsonl(ROWS[:4])
    with pytest.raises(openai.AuthenticationError):  # refused before the body is read
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).files.create(
            file=("small.jsonl", jsonl(ROWS * 100)), purpose="fine-tune"
        )
    assert len(small) < 1048 and api.files.create(file=("small.jsonl", small), purpose="fine-tune").bytes == len(small)
    for size in (5_000, 200_000):  # counted while copied; refused from Content-Length before parsing
        rows = [{"text": "x" * 90 + str(i), "label": "pos" if i % 2 else "neg"} for i in range(size // 100)]
        with pytest.raises(openai.APIStatusError) as refused:
            api.files.create(file=("big.jsonl", jsonl(rows)), purpose="fine-tune")
        assert refused.value.status_code == 413 and "--max-upload-mb" in refused.value.message
    assert len(list((home / "files").iterdir())) == 1  # no temporary file left behind


@pytest.mark.server
def test_job_creation_checks_the_request(home, start_server):
    api = client(start_server(extra_args=("--no-worker",)))
    train = api.files.create(file=("train.jsonl", jsonl(ROWS)), purpose="fine-tune")

    def refused(error, **request):
        with pytest.raises(error) as raised:
            api.fine_tuning.jobs.create(**({"model": "smollm2-135m", "training_file": train.id} | request))
        return raised.value.body

    assert refused(openai.NotFoundError, training_file="file-nope")["param"] == "training_file"
    assert refused(openai.NotFoundError, validation_file="file-nope")["param"] == "validation_file"
    unknown = refused(openai.NotFoundError, model="gpt-5")
    assert unknown["param"] == "model" and unknown["code"] == "model_not_found"
    (home / "registry" / "mine" / "1").mkdir(parents=True)
    (home / "registry" / "mine" / "1" / "manifest.json").write_text("{}")
    assert refused(openai.BadRequestError, hyperparameters={"n_epochs": 0})["param"] == "hyperparameters.n_epochs"
    assert refused(openai.BadRequestError, hyperparameters={"batch_size": 2.5})["param"] == "hyperparameters.batch_size"
    assert (
        refused(
            openai.BadRequestError,
            method={"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1}}},
        )["param"]
        == "method.supervised.hyperparameters.learning_rate_multiplier"
    )
    assert refused(openai.BadRequestError, method={"type": "reinforcement"})["param"] == "method.type"
    assert refused(openai.BadRequestError, suffix="../evil")["param"] == "suffix"
    assert refused(openai.BadRequestError, suffix="x" * 41)["param"] == "suffix"
    assert api.fine_tuning.jobs.list().data == []  # nothing was created
    built_on = api.fine_tuning.jobs.create(model="mine:1", training_file=train.id)  # builds on a fine-tune
    assert built_on.model == "mine:1" and built_on.status == "queued"
    assert built_on.fine_tuned_model is None and api.fine_tuning.jobs.cancel(built_on.id).status == "cancelled"

    job = api.fine_tuning.jobs.create(
        model="smollm2-135m",
        training_file=train.id,
        suffix="reviews",
        seed=3,
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": "auto"},
    )
    assert job.status == "queued" and job.seed == 3 and job.user_provided_suffix == "reviews"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    assert job.method.supervised.hyperparameters.n_epochs == 2 and job.fine_tuned_model is None

    # the files are checked together: a validation label the training data never had fails the job
    val_rows = [{"text": "meh", "label": "neutral"}, {"text": "yes", "label": "pos"}]
    val = api.files.create(file=("val.jsonl", jsonl(val_rows)), purpose="fine-tune")
    failed = api.fine_tuning.jobs.create(model="smollm2-135m", training_file=train.id, validation_file=val.id)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert "val.jsonl:1" in failed.error.message and "unknown label 'neutral'" in failed.error.message
    assert str(home) not in failed.error.message
    assert failed.error.param == "training_file"


@pytest.mark.server
def test_job_list_pagination_cancel_and_events(home, start_server):
    api = client(start_server(extra_args=("--no-worker",)))
    train = api.files.create(file=("train.jsonl", jsonl(ROWS)), purpose="fine-tune")
    jobs = [api.fine_tuning.jobs.create(model="smollm2-135m", training_file=train.id) for _ in range(3)]

    first = api.fine_tuning.jobs.list(limit=2)
    assert [job.id for job in first.data] == [jobs[2].id, jobs[1].id] and first.has_more
    rest = api.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [job.id for job in rest.data] == [jobs[0].id] and not rest.has_more
    assert [job.id for job in api.fine_tuning.jobs.list(limit=1)] == [job.id for job in reversed(jobs)]  # auto-paging

    with pytest.raises(openai.ConflictError):  # a queued job still needs its file
        api.files.delete(train.id)
    cancelled = api.fine_tuning.jobs.cancel(jobs[0].id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.ConflictError) as again:
        api.fine_tuning.jobs.cancel(jobs[0].id)
    assert "cancelled" in again.value.message
    with pytest.raises(openai.NotFoundError):
        api.fine_tuning.jobs.cancel("ftjob-nope")
    assert api.fine_tuning.jobs.retrieve(jobs[0].id).status == "cancelled"
    assert api.fine_tuning.jobs.retrieve(jobs[1].id).status == "queued"

    events = api.fine_tuning.jobs.list_events(jobs[0].id, limit=2)
    assert [event.message for event in events.data] == [
        "Fine-tuning job cancelled",
        "Files validated, moving job to queued state",
    ]
    assert events.has_more and all(event.object == "fine_tuning.job.event" for event in events.data)
    older = api.fine_tuning.jobs.list_events(jobs[0].id, after=events.data[-1].id, limit=10)
    assert [event.message for event in older.data][-1].startswith("Created fine-tuning job")
    assert api.fine_tuning.jobs.checkpoints.list(jobs[0].id).data == []
    with pytest.raises(openai.NotFoundError) as unknown:  # an `after` that names nothing: 404 naming it
        api.fine_tuning.jobs.list_events(jobs[0].id, after="ftevent-nothing")
    assert unknown.value.body["param"] == "after" and "ftevent-nothing" in unknown.value.message

    for job in jobs[1:]:
        api.fine_tuning.jobs.cancel(job.id)
    assert api.files.delete(train.id).deleted
