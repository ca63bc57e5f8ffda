"""LoRA adapters: a no-op at init, switchable off, and on the right layers."""

from __future__ import annotations

import pytest
import torch

from tunesmith.models.load import add_lora, count_parameters, load_model

LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture
def inputs(tiny_tokenizer) -> dict:
    ids = tiny_tokenizer("Hello! How are you today? The quick brown fox.", add_special_tokens=False)["input_ids"]
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.arange(len(ids))[None], "use_cache": False}


def outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def adapted_modules(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}


def test_lora_equals_base_at_init_and_can_be_switched_off(tiny_model_dir, inputs):
    model = load_model(tiny_model_dir, dtype=torch.float32).eval()
    base = outputs(model, inputs)
    model = add_lora(model, rank=4, alpha=8, dropout=0.0, targets="all-linear").eval()
    assert torch.allclose(outputs(model, inputs), base, atol=1e-6)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)

    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.5)
    changed = outputs(model, inputs)
    assert not torch.allclose(changed, base, atol=1e-3)
    with model.disable_adapter():
        assert torch.allclose(outputs(model, inputs), base, atol=1e-6)
    assert torch.allclose(outputs(model, inputs), changed, atol=1e-6)  # back on after the block


def test_all_linear_adapts_every_projection_but_not_the_head(tiny_model_dir):
    model = add_lora(load_model(tiny_model_dir, dtype=torch.float32), 4, 8, 0.0, "all-linear")
    assert adapted_modules(model) == LINEAR
    assert not hasattr(model.get_base_model().lm_head, "lora_A")
    n_layers = model.get_base_model().config.num_hidden_layers
    assert sum(1 for _, m in model.named_modules() if hasattr(m, "lora_A")) == len(LINEAR) * n_layers


def test_only_adapters_are_trainable(tiny_model_dir):
    model = add_lora(load_model(tiny_model_dir, dtype=torch.float32), 4, 8, 0.0, "all-linear")
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable_names and all("lora_" in n for n in trainable_names)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_explicit_target_list(tiny_model_dir):
    model = add_lora(load_model(tiny_model_dir, dtype=torch.float32), 2, 4, 0.0, ["q_proj", "v_proj"])
    assert adapted_modules(model) == {"q_proj", "v_proj"}
    ranks = {m.lora_A["default"].out_features for _, m in model.named_modules() if hasattr(m, "lora_A")}
    assert ranks == {2}
