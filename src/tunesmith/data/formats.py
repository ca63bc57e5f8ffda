"""Reading training files: format detection and records, with every structural error at once.

A file becomes a list of :class:`Example` (one per line, one per record of a ``.json`` array, or one
per ``.txt`` file) plus a list of :class:`Issue`. Errors name the file, line (or record) and field and
carry a hint. Nothing here needs a tokenizer, so ``train`` can refuse a bad file before any model is
loaded. This module detects each record's line format and builds the example; ``readers`` reads the
files, ``messages`` checks conversations and ``tools`` function calling.

Files: ``.jsonl`` (one JSON object a line), ``.json`` (one JSON array of those objects, as Alpaca's
``alpaca_data.json``), ``.csv`` (classify) and ``.txt`` (raw text).

Tasks and the line formats that feed them:

    chat        {"messages": [{"role", "content", "weight"?}, ...], "tools"?: [...]}
                content as a string or as OpenAI text parts [{"type": "text", "text"}, ...] (joined);
                function calling as OpenAI fine-tunes it: assistant "tool_calls", {"role": "tool",
                "tool_call_id", "content"} answers, top-level "tools" (or the legacy "functions",
                "function_call" and role "function", read as tools)
    completion  {"prompt", "completion"}  or Alpaca {"instruction", "input"?, "output"}
    classify    {"text", "label"}  (JSONL, or CSV with a text,label header)
    text        {"text"}  (JSONL, one document a line) or a .txt file (one document)
    preference  {"prompt", "chosen", "rejected"}  prompt as text or as messages ending with a user
                turn; or OpenAI's {"input": {"messages"}, "preferred_output": [assistant message],
                "non_preferred_output": [...]} (data.preference); trained with ``--method dpo``
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunesmith.core.config import Task, TaskChoice
from tunesmith.data.messages import check_messages, make_message
from tunesmith.data.preference import parse_openai_preference, parse_preference
from tunesmith.data.readers import check_classify, read_csv, read_json_array, read_json_objects, read_txt
from tunesmith.data.records import Example, Findings, Issue, position_word
from tunesmith.data.tools import check_called_names, check_tools

# Line format -> (task, required keys, optional keys)
LINE_FORMATS: dict[str, tuple[Task, frozenset[str], frozenset[str]]] = {
    "chat": ("chat", frozenset({"messages"}), frozenset({"tools", "functions"})),
    "prompt-completion": ("completion", frozenset({"prompt", "completion"}), frozenset()),
    "alpaca": ("completion", frozenset({"instruction", "output"}), frozenset({"input"})),
    "classify": ("classify", frozenset({"text", "label"}), frozenset()),
    "text": ("text", frozenset({"text"}), frozenset()),
    "preference": ("preference", frozenset({"prompt", "chosen", "rejected"}), frozenset()),
    # OpenAI's DPO fine-tuning format
    "openai-preference": (
        "preference",
        frozenset({"input", "preferred_output", "non_preferred_output"}),
        frozenset(),
    ),
}


@dataclass
class ParsedFile(Findings):
    path: Path
    task: Task
    examples: list[Example]
    issues: list[Issue]


def detect_line_format(obj: dict) -> str | None:
    keys = set(obj)
    if {"preferred_output", "non_preferred_output"} & keys:
        return "openai-preference"
    if {"chosen", "rejected"} & keys:
        return "preference"
    if "messages" in keys:
        return "chat"
    if {"prompt", "completion"} <= keys:
        return "prompt-completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"text", "label"} <= keys:
        return "classify"
    if "text" in keys:
        return "text"
    return None


def read_file(path: Path, task: TaskChoice = "auto") -> ParsedFile:
    """Parse ``path``; ``task`` overrides detection. Never raises for bad content: see ``issues``."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        issue = Issue.error(name, None, None, "file not found", "check the path")
        return ParsedFile(path, task if task != "auto" else "chat", [], [issue])
    suffix = path.suffix.lower()
    issues: list[Issue] = []
    if suffix == ".txt":
        return ParsedFile(path, "text", read_txt(path, task, issues), issues)
    if suffix == ".csv":
        return ParsedFile(path, "classify", read_csv(path, task, issues), issues)
    objects = read_json_array(path, issues) if suffix == ".json" else read_json_objects(path, issues)
    return _parse_objects(path, task, objects, issues)


