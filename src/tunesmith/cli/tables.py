"""Terminal rendering of reports and tables (rich), kept out of the logic modules."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunesmith.data.check import DataReport
from tunesmith.evaluation.compare import format_gain, format_value, format_versus
from tunesmith.evaluation.results import CurveResult

PREVIEW_TOKENS = 160
MAX_UNWRAPPED = 24  # a base name longer than this is a folder path: folded, not kept on one line


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
    if report.estimate is not None:
        estimate = report.estimate
        method = {"lora": "LoRA", "dpo": "DPO", "full": "full fine-tuning"}.get(estimate.method, estimate.method)
        passes = f"{estimate.epochs} epoch{'s' if estimate.epochs > 1 else ''} at batch {estimate.batch_size}"
        console.print(
            f"estimated training time ({method}, {estimate.precision}, {passes}, the defaults for this data):"
        )
        console.print(f"  this machine: {_about(estimate.seconds, estimate.low, estimate.high)}")
        if estimate.gpu is not None:
            gpu = estimate.gpu
            cost = "under $0.01" if gpu.dollars < 0.005 else f"about ${gpu.dollars:.2f}"
            console.print(
                f"  a rented {gpu.gpu}: {_about(gpu.seconds, gpu.low, gpu.high)}, {cost} at "
                f"${gpu.price_per_hour:.2f}/h (price assumed as of {gpu.price_date}; the machine's start-up "
                "and setup are billed too)"
            )
    verdict = "[green]usable[/]" if report.ok else f"[red]{len(report.errors)} error(s)[/]"
    console.print(f"{verdict}, {len(report.warnings)} warning(s)")


def models_table(rows: list[dict]) -> Table:
    """The registry's versions (``tunesmith models list``). Model refs and base names are what a user copies:
    they are never cut or wrapped (a long folder path as base folds); the other columns give way."""
    table = _listing()
    table.add_column("model", no_wrap=True)  # NAME:VERSION, as `eval`, `chat` and the API take it
    table.add_column("base", **_name_column([str(row["base"]) for row in rows]))
    table.add_column("task (method)", overflow="fold")
    table.add_column("created", overflow="fold")
    table.add_column("result", overflow="fold")
    for row in rows:
        table.add_row(
            escape(f"{row['name']}:{row['version']}"),
            escape(str(row["base"])),
            f"{row['task']} ({row['method']})",
            _created(row["created"]),
            _result(row["metrics"]),
        )
    return table


def bases_table(rows: list[dict]) -> Table:
    """The known base models (``tunesmith base list``): names whole, the path and description give way."""
    table = _listing()
    table.add_column("name", no_wrap=True)
    table.add_column("available", overflow="fold")
    table.add_column("path", overflow="fold")
    table.add_column("description")
    for row in rows:
        available = "yes" if row["available"] else f"no: {row['install']}"
        path = row["path"] if row["converted"] else "(converted on first use)"
        table.add_row(escape(row["name"]), escape(available), escape(path), escape(row["description"]))
    return table


def _listing() -> Table:
    """A table of one item a row: no borders between the columns, so that their text has the room."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def _name_column(values: list[str]) -> dict:
    """A column of names that is never cut: on one line while they are short, else folded (a folder path)."""
    return {"no_wrap": True} if max(map(len, values), default=0) <= MAX_UNWRAPPED else {"overflow": "fold"}


def _created(created: str | None) -> str:
    """``2025-06-01T12:34:56+00:00`` as ``2025-06-01 12:34``: the date, then a time that may wrap below it."""
    return created[:16].replace("T", " ") if created else "-"


def _result(metrics: dict) -> str:
    base, tuned = metrics.get("base") or {}, metrics.get("fine_tuned") or {}
    for key in ("accuracy", "preference_accuracy", "rouge_l", "perplexity", "loss"):
        if base.get(key) is not None and tuned.get(key) is not None:
            if key in ("accuracy", "preference_accuracy", "rouge_l"):
                return f"{key} {base[key]:.0%} → {tuned[key]:.0%}"
            return f"{key} {base[key]:.3g} → {tuned[key]:.3g}"
    return "-"


