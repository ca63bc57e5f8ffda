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
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.field}: " if self.field else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.severity}: {what}{self.message}{hint}"


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


@dataclass
class Example:
    """A record in a task-neutral shape: chat-like tasks as messages, raw text as ``text``; a
    preference pair as the prompt's messages (ending with a user turn) and two answers."""

    line: int
    messages: list[dict] = field(default_factory=list)  # {"role", "content", "weight"}
    text: str | None = None
    label: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    def key(self) -> str:
        """Identity used for duplicate and overlap detection (a pair: its prompt and both answers, since
        one prompt with several reviewed answers is normal)."""
        if self.text is not None:  # raw text and classification: the text itself
            return self.text.strip()
        turns = [(m["role"], m["content"].strip()) for m in self.messages]
        if self.chosen is not None:
            turns += [("chosen", self.chosen.strip()), ("rejected", (self.rejected or "").strip())]
        return json.dumps(turns)


def example_record(example: Example) -> dict:
    """An example as a line of the canonical JSONL format of its task."""
    if example.label is not None:
        return {"text": example.text, "label": example.label}
    if example.chosen is not None:
        prompt = [{key: m[key] for key in ("role", "content")} for m in example.messages]
        return {"prompt": prompt, "chosen": example.chosen, "rejected": example.rejected}
    if not example.messages:
        return {"text": example.text}
    return {"messages": [{key: m[key] for key in ("role", "content", "weight") if key in m} for m in example.messages]}
