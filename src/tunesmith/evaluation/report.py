"""One self-contained HTML page for ``tunesmith eval`` and for a learning curve: inline CSS, charts as
base64 PNG, so it opens offline and can be mailed as is. A section whose data is missing is left out,
never drawn empty; every string that came from the user goes through ``html.escape``."""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from pathlib import Path

from tunesmith.core.durable import atomic_write_text
from tunesmith.evaluation.compare import (
    HIGHER_IS_BETTER,
    PERCENT,
    REFERENCES,
    clarity,
    format_difference,
    format_gain,
    format_interval,
    format_versus,
    reading,
    sample_size,
)
from tunesmith.evaluation.results import CurveResult, EvalResult
from tunesmith.evaluation.significance import RESAMPLES
from tunesmith.evaluation.systems import DISPLAY, display_name

# key: (row label, decimals). The order is the comparison table's row order. Which metrics are rates
# and which direction is better come from compare.py, as in the terminal table.
METRICS = {
    "accuracy": ("accuracy", 1),
    "macro_f1": ("macro F1", 1),
    "ece": ("ECE", 3),
    "preference_accuracy": ("preference accuracy", 1),
    "preference_margin": ("preference margin (nats)", 2),
    "exact_match": ("exact match", 1),
    "rouge_l": ("ROUGE-L", 1),
    "chrf": ("chrF", 1),
    "loss": ("loss", 3),
    "perplexity": ("perplexity", 2),
    "bits_per_byte": ("bits per byte", 3),
    "prompt_tokens_mean": ("prompt tokens (mean)", 1),
    "latency_ms_p50": ("latency p50 (ms)", 0),
    "latency_ms_p90": ("latency p90 (ms)", 0),
    "tokens_per_s": ("tokens / s", 1),
    "parameters": ("parameters", 0),
    "eval_seconds": ("eval time (s)", 1),
}
# Metrics on a 0..1 scale: "one point" of them is one percentage point, not 1% relative.
RATES = PERCENT
COLORS = defaultdict(lambda: "#a78bfa", base="#9ca3af", few_shot="#60a5fa", fine_tuned="#f59e0b")
TRUNCATE, MAX_DIFFS = 300, 50
CSS = """body { font: 15px/1.5 system-ui, sans-serif; color: #1f2937; max-width: 1100px; margin: 2em auto; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #e5e7eb; } .meta { color: #6b7280; } img { max-width: 100%; }
.verdict { font-size: 1.15em; font-weight: 600; } table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #e5e7eb; padding: .35em .7em; text-align: left; vertical-align: top; font-size: .92em; }
th { background: #f3f4f6; } td { white-space: pre-wrap; } tr:nth-child(even) { background: #fafafa; }
td.num { text-align: right; white-space: nowrap; }
.input { display: inline-block; min-width: 18em; overflow-wrap: anywhere; }"""


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def fmt(metric: str, value) -> str:
    """A metric value as the report shows it: rates as percentages, the rest at a fixed precision."""
    decimals = METRICS.get(metric, ("", 3))[1]
    return "—" if not _num(value) else f"{value * 100:.1f}%" if metric in RATES else f"{value:,.{decimals}f}"


def system_name(system: str, shots=None) -> str:
    """The display name of an evaluated system (as in the terminal table)."""
    return display_name(system, shots if shots is not None else "few") if system in DISPLAY else str(system)


def _axis(metric: str) -> tuple[int, str]:
    """The factor and axis label of a metric in charts: rates in percent, like the tables."""
    return (100, METRICS[metric][0] + " (%)") if metric in RATES else (1, METRICS.get(metric, (metric,))[0])


