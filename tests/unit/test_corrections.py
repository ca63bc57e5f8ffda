"""Corrections (reviewed answers) -> supervised rows and preference pairs: `tunesmith data from-corrections`."""

from __future__ import annotations

import json

from tunesmith.cli import main
from tunesmith.data.check import check_structure
from tunesmith.feedback.corrections import convert

CONVERSATION = [
    {"role": "system", "content": "You help customers of Spokes & Co."},
    {"role": "user", "content": "Do you fix punctures?"},
    {"role": "assistant", "content": "Yes, while you wait."},
    {"role": "user", "content": "How much?"},
]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", "from-corrections", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_supervised_rows_and_pairs_exactly(write_jsonl, tmp_path, capsys):
    path = write_jsonl(
        "corrections.jsonl",
        [
            {"prompt": "When are you open?", "response": "9 to 6, Monday to Saturday.", "verdict": "good"},
            {
                "prompt": "Can I return a helmet?",
                "response": "No.",
                "verdict": "bad",
                "correction": "Yes, within 30 days with the receipt.",
            },
            {"messages": CONVERSATION, "response": "It is free.", "verdict": "bad", "correction": "It costs 8 pounds."},
        ],
    )
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, path, "--out", out)
    assert code == 0
    assert read_jsonl(out / "sft.jsonl") == [
        {
            "messages": [
                {"role": "user", "content": "When are you open?"},
                {"role": "assistant", "content": "9 to 6, Monday to Saturday."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Can I return a helmet?"},
                {"role": "assistant", "content": "Yes, within 30 days with the receipt."},
            ]
        },
        # the earlier assistant turn was not under review: context only
        {
            "messages": [
                *CONVERSATION[:2],
                {**CONVERSATION[2], "weight": 0},
                CONVERSATION[3],
                {"role": "assistant", "content": "It costs 8 pounds."},
            ]
        },
    ]
    assert read_jsonl(out / "pairs.jsonl") == [
        {"prompt": "Can I return a helmet?", "chosen": "Yes, within 30 days with the receipt.", "rejected": "No."},
        {"prompt": CONVERSATION, "chosen": "It costs 8 pounds.", "rejected": "It is free."},
    ]
    assert sorted(p.name for p in out.iterdir()) == ["pairs.jsonl", "sft.jsonl"]  # no temporary files left
    assert "1 good, 2 bad, 0 duplicate(s) written once, 0 conflict(s) left out" in stdout
    assert f"wrote {out / 'sft.jsonl'}: 3 row(s)" in stdout and f"wrote {out / 'pairs.jsonl'}: 2 row(s)" in stdout
    assert f"tunesmith train {out / 'sft.jsonl'}" in stdout
    assert f"tunesmith train {out / 'pairs.jsonl'} --method dpo --base NAME" in stdout

    # Both outputs are what the data check reads as chat and preference data.
    for name, task, count in (("sft.jsonl", "chat", 3), ("pairs.jsonl", "preference", 2)):
        report = check_structure(out / name, "auto", None)
        assert (report.task, report.ok, len(report.train.examples)) == (task, True, count), report.issues


def test_every_error_with_file_line_field_and_nothing_written(write_jsonl, tmp_path, capsys):
    path = write_jsonl(
        "corrections.jsonl",
        [
            {"prompt": "Hours?", "response": "9 to 6.", "verdict": "good", "correction": "9 to 5."},
            {"prompt": "Hours?", "response": "9 to 6.", "verdict": "bad"},
            {"prompt": "Hours?", "response": "9 to 6.", "verdict": "Bad", "correction": "9 to 5.", "note": "x"},
            "{not json",
            {"prompt": "Hours?", "messages": CONVERSATION, "response": "x", "verdict": "bad", "correction": "y"},
            {
                "messages": [*CONVERSATION, {"role": "assistant", "content": "9 to 6."}],
                "response": "a",
                "verdict": "good",
            },
            {"response": 6, "verdict": "bad", "correction": ""},
            {"prompt": "Hours?", "response": "9 to 6.", "verdict": "bad", "correction": " 9 to 6."},
            {"prompt": "Hours?", "response": "  ", "verdict": "good"},
        ],
    )
    result = convert(path)
    assert [(i.line, i.field) for i in result.errors] == [
        (1, "correction"),
        (2, "correction"),
        (3, "note"),
        (3, "verdict"),
        (4, None),
        (5, "prompt"),
        (6, "messages"),
        (7, "prompt, messages"),
        (7, "response"),
        (7, "correction"),
        (8, "correction"),
        (9, "response"),
    ]
    assert result.sft == [] and result.pairs == []
    good_with_correction = result.errors[0]
    assert str(good_with_correction) == (
        f"{path}:1: error: correction: a good answer with a correction (hint: a good answer needs no correction; "
        "set verdict to bad or drop the correction)"
    )
    assert result.errors[3].hint == 'write it exactly as "bad", in lower case'
    assert "must end with a user turn" in result.errors[6].message

    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, path, "--out", out)
    assert code == 1 and stdout == ""
    assert str(good_with_correction) in stderr and f"{path}:4: error: bad JSON" in stderr
    assert "12 error(s): nothing written" in stderr
    assert not out.exists()


