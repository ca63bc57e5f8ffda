"""Loading models and tokenizers, and putting LoRA adapters on them (PEFT)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from tunesmith.config import PRECISIONS
from tunesmith.errors import TunesmithError


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


def quiet_transformers() -> None:
    """Progress bars and advisory warnings from transformers would drown ours."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def load_tokenizer(folder: Path | str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except OSError as err:
        raise TunesmithError(f"cannot load a tokenizer from {folder}: {err}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TunesmithError(f"{folder}: the tokenizer has no chat template; tunesmith needs one "
                             "to render chat data the way the model is used")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: Path | str, dtype: torch.dtype | None = None):
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or precision_dtype())
    except OSError as err:
        raise TunesmithError(f"cannot load a model from {folder}: {err}") from None
    return model.to(device())


def add_lora(model, rank: int, alpha: float, dropout: float, targets):
    """Wrap ``model`` with fresh LoRA adapters (PEFT). ``targets``: module names or 'all-linear'."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter(model, adapter_folder: Path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_folder), is_trainable=trainable)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
