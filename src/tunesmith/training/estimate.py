"""The data check's training-time estimate: a run at the default settings on this machine, the range it
may fall in, and the same run on a rented GPU with what that costs (``workflows.check``, printed by
``tunesmith data check``).

    seconds = tokens the loop computes x FLOPs per token / (this machine's measured matmul peak x efficiency)

The efficiencies are measured, not theoretical: each comes from a real training run whose figures are
quoted next to it. They are shares of the *fp32* matmul peak even where training computes in bf16: a
step of this small model is bound by its element-wise work (norms, rotary, activations, casts), which
tracks the CPU's vector speed, measured by the fp32 peak, better than the bf16 matrix units do.
"""

from __future__ import annotations

import math
import time

import torch

from tunesmith.core.config import TrainConfig
from tunesmith.data.batching import Row, shared_prefix_length
from tunesmith.data.check import DataReport, GpuCost, TrainingEstimate
from tunesmith.data.prepare import validation_size
from tunesmith.data.render import Rendered, RenderedPair
from tunesmith.training.defaults import epochs_and_batch, may_raise_epochs
from tunesmith.training.hardware import cpu_bf16_unit, native_bf16

# Nominal FLOPs per token and parameter. LoRA: the forward pass (2) and the activation gradients (2;
# the adapters' own weight gradients are negligible); full fine-tuning adds the weight gradients (2);
# DPO (LoRA) adds the reference model's forward pass over the same tokens (2).
FLOPS_PER_PARAM = {"lora": 4, "full": 6, "dpo": 6}

# Share of the fp32 matmul peak (``matmul_peak_gflops``) the CPU loop reaches, on the FLOPs of the
# tokens it computes. With the CPU training attention, the rows of a batch that share a prefix (the
# system prompt and instruction: 46 of ~80 tokens of a sentiment row, 24 of ~58 of a chat-corpus row)
# compute it once (data.batching.shared_prefix_length). The estimate counts the tokens computed rather
# than folding that saving into the efficiency, because the saving depends on the data (half the work
# of short classification rows, a third of short chat rows, little of long ones), while the speed per
# computed token varies far less (below: 0.95-1.13 across data sets and thread counts). Keyed by the
# CPU's bf16 unit (None: no native bf16, training in fp32). Where each figure comes from:
#   AMX, 1.0: this machine (Intel Xeon with AMX, 2 cores), LoRA in bf16, one epoch of 180 rows at the
#     default settings, timed by the loop (LoopResult.train_seconds), the fastest of 2 runs, on 1 torch
#     thread with the fp32 peak also measured on 1 thread (178 GFLOP/s): another engineer's training
#     runs held the machine's two cores all along (load 2.3-3.3), and two threads each from two
#     processes stall each other, so one thread is the honest measurement there:
#       sentiment-movie, first 200 lines: 7,195 of 14,417 tokens computed in 19.2 s: 1.13
#       chat-corpus, first 200 lines: 6,657 of 10,425 tokens computed in 21.2 s: 0.95
#     and on the quiet machine with 2 threads, bench/RESULTS.md train-speed (900 sentiment rows, batch
#     16: 33,032 of 71,810 tokens computed in 74.2 s at an fp32 peak of 242 GFLOP/s): 0.99.
#   AVX512-BF16, 1.4: bench/RESULTS.md, precision section (AMD EPYC, 2 cores, no AMX): 1177 nominal
#     tokens/s of examples/reviews in bf16 at an fp32 peak of 205 GFLOP/s; that epoch computes 49.4% of
#     its nominal tokens (11,323 of 22,915), so 1177 x 0.494 x 4 x 134.5M = 313 GFLOP/s = 1.53 x 205.
#     Classification; chat ran 16% less efficiently than classification on this machine, hence 1.4.
#   fp32, 0.68: the same EPYC run in fp32, 557 tokens/s: 557 x 0.494 x 4 x 134.5M = 148 GFLOP/s =
#     0.72 x 205; this machine in fp32 (precision forced; sentiment as above, 1 thread): 33.9 s, 0.65.
# The figure this replaces (1.2 for bf16 on nominal tokens, before the shared-prefix layout) made the
# estimate 1.9x the time of the sentiment run above and 2.6x that of the EPYC's.
CPU_EFFICIENCY: dict[str | None, float] = {"AMX": 1.0, "AVX512-BF16": 1.4, None: 0.68}
# How far off it may be, as factors of the estimate: the data sets above differ by +-10% in efficiency,
# the fp32 peak this machine measured moved between 242 and 332 GFLOP/s from run to run, runs on a
# shared 2-core machine vary by up to +-30% from one minute to the next (bench/RESULTS.md), and a busy
# machine is only ever slower.
CPU_RANGE = (0.75, 1.5)

# The same run on a common rented GPU. Not measured here (no GPU was available): the price is an
# assumption with its date, the speed the GPU's bf16 peak times a conservative efficiency, with a floor
# per optimizer step. On a GPU the loop computes every nominal token (the shared-prefix layout is the CPU
# attention's), so the GPU figure uses those.
GPU_NAME = "NVIDIA H100 80GB (SXM)"
# US dollars per GPU-hour on demand at the GPU clouds (Lambda, RunPod and the like list $2-3.50), as of
# mid-2025; hyperscalers charge 2-3x that. Re-read it when it matters.
GPU_PRICE_PER_HOUR = 2.99
GPU_PRICE_DATE = "2025-06"
GPU_BF16_PEAK_TFLOPS = 989.0  # dense bf16 tensor-core peak of the H100 SXM (NVIDIA's datasheet)
# A 135M-parameter model (hidden size 576) in batches of 8 short rows gives matrices far too small to
# fill an H100: 5% of the peak is conservative for its matmuls.
GPU_EFFICIENCY = 0.05
# Per optimizer step at least: an eager PyTorch step of a 30-layer model with LoRA on every linear layer
# launches a few thousand small kernels (forward, backward, clipping, AdamW), ~80 ms whatever the tokens.
GPU_STEP_SECONDS = 0.08
GPU_RANGE = (0.5, 2.0)


