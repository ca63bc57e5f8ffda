"""Formats users bring from OpenAI and Alpaca: content parts, .json arrays, function-calling conversations
(structure here; rendering with and without a tool-aware chat template in test_render.py)."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.check import check_structure
from tunesmith.data.formats import read_file
from tunesmith.data.records import Issue, example_record

USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(call_id: str = "call_1", arguments: object = '{"city": "Paris"}', name: str = "get_weather") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def calling(*calls: dict, content: object = None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def answer(call_id: str = "call_1", content: str = '{"sky": "sunny"}') -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def weather_line(*messages: dict, tools: list | None = None) -> dict:
    default = [
        {"role": "user", "content": "Weather in Paris?"},
        calling(call()),
        answer(),
        {"role": "assistant", "content": "Sunny."},
    ]
    return {"messages": list(messages) or default, "tools": [WEATHER] if tools is None else tools}


def the_error(path) -> Issue:
    errors = check_structure(path).errors
    assert len(errors) == 1, [str(e) for e in errors]
    assert errors[0].hint.strip()
    return errors[0]


def assert_error(path, line: int | None, field: str | None, text: str) -> Issue:
    issue = the_error(path)
    assert (issue.line, issue.field) == (line, field), str(issue)
    assert text in issue.message, str(issue)
    return issue


# --------------------------------------------------------------------------- content parts


def test_text_parts_are_joined(write_jsonl):
    parts = [{"type": "text", "text": "Translate: "}, {"type": "text", "text": "chat"}]
    path = write_jsonl("parts.jsonl", [{"messages": [{"role": "user", "content": parts}, ASSISTANT]}])
    parsed = read_file(path)
    assert not parsed.issues
    assert parsed.examples[0].messages[0]["content"] == "Translate: chat"  # concatenated, as OpenAI reads them


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
def test_non_text_parts_are_refused_by_name(write_jsonl, kind):
    parts = [{"type": "text", "text": "What is this?"}, {"type": kind, kind: {"url": "x"}}]
    path = write_jsonl("image.jsonl", [{"messages": [USER, ASSISTANT, {"role": "user", "content": parts}, ASSISTANT]}])
    issue = assert_error(path, 1, "messages[2].content[1].type", "takes text only")
    assert kind in issue.message
    assert "empty content" not in issue.message


@pytest.mark.parametrize(
    ("part", "field", "text"),
    [
        ("just text", "messages[0].content[0]", "must be a content part object"),
        ({"text": "no type"}, "messages[0].content[0].type", "takes text only"),
        ({"type": "text", "text": 3}, "messages[0].content[0].text", "must be a string"),
        ({"type": "text", "text": "x", "cache": 1}, "messages[0].content[0].cache", "unknown key"),
    ],
)
def test_bad_parts(write_jsonl, part, field, text):
    path = write_jsonl("bad.jsonl", [{"messages": [{"role": "user", "content": [part]}, ASSISTANT]}])
    assert_error(path, 1, field, text)


def test_parts_without_text_are_empty_content(write_jsonl):
    path = write_jsonl(
        "empty.jsonl", [{"messages": [USER, {"role": "assistant", "content": [{"type": "text", "text": " "}]}]}]
    )
    assert_error(path, 1, "messages[1].content", "empty content")


def test_preference_prompt_messages_take_parts(write_jsonl):
    prompt = [{"role": "user", "content": [{"type": "text", "text": "Do you "}, {"type": "text", "text": "rent?"}]}]
    path = write_jsonl("pref.jsonl", [{"prompt": prompt, "chosen": "Yes.", "rejected": "No idea."}])
    parsed = read_file(path)
    assert not parsed.issues
    assert parsed.examples[0].messages == [{"role": "user", "content": "Do you rent?", "weight": 1}]
    prompt[0]["content"].append({"type": "image_url", "image_url": {"url": "x"}})
    path = write_jsonl("pref-image.jsonl", [{"prompt": prompt, "chosen": "Yes.", "rejected": "No idea."}])
    assert_error(path, 1, "prompt[0].content[2].type", "takes text only")


# --------------------------------------------------------------------------- .json arrays


def write_json(tmp_path, name: str, value: object) -> object:
    path = tmp_path / name
    path.write_text(value if isinstance(value, str) else json.dumps(value, indent=2))
    return path


def test_a_json_array_is_read_like_jsonl(tmp_path):
    records = [
        {"instruction": "Convert to grams.", "input": "2 cups of flour", "output": "About 250 g."},
        {"instruction": "Name a herb.", "input": "", "output": "Basil."},
    ]
    parsed = read_file(write_json(tmp_path, "alpaca_data.json", records))
    assert parsed.task == "completion" and not parsed.issues
    assert [e.line for e in parsed.examples] == [1, 2]
    assert parsed.examples[1].messages[0]["content"] == "Name a herb."


def test_errors_in_a_json_array_name_the_record(tmp_path):
    records = [{"instruction": "a", "output": "b"}, ["not", "an", "object"], {"instruction": "c", "output": ""}]
    path = write_json(tmp_path, "data.json", records)
    errors = check_structure(path).errors
    assert [(e.line, e.field) for e in errors] == [(2, None), (3, "output")]
    assert str(errors[0]).startswith(f"{path}, record 2: error: expected a JSON object, got an array")
    assert str(errors[1]).startswith(f"{path}, record 3: error: output: empty content")


@pytest.mark.parametrize(
    ("content", "message", "hint"),
    [
        ({"instruction": "a", "output": "b"}, "must hold a JSON array of records, got an object", "wrap the records"),
        ('"text"', "got a string", "wrap the records"),
        ('{"text": "a"}\n{"text": "b"}\n', "bad JSON: Extra data", "rename the file to .jsonl"),
        ('[{"text": "a"},', "bad JSON", "one JSON array"),
        ([], "no records", "add JSON objects"),
    ],
)
def test_a_json_file_that_is_not_an_array(tmp_path, content, message, hint):
    path = write_json(tmp_path, "data.json", content)
    issue = the_error(path)
    assert issue.line is None and message in issue.message and hint in issue.hint


def test_warnings_about_a_json_array_list_records(tmp_path):
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "a", "label": "x"}]
    train = write_json(tmp_path, "train.json", rows)
    val = write_json(tmp_path, "val.json", [{"text": "c", "label": "x"}, {"text": "b", "label": "y"}])
    duplicate, overlap = check_structure(train, val_data=val).warnings
    assert "record 3 = record 1" in duplicate.message and str(duplicate).startswith(f"{train}, record 3: warning")
    assert "(records 2)" in overlap.message


def test_jsonl_issues_still_say_line(write_jsonl):
    path = write_jsonl("d.jsonl", [{"text": 3}])
    assert str(the_error(path)).startswith(f"{path}:1: error")


# --------------------------------------------------------------------------- function calling


def test_a_function_calling_conversation(write_jsonl):
    parsed = read_file(write_jsonl("tools.jsonl", [weather_line()]))
    assert parsed.task == "chat" and not parsed.issues
    example = parsed.examples[0]
    assert example.tools == [WEATHER]
    calling_turn, tool_turn = example.messages[1], example.messages[2]
    assert calling_turn["content"] == "" and calling_turn["tool_calls"] == [call()]
    assert tool_turn == {"role": "tool", "content": '{"sky": "sunny"}', "weight": 1, "tool_call_id": "call_1"}
    # the canonical record reads back as the same example
    again = read_file(write_jsonl("again.jsonl", [example_record(example)]))
    assert not again.issues and again.examples[0].messages == example.messages
    assert again.examples[0].tools == example.tools


def test_example_records_read_back_as_the_examples(write_jsonl):
    """What `tunesmith curve` writes for each subset (and a version's few-shot pool) is read back unchanged:
    weights on the turns the reader takes them on, tool calls, tool answers and tools kept."""
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check.", "weight": 1},
        ]
    }
    parsed = read_file(write_jsonl("chat.jsonl", [chat, weather_line()]))
    assert not parsed.issues and len(parsed.examples) == 2
    assert [m["weight"] for m in parsed.examples[0].messages] == [1, 1, 0, 1, 1]
    assert parsed.examples[1].tools == [WEATHER] and "tool_calls" in parsed.examples[1].messages[1]
    records = [example_record(example) for example in parsed.examples]
    assert all("weight" not in m for m in records[0]["messages"] if m["role"] != "assistant")
    again = read_file(write_jsonl("again.jsonl", records))
    assert not again.issues, [str(issue) for issue in again.issues]
    assert [(e.messages, e.tools) for e in again.examples] == [(e.messages, e.tools) for e in parsed.examples]


def test_a_conversation_may_end_with_the_call_and_omit_content(write_jsonl):
    call_turn = {"role": "assistant", "tool_calls": [call()]}
    path = write_jsonl("ends.jsonl", [weather_line({"role": "user", "content": "Paris?"}, call_turn)])
    parsed = read_file(path)
    assert not parsed.issues and parsed.examples[0].messages[-1]["tool_calls"] == [call()]


def test_parallel_calls_and_answers(write_jsonl):
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        calling(call("a"), call("b", '{"city": "Rome"}'), content="Checking both."),
        answer("b"),
        answer("a"),
        {"role": "assistant", "content": "Both sunny."},
    ]
    parsed = read_file(write_jsonl("parallel.jsonl", [weather_line(*messages)]))
    assert not parsed.issues
    assert [m.get("tool_call_id") for m in parsed.examples[0].messages] == [None, None, "b", "a", None]


def test_legacy_functions_read_as_tools(write_jsonl):
    line = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "functions": [WEATHER["function"]],
    }
    parsed = read_file(write_jsonl("legacy.jsonl", [line]))
    assert not parsed.issues
    example = parsed.examples[0]
    assert example.tools == [WEATHER]
    assert example.messages[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ]
    assert example.messages[2]["role"] == "tool" and example.messages[2]["tool_call_id"] == "call_1"


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"arguments": {"city": "Paris"}}, "messages[1].tool_calls[0].function.arguments", "must be a JSON string"),
        ({"arguments": "{city: Paris}"}, "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
        ({"arguments": "[1]"}, "messages[1].tool_calls[0].function.arguments", "must encode a JSON object"),
        ({"name": ""}, "messages[1].tool_calls[0].function.name", "missing function name"),
    ],
)
def test_bad_function_in_a_call(write_jsonl, change, field, text):
    bad = call()
    bad["function"].update(change)
    line = weather_line({"role": "user", "content": "Paris?"}, calling(bad), answer(), ASSISTANT)
    assert_error(write_jsonl("bad.jsonl", [line]), 1, field, text)


@pytest.mark.parametrize(
    ("messages", "field", "text"),
    [
        ([USER, calling({"type": "function", "function": call()["function"]})], "messages[1].tool_calls[0].id", "id"),
        ([USER, calling({**call(), "type": "code"})], "messages[1].tool_calls[0].type", 'must be "function"'),
        ([USER, calling()], "messages[1].tool_calls", "non-empty list"),
        ([USER, calling(call()), answer("call_9"), ASSISTANT], "messages[2].tool_call_id", "no open call 'call_9'"),
        ([USER, answer(), ASSISTANT], "messages[1].tool_call_id", "without a tool call before it"),
        ([USER, calling(call()), USER, ASSISTANT], "messages[1].tool_calls", "no tool message answers call"),
        ([USER, calling(call()), answer(content=""), ASSISTANT], "messages[2].content", "empty content"),
        ([USER, calling(call()), {"role": "tool", "content": "x"}, ASSISTANT], "messages[2].tool_call_id", "missing"),
        ([{**USER, "tool_calls": [call()]}, ASSISTANT], "messages[0].tool_calls", "unknown key"),
        ([USER, {"role": "assistant", "content": None}], "messages[1].content", "empty content"),
    ],
)
def test_bad_function_calling_structure(write_jsonl, messages, field, text):
    assert_error(write_jsonl("bad.jsonl", [weather_line(*messages)]), 1, field, text)


@pytest.mark.parametrize(
    ("extra", "field", "text"),
    [
        ({"tools": "get_weather"}, "tools", "non-empty list"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "only function tools"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name", "name"),
        (
            {"tools": [{**WEATHER, "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
            "schema",
        ),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions", "both tools and functions"),
    ],
)
def test_bad_tools(write_jsonl, extra, field, text):
    line = {"messages": [USER, ASSISTANT], **extra}
    assert_error(write_jsonl("bad.jsonl", [line]), 1, field, text)


def test_calling_an_undeclared_function_is_a_warning(write_jsonl):
    line = weather_line({"role": "user", "content": "Paris?"}, calling(call(name="get_time")), tools=[WEATHER])
    report = check_structure(write_jsonl("warn.jsonl", [line]))
    assert report.ok
    assert [(w.field, "get_time" in w.message) for w in report.warnings] == [("messages[1].tool_calls", True)]


def test_tool_messages_belong_to_chat_lines_only(write_jsonl):
    prompt = [USER, calling(call()), answer(), {"role": "user", "content": "And?"}]
    path = write_jsonl("pref.jsonl", [{"prompt": prompt, "chosen": "a", "rejected": "b"}])
    errors = check_structure(path).errors
    fields = {e.field for e in errors}
    assert "prompt[2].role" in fields and "prompt[1].tool_calls" in fields
    assert any("read from chat lines only" in e.hint for e in errors)


# --------------------------------------------------------------------------- OpenAI's DPO format


def openai_pair(**changes) -> dict:
    pair = {
        "input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rent bikes?"}]},
        "preferred_output": [{"role": "assistant", "content": "Yes, from 9am."}],
        "non_preferred_output": [{"role": "assistant", "content": "As an AI I cannot know."}],
    }
    return pair | changes


def test_openai_preference_lines_are_preference_pairs(write_jsonl):
    parsed = read_file(write_jsonl("dpo.jsonl", [openai_pair(), openai_pair()]))
    assert parsed.task == "preference" and not parsed.issues
    example = parsed.examples[0]
    assert [m["role"] for m in example.messages] == ["system", "user"]
    assert (example.chosen, example.rejected) == ("Yes, from 9am.", "As an AI I cannot know.")


@pytest.mark.parametrize(
    "changes,field,message",
    [
        ({"input": {"prompt": "x"}}, "input", 'must be an object with "messages"'),
        ({"input": {"messages": [ASSISTANT]}}, "input.messages", "end"),
        ({"preferred_output": "Yes"}, "preferred_output", "must be a list of one assistant message"),
        ({"preferred_output": [USER]}, "preferred_output[0].role", "must be assistant"),
        ({"non_preferred_output": [{"role": "assistant", "content": " "}]}, "non_preferred_output[0].content", "text"),
        ({"input": {"messages": [USER], "tools": [WEATHER]}}, "input.tools", "not supported"),
    ],
)
def test_openai_preference_errors_name_the_field(write_jsonl, changes, field, message):
    path = write_jsonl("dpo.jsonl", [openai_pair(), openai_pair(**changes)])
    assert_error(path, 2, field, message)


def test_a_missing_openai_preference_key_is_named(write_jsonl):
    pair = openai_pair()
    del pair["non_preferred_output"]
    assert_error(write_jsonl("dpo.jsonl", [openai_pair(), pair]), 2, "non_preferred_output", "missing key")
