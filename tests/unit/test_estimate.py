"""The data check's training-time estimate (training.estimate): the tokens the loop computes, the range,
and the time and cost on a rented GPU. The machine's speed is replaced by fixed figures: no timings."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.data.check import check_data
from tunesmith.training import estimate
from tunesmith.training.estimate import (
    CPU_EFFICIENCY,
    CPU_RANGE,
    FLOPS_PER_PARAM,
    GPU_BF16_PEAK_TFLOPS,
    GPU_EFFICIENCY,
    GPU_PRICE_PER_HOUR,
    GPU_RANGE,
    GPU_STEP_SECONDS,
    estimate_training,
    matmul_peak_gflops,
)

PEAK = 200.0  # GFLOP/s, this machine's fp32 matmul peak in these tests
N = 135_000_000


@pytest.fixture
def cpu(monkeypatch):
    """A CPU without CUDA whose bf16 unit the test sets: cpu("AMX"), cpu(None) for fp32 training."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(estimate, "matmul_peak_gflops", lambda *args, **kwargs: PEAK)

    def set_unit(unit: str | None) -> None:
        monkeypatch.setattr(estimate, "cpu_bf16_unit", lambda: unit)
        monkeypatch.setattr(estimate, "native_bf16", lambda: unit is not None)

    return set_unit


def classify_report(write_jsonl, tokenizer, n: int = 20):
    rows = [{"text": f"the soup was great {i}", "label": "good" if i % 2 else "bad"} for i in range(n)]
    return check_data(write_jsonl("cls.jsonl", rows), tokenizer=tokenizer)


def test_a_shared_prefix_is_computed_once_per_batch(write_jsonl, tiny_tokenizer, cpu):
    cpu("AMX")
    report = classify_report(write_jsonl, tiny_tokenizer)
    result = estimate_training(report, N, "lora", epochs=1, batch_size=8)
    nominal = report.tokens_per_epoch()
    # every row starts with the system turn and the instruction: 20 rows in 3 batches compute it 3 times
    prefix = (nominal - result.tokens) / (20 - 3)
    assert prefix == int(prefix) and prefix > 20
    assert result.tokens < nominal
    assert result.seconds == pytest.approx(result.tokens * 4 * N / (PEAK * 1e9 * CPU_EFFICIENCY["AMX"]))
    assert result.precision == "bf16" and result.method == "lora"
    assert (result.low, result.high) == pytest.approx((result.seconds * CPU_RANGE[0], result.seconds * CPU_RANGE[1]))
    assert result.low < result.seconds < result.high
    # one row a batch shares nothing
    assert estimate_training(report, N, "lora", epochs=1, batch_size=1).tokens == nominal


def test_the_efficiency_follows_the_cpus_bf16_unit(write_jsonl, tiny_tokenizer, cpu):
    report = classify_report(write_jsonl, tiny_tokenizer)
    seconds = {}
    for unit in ("AMX", "AVX512-BF16", None):
        cpu(unit)
        seconds[unit] = estimate_training(report, N, "lora").seconds
    assert seconds["AVX512-BF16"] / seconds[None] == pytest.approx(CPU_EFFICIENCY[None] / CPU_EFFICIENCY["AVX512-BF16"])
    assert seconds[None] > seconds["AMX"] > seconds["AVX512-BF16"]  # per fp32 peak: the measured shares
    cpu(None)
    assert estimate_training(report, N, "lora").precision == "fp32"


def test_dpo_costs_the_reference_pass_too(write_jsonl, tiny_tokenizer, cpu):
    cpu("AMX")
    report = classify_report(write_jsonl, tiny_tokenizer)
    lora, dpo = (estimate_training(report, N, method, epochs=1, batch_size=8) for method in ("lora", "dpo"))
    assert dpo.seconds / lora.seconds == pytest.approx(FLOPS_PER_PARAM["dpo"] / FLOPS_PER_PARAM["lora"])


