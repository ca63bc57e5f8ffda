"""Building on a fine-tune (tiny model): DPO on a supervised LoRA model records its lineage, keeps a
copy of the parent's adapter, loads to the same weights as base + parent + its own adapter (even after
the parent is removed), and `eval` on preference pairs compares base, parent and the new model."""

from __future__ import annotations

import pytest
import torch

from tunesmith.core.config import TrainConfig
from tunesmith.core.errors import TunesmithError
from tunesmith.evaluation.measure import EvalOptions
from tunesmith.inference.loaded import load
from tunesmith.models.load import load_adapter, load_model
from tunesmith.registry import store
from tunesmith.registry.lineage import resolve_start
from tunesmith.workflows.evaluate import evaluate
from tunesmith.workflows.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUESTIONS = [f"Customer: CU-{1000 + i} Issue: no signal." for i in range(16)]


def _config(data, base, name, **overrides) -> TrainConfig:
    values = dict(data=data, base=str(base), name=name, epochs=2, batch_size=4, lr=1e-2, seed=0, val_fraction=0)
    return TrainConfig(**(values | overrides))


@pytest.fixture
def sft_then_dpo(home, write_jsonl, tiny_model_dir):
    chat = write_jsonl(
        "sft.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "negative"}]}
            for q in QUESTIONS
        ],
    )
    pairs = write_jsonl("pairs.jsonl", [{"prompt": q, "chosen": "positive", "rejected": "negative"} for q in QUESTIONS])
    train(_config(chat, tiny_model_dir, "sft"))
    result = train(_config(pairs, "sft", "dpo", method="dpo", lr=5e-3))
    return result, pairs


def test_dpo_on_a_fine_tune_records_lineage_and_loads_the_same_weights(sft_then_dpo, tiny_model_dir):
    result, _ = sft_then_dpo
    version = result.version
    manifest = version.manifest
    assert manifest["method"] == "dpo" and manifest["config"]["base"] == "sft:1"
    assert manifest["lineage"] == [{"ref": "sft:1", "method": "lora", "task": "chat", "adapter": "lineage/0"}]
    assert (version.path / "lineage" / "0" / "adapter_model.safetensors").is_file()
    assert manifest["base"]["path"] == str(tiny_model_dir.resolve())
    history = [entry for entry in result.loop.history]
    assert history[-1]["reward_margin"] > history[0]["reward_margin"]

    # By hand: the base, the parent's adapter merged, then this version's adapter.
    manual = load_model(tiny_model_dir, dtype=torch.float32)
    manual = load_adapter(manual, store.get("sft:1").path / "adapter").merge_and_unload()
    manual = load_adapter(manual, version.path / "adapter").merge_and_unload().eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    expected = manual(input_ids=ids).logits
    torch.testing.assert_close(load("dpo", precision="fp32").model(input_ids=ids).logits, expected)
    assert load("dpo", precision="bf16").model.dtype == torch.bfloat16  # the whole chain, in the asked precision

    store.remove("sft")  # the copy in lineage/0 keeps the DPO model whole
    torch.testing.assert_close(load("dpo", precision="fp32").model(input_ids=ids).logits, expected)


def test_eval_on_preference_pairs_compares_base_parent_and_the_new_model(sft_then_dpo):
    _, pairs = sft_then_dpo
    figures = evaluate("dpo", pairs, options=EvalOptions(latency_samples=0, shots=2))
    assert figures["task"] == "preference" and figures["primary"] == "preference_accuracy"
    assert list(figures["results"]) == ["base", "few_shot", "parent", "fine_tuned"]
    results = figures["results"]
    # Trained on these very pairs: DPO moved the margin towards "positive" from where its parent was.
    assert results["fine_tuned"]["preference_accuracy"] == 1.0
    assert results["fine_tuned"]["preference_margin"] > results["parent"]["preference_margin"]
    assert results["parent"]["preference_margin"] != results["base"]["preference_margin"]  # parent != base
    assert figures["examples"][0]["outputs"]["fine_tuned"] == "chosen"


def test_starting_points(home, tiny_model_dir):
    assert resolve_start(str(tiny_model_dir)).lineage == []
    with pytest.raises(TunesmithError, match="no model named 'nope'"):
        resolve_start("nope:3")
    with pytest.raises(TunesmithError, match="or a fine-tune in the registry"):
        resolve_start("nope")


def test_method_and_data_must_match(home, write_jsonl, tiny_model_dir):
    pairs = write_jsonl("pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    chat = write_jsonl(
        "chat.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    )
    with pytest.raises(TunesmithError, match="train them with --method dpo"):
        train(_config(pairs, tiny_model_dir, "x"))
    with pytest.raises(TunesmithError, match="trains on preference pairs"):
        train(_config(chat, tiny_model_dir, "x", method="dpo"))
