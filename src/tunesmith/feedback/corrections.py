"""Reviewed answers ("corrections") turned into training data: supervised rows and preference pairs.

A corrections file is JSONL, one reviewed answer a line:

    {"prompt": "..."}  or  {"messages": [..., {"role": "user", ...}]}   exactly one of the two
    "response":   the model's answer (string)
    "verdict":    "good" or "bad"
    "correction": the right answer; required for "bad", not allowed for "good"

``convert`` reads it and builds

* supervised rows in the chat format, ``{"messages": [...prompt..., {"role": "assistant", ...}]}``:
  the correction for a bad answer, the response itself for a good one;
* preference pairs for bad answers, ``{"prompt", "chosen": correction, "rejected": response}``,
  the line format of the ``preference`` task (``--method dpo``).

Nothing here guesses: an exact repeat is written once, and reviews that disagree about the same
prompt and response (different verdicts or corrections) are reported and left out of both outputs.
``tunesmith review`` writes these lines; this module is also where their rules live, so that the
review never records a line that ``data from-corrections`` would refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from tunesmith.core.durable import atomic_write_text, fsync_dir
from tunesmith.core.errors import DataError
from tunesmith.data.messages import check_prompt_messages
from tunesmith.data.readers import read_json_objects
from tunesmith.data.records import Findings, Issue

Verdict = Literal["good", "bad"]
VERDICTS = ("good", "bad")
Prompt = str | list[dict]  # a string, or messages ending with a user turn
PROMPT_KEYS = ("prompt", "messages")
CORRECTION_KEYS = frozenset({*PROMPT_KEYS, "response", "verdict", "correction"})
SFT_FILE, PAIRS_FILE = "sft.jsonl", "pairs.jsonl"
LINE_SHAPE = '{"prompt": "...", "response": "...", "verdict": "bad", "correction": "..."}'


@dataclass
class Correction:
    """One reviewed answer. ``prompt`` keeps the form it was given in (string or messages)."""

    line: int
    prompt: Prompt
    response: str
    verdict: Verdict
    correction: str | None = None

    @property
    def messages(self) -> list[dict]:
        return prompt_messages(self.prompt)

    def key(self) -> str:
        """Identity for duplicates: the same prompt, answer and review."""
        return json.dumps([prompt_key(self.prompt), self.response, self.verdict, self.correction])

    def to_json(self) -> dict:
        """The corrections line (what ``tunesmith review`` appends)."""
        head = {"prompt": self.prompt} if isinstance(self.prompt, str) else {"messages": self.prompt}
        tail = {"correction": self.correction} if self.verdict == "bad" else {}
        return {**head, "response": self.response, "verdict": self.verdict, **tail}


@dataclass
class Conflict:
    """Reviews of one prompt and response that disagree; all of them are left out."""

    lines: list[int]
    field: str  # "verdict" or "correction": what they disagree about


@dataclass
class CorrectionsResult(Findings):
    path: Path
    issues: list[Issue]
    kept: list[Correction] = field(default_factory=list)  # after duplicates and conflicts
    sft: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def good(self) -> int:
        return sum(1 for c in self.kept if c.verdict == "good")

    @property
    def bad(self) -> int:
        return sum(1 for c in self.kept if c.verdict == "bad")


def prompt_messages(prompt: Prompt) -> list[dict]:
    """The conversation a prompt stands for: a string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def prompt_key(prompt: Prompt) -> str:
    """One prompt's identity, the same whether written as a string or as one user message (both are
    the same input to the model). Used for resuming a review and for finding duplicates."""
    return json.dumps(prompt_messages(prompt), ensure_ascii=False)


# ---------------------------------------------------------------- reading