def test_preference_pairs_are_two_rows_and_raw_text_shares_no_prefix(write_jsonl, tiny_tokenizer, cpu):
    cpu(None)
    pairs = [{"prompt": f"Say hi {i}", "chosen": "Hello there!", "rejected": "no"} for i in range(16)]
    report = check_data(write_jsonl("pairs.jsonl", pairs), tokenizer=tiny_tokenizer)
    result = estimate_training(report, N, "dpo", epochs=1, batch_size=8)
    prefix = (report.tokens_per_epoch() - result.tokens) / (32 - 2)  # 32 rows in 2 steps
    assert prefix == int(prefix) and prefix > 0

    text = write_jsonl("text.jsonl", [{"text": f"The quick brown fox {i} jumps over the lazy dog."} for i in range(30)])
    report = check_data(text, tokenizer=tiny_tokenizer)
    assert estimate_training(report, N, "lora", epochs=1).tokens == report.tokens_per_epoch()


def test_the_rented_gpu_has_a_floor_per_step_and_a_price(write_jsonl, tiny_tokenizer, cpu):
    cpu("AMX")
    report = classify_report(write_jsonl, tiny_tokenizer)
    gpu = estimate_training(report, N, "lora", epochs=1, batch_size=8).gpu
    assert gpu is not None and gpu.price_per_hour == GPU_PRICE_PER_HOUR and gpu.price_date
    assert gpu.seconds == pytest.approx(3 * GPU_STEP_SECONDS)  # a few tiny steps: the per-step floor
    assert gpu.dollars == pytest.approx(gpu.seconds / 3600 * GPU_PRICE_PER_HOUR)
    assert (gpu.low, gpu.high) == pytest.approx((gpu.seconds * GPU_RANGE[0], gpu.seconds * GPU_RANGE[1]))
    # a big model's FLOPs outweigh the floor; the GPU computes every nominal token (no shared-prefix layout)
    big = 70_000_000_000
    gpu = estimate_training(report, big, "lora", epochs=1, batch_size=8).gpu
    flops = report.tokens_per_epoch() * 4 * big
    assert gpu is not None
    assert gpu.seconds == pytest.approx(flops / (GPU_BF16_PEAK_TFLOPS * 1e12 * GPU_EFFICIENCY))
    assert gpu.seconds > 3 * GPU_STEP_SECONDS


def test_a_local_gpu_is_estimated_with_its_own_peak(write_jsonl, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(estimate, "native_bf16", lambda: True)
    peaks = []
    monkeypatch.setattr(estimate, "matmul_peak_gflops", lambda dtype, device: peaks.append((dtype, device)) or 1e5)
    report = classify_report(write_jsonl, tiny_tokenizer)
    result = estimate_training(report, N, "lora", epochs=1, batch_size=8)
    assert peaks == [(torch.bfloat16, "cuda")]
    assert result.tokens == report.tokens_per_epoch()  # no shared-prefix layout on a GPU
    assert result.seconds == pytest.approx(max(3 * GPU_STEP_SECONDS, result.tokens * 4 * N / (1e14 * GPU_EFFICIENCY)))


def test_the_measured_peak_is_positive_and_kept():
    first = matmul_peak_gflops(torch.float32)
    assert math.isfinite(first) and first > 0
    assert matmul_peak_gflops(torch.float32) == first  # measured once per process


def test_the_estimate_is_for_the_run_the_defaults_choose(write_jsonl, tiny_tokenizer, cpu):
    # 20 labelled examples: 18 after the validation split; a label is too few target tokens to shrink the
    # batch, so 3 steps a pass at batch 8 and the most passes (10) towards 100 optimizer steps
    cpu("AMX")
    report = classify_report(write_jsonl, tiny_tokenizer)
    run = estimate_training(report, N, "lora")
    assert (run.epochs, run.batch_size) == (10, 8)
    one = estimate_training(report, N, "lora", epochs=1, batch_size=8)
    assert run.tokens == 10 * one.tokens and run.seconds == pytest.approx(10 * one.seconds)
