"""Warnings, token statistics, the loss-mask preview and the JSON form of the data check."""

from __future__ import annotations

import json

from tunesmith.data.check import check_data, check_structure
from tunesmith.data.render import IGNORE, render_example
from tunesmith.workflows.check import check_file


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
