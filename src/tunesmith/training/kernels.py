"""Faster training steps, each equal to the plain computation (tested): a fused LoRA layer, and
attention in fp32 for bf16 activations on a CPU. :func:`training_kernels` turns them on for the loop.

Fused LoRA. PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: besides the three matmuls, that is
a cast of ``x`` to the adapter's dtype, a multiply and an add over the whole output, and their
backward passes. On a CPU those memory-bound passes cost as much as the matmuls of a small model.
Here the scaling and the add ride inside one ``addmm`` and the adapter runs in the activations'
dtype, so a layer is three matmuls forward and five backward, with nothing else over the
activations. The adapter's weights stay PEFT's parameters (fp32 masters, same names, same file),
so saving, merging and inference are untouched; only the forward of eligible layers is swapped,
for the duration of :func:`fused_lora`.

Attention on a CPU with bf16 activations. The CPU flash-attention kernel's backward pass is ~6x
slower in bf16 than in fp32 (3.6 s against 0.6 s over 4 steps of the embedded model); the matmuls around it are what bf16 speeds up. So the
attention itself takes q, k, v up to fp32 and its output back down: registered with transformers
as one more attention implementation ("sdpa-fp32"), switched on only while training.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
from torch import nn


class _LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + s * (x A^T) B^T, with W and b frozen and A, B trained."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        flat = x.reshape(-1, x.shape[-1])
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        xa = flat @ a.t()
        out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
        out.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(flat, xa, weight, a, b)
        ctx.scaling = scaling
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, xa, weight, a, b = ctx.saved_tensors
        s = ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1])
        gb = g @ b  # gradient at x A^T, before the scaling
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(gb, a, alpha=s).view(*grad_out.shape[:-1], flat.shape[-1])
        # In the activations' dtype; autograd casts them to the fp32 masters' dtype.
        grad_a = torch.mm(gb.t(), flat).mul_(s) if ctx.needs_input_grad[3] else None
        grad_b = torch.mm(g.t(), xa).mul_(s) if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_a, grad_b, None


def _fusable(module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or module.merged or module.disable_adapters:
        return False
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1 or active[0] in module.lora_variant:  # DoRA and friends keep PEFT's path
        return False
    base = module.get_base_layer()
    return (type(base) is nn.Linear and not getattr(module, "fan_in_fan_out", False)
            and isinstance(module.lora_dropout[active[0]], nn.Identity)
            and not base.weight.requires_grad)


def _fused_forward(module):
    name = next(n for n in module.active_adapters if n in module.lora_A)
    base = module.get_base_layer()
    lora_a, lora_b, scaling = module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]

    def forward(x, *args, **kwargs):
        if module.disable_adapters:  # switched off while patched: DPO's reference model
            return base(x)
        return _LoraLinearFunction.apply(x, base.weight, base.bias, lora_a, lora_b, scaling)

    return forward


FP32_ATTENTION = "sdpa-fp32"


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):  # autocast would take it back to bf16
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(query.dtype), weights


def _register_fp32_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if FP32_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
        AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)


@contextmanager
def fp32_attention(model):
    """Attention in fp32 while inside, for a model using SDPA on a CPU; else nothing."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = causal_lm.config._attn_implementation
    if next(causal_lm.parameters()).device.type != "cpu" or current != "sdpa":
        yield False
        return
    _register_fp32_attention()
    causal_lm.set_attn_implementation(FP32_ATTENTION)
    try:
        yield True
    finally:
        causal_lm.set_attn_implementation(current)


@contextmanager
def training_kernels(model, bf16: bool):
    """Every faster kernel that applies to ``model``, for the training loop.

    ``bf16``: compute in bf16. Weights already in bf16 (a frozen base under LoRA) run as they are;
    fp32 weights (full fine-tuning keeps fp32 masters) run under autocast.
    """
    with ExitStack() as stack:
        if bf16 and model.get_input_embeddings().weight.dtype == torch.float32:
            stack.enter_context(torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16))
        else:  # the fused layer computes in its input's dtype; autocast would not reach inside it
            stack.enter_context(fused_lora(model))
        if bf16:
            stack.enter_context(fp32_attention(model))
        yield


@contextmanager
def fused_lora(model):
    """Swap the forward of every eligible LoRA linear layer for the fused one while inside."""
    patched = [module for module in model.modules() if _fusable(module)]
    for module in patched:
        module.forward = _fused_forward(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # back to the class's (PEFT's) forward
