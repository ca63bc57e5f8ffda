"""Side by side: the comparison table, whether fine-tuning helped, and per-example differences."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from tunesmith.core.config import Task
from tunesmith.evaluation.results import Difference, EvalResult, Judgement
from tunesmith.evaluation.significance import Sample, bootstrap
from tunesmith.evaluation.systems import display_name

if TYPE_CHECKING:  # measuring needs torch; formatting a table or a verdict (the CLI's, `models list`'s) does not
    from tunesmith.evaluation.measure import Measured

# Which metric decides "did it help", and whether higher is better.
PRIMARY = {
    "classify": ("accuracy", True),
    "chat": ("rouge_l", True),
    "completion": ("rouge_l", True),
    "text": ("perplexity", False),
    "preference": ("preference_accuracy", True),
}
HIGHER_IS_BETTER = {
    "accuracy",
    "macro_f1",
    "rouge_l",
    "chrf",
    "exact_match",
    "tokens_per_s",
    "preference_accuracy",
    "preference_margin",
}
TABLE_METRICS = (
    "accuracy",
    "macro_f1",
    "ece",
    "preference_accuracy",
    "preference_margin",
    "rouge_l",
    "chrf",
    "exact_match",
    "loss",
    "perplexity",
    "bits_per_byte",
    "prompt_tokens_mean",
    "latency_ms_p50",
    "latency_ms_p90",
    "tokens_per_s",
    "parameters",
)
PERCENT = {"accuracy", "macro_f1", "rouge_l", "exact_match", "preference_accuracy"}
# Systems shown for reference (distillation's teacher), not baselines the fine-tune has to beat.
REFERENCES = {"teacher"}


def comparison_table(task: str, results: dict[str, dict], title: str) -> Table:
    """Metrics as rows, systems as columns; the best value of each row in bold, the primary starred."""
    primary = PRIMARY[task][0]
    table = Table(title=title)
    table.add_column("metric")
    for name, metrics in results.items():
        table.add_column(display_name(name, metrics.get("shots", 0)), justify="right")
    for metric in TABLE_METRICS:
        values = [metrics.get(metric) for metrics in results.values()]
        present = [v for v in values if v is not None]
        if not present:
            continue
        best = max(present) if metric in HIGHER_IS_BETTER else min(present)
        cells = [
            "–"
            if v is None
            else (f"[bold]{format_value(metric, v)}[/]" if v == best and len(present) > 1 else format_value(metric, v))
            for v in values
        ]
        table.add_row(f"{metric} *" if metric == primary else metric, *cells)
    return table


def format_value(metric: str, value: float) -> str:
    if metric in PERCENT:
        return f"{value * 100:.1f}%"
    if metric in ("chrf", "prompt_tokens_mean", "tokens_per_s"):
        return f"{value:.1f}"
    if metric.startswith("latency"):
        return f"{value:.0f} ms"
    if metric == "perplexity":
        return f"{value:.2f}"
    if metric == "parameters":
        return next(
            f"{value / scale:.3g}{unit}"
            for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, ""))
            if value >= scale or scale == 1
        )
    return f"{value:.3f}"


def better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def helped(task: str, results: dict[str, dict]) -> bool | None:
    """Whether the fine-tuned model beats every baseline on the primary metric (None: nothing to compare)."""
    primary = PRIMARY[task][0]
    tuned = results.get("fine_tuned", {}).get(primary)
    baselines = [
        m[primary] for name, m in results.items() if name != "fine_tuned" and name not in REFERENCES and primary in m
    ]
    if tuned is None or not baselines:
        return None
    return all(better(primary, tuned, value) for value in baselines)


def helped_clearly(differences: dict, helped_: bool | None) -> bool | None:
    """True when fine-tuning beat every baseline and every difference is clear (significance.bootstrap);
    None without a verdict or without per-example scores."""
    if helped_ is None or not differences:
        return None
    return bool(helped_) and all(d["clear"] for d in differences.values())


def judge(task: Task, measured: Mapping[str, Measured], seed: int = 0) -> tuple[Judgement, dict[str, list[float]]]:
    """Whether fine-tuning helped and how clearly, and each system's interval, for the ``measured`` systems."""
    helped_ = helped(task, {name: m.metrics for name, m in measured.items()})
    tested = significance(task, measured, seed)
    judgement = Judgement(
        helped=helped_,
        helped_clearly=helped_clearly(tested["differences"], helped_),
        significance={name: Difference(**d) for name, d in tested["differences"].items()},
    )
    return judgement, tested["intervals"]


