"""The data check: every error at once, warnings, token statistics under the real template.

``check_structure`` needs no tokenizer (``train`` calls it before loading anything heavy);
``check_data`` adds what needs one: rendering, lengths, truncation, the loss-mask preview and the
time estimate. ``train`` reuses the rendered examples of the report instead of rendering twice.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.core.config import Task, TaskChoice
from tunesmith.core.results import Result
from tunesmith.data.facts import fact_base
from tunesmith.data.formats import ParsedFile, read_file
from tunesmith.data.records import MAX_LISTED, Findings, Issue, position_word, positions
from tunesmith.data.render import (
    NoToolSupport,
    Rendered,
    RenderedPair,
    fit_classify_text,
    render_example,
    tokenize_document,
)


class GpuCost(Result):
    """The same training on a rented GPU: time and what the hour costs (``training.estimate``)."""

    gpu: str
    price_per_hour: float  # US dollars
    price_date: str  # when that price was read
    seconds: float
    low: float
    high: float
    dollars: float  # at ``seconds``, billed per second


class TrainingEstimate(Result):
    """The training time of a run at the default settings on this machine, with the range it may fall in,
    and the cost on a rented GPU. Filled in by ``training.estimate.estimate_training`` (data/ cannot import
    training/)."""

    seconds: float
    low: float
    high: float
    tokens: int  # tokens the loop computes in the run (a prefix shared by a batch's rows counted once)
    method: str  # lora, full or dpo
    precision: str  # what training would compute in here: bf16 or fp32
    epochs: int = 1  # the passes and batch size the defaults choose for this data (training.defaults)
    batch_size: int = 8
    gpu: GpuCost | None = None


@dataclass
class DataReport(Findings):
    train: ParsedFile
    val: ParsedFile | None
    task: Task
    labels: list[str] | None
    issues: list[Issue]
    # train examples (documents for text, pairs for preference)
    rendered: list[Rendered | RenderedPair] = field(default_factory=list)
    val_rendered: list[Rendered | RenderedPair] = field(default_factory=list)
    max_length: int | None = None
    stats: dict = field(default_factory=dict)
    preview: list[tuple[str, bool]] = field(default_factory=list)  # (token text, carries loss)
    estimate: TrainingEstimate | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def tokens_per_epoch(self) -> int:
        """Tokens one pass over the rendered training data processes: raw text whole, a preference pair
        both answers, any other example up to max_length."""
        cap = self.max_length or 0
        if self.task == "text":
            return sum(len(r.input_ids) for r in self.rendered)
        if self.task == "preference":
            return sum(
                min(len(r.chosen.input_ids), cap) + min(len(r.rejected.input_ids), cap)
                for r in self.rendered
                if isinstance(r, RenderedPair)
            )
        return sum(min(len(r.input_ids), cap) for r in self.rendered)

    def to_json(self) -> dict:
        return {
            "file": str(self.train.path),
            "val_file": str(self.val.path) if self.val else None,
            "task": self.task,
            "ok": self.ok,
            "examples": len(self.train.examples),
            "val_examples": len(self.val.examples) if self.val else None,
            "labels": self.labels,
            "errors": [issue.__dict__ for issue in self.errors],
            "warnings": [issue.__dict__ for issue in self.warnings],
            "max_length": self.max_length,
            "stats": self.stats,
            "preview": [{"token": text, "loss": loss} for text, loss in self.preview],
            "estimated_train_seconds": self.estimate.seconds if self.estimate else None,  # kept for old readers
            "estimate": self.estimate.to_json() if self.estimate else None,
        }


def check_structure(
    data: Path, task: TaskChoice = "auto", val_data: Path | None = None, labels: list[str] | None = None
) -> DataReport:
    """Parse the files and report structural problems; no tokenizer needed."""
    train = read_file(Path(data), task)
    issues = list(train.issues)
    val = None
    if val_data is not None:
        # Read as the training file's task: lines of another format are reported as mixed formats.
        val = read_file(Path(val_data), train.task)
        issues += val.issues
    label_set = None
    if train.task == "classify":
        label_set = labels or sorted({e.label for e in train.examples if e.label})
        issues += _label_issues(train, val, label_set, given=labels is not None)
    issues += _duplicates(train)
    if val is not None:
        issues += _overlap(train, val)
    if train.task in ("chat", "completion"):
        issues += fact_base(train)
    return DataReport(train=train, val=val, task=train.task, labels=label_set, issues=issues)


def check_data(
    data: Path,
    task: TaskChoice = "auto",
    tokenizer=None,
    max_length: int | None = None,
    val_data: Path | None = None,
    labels: list[str] | None = None,
    system_prompt: str | None = None,
) -> DataReport:
    """The full check. Without a tokenizer only the structural part runs."""
    report = check_structure(data, task, val_data, labels)
    if tokenizer is None or not report.ok:
        return report
    render = _renderer(tokenizer, report, system_prompt)
    report.rendered = _render_all(render, report.train, report.issues)
    if report.val is not None:
        report.val_rendered = _render_all(render, report.val, report.issues)
    if not report.ok:  # examples the template cannot render (function calling without tool support)
        report.rendered, report.val_rendered = [], []  # rendered lists line up with the examples, or are empty
        return report
    lengths = [len(r.input_ids) for r in report.rendered]
    report.max_length = max_length or default_max_length(
        lengths, report.task, getattr(tokenizer, "model_max_length", None)
    )
    report.stats = _length_stats(lengths, [r.n_target for r in report.rendered])
    if report.task == "classify" and report.labels:
        # Texts too long for max_length are shortened inside the prompt, the label kept: the rows re-rendered
        # here are the ones training uses (the statistics above stay those of the data as written).
        for parsed, rendered in ((report.train, report.rendered), (report.val, report.val_rendered)):
            if parsed is not None:
                report.issues += _shorten_texts(
                    tokenizer, parsed, rendered, report.labels, system_prompt, report.max_length
                )
    if report.task != "text":
        report.issues += _truncation(report.train, report.rendered, report.max_length)
    report.preview = _preview(tokenizer, report.rendered[0], report.max_length) if report.rendered else []
    return report


def _render_all(render, parsed: ParsedFile, issues: list[Issue]) -> list[Rendered | RenderedPair]:
    """Every example of ``parsed`` rendered; those the chat template cannot render faithfully (function
    calling under a template without tool support) become one error naming their lines."""
    rendered: list[Rendered | RenderedPair] = []
    refused: list[int] = []
    problem = ""
    for example in parsed.examples:
        try:
            rendered.append(render(example))
        except NoToolSupport as err:
            refused.append(example.line)
            problem = problem or err.problem
    if refused:
        name = str(parsed.path)
        issues.append(
            Issue.error(
                name,
                refused[0],
                "tools",
                f"{problem}: {len(refused)} function-calling example(s) ({positions(name, refused)})",
                NoToolSupport.REMEDY,
            )
        )
    return rendered


def _renderer(tokenizer, report: DataReport, system_prompt: str | None):
    if report.task == "text":
        return lambda example: Rendered(*(2 * [tokenize_document(tokenizer, example.text)]))
    return lambda example: render_example(tokenizer, example, report.labels, system_prompt)


def _label_issues(train: ParsedFile, val: ParsedFile | None, labels: list[str], given: bool) -> list[Issue]:
    issues = []
    known = set(labels)
    source = "the given label set" if given else "the training labels"
    # Training labels define the set unless one was given; then both files are checked against it.
    for parsed in (train if given else None, val):
        if parsed is None:
            continue
        for example in parsed.examples:
            if example.label and example.label not in known:
                issues.append(
                    Issue.error(
                        str(parsed.path),
                        example.line,
                        "label",
                        f"unknown label {example.label!r}",
                        f"labels must be one of {sorted(known)} ({source})",
                    )
                )
    counts = Counter(e.label for e in train.examples if e.label)
    if len(counts) == 1:
        issues.append(
            Issue.error(
                str(train.path),
                None,
                "label",
                "only one label in the data",
                "classification needs examples of at least two labels",
            )
        )
    elif counts and max(counts.values()) > 3 * min(counts.values()):
        shares = ", ".join(f"{label} {n}" for label, n in counts.most_common())
        issues.append(
            Issue.warning(
                str(train.path),
                None,
                "label",
                f"label imbalance: {shares}",
                "the model may learn to favour the common label; add examples of the rare ones",
            )
        )
    return issues


def _duplicates(parsed: ParsedFile) -> list[Issue]:
    first_seen: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for example in parsed.examples:
        key = example.key()
        if key in first_seen:
            repeats.append((example.line, first_seen[key]))
        else:
            first_seen[key] = example.line
    if not repeats:
        return []
    word = position_word(str(parsed.path))
    listed = ", ".join(f"{word} {line} = {word} {original}" for line, original in repeats[:MAX_LISTED])
    more = f" and {len(repeats) - MAX_LISTED} more" if len(repeats) > MAX_LISTED else ""
    return [
        Issue.warning(
            str(parsed.path),
            repeats[0][0],
            None,
            f"{len(repeats)} duplicate example(s): {listed}{more}",
            "duplicates weigh those examples more; remove them unless that is intended",
        )
    ]


def _overlap(train: ParsedFile, val: ParsedFile) -> list[Issue]:
    train_keys = {example.key() for example in train.examples}
    shared = [example.line for example in val.examples if example.key() in train_keys]
    if not shared:
        return []
    return [
        Issue.warning(
            str(val.path),
            shared[0],
            None,
            f"{len(shared)} validation example(s) also in the training data ({positions(str(val.path), shared)})",
            "overlap makes validation scores look better than they are; remove them",
        )
    ]


def _truncation(parsed: ParsedFile, rendered: list[Rendered | RenderedPair], max_length: int) -> list[Issue]:
    cut = [
        (example.line, r.n_target - r.truncated(max_length).n_target) for example, r in zip(parsed.examples, rendered)
    ]
    cut = [(line, lost) for line, lost in cut if lost > 0]
    if not cut:
        return []
    where = positions(str(parsed.path), [line for line, _ in cut])
    return [
        Issue.warning(
            str(parsed.path),
            cut[0][0],
            "max_length",
            f"{len(cut)} example(s) lose answer tokens at max_length {max_length} "
            f"({sum(lost for _, lost in cut)} answer tokens in all; {where})",
            "raise --max-length or shorten those examples",
        )
    ]


def _shorten_texts(
    tokenizer,
    parsed: ParsedFile,
    rendered: list[Rendered | RenderedPair],
    labels: list[str],
    system_prompt: str | None,
    max_length: int,
) -> list[Issue]:
    """Classification examples whose text does not fit ``max_length``: the text is shortened inside the
    prompt (``render.fit_classify_text``: instruction and label kept, the cut marked), ``rendered``
    updated in place, and one warning names their lines."""
    sizes = [len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels]
    # fit_classify_text makes room for the longest label; rows shorter than this fit with any label.
    sure_to_fit = max_length - (max(sizes) - min(sizes)) - 2
    lines = []
    for index, example in enumerate(parsed.examples):
        if len(rendered[index].input_ids) <= sure_to_fit:
            continue
        fitted = fit_classify_text(tokenizer, example, labels, system_prompt, max_length)
        if fitted is not example:
            rendered[index] = render_example(tokenizer, fitted, labels, system_prompt)
            lines.append(example.line)
    if not lines:
        return []
    return [
        Issue.warning(
            str(parsed.path),
            lines[0],
            "max_length",
            f"{len(lines)} text(s) are longer than max_length {max_length} allows and will be shortened inside "
            f"the prompt (instruction and label kept, the cut marked with …): {positions(str(parsed.path), lines)}",
            "raise --max-length to train on them whole",
        )
    ]


def _length_stats(lengths: list[int], targets: list[int]) -> dict:
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {
        "tokens_total": sum(lengths),
        "target_tokens_total": sum(targets),
        "length_min": ordered[0],
        "length_median": statistics.median(ordered),
        "length_p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "length_max": ordered[-1],
    }


def _preview(tokenizer, rendered: Rendered | RenderedPair, max_length: int) -> list[tuple[str, bool]]:
    head = rendered.truncated(max_length)
    return [(tokenizer.decode([token]), label != -100) for token, label in zip(head.input_ids, head.labels)]


def default_max_length(lengths: list[int], task: str, model_max_length: int | None) -> int:
    """Tokens per example when not given: raw text 512-token blocks (less for a shorter corpus); otherwise
    the 99th percentile of rendered lengths rounded up to 32, between 64 and 2048, within the model's context."""
    ceiling = min(2048, model_max_length or 2048)
    if task == "text":
        return max(64, min(512, ceiling, _round_up(sum(lengths), 32)))
    if not lengths:
        return min(512, ceiling)
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return max(64, min(ceiling, _round_up(p99, 32)))


def _round_up(value: int, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)