def _parse_objects(path: Path, task: TaskChoice, records: list[tuple[int, dict]], issues: list[Issue]) -> ParsedFile:
    name = str(path)
    objects = [(number, obj, detect_line_format(obj)) for number, obj in records]
    file_task = task if task != "auto" else _majority_task(objects)
    examples: list[Example] = []
    ignored: dict[str, list[int]] = {}
    for number, obj, line_format in objects:
        if line_format is not None:
            _, required, optional = LINE_FORMATS[line_format]
            for unknown in set(obj) - required - optional:
                ignored.setdefault(unknown, []).append(number)
        example = _parse_object(obj, number, line_format, file_task, name, issues)
        if example is not None:
            examples.append(example)
    issues += [_ignored_key(name, key, numbers, file_task) for key, numbers in sorted(ignored.items())]
    return ParsedFile(path, file_task, examples, issues)


def _ignored_key(name: str, key: str, numbers: list[int], task: Task) -> Issue:
    """Keys outside the format are ignored, with one warning per key: data sets carry ids, categories and
    sources beside the fields that train, and refusing them would make people strip every file first. A
    misspelt required key still fails as a missing key; a misspelt optional one shows up here."""
    formats = [(required | optional) for _, (of_task, required, optional) in LINE_FORMATS.items() if of_task == task]
    allowed = ", ".join(sorted(set().union(*formats)))
    word = position_word(name)
    return Issue.warning(
        name,
        numbers[0],
        key,
        f"unknown key, ignored (on {len(numbers)} {word}{'s' if len(numbers) > 1 else ''})",
        f"a {task} {word} uses {allowed}; remove the key, or check its spelling",
    )


def _majority_task(objects: list[tuple[int, dict, str | None]]) -> Task:
    counts = Counter(LINE_FORMATS[fmt][0] for _, _, fmt in objects if fmt)
    return counts.most_common(1)[0][0] if counts else "chat"


def _parse_object(
    obj: dict, line: int, line_format: str | None, task: Task, name: str, issues: list[Issue]
) -> Example | None:
    expected = [fmt for fmt, (fmt_task, _, _) in LINE_FORMATS.items() if fmt_task == task]
    if line_format is None or line_format not in expected:
        # Explain against the closest format of the file's task.
        wanted = " or ".join("{" + ", ".join(sorted(LINE_FORMATS[f][1])) + "}" for f in expected)
        if line_format is not None:
            issues.append(
                Issue.error(
                    name,
                    line,
                    None,
                    f"mixed formats: this line is {line_format}, the file is {task}",
                    f"every line must use one format; for {task} that is {wanted}",
                )
            )
        else:
            missing = sorted(LINE_FORMATS[expected[0]][1] - set(obj))
            issues.append(
                Issue.error(
                    name, line, ", ".join(missing) or None, "missing key(s)", f"a {task} line looks like {wanted}"
                )
            )
        return None
    _, required, optional = LINE_FORMATS[line_format]
    if line_format == "preference":
        return parse_preference(obj, line, name, issues)
    if line_format == "openai-preference":
        return parse_openai_preference(obj, line, name, issues)
    for key in sorted(required | (optional & set(obj))):
        if line_format != "chat" and not isinstance(obj[key], str):
            issues.append(
                Issue.error(name, line, key, f"must be a string, got {type(obj[key]).__name__}", "quote the value")
            )
            return None

    if line_format == "chat":
        before = len(issues)
        tools = check_tools(obj, line, name, issues)
        messages = check_messages(obj["messages"], line, name, issues, function_calling=True)
        if not messages or len(issues) > before:
            return None
        check_called_names(messages, tools, line, name, issues)
        return Example(line=line, messages=messages, tools=tools or None)
    if line_format == "prompt-completion":
        messages = [make_message("user", obj["prompt"]), make_message("assistant", obj["completion"])]
        fields = ("prompt", "completion")
    elif line_format == "alpaca":
        extra = obj.get("input", "").strip()
        user = obj["instruction"] + (f"\n\n{extra}" if extra else "")
        messages = [make_message("user", user), make_message("assistant", obj["output"])]
        fields = ("instruction", "output")
    elif line_format == "classify":
        example = Example(line=line, text=obj["text"], label=obj["label"].strip())
        check_classify(example, name, issues)
        return example
    else:
        if not obj["text"].strip():
            issues.append(Issue.error(name, line, "text", "empty text", "remove the line or add text"))
            return None
        return Example(line=line, text=obj["text"])
    for key in fields:
        if not obj[key].strip():
            issues.append(Issue.error(name, line, key, "empty content", f"write the {key} or drop the line"))
            return None
    return Example(line=line, messages=messages)
