"""The systems an evaluation compares: the seeded, balanced shots, the few-shot conversation, the
pool of examples kept with a version, and the LoRA switch between base and fine-tuned."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tunesmith.data.labels import classify_prompt
from tunesmith.data.records import Example, example_record
from tunesmith.data.render import IGNORE, render_messages
from tunesmith.data.shots import POOL_SIZE, load_pool, pick_shots, pool_records
from tunesmith.evaluation.systems import (
    adapter_merged,
    adapter_off,
    conversation,
    display_name,
    same_model_systems,
    split_answer,
)
from tunesmith.models.load import add_lora, load_model

LABELS = ["negative", "positive"]


def classify_pool(n: int = 20, labels=LABELS) -> list[Example]:
    return [Example(line=i + 1, text=f"text number {i}", label=labels[i % len(labels)]) for i in range(n)]


def chat_example(i: int, system: str | None = None) -> Example:
    messages = [{"role": "system", "content": system, "weight": 1}] if system else []
    messages += [
        {"role": "user", "content": f"question {i}", "weight": 1},
        {"role": "assistant", "content": f"first answer {i}", "weight": 0},
        {"role": "user", "content": f"follow-up {i}", "weight": 1},
        {"role": "assistant", "content": f"answer {i}", "weight": 1},
    ]
    return Example(line=i + 1, messages=messages)


def lines(examples: list[Example]) -> list[int]:
    return [e.line for e in examples]


# pick_shots ---------------------------------------------------------------------------------------


def test_pick_shots_is_seeded():
    pool = classify_pool()
    assert lines(pick_shots(pool, 4, seed=0)) == lines(pick_shots(pool, 4, seed=0))
    assert lines(pick_shots(pool, 4, seed=0)) != lines(pick_shots(pool, 4, seed=1))
    chat = [chat_example(i) for i in range(20)]
    assert lines(pick_shots(chat, 4, seed=0)) == lines(pick_shots(chat, 4, seed=0))
    assert lines(pick_shots(chat, 4, seed=0)) != lines(pick_shots(chat, 4, seed=1))


def test_pick_shots_does_not_change_the_pool():
    pool = classify_pool()
    before = lines(pool)
    pick_shots(pool, 6, seed=3)
    assert lines(pool) == before


def test_pick_shots_is_balanced_over_labels():
    for seed in range(5):
        shots = pick_shots(classify_pool(), 4, seed)
        assert Counter(s.label for s in shots) == {"negative": 2, "positive": 2}
        assert len(set(lines(shots))) == 4
    # three labels, k=6: two of each; odd k: every label shown, counts differ by at most one
    three = classify_pool(30, ["a", "b", "c"])
    assert Counter(s.label for s in pick_shots(three, 6, 0)) == {"a": 2, "b": 2, "c": 2}
    counts = Counter(s.label for s in pick_shots(three, 5, 0))
    assert set(counts) == {"a", "b", "c"} and max(counts.values()) - min(counts.values()) <= 1
    # a rare label runs out: the others fill the remaining places
    skewed = classify_pool(10, ["a"]) + [Example(line=99, text="rare", label="b")]
    assert Counter(s.label for s in pick_shots(skewed, 4, 0)) == {"a": 3, "b": 1}


def test_pick_shots_sizes():
    pool = classify_pool(6)
    assert sorted(lines(pick_shots(pool, 50, seed=0))) == lines(pool)  # k larger than the pool: all of it
    assert sorted(lines(pick_shots(pool, 6, seed=0))) == lines(pool)
    assert pick_shots(pool, 0, seed=0) == []
    assert pick_shots(pool, -1, seed=0) == []
    assert pick_shots([], 4, seed=0) == []
    chat = [chat_example(i) for i in range(3)]
    assert sorted(lines(pick_shots(chat, 10, seed=0))) == [1, 2, 3]
    assert len(pick_shots(chat, 2, seed=0)) == 2


# conversation / split_answer ----------------------------------------------------------------------


def test_conversation_puts_the_shots_first_with_no_loss(tiny_tokenizer):
    shots = pick_shots(classify_pool(), 4, seed=0)
    example = Example(line=1, text="the soup was great", label="positive")
    messages = conversation(example, LABELS, "Be brief.", shots)

    assert messages[0] == {"role": "system", "content": "Be brief.", "weight": 1}
    turns = messages[1:]
    assert [m["role"] for m in turns] == ["user", "assistant"] * 5
    for shot, (user, assistant) in zip(shots, zip(turns[0:8:2], turns[1:8:2])):
        assert user == {"role": "user", "content": classify_prompt(shot.text, LABELS), "weight": 0}
        assert assistant == {"role": "assistant", "content": shot.label, "weight": 0}
    assert turns[8] == {"role": "user", "content": classify_prompt("the soup was great", LABELS), "weight": 1}
    assert turns[9] == {"role": "assistant", "content": "positive", "weight": 1}

    rendered = render_messages(tiny_tokenizer, messages)
    targets = [label for label in rendered.labels if label != IGNORE]
    assert tiny_tokenizer.decode(targets) == "positive<|im_end|>\n"  # only the final answer is learnt
    assert rendered.labels[-len(targets) :] == targets  # and it is the last thing in the row


def test_conversation_without_shots_or_system_prompt(tiny_tokenizer):
    example = Example(line=1, text="ok", label="negative")
    messages = conversation(example, LABELS, None, [])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert conversation(example, LABELS, "S", [])[0]["role"] == "system"


def test_conversation_of_chat_examples_keeps_their_weights(tiny_tokenizer):
    shots = [chat_example(10, system="shot system"), chat_example(11)]
    example = chat_example(1, system="own system")
    messages = conversation(example, None, "ignored: the example has its own", shots)

    assert messages[0] == {"role": "system", "content": "own system", "weight": 1}
    assert all(m["role"] != "system" for m in messages[1:])  # the shots' system messages are dropped
    shot_turns, own = messages[1:9], messages[9:]
    assert all(m["weight"] == 0 for m in shot_turns)
    assert [m["content"] for m in shot_turns] == [
        "question 10",
        "first answer 10",
        "follow-up 10",
        "answer 10",
        "question 11",
        "first answer 11",
        "follow-up 11",
        "answer 11",
    ]
    assert own == example.messages[1:]  # the example's own turns, weights as they were
    assert [m["weight"] for m in own] == [1, 0, 1, 1]

    rendered = render_messages(tiny_tokenizer, messages)
    targets = [label for label in rendered.labels if label != IGNORE]
    assert tiny_tokenizer.decode(targets) == "answer 1<|im_end|>\n"

    # no system message of its own: the system prompt is used
    plain = conversation(chat_example(2), None, "Be brief.", shots)
    assert plain[0] == {"role": "system", "content": "Be brief.", "weight": 1}
    assert plain[9:] == chat_example(2).messages


def test_split_answer():
    messages = conversation(chat_example(1), None, "S", [chat_example(5)])
    prompt, answer = split_answer(messages)
    assert answer == "answer 1"
    assert prompt == messages[:-1] and prompt[-1] == {"role": "user", "content": "follow-up 1", "weight": 1}
    prompt, answer = split_answer(conversation(Example(line=1, text="t", label="negative"), LABELS, None, []))
    assert answer == "negative" and [m["role"] for m in prompt] == ["user"]


# records and the pool kept with a version ----------------------------------------------------------


def test_example_record():
    assert example_record(Example(line=3, text="t", label="positive")) == {"text": "t", "label": "positive"}
    assert example_record(Example(line=3, text="raw text")) == {"text": "raw text"}
    record = example_record(chat_example(1, system="s"))
    # a weight only where the reader takes one: an assistant turn not trained on
    assert record == {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "question 1"},
            {"role": "assistant", "content": "first answer 1", "weight": 0},
            {"role": "user", "content": "follow-up 1"},
            {"role": "assistant", "content": "answer 1"},
        ]
    }
    # a message without a weight keeps having none
    bare = Example(line=1, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert example_record(bare) == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    }


@pytest.mark.parametrize("kind", ["classify", "chat"])
def test_pool_records_round_trip(tmp_path, kind):
    examples = classify_pool(10) if kind == "classify" else [chat_example(i, system="s") for i in range(10)]
    records = pool_records(examples, seed=0)
    assert records == pool_records(examples, seed=0)
    assert len(records) == 10  # fewer than POOL_SIZE: every example, in a seeded order
    path = tmp_path / "fewshot.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    loaded = load_pool(path)
    assert [example_record(e) for e in loaded] == records
    assert lines(loaded) == list(range(1, 11))
    originals = sorted(json.dumps(example_record(e), sort_keys=True) for e in examples)
    assert sorted(json.dumps(r, sort_keys=True) for r in records) == originals
    if kind == "classify":
        assert all(e.messages == [] and e.label in LABELS for e in loaded)
    else:
        assert all(e.label is None and e.text is None and e.messages for e in loaded)
        assert loaded[0].messages == next(e.messages for e in examples if example_record(e) == records[0])


def test_pool_keeps_function_calling(tmp_path):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    example = Example(
        line=1,
        messages=[
            {"role": "user", "content": "Weather?", "weight": 1},
            {"role": "assistant", "content": "", "weight": 1, "tool_calls": [call]},
            {"role": "tool", "content": "sunny", "weight": 1, "tool_call_id": "call_1"},
            {"role": "assistant", "content": "Sunny.", "weight": 1},
        ],
        tools=[tool],
    )
    path = tmp_path / "fewshot.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in pool_records([example], seed=0)))
    (loaded,) = load_pool(path)
    assert loaded.messages == example.messages and loaded.tools == [tool]


def test_pool_is_capped_and_balanced():
    records = pool_records(classify_pool(200), seed=1)
    assert len(records) == POOL_SIZE
    assert Counter(r["label"] for r in records) == {"negative": POOL_SIZE // 2, "positive": POOL_SIZE // 2}


# the LoRA systems --------------------------------------------------------------------------------


def test_same_model_systems_switch_the_adapter(tiny_model_dir):
    torch.manual_seed(0)
    model = add_lora(load_model(tiny_model_dir, dtype=torch.float32), 4, 8.0, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)  # B starts at zero: make the adapter do something
    model.eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])

    def logits():
        with torch.no_grad():
            return model(input_ids=ids).logits

    adapted = logits()
    shots = classify_pool(4)
    systems = same_model_systems(model, shots)
    assert list(systems) == ["base", "few_shot", "fine_tuned"]
    assert systems["few_shot"].shots == shots and systems["base"].shots == [] == systems["fine_tuned"].shots
    assert list(same_model_systems(model, [])) == ["base", "fine_tuned"]

    with systems["base"].context():
        base = logits()
    with adapter_off(model):
        assert torch.equal(logits(), base)
    assert not torch.allclose(base, adapted, atol=1e-3)
    with systems["fine_tuned"].context():
        merged = logits()
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)  # merged = adapter applied
    torch.testing.assert_close(logits(), adapted, atol=1e-4, rtol=1e-4)  # and unmerged after
    with pytest.raises(RuntimeError):
        with adapter_merged(model):
            raise RuntimeError("boom")
    torch.testing.assert_close(logits(), adapted, atol=1e-4, rtol=1e-4)  # unmerged even on an error


def test_display_name():
    assert display_name("few_shot", 8) == "base + 8-shot prompt"
    assert display_name("base") == "base (zero-shot)" and display_name("fine_tuned") == "fine-tuned"
