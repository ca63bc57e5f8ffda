"""The HTML eval and learning-curve reports: self-contained, escaped, and saying the right things."""

from __future__ import annotations

import re

import pytest

from tunesmith.evaluation.report import (
    curve_verdict,
    plateau_size,
    render_curve_report,
    render_eval_report,
    write_curve_report,
    write_eval_report,
)

EVIL = "<script>alert(1)</script>"
COMMON = {
    "prompt_tokens_mean": 42.0,
    "latency_ms_p50": 120.4,
    "latency_ms_p90": 180.6,
    "tokens_per_s": 33.3,
    "eval_seconds": 4.0,
}


def _classify(n_diffs: int = 3, break_even: dict | None = None) -> dict:
    def system(acc, confusion):
        per = {
            "negative": {"precision": 0.9, "recall": 0.95, "f1": 0.92, "support": 50},
            "positive": {"precision": 0.97, "recall": 0.93, "f1": 0.95, "support": 50},
        }
        return {
            "accuracy": acc,
            "macro_f1": acc - 0.01,
            "ece": 0.0523,
            "per_label": per,
            "confusion": confusion,
            "loss": 0.31234,
            "perplexity": 1.3667,
            **COMMON,
        }

    return {
        "model": "reviews:2",
        "task": "classify",
        "data": "data/test.jsonl",
        "n": 100,
        "labels": ["negative", "positive"],
        "primary": "accuracy",
        "higher_is_better": True,
        "systems": ["base", "few_shot", "fine_tuned"],
        "results": {
            "base": system(0.71, [[40, 10], [19, 31]]),
            "few_shot": {**system(0.88, [[45, 5], [7, 43]]), "shots": 8, "prompt_tokens_mean": 400.0},
            "fine_tuned": system(0.94, [[48, 2], [4, 46]]),
        },
        "helped": True,
        "break_even": break_even,
        "examples": [
            {
                "line": 1,
                "input": EVIL,
                "reference": "positive",
                "outputs": {"base": "negative", "fine_tuned": "positive"},
                "scores": {"base": 0.0, "fine_tuned": 1.0},
            }
        ],
        "diffs": [
            {
                "line": i + 1,
                "input": EVIL + "x" * 400 if i == 0 else f"review {i}",
                "reference": "positive",
                "against": "few_shot",
                "kind": "regression" if i % 2 else "improvement",
                "delta": 1.0,
                "confidence": 0.97 - i / 100,
                "outputs": {"base": "negative", "few_shot": "negative", "fine_tuned": "positive"},
                "scores": {"base": 0.0, "few_shot": 0.0, "fine_tuned": 1.0},
            }
            for i in range(n_diffs)
        ],
        "created": "2026-11-21T10:00:00+00:00",
        "seconds": 12.3,
    }


def _generation(task: str) -> dict:
    text = task == "text"
    metrics = (
        {"perplexity": 12.345, "bits_per_byte": 0.9876, "loss": 2.51}
        if text
        else {"rouge_l": 0.4567, "chrf": 51.23, "exact_match": 0.12, "loss": 1.234}
    )
    tuned = {k: v * (0.8 if text else 1.2) for k, v in metrics.items()}
    examples = [
        {
            "line": i,
            "input": f"prompt {i}",
            "reference": "ref",
            "outputs": {"base": "a", "fine_tuned": "b"},
            "scores": {"base": (10.0 + i) if text else i / 20, "fine_tuned": (8.0 + i) if text else i / 15},
        }
        for i in range(1, 12)
    ]
    return {
        "model": "notes:1",
        "task": task,
        "data": "notes.jsonl",
        "n": 11,
        "primary": "perplexity" if text else "rouge_l",
        "higher_is_better": not text,
        "systems": ["base", "fine_tuned"],
        "results": {"base": {**metrics, **COMMON}, "fine_tuned": {**tuned, **COMMON}},
        "helped": False,
        "break_even": None,
        "examples": examples,
        "diffs": [],
        "created": "2026-11-21T10:00:00+00:00",
        "seconds": 3.0,
    }


def _self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<link" not in page.lower() and "<script src" not in page.lower()
    assert "http://" not in page and "https://" not in page


def test_classify_report_is_self_contained_and_formatted():
    page = render_eval_report(_classify())
    _self_contained(page)
    assert page.count("<img ") == 3  # primary bar chart, confusion matrices, cost chart
    for text in (
        "94.0%",
        "88.0%",
        "71.0%",
        "0.052",
        "0.312",
        "1.37",
        "120",
        "181",
        "33.3",
        "42.0",
        "base (zero-shot)",
        "base + 8-shot prompt",
        "fine-tuned",
        "primary",
        "Fine-tuning helped: accuracy 94.0% vs 88.0%",
        "precision",
        "recall",
        "Confusion matrices",
    ):
        assert text in page, text
    assert "<b>94.0%</b>" in page and "<b>42.0</b>" in page  # best per row: higher accuracy, fewer tokens
    assert "<b>0.052</b>" not in page  # a row where every system ties has no winner to mark
    assert "Per-example scores" not in page  # classification gets confusion matrices instead