def parse_prompt(obj: dict, name: str, line: int, issues: list[Issue]) -> Prompt | None:
    """The prompt of a line: exactly one of ``prompt`` (non-empty string) or ``messages``."""
    given = [key for key in PROMPT_KEYS if key in obj]
    if len(given) != 1:
        message = "has both prompt and messages" if given else "missing key: prompt or messages"
        issues.append(
            Issue.error(
                name,
                line,
                "prompt" if given else "prompt, messages",
                message,
                'give the question as "prompt": "..." or as "messages": [..., {"role": "user", ...}]',
            )
        )
        return None
    if given == ["prompt"]:
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            issues.append(
                Issue.error(
                    name,
                    line,
                    "prompt",
                    f"must be a string, got {type(prompt).__name__}",
                    'write it as "prompt": "...", or use "messages" for a conversation',
                )
            )
            return None
        if not prompt.strip():
            issues.append(Issue.error(name, line, "prompt", "empty prompt", "write the question or drop the line"))
            return None
        return prompt
    messages = check_prompt_messages(obj["messages"], line, name, issues, field="messages")
    return None if messages is None else [{"role": m["role"], "content": m["content"]} for m in messages]


def parse_correction(obj: dict, name: str, line: int, issues: list[Issue]) -> Correction | None:
    """One corrections line, every error of it reported; ``None`` when it has any."""
    before = len(issues)
    for unknown in sorted(set(obj) - CORRECTION_KEYS):
        issues.append(
            Issue.error(
                name, line, unknown, "unknown key", "allowed keys: prompt or messages, response, verdict, correction"
            )
        )
    prompt = parse_prompt(obj, name, line, issues)
    response, verdict, correction = obj.get("response"), obj.get("verdict"), obj.get("correction")
    if "response" not in obj:
        issues.append(
            Issue.error(
                name, line, "response", "missing key", f"give the model's answer; a line looks like {LINE_SHAPE}"
            )
        )
    elif not isinstance(response, str):
        issues.append(
            Issue.error(
                name, line, "response", f"must be a string, got {type(response).__name__}", "quote the model's answer"
            )
        )
    if verdict not in VERDICTS:
        message = "missing key" if "verdict" not in obj else f'must be "good" or "bad", got {verdict!r}'
        hint = 'write "good" if the answer was right, "bad" with a correction if not'
        if isinstance(verdict, str) and verdict.strip().lower() in VERDICTS:
            hint = f'write it exactly as "{verdict.strip().lower()}", in lower case'
        issues.append(Issue.error(name, line, "verdict", message, hint))
    if correction is not None and not isinstance(correction, str):
        issues.append(
            Issue.error(
                name,
                line,
                "correction",
                f"must be a string, got {type(correction).__name__}",
                "quote the corrected answer",
            )
        )
    elif verdict == "bad" and not (correction or "").strip():
        issues.append(
            Issue.error(
                name,
                line,
                "correction",
                "missing correction" if "correction" not in obj else "empty correction",
                'a bad answer needs the right answer in "correction"',
            )
        )
    elif verdict == "bad" and isinstance(response, str) and (correction or "").strip() == response.strip():
        issues.append(
            Issue.error(
                name,
                line,
                "correction",
                "the correction is the same as the response",
                "if the answer was right, set verdict to good and drop the correction",
            )
        )
    elif verdict == "good" and correction:  # "" or null: no correction (spreadsheet exports write them)
        issues.append(
            Issue.error(
                name,
                line,
                "correction",
                "a good answer with a correction",
                "a good answer needs no correction; set verdict to bad or drop the correction",
            )
        )
    if verdict == "good" and isinstance(response, str) and not response.strip():
        issues.append(
            Issue.error(
                name,
                line,
                "response",
                "an empty answer marked good",
                'set verdict to bad and write the right answer in "correction"',
            )
        )
    if len(issues) > before or prompt is None:
        return None
    # No issue above: the response is a string and the verdict one of VERDICTS.
    return Correction(
        line, prompt, cast(str, response), cast(Verdict, verdict), correction if verdict == "bad" else None
    )


# ---------------------------------------------------------------- converting


