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

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.field}: " if self.field else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.severity}: {what}{self.message}{hint}"


class Findings:
    """``errors`` and ``warnings`` of a result that holds ``issues: list[Issue]``."""

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
