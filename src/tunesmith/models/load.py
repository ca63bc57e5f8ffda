"""Loading models and tokenizers, and putting LoRA adapters on them (PEFT)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from tunesmith.core.errors import TunesmithError
from tunesmith.models.precision import device, precision_dtype


def quiet_transformers() -> None:
    """Progress bars and advisory warnings from transformers would drown ours."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)
    # PEFT (0.21) reads a model attribute transformers deprecated in 5.x; the cause is PEFT's, not a call of ours.
    # Only that warning is silenced: any other one reaches the terminal, where tests/integration/test_quiet_terminal.py
    # catches it in the README's commands.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def load_tokenizer(folder: Path | str):
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except OSError as err:
        raise TunesmithError(f"cannot load a tokenizer from {folder}: {err}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TunesmithError(
            f"{folder}: the tokenizer has no chat template; tunesmith needs one "
            "to render chat data the way the model is used"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(folder: Path | str, dtype: torch.dtype | None = None):
    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or precision_dtype())
    except OSError as err:
        raise TunesmithError(f"cannot load a model from {folder}: {err}") from None
    # transformers decorates PreTrainedModel.to with functools.wraps, whose type mypy does not bind as a method
    return model.to(device())  # type: ignore[arg-type]


# peft is imported where an adapter is made or loaded: a second of start-up that generating from a base model,
# and every command that loads no model, need not pay.
def add_lora(model, rank: int, alpha: float, dropout: float, targets):
    """Wrap ``model`` with fresh LoRA adapters (PEFT). ``targets``: module names or 'all-linear'."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT annotates int; a float works (scaling = alpha / r)
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
