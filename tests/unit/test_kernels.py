"""The training kernels (fused LoRA, CPU training attention, autocast) equal the plain computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear

from conftest import sharpen
from tunesmith.data.batching import Row, collate
from tunesmith.data.render import IGNORE, Rendered
from tunesmith.models.load import add_lora, load_model
from tunesmith.models.parts import hidden_and_head
from tunesmith.training import kernels
from tunesmith.training.kernels import CPU_ATTENTION, cpu_training_attention, fused_lora, training_kernels
from tunesmith.training.loss import token_loss_sums

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_LAYERS, N_LINEAR = 2, 7  # the tiny Llama: q, k, v, o, gate, up, down in each of 2 layers


def make_model(folder, dtype=torch.float32, lora: bool = True, dropout: float = 0.0, sharp: bool = False):
    model = load_model(folder, dtype=dtype)
    if sharp:
        sharpen(model)
    if lora:
        torch.manual_seed(1)
        model = add_lora(model, rank=4, alpha=8, dropout=dropout, targets="all-linear")
        with torch.no_grad():  # PEFT starts B at zero, which would hide any bug in the B path
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.5)
    return model.train()


def lora_linears(model) -> list[LoraLinear]:
    return [module for module in model.modules() if isinstance(module, LoraLinear)]


def segments(vocab: int) -> tuple[Rendered, Rendered, Rendered]:
    generator = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    a, b, c = ids(7), ids(6), ids(10)
    return (Rendered(a, [IGNORE] * 3 + a[3:]), Rendered(b, list(b)), Rendered(c, [IGNORE] * 4 + c[4:]))


def packed_batch(model) -> dict[str, torch.Tensor]:
    """Two rows: two segments packed in the first, one shorter segment (then padding) in the second."""
    a, b, c = segments(model.config.vocab_size)
    batch = collate([Row.from_segments([a, b]), Row.from_segments([c])], model.config.pad_token_id)
    assert batch["position_ids"][0].tolist() == list(range(7)) + list(range(6))
    assert (batch["labels"][:, 1:] != IGNORE).sum() > 10
    return batch


def loss_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = token_loss_sums(model, batch).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_grads_close(got: dict, expected: dict, rel: float) -> None:
    assert got.keys() == expected.keys() and expected
    for name, grad in expected.items():
        assert got[name].dtype == grad.dtype, name
        assert torch.count_nonzero(grad) > 0, name
        scale = grad.abs().max().item()
        torch.testing.assert_close(got[name], grad, rtol=rel, atol=rel * scale, msg=name)


def count_fused_calls(monkeypatch) -> list:
    calls = []
    apply = kernels._LoraLinearFunction.apply

    def counting(*args):
        calls.append(args[0].dtype)
        return apply(*args)

    monkeypatch.setattr(kernels._LoraLinearFunction, "apply", counting)
    return calls


def test_fused_lora_equals_peft_loss_and_gradients(tiny_model_dir, monkeypatch):
    model = make_model(tiny_model_dir)
    batch = packed_batch(model)
    plain_loss, plain_grads = loss_and_grads(model, batch)
    assert all("lora_" in name for name in plain_grads)

    calls = count_fused_calls(monkeypatch)
    with fused_lora(model) as n:
        assert n == len(lora_linears(model)) == N_LAYERS * N_LINEAR
        fused_loss, fused_grads = loss_and_grads(model, batch)
    assert len(calls) == n  # every layer took the fused path, once
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=0)
    assert_grads_close(fused_grads, plain_grads, rel=1e-5)


def test_fused_lora_forward_is_restored(tiny_model_dir):
    model = make_model(tiny_model_dir).eval()
    batch = packed_batch(model)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        before = model(**inputs).logits
        with fused_lora(model) as n:
            assert n > 0 and all("forward" in module.__dict__ for module in lora_linears(model))
            inside = model(**inputs).logits
        with pytest.raises(RuntimeError, match="boom"), fused_lora(model):
            raise RuntimeError("boom")  # restored on the way out of an error too
        after = model(**inputs).logits
    assert all("forward" not in module.__dict__ for module in lora_linears(model))
    assert all(type(module).forward is LoraLinear.forward for module in lora_linears(model))
    assert torch.equal(after, before)
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)


def test_ineligible_layers_keep_peft_path(tiny_model_dir, monkeypatch):
    calls = count_fused_calls(monkeypatch)
    with_dropout = make_model(tiny_model_dir, dropout=0.1)
    batch = packed_batch(with_dropout)
    with fused_lora(with_dropout) as n:
        assert n == 0
        token_loss_sums(with_dropout, batch)
    assert all("forward" not in module.__dict__ for module in lora_linears(with_dropout))

    base_model = make_model(tiny_model_dir, lora=False).eval()
    model = make_model(tiny_model_dir).eval()
    with torch.no_grad():
        base = base_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        with model.disable_adapter():
            with fused_lora(model) as n:
                assert n == 0
                disabled = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        model.merge_adapter()
        with fused_lora(model) as n:
            assert n == 0
        model.unmerge_adapter()
    assert calls == []
    assert torch.equal(disabled, base)


def test_fused_lora_bf16_base_fp32_adapter(tiny_model_dir, monkeypatch):
    model = make_model(tiny_model_dir, dtype=torch.bfloat16)  # as training.run loads it for bf16 LoRA
    assert model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())  # PEFT's fp32 masters
    # the same (bf16-rounded) weights computed in fp32: the truth both bf16 paths are measured against
    reference = make_model(tiny_model_dir, dtype=torch.float32)
    reference.load_state_dict({name: value.float() for name, value in model.state_dict().items()})
    batch = packed_batch(model)
    true_loss, true_grads = loss_and_grads(reference, batch)
    plain_loss, plain_grads = loss_and_grads(model, batch)

    calls = count_fused_calls(monkeypatch)
    with fused_lora(model) as n:
        assert n == N_LAYERS * N_LINEAR
        fused_loss, fused_grads = loss_and_grads(model, batch)
    assert calls and set(calls) == {torch.bfloat16}  # the adapter runs in the activations' dtype
    assert all(p.dtype == torch.float32 for p in lora.values())
    torch.testing.assert_close(fused_loss, plain_loss, rtol=2e-2, atol=0)
    torch.testing.assert_close(fused_loss, true_loss, rtol=2e-2, atol=0)
    assert fused_grads.keys() == plain_grads.keys() == true_grads.keys()

    def error(grads: dict, name: str | None = None) -> float:
        names = [name] if name else list(true_grads)
        got, true = (torch.cat([g[n].flatten() for n in names]) for g in (grads, true_grads))
        return ((got - true).norm() / true.norm()).item()

    for name in true_grads:
        assert fused_grads[name].dtype == torch.float32, name
        # bf16 activations: PEFT's own gradients are ~5% from the fp32 truth; a wrong formula is ~100%
        assert error(fused_grads, name) < 0.15, (name, error(fused_grads, name), error(plain_grads, name))
    assert error(fused_grads) < 2 * error(plain_grads) + 1e-3, (error(fused_grads), error(plain_grads))


def attention_dtypes(monkeypatch) -> list[tuple[torch.dtype, torch.dtype]]:
    """(query dtype, output dtype) of every SDPA call."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        out = sdpa(query, *args, **kwargs)
        seen.append((query.dtype, out.dtype))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_training_attention_equals_sdpa(tiny_model_dir, monkeypatch, dtype, attention_path):
    model = make_model(tiny_model_dir, dtype=dtype, lora=False, sharp=True).eval()
    batch = packed_batch(model)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    assert model.config._attn_implementation == "sdpa"
    seen = attention_dtypes(monkeypatch)
    with torch.no_grad():
        outside = model(**inputs).logits
        assert seen and {s for s in seen} == {(dtype, dtype)}
        seen.clear()
        with cpu_training_attention(model) as active:
            assert active is True and model.config._attn_implementation == CPU_ATTENTION
            inside = model(**inputs).logits
        assert model.config._attn_implementation == "sdpa"
    if attention_path == "matmul":
        assert seen == []
    else:
        assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert inside.dtype == dtype
    scale = outside.float().abs().max().item()
    tolerance = (1e-5 if dtype == torch.float32 else 3e-2) * scale
    torch.testing.assert_close(inside.float(), outside.float(), rtol=0, atol=tolerance)


