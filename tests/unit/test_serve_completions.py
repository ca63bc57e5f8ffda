"""`tunesmith serve`, using models: /v1/models, /v1/chat/completions and /v1/completions on a real
server on a loopback port, spoken to with the official `openai` client (and raw HTTP where the exact
bytes matter), serving a tiny fine-tune that the real CLI put into the registry. Then, in-process:
the model pool, stop strings in a stream, the end of turn (the batcher: tests/unit/test_batcher.py)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import openai
import pytest
import torch

from conftest import REPO, RunningServer, sharpen
from tunesmith.cli import main
from tunesmith.data.render import render_prompt
from tunesmith.inference.loaded import LoadedModel
from tunesmith.serve import catalog
from tunesmith.serve.batcher import Batcher, Request
from tunesmith.serve.completions import chat_prompt
from tunesmith.serve.model_pool import ModelPool, model_bytes
from tunesmith.serve.sampling import Sampling, Watcher, generate_choice, new_generator

SYSTEM = "Answer with the order code."
QUESTIONS = [f"What is the code of order {i}?" for i in range(12)]
PROMPTS = ["What is the code of order 3?", "Hello there", "a", "b", "c", "d", "e", "Summarise the call."]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """A home whose registry holds ``tiny:1`` (LoRA on a sharpened tiny Llama, so greedy answers differ
    from prompt to prompt) and ``tiny-text:1`` (raw text), and one server on it."""
    root = tmp_path_factory.mktemp("serve-completions")
    saved = {name: os.environ.get(name) for name in ("TUNESMITH_HOME", "TUNESMITH_CACHE")}
    os.environ["TUNESMITH_HOME"] = str(root / "home")
    os.environ["TUNESMITH_CACHE"] = str(REPO / ".cache" / "tunesmith")
    base = root / "sharp"
    shutil.copytree(tiny_model_dir, base)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    sharpen(model)
    model.save_pretrained(base)
    chat = root / "orders.jsonl"
    chat.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": f"The code of order {i} is CU-{1000 + 7 * i}."},
                    ]
                }
            )
            + "\n"
            for i, question in enumerate(QUESTIONS)
        )
    )
    (root / "config.yaml").write_text(f"system_prompt: {SYSTEM}\n")
    text = root / "orders.txt"
    text.write_text("\n\n".join(f"Order {i} shipped on day {i % 7} with code CU-{1000 + i}." for i in range(30)))
    assert (
        main(
            [
                "train",
                str(chat),
                "--base",
                str(base),
                "--name",
                "tiny",
                "--epochs",
                "1",
                "-c",
                str(root / "config.yaml"),
            ]
        )
        == 0
    )
    assert (
        main(["train", str(text), "--base", str(base), "--name", "tiny-text", "--task", "text", "--epochs", "1"]) == 0
    )
    server = RunningServer(root / "home", root / "server.log", extra_args=("--no-worker",)).start()
    yield server
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.base_url, api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(served):
    return catalog.load("tiny:1").tokenizer


def chat(client, content: str, **options):
    """A one-turn chat with ``tiny``, greedy and short unless ``options`` say otherwise."""
    options = {"model": "tiny", "temperature": 0, "max_tokens": 12} | options
    return client.chat.completions.create(messages=[{"role": "user", "content": content}], **options)


def prompt_tokens(tokenizer, *turns: tuple[str, str]) -> int:
    """Tokens of a conversation rendered with the chat template, ready for the assistant's answer."""
    rendered = render_prompt(tokenizer, [{"role": role, "content": content} for role, content in turns])
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def post(served, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{served.base_url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stream_text(stream) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish


@pytest.mark.server
def test_models_are_listed_and_unknown_ones_are_404(served, client, tiny_model_dir):
    listed = {model.id: model for model in client.models.list()}
    assert {"tiny:1", "tiny-text:1"} <= set(listed)
    assert listed["tiny:1"].owned_by == "user" and listed["tiny:1"].object == "model"
    assert abs(listed["tiny:1"].created - time.time()) < 600
    assert client.models.retrieve("tiny:1").id == "tiny:1"
    assert client.models.retrieve("tiny").id == "tiny:1"  # NAME is its latest version
    for unknown in ("nope", "tiny:7", str(tiny_model_dir), "../registry/tiny/1"):
        with pytest.raises(openai.NotFoundError) as raised:
            chat(client, "hi", model=unknown)
        assert raised.value.code == "model_not_found" and raised.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.server
def test_chat_plain_stream_and_usage(served, client, tokenizer):
    plain = chat(client, PROMPTS[0], max_tokens=24)
    assert plain.object == "chat.completion" and plain.id.startswith("chatcmpl-")
    assert plain.model == "tiny:1" and plain.system_fingerprint
    (choice,) = plain.choices
    assert choice.message.role == "assistant" and choice.message.content
    # the stored system prompt is added, with the template the model was trained with
    counted = prompt_tokens(tokenizer, ("system", SYSTEM), ("user", PROMPTS[0]))
    assert plain.usage.prompt_tokens == counted
    assert plain.usage.total_tokens == counted + plain.usage.completion_tokens
    if choice.finish_reason == "length":
        assert plain.usage.completion_tokens == 24

    texts, finish = stream_text(chat(client, PROMPTS[0], max_tokens=24, stream=True))
    assert texts == {0: choice.message.content} and finish == {0: choice.finish_reason}

    # a system message of the request's own replaces the stored one; parts join into one text
    own = client.chat.completions.create(
        model="tiny:1",
        temperature=0,
        max_tokens=4,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the code "}, {"type": "text", "text": "of order 3?"}],
            },
        ],
    )
    assert own.usage.prompt_tokens == prompt_tokens(tokenizer, ("system", "Be brief."), ("user", PROMPTS[0]))


