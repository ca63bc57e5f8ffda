"""Where models run and in which precision: the device, and the dtype of weights used for inference."""

from __future__ import annotations

import torch

from tunesmith.core.config import PRECISIONS
from tunesmith.core.errors import TunesmithError


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision_dtype(precision: str = "auto") -> torch.dtype:
    """The weights' dtype for using a model (eval, generate, chat, serve). ``auto``: bf16 on a GPU that
    has it, else fp32. On a CPU with AMX bf16 is opt-in: measured there it scores labels 3.3-3.9x and
    generates batches 1.4-1.5x faster, but decodes a single stream 8-25% slower, and it moved the
    fine-tuned demo classifier from 95% to 93% accuracy (bench/RESULTS.md)."""
    if precision not in PRECISIONS:
        raise TunesmithError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32