def test_failed_conversion_keeps_the_previous_outputs(write_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    good = write_jsonl("good.jsonl", [{"prompt": "Hi", "response": "Hello!", "verdict": "bad", "correction": "Hi!"}])
    assert run(capsys, good, "--out", out)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("sft.jsonl", "pairs.jsonl")}
    broken = write_jsonl("broken.jsonl", [{"prompt": "Hi", "response": "Hello!", "verdict": "bad"}])
    assert run(capsys, broken, "--out", out)[0] == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_messages_prompts_follow_the_chat_rules(write_jsonl):
    def errors(messages) -> list[tuple[str, str]]:
        path = write_jsonl("c.jsonl", [{"messages": messages, "response": "r", "verdict": "bad", "correction": "c"}])
        return [(i.field, i.message) for i in convert(path).errors]

    user, assistant = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    assert errors([{"role": "system", "content": "s"}, user, assistant, user]) == []
    assert errors([user, {"role": "system", "content": "s"}, user]) == [
        ("messages[1].role", "system message after the start")
    ]
    assert errors([user, user]) == [("messages[1].role", "two user messages in a row")]
    assert errors([assistant, user]) == [("messages[0].role", "assistant speaks before the user")]
    assert errors([{**user, "weight": 1}]) == [("messages[0].weight", "weight only applies to assistant messages")]
    assert errors([{"role": "bot", "content": "q"}]) == [("messages[0].role", "unknown role 'bot'")]
    assert errors([{"role": "user", "content": " "}]) == [("messages[0].content", "empty content")]
    assert errors([]) == [("messages", "must be a non-empty list of messages")]
    assert errors("q") == [("messages", "must be a non-empty list of messages")]


def test_duplicates_are_written_once(write_jsonl, tmp_path, capsys):
    row = {"prompt": "Do you sell tubes?", "response": "No.", "verdict": "bad", "correction": "Yes, all sizes."}
    same_as_string = {
        "messages": [{"role": "user", "content": "Do you sell tubes?"}],
        **{k: v for k, v in row.items() if k != "prompt"},
    }
    other = {"prompt": "Open today?", "response": "Yes, until 6.", "verdict": "good"}
    path = write_jsonl("c.jsonl", [row, other, row, same_as_string])
    result = convert(path)
    assert result.duplicates == 2 and result.errors == []
    assert [str(w) for w in result.warnings] == [
        f"{path}:3: warning: duplicate: line 3 = line 1 (hint: written once; delete the repeat to silence this)",
        f"{path}:4: warning: duplicate: line 4 = line 1 (hint: written once; delete the repeat to silence this)",
    ]
    assert len(result.sft) == 2 and result.pairs == [
        {"prompt": "Do you sell tubes?", "chosen": "Yes, all sizes.", "rejected": "No."}
    ]
    code, stdout, stderr = run(capsys, path, "--out", tmp_path / "out")
    assert code == 0 and "2 duplicate(s) written once" in stdout and "line 3 = line 1" in stderr


def test_conflicting_reviews_are_left_out(write_jsonl, tmp_path, capsys):
    path = write_jsonl(
        "c.jsonl",
        [
            {"prompt": "Sunday hours?", "response": "Closed.", "verdict": "good"},
            {"prompt": "Fit a child seat?", "response": "Yes.", "verdict": "bad", "correction": "Not on carbon stays."},
            {"prompt": "Sunday hours?", "response": "Closed.", "verdict": "bad", "correction": "10 to 4."},
            {
                "prompt": "Fit a child seat?",
                "response": "Yes.",
                "verdict": "bad",
                "correction": "Only on steel frames.",
            },
            # the same prompt with another response is a second sample, not a conflict
            {"prompt": "Sunday hours?", "response": "10 to 4.", "verdict": "good"},
        ],
    )
    result = convert(path)
    assert [(c.lines, c.field) for c in result.conflicts] == [([1, 3], "verdict"), ([2, 4], "correction")]
    assert [(w.line, w.field) for w in result.warnings] == [(3, "verdict"), (4, "correction")]
    assert "conflicts with line 1: same prompt and response, different verdict" in result.warnings[0].message
    assert result.sft == [
        {"messages": [{"role": "user", "content": "Sunday hours?"}, {"role": "assistant", "content": "10 to 4."}]}
    ]
    assert result.pairs == []

    out = tmp_path / "out"
    code, stdout, _ = run(capsys, path, "--out", out)
    assert code == 0 and "2 conflict(s) left out (4 line(s))" in stdout
    assert "pairs.jsonl not written: no bad answers" in stdout and not (out / "pairs.jsonl").exists()
    assert "--method dpo" not in stdout


def test_only_conflicts_is_an_error(write_jsonl, tmp_path, capsys):
    path = write_jsonl(
        "c.jsonl",
        [
            {"prompt": "p", "response": "r", "verdict": "good"},
            {"prompt": "p", "response": "r", "verdict": "bad", "correction": "c"},
        ],
    )
    code, _, stderr = run(capsys, path, "--out", tmp_path / "out")
    assert code == 1 and "every review is in a conflict" in stderr and not (tmp_path / "out").exists()


def test_empty_bad_response_gives_no_pair(write_jsonl):
    path = write_jsonl("c.jsonl", [{"prompt": "p", "response": "", "verdict": "bad", "correction": "c"}])
    result = convert(path)
    assert result.errors == [] and result.pairs == [] and len(result.sft) == 1
    assert [(w.line, w.field, w.message) for w in result.warnings] == [
        (1, "response", "empty response: no preference pair")
    ]


def test_missing_and_empty_files(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert [str(i) for i in convert(tmp_path / "empty.jsonl").errors] == [
        f"{tmp_path / 'empty.jsonl'}: error: the file has no records (hint: add one JSON object per line)"
    ]
    code, _, stderr = run(capsys, tmp_path / "nope.jsonl", "--out", tmp_path / "out")
    assert code == 1 and "nope.jsonl: error: file not found" in stderr
