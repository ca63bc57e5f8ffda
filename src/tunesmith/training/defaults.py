"""Defaults chosen from the data, and the training-time estimate.

The rule (also in the README), with n = training examples after the validation split
(for raw text: packed blocks):

    epochs      3 if n <= 200, 2 if n <= 1000, else 1
    lr          LoRA 3e-4 if n < 1000 else 2e-4;  full fine-tuning 3e-5 if n < 1000 else 2e-5;
                DPO 2e-4 if n < 1000 else 1e-4  (times lr_multiplier)
    lora_rank   8 if n < 1000, 16 if n < 10000, else 32     (alpha = 2 * rank; LoRA and DPO)
    max_length  raw text: 512-token blocks (less if the whole corpus is shorter);
                otherwise the 99th percentile of rendered lengths, rounded up to a multiple of 32,
                between 64 and 2048 (and never above the model's context)
    eval_every  4 validation passes per epoch
    checkpoint_every  about 5 checkpoints per run, at most 20 steps apart (a short run that is stopped
                loses a few steps, not all of them)
    precision   bf16 where it is native (CUDA with bf16, or a CPU with AMX or AVX512-BF16), else fp32

Small data gets more passes and a higher rate because each pass is only a few steps; larger
data gets a larger rank because there is more to fit.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from tunesmith.core.config import ResolvedConfig, Task, TrainConfig, default_name
from tunesmith.data.check import default_max_length

# Share of the fp32 matmul peak our loop reaches on nominal model FLOPs, used only for estimates.
# Calibrated on the demo (2-core CPU, SmolLM2-135M, LoRA, classification): 385 tokens/s
# x 4 x 134.5M params = 207 GFLOP/s of nominal work against 332 GFLOP/s from matmul_peak_gflops().
# With bf16 on the same CPU (AMX) the step is bound by the non-matmul work, not the bf16 peak, so the
# estimate stays on the fp32 peak: 634 tokens/s x 4 x 134.5M = 341 GFLOP/s, against fp32 peaks of
# 245-330 GFLOP/s measured on that machine (bench/RESULTS.md, train-speed); 1.2 errs on the slow side.
TRAINING_EFFICIENCY = {"fp32": 0.62, "bf16": 1.2}


# Peak learning rate by method, (below 1000 examples, from 1000 on). DPO's LoRA rate is below SFT's
# (it pushes margins, which overshoot easily) but far above the 5e-7..5e-6 of full-weight DPO recipes:
# on 40 reviewed pairs (examples/corrections, 15 steps) 5e-5 moved the held-out margin by 2 nats of
# 32 and flipped none; 5e-4 flipped all of them within 8 steps.
DEFAULT_LR = {"lora": (3e-4, 2e-4), "full": (3e-5, 2e-5), "dpo": (2e-4, 1e-4)}


def resolve(
    config: TrainConfig,
    n_train: int,
    lengths: list[int],
    model_max_length: int | None,
    task: Task,
    labels: list[str] | None = None,
) -> ResolvedConfig:
    """A copy of ``config`` with every auto field filled in from the data and the hardware."""
    updates: dict = {"task": task, "name": config.name or default_name(config.data)}
    if config.epochs is None:
        updates["epochs"] = 3 if n_train <= 200 else 2 if n_train <= 1000 else 1
    if config.lr is None:
        updates["lr"] = DEFAULT_LR[config.method][n_train >= 1000] * config.lr_multiplier
    if config.uses_adapter:
        rank = config.lora_rank or (8 if n_train < 1000 else 16 if n_train < 10000 else 32)
        updates["lora_rank"] = rank
        updates["lora_alpha"] = config.lora_alpha or 2.0 * rank
    if config.max_length is None:
        updates["max_length"] = default_max_length(lengths, task, model_max_length)
    if config.micro_batch_size is None:
        updates["micro_batch_size"] = config.batch_size
    per_epoch = steps_per_epoch(n_train, config.batch_size)
    if config.checkpoint_every is None:
        epochs = config.epochs if config.epochs is not None else updates["epochs"]
        updates["checkpoint_every"] = default_checkpoint_every(per_epoch * epochs)
    if config.eval_every is None:
        # Rounded up, so the fourth pass of an epoch lands on its last step rather than one step before it.
        updates["eval_every"] = max(1, math.ceil(per_epoch / 4))
    if labels is not None:
        updates["labels"] = labels
    if config.precision == "auto":
        updates["precision"] = "bf16" if native_bf16() else "fp32"
    resolved = config.model_copy(update=updates)
    return ResolvedConfig.model_validate(resolved.model_dump())  # re-run the cross-field checks


def default_checkpoint_every(total_steps: int) -> int:
    """About 5 checkpoints per run, never more than 20 steps apart."""
    return max(1, min(20, math.ceil(total_steps / 5)))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return max(1, math.ceil(n_rows / batch_size))


_PEAK_GFLOPS: dict[torch.dtype, float] = {}


def matmul_peak_gflops(dtype: torch.dtype = torch.float32) -> float:
    """Measured CPU matmul throughput of this machine in ``dtype`` (once per process, ~0.3 s)."""
    if dtype not in _PEAK_GFLOPS:
        size = 1024
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        _PEAK_GFLOPS[dtype] = 2 * size**3 / best / 1e9
    return _PEAK_GFLOPS[dtype]


def native_bf16() -> bool:
    """Whether bf16 is the faster compute precision here: CUDA with bf16 support, or a CPU with bf16
    matrix hardware (``cpu_bf16_unit``); elsewhere bf16 is converted to fp32 and slower.

    Read from the hardware's capabilities, not timed: a timing taken while the machine is busy once
    chose fp32 for one of two runs with the same config, and the same seed gave different models."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_unit() is not None


def cpu_bf16_unit() -> str | None:
    """This CPU's bf16 matrix hardware: "AMX" (tiles: Intel Sapphire Rapids and later), "AVX512-BF16"
    (dot-product instructions: Intel Cooper Lake, AMD Zen 4 and later), or None. A 1024 x 1024 matmul
    in bf16 measured 4.5-8x the fp32 one with AMX, 4.5x with AVX512-BF16 (AMD EPYC, 2 cores), where
    LoRA training ran 2.1x faster (bench/precision_speed.py)."""
    checks = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    if all(hasattr(torch.cpu, check) for check in checks.values()):
        return next((unit for unit, check in checks.items() if getattr(torch.cpu, check)()), None)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None


def estimate_seconds(tokens: int, n_params: int, method: str) -> float:
    """Training time for ``tokens`` processed tokens at the default precision: nominal FLOPs over the
    expected throughput."""
    # LoRA: forward and activation gradients; full: weight gradients too; DPO (LoRA): plus the
    # reference model's forward pass over the same tokens.
    flops_per_token = {"lora": 4, "full": 6, "dpo": 6}[method] * n_params
    efficiency = TRAINING_EFFICIENCY["bf16" if native_bf16() else "fp32"]
    return tokens * flops_per_token / (matmul_peak_gflops() * 1e9 * efficiency)