def significance(task: Task, measured: Mapping[str, Measured], seed: int = 0) -> dict:
    """Paired bootstrap intervals of the primary metric for every system with per-example scores,
    and of the fine-tuned model's difference from each baseline (evaluation/significance.py)."""
    primary, higher_is_better = PRIMARY[task]
    samples = {name: Sample(m.scores, m.weights) for name, m in measured.items() if m.scores}
    baselines = [name for name in samples if name != "fine_tuned" and name not in REFERENCES]
    tested = bootstrap(
        samples, baselines, higher_is_better=higher_is_better, exponential=primary == "perplexity", seed=seed
    )
    for difference in tested["differences"].values():
        difference["metric"] = primary
    return tested


def verdict(task: str, results: dict[str, dict], helped_: bool | None, differences: dict) -> list[str]:
    """Lines (rich markup) saying whether fine-tuning helped: the headline, then one line per baseline
    with the difference, its 95% interval and whether the test set can tell them apart."""
    if helped_ is None:
        return []
    primary = PRIMARY[task][0]
    shots = results.get("few_shot", {}).get("shots", 0)
    if not helped_:
        lines = [f"[red]fine-tuning did not beat every baseline on {primary}[/]"]
    else:
        note = clarity(differences, shots)
        style = "yellow" if note.startswith("but") else "green"
        lines = [f"[{style}]fine-tuning helped{escape(', ' + note) if note else ''}[/]"]
    for name, d in differences.items():
        lines.append(
            escape(
                f"  {primary} against {display_name(name, shots)}: "
                f"{format_difference(primary, d['difference'])} (95% interval "
                f"{format_interval(primary, d)}): {reading(d)}"
            )
        )
    return lines


def eval_verdict(figures: EvalResult | dict) -> list[str]:
    """What an evaluation concludes, as lines (rich markup) to print under its table: whether fine-tuning
    helped and how clearly (``verdict``), when training pays for itself against the few-shot prompt
    (break-even), and how many examples changed. ``figures``: an EvalResult or its JSON."""
    figures = figures.to_json() if isinstance(figures, EvalResult) else figures  # read by key once, not per field
    lines = verdict(figures["task"], figures["results"], figures["helped"], figures.get("significance") or {})
    even = figures.get("break_even")
    if even and even["requests"] is None:
        lines.append("break-even: never; the fine-tuned model is not cheaper per request than the few-shot prompt")
    elif even:
        lines.append(
            escape(
                f"break-even: training ({even['training_cpu_seconds']:.0f} CPU-s, "
                f"${even['training_cost_usd']:.4f}) is paid back by the shorter prompt after "
                f"{even['requests']:,} requests ({even['saved_cpu_seconds_per_request']:.3f} CPU-s saved each)"
            )
        )
    if figures.get("diffs_total"):
        lines.append(
            f"{figures['diffs_total']} differences from a baseline, {figures['regressions_total']} of them "
            "regressions (see --report or --json)"
        )
    return lines


def clarity(differences: dict, shots: int = 0) -> str:
    """How clearly the fine-tuned model is ahead: beyond the noise, or not against which baselines."""
    if not differences:
        return ""
    unclear = [display_name(name, shots) for name, d in differences.items() if not d["clear"]]
    if not unclear:
        return "beyond this test set's noise (every 95% interval of the difference excludes zero)"
    return (
        f"but not clearly: against {' and '.join(unclear)} the difference is within the noise of "
        f"{sample_size(differences)} (more held-out data would tell)"
    )


def sample_size(differences: dict) -> str:
    """``32 examples``, or for raw text ``24 held-out blocks`` (the bootstrap's unit)."""
    first = next(iter(differences.values()))
    return f"{first['n']} {'held-out blocks' if first.get('metric') == 'perplexity' else 'examples'}"


def reading(difference: dict) -> str:
    """What a difference's interval says: clearly better, within the noise, or clearly worse."""
    if difference["clear"]:
        return "clearly better"
    return "within the noise" if difference["low"] <= 0 <= difference["high"] else "clearly worse"