def _subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg")  # needs no display, so reports render on headless training boxes and in CI
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _img(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every figure until closed, and one process may write many reports
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list[str]], numeric=range(1, 99)) -> str:
    """A table from cells that are already HTML; the ``numeric`` columns align right."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, source: dict, fields: list[str], body: list[str]) -> str:
    """The document: a title, the ``fields`` of ``source`` (and its run time) as a line, the body."""
    took = f"{source['seconds']:.1f} s" if _num(source.get("seconds")) else None
    meta = [(k, source.get(k)) for k in fields] + [("took", took)]
    items = " · ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in meta if v is not None and v != "")
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{items}</p>' if items else "", *body]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n"
    )


def _comparison(figures: dict, results: dict, names: dict) -> str:
    """The verdict, the metrics table and the primary metric's bar chart."""
    primary: str = figures.get("primary") or ""  # a partial --json file may lack it: no chart then
    higher_primary, out, rows = figures.get("higher_is_better", True), [], []
    baselines = [
        results[s][primary]
        for s in names
        if s != "fine_tuned" and s not in REFERENCES and _num(results[s].get(primary))
    ]
    if figures.get("helped") is not None:
        text = "Fine-tuning helped" if figures["helped"] else "Fine-tuning did not help"
        if _num(tuned := results.get("fine_tuned", {}).get(primary)) and baselines:
            best = (max if higher_primary else min)(baselines)
            text += f": {METRICS.get(primary, (primary,))[0]} {fmt(primary, tuned)} vs {fmt(primary, best)}"
        out.append(f'<p class="verdict">{_e(text)}</p>')
        out.append(_significance(figures, names))
    for key, (label, _) in METRICS.items():
        values = [results[s].get(key) for s in names]
        present = [v for v in values if _num(v)]
        higher = higher_primary if key == primary else key in HIGHER_IS_BETTER
        best = (max if higher else min)(present) if len(set(present)) > 1 else None  # bold needs a loser
        name = f"<strong>{_e(label)}</strong> ★ primary" if key == primary else _e(label)
        if present:
            rows.append([name, *(f"<b>{fmt(key, v)}</b>" if _num(v) and v == best else fmt(key, v) for v in values)])
    if rows:
        out.append("<h2>Comparison</h2>" + _table(["metric", *map(_e, names.values())], rows))
    shown = [s for s in names if _num(results[s].get(primary))]
    if shown:
        (scale, ylabel), (fig, ax) = _axis(primary), _subplots(figsize=(1.7 * len(shown) + 2, 3.2))
        values, intervals = [results[s][primary] for s in shown], figures.get("intervals") or {}
        bars = ax.bar(
            [names[s] for s in shown],
            [v * scale for v in values],
            color=[COLORS[s] for s in shown],
            yerr=_error_bars(values, [intervals.get(s) for s in shown], scale),
            capsize=6,
            ecolor="#374151",
        )
        # inside the bars: above them the error bars would cross the numbers
        ax.bar_label(bars, labels=[fmt(primary, results[s][primary]) for s in shown], label_type="center")
        ax.set(ylabel=ylabel, ymargin=0.15)
        out.append(_img(fig, f"{primary} per system"))
    return "".join(out)


def _error_bars(values: list[float], intervals: list, scale: float) -> list[list[float]]:
    """Matplotlib's ``yerr`` (distances below and above) from 95% intervals; none where one is missing."""
    spans = [interval or [value, value] for value, interval in zip(values, intervals)]
    return [
        [max(value - low, 0) * scale for value, (low, _) in zip(values, spans)],
        [max(high - value, 0) * scale for value, (_, high) in zip(values, spans)],
    ]


