"""Batched greedy generation (sorted batches, middle padding, shared prefix cache) gives exactly what
each prompt gives on its own."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.models.generation import MIN_SHARED_PREFIX, common_prefix_length, generate_batch
from tunesmith.models.kv_cache import expanded_cache
from tunesmith.models.load import load_model

SYSTEM = "You are a helpful assistant. Answer in a few words. The quick brown fox jumps over the lazy dog."
USERS = [  # not in length order, so results have to be put back in input order
    "Summarise the call. Customer: CU-1234 Product: FBX-200 Issue: no signal.",
    "Hello!",
    "0123456789",
    "How are you today?",
    "Classify the text as one of: negative, positive.",
    "The lazy dog",
    "fox",
]
MAX_NEW = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_model_dir, tiny_tokenizer):
    """The tiny model re-initialised at O(1) scale, so greedy decoding has clear winners (no near-ties
    that rounding could flip) and varied output; the end-of-turn logit is boosted (in an untied head)
    so that some answers stop early and others run to the cap."""
    loaded = load_model(tiny_model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in loaded.named_parameters():
            if "norm" in name:
                continue
            if "embed" in name:
                parameter.normal_(0.0, 1.0)
            else:
                parameter.normal_(0.0, 2.0 / math.sqrt(parameter.shape[1]))
        head = loaded.get_input_embeddings().weight.detach().clone()
        head[tiny_tokenizer.eos_token_id] *= 2.0
        loaded.lm_head.weight = torch.nn.Parameter(head)
    return loaded


def chat_prompt(tokenizer, user: str, system: str | None = SYSTEM) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy(model, eos: int, prompt: list[int], max_new: int) -> list[int]:
    """The plain reference: full forward pass per step, no cache, no padding, stop after end-of-turn."""
    sequence, new = list(prompt), []
    for _ in range(max_new):
        token = int(model(torch.tensor([sequence])).logits[0, -1].argmax())
        new.append(token)
        sequence.append(token)
        if token == eos:
            break
    return new


@pytest.fixture(scope="module")
def chat_prompts(tiny_tokenizer) -> list[list[int]]:
    return [chat_prompt(tiny_tokenizer, user) for user in USERS]


@pytest.fixture(scope="module")
def references(model, tiny_tokenizer, chat_prompts) -> list[list[int]]:
    return [greedy(model, tiny_tokenizer.eos_token_id, p, MAX_NEW) for p in chat_prompts]


def expected(tokenizer, new: list[int]) -> tuple[str, int]:
    return tokenizer.decode(new, skip_special_tokens=True).strip(), len(new)


def test_the_prompts_share_a_long_prefix_and_the_answers_differ(tiny_tokenizer, chat_prompts, references):
    shared = common_prefix_length(chat_prompts)
    assert shared >= MIN_SHARED_PREFIX and shared >= 16
    assert len({len(p) for p in chat_prompts}) == len(chat_prompts)  # all of different lengths
    eos = tiny_tokenizer.eos_token_id
    # some answers stop at the end-of-turn token, some run to the cap: both paths are exercised
    stopped = [new for new in references if new[-1] == eos]
    assert stopped and len(stopped) < len(references)
    assert len({len(new) for new in references}) >= 4
    assert len({tuple(new) for new in references}) == len(references)


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [4, 16])
def test_batched_equals_one_at_a_time(model, tiny_tokenizer, chat_prompts, references, share_prefix, batch_size):
    batched = generate_batch(
        model, tiny_tokenizer, chat_prompts, MAX_NEW, batch_size=batch_size, share_prefix=share_prefix
    )
    alone = [
        generate_batch(model, tiny_tokenizer, [p], MAX_NEW, batch_size=1, share_prefix=False)[0] for p in chat_prompts
    ]
    assert len(batched) == len(chat_prompts)
    for got, single, new in zip(batched, alone, references):  # in input order
        assert (got.text, got.new_tokens) == (single.text, single.new_tokens) == expected(tiny_tokenizer, new)
        assert 1 <= got.new_tokens <= MAX_NEW and got.seconds > 0


def test_stops_at_end_of_turn(model, tiny_tokenizer, chat_prompts, references):
    generated = generate_batch(model, tiny_tokenizer, chat_prompts, MAX_NEW, batch_size=4)
    eos = tiny_tokenizer.eos_token_id
    for got, new in zip(generated, references):
        assert got.new_tokens <= MAX_NEW
        if new[-1] == eos:  # stopped: the count includes the end-of-turn token, nothing after it
            assert got.new_tokens == len(new)
            assert "<|im_end|>" not in got.text
        else:
            assert got.new_tokens == MAX_NEW


def test_a_short_common_prefix_is_not_cached(model, tiny_tokenizer):
    """Prompts sharing fewer than 16 tokens: plain left padding, same answers."""
    prompts = [
        tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in [
            "The quick brown fox",
            "The lazy dog jumps over",
            "Hello! How are you today?",
            "Customer: CU-1234 Product: FBX-200",
        ]
    ]
    assert common_prefix_length(prompts) < MIN_SHARED_PREFIX
    batched = generate_batch(model, tiny_tokenizer, prompts, 8, batch_size=4)
    for got, prompt in zip(batched, prompts):
        assert (got.text, got.new_tokens) == expected(
            tiny_tokenizer, greedy(model, tiny_tokenizer.eos_token_id, prompt, 8)
        )


def test_one_prompt_with_a_long_prefix_of_itself(model, tiny_tokenizer, chat_prompts, references):
    """A single prompt shares all but its last token with itself: the prefix cache path, batch of one."""
    for prompt, new in zip(chat_prompts[:2], references[:2]):
        got = generate_batch(model, tiny_tokenizer, [prompt], MAX_NEW, share_prefix=True)[0]
        assert (got.text, got.new_tokens) == expected(tiny_tokenizer, new)


def test_identical_prompts_and_empty_input(model, tiny_tokenizer, chat_prompts, references):
    got = generate_batch(model, tiny_tokenizer, [chat_prompts[1]] * 3, MAX_NEW, batch_size=2)
    assert [(g.text, g.new_tokens) for g in got] == [expected(tiny_tokenizer, references[1])] * 3
    assert generate_batch(model, tiny_tokenizer, [], MAX_NEW) == []


def test_training_mode_is_restored(model, tiny_tokenizer, chat_prompts):
    model.train()
    try:
        generate_batch(model, tiny_tokenizer, chat_prompts[:2], 2)
        assert model.training
    finally:
        model.eval()


def test_the_cache_appends_in_place_and_holds_what_concatenation_would():
    # A prefix of 5 for 3 rows, then a 4-token prompt and single decode steps: past the reserved room
    # (12) the buffer doubles; a crop keeps writing after the cropped length; a replaced tensor (beam
    # reordering) is copied before the next write. Against plain concatenation at every point.
    generator = torch.Generator().manual_seed(0)
    states = lambda length, batch=3: torch.randn(batch, 2, length, 4, generator=generator)  # noqa: E731
    prefix = [(states(5, 1), states(5, 1))]
    cache = expanded_cache(prefix, 3, room=12)
    layer = cache.layers[0]
    expected_keys, expected_values = prefix[0][0].expand(3, -1, -1, -1), prefix[0][1].expand(3, -1, -1, -1)
    buffers = []
    for length in (4, 1, 1, 1, 1, 1, 1):
        keys, values = states(length), states(length)
        got_keys, got_values = cache.update(keys, values, 0)
        expected_keys = torch.cat([expected_keys, keys], dim=-2)
        expected_values = torch.cat([expected_values, values], dim=-2)
        assert torch.equal(got_keys, expected_keys) and torch.equal(got_values, expected_values)
        buffers.append(got_keys.data_ptr())
    assert prefix[0][0].shape == (1, 2, 5, 4)  # the prefix itself is untouched
    assert buffers[:4] == [buffers[0]] * 4  # written in place while within the room (5 + 4 + 3 = 12)
    assert buffers[4] != buffers[0] and buffers[4:] == [buffers[4]] * 3  # then one doubling
    assert cache.get_seq_length() == 15
    layer.crop(-2)  # drop the last 2 tokens
    keys, values = states(1), states(1)
    got_keys, _ = cache.update(keys, values, 0)
    assert torch.equal(got_keys, torch.cat([expected_keys[..., :13, :], keys], dim=-2))
    layer.reorder_cache(torch.tensor([2, 0, 1]))
    reordered = got_keys[[2, 0, 1]]
    keys, values = states(1), states(1)
    got_keys, _ = cache.update(keys, values, 0)
    assert torch.equal(got_keys, torch.cat([reordered, keys], dim=-2))
