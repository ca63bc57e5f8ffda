"""The records every data module passes around: an example, a finding of the data check, and the
canonical JSONL line of an example."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass
class Issue:
    """One finding of the data check; ``line`` is 1-based, ``None`` for the whole file."""

    severity: Severity
    file: str
    line: int | None
    field: str | None
    message: str
    hint: str = ""

    @classmethod
    def error(cls, file: str, line: int | None, field: str | None, message: str, hint: str = "") -> Issue:
        return cls("error", file, line, field, message, hint)

    @classmethod
    def warning(cls, file: str, line: int | None, field: str | None, message: str, hint: str = "") -> Issue:
        return cls("warning", file, line, field, message, hint)

    def __str__(self) -> str:
        where = location(self.file, self.line)
        what = f"{self.field}: " if self.field else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.severity}: {what}{self.message}{hint}"


def position_word(file: str) -> str:
    """What a position in ``file`` counts: a ``.json`` data file is one JSON array, so its positions
    are records (1 = the first, the array's index 0); any other file's are lines."""
    return "record" if file.lower().endswith(".json") else "line"


MAX_LISTED = 5  # positions quoted per warning


def positions(file: str, numbers: list[int], limit: int = MAX_LISTED) -> str:
    """Where a warning's examples are: ``lines 3, 7, 9`` (``records ...`` in a .json array), the first
    ``limit`` of them and then how many more."""
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"{position_word(file)}s {', '.join(str(n) for n in numbers[:limit])}{more}"


def location(file: str, line: int | None) -> str:
    """``file:3``, or ``file.json, record 3``; the file alone for ``None``."""
    if not line:
        return file
    return f"{file}, record {line}" if position_word(file) == "record" else f"{file}:{line}"


MAX_LISTED_ERRORS = 50  # error lines quoted in one message; the check lists them all (`tunesmith data check`)


def listed_errors(issues: list[Issue], limit: int = MAX_LISTED_ERRORS) -> str:
    """The errors among ``issues``, one ``file:line: error: field: message (hint: ...)`` a line, at most
    ``limit`` of them and then how many more: the body of every "the data has errors" message."""
    errors = [issue for issue in issues if issue.severity == "error"]
    lines = [str(issue) for issue in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more errors (see `tunesmith data check`)")
    return "\n".join(lines)


class Findings:
    """``errors`` and ``warnings`` of a result that holds ``issues: list[Issue]``."""

    issues: list[Issue]  # declared here for the type checker; each subclass is a dataclass with this field

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]


TOOL_KEYS = ("tool_calls", "tool_call_id")  # what function calling adds to a message


@dataclass
class Example:
    """A record in a task-neutral shape: chat-like tasks as messages, raw text as ``text``; a
    preference pair as the prompt's messages (ending with a user turn) and two answers."""

    line: int
    # {"role", "content", "weight"}; function calling adds "tool_calls" (assistant) and "tool_call_id" (tool)
    messages: list[dict] = field(default_factory=list)
    text: str | None = None
    label: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    tools: list[dict] | None = None  # OpenAI tool definitions of a function-calling conversation

    def key(self) -> str:
        """Identity used for duplicate and overlap detection (a pair: its prompt and both answers, since
        one prompt with several reviewed answers is normal)."""
        if self.text is not None:  # raw text and classification: the text itself
            return self.text.strip()
        turns: list = [(m["role"], m["content"].strip(), *_call_parts(m)) for m in self.messages]
        if self.chosen is not None:
            turns += [("chosen", self.chosen.strip()), ("rejected", (self.rejected or "").strip())]
        if self.tools:
            turns.append(("tools", self.tools))
        return json.dumps(turns, sort_keys=True)


def _call_parts(message: dict) -> list:
    """A message's tool calls or the call it answers: part of its identity (two calls with other arguments differ)."""
    return [message[key] for key in TOOL_KEYS if key in message]


def example_record(example: Example) -> dict:
    """An example as a line of the canonical JSONL format of its task, which ``formats.read_file`` reads back
    as the same example."""
    if example.label is not None:
        return {"text": example.text, "label": example.label}
    if example.chosen is not None:
        prompt = [{key: m[key] for key in ("role", "content")} for m in example.messages]
        return {"prompt": prompt, "chosen": example.chosen, "rejected": example.rejected}
    if not example.messages:
        return {"text": example.text}
    record: dict = {"messages": [_message_record(m) for m in example.messages]}
    if example.tools:
        record["tools"] = example.tools
    return record


def _message_record(message: dict) -> dict:
    """A message as the reader takes it back: a weight only on an assistant turn left out of training
    (weight 0); the reader gives every other turn weight 1, and refuses a weight on any other role."""
    record = {key: message[key] for key in ("role", "content", *TOOL_KEYS) if key in message}
    if message["role"] == "assistant" and message.get("weight", 1) == 0:
        record["weight"] = 0
    return record
