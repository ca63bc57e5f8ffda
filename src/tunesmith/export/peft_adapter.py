"""The LoRA adapter in PEFT's own format (``--format peft``), for ``PeftModel.from_pretrained`` and vLLM's LoRA
serving, and what vLLM refuses or silently ignores in an adapter, said before anything is written.

The embedded base's weights are dequantised from its 4-bit GGUF and are not the hub's bf16 SmolLM2: an adapter
trained on them belongs with them. The export names its base by the sha256 of its weights, and ``--with-base``
writes that base (with any earlier fine-tunes it builds on merged in) beside the adapter, under ``base/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunesmith.export.hf import write_hf, write_tokenizer

# vLLM's LoRAConfig.max_lora_rank takes one of these (its default is 16).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
BASE_FOLDER = "base"


def vllm_problems(adapter_config: dict) -> tuple[list[str], list[str]]:
    """(what vLLM refuses to load, what it loads but ignores) in a PEFT adapter_config.json."""
    refused, ignored = [], []
    if adapter_config.get("modules_to_save"):
        refused.append(f"modules_to_save {adapter_config['modules_to_save']} (fully trained modules)")
    if adapter_config.get("use_dora"):
        refused.append("DoRA (use_dora)")
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        refused.append("trained bias terms")
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    heads = [name for name in targets if name in ("lm_head", "embed_tokens")]
    if heads:
        refused.append(f"adapters on {', '.join(heads)} (recent vLLM serves LoRA on linear layers only)")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(pattern):
            ignored.append(f"{pattern} (older vLLM releases drop it and apply r and lora_alpha everywhere)")
    return refused, ignored


def vllm_max_lora_rank(adapter_config: dict) -> int:
    """The smallest ``--max-lora-rank`` a vLLM server needs for this adapter."""
    ranks = [adapter_config["r"], *(adapter_config.get("rank_pattern") or {}).values()]
    return next(value for value in VLLM_MAX_LORA_RANKS if value >= max(ranks))


def write_peft(adapter: Path, tokenizer_source: Path, folder: Path, base_path: str, base_model=None) -> dict:
    """The adapter's files and the tokenizer into ``folder``, its config pointing at ``base_path``; with
    ``base_model`` (fp32, earlier fine-tunes merged) that base is written under ``folder/base``. Returns the
    adapter's config as written."""
    for file in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy2(adapter / file, folder / file)
    write_tokenizer(tokenizer_source, folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_path
    config["inference_mode"] = True
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    if base_model is not None:
        (folder / BASE_FOLDER).mkdir()
        write_hf(base_model, tokenizer_source, folder / BASE_FOLDER, "fp32")
    return config
