"""Base model vs fine-tuned model on the same held-out examples."""

from __future__ import annotations

import time

from rich.table import Table

from tunesmith.data.batching import Row
from tunesmith.data.formats import Example
from tunesmith.evaluate.metrics import answer_loss, classification_metrics, label_log_likelihoods

# Which metric decides "did it help", and whether higher is better.
PRIMARY = {"classify": ("accuracy", True), "chat": ("loss", False),
           "completion": ("loss", False), "text": ("perplexity", False)}


def evaluate_split(model, tokenizer, task: str, examples: list[Example], rows: list[Row],
                   labels: list[str] | None = None, system_prompt: str | None = None) -> dict:
    """The held-out metrics of one model: answer loss/perplexity always, accuracy for labels."""
    start = time.perf_counter()
    if task == "classify" and examples:
        # The gold label's row is one of the scored rows, so its loss comes for free.
        scores, counts = label_log_likelihoods(model, tokenizer, examples, labels, system_prompt)
        metrics = classification_metrics(scores, counts, examples, labels)
    else:
        metrics = answer_loss(model, rows, tokenizer.pad_token_id)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def comparison_table(task: str, base: dict, tuned: dict, title: str) -> Table:
    primary = PRIMARY[task][0]
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("fine-tuned", justify="right")
    table.add_column("change", justify="right")
    for metric in ("accuracy", "loss", "perplexity"):
        if metric not in base or metric not in tuned:
            continue
        before, after = base[metric], tuned[metric]
        better = (after > before) if (metric == "accuracy") else (after < before)
        style = "green" if better else "red"
        label = f"{metric} *" if metric == primary else metric
        table.add_row(label, _fmt(metric, before), _fmt(metric, after),
                      f"[{style}]{_fmt(metric, after - before, signed=True)}[/]")
    return table


def helped(task: str, base: dict, tuned: dict) -> bool | None:
    primary, higher_better = PRIMARY[task]
    if primary not in base or primary not in tuned:
        return None
    return tuned[primary] > base[primary] if higher_better else tuned[primary] < base[primary]


def _fmt(metric: str, value: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if metric == "accuracy":
        return f"{value * 100:{sign}.1f} pts" if signed else f"{value * 100:.1f}%"
    return f"{value:{sign}.3f}"
