"""Terminal rendering of reports and tables (rich), kept out of the logic modules."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunesmith.data.check import DataReport

PREVIEW_TOKENS = 160


def print_data_report(report: DataReport, console: Console) -> None:
    train = report.train
    head = f"[bold]{train.path}[/]: {report.task}, {len(train.examples)} example(s)"
    if report.val is not None:
        head += f"; validation {report.val.path}: {len(report.val.examples)}"
    console.print(head)
    if report.labels:
        counts = {label: 0 for label in report.labels}
        for example in train.examples:
            if example.label in counts:
                counts[example.label] += 1
        console.print("labels: " + ", ".join(f"{label} ({n})" for label, n in counts.items()))
    for issue in report.errors:
        console.print(Text(str(issue), style="red"))
    for issue in report.warnings:
        console.print(Text(str(issue), style="yellow"))
    if report.stats:
        table = Table(title="tokens per example (rendered with the chat template)", show_header=True)
        for column in ("min", "median", "p95", "max", "total", "answer tokens"):
            table.add_column(column, justify="right")
        s = report.stats
        table.add_row(
            *(
                str(v)
                for v in (
                    s["length_min"],
                    s["length_median"],
                    s["length_p95"],
                    s["length_max"],
                    s["tokens_total"],
                    s["target_tokens_total"],
                )
            )
        )
        console.print(table)
        console.print(f"max_length: {report.max_length}")
    if report.preview:
        console.print("first example as the model sees it ([green]green[/] = trained on, grey = context only):")
        text = Text()
        for token, loss in report.preview[:PREVIEW_TOKENS]:
            text.append(token, style="bold green" if loss else "grey50")
        if len(report.preview) > PREVIEW_TOKENS:
            text.append(f" … (+{len(report.preview) - PREVIEW_TOKENS} tokens)", style="italic")
        console.print(text)
    if report.estimate_seconds is not None:
        console.print(
            f"estimated training time on this machine: ~{_duration(report.estimate_seconds)} "
            f"per epoch ({'DPO' if report.task == 'preference' else 'LoRA'})"
        )
    verdict = "[green]usable[/]" if report.ok else f"[red]{len(report.errors)} error(s)[/]"
    console.print(f"{verdict}, {len(report.warnings)} warning(s)")


def models_table(rows: list[dict]) -> Table:
    table = Table()
    for column in ("name", "version", "base", "task", "method", "created", "result"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            str(row["version"]),
            str(row["base"]),
            str(row["task"]),
            str(row["method"]),
            str(row["created"]),
            _result(row["metrics"]),
        )
    return table


def _result(metrics: dict) -> str:
    base, tuned = metrics.get("base") or {}, metrics.get("fine_tuned") or {}
    for key in ("accuracy", "rouge_l", "perplexity", "loss"):
        if key in base and key in tuned:
            if key in ("accuracy", "rouge_l"):
                return f"{key} {base[key]:.0%} → {tuned[key]:.0%}"
            return f"{key} {base[key]:.3g} → {tuned[key]:.3g}"
    return "-"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