def _about(seconds: float, low: float, high: float) -> str:
    """``about 4 min (likely 3–6 min)``: the estimate and the range it may fall in."""
    if high < 1:
        return "under a second"
    low_text, high_text = _duration(low), _duration(high)
    if low_text.split()[-1] == high_text.split()[-1]:  # one unit: "3–6 min"
        low_text = low_text.split()[0]
    return f"about {_duration(seconds)} (likely {low_text}–{high_text})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def curve_table(curve: CurveResult) -> Table:
    metric = curve.metric
    table = Table(
        title=f"learning curve: {metric} on {curve.test}",
        caption="n: training examples. gain on "
        "previous: the difference from the previous n on the same test examples (95% interval); "
        "vs few-shot: the difference from the base model's few-shot prompt, paired the same way",
    )
    table.add_column("n", justify="right")
    table.add_column(metric, justify="right", no_wrap=True)
    table.add_column("95% interval", justify="right", no_wrap=True)
    # The paired difference from the previous size, with its 95% interval: is the step up real?
    table.add_column("gain on previous", justify="right", no_wrap=True)
    table.add_column(f"vs {curve.shots}-shot", justify="right", no_wrap=True)
    table.add_column("model", overflow="fold")  # a name to copy: folded, never cut short
    table.add_column("train time", justify="right", no_wrap=True)
    for i, point in enumerate(curve.points):
        low_high = point.interval
        span = f"{format_value(metric, low_high[0])}–{format_value(metric, low_high[1])}" if low_high else "–"
        previous = curve.points[i - 1].to_json() if i else None
        table.add_row(
            str(point.n),
            format_value(metric, point.value),
            span,
            format_gain(point.to_json(), previous),
            format_versus(point.to_json(), "few_shot"),
            point.model,
            f"{point.train_seconds:.0f} s",
        )
    for system, value in curve.baselines.items():
        label = "base zero-shot" if system == "base" else f"base {curve.shots}-shot"
        table.add_row("–", format_value(metric, value), "", "", "", f"[dim]{label} (reference)[/]", "")
    return table


GREEDY_TOKENS = 32  # export.parity.GREEDY_TOKENS (not imported: that module loads torch)


def parity_table(report) -> Table:
    """The parity check (export.parity.ParityReport): one line a probe, and the verdict in the caption."""
    table = Table(
        title=f"parity: the export loaded with {report.loaded_with} against the model (fp32)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("probe", no_wrap=True, overflow="ellipsis", max_width=22)
    for column, width in (("tokens", 6), ("template", 8), ("ids", 7), ("Δlogit", 7), ("top-1", 6), ("greedy", 7)):
        table.add_column(column, justify="right", no_wrap=True, min_width=width)  # never squeezed: fits 80 columns
    mark = {True: "same", False: "[red]differs[/]"}
    for probe in report.probes:
        table.add_row(
            escape(" ".join(probe.prompt.split())),
            str(probe.tokens),
            mark[probe.template_identical],
            mark[probe.tokens_identical],
            f"{probe.max_logit_diff:.2g}",
            f"{probe.top1_agreement:.1%}",
            mark[probe.greedy_identical],
        )
    tolerance = report.tolerance
    rule = f"{report.precision}: Δlogit ≤ {tolerance.max_logit_diff:g}, top-1 ≥ {tolerance.min_top1:.0%}"
    rule += f", greedy ({GREEDY_TOKENS} tokens) the same" if tolerance.greedy_must_match else ""
    verdict = "[green]passed[/]" if report.passed else "[red]failed: " + escape("; ".join(report.problems)) + "[/]"
    table.caption = f"{verdict} · {rule}"
    return table


def export_usage(result) -> list[str]:
    """How to run an export (export.run.ExportResult) with the tools its format is for."""
    out = result.out
    if result.format == "hf":
        return [
            f"transformers: AutoModelForCausalLM.from_pretrained({out!r}), AutoTokenizer.from_pretrained({out!r})",
            f"vLLM:         vllm serve {out}",
        ]
    if result.format == "peft":
        base = result.base.path
        name = result.ref.split(":")[0]
        return [
            f"PEFT: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {out!r})",
            f"vLLM: vllm serve {base} --enable-lora --lora-modules {name}={out} "
            f"--max-lora-rank {result.vllm_max_lora_rank}",
        ]
    gguf = next(file for file in result.files if file.endswith(".gguf"))
    lines = [f"llama.cpp: llama-cli -m {out}/{gguf}   or   llama-server -m {out}/{gguf}"]
    if "Modelfile" in result.files:
        name = result.ref.split(":")[0].lower()
        lines.append(f"Ollama:    ollama create {name} -f {out}/Modelfile && ollama run {name}")
    return lines
