"""One GGUF file for llama.cpp and Ollama (``--format gguf``), written in Python on the ``gguf`` package.

What llama.cpp's own converter (``convert_hf_to_gguf.py``, LlamaModel) does, for Llama-architecture models:
llama tensor names; q and k rows permuted from Hugging Face's rotary layout (the two halves of each head) to
llama.cpp's (interleaved pairs), k with the KV head count, so grouped KV heads come out right; no ``output``
tensor where the head is tied to the embedding; 1-D tensors (the norms) in F32 whatever the type asked for.

``source`` keeps the types of the GGUF the base came from (the embedded model's Q4_1): a tensor the fine-tune did
not change is copied byte for byte, a changed one is written in its source type where that has 8 bits or more and
in Q8_0 where it has fewer. The untrained base so exported is the shipped file itself, which
tests/unit/test_export_gguf.py checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from tunesmith.core.config import GgufType
from tunesmith.core.errors import TunesmithError
from tunesmith.export.gguf_vocab import add_tokenizer_from_folder, copy_field, copy_tokenizer_keys

Q = gguf.GGMLQuantizationType
TYPE_OF = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# General keys of the shipped GGUF that still describe a fine-tune of it (its name and finetune do not).
INHERITED = ("general.organization", "general.basename", "general.size_label", "general.license", "general.languages")
LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


@dataclass
class GgufSummary:
    path: Path
    tensor_types: dict[str, int]  # GGML type name -> number of tensors
    copied: int  # tensors whose source bytes were kept (``source``)


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (per head: first half, second half) to llama.cpp's (interleaved pairs)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def check_architecture(config: dict) -> None:
    problems = []
    if config.get("model_type") != "llama":
        problems.append(f"model_type is {config.get('model_type')!r}, not 'llama'")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope type {rope.get('rope_type')!r} (only plain RoPE is written)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        problems.append("bias terms in attention or MLP")
    if problems:
        raise TunesmithError(
            "GGUF export writes Llama-architecture models: "
            + "; ".join(problems)
            + ". Export with --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )


def gguf_tensors(weights: dict[str, torch.Tensor], config: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array in llama.cpp's layout), in the order llama.cpp's converter writes them."""
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    tied = config.get("tie_word_embeddings", False)
    left = dict(weights)
    for name in sorted(weights):  # safetensors order (layer 10 before layer 2), as llama.cpp's converter reads them
        tensor = left.pop(name).detach().to(torch.float32).cpu().numpy()
        if name == "lm_head.weight" and tied:
            continue
        target = gguf_name(name)
        if target.endswith("attn_q.weight"):
            tensor = permute(tensor, heads)
        elif target.endswith("attn_k.weight"):
            tensor = permute(tensor, kv_heads)
        yield target, tensor


def gguf_name(name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if name in fixed:
        return fixed[name]
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        part = LAYER_PARTS.get(".".join(parts[3:-1]))
        if part:
            return f"blk.{parts[2]}.{part}.weight"
    raise TunesmithError(f"GGUF export: no llama.cpp name for the tensor {name!r}")


def _changed_type(source_type: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """A tensor the fine-tune changed, in ``source`` mode: its source type where that keeps 8 bits or more,
    else Q8_0. Rounded again to 4 bits (the embedded base's Q4_1) a merged fine-tune loses most of what it
    learned: 70% top-1 agreement with the model and 1 greedy answer in 6 the same (bench/RESULTS.md)."""
    return source_type if source_type in (Q.F32, Q.F16, Q.BF16, Q.Q8_0) else Q.Q8_0


def encode(array: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
    if array.ndim == 1 or kind == Q.F32:
        return array.astype(np.float32)
    if kind == Q.F16:
        return array.astype(np.float16)
    if array.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:  # rows that do not fill whole blocks
        return array.astype(np.float16)
    return gguf.quants.quantize(array, kind)


def write_gguf(
    path: Path,
    weights: dict[str, torch.Tensor],
    config: dict,
    tokenizer_folder: Path,
    chat_template: str,
    gguf_type: GgufType,
    name: str | None,
    source: Path | None,
) -> GgufSummary:
    """``weights``: the Hugging Face state dict (fp32, adapters merged). ``source``: the GGUF the base came from,
    if any: its tokenizer keys and, for ``source``, its tensor types and unchanged tensors' bytes are reused.
    ``name``: the model's name in the file; None keeps the source's name (a base model exported as it is)."""
    check_architecture(config)
    reader = gguf.GGUFReader(source) if source else None
    if gguf_type == "source" and reader is None:
        raise TunesmithError("--gguf-type source needs a base that came from a GGUF file (the embedded model)")
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_type(gguf.GGUFType.MODEL)
    inherited = INHERITED if name is not None else ("general.name", "general.finetune", *INHERITED)
    if name is not None or reader is None:
        writer.add_name(name or tokenizer_folder.name)
    add_hyperparameters(writer, config)
    if reader is not None:
        for key in inherited:
            if key in reader.fields:
                copy_field(reader.fields[key], writer)
        copy_tokenizer_keys(reader, writer, chat_template)
    else:
        add_tokenizer_from_folder(writer, tokenizer_folder, config["vocab_size"], chat_template)

    source_tensors = {t.name: t for t in reader.tensors} if reader is not None else {}
    counts: dict[str, int] = {}
    copied = 0
    for target, array in gguf_tensors(weights, config):
        original = source_tensors.get(target) if gguf_type == "source" else None
        if original is not None and np.array_equal(gguf.quants.dequantize(original.data, original.tensor_type), array):
            data, kind = original.data, original.tensor_type
            copied += 1
        else:
            kind = _changed_type(original.tensor_type) if original is not None else TYPE_OF.get(gguf_type, Q.Q8_0)
            data = encode(array, kind)
            kind = {np.dtype(np.float32): Q.F32, np.dtype(np.float16): Q.F16}.get(data.dtype, kind)
        writer.add_tensor(target, data, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1

    if reader is not None and gguf_type == "source":
        copy_field(reader.fields["general.quantization_version"], writer)
        copy_field(reader.fields["general.file_type"], writer)
    else:
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type(FILE_TYPE[gguf_type])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return GgufSummary(path, counts, copied)


def add_hyperparameters(writer: gguf.GGUFWriter, config: dict) -> None:
    """The llama.* keys, from config.json as llama.cpp's converter maps them."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