def format_interval(metric: str, difference: dict) -> str:
    """A difference's interval: ``+3.0 to +18.0`` (rates in points)."""
    return (
        f"{format_difference(metric, difference['low'], unit=False)} to "
        f"{format_difference(metric, difference['high'], unit=False)}"
    )


def format_gain(point: dict, previous: dict | None) -> str:
    """A learning-curve point's paired difference from the previous size: ``+4.0 (-1.0 to +9.0)``; the
    points as the curve's JSON holds them (the HTML report renders a --json file too)."""
    gain = (point.get("gains") or {}).get(str(previous["n"])) if previous else None
    return format_paired(gain)


def format_versus(point: dict, baseline: str) -> str:
    """A learning-curve point's paired difference from a baseline ("base", "few_shot"): ``+4.0 (-1.0 to +9.0)``."""
    return format_paired((point.get("versus") or {}).get(baseline))


def format_paired(difference: dict | None) -> str:
    if not difference:
        return "–"
    metric = difference["metric"]
    return f"{format_difference(metric, difference['difference'], unit=False)} ({format_interval(metric, difference)})"


def format_difference(metric: str, value: float, unit: bool = True) -> str:
    """A signed difference of ``metric``: rates in percentage points."""
    if metric in PERCENT:
        return f"{value * 100:+.1f}" + (" points" if unit else "")
    return f"{value:+.2f}" if metric == "perplexity" else f"{value:+.3f}"


def per_example(
    inputs: list[str], references: list[str], lines: list[int], measured: Mapping[str, Measured]
) -> list[dict]:
    """One record per example: each system's output and per-example score."""
    return [
        {
            "line": lines[i],
            "input": inputs[i],
            "reference": references[i],
            "outputs": {name: m.outputs[i] for name, m in measured.items() if m.outputs},
            "scores": {name: m.scores[i] for name, m in measured.items() if m.scores},
        }
        for i in range(len(inputs))
    ]


def blocks(measured: Mapping[str, Measured]) -> list[dict]:
    """Raw text's counterpart of ``per_example``: per held-out block, its tokens and each system's mean loss."""
    first = next((m for m in measured.values() if m.scores), None)
    if first is None or first.weights is None:  # raw text's scores always come with their tokens
        return []
    tokens = first.weights
    return [
        {"tokens": tokens[i], "losses": {name: m.scores[i] for name, m in measured.items() if m.scores}}
        for i in range(len(first.scores))
    ]


def sample(figures: EvalResult, system: str) -> Sample | None:
    """``system``'s per-example scores from an eval's figures (``examples``, or ``blocks`` for raw text),
    as the bootstrap takes them; None when the figures have none."""
    if figures.task == "text":
        kept = [b for b in figures.blocks or [] if system in b["losses"]]
        return Sample([b["losses"][system] for b in kept], [b["tokens"] for b in kept]) if kept else None
    scores: list[float] = [e["scores"][system] for e in figures.examples if system in e["scores"]]
    return Sample(scores) if scores else None


def diffs(examples: list[dict], measured: Mapping[str, Measured], higher_is_better: bool = True) -> list[dict]:
    """Examples where the fine-tuned model and a baseline score differently: regressions first, the
    worst (largest drop, then most confident wrong answer) at the top, then improvements."""
    if "fine_tuned" not in measured or not measured["fine_tuned"].scores:
        return []
    confidence = measured["fine_tuned"].confidences
    found = []
    for baseline in (name for name in measured if name != "fine_tuned"):
        for index, example in enumerate(examples):
            scores = example["scores"]
            if baseline not in scores:
                continue
            delta = scores["fine_tuned"] - scores[baseline]
            if not higher_is_better:
                delta = -delta
            if abs(delta) < 1e-9:
                continue
            item = {
                **example,
                "against": baseline,
                "delta": round(delta, 4),
                "kind": "regression" if delta < 0 else "improvement",
            }
            if confidence:  # classify: the fine-tuned model's probability of its own answer
                item["confidence"] = round(confidence[index], 4)
            found.append(item)
    found.sort(
        key=lambda d: (
            d["kind"] != "regression",
            d["delta"] if d["kind"] == "regression" else -d["delta"],
            -d.get("confidence", 0.0),
        )
    )
    return found
