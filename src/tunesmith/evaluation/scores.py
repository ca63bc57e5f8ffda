"""Pure scoring functions for evaluation reports: classification, calibration, generation overlap,
bits per byte, latency and the training-cost break-even. No model code lives here.

Every function takes plain numbers or strings and returns plain Python values (dicts of floats,
ints and lists) so results can go straight into JSON reports. ROUGE and chrF come from
``rouge-score`` and ``sacrebleu``; they are imported inside the functions that use them so that
importing this module stays cheap for commands that never score generations.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.core.errors import TunesmithError

# Ballpark on-demand cloud prices (one vCPU-hour, one datacenter-GPU-hour); a user overrides them
# with their own numbers via `prices=` or a prices file (`load_prices`).
DEFAULT_PRICES = {"cpu_core_hour_usd": 0.045, "gpu_hour_usd": 2.50}

# Ratios such as 1.1 / 0.1 come out as 11.000000000000002 in floating point; rounding first keeps
# ceil() and bin edges on the value a person would compute by hand.
_ROUND = 9


def _as_matrix(probabilities: Any) -> np.ndarray:
    # torch tensors may be on a GPU, require grad or be bfloat16, none of which numpy accepts.
    if hasattr(probabilities, "detach"):
        probabilities = probabilities.detach().float().cpu().numpy()
    return np.asarray(probabilities, dtype=np.float64)


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Equal-width-bin ECE: sum over bins of (|B|/n) * |accuracy(B) - mean confidence(B)|.

    Bins are (0, 1/bins], (1/bins, 2/bins], ..., with a confidence of exactly 0 in the first bin.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hits = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.size == 0:
        raise ValueError("expected_calibration_error: no confidences given")
    if conf.size != hits.size:
        raise ValueError(f"expected_calibration_error: {conf.size} confidences but {hits.size} correctness flags")
    if bins < 1:
        raise ValueError(f"expected_calibration_error: bins must be >= 1, got {bins}")
    if np.any(conf < -1e-6) or np.any(conf > 1 + 1e-6):
        raise ValueError("expected_calibration_error: confidences must lie in [0, 1]")
    # Right-closed bins: ceil(c * bins) - 1. Rounding first puts 0.3 (0.3 * 10 = 3.0000000000000004)
    # in (0.2, 0.3] where it belongs; clipping sends 0 to the first bin and 1 + rounding noise to the last.
    index = np.clip(np.ceil(np.round(conf * bins, _ROUND)).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += members.mean() * abs(hits[members].mean() - conf[members].mean())
    return float(ece)


def classification_scores(probabilities: Any, gold: list[int], labels: list[str], bins: int = 10) -> dict:
    """Accuracy, macro F1, ECE, per-label precision/recall/F1 and the confusion matrix.

    ``probabilities`` is [n, len(labels)]; the prediction is the argmax (the first label wins ties).
    """
    probs = _as_matrix(probabilities)
    if probs.size == 0 or len(gold) == 0:
        raise ValueError("classification_scores: no examples to score (n = 0)")
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"classification_scores: probabilities have shape {probs.shape}, expected [n, {len(labels)}]")
    n = probs.shape[0]
    if len(gold) != n:
        raise ValueError(f"classification_scores: {n} probability rows but {len(gold)} gold labels")
    gold_arr = np.asarray(gold, dtype=int)
    if np.any(gold_arr < 0) or np.any(gold_arr >= len(labels)):
        raise ValueError(f"classification_scores: gold label indices must be in 0..{len(labels) - 1}")

    predictions = probs.argmax(axis=1)  # numpy returns the first maximum, which is the tie rule we want
    confidences = probs.max(axis=1)
    correct = predictions == gold_arr

    size = len(labels)
    confusion = np.zeros((size, size), dtype=int)
    np.add.at(confusion, (gold_arr, predictions), 1)

    per_label = {}
    for i, label in enumerate(labels):
        true_pos = int(confusion[i, i])
        predicted = int(confusion[:, i].sum())
        support = int(confusion[i, :].sum())
        # Zero rather than NaN for never-predicted / never-present labels, so the macro mean stays defined.
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}

    return {
        "accuracy": float(correct.mean()),
        # Over ALL labels, including absent ones: a label the model can never produce should cost it.
        "macro_f1": float(np.mean([scores["f1"] for scores in per_label.values()])),
        "ece": expected_calibration_error(confidences, correct, bins=bins),
        "per_label": per_label,
        "confusion": confusion.tolist(),
        "predictions": [int(p) for p in predictions],
        "confidences": [float(c) for c in confidences],
        "gold_probabilities": [float(p) for p in probs[np.arange(n), gold_arr]],
        "n": int(n),
    }


def normalize_answer(text: str) -> str:
    """Strip, casefold, collapse whitespace runs to one space, drop trailing ``.``, ``!`` and ``?``."""
    text = re.sub(r"\s+", " ", text.strip().casefold())
    # Trailing spaces go too, so "paris ." and "paris" compare equal.
    return re.sub(r"[\s.!?]+$", "", text)


def generation_scores(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-L F, corpus chrF, exact match (after ``normalize_answer``) and per-example scores.

    rouge-score's default tokenizer lowercases and keeps only ASCII [a-z0-9] runs, so punctuation
    and case never matter to ``rouge_l``, and text with no ASCII letters or digits scores 0.
    """
    if len(predictions) != len(references):
        raise ValueError(f"generation_scores: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("generation_scores: no examples to score")
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import CHRF

    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    chrf = CHRF()
    # rouge-score takes (target, prediction); the order matters for precision vs recall.
    per_example = [
        {
            "rouge_l": float(rouge.score(reference, prediction)["rougeL"].fmeasure),
            "chrf": float(chrf.sentence_score(prediction, [reference]).score),
            "exact": normalize_answer(prediction) == normalize_answer(reference),
        }
        for prediction, reference in zip(predictions, references)
    ]
    return {
        "rouge_l": float(np.mean([e["rouge_l"] for e in per_example])),
        # Corpus chrF pools character n-gram counts over all pairs; it is not the mean of sentence chrF.
        "chrf": float(chrf.corpus_score(list(predictions), [list(references)]).score),
        "exact_match": float(np.mean([e["exact"] for e in per_example])),
        "per_example": per_example,
    }


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Summed negative log-likelihood in nats converted to bits per UTF-8 byte of text."""
    if n_bytes <= 0:
        raise ValueError(f"bits_per_byte: n_bytes must be positive, got {n_bytes}")
    return float(total_nll_nats / (math.log(2) * n_bytes))


def latency_summary(seconds: list[float], new_tokens: list[int]) -> dict:
    """p50 / p90 request latency in milliseconds (numpy linear interpolation) and overall tokens/s."""
    if not seconds:
        raise ValueError("latency_summary: no requests timed")
    if len(seconds) != len(new_tokens):
        raise ValueError(f"latency_summary: {len(seconds)} timings but {len(new_tokens)} token counts")
    total_seconds = float(sum(seconds))
    if min(seconds) < 0 or total_seconds <= 0:
        raise ValueError("latency_summary: timings must be non-negative with a positive total")
    millis = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "latency_ms_p50": float(np.percentile(millis, 50)),
        "latency_ms_p90": float(np.percentile(millis, 90)),
        # Total tokens over total time, not a mean of per-request rates, so long requests weigh more.
        "tokens_per_s": float(sum(new_tokens) / total_seconds),
        "requests": len(seconds),
    }


def _merge_prices(prices: dict | None) -> dict:
    merged = dict(DEFAULT_PRICES)
    for key, value in (prices or {}).items():
        if key not in DEFAULT_PRICES:
            raise ValueError(f"unknown price key {key!r}; known keys: {', '.join(sorted(DEFAULT_PRICES))}")
        # bool is an int subclass; `true` in a YAML file is a mistake, not a price of 1.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"price {key!r} must be a number, got {value!r}")
        if value < 0:
            raise ValueError(f"price {key!r} must not be negative, got {value}")
        merged[key] = float(value)
    return merged


def _ceil(value: float) -> int:
    return math.ceil(round(value, _ROUND))


def break_even(
    training_cpu_seconds: float,
    training_gpu_seconds: float,
    tuned_request_cpu_seconds: float,
    alternative_request_cpu_seconds: float,
    prices: dict | None = None,
) -> dict:
    """How many requests the tuned model must serve before its training pays for itself.

    Counted in CPU seconds (``requests``) and in dollars (``requests_to_pay_back_cost``); both are
    None when the tuned model saves nothing per request, i.e. it never pays back.
    """
    merged = _merge_prices(prices)
    seconds = [training_cpu_seconds, training_gpu_seconds, tuned_request_cpu_seconds, alternative_request_cpu_seconds]
    if min(seconds) < 0:
        raise ValueError(f"break_even: CPU/GPU seconds must not be negative, got {seconds}")
    cpu_price = merged["cpu_core_hour_usd"]
    saved = alternative_request_cpu_seconds - tuned_request_cpu_seconds
    training_cost = training_cpu_seconds / 3600 * cpu_price + training_gpu_seconds / 3600 * merged["gpu_hour_usd"]
    saved_usd_per_request = saved / 3600 * cpu_price
    return {
        "training_cpu_seconds": training_cpu_seconds,
        "training_gpu_seconds": training_gpu_seconds,
        "saved_cpu_seconds_per_request": saved,
        "requests": _ceil(training_cpu_seconds / saved) if saved > 0 else None,
        "training_cost_usd": training_cost,
        "saved_usd_per_1k_requests": saved_usd_per_request * 1000,
        # A CPU price of 0 saves no money however many seconds are saved, so it never pays back either.
        "requests_to_pay_back_cost": _ceil(training_cost / saved_usd_per_request)
        if saved_usd_per_request > 0
        else None,
        "prices": merged,
    }


def load_prices(path: str | Path) -> dict:
    """Read price overrides from a YAML or JSON mapping and merge them over ``DEFAULT_PRICES``."""
    path = Path(path)
    hint = f"expected a mapping such as `cpu_core_hour_usd: 0.05` with keys {', '.join(sorted(DEFAULT_PRICES))}"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TunesmithError(f"{path}: prices file not found; {hint}") from None
    try:
        if path.suffix.lower() == ".json":
            loaded = json.loads(text)
        else:
            import yaml  # YAML also reads most JSON, so it is the default for other suffixes

            loaded = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError / yaml.YAMLError: both are a malformed file
        raise TunesmithError(f"{path}: could not parse prices file: {err}; {hint}") from None
    loaded = {} if loaded is None else loaded  # an empty file means "no overrides"
    if not isinstance(loaded, dict):
        raise TunesmithError(f"{path}: {hint}, got {type(loaded).__name__}")
    try:
        return _merge_prices(loaded)
    except ValueError as err:
        raise TunesmithError(f"{path}: {err}") from None
