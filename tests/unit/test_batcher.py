"""Continuous batching on a tiny sharpened Llama: the batched decoder against transformers' generate, LoRA
adapters applied per row against PEFT's merged model, and the batcher's rows joining and leaving (stop
strings, cancellation, a reader that does not read, a full line) without changing anyone's answer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import random_lora, sharpen
from tunesmith.inference.loaded import LoadedModel
from tunesmith.models.adapter_bank import AdapterBank, read_lora
from tunesmith.models.batch_decoder import BatchDecoder, supports
from tunesmith.models.load import load_tokenizer
from tunesmith.serve import generation_thread
from tunesmith.serve.batcher import Batcher, QueueFull, Request
from tunesmith.serve.protocol import APIError
from tunesmith.serve.sampling import Sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = [[5, 9, 13], [7] * 20 + [3, 4], [11, 2], list(range(30, 60))]
TEXTS = ["Hello there, how are you", "The order code is", "a b c", "Summarise the call. Customer: CU-1234"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sharpen(model)
    return model


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def reference(model, prompt: list[int], new: int) -> list[int]:
    """transformers' greedy tokens (no end of turn: always ``new`` of them)."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def test_rows_joining_and_leaving_get_generate_s_greedy_tokens(tiny):
    """Rows of different lengths join mid-batch and leave early; each gets exactly what generate gives it."""
    assert supports(tiny)
    wanted = {i: reference(tiny, p, 12) for i, p in enumerate(PROMPTS)}
    decoder = BatchDecoder(tiny, room=8)  # small room: the cache grows while rows are in it
    got: dict[int, list[int]] = {}
    rows: list[int] = []  # prompt index per slot

    def join(i: int) -> None:
        slot = decoder.add_slot()
        rows.append(i)
        got[i] = [int(decoder.prefill([slot], [PROMPTS[i]], [0])[0].argmax())]

    join(0)
    join(1)
    for step in range(40):
        if step == 3:
            join(2)
        if step == 5:
            join(3)
        logits = decoder.step([got[i][-1] for i in rows], [0] * len(rows))
        for slot, i in enumerate(rows):
            got[i].append(int(logits[slot].argmax()))
        for slot in reversed(range(len(rows))):
            if len(got[rows[slot]]) == 12:  # done: its slot goes to the last row
                decoder.remove_slot(slot)
                last = rows.pop()
                if slot < len(rows):
                    rows[slot] = last
        if not rows:
            break
    assert got == wanted


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_adapters_per_row_match_peft_merged_models(tiny, tmp_path):
    """Three rows, three adapters (none, A, B), one step: each row's logits are its own merged model's."""
    adapters = {}
    for seed, name in ((1, "a"), (2, "b")):
        peft_model = random_lora(_copy(tiny), 4, 0.3, seed)
        peft_model.save_pretrained(tmp_path / name)
        adapters[name] = (
            peft_model.merge_and_unload().eval(),
            read_lora(tmp_path / name, torch.float32, torch.device("cpu")),
        )
    bank = AdapterBank(tiny)
    ids = {name: bank.add(name, lora) for name, (_, lora) in adapters.items()}
    decoder = BatchDecoder(tiny, bank)
    prompt = PROMPTS[1]
    rows = [0, ids["a"], ids["b"]]
    prompts = [prompt, prompt[:-3], prompt]  # one pass, of different lengths
    firsts = decoder.prefill([decoder.add_slot() for _ in rows], prompts, rows)
    step = decoder.step([5, 5, 5], rows)
    for row, model in enumerate((tiny, adapters["a"][0], adapters["b"][0])):
        full = model(torch.tensor([prompts[row] + [5]])).logits[0]
        torch.testing.assert_close(firsts[row], full[-2], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(step[row], full[-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(step[0], step[1], atol=1e-2) and not torch.allclose(step[1], step[2], atol=1e-2)


def _copy(model):
    clone = AutoModelForCausalLM.from_config(model.config)
    clone.load_state_dict(model.state_dict())
    return clone


def loaded_model(tiny, tokenizer) -> LoadedModel:
    return LoadedModel("tiny", tiny, tokenizer)


def answer(batcher: Batcher, request: Request, timeout: float = 60):
    return batcher.submit(request).result(timeout=timeout)


def test_answers_do_not_depend_on_the_batch(tiny, tokenizer):
    """Greedy and seeded requests alone, then all together with n > 1 and stop strings: the same choices."""
    loaded = loaded_model(tiny, tokenizer)
    settings = [
        Sampling(max_tokens=10, temperature=0),
        Sampling(max_tokens=14, temperature=1.5, top_p=0.95, seed=7),
        Sampling(max_tokens=6, temperature=0),
        Sampling(max_tokens=9, temperature=1.0, seed=3),
    ]
    batcher = Batcher(max_rows=16)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    alone = [answer(batcher, Request(loaded, [p], 2, s)) for p, s in zip(prompts, settings, strict=True)]
    assert alone[1][0].text != alone[1][1].text  # two sampled choices differ (seeds 7 and 8)
    assert alone[0][0] == alone[0][1]  # greedy choices are one answer, copied
    # a stop string inside a greedy answer ends it there, without the stop string
    stop_at = alone[0][0].text[2:4]
    stopped = answer(batcher, Request(loaded, [prompts[0]], 1, Sampling(10, temperature=0, stop=(stop_at,))))
    assert stopped[0].text == alone[0][0].text[: alone[0][0].text.index(stop_at)]
    assert stopped[0].finish_reason == "stop"

    requests = [Request(loaded, [p], 2, s) for p, s in zip(prompts, settings, strict=True)]
    futures = [batcher.submit(r) for r in requests]
    assert [f.result(timeout=60) for f in futures] == alone
    assert all(
        c.finish_reason == "length" and c.completion_tokens == s.max_tokens
        for c, s in zip((a[0] for a in alone), settings)
    )


def test_a_cancelled_request_leaves_and_a_silent_reader_stalls_no_one(tiny, tokenizer):
    loaded = loaded_model(tiny, tokenizer)
    batcher = Batcher(max_rows=8)

    async def scenario():
        endless = Request(loaded, [PROMPTS[0]], 1, Sampling(max_tokens=400, temperature=1.0, seed=1))
        unread = generation_thread.stream(batcher, endless)
        await anext(unread)  # it runs; then nobody reads it
        short = Request(loaded, [PROMPTS[1]], 1, Sampling(max_tokens=5, temperature=0))
        began = time.perf_counter()
        choices = await asyncio.wait_for(generation_thread.answer(batcher, short), timeout=30)
        waited = time.perf_counter() - began
        assert batcher.active_rows == 1  # the unread stream goes on decoding into its queue
        await unread.aclose()  # the client went away
        for _ in range(200):
            if batcher.active_rows == 0:
                break
            await asyncio.sleep(0.01)
        return choices, waited, batcher.active_rows

    choices, waited, left = asyncio.run(scenario())
    assert choices[0].completion_tokens == 5 and left == 0
    assert waited < 20


def test_the_batch_never_grows_past_max_rows(tiny, tokenizer):
    loaded = loaded_model(tiny, tokenizer)
    batcher = Batcher(max_rows=3)
    rows_seen: list[int] = []
    batcher.before_work = lambda: rows_seen.append(batcher.active_rows)
    futures = [batcher.submit(Request(loaded, [p], 1, Sampling(6, temperature=0))) for p in PROMPTS * 3]
    assert all(len(f.result(timeout=60)) == 1 for f in futures)
    assert max(rows_seen) == 3
    # a request larger than the whole batch still runs, alone
    big = batcher.submit(Request(loaded, [PROMPTS[0]], 5, Sampling(4, temperature=1.0, seed=0)))
    assert len(big.result(timeout=60)) == 5


def test_a_full_line_is_refused_with_429_and_retry_after(tiny, tokenizer):
    loaded = loaded_model(tiny, tokenizer)
    batcher = Batcher(max_rows=1, max_waiting=2)
    gate = threading.Event()
    batcher.before_work = gate.wait  # holds the generation thread, so requests stay in line
    queued = [batcher.submit(Request(loaded, [PROMPTS[0]], 1, Sampling(3, temperature=0))) for _ in range(2)]
    with pytest.raises(QueueFull):
        batcher.submit(Request(loaded, [PROMPTS[0]], 1, Sampling(3, temperature=0)))

    async def refused():
        await generation_thread.answer(batcher, Request(loaded, [PROMPTS[0]], 1, Sampling(3, temperature=0)))

    with pytest.raises(APIError) as error:
        asyncio.run(refused())
    assert error.value.status == 429 and int(error.value.headers["Retry-After"]) >= 1
    gate.set()
    assert all(len(f.result(timeout=30)) == 1 for f in queued)  # the queued ones are answered


def test_a_shared_prompt_start_is_computed_once(tiny, tokenizer):
    loaded = loaded_model(tiny, tokenizer)
    system = list(range(100, 140))  # 40 tokens every prompt starts with
    prompts = [system + [5, 6, 7], system + [8, 9], system + [10]]
    cold = Batcher(prefix_bytes=0)
    wanted = [answer(cold, Request(loaded, [p], 1, Sampling(8, temperature=0)))[0].text for p in prompts]
    warm = Batcher()
    got = [answer(warm, Request(loaded, [p], 1, Sampling(8, temperature=0)))[0].text for p in prompts]
    base = next(iter(warm._bases.values()))
    assert base.prefixes.hits == 2 and base.prefixes.reused_tokens == 2 * 40
    assert got == wanted
