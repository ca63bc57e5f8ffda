"""The tokenizer inside a GGUF file: copied from the shipped GGUF for the embedded base, else built from the
model's ``tokenizer.json`` the way llama.cpp's ``convert_hf_to_gguf.py`` builds it (byte-level BPE only).

llama.cpp picks its pre-tokenizer (how text is split before BPE) by name; the names here are the two whose
splitting matches a plain ``ByteLevel`` pre-tokenizer: ``gpt-2``, and ``smollm``, which also splits digits one by
one. Any other tokenizer is refused rather than written with a pre-tokenizer that would split text differently."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
from gguf.vocab import SpecialVocab
from transformers import AutoTokenizer

from tunesmith.core.errors import TunesmithError


def copy_tokenizer_keys(source: gguf.GGUFReader, writer: gguf.GGUFWriter, chat_template: str) -> None:
    """Every ``tokenizer.*`` key of the shipped GGUF, with the exported model's chat template."""
    for key, field in source.fields.items():
        if key.startswith("tokenizer.") and key != "tokenizer.chat_template":
            copy_field(field, writer)
    writer.add_chat_template(chat_template)


def copy_field(field, writer: gguf.GGUFWriter) -> None:
    value_type = field.types[0]
    if value_type == gguf.GGUFValueType.ARRAY:
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=field.types[-1])
    else:
        writer.add_key_value(field.name, field.contents(), value_type)


def pre_tokenizer_name(tokenizer_json: dict, folder: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is not None and byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space"):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    raise TunesmithError(
        f"{folder / 'tokenizer.json'}: GGUF export knows byte-level BPE tokenizers split like GPT-2's "
        f"(pre-tokenizer {json.dumps(pre)[:200]} is not one). Export with --format hf and convert that folder with "
        "llama.cpp's convert_hf_to_gguf.py, which knows more tokenizers"
    )


def add_tokenizer_from_folder(writer: gguf.GGUFWriter, folder: Path, vocab_size: int, chat_template: str) -> None:
    """Tokens, token types, merges and special token ids from ``folder``'s tokenizer.json and tokenizer_config.json."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TunesmithError(f"{folder}: no tokenizer.json; GGUF export needs a fast (tokenizers) tokenizer")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise TunesmithError(
            f"{path}: a {model.get('type')} tokenizer; GGUF export writes byte-level BPE tokenizers only. "
            "Export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py"
        )
    pre = pre_tokenizer_name(tokenizer_json, folder)
    by_id = {index: token for token, index in model["vocab"].items()}
    added = {entry["id"]: entry for entry in tokenizer_json.get("added_tokens", [])}
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):  # the embedding may have more rows than the tokenizer has tokens
        entry = added.get(index)
        if entry is not None:
            tokens.append(entry["content"])
            types.append(gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.chat_template = chat_template
    # Whether text starts with BOS or ends with EOS: transformers 5 keeps that in tokenizer.json's post-processor,
    # not in the tokenizer_config.json keys SpecialVocab reads, so it is asked of the tokenizer itself; llama.cpp
    # otherwise guesses by tokenizer type.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("a")["input_ids"]
    special.add_special_token.setdefault("bos", tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    special.add_special_token.setdefault(
        "eos", tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id
    )
    special.add_to_gguf(writer, quiet=True)
