"""The merged Hugging Face folder (``--format hf``), and the tokenizer files every folder export carries.

The files are written so that older readers load them too: vLLM and transformers 4.x read the chat template from
``tokenizer_config.json`` and do not know transformers 5's ``TokenizersBackend`` class name or its
``rope_parameters``, so each is also written the way they expect."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GenerationConfig

from tunesmith.models.load import load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def write_tokenizer(source: Path, folder: Path):
    """tokenizer.json, tokenizer_config.json (with the chat template in it) and chat_template.jinja; returns the
    tokenizer."""
    tokenizer = load_tokenizer(source)
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = tokenizer.chat_template
    if config.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's name for the fast tokenizer
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        # transformers 4.x's PreTrainedTokenizerFast adds token_type_ids by default, which a causal LM's generate()
        # refuses; say what the model takes.
        config.setdefault("model_input_names", list(tokenizer.model_input_names))
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (folder / "chat_template.jinja").write_text(tokenizer.chat_template)
    return tokenizer


def end_of_turn_ids(tokenizer, model_config: dict) -> list[int]:
    """The tokens a generation stops at: the tokenizer's end of turn (what tunesmith stops at) first, then the
    model config's own end of text if it differs."""
    ids = [tokenizer.eos_token_id]
    configured = model_config.get("eos_token_id")
    for token in configured if isinstance(configured, list) else [configured]:
        if token is not None and token not in ids:
            ids.append(token)
    return ids


def write_hf(model, tokenizer_source: Path, folder: Path, dtype: str) -> None:
    """``model`` (fp32, adapters merged) saved as safetensors in ``dtype``; the model itself is left as it is."""
    # Tied weights (the head and the embedding) stay one tensor, which save_pretrained then writes once.
    cast: dict[int, torch.Tensor] = {}
    state = {
        name: cast.setdefault(tensor.data_ptr(), tensor.detach().to(DTYPES[dtype]).contiguous())
        for name, tensor in model.state_dict().items()
    }
    model.save_pretrained(folder, state_dict=state, safe_serialization=True)
    tokenizer = write_tokenizer(tokenizer_source, folder)
    config = clean_config(json.loads((folder / "config.json").read_text()), dtype)
    eos = end_of_turn_ids(tokenizer, config)
    config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = GenerationConfig(
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    generation.save_pretrained(folder)


def clean_config(config: dict, dtype: str) -> dict:
    """config.json without quantisation leftovers or tunesmith's paths, readable by transformers 4.x and vLLM."""
    leftovers = ("quantization_config", "_model_name_or_path", "_name_or_path")
    config = {key: value for key, value in config.items() if key not in leftovers}
    config["dtype"] = config["torch_dtype"] = DTYPE_NAMES[dtype]
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
    return config