def test_user_strings_are_escaped_and_long_inputs_truncated():
    page = render_eval_report(_classify())
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'title="&lt;script&gt;' in page  # the full input survives as the tooltip
    assert "x" * 400 in page and "…" in page


def test_diff_table_truncates_at_50_with_a_note():
    page = render_eval_report(_classify(n_diffs=57))
    assert "7 more differences not shown" in page
    assert "review 49" in page and "review 50" not in page
    assert "regression vs base + 8-shot prompt" in page
    assert "more differences not shown" not in render_eval_report(_classify(n_diffs=3))


def test_classify_diffs_show_how_sure_the_fine_tuned_model_was():
    page = render_eval_report(_classify(n_diffs=3))
    assert "fine-tuned confidence</th>" in page
    assert "<td class=num>97%</td>" in page and "<td class=num>95%</td>" in page
    chat = _generation("chat")
    chat["diffs"] = [{**chat["examples"][0], "against": "base", "kind": "improvement", "delta": 0.017}]
    page = render_eval_report(chat)
    assert "+0.017" in page and "confidence</th>" not in page  # generation has no label probabilities


def test_break_even_wording():
    prices = {"cpu_usd_per_hour": 0.05, "gpu_usd_per_hour": 2.5}
    never = {
        "vs": "few_shot",
        "training_cpu_seconds": 900.0,
        "training_gpu_seconds": 0.0,
        "saved_cpu_seconds_per_request": -0.01,
        "requests": None,
        "training_cost_usd": 0.0125,
        "saved_usd_per_1k_requests": -0.0001,
        "requests_to_pay_back_cost": None,
        "prices": prices,
    }
    page = render_eval_report(_classify(break_even=never))
    assert "Training cost 900.0 CPU-seconds (≈ $0.0125)" in page
    assert "never pays back: the fine-tuned model is not cheaper per request" in page
    assert "Prices used: cpu_usd_per_hour = 0.05" in page
    pays = {
        **never,
        "saved_cpu_seconds_per_request": 0.25,
        "requests": 3600,
        "saved_usd_per_1k_requests": 0.0035,
        "requests_to_pay_back_cost": 3572,
    }
    page = render_eval_report(_classify(break_even=pays))
    assert "each request saves 0.25 CPU-seconds, so training pays back after 3,600 requests" in page
    assert "never pays back" not in page
    assert "Training cost" not in render_eval_report(_classify(break_even=None))


@pytest.mark.parametrize("task", ["chat", "text"])
def test_generation_reports(task):
    figures = _generation(task)
    page = render_eval_report(figures)
    _self_contained(page)
    assert "Per-example scores" in page and "Confusion" not in page
    assert "Fine-tuning did not help" in page
    if task == "chat":
        assert "45.7%" in page and "51.2" in page and "12.0%" in page and "54.8%" in page
    else:
        assert "12.35" in page and "0.988" in page and "9.88" in page


def test_missing_sections_are_left_out():
    figures = _generation("chat")
    figures.update(helped=None, examples=[], results={"fine_tuned": {"rouge_l": 0.5}}, systems=["fine_tuned"])
    page = render_eval_report(figures)
    assert "Fine-tuning" not in page  # no verdict when helped is null
    assert page.count("<img ") == 1  # only the primary chart: no score spread, no cost chart
    assert "<b>" not in page  # nothing to compare against


def _curve(values: list[float]) -> dict:
    sizes = [50, 100, 200, 400, 800][: len(values)]
    return {
        "task": "classify",
        "metric": "accuracy",
        "higher_is_better": True,
        "train": "train.jsonl",
        "test": "test.jsonl",
        "seed": 0,
        "baselines": {"base": 0.7, "few_shot": 0.76},
        "shots": 8,
        "points": [
            {"n": n, "model": f"reviews-curve-n{n}:1", "value": v, "train_seconds": n / 10}
            for n, v in zip(sizes, values)
        ],
        "created": "2026-11-21T10:00:00+00:00",
        "seconds": 100.0,
    }


def test_curve_plateau_and_still_improving():
    page = render_curve_report(_curve([0.80, 0.88, 0.905, 0.91, 0.912]))
    _self_contained(page)
    assert "More data stops paying at n = 200" in page
    assert "still improving" not in page
    assert "reviews-curve-n800:1" in page and "91.2%" in page and "80.0" in page
    rising = render_curve_report(_curve([0.70, 0.75, 0.80, 0.85, 0.90]))
    assert "still improving at the largest size; more data is likely to help" in rising
    assert "stops paying" not in rising