def test_cpu_training_attention_gradients_equal_sdpa(tiny_model_dir, attention_path):
    # In fp32 both paths compute what SDPA does, so the backward pass is checked to float tolerance.
    model = make_model(tiny_model_dir, sharp=True)
    batch = packed_batch(model)
    plain_loss, plain_grads = loss_and_grads(model, batch)
    with cpu_training_attention(model):
        loss, grads = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=0)
    assert_grads_close(grads, plain_grads, rel=1e-4)


def test_cpu_training_attention_without_mask_is_causal(tiny_model_dir):
    # One unpadded row: transformers passes no mask (causal implied), and the matmul path builds it.
    model = make_model(tiny_model_dir, lora=False, sharp=True).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    masks = []
    layer = model.model.layers[0].self_attn
    handle = layer.register_forward_pre_hook(
        lambda m, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    with torch.no_grad():
        plain = model(input_ids=ids, use_cache=False).logits
        with cpu_training_attention(model):
            inside = model(input_ids=ids, use_cache=False).logits
    handle.remove()
    assert masks[-1] is None
    torch.testing.assert_close(inside, plain, rtol=0, atol=1e-5 * plain.abs().max().item())


def test_cpu_training_attention_only_for_sdpa(tiny_model_dir):
    model = make_model(tiny_model_dir, lora=True)  # a PeftModel: the base model's config is the one switched
    with cpu_training_attention(model) as active:
        assert active is True and model.get_base_model().config._attn_implementation == CPU_ATTENTION
    assert model.get_base_model().config._attn_implementation == "sdpa"
    model.get_base_model().set_attn_implementation("eager")
    with cpu_training_attention(model) as active:
        assert active is False and model.get_base_model().config._attn_implementation == "eager"
    assert model.get_base_model().config._attn_implementation == "eager"


def segment_logits(model, batch) -> torch.Tensor:
    hidden, head = hidden_and_head(
        model, input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    )
    return head(hidden).float()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_packed_segments_stay_isolated_under_kernels(tiny_model_dir, bf16, attention_path):
    model = make_model(tiny_model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, sharp=True)
    a, b, _ = segments(model.config.vocab_size)
    pad_id = model.config.pad_token_id
    packed = collate([Row.from_segments([a, b])], pad_id)
    alone = collate([Row.from_segments([b])], pad_id)
    n_a, n_b = len(a.input_ids), len(b.input_ids)
    with torch.no_grad():
        with training_kernels(model, bf16=bf16):
            assert model.get_base_model().config._attn_implementation == CPU_ATTENTION
            assert "forward" in lora_linears(model)[0].__dict__
            in_pack = segment_logits(model, packed)[0, n_a:]
            on_its_own = segment_logits(model, alone)[0]
            # the same tokens with positions running on: b attends to a, which moves its logits a lot
            unpacked = dict(packed, position_ids=torch.arange(n_a + n_b)[None])
            leaked = segment_logits(model, unpacked)[0, n_a:]
        plain = segment_logits(model, alone)[0]
    assert in_pack.shape == on_its_own.shape == (n_b, model.config.vocab_size)
    scale = on_its_own.abs().max().item()
    tolerance = (2e-2 if bf16 else 1e-5) * scale
    torch.testing.assert_close(in_pack, on_its_own, rtol=0, atol=tolerance)
    assert (leaked - on_its_own).abs().max().item() > 0.5 * scale  # so the check above can fail
    # kernels on = kernels off (in bf16 the adapter and attention run at other precisions: ~2% apart)
    torch.testing.assert_close(on_its_own, plain, rtol=0, atol=(5e-2 if bf16 else 1e-5) * scale)


def test_training_kernels_bf16_autocast_for_fp32_full_model(tiny_model_dir, monkeypatch, attention_path):
    model = make_model(tiny_model_dir, lora=False, sharp=True)
    batch = packed_batch(model)
    reference_loss, reference_grads = loss_and_grads(model, batch)
    output_dtypes = []
    linear = model.model.layers[0].mlp.down_proj
    handle = linear.register_forward_hook(lambda module, args, out: output_dtypes.append(out.dtype))
    calls = count_fused_calls(monkeypatch)
    try:
        with training_kernels(model, bf16=True):
            assert model.config._attn_implementation == CPU_ATTENTION
            loss, grads = loss_and_grads(model, batch)  # backward inside, as train_step does
    finally:
        handle.remove()
    assert model.config._attn_implementation == "sdpa"
    assert calls == []  # no LoRA: nothing to fuse
    assert output_dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert grads.keys() == reference_grads.keys() and len(grads) == len(list(model.parameters()))
    torch.testing.assert_close(loss, reference_loss, rtol=2e-2, atol=0)
    for name, grad in reference_grads.items():
        assert grads[name].dtype == torch.float32, name
        error = (grads[name] - grad).norm() / grad.norm()
        assert error < 0.1, (name, error.item())


def test_attention_under_autocast_runs_in_fp32(tiny_model_dir, monkeypatch, attention_path):
    model = make_model(tiny_model_dir, lora=False)
    batch = packed_batch(model)
    seen = attention_dtypes(monkeypatch)
    matmuls, bmm = [], torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: matmuls.append((a.dtype, b.dtype)) or bmm(a, b))
    with training_kernels(model, bf16=True):
        loss_and_grads(model, batch)
    if attention_path == "matmul":
        assert seen == [] and matmuls and set(matmuls) == {(torch.float32, torch.float32)}
    else:
        assert matmuls == [] and seen and all(out == torch.float32 for _, out in seen), seen


