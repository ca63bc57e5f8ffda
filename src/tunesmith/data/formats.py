"""Reading training files: format detection and records, with every structural error at once.

A file becomes a list of :class:`Example` (one per line, or one per ``.txt`` file) plus a list of
:class:`Issue`. Errors name the file, line and field and carry a hint. Nothing here needs a
tokenizer, so ``train`` can refuse a bad file before any model is loaded.

Tasks and the line formats that feed them:

    chat        {"messages": [{"role", "content", "weight"?}, ...]}
    completion  {"prompt", "completion"}  or Alpaca {"instruction", "input"?, "output"}
    classify    {"text", "label"}  (JSONL, or CSV with a text,label header)
    text        {"text"}  (JSONL, one document a line) or a .txt file (one document)
    preference  {"prompt", "chosen", "rejected"}  prompt as text or as messages ending with a user
                turn; trained with ``--method dpo``
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tunesmith.core.config import Task, TaskChoice
from tunesmith.data.records import Example, Findings, Issue

ROLES = ("system", "user", "assistant")

# Line format -> (task, required keys, optional keys)
LINE_FORMATS: dict[str, tuple[Task, frozenset[str], frozenset[str]]] = {
    "chat": ("chat", frozenset({"messages"}), frozenset()),
    "prompt-completion": ("completion", frozenset({"prompt", "completion"}), frozenset()),
    "alpaca": ("completion", frozenset({"instruction", "output"}), frozenset({"input"})),
    "classify": ("classify", frozenset({"text", "label"}), frozenset()),
    "text": ("text", frozenset({"text"}), frozenset()),
    "preference": ("preference", frozenset({"prompt", "chosen", "rejected"}), frozenset()),
}
MESSAGE_KEYS = frozenset({"role", "content", "weight"})


@dataclass
class ParsedFile(Findings):
    path: Path
    task: Task
    examples: list[Example]
    issues: list[Issue]


def detect_line_format(obj: dict) -> str | None:
    keys = set(obj)
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
    if suffix == ".txt":
        return _read_txt(path, task)
    if suffix == ".csv":
        return _read_csv(path, task)
    return _read_jsonl(path, task)


def _read_txt(path: Path, task: TaskChoice) -> ParsedFile:
    issues: list[Issue] = []
    if task not in ("auto", "text"):
        issues.append(
            Issue.error(
                str(path),
                None,
                None,
                f"a .txt file is raw text, not task {task!r}",
                "use --task text, or convert the file to JSONL",
            )
        )
    text = _read_text(path, issues)
    if text is not None and not text.strip():
        issues.append(Issue.error(str(path), None, None, "the file is empty", "add some text"))
    examples = [Example(line=1, text=text)] if text and text.strip() else []
    return ParsedFile(path, "text", examples, issues)


def _read_csv(path: Path, task: TaskChoice) -> ParsedFile:
    name = str(path)
    issues: list[Issue] = []
    if task not in ("auto", "classify"):
        issues.append(
            Issue.error(
                name,
                None,
                None,
                f"CSV files hold classification data, not task {task!r}",
                "use --task classify, or convert the file to JSONL",
            )
        )
    text = _read_text(path, issues)
    examples: list[Example] = []
    if text is None:
        return ParsedFile(path, "classify", examples, issues)
    reader = csv.DictReader(io.StringIO(text, newline=""))  # keeps newlines inside quoted fields
    header = set(reader.fieldnames or [])
    if not {"text", "label"} <= header:
        issues.append(
            Issue.error(
                name, 1, None, f"CSV header has {sorted(header)}, needs text and label", "first row must be: text,label"
            )
        )
        return ParsedFile(path, "classify", examples, issues)
    for unknown in sorted(header - {"text", "label"}):
        issues.append(Issue.error(name, 1, unknown, "unknown column", "allowed columns: text, label"))
    for row in reader:
        line = reader.line_num
        example = Example(line=line, text=row.get("text") or "", label=(row.get("label") or "").strip())
        _check_classify(example, name, issues)
        examples.append(example)
    return ParsedFile(path, "classify", examples, issues)


def read_json_objects(path: Path, issues: list[Issue]) -> list[tuple[int, dict]]:
    """The JSON objects of a JSONL file with their 1-based line numbers; every bad line an error."""
    name = str(path)
    if not path.is_file():
        issues.append(Issue.error(name, None, None, "file not found", "check the path"))
        return []
    text = _read_text(path, issues)
    objects: list[tuple[int, dict]] = []
    # Split on "\n" only: str.splitlines() would also split at U+2028 etc., legal inside JSON strings.
    for number, raw in enumerate((text or "").split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            issues.append(
                Issue.error(
                    name,
                    number,
                    None,
                    f"bad JSON: {err.msg} at column {err.colno}",
                    "each line must be one complete JSON object",
                )
            )
            continue
        if not isinstance(obj, dict):
            issues.append(
                Issue.error(
                    name,
                    number,
                    None,
                    f"expected a JSON object, got {type(obj).__name__}",
                    'each line must be one JSON object like {"messages": [...]}',
                )
            )
            continue
        objects.append((number, obj))
    if text is not None and not objects and not issues:
        issues.append(Issue.error(name, None, None, "the file has no records", "add one JSON object per line"))
    return objects


def _read_jsonl(path: Path, task: TaskChoice) -> ParsedFile:
    name = str(path)
    issues: list[Issue] = []
    objects = [(number, obj, detect_line_format(obj)) for number, obj in read_json_objects(path, issues)]
    file_task = task if task != "auto" else _majority_task(objects)
    examples: list[Example] = []
    for number, obj, line_format in objects:
        example = _parse_object(obj, number, line_format, file_task, name, issues)
        if example is not None:
            examples.append(example)
    return ParsedFile(path, file_task, examples, issues)


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
    for unknown in sorted(set(obj) - required - optional):
        issues.append(
            Issue.error(
                name,
                line,
                unknown,
                "unknown key",
                f"allowed keys for {line_format}: {', '.join(sorted(required | optional))}",
            )
        )
    if line_format == "preference":
        return _parse_preference(obj, line, name, issues)
    for key in sorted(required | (optional & set(obj))):
        if key != "messages" and not isinstance(obj[key], str):
            issues.append(
                Issue.error(name, line, key, f"must be a string, got {type(obj[key]).__name__}", "quote the value")
            )
            return None

    if line_format == "chat":
        messages = _check_messages(obj["messages"], line, name, issues)
        return Example(line=line, messages=messages) if messages else None
    if line_format == "prompt-completion":
        messages = [_msg("user", obj["prompt"]), _msg("assistant", obj["completion"])]
        fields = ("prompt", "completion")
    elif line_format == "alpaca":
        extra = obj.get("input", "").strip()
        user = obj["instruction"] + (f"\n\n{extra}" if extra else "")
        messages = [_msg("user", user), _msg("assistant", obj["output"])]
        fields = ("instruction", "output")
    elif line_format == "classify":
        example = Example(line=line, text=obj["text"], label=obj["label"].strip())
        _check_classify(example, name, issues)
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


def _parse_preference(obj: dict, line: int, name: str, issues: list[Issue]) -> Example | None:
    missing = sorted(LINE_FORMATS["preference"][1] - set(obj))
    if missing:
        issues.append(
            Issue.error(
                name,
                line,
                ", ".join(missing),
                "missing key(s)",
                'a preference line looks like {"prompt": ..., "chosen": ..., "rejected": ...}',
            )
        )
        return None
    before = len(issues)
    for key in ("chosen", "rejected"):
        if not isinstance(obj[key], str):
            issues.append(
                Issue.error(
                    name, line, key, f"must be a string, got {type(obj[key]).__name__}", "give the answer's text"
                )
            )
        elif not obj[key].strip():
            issues.append(Issue.error(name, line, key, "empty answer", f"write the {key} answer or drop the line"))
    prompt = obj["prompt"]
    messages = None
    if isinstance(prompt, str):
        if prompt.strip():
            messages = [_msg("user", prompt)]
        else:
            issues.append(Issue.error(name, line, "prompt", "empty prompt", "write the prompt or drop the line"))
    elif isinstance(prompt, list):
        messages = check_prompt_messages(prompt, line, name, issues)
    else:
        issues.append(
            Issue.error(
                name,
                line,
                "prompt",
                f"must be a string or a list of messages, got {type(prompt).__name__}",
                'use "prompt": "..." or "prompt": [{"role": "user", ...}]',
            )
        )
    if len(issues) > before or messages is None:
        return None
    if obj["chosen"].strip() == obj["rejected"].strip():
        issues.append(
            Issue.warning(
                name,
                line,
                "rejected",
                "chosen and rejected are the same answer",
                "a pair teaches nothing unless the answers differ; fix or drop the line",
            )
        )
    return Example(line=line, messages=messages, chosen=obj["chosen"], rejected=obj["rejected"])


def check_prompt_messages(
    messages: object, line: int, name: str, issues: list[Issue], field: str = "prompt"
) -> list[dict] | None:
    """A conversation that waits for the assistant's answer (a preference prompt, a reviewed prompt):
    the chat rules, ending with a user turn. ``field`` names the key it came from in errors."""
    if not isinstance(messages, list) or not messages:
        issues.append(
            Issue.error(
                name, line, field, "must be a non-empty list of messages", 'use [{"role": "user", "content": "..."}]'
            )
        )
        return None
    last = messages[-1].get("role") if isinstance(messages[-1], dict) else None
    if last in ROLES and last != "user":
        issues.append(_must_end_with_user(name, line, field, "; drop what follows it"))
        return None
    # The chat check wants an assistant turn to learn from: lend it the answer slot, then drop it
    # (and anything it says about that borrowed turn).
    probe = [*messages, {"role": "assistant", "content": "-"}]
    shadow: list[Issue] = []
    checked = _check_messages(probe, line, name, shadow)
    borrowed = f"messages[{len(messages)}]"
    before = len(issues)
    for issue in shadow:
        if not (issue.field or "").startswith(borrowed):
            issues.append(
                Issue(
                    issue.severity,
                    name,
                    line,
                    (issue.field or field).replace("messages", field, 1),
                    issue.message,
                    issue.hint,
                )
            )
    if checked is None and len(issues) == before:  # only the borrowed turn was objected to
        issues.append(_must_end_with_user(name, line, field))
    return None if checked is None else [_msg(m["role"], m["content"]) for m in checked[:-1]]


def _must_end_with_user(name: str, line: int, field: str, advice: str = "") -> Issue:
    return Issue.error(
        name,
        line,
        field,
        "the conversation must end with a user turn",
        f"the answer is the assistant's reply to the last user message{advice}",
    )


def _msg(role: str, content: str, weight: int = 1) -> dict:
    return {"role": role, "content": content, "weight": weight}


def _check_messages(messages: object, line: int, name: str, issues: list[Issue]) -> list[dict] | None:
    if not isinstance(messages, list) or not messages:
        issues.append(
            Issue.error(
                name,
                line,
                "messages",
                "must be a non-empty list",
                'use [{"role": "user", "content": ...}, {"role": "assistant", ...}]',
            )
        )
        return None
    before = len(issues)
    result: list[dict] = []
    previous = None
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            issues.append(
                Issue.error(
                    name,
                    line,
                    where,
                    "must be an object with role and content",
                    'write it as {"role": "user", "content": "..."}',
                )
            )
            continue
        for unknown in sorted(set(message) - MESSAGE_KEYS):
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.{unknown}",
                    "unknown key",
                    "a message has role, content and optionally weight (0 or 1)",
                )
            )
        role, content, weight = message.get("role"), message.get("content"), message.get("weight", 1)
        if role not in ROLES:
            issues.append(
                Issue.error(
                    name, line, f"{where}.role", f"unknown role {role!r}", "roles are system, user and assistant"
                )
            )
        elif role == "system" and index != 0:
            issues.append(
                Issue.error(
                    name, line, f"{where}.role", "system message after the start", "put the system message first, once"
                )
            )
        elif role != "system" and previous == role:
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.role",
                    f"two {role} messages in a row",
                    "user and assistant turns must alternate",
                )
            )
        elif role == "assistant" and previous in (None, "system"):
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.role",
                    "assistant speaks before the user",
                    "start the conversation with a user message",
                )
            )
        if not isinstance(content, str) or not content.strip():
            issues.append(
                Issue.error(
                    name, line, f"{where}.content", "empty content", "every message needs non-empty text content"
                )
            )
        if weight not in (0, 1) or isinstance(weight, bool):
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.weight",
                    f"weight must be 0 or 1, got {weight!r}",
                    "0 = do not train on this turn, 1 = train on it",
                )
            )
        elif role != "assistant" and "weight" in message:
            issues.append(
                Issue.error(
                    name,
                    line,
                    f"{where}.weight",
                    "weight only applies to assistant messages",
                    "drop the weight key from this message",
                )
            )
        previous = role if role in ROLES else previous
        result.append(_msg(str(role), content if isinstance(content, str) else "", weight))
    if not any(m["role"] == "assistant" and m["weight"] == 1 for m in result):
        issues.append(
            Issue.error(
                name,
                line,
                "messages",
                "no assistant turn to learn from",
                "add an assistant message with weight 1 (or no weight key)",
            )
        )
    return None if len(issues) > before else result


def _check_classify(example: Example, name: str, issues: list[Issue]) -> None:
    if not (example.text or "").strip():
        issues.append(Issue.error(name, example.line, "text", "empty text", "write the text to classify"))
    if not example.label:
        issues.append(Issue.error(name, example.line, "label", "empty label", "give every row a label"))


def _read_text(path: Path, issues: list[Issue]) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerate the BOM spreadsheet exports add
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        issues.append(Issue.error(str(path), line, None, "not valid UTF-8", "save the file as UTF-8"))
        return None
