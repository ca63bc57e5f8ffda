"""Format detection and every structural error of the data check (file, line, field, hint)."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.check import check_structure
from tunesmith.data.formats import read_file
from tunesmith.data.records import Issue

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}
GOOD_CHAT = {"messages": [USER, ASSISTANT]}


def chat(*messages) -> dict:
    return {"messages": list(messages)}


def errors_of(path, **kwargs) -> list[Issue]:
    return check_structure(path, **kwargs).errors


def the_error(path, **kwargs) -> Issue:
    errors = errors_of(path, **kwargs)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def assert_issue(issue: Issue, path, line, field, text: str) -> None:
    assert issue.severity == "error"
    assert issue.file == str(path)
    assert issue.line == line
    assert issue.field == field
    assert text in issue.message
    assert issue.hint.strip(), f"no hint: {issue}"
    rendered = str(issue)
    assert (f"{path}:{line}: error" if line else f"{path}: error") in rendered
    if field:
        assert f"{field}: " in rendered
    assert "(hint: " in rendered


# --------------------------------------------------------------------------- detection


def test_detects_chat(write_jsonl):
    parsed = read_file(write_jsonl("chat.jsonl", [GOOD_CHAT, chat(USER, ASSISTANT, USER, ASSISTANT)]))
    assert parsed.task == "chat" and not parsed.issues
    assert [e.line for e in parsed.examples] == [1, 2]
    assert [m["role"] for m in parsed.examples[1].messages] == ["user", "assistant", "user", "assistant"]
    assert all(m["weight"] == 1 for m in parsed.examples[0].messages)


def test_detects_prompt_completion(write_jsonl):
    parsed = read_file(write_jsonl("pc.jsonl", [{"prompt": "2+2?", "completion": "4"}]))
    assert parsed.task == "completion" and not parsed.issues
    assert parsed.examples[0].messages == [
        {"role": "user", "content": "2+2?", "weight": 1},
        {"role": "assistant", "content": "4", "weight": 1},
    ]


def test_detects_alpaca_with_and_without_input(write_jsonl):
    parsed = read_file(
        write_jsonl(
            "alpaca.jsonl",
            [
                {"instruction": "Translate", "input": "chat", "output": "cat"},
                {"instruction": "Say hi", "output": "hi"},
                {"instruction": "Say hi", "input": "  ", "output": "hi"},
            ],
        )
    )
    assert parsed.task == "completion" and not parsed.issues
    users = [e.messages[0]["content"] for e in parsed.examples]
    assert users == ["Translate\n\nchat", "Say hi", "Say hi"]
    assert parsed.examples[0].messages[1] == {"role": "assistant", "content": "cat", "weight": 1}


def test_detects_classify_jsonl(write_jsonl):
    parsed = read_file(
        write_jsonl("cls.jsonl", [{"text": "great", "label": " pos "}, {"text": "awful", "label": "neg"}])
    )
    assert parsed.task == "classify" and not parsed.issues
    assert [(e.text, e.label) for e in parsed.examples] == [("great", "pos"), ("awful", "neg")]


def test_detects_classify_csv(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text('text,label\ngreat,pos\n"awful, really",neg\n')
    parsed = read_file(path)
    assert parsed.task == "classify" and not parsed.issues
    assert [(e.line, e.text, e.label) for e in parsed.examples] == [(2, "great", "pos"), (3, "awful, really", "neg")]


def test_detects_text_jsonl(write_jsonl):
    parsed = read_file(write_jsonl("docs.jsonl", [{"text": "one document"}, {"text": "another"}]))
    assert parsed.task == "text" and not parsed.issues
    assert [e.text for e in parsed.examples] == ["one document", "another"]
    assert all(e.label is None for e in parsed.examples)


def test_detects_txt_as_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("line one\nline two\n")
    parsed = read_file(path)
    assert parsed.task == "text" and not parsed.issues
    assert len(parsed.examples) == 1 and parsed.examples[0].text == "line one\nline two\n"


def test_blank_lines_are_skipped_and_line_numbers_kept(write_jsonl):
    parsed = read_file(write_jsonl("gaps.jsonl", [GOOD_CHAT, "", "   ", GOOD_CHAT]))
    assert not parsed.issues
    assert [e.line for e in parsed.examples] == [1, 4]


def test_task_override_beats_majority(write_jsonl):
    path = write_jsonl("mixed.jsonl", [{"text": "doc one"}, {"text": "doc two"}, GOOD_CHAT])
    auto = check_structure(path)
    assert auto.task == "text"
    assert [e.line for e in auto.errors] == [3]
    forced = check_structure(path, task="chat")
    assert forced.task == "chat"
    assert [e.line for e in forced.errors] == [1, 2]
    assert all("this line is text, the file is chat" in e.message for e in forced.errors)


def test_task_override_on_csv_and_txt(tmp_path):
    csv_path = tmp_path / "cls.csv"
    csv_path.write_text("text,label\na,x\nb,y\n")
    assert check_structure(csv_path, task="classify").ok
    assert_issue(the_error(csv_path, task="chat"), csv_path, None, None, "CSV files hold classification data")
    txt = tmp_path / "doc.txt"
    txt.write_text("words")
    assert check_structure(txt, task="text").ok
    assert_issue(the_error(txt, task="completion"), txt, None, None, "a .txt file is raw text")


# --------------------------------------------------------------------------- structural errors


def test_file_not_found(tmp_path):
    path = tmp_path / "missing.jsonl"
    assert_issue(the_error(path), path, None, None, "file not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert_issue(the_error(path), path, None, None, "no records")
    txt = tmp_path / "empty.txt"
    txt.write_text("  \n")
    assert_issue(the_error(txt), txt, None, None, "the file is empty")


def test_bad_json(write_jsonl):
    path = write_jsonl("bad.jsonl", [GOOD_CHAT, '{"messages": [', GOOD_CHAT])
    assert_issue(the_error(path), path, 2, None, "bad JSON")


def test_non_object_line(write_jsonl):
    path = write_jsonl("list.jsonl", [GOOD_CHAT, "[1, 2]"])
    issue = the_error(path)
    assert_issue(issue, path, 2, None, "expected a JSON object")
    assert "list" in issue.message


def test_missing_keys_chat(write_jsonl):
    path = write_jsonl("missing.jsonl", [GOOD_CHAT, {"conversation": []}])
    assert_issue(the_error(path), path, 2, "messages", "missing key(s)")


def test_missing_keys_completion(write_jsonl):
    path = write_jsonl("missing.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "only"}])
    issue = the_error(path)
    assert_issue(issue, path, 2, "completion", "missing key(s)")
    assert "completion" in issue.hint


def test_value_must_be_a_string(write_jsonl):
    path = write_jsonl("types.jsonl", [{"prompt": 3, "completion": "b"}])
    assert_issue(the_error(path), path, 1, "prompt", "must be a string")


def test_messages_must_be_a_non_empty_list(write_jsonl):
    path = write_jsonl("empty-msgs.jsonl", [GOOD_CHAT, {"messages": []}])
    assert_issue(the_error(path), path, 2, "messages", "must be a non-empty list")


def test_unknown_top_level_keys_are_ignored_with_one_warning_per_key(write_jsonl):
    # Data sets carry ids and categories beside the trained fields: read them, say once per key what is ignored.
    path = write_jsonl("extra.jsonl", [{**GOOD_CHAT, "id": 7}, GOOD_CHAT, {**GOOD_CHAT, "id": 9, "source": "x"}])
    parsed = read_file(path)
    assert not parsed.errors and len(parsed.examples) == 3
    assert [(w.line, w.field) for w in parsed.warnings] == [(1, "id"), (3, "source")]
    assert "unknown key, ignored (on 2 lines)" in parsed.warnings[0].message
    assert "messages" in parsed.warnings[0].hint


def test_unknown_key_in_message(write_jsonl):
    path = write_jsonl("extra.jsonl", [chat({**USER, "name": "bob"}, ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[0].name", "unknown key")


def test_unknown_role(write_jsonl):
    path = write_jsonl("role.jsonl", [GOOD_CHAT, chat(USER, {"role": "bot", "content": "x"}, ASSISTANT)])
    issue = the_error(path)
    assert_issue(issue, path, 2, "messages[1].role", "unknown role 'bot'")
    assert "system, user and assistant" in issue.hint


def test_system_message_not_first(write_jsonl):
    path = write_jsonl("sys.jsonl", [chat(USER, ASSISTANT, {"role": "system", "content": "be nice"})])
    assert_issue(the_error(path), path, 1, "messages[2].role", "system message after the start")


def test_two_user_messages_in_a_row(write_jsonl):
    path = write_jsonl("twice.jsonl", [chat(USER, USER, ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[1].role", "two user messages in a row")


def test_assistant_before_user(write_jsonl):
    path = write_jsonl("order.jsonl", [chat(ASSISTANT, USER, ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[0].role", "assistant speaks before the user")
    after_system = write_jsonl("order2.jsonl", [chat({"role": "system", "content": "s"}, ASSISTANT)])
    assert_issue(the_error(after_system), after_system, 1, "messages[1].role", "assistant speaks before the user")


@pytest.mark.parametrize("content", ["", "   ", None, 5])
def test_empty_message_content(write_jsonl, content):
    path = write_jsonl("empty.jsonl", [chat({"role": "user", "content": content}, ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[0].content", "empty content")


def test_empty_prompt_or_completion(write_jsonl):
    path = write_jsonl("empty.jsonl", [{"prompt": "q", "completion": " "}])
    assert_issue(the_error(path), path, 1, "completion", "empty content")


def test_no_assistant_turn(write_jsonl):
    path = write_jsonl("noans.jsonl", [GOOD_CHAT, chat(USER)])
    assert_issue(the_error(path), path, 2, "messages", "no assistant turn to learn from")


def test_all_assistant_turns_weight_zero(write_jsonl):
    path = write_jsonl("w0.jsonl", [chat(USER, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 0})])
    issue = the_error(path)
    assert_issue(issue, path, 1, "messages", "no assistant turn to learn from")
    assert "weight 1" in issue.hint


@pytest.mark.parametrize("weight", [2, -1, 0.5, "1", True, None])
def test_weight_not_zero_or_one(write_jsonl, weight):
    path = write_jsonl("weight.jsonl", [chat(USER, {**ASSISTANT, "weight": weight}, USER, ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[1].weight", "weight must be 0 or 1")


def test_weight_on_non_assistant(write_jsonl):
    path = write_jsonl("weight.jsonl", [chat({**USER, "weight": 1}, ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[0].weight", "weight only applies to assistant messages")
    system = write_jsonl("weight2.jsonl", [chat({"role": "system", "content": "s", "weight": 0}, USER, ASSISTANT)])
    assert_issue(the_error(system), system, 1, "messages[0].weight", "weight only applies")


def test_message_not_an_object(write_jsonl):
    path = write_jsonl("msg.jsonl", [chat(USER, "oops", ASSISTANT)])
    assert_issue(the_error(path), path, 1, "messages[1]", "must be an object")


def test_mixed_formats(write_jsonl):
    path = write_jsonl("mixed.jsonl", [GOOD_CHAT, {"prompt": "p", "completion": "c"}, GOOD_CHAT])
    issue = the_error(path)
    assert_issue(issue, path, 2, None, "mixed formats: this line is prompt-completion, the file is chat")
    assert "messages" in issue.hint


def test_empty_text(write_jsonl):
    path = write_jsonl("docs.jsonl", [{"text": "fine"}, {"text": "  "}])
    assert_issue(the_error(path), path, 2, "text", "empty text")
    classify = write_jsonl("cls.jsonl", [{"text": "a", "label": "x"}, {"text": "", "label": "y"}])
    assert_issue(the_error(classify), classify, 2, "text", "empty text")


def test_empty_label(write_jsonl):
    path = write_jsonl(
        "cls.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c", "label": " "}]
    )
    assert_issue(the_error(path), path, 3, "label", "empty label")


def test_empty_label_in_csv(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("text,label\na,x\nb,y\nc,\n")
    assert_issue(the_error(path), path, 4, "label", "empty label")


def test_csv_wrong_header(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("sentence,category\na,x\n")
    issue = the_error(path)
    assert_issue(issue, path, 1, None, "CSV header has ['category', 'sentence'], needs text and label")
    assert "text,label" in issue.hint


def test_csv_unknown_column(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("text,label,source\na,x,web\nb,y,web\n")
    assert_issue(the_error(path), path, 1, "source", "unknown column")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_non_utf8_file_reports_the_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    good = json.dumps(GOOD_CHAT) if suffix == ".jsonl" else "text,label" if suffix == ".csv" else "plain"
    path.write_bytes(f"{good}\n{good}\n".encode() + "caf\u00e9\n".encode("latin-1"))
    assert_issue(the_error(path), path, 3, None, "not valid UTF-8")


def test_unknown_label_in_validation_file(write_jsonl):
    train = write_jsonl("train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    val = write_jsonl("val.jsonl", [{"text": "c", "label": "pos"}, {"text": "d", "label": "meh"}])
    issue = the_error(train, val_data=val)
    assert_issue(issue, val, 2, "label", "unknown label 'meh'")
    assert "neg" in issue.hint and "pos" in issue.hint


def test_unknown_label_with_explicit_label_set(write_jsonl):
    train = write_jsonl(
        "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": "maybe"}]
    )
    issue = the_error(train, labels=["pos", "neg"])
    assert_issue(issue, train, 3, "label", "unknown label 'maybe'")
    assert "given label set" in issue.hint
    assert check_structure(train, labels=["pos", "neg"]).labels == ["pos", "neg"]


def test_only_one_label(write_jsonl):
    path = write_jsonl("cls.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    assert_issue(the_error(path), path, None, "label", "only one label")


def test_all_errors_at_once(write_jsonl):
    path = write_jsonl(
        "bad.jsonl",
        [
            GOOD_CHAT,
            "{not json",
            GOOD_CHAT,
            chat(USER, USER, ASSISTANT),
            chat({"role": "user", "content": ""}, ASSISTANT),
            GOOD_CHAT | {"messages": [USER, {**ASSISTANT, "content": "other"}]},
        ],
    )
    report = check_structure(path)
    assert not report.ok
    found = sorted((e.line, e.field) for e in report.errors)
    assert found == [(2, None), (4, "messages[1].role"), (5, "messages[0].content")]
    assert [e.line for e in report.train.examples] == [1, 3, 6]


def test_line_separator_inside_a_json_string(tmp_path):
    path = tmp_path / "u2028.jsonl"
    row = chat({"role": "user", "content": "first\u2028second"}, ASSISTANT)
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n" + json.dumps(GOOD_CHAT) + "\n", encoding="utf-8")
    parsed = read_file(path)
    assert not parsed.issues, [str(i) for i in parsed.issues]
    assert [e.line for e in parsed.examples] == [1, 2]


def test_csv_quoted_multiline_field_keeps_its_newline(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text('text,label\n"line one\nline two",pos\nother,neg\n')
    parsed = read_file(path)
    assert not parsed.issues
    assert parsed.examples[0].text == "line one\nline two"


def test_csv_with_utf8_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\ngreat,pos\nawful,neg\n".encode("utf-8-sig"))
    report = check_structure(path)
    assert report.ok, [str(e) for e in report.errors]