def test_training_kernels_bf16_on_fp32_lora_model(tiny_model_dir):
    # training.run gives LoRA a bf16 base whenever bf16 is on; an fp32 base runs unfused under autocast
    model = make_model(tiny_model_dir, dtype=torch.float32)
    batch = packed_batch(model)
    reference_loss, _ = loss_and_grads(model, batch)
    with training_kernels(model, bf16=True):
        loss, grads = loss_and_grads(model, batch)
    torch.testing.assert_close(loss, reference_loss, rtol=2e-2, atol=0)
    assert all(grad.dtype == torch.float32 for grad in grads.values())


def test_full_fine_tuning_forward_sees_every_optimizer_step(tiny_model_dir, attention_path):
    # The loop runs inside one training_kernels: autocast's cache of bf16 weight copies would keep
    # serving the weights of the first step after the optimizer has changed the fp32 masters.
    model = make_model(tiny_model_dir, lora=False, sharp=True)
    batch = packed_batch(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with training_kernels(model, bf16=True):
        for _ in range(2):
            loss = token_loss_sums(model, batch).sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        inside = token_loss_sums(model, batch).sum().item()
    with training_kernels(model, bf16=True):  # a fresh context: the current weights, cast anew
        fresh = token_loss_sums(model, batch).sum().item()
    assert inside == pytest.approx(fresh, rel=1e-3)