def convert(path: Path) -> CorrectionsResult:
    """Read a corrections file and build its training rows. Never raises for bad content: see
    ``issues``; when there are errors the rows are empty (nothing half-converted gets written)."""
    path = Path(path)
    name = str(path)
    issues: list[Issue] = []
    records = [
        c
        for line, obj in read_json_objects(path, issues)
        if (c := parse_correction(obj, name, line, issues)) is not None
    ]
    result = CorrectionsResult(path, issues)
    if result.errors:
        issues.sort(key=lambda issue: issue.line or 0)  # JSON errors were found first: file order
        return result

    unique: dict[str, Correction] = {}
    for record in records:
        first = unique.setdefault(record.key(), record)
        if first is not record:
            result.duplicates += 1
            issues.append(
                Issue.warning(
                    name,
                    record.line,
                    None,
                    f"duplicate: line {record.line} = line {first.line}",
                    "written once; delete the repeat to silence this",
                )
            )

    # Reviews of the same prompt and response must agree; which one is right is the user's call.
    groups: dict[tuple[str, str], list[Correction]] = {}
    for record in unique.values():
        groups.setdefault((prompt_key(record.prompt), record.response), []).append(record)
    left_out: set[int] = set()
    for group in groups.values():
        if len(group) < 2:
            continue
        differs = "verdict" if len({r.verdict for r in group}) > 1 else "correction"
        lines = [r.line for r in group]
        result.conflicts.append(Conflict(lines, differs))
        left_out.update(lines)
        for other in group[1:]:
            issues.append(
                Issue.warning(
                    name,
                    other.line,
                    differs,
                    f"conflicts with line {group[0].line}: same prompt and response, different {differs}",
                    "decide which review is right and delete the other; both are left out until then",
                )
            )

    for record in unique.values():
        if record.line in left_out:
            continue
        result.kept.append(record)
        result.sft.append(sft_row(record))
        if record.verdict != "bad":
            continue
        if not record.response.strip():
            issues.append(
                Issue.warning(
                    name,
                    record.line,
                    "response",
                    "empty response: no preference pair",
                    f"a pair needs a rejected answer to compare with; the correction still goes to {SFT_FILE}",
                )
            )
            continue
        result.pairs.append(preference_pair(record))
    issues.sort(key=lambda issue: issue.line or 0)
    return result


def sft_row(record: Correction) -> dict:
    """The prompt answered the right way. Earlier assistant turns of a messages prompt get weight 0:
    only the answer under review was reviewed, so only it is trained on."""
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in record.messages]
    answer = record.correction if record.verdict == "bad" else record.response
    return {"messages": [*context, {"role": "assistant", "content": answer}]}


def preference_pair(record: Correction) -> dict:
    """A line of the preference task: the prompt as it was given, the correction over the response."""
    return {"prompt": record.prompt, "chosen": record.correction, "rejected": record.response}


# ---------------------------------------------------------------- writing


def write_outputs(result: CorrectionsResult, out_dir: Path) -> dict[Path, int]:
    """Write ``sft.jsonl`` and (when there are bad answers) ``pairs.jsonl`` into ``out_dir``; returns
    {path: rows}. Each is written to a temporary file and renamed into place, so a crash or a full
    disk leaves the previous output (or none), never half of one."""
    if result.errors:
        raise DataError(f"{result.path} has {len(result.errors)} error(s); nothing written")
    outputs = {out_dir / SFT_FILE: result.sft}
    if result.pairs:
        outputs[out_dir / PAIRS_FILE] = result.pairs
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, rows in outputs.items():
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    fsync_dir(out_dir)
    return {path: len(rows) for path, rows in outputs.items()}


def summary(result: CorrectionsResult, written: dict[Path, int], out_dir: Path) -> list[str]:
    """What ``data from-corrections`` did, in plain lines, ending with the commands to run next."""
    conflict_lines = sum(len(conflict.lines) for conflict in result.conflicts)
    lines = [
        f"{result.good} good, {result.bad} bad, {result.duplicates} duplicate(s) written once, "
        f"{len(result.conflicts)} conflict(s) left out ({conflict_lines} line(s))"
    ]
    lines += [f"wrote {path}: {rows} row(s)" for path, rows in written.items()]
    pairs = out_dir / PAIRS_FILE
    if pairs not in written:
        why = "no bad answers" if not result.bad else "no bad answer has a non-empty response to reject"
        lines.append(f"{PAIRS_FILE} not written: {why}, so there are no preference pairs")
        if pairs.exists():
            lines.append(f"note: the {pairs} already there is from an earlier run, not from {result.path}")
    lines.append(f"next: tunesmith train {out_dir / SFT_FILE}")
    if pairs in written:
        lines.append(f"  or: tunesmith train {pairs} --method dpo --base NAME")
    return lines
