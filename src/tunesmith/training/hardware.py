"""What this machine computes bf16 on, read from its capabilities: the default precision
(``training.defaults.resolve``) and the time estimate (``training.estimate``) both follow it."""

from __future__ import annotations

from pathlib import Path

import torch


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
