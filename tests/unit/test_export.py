"""Exports on tiny Llamas (grouped KV heads; tied and untied output heads): every format written, loaded back the
way its users load it (transformers, PEFT, transformers' GGUF reader) and held to the parity check; broken exports
fail it; bad requests are refused with nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import build_tiny_model, sharpen
from tunesmith.core.config import TrainConfig
from tunesmith.core.errors import ExportParityError, TunesmithError
from tunesmith.export import gguf_file, hf
from tunesmith.export.peft_adapter import vllm_max_lora_rank, vllm_problems
from tunesmith.export.run import export_model
from tunesmith.workflows.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTIONS = [f"Customer: CU-{1000 + i} Issue: no signal." for i in range(16)]


def _quiet(_: str) -> None:
    pass


def _sharp_tiny(folder: Path, tie: bool) -> Path:
    """Weights at O(1) scale: a wrong permutation or head then moves the logits far, not by 1e-4."""
    build_tiny_model(folder, tie=tie)
    model = AutoModelForCausalLM.from_pretrained(folder)
    sharpen(model)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_base(request, tmp_path_factory) -> Path:
    return _sharp_tiny(tmp_path_factory.mktemp("tiny-export"), tie=request.param)


@pytest.fixture
def version(home, write_jsonl, tiny_base) -> str:
    chat = write_jsonl(
        "chat.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "signal lost"}]}
            for q in QUESTIONS
        ],
    )
    config = TrainConfig(data=chat, base=str(tiny_base), name="tiny", epochs=2, batch_size=4, lr=1e-2, val_fraction=0)
    train(config)
    return "tiny:1"


def test_hf_export_is_a_clean_folder_that_answers_like_the_model(version, tmp_path):
    result = export_model(version, "hf", tmp_path / "out", say=_quiet)
    out = tmp_path / "out"
    assert result.parity is not None and result.parity.passed, result.parity
    assert result.parity.max_logit_diff < 1e-4 and result.parity.top1_agreement == 1.0
    assert result.parity.greedy_identical == len(result.parity.probes)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "float32"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    template = (out / "chat_template.jinja").read_text()
    assert tokenizer_config["chat_template"] == template and "<|im_start|>" in template
    # readable by transformers 4.x (vLLM): the fast tokenizer's old name, and no token_type_ids for generate()
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]
    generation = json.loads((out / "generation_config.json").read_text())
    vocab = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    assert generation["eos_token_id"] == next(t["id"] for t in vocab if t["content"] == "<|im_end|>")
    manifest = json.loads((out / "tunesmith-export.json").read_text())
    assert manifest["ref"] == "tiny:1" and manifest["parity"]["passed"] and "model.safetensors" in manifest["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_hf_bf16_export_is_half_the_size_and_held_to_its_tolerance(version, tmp_path):
    full = export_model(version, "hf", tmp_path / "fp32", say=_quiet)
    half = export_model(version, "hf", tmp_path / "bf16", dtype="bf16", say=_quiet)
    weights = [(tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "bf16")]
    assert weights[1] < 0.55 * weights[0]  # a tied head is written once, not cast into a second copy
    assert half.parity is not None and half.parity.precision == "bf16" and half.parity.passed
    assert full.parity is not None and half.parity.max_logit_diff > full.parity.max_logit_diff


def test_peft_export_loads_with_peft_and_names_its_base(version, tmp_path, tiny_base):
    result = export_model(version, "peft", tmp_path / "adapter", say=_quiet)
    assert result.parity is not None and result.parity.passed and result.parity.loaded_with == "PEFT"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base.resolve()) == result.base.path
    assert result.vllm_max_lora_rank == 16 and len(result.base.sha256) == 64
    assert (tmp_path / "adapter" / "chat_template.jinja").is_file()


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_gguf_export_reads_back_through_transformers(version, tmp_path, tiny_base, gguf_type):
    result = export_model(version, "gguf", tmp_path / "gguf", gguf_type=gguf_type, say=_quiet)
    assert result.parity is not None and result.parity.passed, result.parity.problems
    if gguf_type == "f32":
        assert result.parity.max_logit_diff < 1e-4 and result.parity.greedy_identical == len(result.parity.probes)
    reader = gguf.GGUFReader(tmp_path / "gguf" / "tiny-1.gguf")
    names = {tensor.name: tensor for tensor in reader.tensors}
    tied = json.loads((tiny_base / "config.json").read_text())["tie_word_embeddings"]
    assert ("output.weight" in names) is not tied
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for n, t in names.items() if "norm" in n)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert "FROM ./tiny-1.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "You are a tiny test model." in modelfile  # the template's own default system prompt, in Go


def test_q_and_k_left_in_hugging_face_order_fail_the_check(version, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_file, "permute", lambda weights, heads: weights)
    place = tmp_path / "exports"
    with pytest.raises(ExportParityError) as failed:
        export_model(version, "gguf", place / "broken", gguf_type="f32", say=_quiet)
    assert failed.value.reports and not failed.value.reports[0].passed
    assert "logits differ" in str(failed.value) and "Nothing was written" in str(failed.value)
    assert list(place.iterdir()) == []  # neither the export nor its staging folder


def test_a_lost_chat_template_fails_the_check(version, tmp_path, monkeypatch):
    original = hf.write_tokenizer

    def template_dropped(source: Path, folder: Path):
        tokenizer = original(source, folder)
        plain = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": plain}))
        (folder / "chat_template.jinja").write_text(plain)
        return tokenizer

    monkeypatch.setattr(hf, "write_tokenizer", template_dropped)
    with pytest.raises(ExportParityError, match="chat template renders a prompt differently"):
        export_model(version, "hf", tmp_path / "broken", say=_quiet)
    assert not (tmp_path / "broken").exists()


def test_bad_requests_are_refused_before_anything_is_written(version, tmp_path, monkeypatch):
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    with pytest.raises(TunesmithError, match="no model named 'nope' in the registry"):
        export_model("nope", "hf", tmp_path / "a", say=_quiet)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(TunesmithError, match="already exists and is not an empty folder"):
        export_model(version, "hf", tmp_path / "full", say=_quiet)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(TunesmithError, match="--with-base goes with --format peft"):
        export_model(version, "gguf", tmp_path / "b", with_base=True, say=_quiet)
    with pytest.raises(TunesmithError, match="only the embedded base does"):
        export_model(version, "gguf", tmp_path / "c", gguf_type="source", say=_quiet)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(TunesmithError, match="cannot write the export"):
        export_model(version, "hf", tmp_path / "a-file" / "out", say=_quiet)

    def denied(*_):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:  # a folder root may write to, but a user may not: failing mid-write
        patch.setattr(hf, "write_tokenizer", denied)
        with pytest.raises(TunesmithError, match="cannot write the export .*Permission denied; nothing was written"):
            export_model(version, "hf", tmp_path / "e", say=_quiet)
    monkeypatch.setattr("shutil.disk_usage", lambda _: type("Usage", (), {"free": 1000})())
    with pytest.raises(TunesmithError, match="not enough space"):
        export_model(version, "hf", tmp_path / "d", say=_quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "full"]


def test_a_full_fine_tune_has_no_adapter_to_export(home, write_jsonl, tiny_model_dir, tmp_path):
    chat = write_jsonl("c.jsonl", [{"prompt": q, "completion": "ok"} for q in QUESTIONS])
    train(TrainConfig(data=chat, base=str(tiny_model_dir), name="whole", method="full", epochs=1, val_fraction=0))
    with pytest.raises(TunesmithError, match="full fine-tune: it has no adapter. Export it with --format hf"):
        export_model("whole", "peft", tmp_path / "x", say=_quiet)
    result = export_model("whole", "gguf", tmp_path / "y", gguf_type="f32", say=_quiet)
    assert result.parity is not None and result.parity.passed


def test_a_version_built_on_a_fine_tune_exports_its_adapter_with_the_merged_base(
    home, write_jsonl, tiny_model_dir, tmp_path
):
    chat = write_jsonl("sft.jsonl", [{"prompt": q, "completion": "negative"} for q in QUESTIONS])
    pairs = write_jsonl("pairs.jsonl", [{"prompt": q, "chosen": "positive", "rejected": "negative"} for q in QUESTIONS])
    common = dict(base=str(tiny_model_dir), epochs=2, batch_size=4, lr=1e-2, val_fraction=0)
    train(TrainConfig(data=chat, name="sft", **common))
    train(TrainConfig(data=pairs, name="dpo", method="dpo", **(common | {"base": "sft", "lr": 5e-3})))
    with pytest.raises(TunesmithError, match="built on sft:1.*--with-base"):
        export_model("dpo", "peft", tmp_path / "x", say=_quiet)
    result = export_model("dpo", "peft", tmp_path / "y", with_base=True, say=_quiet)
    assert result.parity is not None and result.parity.passed and result.parity.max_logit_diff < 1e-4
    config = json.loads((tmp_path / "y" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "y" / "base").resolve())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "y" / "base")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(
        merged.model.layers[0].self_attn.q_proj.weight, plain.model.layers[0].self_attn.q_proj.weight
    )


def test_what_vllm_refuses_or_ignores_is_named():
    plain = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    assert vllm_problems(plain) == ([], []) and vllm_max_lora_rank(plain) == 16
    odd = plain | {
        "modules_to_save": ["score"],
        "use_dora": True,
        "bias": "lora_only",
        "target_modules": ["q_proj", "lm_head"],
        "rank_pattern": {"q_proj": 40},
    }
    refused, ignored = vllm_problems(odd)
    assert len(refused) == 4 and any("lm_head" in r for r in refused) and any("DoRA" in r for r in refused)
    assert ignored and "rank_pattern" in ignored[0]
    assert vllm_max_lora_rank(odd) == 64