def _significance(figures: dict, names: dict) -> str:
    """Each baseline's difference from the fine-tuned model with its 95% interval (significance.py)."""
    tested = figures.get("significance") or {}
    if not tested:
        return ""
    primary: str = figures.get("primary") or ""
    shots = ((figures.get("results") or {}).get("few_shot") or {}).get("shots", 0)
    rows = [
        [
            _e(names.get(name, name)),
            _e(format_difference(primary, d["difference"])),
            _e(format_interval(primary, d)),
            _e(reading(d)),
        ]
        for name, d in tested.items()
    ]
    note = clarity(tested, shots) if figures.get("helped") else ""
    return (
        (f"<p>{_e(note[0].upper() + note[1:])}.</p>" if note else "")
        + _table(
            [
                "fine-tuned against",
                f"difference in {_e(METRICS.get(primary, (primary,))[0])}",
                "95% interval",
                "reading",
            ],
            rows,
            {1, 2},
        )
        + f'<p class="meta">Paired bootstrap over {_e(sample_size(tested))} '
        f"({RESAMPLES} redraws): an interval that excludes zero means this test set can tell the two "
        "apart. Error bars in the chart below are each system's own 95% interval.</p>"
    )


def _task_figures(figures: dict, results: dict, names: dict) -> str:
    """Confusion matrices and a per-label table for classify; per-example score spread otherwise."""
    out, labels = [], list(figures.get("labels") or [])
    if figures.get("task") != "classify":
        series = {
            s: [e["scores"][s] for e in figures.get("examples") or [] if _num((e.get("scores") or {}).get(s))]
            for s in names
        }
        series = {s: v for s, v in series.items() if v}
        if series:
            text = figures.get("task") == "text"
            fig, ax = _subplots(figsize=(1.8 * len(series) + 3, 3.4))
            ax.boxplot(list(series.values()))
            ax.set_xticks(range(1, len(series) + 1), [names[s] for s in series])
            if text and min(min(v) for v in series.values()) > 0:
                ax.set_yscale("log")  # perplexities are heavy-tailed; a log axis keeps the bulk readable
            ax.set_ylabel("per-example perplexity" if text else "per-example ROUGE-L")
            out.append("<h2>Per-example scores</h2>" + _img(fig, "per-example scores per system"))
        return "".join(out)
    mats = [(s, results[s]["confusion"]) for s in names if results[s].get("confusion")]
    if mats:
        fig, axes = _subplots(1, len(mats), figsize=(3.8 * len(mats) + 0.5, 3.8), squeeze=False)
        for ax, (s, mat) in zip(axes[0], mats):
            k = len(mat)
            ticks = labels if len(labels) == k else [str(i) for i in range(k)]
            top = max((max(row) for row in mat if row), default=0) or 1
            ax.imshow(mat, cmap="Blues", vmin=0, vmax=top)
            for i, row in enumerate(mat):
                for j, count in enumerate(row):
                    ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
            ax.set_xticks(range(k), ticks, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
            ax.set_yticks(range(k), ticks)
            ax.set(xlabel="predicted", ylabel="gold", title=names[s])
        fig.tight_layout()
        out.append("<h2>Confusion matrices</h2>" + _img(fig, "confusion matrix per system"))
    per, rows, pr = [s for s in names if results[s].get("per_label")], [], ("precision", "recall")
    for lab in labels or list(dict.fromkeys(lab for s in per for lab in results[s]["per_label"])):
        stats = [results[s]["per_label"].get(lab) or {} for s in per]
        support = next((st["support"] for st in stats if _num(st.get("support"))), "—")
        rows.append([_e(lab), _e(support), *(fmt("accuracy", st.get(m)) for st in stats for m in pr)])
    if per:
        header = ["label", "support", *(f"{_e(names[s])} {m}" for s in per for m in pr)]
        out.append("<h2>Per label</h2>" + _table(header, rows))
    return "".join(out)


def _cost(figures: dict, results: dict, names: dict) -> str:
    """Prompt tokens and latency per system, and when training pays for itself."""
    keys = [
        k
        for k in ("prompt_tokens_mean", "latency_ms_p50", "latency_ms_p90")
        if any(_num(results[s].get(k)) for s in names)
    ]
    out, be = [], figures.get("break_even")
    if keys:  # one small panel per quantity: tokens and milliseconds do not share an axis
        fig, axes = _subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            shown = [s for s in names if _num(results[s].get(key))]
            ax.bar([names[s] for s in shown], [results[s][key] for s in shown], color=[COLORS[s] for s in shown])
            ax.set_title(METRICS[key][0])
            ax.tick_params(axis="x", labelrotation=20)
        fig.tight_layout()
        out.append(_img(fig, "prompt tokens and latency per system"))
    if be:
        vs = names.get(be.get("vs")) or system_name(be.get("vs"))
        text = f"Training cost {be.get('training_cpu_seconds') or 0:,.1f} CPU-seconds"
        if _num(be.get("training_cost_usd")):
            text += f" (≈ ${be['training_cost_usd']:,.4g})"
        if be.get("requests") is None:
            text += f". Versus {vs}, training never pays back: the fine-tuned model is not cheaper per request."
        else:
            text += (
                f". Versus {vs}, each request saves {be.get('saved_cpu_seconds_per_request') or 0:.4g} "
                f"CPU-seconds, so training pays back after {be['requests']:,} requests."
            )
            if _num(be.get("saved_usd_per_1k_requests")):
                text += f" That is ${be['saved_usd_per_1k_requests']:,.4g} saved per 1,000 requests."
        prices = ", ".join(f"{_e(k)} = {_e(v)}" for k, v in (be.get("prices") or {}).items())
        out.append(f"<p>{_e(text)}</p>" + (f'<p class="meta">Prices used: {prices}</p>' if prices else ""))
    return "<h2>Cost</h2>" + "".join(out) if out else ""


def _diffs(figures: dict, names: dict) -> str:
    """The examples that changed most between systems, worst regression first."""

    def cell(text, css: str = "") -> str:
        # Long inputs would swamp the table; the full text stays reachable as a hover tooltip.
        s = "" if text is None else str(text)
        attributes = (f' class="{css}"' if css else "") + (f' title="{_e(s)}"' if len(s) > TRUNCATE else "")
        shown = _e(s[:TRUNCATE]) + ("…" if len(s) > TRUNCATE else "")
        return f"<span{attributes}>{shown}</span>" if attributes else shown

    diffs = figures.get("diffs") or []
    shown, rows = diffs[:MAX_DIFFS], []
    cols = [s for s in names if any(s in (d.get("outputs") or {}) for d in shown)]
    # Classification: how sure the fine-tuned model was of its answer, the order within equal deltas.
    sure = any(_num(d.get("confidence")) for d in shown)
    for d in shown:
        against = names.get(d.get("against"), d.get("against"))  # the system the delta is measured against
        kind = " vs ".join(str(x) for x in (d.get("kind"), against) if x)
        # The input may hold a word longer than the page (a URL, a hash): only that column breaks inside words.
        rows.append(
            [
                _e(d.get("line", "")),
                cell(d.get("input"), "input"),
                cell(d.get("reference")),
                *(cell((d.get("outputs") or {}).get(s)) for s in cols),
                _e(kind),
                f"{d['delta']:+.3f}" if _num(d.get("delta")) else "—",
                *([f"{d['confidence']:.0%}" if _num(d.get("confidence")) else "—"] if sure else []),
            ]
        )
    header = [
        "line",
        "input",
        "reference",
        *(_e(names[s]) for s in cols),
        "kind",
        "delta",
        *([f"{_e(names.get('fine_tuned', 'fine-tuned'))} confidence"] if sure else []),
    ]
    total = figures.get("diffs_total", len(diffs))
    note = f'<p class="meta">{total - len(shown)} more differences not shown (the worst {len(shown)} are).</p>'
    numeric = {0, len(header) - 2, len(header) - 1} if sure else {0, len(header) - 1}
    table = _table(header, rows, numeric) + (note if total > len(shown) else "")
    return "<h2>Examples that changed</h2>" + table if rows else ""


def render_eval_report(figures: EvalResult | dict) -> str:
    """The eval report as one HTML document (see the module docstring): of an evaluation, or of the JSON
    ``tunesmith eval --json`` wrote."""
    figures = figures.to_json() if isinstance(figures, EvalResult) else figures
    results = figures.get("results") or {}
    shots = (results.get("few_shot") or {}).get("shots")
    systems = [s for s in figures.get("systems") or results if isinstance(results.get(s), dict)]
    names = {s: system_name(s, shots) for s in systems}  # ordered: the table's columns
    body = [
        _comparison(figures, results, names),
        _task_figures(figures, results, names),
        _cost(figures, results, names),
        _diffs(figures, names),
    ]
    return _page(
        f"Evaluation of {figures.get('model', 'model')}", figures, ["data", "n", "task", "precision", "created"], body
    )


def plateau_size(points: list[dict], metric: str, higher_is_better: bool = True):
    """The smallest n after which more data stops paying: no larger size gains more than one point
    over it (a percentage point for 0..1 metrics, else 1% relative) by a clear paired difference
    (its 95% interval, the point's ``gains``; curve.py). None if the curve still rises.
    ``points`` are sorted by n."""
    for i, p in enumerate(points[:-1]):
        if not any(_pays(q, p, metric, higher_is_better) for q in points[i + 1 :]):
            return p["n"]
    return None


def _pays(larger: dict, smaller: dict, metric: str, higher_is_better: bool) -> bool:
    return _gains_a_point(larger, smaller, metric, higher_is_better) and _clearly_better(larger, smaller)


def _gains_a_point(larger: dict, smaller: dict, metric: str, higher_is_better: bool) -> bool:
    gain = (larger["value"] - smaller["value"]) * (1 if higher_is_better else -1)
    # The epsilon keeps a gain of exactly one point (0.82 - 0.81 in floats) from counting.
    return gain > (0.01 if metric in RATES else 0.01 * abs(smaller["value"])) + 1e-9


def _clearly_better(larger: dict, smaller: dict) -> bool:
    tested = (larger.get("gains") or {}).get(str(smaller["n"]))
    # A curve saved before paired differences existed has no ``gains``: its point estimates decide.
    return tested is None or tested["clear"]


def curve_verdict(curve: CurveResult | dict) -> str | None:
    """Where more data stops paying, in one or two sentences; None with fewer than two measured points."""
    curve = curve.to_json() if isinstance(curve, CurveResult) else curve
    metric = curve.get("metric") or "metric"
    higher = curve.get("higher_is_better", metric in HIGHER_IS_BETTER)
    label = METRICS.get(metric, (metric,))[0]
    valued = sorted(
        (p for p in curve.get("points") or [] if _num(p.get("n")) and _num(p.get("value"))), key=lambda p: p["n"]
    )
    if len(valued) < 2:  # one point says nothing about where the curve flattens
        return None
    n, last = plateau_size(valued, metric, higher), valued[-1]
    noise = " beyond the test set's noise" if any(p.get("gains") for p in valued) else ""
    if n is None:
        text = (
            f"The curve is still improving at the largest size; more data is likely to help "
            f"({label} {fmt(metric, last['value'])} at n = {last['n']}"
        )
        gain = (last.get("gains") or {}).get(str(valued[-2]["n"]))
        if gain:
            text += (
                f"; {format_difference(metric, gain['difference'])} over n = {valued[-2]['n']}, "
                f"95% interval {format_interval(metric, gain)}"
            )
        return text + ")."
    at = next(p for p in valued if p["n"] == n)
    best = (max if higher else min)(valued, key=lambda p: p["value"])
    one = "1 percentage point" if metric in RATES else "1%"
    text = (
        f"More data stops paying at n = {n}: no larger training set beats it by more than {one} of "
        f"{label}{noise} ({fmt(metric, at['value'])} at n = {n}; best {fmt(metric, best['value'])} at "
        f"n = {best['n']})."
    )
    # A larger size that looks better but that the test set cannot tell apart: say so, not "stops paying" alone.
    unclear = [q for q in valued if q["n"] > n and _gains_a_point(q, at, metric, higher) and not _clearly_better(q, at)]
    if unclear:
        q = max(unclear, key=lambda q: (q["value"] - at["value"]) * (1 if higher else -1))
        tested = q["gains"][str(n)]
        text += (
            f" n = {q['n']} scores {format_difference(metric, tested['difference'])} over it, but within the "
            f"noise of {sample_size({n: tested})} (95% interval {format_interval(metric, tested)}); "
            "a larger test set would tell."
        )
    return text


def render_curve_report(curve: CurveResult | dict) -> str:
    """The learning-curve report as one HTML document (of a curve, or of its --json)."""
    curve = curve.to_json() if isinstance(curve, CurveResult) else curve
    metric = curve.get("metric") or "metric"
    label = METRICS.get(metric, (metric,))[0]
    points = sorted((p for p in curve.get("points") or [] if _num(p.get("n"))), key=lambda p: p["n"])
    valued, body = [p for p in points if _num(p.get("value"))], []
    text = curve_verdict(curve)
    if text:
        body.append(f'<p class="verdict">{_e(text)}</p>')
    if valued:
        (scale, ylabel), (fig, ax) = _axis(metric), _subplots(figsize=(7, 3.8))
        values = [p["value"] for p in valued]
        ax.errorbar(
            [p["n"] for p in valued],
            [v * scale for v in values],
            marker="o",
            capsize=4,
            yerr=_error_bars(values, [p.get("interval") for p in valued], scale),
            color=COLORS["fine_tuned"],
            label="fine-tuned (95% interval)",
        )
        for key, value in (curve.get("baselines") or {}).items():
            if _num(value):
                ax.axhline(value * scale, linestyle="--", color=COLORS[key], label=system_name(key, curve.get("shots")))
        ax.set_xscale("log", base=2)  # sizes usually double from one point to the next
        ax.set_xticks([p["n"] for p in valued], [str(p["n"]) for p in valued])
        ax.set(xlabel="training examples", ylabel=ylabel)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)  # beside: never over a point
        body.append(_img(fig, f"{metric} vs number of training examples"))
    if points:
        rows = [
            [
                _e(p["n"]),
                fmt(metric, p.get("value")),
                f"{fmt(metric, p['interval'][0])} – {fmt(metric, p['interval'][1])}" if p.get("interval") else "—",
                _e(format_gain(p, points[i - 1] if i else None)),
                _e(format_versus(p, "base")),
                _e(format_versus(p, "few_shot")),
                _e(p.get("model", "")),
                f"{p['train_seconds']:,.1f}" if _num(p.get("train_seconds")) else "—",
            ]
            for i, p in enumerate(points)
        ]
        header = [
            "n",
            _e(label),
            "95% interval",
            "gain over the previous size (95% interval)",
            "vs base zero-shot",
            f"vs base {curve.get('shots') or 'few'}-shot",
            "model",
            "training seconds",
        ]
        body.append("<h2>Points</h2>" + _table(header, rows, {0, 1, 2, 3, 4, 5, 7}))
    return _page(f"Learning curve: {label}", curve, ["task", "train", "test", "seed", "created"], body)


def _write(text: str, path: Path) -> None:
    # Write then rename, so a reader (or a browser auto-refresh) never sees a half-written page.
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), text)


def write_eval_report(figures: EvalResult | dict, path: Path) -> None:
    """Render the eval report and write it to ``path`` atomically."""
    _write(render_eval_report(figures), path)


def write_curve_report(curve: CurveResult | dict, path: Path) -> None:
    """Render the learning-curve report and write it to ``path`` atomically."""
    _write(render_curve_report(curve), path)
