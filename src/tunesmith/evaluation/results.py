"""The typed results of an evaluation: each system's figures, the verdict with its intervals, the whole
``tunesmith eval`` result and a learning curve. Each dumps to the JSON of ``--json`` (core.results)."""

from __future__ import annotations

from typing import Any

from tunesmith.core.config import Precision, Task
from tunesmith.core.results import Result


class SystemMetrics(Result):
    """Every figure of one system on the held-out examples; a task sets only its own."""

    n: int | None = None  # examples (raw text: documents or held-out blocks)
    # classify (label scoring; the teacher has no probabilities, so no ece or loss)
    accuracy: float | None = None
    macro_f1: float | None = None
    ece: float | None = None
    per_label: dict[str, dict[str, float | int]] | None = None  # label -> precision, recall, f1, support
    confusion: list[list[int]] | None = None  # rows: gold label, columns: predicted
    invalid_answers: int | None = None  # teacher: answers that name no label
    # chat / completion
    rouge_l: float | None = None
    chrf: float | None = None
    exact_match: float | None = None  # only when references are short answers
    # teacher-forced loss of the answers (raw text: of the held-out blocks)
    loss: float | None = None
    perplexity: float | None = None
    target_tokens: int | None = None
    bits_per_byte: float | None = None
    # preference pairs
    preference_accuracy: float | None = None
    preference_margin: float | None = None
    # cost: prompt size and single requests timed one at a time
    prompt_tokens_mean: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    tokens_per_s: float | None = None
    latency_requests: int | None = None
    eval_seconds: float | None = None
    shots: int | None = None  # the few-shot system: examples in its prompt
    parameters: int | None = None  # as served; None for a teacher of unknown size
    model: str | None = None  # the teacher's model id


class Difference(Result):
    """The fine-tuned model's paired difference from one baseline on the primary metric (significance.py)."""

    difference: float
    low: float  # the 95% interval of the difference
    high: float
    clear: bool  # the interval lies wholly on the better side of zero
    n: int  # examples (or held-out blocks) redrawn
    metric: str | None = None


class Judgement(Result):
    """Whether fine-tuning helped, and how clearly: against each baseline, the difference and its interval."""

    helped: bool | None  # beats every baseline on the primary metric; None: nothing to compare
    helped_clearly: bool | None  # ... and every difference's interval excludes zero
    significance: dict[str, Difference]


class Comparison(Result):
    """The closing comparison of a training run on its validation split (the manifest's ``metrics``)."""

    base: SystemMetrics | None = None
    few_shot: SystemMetrics | None = None
    parent: SystemMetrics | None = None
    fine_tuned: SystemMetrics | None = None
    helped: bool | None = None  # beats every baseline on the primary metric; None: nothing to compare
    helped_clearly: bool | None = None  # ... and every difference's interval excludes zero
    significance: dict[str, Difference] = {}


class EvalResult(Result):
    """What ``tunesmith eval`` measured (``--json``)."""

    model: str
    task: Task
    data: str
    n: int
    labels: list[str] | None
    precision: Precision
    primary: str  # the metric that decides "helped"
    higher_is_better: bool
    systems: list[str]
    results: dict[str, SystemMetrics]
    helped: bool | None
    helped_clearly: bool | None
    significance: dict[str, Difference]
    intervals: dict[str, list[float]]  # each system's 95% interval of the primary metric
    break_even: dict[str, Any] | None  # scores.break_even against the few-shot prompt, with the prices used
    examples: list[dict[str, Any]]  # per example: line, input, reference, each system's output and score
    blocks: list[dict[str, Any]] | None = None  # raw text: per held-out block, tokens and each system's loss
    diffs: list[dict[str, Any]]  # examples where fine-tuned and a baseline differ, regressions first
    diffs_total: int
    regressions_total: int
    created: str
    seconds: float


class CurvePoint(Result):
    n: int  # training examples
    model: str  # the registry version trained on them
    value: float  # the primary metric on the test file
    interval: list[float] | None
    train_seconds: float
    gains: dict[str, Difference] | None = None  # paired difference from each smaller n
    versus: dict[str, Difference] | None = None  # paired difference from each baseline ("base", "few_shot")


class CurveResult(Result):
    """What ``tunesmith curve`` measured (``--json``)."""

    task: Task
    metric: str
    higher_is_better: bool
    train: str
    test: str
    seed: int
    points: list[CurvePoint]
    baselines: dict[str, float]  # the base model's zero-shot and few-shot value, as reference lines
    shots: int
    created: str
    seconds: float
