"""The review loop without a user interface: which prompts are left, the model's answer, and the
verdict recorded as a corrections line. The terminal (``review_terminal``) drives it; a web page can.

Every recorded review is one line appended to the corrections file with a single write, flushed and
fsync'ed before the next prompt is shown: Ctrl-C or a crash loses at most the review being typed.
Resuming needs no state besides that file: a prompt with a line in it is done (the key is the
prompt, see ``corrections.prompt_key``); a skipped prompt has none and comes back next time.

A line cut off by a crash during the write (no newline at the end, not valid JSON) is dropped from
the file with a warning when a session opens it; any other unreadable line stops the session with
its file:line, since appending to a file ``data from-corrections`` will refuse helps nobody.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.core.durable import append_line, repair_tail
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.readers import read_json_objects
from tunesmith.data.records import Issue, listed_errors
from tunesmith.feedback.corrections import (
    Correction,
    Prompt,
    Verdict,
    parse_correction,
    parse_prompt,
    prompt_key,
    prompt_messages,
)
from tunesmith.inference.loaded import generate_answer

PROMPT_LINE_SHAPE = '{"prompt": "..."} or {"messages": [..., {"role": "user", "content": "..."}]}'


@dataclass
class ReviewPrompt:
    """A prompt to review, as written in the prompts file (``line`` is 1-based)."""

    line: int
    prompt: Prompt

    @property
    def messages(self) -> list[dict]:
        return prompt_messages(self.prompt)

    @property
    def key(self) -> str:
        return prompt_key(self.prompt)


@dataclass
class Progress:
    done: int
    total: int

    @property
    def remaining(self) -> int:
        return self.total - self.done


class ReviewSession:
    """Prompts from ``prompts_path`` reviewed into ``out_path``. Opening it reads both files (and
    repairs a torn last line of ``out_path``); nothing here loads a model."""

    def __init__(self, prompts_path: Path, out_path: Path):
        self.prompts_path, self.out_path = Path(prompts_path), Path(out_path)
        if self.out_path.exists() and self.out_path.resolve() == self.prompts_path.resolve():
            raise TunesmithError(
                f"--out {self.out_path} is the prompts file; give the corrections their own "
                "file, e.g. corrections.jsonl"
            )
        if self.out_path.is_dir():
            raise TunesmithError(
                f"--out {self.out_path} is a folder; give a file name, e.g. {self.out_path / 'corrections.jsonl'}"
            )
        self.warnings: list[Issue] = []
        self.prompts = read_prompts(self.prompts_path, self.warnings)
        self.done_keys = reviewed_keys(self.out_path, self.warnings)
        self.recorded: list[Correction] = []  # by this session

    def progress(self) -> Progress:
        return Progress(sum(1 for p in self.prompts if p.key in self.done_keys), len(self.prompts))

    def pending(self) -> list[ReviewPrompt]:
        """Prompts without a review yet, in file order (recomputed on every call: a prompt recorded by
        this session since is left out; a skipped one stays)."""
        return [p for p in self.prompts if p.key not in self.done_keys]

    def record(
        self, prompt: ReviewPrompt, response: str, verdict: Verdict, correction: str | None = None
    ) -> Correction:
        """Append one review to the corrections file. Checked with the corrections rules first: a line
        ``data from-corrections`` would refuse raises ``TunesmithError`` and is not written."""
        line: dict[str, object] = (
            {"prompt": prompt.prompt} if isinstance(prompt.prompt, str) else {"messages": prompt.prompt}
        )
        line |= {"response": response, "verdict": verdict}
        if correction is not None:
            line["correction"] = correction
        issues: list[Issue] = []
        record = parse_correction(line, str(self.out_path), 0, issues)
        if record is None:
            raise TunesmithError("; ".join(f"{i.field}: {i.message} (hint: {i.hint})" for i in issues))
        append_line(self.out_path, json.dumps(record.to_json(), ensure_ascii=False))
        self.done_keys.add(prompt.key)
        self.recorded.append(record)
        return record


def answer(loaded, prompt: ReviewPrompt, max_tokens: int) -> str:
    """The model's greedy answer, with the system prompt (and classifier instruction) it was trained
    with; a deterministic answer is what a deployed model gives, so that is what gets reviewed."""
    return generate_answer(loaded, messages=loaded.conversation(prompt.messages), max_tokens=max_tokens, temperature=0)


def read_prompts(path: Path, warnings: list[Issue]) -> list[ReviewPrompt]:
    """The prompts of a JSONL file, each once; raises ``DataError`` listing every bad line."""
    issues: list[Issue] = []
    name = str(path)
    prompts: list[ReviewPrompt] = []
    seen: dict[str, int] = {}
    for line, obj in read_json_objects(path, issues):
        for unknown in sorted(set(obj) - {"prompt", "messages"}):
            issues.append(Issue.error(name, line, unknown, "unknown key", f"a prompts line is {PROMPT_LINE_SHAPE}"))
        prompt = parse_prompt(obj, name, line, issues)
        if prompt is None:
            continue
        item = ReviewPrompt(line, prompt)
        if item.key in seen:
            warnings.append(
                Issue.warning(name, line, None, f"same prompt as line {seen[item.key]}", "it is reviewed once")
            )
            continue
        seen[item.key] = line
        prompts.append(item)
    _raise_errors(path, issues, "fix these lines, then run the review again")
    return prompts


def reviewed_keys(path: Path, warnings: list[Issue]) -> set[str]:
    """The prompts (keys) already reviewed in the corrections file; none when it does not exist yet."""
    if not path.exists():
        return set()
    _repair_tail(path, warnings)
    if not path.read_bytes().strip():
        return set()
    issues: list[Issue] = []
    keys = {
        prompt_key(record.prompt)
        for line, obj in read_json_objects(path, issues)
        if (record := parse_correction(obj, str(path), line, issues)) is not None
    }
    _raise_errors(path, issues, "fix or delete those lines (each is one review), then run the review again")
    return keys


def _repair_tail(path: Path, warnings: list[Issue]) -> None:
    dropped = repair_tail(path)
    if dropped is not None:
        line, tail = dropped
        preview = tail[:60].decode("utf-8", errors="replace")
        warnings.append(
            Issue.warning(
                str(path),
                line,
                None,
                f"dropped an incomplete last line ({len(tail)} bytes: {preview!r}...)",
                "an earlier review was interrupted while writing; that prompt will be asked again",
            )
        )


def _raise_errors(path: Path, issues: list[Issue], hint: str) -> None:
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise DataError(f"{path} has {len(errors)} error(s); {hint}:\n{listed_errors(errors)}")
