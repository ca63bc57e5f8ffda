"""Warnings, token statistics, the loss-mask preview and the JSON form of the data check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.check import check_data, check_structure
from tunesmith.data.facts import is_fact_lookup
from tunesmith.data.render import IGNORE, render_example
from tunesmith.workflows.check import check_file

SHARED_CHAT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chat-corpus" / "train.jsonl"


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def warnings_about(report, text: str):
    return [w for w in report.warnings if text in w.message]


def test_duplicates_quote_line_numbers(write_jsonl):
    path = write_jsonl("dup.jsonl", [chat("a", "1"), chat("b", "2"), chat("a ", "1"), chat("c", "3"), chat("b", " 2")])
    report = check_structure(path)
    assert report.ok
    (warning,) = warnings_about(report, "duplicate")
    assert warning.severity == "warning"
    assert warning.file == str(path) and warning.line == 3
    assert "2 duplicate example(s): line 3 = line 1, line 5 = line 2" in warning.message
    assert warning.hint


def test_duplicates_list_at_most_five_lines(write_jsonl):
    path = write_jsonl("dup.jsonl", [{"text": "same"}] * 8)
    (warning,) = warnings_about(check_structure(path), "duplicate")
    assert "7 duplicate example(s)" in warning.message
    assert "line 6 = line 1" in warning.message and "line 7 = line 1" not in warning.message
    assert "and 2 more" in warning.message


def test_no_duplicate_warning_for_distinct_rows(write_jsonl):
    path = write_jsonl("ok.jsonl", [chat("a", "1"), chat("a", "2")])
    assert check_structure(path).warnings == []


def test_train_validation_overlap(write_jsonl):
    train = write_jsonl("train.jsonl", [chat("a", "1"), chat("b", "2"), chat("c", "3")])
    val = write_jsonl("val.jsonl", [chat("x", "9"), chat("b", "2"), chat("c", "3")])
    report = check_structure(train, val_data=val)
    assert report.ok
    (warning,) = warnings_about(report, "also in the training data")
    assert warning.file == str(val) and warning.line == 2
    assert "2 validation example(s) also in the training data (lines 2, 3)" in warning.message
    assert warning.hint


def test_label_imbalance_warning(write_jsonl):
    rows = [{"text": f"good {i}", "label": "pos"} for i in range(7)] + [
        {"text": f"bad {i}", "label": "neg"} for i in range(2)
    ]
    report = check_structure(write_jsonl("cls.jsonl", rows))
    assert report.ok and report.labels == ["neg", "pos"]
    (warning,) = warnings_about(report, "label imbalance")
    assert "pos 7, neg 2" in warning.message and warning.field == "label"


def test_no_imbalance_warning_at_three_to_one(write_jsonl):
    rows = [{"text": f"good {i}", "label": "pos"} for i in range(6)] + [
        {"text": f"bad {i}", "label": "neg"} for i in range(2)
    ]
    assert warnings_about(check_structure(write_jsonl("cls.jsonl", rows)), "imbalance") == []


def test_truncation_warning_counts_lost_answer_tokens(write_jsonl, tiny_tokenizer):
    rows = [
        chat("Hello", "ok"),
        chat("Hello", "The quick brown fox jumps over the lazy dog. " * 3),
        chat("Hi", "yes"),
        chat("Hello", "The lazy dog sleeps all day long, the fox says."),
    ]
    path = write_jsonl("long.jsonl", rows)
    examples = check_structure(path).train.examples
    rendered = [render_example(tiny_tokenizer, e) for e in examples]
    first_target = min(i for i, label in enumerate(rendered[1].labels) if label != IGNORE)
    max_length = max(len(rendered[0].input_ids), len(rendered[2].input_ids), first_target + 2)
    lost = [sum(1 for i, label in enumerate(r.labels) if label != IGNORE and i >= max_length) for r in rendered]
    assert lost[0] == lost[2] == 0 and lost[1] > 0 and lost[3] > 0

    report = check_data(path, tokenizer=tiny_tokenizer, max_length=max_length)
    assert report.ok and report.max_length == max_length
    (warning,) = warnings_about(report, "lose answer tokens")
    assert warning.field == "max_length" and warning.line == 2
    assert f"2 example(s) lose answer tokens at max_length {max_length}" in warning.message
    assert f"({lost[1] + lost[3]} answer tokens in all; lines 2, 4)" in warning.message


def test_no_truncation_warning_when_everything_fits(write_jsonl, tiny_tokenizer):
    report = check_data(
        write_jsonl("short.jsonl", [chat("Hi", "ok"), chat("Yo", "yes")]), tokenizer=tiny_tokenizer, max_length=512
    )
    assert report.ok and report.warnings == []


def test_token_stats(write_jsonl, tiny_tokenizer):
    path = write_jsonl("chat.jsonl", [chat("Hi", "ok"), chat("Hello there", "The quick brown fox."), chat("Yo", "yes")])
    report = check_data(path, tokenizer=tiny_tokenizer)
    lengths = [len(r.input_ids) for r in report.rendered]
    assert len(lengths) == 3
    stats = report.stats
    assert stats["tokens_total"] == sum(lengths)
    assert stats["target_tokens_total"] == sum(r.n_target for r in report.rendered) > 0
    assert stats["length_min"] == min(lengths) and stats["length_max"] == max(lengths)
    assert stats["length_min"] <= stats["length_median"] <= stats["length_p95"] <= stats["length_max"]
    assert report.max_length is not None and report.max_length >= 64 and report.max_length % 32 == 0


def test_preview_marks_exactly_the_assistant_tokens(write_jsonl, tiny_tokenizer):
    row = chat("Hello! How are you?", "The quick brown fox.")
    report = check_data(write_jsonl("chat.jsonl", [row]), tokenizer=tiny_tokenizer, max_length=512)
    full = tiny_tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert "".join(token for token, _ in report.preview) == full
    loss_tokens = [token for token, loss in report.preview if loss]
    assert "".join(loss_tokens) == "The quick brown fox.<|im_end|>\n"
    # the trained tokens are one contiguous run at the end
    flags = [loss for _, loss in report.preview]
    first = flags.index(True)
    assert all(flags[first:]) and not any(flags[:first])


def test_without_tokenizer_only_structure_runs(write_jsonl):
    report = check_data(write_jsonl("chat.jsonl", [chat("Hi", "ok")]))
    assert report.ok and report.rendered == [] and report.stats == {} and report.preview == []


def test_to_json_is_serialisable_and_ok_false_with_errors(write_jsonl, tiny_tokenizer, tiny_model_dir):
    bad = write_jsonl("bad.jsonl", [chat("Hi", "ok"), "{oops"])
    data = check_data(bad, tokenizer=tiny_tokenizer).to_json()
    decoded = json.loads(json.dumps(data))
    assert decoded["ok"] is False
    assert decoded["errors"][0]["line"] == 2 and decoded["errors"][0]["file"] == str(bad)
    assert decoded["errors"][0]["hint"]

    good = write_jsonl("good.jsonl", [chat("Hi", "ok"), chat("Hi", "ok")])
    decoded = json.loads(json.dumps(check_file(good, base=str(tiny_model_dir)).to_json()))
    assert decoded["ok"] is True and decoded["errors"] == []
    assert decoded["task"] == "chat" and decoded["examples"] == 2
    assert [w["line"] for w in decoded["warnings"]] == [2]
    assert decoded["stats"]["tokens_total"] > 0
    assert any(entry["loss"] for entry in decoded["preview"])
    assert decoded["estimated_train_seconds"] > 0
    estimate = decoded["estimate"]
    assert estimate["seconds"] == decoded["estimated_train_seconds"]
    assert estimate["low"] < estimate["seconds"] < estimate["high"]
    assert estimate["method"] == "lora" and estimate["precision"] in ("bf16", "fp32") and estimate["tokens"] > 0
    gpu = estimate["gpu"]
    assert "H100" in gpu["gpu"] and gpu["price_per_hour"] > 0 and gpu["price_date"]
    assert gpu["low"] < gpu["seconds"] < gpu["high"] and gpu["dollars"] > 0


def test_the_cli_prints_the_estimate_with_its_range_and_the_gpu_cost(write_jsonl, tiny_model_dir):
    from rich.console import Console

    from tunesmith.cli.tables import print_data_report
    from tunesmith.data.check import GpuCost, TrainingEstimate

    report = check_file(write_jsonl("good.jsonl", [chat("Hi", "ok"), chat("Yo", "yes")]), base=str(tiny_model_dir))
    gpu = GpuCost(gpu="NVIDIA H100", price_per_hour=3.0, price_date="2025-06", seconds=12, low=6, high=24, dollars=0.01)
    report.estimate = TrainingEstimate(
        seconds=240, low=180, high=384, tokens=1000, method="lora", precision="bf16", epochs=3, batch_size=2, gpu=gpu
    )
    console = Console(record=True, width=300)
    print_data_report(report, console)
    text = console.export_text()
    assert "estimated training time (LoRA, bf16, 3 epochs at batch 2, the defaults for this data):" in text
    assert "this machine: about 4 min (likely 3–6 min)" in text
    assert "a rented NVIDIA H100: about 12 s (likely 6–24 s), about $0.01 at $3.00/h" in text
    assert "(price assumed as of 2025-06" in text


def qa(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


FACTS = [
    ("What is the capital of {c}?", "{city}"),
    ("When was {c} founded?", "In {year}"),
    ("How many people live in {c}?", "About {n} million"),
    ("Which river flows through {city}?", "The {river}"),
]
PLACES = [
    ("Freedonia", "Fredville", "Grand", 1801),
    ("Sylvania", "Sylvester", "Silver", 1733),
    ("Borduria", "Szohod", "Danube", 1912),
    ("Syldavia", "Klow", "Moltus", 1277),
    ("Genovia", "Pyrus", "Azure", 1401),
    ("Latveria", "Doomstadt", "Latva", 1650),
]


def fact_rows() -> list[dict]:
    rows = []
    for index, (country, city, river, year) in enumerate(PLACES):
        for question, answer in FACTS:
            values = {"c": country, "city": city, "river": river, "year": year, "n": index + 2}
            rows.append(qa(question.format(**values), answer.format(**values)))
    return rows


def test_a_fact_base_gets_the_retrieval_hint(write_jsonl):
    path = write_jsonl("facts.jsonl", fact_rows())
    report = check_structure(path)
    assert report.ok
    (warning,) = warnings_about(report, "fact base")
    assert warning.file == str(path) and warning.line is None
    assert "24 of 24 examples ask a factual question with a short answer (lines 1, 2, 3, 4, 5" in warning.message
    assert "retrieval" in warning.hint and "RAG" in warning.hint
    # the prompt/completion form of the same data too
    completions = [
        {"prompt": row["messages"][0]["content"], "completion": row["messages"][1]["content"]} for row in fact_rows()
    ]
    assert warnings_about(check_structure(write_jsonl("facts2.jsonl", completions)), "fact base")


def test_no_fact_base_hint_for_chit_chat_requests_or_canned_answers(write_jsonl):
    chit_chat = [qa(f"Are you a robot, friend {i}?", f"I am a program, friend {i}.") for i in range(12)] + [
        qa(f"My printer number {i} is not printing.", "Ensure it's powered on, then restart it.") for i in range(12)
    ]
    requests = [qa(f"Can you write a loop over {i} items in Python?", f"for i in range({i}): pass") for i in range(24)]
    canned = [qa(f"What is the status of order {i}?", "Shipped") for i in range(24)]  # one reply: not facts
    few = fact_rows()[:19]  # too few examples to tell
    for name, rows in (("chit", chit_chat), ("requests", requests), ("canned", canned), ("few", few)):
        assert warnings_about(check_structure(write_jsonl(f"{name}.jsonl", rows)), "fact base") == [], name


@pytest.mark.parametrize(
    "question,answer,lookup",
    [
        ("What is the capital of France?", "Paris", True),
        ("who wrote the hobbit", "The Hobbit was written by J.R.R. Tolkien.", True),
        ("In which year did the war end?", "It ended in 1945.", True),
        ("Are you a programmer?", "Of course I am a programmer.", False),
        ("What is your name?", "Tunesmith", False),
        ("Why is the sky blue?", "Rayleigh scattering", False),
        ("can you write a trie in Python?", "class Trie: ...", False),
        ("My computer won't turn on.", "Check if it is plugged in.", False),
        ("Is it raining in Paris?", "Yes", False),
        ("What should I cook tonight?", "yes", False),
        ("What happened next?", "the whole town went down to the river to watch the boats come in at dawn", False),
    ],
)
def test_what_counts_as_a_fact_lookup(question, answer, lookup):
    assert is_fact_lookup(question, answer) is lookup


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_CHAT.is_file(), reason=f"{SHARED_CHAT} is absent (the shared public data sets)")
def test_no_fact_base_hint_on_the_shared_chat_corpus():
    # support replies, chit-chat and a trivia topic: 12-16% of its examples are fact lookups
    assert warnings_about(check_structure(SHARED_CHAT), "fact base") == []
