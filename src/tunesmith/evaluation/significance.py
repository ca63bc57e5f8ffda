"""Is a difference real? Paired bootstrap intervals for the primary metric.

A held-out set of 32 or 100 examples measures a model with noise: one example more or less right
moves accuracy by 1-3 points. So next to each point estimate the evaluation reports a 95% interval,
by the paired bootstrap that is the field's usual test for comparing systems on one test set
(Koehn 2004; Dror et al. 2018): the examples are drawn again with replacement, many times, and
every system is scored on the same draw. Drawing the same examples for every system is what makes
it paired: an example that every system gets wrong changes all of them together and is not taken
for a difference between them. The interval is the 2.5th to 97.5th percentile of the redrawn
values (the percentile bootstrap).

A difference is *clear* when its whole interval lies on the better side of zero. It is not a
guarantee (1 in 40 of such intervals misses on each side), but it separates "this test set can tell
them apart" from "this test set is too small to say".

The metric of a redrawn set is ``transform(sum(values * weights) / sum(weights))``: a mean of
per-example scores (accuracy, ROUGE-L, preference accuracy; all weights 1), or for raw text the
exponential of the mean loss per token, with each held-out block weighted by its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
DECIMALS = 6  # in the JSON: 0.23, not 0.22999999999999998; far below any interval's width
_DRAWN_AT_ONCE = 2_000_000  # indices per batch of redraws (16 MB): bounds memory for large test sets


@dataclass
class Sample:
    """One system's per-example figures behind its metric."""

    values: list[float]
    """Per example: its score (1/0 for a right/wrong label, ROUGE-L), or for raw text a block's mean loss."""
    weights: list[float] | None = None
    """Per example: how much it counts (a block's tokens); None: every example once."""


def _metric_of(values: np.ndarray, weights: np.ndarray, exponential: bool) -> np.ndarray:
    mean = values / weights
    return np.exp(np.minimum(mean, 50.0)) if exponential else mean  # exp as measure's perplexity caps it


def bootstrap(
    samples: dict[str, Sample],
    baselines: list[str],
    tuned: str = "fine_tuned",
    higher_is_better: bool = True,
    exponential: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict:
    """Each system's interval, and the difference ``tuned - baseline`` with its interval for each of
    ``baselines``, from one set of paired redraws.

    Every sample must have the same examples in the same order. Returns
    ``{"intervals": {system: [low, high]}, "differences": {baseline: {"difference", "low", "high",
    "clear", "n"}}}``; systems not in ``samples`` are left out.
    """
    lengths = {name: len(sample.values) for name, sample in samples.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"bootstrap: the systems were measured on different examples: {lengths}")
    n = next(iter(lengths.values()), 0)
    if n == 0:
        return {"intervals": {}, "differences": {}}
    weighted, weights = {}, {}
    for name, sample in samples.items():
        w = np.ones(n) if sample.weights is None else np.asarray(sample.weights, dtype=np.float64)
        weighted[name], weights[name] = np.asarray(sample.values, dtype=np.float64) * w, w
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in samples}
    chunk = max(1, _DRAWN_AT_ONCE // n)
    for start in range(0, resamples, chunk):
        index = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for name in samples:
            drawn[name].append(_metric_of(weighted[name][index].sum(1), weights[name][index].sum(1), exponential))
    redrawn = {name: np.concatenate(parts) for name, parts in drawn.items()}
    point = {name: float(_metric_of(weighted[name].sum(), weights[name].sum(), exponential)) for name in samples}
    tail = (1 - confidence) / 2 * 100

    def interval(values: np.ndarray) -> list[float]:
        low, high = np.percentile(values, [tail, 100 - tail])
        return [round(float(low), DECIMALS), round(float(high), DECIMALS)]

    differences = {}
    if tuned in samples:
        for baseline in (b for b in baselines if b in samples and b != tuned):
            low, high = interval(redrawn[tuned] - redrawn[baseline])
            differences[baseline] = {
                "difference": round(point[tuned] - point[baseline], DECIMALS),
                "low": low,
                "high": high,
                "clear": low > 0 if higher_is_better else high < 0,
                "n": n,
            }
    return {"intervals": {name: interval(values) for name, values in redrawn.items()}, "differences": differences}