@pytest.mark.server
def test_raw_event_stream(served, client):
    import httpx2

    body = {
        "model": "tiny:1",
        "messages": [{"role": "user", "content": PROMPTS[1]}],
        "temperature": 0,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx2.stream("POST", f"{served.base_url}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = [block for block in raw.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["delta"] == {}
    usage = chunks[-1]
    assert usage["choices"] == [] and chunks[-2] is finals[0]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    plain = chat(client, PROMPTS[1], max_tokens=8)
    assert usage["usage"] == plain.usage.model_dump(exclude_none=True)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == plain.choices[0].message.content


@pytest.mark.server
def test_completions_plain_and_stream(served, client, tokenizer):
    prompts = ["Hello there", "What is the code of order 5?"]
    plain = client.completions.create(model="tiny", prompt=prompts, n=2, temperature=0, max_tokens=10)
    assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
    assert [choice.index for choice in plain.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in plain.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]
    # a chat model gets the prompt as a user turn, exactly like `tunesmith generate`
    expected = sum(prompt_tokens(tokenizer, ("system", SYSTEM), ("user", prompt)) for prompt in prompts)
    assert plain.usage.prompt_tokens == expected
    if all(choice.finish_reason == "length" for choice in plain.choices):
        assert plain.usage.completion_tokens == 4 * 10
    single = client.completions.create(model="tiny", prompt=prompts[1], temperature=0, max_tokens=10)
    assert single.choices[0].text == texts[2]

    streamed, finish = stream_text(
        client.completions.create(model="tiny", prompt=prompts, n=2, temperature=0, max_tokens=10, stream=True)
    )
    assert streamed == dict(enumerate(texts))
    assert finish == {c.index: c.finish_reason for c in plain.choices}

    # a raw-text model continues the prompt itself
    raw = client.completions.create(model="tiny-text", prompt="Order 5 shipped", temperature=0, max_tokens=6)
    assert raw.usage.prompt_tokens == len(tokenizer("Order 5 shipped", add_special_tokens=False)["input_ids"])
    assert raw.choices[0].finish_reason in ("stop", "length")


@pytest.mark.server
def test_sampling_is_reproducible_with_a_seed(served, client):
    def sample(seed):
        reply = chat(client, PROMPTS[0], temperature=1.0, n=2, seed=seed, max_tokens=12)
        return [choice.message.content for choice in reply.choices]

    first = sample(7)
    assert len(first) == 2 and first[0] != first[1]  # two draws, not one copied
    assert sample(7) == first
    assert sample(8) != first
    greedy = chat(client, PROMPTS[0], max_tokens=12).choices[0].message.content
    assert first[0] != greedy


@pytest.mark.server
def test_stop_strings_and_length(served, client):
    full = chat(client, PROMPTS[0], max_tokens=40).choices[0].message.content
    # a stop string that really occurs: three printable characters from the middle of the greedy answer
    start = next(i for i in range(3, len(full) - 3) if full[i : i + 3].isascii() and full[i : i + 3].isprintable())
    stop = full[start : start + 3]
    expected = full[: full.index(stop)]
    stopped = chat(client, PROMPTS[0], max_tokens=40, stop=[stop, "never-there"])
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    pieces = [
        c.choices[0].delta.content
        for c in chat(client, PROMPTS[0], max_tokens=40, stop=stop, stream=True)
        if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == expected and not any(stop in piece for piece in pieces)

    capped = chat(client, PROMPTS[0], max_tokens=3)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3
    assert full.startswith(capped.choices[0].message.content)


@pytest.mark.server
def test_malformed_requests_are_400_naming_the_field(served, client):
    user = [{"role": "user", "content": "hi"}]
    cases = [
        ({"model": "tiny"}, "messages"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": user, "temperature": "hot"}, "temperature"),
        ({"model": "tiny", "messages": user, "n": 9}, "n"),
        ({"model": "tiny", "messages": user, "max_tokens": 5000}, "max_tokens"),
        ({"model": "tiny", "messages": user, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"model": "tiny", "messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"model": "tiny", "messages": user, "logprobs": True}, "logprobs"),
        ({"model": "tiny", "messages": user, "response_format": {"type": "json_object"}}, "response_format"),
    ]
    for body, param in cases:
        status, answer = post(served, "/chat/completions", body)
        assert status == 400, (body, answer)
        assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error", answer
    for body, param in [
        ({"model": "tiny", "prompt": "x", "echo": True}, "echo"),
        ({"model": "tiny", "prompt": "x", "suffix": "y"}, "suffix"),
        ({"model": "tiny", "prompt": [1, 2]}, "prompt.0"),
        ({"model": "tiny", "prompt": ["x"] * 65}, "prompt"),
    ]:
        status, answer = post(served, "/completions", body)
        assert status == 400 and answer["error"]["param"] == param, (body, answer)
    assert post(served, "/chat/completions", b"{not json")[0] == 400
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert raised.value.param == "tools"
    # the prompt does not fit the context window (the tiny model has 512 positions)
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "order " * 600)
    assert raised.value.code == "context_length_exceeded"
    # nor does the answer asked for: refused, as OpenAI does, rather than cut short
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "hi", max_tokens=500)
    assert raised.value.code == "context_length_exceeded" and raised.value.param == "max_tokens"


@pytest.mark.server
def test_concurrent_requests_each_get_their_own_answer(served, client):
    alone = {prompt: chat(client, prompt, max_tokens=16).choices[0].message.content for prompt in PROMPTS}
    assert len(set(alone.values())) > len(PROMPTS) // 2  # answers differ, so a mix-up would show

    def ask(prompt: str) -> tuple[str, str]:
        if prompt in PROMPTS[::2]:
            return prompt, "".join(stream_text(chat(client, prompt, max_tokens=16, stream=True))[0].values())
        return prompt, chat(client, prompt, max_tokens=16).choices[0].message.content

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = dict(pool.map(ask, PROMPTS))
    assert together == alone


@pytest.mark.server
def test_a_client_that_leaves_a_stream_frees_the_generator(served, client):
    stream = chat(client, PROMPTS[2], max_tokens=470, temperature=1.0, stream=True)
    next(iter(stream))
    stream.close()
    began = time.perf_counter()
    assert chat(client, PROMPTS[3], max_tokens=4).choices[0].message.content is not None
    assert time.perf_counter() - began < 5  # not behind the ~470 tokens the abandoned stream had left
    assert "Traceback" not in served.log_tail(20000)


# --- in-process ---------------------------------------------------------------------------------------


@pytest.mark.server
def test_pool_keeps_the_most_recently_used_within_its_bytes(served, tiny_model_dir):
    loads: list[str] = []

    def loader(key: str) -> LoadedModel:
        loads.append(key)
        return catalog.load("tiny:1")

    size = model_bytes(catalog.load("tiny:1").model)
    pool = ModelPool(max_bytes=size + size // 2, loader=loader)  # room for one
    first = pool.get("a")
    assert pool.get("a") is first and loads == ["a"]
    pool.get("b")
    assert pool.keys() == ["b"] and pool.total_bytes == size  # "a" evicted
    assert pool.get("a") is not first and loads == ["a", "b", "a"]

    roomy = ModelPool(max_bytes=2 * size + 1, loader=loader)
    roomy.get("a"), roomy.get("b"), roomy.get("a")
    assert roomy.keys() == ["b", "a"]
    roomy.get("c")  # evicts the least recently used: "b"
    assert roomy.keys() == ["a", "c"]

    tiny = ModelPool(max_bytes=1, loader=loader)  # always keeps the one just loaded
    tiny.get("a")
    assert tiny.keys() == ["a"]

    loads.clear()
    concurrent = ModelPool(max_bytes=10 * size, loader=loader)
    with ThreadPoolExecutor(6) as threads:
        models = list(threads.map(concurrent.get, ["x"] * 6))
    assert loads == ["x"] and all(model is models[0] for model in models)

    # different keys load one at a time: loading in transformers is not thread-safe
    loading, overlapped = threading.Event(), []

    def exclusive(key: str) -> LoadedModel:
        overlapped.append(loading.is_set())
        loading.set()
        try:
            time.sleep(0.05)
            return catalog.load("tiny:1")
        finally:
            loading.clear()

    serial = ModelPool(max_bytes=10 * size, loader=exclusive)
    with ThreadPoolExecutor(4) as threads:
        list(threads.map(serial.get, ["p", "q", "r", "s"]))
    assert overlapped == [False] * 4

    # the default loader resolves through the registry
    assert ModelPool(10 * size).get("tiny:1").ref == "tiny:1"


@pytest.mark.server
def test_lora_versions_share_one_base_and_answer_as_merged(served):
    """The server's pool: two LoRA versions over one copy of their base, each counted by its adapter's
    bytes, each answering (batched, together) exactly as its merged weights do with generate."""
    pool = ModelPool(10 * 2**30)
    pool.loader = partial(catalog.load, shared=pool.get)
    chat_model, text_model = pool.get("tiny:1"), pool.get("tiny-text:1")
    assert chat_model.adapter is not None and text_model.adapter is not None
    assert chat_model.model is text_model.model and len(pool.keys()) == 3  # the base, two adapters
    assert pool.total_bytes == model_bytes(chat_model.model) + chat_model.adapter.bytes + text_model.adapter.bytes

    prompts = [chat_prompt(chat_model, [{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
    batcher = Batcher()
    requests = [Request(m, [p], 1, Sampling(12, temperature=0)) for m in (chat_model, text_model) for p in prompts]
    together = [batcher.submit(r) for r in requests]
    answers = [f.result(timeout=60)[0].text for f in together]
    merged = [catalog.load(ref) for ref in ("tiny:1", "tiny-text:1")]
    alone = [
        generate_choice(m, p, Sampling(12, temperature=0), new_generator(m.model, 0), threading.Event()).text
        for m in merged
        for p in prompts
    ]
    assert answers == alone  # (adapters that do change answers, per row: tests/unit/test_batcher.py)

    # a bound below the base's size still keeps the base under the version just loaded
    small = ModelPool(1)
    small.loader = partial(catalog.load, shared=small.get)
    small.get("tiny:1")
    assert len(small.keys()) == 2 and small.get("tiny:1") is small.get("tiny:1")


@pytest.mark.server
def test_served_weights_are_in_the_precision_the_server_was_started_with(served):
    from tunesmith.serve.app import ServeSettings, create_app

    fp32, bf16 = (create_app(ServeSettings(precision=p)).state.pool.get("tiny:1").model for p in ("fp32", "bf16"))
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert model_bytes(bf16) < 0.55 * model_bytes(fp32)  # the pool's memory bound counts what is loaded


def test_watcher_holds_back_a_possible_stop_string(tiny_tokenizer):
    text = "Hello world. Goodbye world."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    for stop, expected in [(("d. G",), "Hello worl"), (("bye", "o w"), "Hell"), (("xyz",), text)]:
        pieces: list[str] = []
        watcher = Watcher(tiny_tokenizer, [], stop, threading.Event(), pieces.append)
        for position in range(len(ids)):
            done = watcher(torch.tensor([ids[: position + 1]]), None)
            joined = "".join(pieces)
            assert not any(s in joined for s in stop) and expected.startswith(joined)
            if done.all():
                break
        assert watcher.finish() == expected and "".join(pieces) == expected


@pytest.mark.server
def test_end_of_turn_ends_a_choice_with_stop(served):
    loaded = catalog.load("tiny:1")
    tokenizer = loaded.tokenizer
    prompt = tokenizer(
        render_prompt(tokenizer, loaded.conversation([{"role": "user", "content": "hi"}])), add_special_tokens=False
    )["input_ids"]
    eos = tokenizer.eos_token_id
    calls = []

    def end_of_turn_fourth(_module, _inputs, output):  # the model "decides" to end its turn at token 4
        calls.append(1)
        if len(calls) == 4:
            output[..., -1, eos] = 1e4
        return output

    free = generate_choice(
        loaded, prompt, Sampling(max_tokens=3, temperature=0), new_generator(loaded.model, 0), threading.Event()
    )
    hook = loaded.model.get_output_embeddings().register_forward_hook(end_of_turn_fourth)
    try:
        ended = generate_choice(
            loaded, prompt, Sampling(max_tokens=10, temperature=0), new_generator(loaded.model, 0), threading.Event()
        )
    finally:
        hook.remove()
    assert (ended.finish_reason, ended.completion_tokens) == ("stop", 4)
    assert ended.text == free.text and free.finish_reason == "length"


def test_classifier_conversation_matches_training():
    loaded = LoadedModel("c:1", None, None, task="classify", labels=["neg", "pos"], system_prompt="S")
    assert loaded.conversation([{"role": "user", "content": "great soup"}]) == loaded.messages_for("great soup")
    own = loaded.conversation([{"role": "system", "content": "Mine"}, {"role": "user", "content": "t"}])
    assert own[0] == {"role": "system", "content": "Mine"} and len(own) == 2 and "neg, pos" in own[1]["content"]
