"""The file readers: a data file's text (UTF-8), and the records of ``.txt``, ``.csv``, ``.jsonl`` and
``.json`` (one JSON array) files, every unreadable part an error. What the records say is checked in
``formats`` (line formats), ``messages`` and ``tools``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tunesmith.core.config import TaskChoice
from tunesmith.data.records import Example, Issue


def read_txt(path: Path, task: TaskChoice, issues: list[Issue]) -> list[Example]:
    """A ``.txt`` file: one raw-text document (task text)."""
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
    text = read_text(path, issues)
    if text is not None and not text.strip():
        issues.append(Issue.error(str(path), None, None, "the file is empty", "add some text"))
    return [Example(line=1, text=text)] if text and text.strip() else []


def read_csv(path: Path, task: TaskChoice, issues: list[Issue]) -> list[Example]:
    """A ``.csv`` file with a text,label header: classification rows, numbered by their line."""
    name = str(path)
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
    text = read_text(path, issues)
    examples: list[Example] = []
    if text is None:
        return examples
    reader = csv.DictReader(io.StringIO(text, newline=""))  # keeps newlines inside quoted fields
    header = set(reader.fieldnames or [])
    if not {"text", "label"} <= header:
        issues.append(
            Issue.error(
                name, 1, None, f"CSV header has {sorted(header)}, needs text and label", "first row must be: text,label"
            )
        )
        return examples
    for unknown in sorted(header - {"text", "label"}):
        issues.append(Issue.error(name, 1, unknown, "unknown column", "allowed columns: text, label"))
    for row in reader:
        line = reader.line_num
        example = Example(line=line, text=row.get("text") or "", label=(row.get("label") or "").strip())
        check_classify(example, name, issues)
        examples.append(example)
    return examples


def read_json_objects(path: Path, issues: list[Issue]) -> list[tuple[int, dict]]:
    """The JSON objects of a JSONL file with their 1-based line numbers; every bad line an error."""
    name = str(path)
    if not path.is_file():
        issues.append(Issue.error(name, None, None, "file not found", "check the path"))
        return []
    text = read_text(path, issues)
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


def read_json_array(path: Path, issues: list[Issue]) -> list[tuple[int, dict]]:
    """The records of a ``.json`` file holding one JSON array of objects, numbered from 1 (the array's
    index + 1: ``Issue`` says "record N" for a ``.json`` file); every bad record an error."""
    name = str(path)
    text = read_text(path, issues)
    if text is None:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        # Several JSON values, the first an object: JSON Lines under a .json name.
        one_per_line = err.msg == "Extra data" and text.lstrip().startswith("{")
        issues.append(
            Issue.error(
                name,
                None,
                None,
                f"bad JSON: {err.msg} at line {err.lineno} column {err.colno}",
                "this looks like one JSON object a line: rename the file to .jsonl"
                if one_per_line
                else "a .json file must be one JSON array of records: [{...}, {...}]",
            )
        )
        return []
    if not isinstance(value, list):
        issues.append(
            Issue.error(
                name,
                None,
                None,
                f"a .json file must hold a JSON array of records, got {json_type(value)}",
                "wrap the records in [ ] (as alpaca_data.json does), or write one object a line to a .jsonl file",
            )
        )
        return []
    if not value:
        issues.append(Issue.error(name, None, None, "the file has no records", "add JSON objects to the array"))
    objects: list[tuple[int, dict]] = []
    for number, obj in enumerate(value, start=1):
        if isinstance(obj, dict):
            objects.append((number, obj))
            continue
        issues.append(
            Issue.error(
                name,
                number,
                None,
                f"expected a JSON object, got {json_type(obj)}",
                'each record of the array must be one JSON object like {"messages": [...]}',
            )
        )
    return objects


def json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def check_classify(example: Example, name: str, issues: list[Issue]) -> None:
    """A classification row (a CSV row or a JSONL line): text and label must say something."""
    if not (example.text or "").strip():
        issues.append(Issue.error(name, example.line, "text", "empty text", "write the text to classify"))
    if not example.label:
        issues.append(Issue.error(name, example.line, "label", "empty label", "give every row a label"))


def read_text(path: Path, issues: list[Issue]) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerate the BOM spreadsheet exports add
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        issues.append(Issue.error(str(path), line, None, "not valid UTF-8", "save the file as UTF-8"))
        return None
