"""The paired bootstrap behind "fine-tuning helped, beyond the noise": intervals against hand-computed
cases, the pairing, the token-weighted perplexity, and the verdict's wording."""

from __future__ import annotations

import math

import pytest

from tunesmith.evaluation.compare import format_difference, helped_clearly, reading, significance, verdict
from tunesmith.evaluation.measure import Measured
from tunesmith.evaluation.significance import Sample, bootstrap


def test_identical_systems_differ_by_nothing():
    same = [1.0, 0.0, 1.0, 1.0, 0.0]
    tested = bootstrap({"fine_tuned": Sample(same), "base": Sample(list(same))}, ["base"])
    d = tested["differences"]["base"]
    assert (d["difference"], d["low"], d["high"], d["clear"], d["n"]) == (0.0, 0.0, 0.0, False, 5)
    assert reading(d) == "within the noise"


def test_always_right_against_always_wrong_is_clear():
    tested = bootstrap({"fine_tuned": Sample([1.0] * 6), "base": Sample([0.0] * 6)}, ["base"])
    assert tested["differences"]["base"] == {"difference": 1.0, "low": 1.0, "high": 1.0, "clear": True, "n": 6}
    assert tested["intervals"] == {"fine_tuned": [1.0, 1.0], "base": [0.0, 0.0]}


def test_two_examples_by_hand():
    # Redrawing 2 examples from (right, wrong): both right 1/4, one of each 1/2, both wrong 1/4 of the
    # time, so the 2.5th and 97.5th percentiles are 0 and 1; the difference from an always-wrong
    # baseline is the same, and an interval that touches 0 is not clear.
    tested = bootstrap({"fine_tuned": Sample([1.0, 0.0]), "base": Sample([0.0, 0.0])}, ["base"])
    assert tested["intervals"]["fine_tuned"] == [0.0, 1.0]
    d = tested["differences"]["base"]
    assert (d["difference"], d["low"], d["high"], d["clear"]) == (0.5, 0.0, 1.0, False)


def test_pairing_narrows_the_interval_to_the_paired_standard_error():
    # 400 examples; the baseline is right on every other one, the fine-tune on the same ones plus 40
    # more. Per-example differences: 40 ones, 360 zeros -> mean 0.1, sd 0.3, standard error 0.015, so
    # the interval is about 0.1 +- 1.96 * 0.015. Resampled unpaired, it would be ~2.4x wider (+- 0.035).
    base = [float(i % 2) for i in range(400)]
    tuned = [1.0 if i % 2 or i < 80 else 0.0 for i in range(400)]
    d = bootstrap({"fine_tuned": Sample(tuned), "base": Sample(base)}, ["base"])["differences"]["base"]
    assert d["difference"] == pytest.approx(0.1)
    assert d["low"] == pytest.approx(0.1 - 1.96 * 0.015, abs=0.008)
    assert d["high"] == pytest.approx(0.1 + 1.96 * 0.015, abs=0.008)
    assert d["clear"]


def test_perplexity_weights_blocks_by_tokens_and_lower_is_better():
    # Blocks of 3 and 1 tokens with mean losses 1 and 3: exp((3*1 + 1*3) / 4) = exp(1.5), not exp(2).
    tuned, base = Sample([1.0, 3.0], [3.0, 1.0]), Sample([2.0, 2.0], [3.0, 1.0])
    tested = bootstrap({"fine_tuned": tuned, "base": base}, ["base"], higher_is_better=False, exponential=True)
    d = tested["differences"]["base"]
    assert d["difference"] == pytest.approx(math.exp(1.5) - math.exp(2.0))
    assert tested["intervals"]["base"] == pytest.approx([math.exp(2.0)] * 2)
    # Redraws of (block 1, block 1), mixed, (block 2, block 2): perplexity e^1, e^1.5, e^3.
    assert tested["intervals"]["fine_tuned"] == pytest.approx([math.exp(1.0), math.exp(3.0)])
    uniformly_lower = bootstrap(
        {"fine_tuned": Sample([1.0] * 4), "base": Sample([2.0] * 4)}, ["base"], higher_is_better=False, exponential=True
    )["differences"]["base"]
    assert uniformly_lower["clear"] and uniformly_lower["high"] < 0


def test_same_seed_same_interval_and_mismatched_systems_refused():
    tuned, base = Sample([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]), Sample([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    first = bootstrap({"fine_tuned": tuned, "base": base}, ["base"], seed=3)
    assert bootstrap({"fine_tuned": tuned, "base": base}, ["base"], seed=3) == first
    with pytest.raises(ValueError, match="different examples"):
        bootstrap({"fine_tuned": tuned, "base": Sample([1.0])}, ["base"])


def test_significance_reads_the_primary_metric_of_the_task():
    measured = {
        "base": Measured({}, scores=[2.0, 2.0], weights=[5.0, 5.0]),
        "fine_tuned": Measured({}, scores=[1.0, 1.0], weights=[5.0, 5.0]),
        "teacher": Measured({}, scores=[0.5, 0.5], weights=[5.0, 5.0]),
    }
    tested = significance("text", measured)
    # Perplexity: lower is better, compared as exp(mean loss); the teacher is a reference, not a baseline.
    assert list(tested["differences"]) == ["base"]
    d = tested["differences"]["base"]
    assert d["metric"] == "perplexity" and d["clear"] and d["difference"] == pytest.approx(math.e - math.e**2)
    assert set(tested["intervals"]) == {"base", "fine_tuned", "teacher"}


def test_helped_clearly_needs_every_difference_clear():
    clear, unclear = {"clear": True}, {"clear": False}
    assert helped_clearly({"base": clear, "few_shot": clear}, True) is True
    assert helped_clearly({"base": clear, "few_shot": unclear}, True) is False
    assert helped_clearly({"base": clear}, False) is False
    assert helped_clearly({}, True) is None and helped_clearly({"base": clear}, None) is None


def test_verdict_wording():
    results = {"base": {"accuracy": 0.5}, "few_shot": {"accuracy": 0.6, "shots": 8}, "fine_tuned": {"accuracy": 0.65}}
    tested = {
        "base": {"difference": 0.15, "low": 0.05, "high": 0.25, "clear": True, "n": 32},
        "few_shot": {"difference": 0.05, "low": -0.06, "high": 0.16, "clear": False, "n": 32},
    }
    lines = verdict("classify", results, True, tested)
    assert lines[0].startswith("[yellow]fine-tuning helped, but not clearly:")
    assert "base + 8-shot prompt" in lines[0] and "32 examples" in lines[0]
    assert lines[1].strip() == (
        "accuracy against base (zero-shot): +15.0 points (95% interval +5.0 to +25.0): clearly better"
    )
    assert lines[2].strip().endswith("+5.0 points (95% interval -6.0 to +16.0): within the noise")
    tested["few_shot"].update(low=0.01, clear=True)
    assert verdict("classify", results, True, tested)[0].startswith("[green]fine-tuning helped, beyond")
    worse = {"base": {"difference": -0.1, "low": -0.2, "high": -0.02, "clear": False, "n": 32}}
    lines = verdict("classify", results, False, worse)
    assert lines[0] == "[red]fine-tuning did not beat every baseline on accuracy[/]"
    assert lines[1].endswith("clearly worse")
    assert verdict("classify", results, None, {}) == []
    assert format_difference("perplexity", -0.5) == "-0.50" and format_difference("chrf", 1.25) == "+1.250"
