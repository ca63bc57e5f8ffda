"""Scores in tunesmith.evaluation.scores checked against values worked out by hand (in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunesmith.core.errors import TunesmithError
from tunesmith.evaluation.scores import (
    DEFAULT_PRICES,
    bits_per_byte,
    break_even,
    classification_scores,
    expected_calibration_error,
    generation_scores,
    latency_summary,
    load_prices,
    normalize_answer,
)

# --- classification -------------------------------------------------------------------------------

# Four rows over labels a, b, c; label c is never predicted and row 1 is a tie.
PROBS = [
    [0.6, 0.3, 0.1],  # gold a -> pred a (right), confidence 0.6
    [0.4, 0.4, 0.2],  # gold b -> tie a/b, first wins -> pred a (wrong), confidence 0.4
    [0.1, 0.8, 0.1],  # gold b -> pred b (right), confidence 0.8
    [0.3, 0.5, 0.2],  # gold c -> pred b (wrong), confidence 0.5
]
GOLD = [0, 1, 1, 2]
LABELS = ["a", "b", "c"]


def test_classification_scores_hand_worked():
    s = classification_scores(PROBS, GOLD, LABELS)
    assert s["n"] == 4
    assert s["predictions"] == [0, 0, 1, 1]  # the tie in row 1 goes to the first index
    assert s["accuracy"] == pytest.approx(0.5)  # rows 0 and 2 right
    # confusion rows = gold, cols = predicted: gold a -> a; gold b -> a, b; gold c -> b
    assert s["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]
    # a: TP 1, predicted 2, support 1 -> P 1/2, R 1, F 2*(1/2)/(3/2) = 2/3
    assert s["per_label"]["a"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    # b: TP 1, predicted 2, support 2 -> P 1/2, R 1/2, F 1/2
    assert s["per_label"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # c: never predicted -> P 0, R 0/1 = 0, F 0 (not NaN)
    assert s["per_label"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # macro over all three labels: (2/3 + 1/2 + 0) / 3 = 7/18
    assert s["macro_f1"] == pytest.approx(7 / 18)
    assert s["confidences"] == pytest.approx([0.6, 0.4, 0.8, 0.5])
    assert s["gold_probabilities"] == pytest.approx([0.6, 0.4, 0.8, 0.2])
    # each confidence sits alone in its bin, weight 1/4:
    # |1-0.6| + |0-0.4| + |1-0.8| + |0-0.5| = 0.4 + 0.4 + 0.2 + 0.5 = 1.5 -> 1.5/4 = 0.375
    assert s["ece"] == pytest.approx(0.375)
    assert isinstance(s["per_label"]["a"]["support"], int)


def test_classification_scores_label_with_no_support_and_numpy_input():
    # Only label a appears as gold and is always predicted: b has no support, so recall 0 and F1 0,
    # and it still counts in the macro mean: (1 + 0) / 2 = 0.5.
    s = classification_scores(np.array([[0.9, 0.1], [0.7, 0.3]]), [0, 0], ["a", "b"])
    assert s["accuracy"] == 1.0
    assert s["per_label"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert s["macro_f1"] == pytest.approx(0.5)
    # conf 0.9 and 0.7, both right: (1/2)|1-0.9| + (1/2)|1-0.7| = 0.05 + 0.15 = 0.2
    assert s["ece"] == pytest.approx(0.2)


def test_classification_scores_accepts_torch_tensor():
    torch = pytest.importorskip("torch")
    s = classification_scores(torch.tensor(PROBS, dtype=torch.bfloat16), GOLD, LABELS)
    assert s["predictions"] == [0, 0, 1, 1]
    assert s["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]


def test_classification_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="n = 0"):
        classification_scores([], [], LABELS)
    with pytest.raises(ValueError, match="shape"):
        classification_scores([[0.5, 0.5]], [0], LABELS)
    with pytest.raises(ValueError, match="gold"):
        classification_scores(PROBS, [0, 1], LABELS)
    with pytest.raises(ValueError, match="gold label indices"):
        classification_scores(PROBS, [0, 1, 1, 3], LABELS)


# --- calibration ----------------------------------------------------------------------------------


def test_ece_hand_worked_three_plus_bins_and_bin_edge():
    confidences = [0.95, 0.95, 0.85, 0.85, 0.65, 0.3, 0.25]
    correct = [True, False, True, True, False, True, False]
    # (0.9,1.0]: 0.95 x2, acc 1/2, gap |0.5-0.95| = 0.45, weight 2/7
    # (0.8,0.9]: 0.85 x2, acc 1,   gap 0.15,               weight 2/7
    # (0.6,0.7]: 0.65,    acc 0,   gap 0.65,               weight 1/7
    # (0.2,0.3]: 0.3 (right edge belongs here) and 0.25, acc 1/2, mean conf 0.275, gap 0.225, weight 2/7
    # ECE = (2*0.45 + 2*0.15 + 0.65 + 2*0.225) / 7 = 2.3 / 7
    # (had 0.3 landed in (0.3,0.4], it would be (0.9 + 0.3 + 0.65 + 0.7 + 0.25) / 7 = 2.8 / 7)
    assert expected_calibration_error(confidences, correct) == pytest.approx(2.3 / 7)


def test_ece_zero_goes_in_first_bin_with_its_right_edge():
    # 0.0 and 0.1 share (0, 0.1]: acc 1/2, mean conf 0.05, gap 0.45 -> ECE 0.45
    # (in separate bins it would be 0.5*|1-0| + 0.5*|0-0.1| = 0.55)
    assert expected_calibration_error([0.0, 0.1], [True, False]) == pytest.approx(0.45)


def test_ece_perfect_and_other_bin_counts():
    assert expected_calibration_error([1.0, 1.0, 1.0], [True, True, True]) == 0.0
    # bins=2: (0,0.5] holds 0.5 (right, gap 0.5), (0.5,1] holds 0.6 (right, gap 0.4): 0.5*0.5 + 0.5*0.4 = 0.45
    assert expected_calibration_error([0.5, 0.6], [True, True], bins=2) == pytest.approx(0.45)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [True, False])
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [True])


# --- generation -----------------------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("  Hello \t  World?! ") == "hello world"
    assert normalize_answer("Paris .") == "paris"
    assert normalize_answer("Straße") == "strasse"  # casefold, not lower
    assert normalize_answer("e.g. 3.5") == "e.g. 3.5"  # only trailing punctuation goes
    assert normalize_answer("...") == ""


def test_generation_scores_rouge_l_hand_lcs():
    s = generation_scores(
        ["the cat sat on the mat", "the cat", "same words here", "abc"],
        ["the cat is on the mat", "the cat sat down", "same words here", "xyz"],
    )
    rouge = [e["rouge_l"] for e in s["per_example"]]
    # 1: LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = 5/6, F = 5/6
    # 2: LCS "the cat" = 2; P = 2/2, R = 2/4; F = 2*1*0.5/1.5 = 2/3
    # 3: identical -> 1;  4: no shared token -> 0
    assert rouge == pytest.approx([5 / 6, 2 / 3, 1.0, 0.0])
    assert s["rouge_l"] == pytest.approx((5 / 6 + 2 / 3 + 1 + 0) / 4)  # = 2.5/4 = 0.625
    assert s["per_example"][2]["chrf"] == pytest.approx(100.0)
    # "abc" vs "xyz": no shared character n-gram, precision = recall = 0 -> chrF 0
    assert s["per_example"][3]["chrf"] == 0.0
    assert [e["exact"] for e in s["per_example"]] == [False, False, True, False]
    assert s["exact_match"] == pytest.approx(0.25)


def test_chrf_hand_worked():
    # chrF (char orders 1..6, beta 2, spaces dropped) averages P and R over orders that both sides have,
    # then F = 5PR / (4P + R).
    # "ab" vs "abc": order 1: P 2/2, R 2/3; order 2: P 1/1, R 1/2; order 3+: "ab" has none.
    # P = 1, R = (2/3 + 1/2)/2 = 7/12, F = 5*(7/12) / (4 + 7/12) = 35/55 = 7/11
    s = generation_scores(["ab", "abc"], ["abc", "abc"])
    assert s["per_example"][0]["chrf"] == pytest.approx(100 * 7 / 11)
    assert s["per_example"][1]["chrf"] == pytest.approx(100.0)
    # corpus chrF pools counts: order 1 hyp 5 / ref 6 / match 5; order 2 3/4/3; order 3 1/2/1.
    # P = 1, R = (5/6 + 3/4 + 1/2)/3 = 25/36, F = 5*(25/36) / (4 + 25/36) = 125/169
    # (not the mean of sentence scores, (63.6 + 100)/2 = 81.8)
    assert s["chrf"] == pytest.approx(100 * 125 / 169)
    empty = generation_scores([""], ["abc"])
    assert empty["chrf"] == 0.0 and empty["rouge_l"] == 0.0


def test_generation_scores_exact_match_and_rouge_tokenizer():
    s = generation_scores(
        ["Paris.", "  The  Cat  ", "dog", "Hello, World!"], ["paris", "the cat", "cat", "hello world"]
    )
    # normalize_answer keeps the inner comma of "Hello, World!", so that pair is not an exact match...
    assert [e["exact"] for e in s["per_example"]] == [True, True, False, False]
    assert s["exact_match"] == pytest.approx(0.5)
    # ...but rouge-score lowercases and drops punctuation, so for ROUGE-L it is a full match
    assert s["per_example"][3]["rouge_l"] == 1.0
    # ...and keeps only ASCII [a-z0-9]: text with none of it has no tokens, so even identical text scores 0
    assert generation_scores(["日本語"], ["日本語"])["rouge_l"] == 0.0


def test_generation_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        generation_scores([], [])


# --- bits per byte, latency -----------------------------------------------------------------------


def test_bits_per_byte():
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)  # 10 bits over 5 bytes
    assert bits_per_byte(1.0, 1) == pytest.approx(1.4426950408889634)  # 1 nat = 1/ln 2 bits
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_latency_summary():
    s = latency_summary([0.1, 0.2, 0.3, 0.4, 1.0], [10, 20, 30, 40, 100])
    # ms sorted 100, 200, 300, 400, 1000; p50 at position 4*0.5 = 2 -> 300;
    # p90 at position 4*0.9 = 3.6 -> 400 + 0.6*(1000-400) = 760; tokens/s = 200 / 2.0 = 100
    assert s == pytest.approx({"latency_ms_p50": 300.0, "latency_ms_p90": 760.0, "tokens_per_s": 100.0, "requests": 5})
    two = latency_summary([0.2, 0.1], [1, 2])
    # 100, 200 ms: p50 = 150, p90 = 100 + 0.9*100 = 190; 3 tokens / 0.3 s = 10
    assert two == pytest.approx({"latency_ms_p50": 150.0, "latency_ms_p90": 190.0, "tokens_per_s": 10.0, "requests": 2})
    with pytest.raises(ValueError):
        latency_summary([], [])
    with pytest.raises(ValueError):
        latency_summary([0.1], [1, 2])


# --- break-even -----------------------------------------------------------------------------------


def test_break_even_defaults():
    s = break_even(3600, 1800, tuned_request_cpu_seconds=0.5, alternative_request_cpu_seconds=2.0)
    assert s["saved_cpu_seconds_per_request"] == pytest.approx(1.5)
    assert s["requests"] == 2400  # 3600 / 1.5 exactly
    # 1 CPU hour * 0.045 + 0.5 GPU hour * 2.50 = 0.045 + 1.25
    assert s["training_cost_usd"] == pytest.approx(1.295)
    # 1.5 s * 1000 / 3600 * 0.045 = 0.01875
    assert s["saved_usd_per_1k_requests"] == pytest.approx(0.01875)
    # 1.295 / 0.00001875 = 69066.67 -> 69067
    assert s["requests_to_pay_back_cost"] == 69067
    assert s["prices"] == DEFAULT_PRICES
    assert s["training_cpu_seconds"] == 3600 and s["training_gpu_seconds"] == 1800


def test_break_even_rounds_up_and_overrides():
    assert break_even(100, 0, 0.5, 3.5)["requests"] == 34  # 100 / 3 = 33.3 -> 34
    assert break_even(1.1, 0, 0.0, 0.1)["requests"] == 11  # 11 by hand, 11.000000000000002 in floats
    s = break_even(3600, 1800, 0.5, 2.0, prices={"cpu_core_hour_usd": 0.09})
    # 0.09 + 1.25 = 1.34; per request 1.5/3600*0.09 = 3.75e-5; 1.34 / 3.75e-5 = 35733.3 -> 35734
    assert s["training_cost_usd"] == pytest.approx(1.34)
    assert s["saved_usd_per_1k_requests"] == pytest.approx(0.0375)
    assert s["requests_to_pay_back_cost"] == 35734
    assert s["prices"] == {"cpu_core_hour_usd": 0.09, "gpu_hour_usd": 2.50}
    assert DEFAULT_PRICES == {"cpu_core_hour_usd": 0.045, "gpu_hour_usd": 2.50}  # not mutated


def test_break_even_never_pays_back():
    for tuned, alternative in [(2.0, 2.0), (3.0, 2.0)]:
        s = break_even(3600, 0, tuned, alternative)
        assert s["requests"] is None and s["requests_to_pay_back_cost"] is None
    assert break_even(3600, 0, 3.0, 2.0)["saved_cpu_seconds_per_request"] == pytest.approx(-1.0)


def test_break_even_price_validation():
    with pytest.raises(ValueError, match="gpu_hour'.*cpu_core_hour_usd, gpu_hour_usd"):
        break_even(1, 1, 0.1, 0.2, prices={"gpu_hour": 3.0})
    with pytest.raises(ValueError, match="negative"):
        break_even(1, 1, 0.1, 0.2, prices={"gpu_hour_usd": -1})
    with pytest.raises(ValueError, match="number"):
        break_even(1, 1, 0.1, 0.2, prices={"gpu_hour_usd": "cheap"})


def test_load_prices(tmp_path):
    yml = tmp_path / "prices.yaml"
    yml.write_text("gpu_hour_usd: 1.25\n")
    assert load_prices(yml) == {"cpu_core_hour_usd": 0.045, "gpu_hour_usd": 1.25}
    js = tmp_path / "prices.json"
    js.write_text('{"cpu_core_hour_usd": 0.1}')
    assert load_prices(js) == {"cpu_core_hour_usd": 0.1, "gpu_hour_usd": 2.50}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_prices(empty) == DEFAULT_PRICES


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.yaml", "gpu_hour_usd: [1,\n", "could not parse"),
        ("bad.json", "{gpu_hour_usd: 1}", "could not parse"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping"),
        ("unknown.yaml", "tpu_hour_usd: 1\n", "unknown price key 'tpu_hour_usd'"),
        ("negative.yaml", "gpu_hour_usd: -2\n", "negative"),
    ],
)
def test_load_prices_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TunesmithError, match=message) as info:
        load_prices(path)
    assert name in str(info.value)


def test_load_prices_missing_file(tmp_path):
    with pytest.raises(TunesmithError, match="nope.yaml: prices file not found"):
        load_prices(tmp_path / "nope.yaml")