def test_plateau_size_rules():
    pts = lambda *vs: [{"n": 2**i, "value": v} for i, v in enumerate(vs)]  # noqa: E731
    assert plateau_size(pts(0.80, 0.81, 0.81), "accuracy") == 1  # gains of exactly 1 point do not count
    assert plateau_size(pts(0.80, 0.81, 0.815), "accuracy") == 2  # 1.5 points over the first size
    assert plateau_size(pts(0.80, 0.85), "accuracy") is None
    assert plateau_size(pts(10.0, 9.95, 9.93), "perplexity", higher_is_better=False) == 1  # under 1% relative
    assert plateau_size(pts(10.0, 9.0, 8.95), "perplexity", higher_is_better=False) == 2
    assert plateau_size(pts(0.9, 0.8, 0.85), "accuracy") == 1  # a dip then a recovery that stays below


def _gain(difference: float, low: float, high: float, n: int = 100) -> dict:
    return {"difference": difference, "low": low, "high": high, "clear": low > 0, "n": n, "metric": "accuracy"}


def test_curve_plateau_needs_a_clear_gain():
    # 400 is 6 points over 200 but the paired interval includes zero: the test set cannot tell them apart.
    curve = _curve([0.80, 0.88, 0.90, 0.96])
    curve["points"][1]["gains"] = {"50": _gain(0.08, 0.02, 0.14)}
    curve["points"][2]["gains"] = {"50": _gain(0.10, 0.04, 0.16), "100": _gain(0.02, -0.03, 0.07)}
    curve["points"][3]["gains"] = {
        "50": _gain(0.16, 0.09, 0.23),
        "100": _gain(0.08, 0.01, 0.15),
        "200": _gain(0.06, -0.01, 0.13),
    }
    assert plateau_size(curve["points"], "accuracy") == 200  # without the gains: None (still rising)
    assert plateau_size([{k: v for k, v in p.items() if k != "gains"} for p in curve["points"]], "accuracy") is None
    text = curve_verdict(curve)
    assert text.startswith(
        "More data stops paying at n = 200: no larger training set beats it by more than "
        "1 percentage point of accuracy beyond the test set's noise"
    )
    assert (
        "n = 400 scores +6.0 points over it, but within the noise of 100 examples (95% interval -1.0 to +13.0)" in text
    )
    page = render_curve_report(curve)
    assert "+6.0 (-1.0 to +13.0)" in page  # gain over the previous size, in the points table
    # once the gain over 200 is clear, the curve is still improving
    curve["points"][3]["gains"]["200"] = _gain(0.06, 0.01, 0.11)
    assert plateau_size(curve["points"], "accuracy") is None
    assert curve_verdict(curve) == (
        "The curve is still improving at the largest size; more data is likely to "
        "help (accuracy 96.0% at n = 400; +6.0 points over n = 200, 95% interval "
        "+1.0 to +11.0)."
    )


def test_writers_are_atomic(tmp_path):
    write_eval_report(_classify(), tmp_path / "eval.html")
    write_curve_report(_curve([0.8, 0.9]), tmp_path / "sub" / "curve.html")
    assert (tmp_path / "eval.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert (tmp_path / "sub" / "curve.html").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_significance_section_and_interval_columns():
    figures = _classify()
    figures["significance"] = {
        "base": {"metric": "accuracy", "difference": 0.23, "low": 0.15, "high": 0.31, "clear": True, "n": 100},
        "few_shot": {"metric": "accuracy", "difference": 0.06, "low": -0.01, "high": 0.13, "clear": False, "n": 100},
    }
    figures["intervals"] = {"base": [0.62, 0.8], "few_shot": [0.81, 0.94], "fine_tuned": [0.89, 0.98]}
    page = render_eval_report(figures)
    _self_contained(page)
    assert "But not clearly: against base + 8-shot prompt the difference is within the noise of 100 examples" in page
    for text in (
        "+23.0 points",
        "+15.0 to +31.0",
        "clearly better",
        "+6.0 points",
        "-1.0 to +13.0",
        "within the noise",
        "Paired bootstrap over 100 examples",
    ):
        assert text in page, text
    assert "fine-tuned against" not in render_eval_report(_classify())  # no per-example scores, no section

    curve = _curve([0.80, 0.88])
    curve["points"][0]["interval"] = [0.71, 0.87]
    page = render_curve_report(curve)
    assert "95% interval" in page and "71.0% – 87.0%" in page