def estimate_training(
    report: DataReport, n_params: int, method: str, epochs: int | None = None, batch_size: int | None = None
) -> TrainingEstimate:
    """A run at the defaults ``training.defaults`` picks for this data (or the ``epochs`` and ``batch_size``
    given) with ``method`` at the default precision, on this machine and on a rented GPU. Each epoch counts
    every example once: the share ``train`` holds out for validation is not trained on but read forward-only
    4 times an epoch, about the same work, so that stands for the loop with its validation passes."""
    entries, rows = _entries_and_rows(report)
    n_val = validation_size(entries, TrainConfig.model_fields["val_fraction"].default)
    targets = report.max_length or 512 if report.task == "text" else _targets_per_row(report)
    epochs, batch_size = epochs_and_batch(
        entries - n_val, report.task, targets, epochs, batch_size, raise_epochs=may_raise_epochs(method, n_val > 0)
    )
    nominal = report.tokens_per_epoch() * epochs
    steps_one = math.ceil(entries / batch_size)
    steps = steps_one * epochs
    flops_per_token = FLOPS_PER_PARAM[method] * n_params
    gpu_seconds = _gpu_seconds(nominal * flops_per_token, steps, GPU_BF16_PEAK_TFLOPS * 1e12)
    gpu = GpuCost(
        gpu=GPU_NAME,
        price_per_hour=GPU_PRICE_PER_HOUR,
        price_date=GPU_PRICE_DATE,
        seconds=gpu_seconds,
        low=gpu_seconds * GPU_RANGE[0],
        high=gpu_seconds * GPU_RANGE[1],
        dollars=gpu_seconds / 3600 * GPU_PRICE_PER_HOUR,
    )
    precision = "bf16" if native_bf16() else "fp32"
    if torch.cuda.is_available():  # this machine trains on its own GPU: the GPU rule with its measured peak
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        seconds = _gpu_seconds(nominal * flops_per_token, steps, matmul_peak_gflops(dtype, "cuda") * 1e9)
        tokens, spread = nominal, GPU_RANGE
    else:
        tokens = max(0, nominal - _shared_prefix(report) * (rows - steps_one) * epochs)
        seconds = cpu_seconds(tokens, n_params, method, cpu_bf16_unit() if precision == "bf16" else None)
        spread = CPU_RANGE
    return TrainingEstimate(
        seconds=seconds,
        low=seconds * spread[0],
        high=seconds * spread[1],
        tokens=tokens,
        method=method,
        precision=precision,
        epochs=epochs,
        batch_size=batch_size,
        gpu=gpu,
    )


def cpu_seconds(tokens: int, n_params: int, method: str, unit: str | None) -> float:
    """The CPU loop's time for ``tokens`` computed tokens, training in bf16 on ``unit`` (None: fp32)."""
    efficiency = CPU_EFFICIENCY.get(unit, CPU_EFFICIENCY[None])
    return tokens * FLOPS_PER_PARAM[method] * n_params / (matmul_peak_gflops() * 1e9 * efficiency)


def _gpu_seconds(flops: float, steps: int, peak_flops: float) -> float:
    return max(steps * GPU_STEP_SECONDS, flops / (peak_flops * GPU_EFFICIENCY))


def _entries_and_rows(report: DataReport) -> tuple[int, int]:
    """(what a batch counts, rows in the forward passes of an epoch): raw text is packed into blocks of
    max_length, one row each; a preference pair is one entry of two rows; any other example one of one."""
    if report.task == "text":
        blocks = math.ceil(report.tokens_per_epoch() / (report.max_length or 1))
        return blocks, blocks
    examples = len(report.rendered)
    return examples, 2 * examples if report.task == "preference" else examples


def _targets_per_row(report: DataReport) -> float:
    """Mean target tokens of a training row (a preference pair: its chosen answer)."""
    cap = report.max_length or 0
    counts = [(r.chosen if isinstance(r, RenderedPair) else r).truncated(cap).n_target for r in report.rendered]
    return sum(counts) / max(1, len(counts))


def _shared_prefix(report: DataReport) -> int:
    """Tokens every row begins with before any target (the system prompt and instruction): the loop
    computes them once per batch. Raw text blocks share none (packed rows never lay out a prefix)."""
    if report.task == "text":
        return 0
    cap = report.max_length or 0
    renderings: list[Rendered] = []
    for r in report.rendered:
        renderings += [r.chosen, r.rejected] if isinstance(r, RenderedPair) else [r]
    return shared_prefix_length([Row.from_segments([r.truncated(cap)]) for r in renderings])


_PEAK_GFLOPS: dict[tuple[torch.dtype, str], float] = {}


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Measured matmul throughput of this machine in ``dtype`` (once per process: ~0.3 s on a CPU).
    The fastest of 5 runs: a busy machine lowers it, as it slows the training it stands for."""
    if (dtype, device) not in _PEAK_GFLOPS:
        size = 1024 if device == "cpu" else 8192
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(5):
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        _PEAK_GFLOPS[(dtype, device)] = 2 * size**3 / best / 1e9
    return _PEAK_GFLOPS[(dtype, device)]
