"""Faster training steps, each equal to the plain computation (tested): a fused LoRA layer, and
attention on a CPU that also reads shared-prefix rows. :func:`training_kernels` turns them on for the loop.

Fused LoRA. PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: besides the three matmuls, that is
a cast of ``x`` to the adapter's dtype, a multiply and an add over the whole output, and their
backward passes. On a CPU those memory-bound passes cost as much as the matmuls of a small model.
Here the scaling and the add ride inside one ``addmm`` and the adapter runs in the activations'
dtype, so a layer is three matmuls forward and five backward, with nothing else over the
activations. The adapter's weights stay PEFT's parameters (fp32 masters, same names, same file),
so saving, merging and inference are untouched; only the forward of eligible layers is swapped,
for the duration of :func:`fused_lora`.

Attention on a CPU. The CPU flash-attention kernel's backward pass is ~6x
slower in bf16 than in fp32 (3.6 s against 0.6 s over 4 steps of the embedded model), and even in
fp32 it is slow at training's short rows. So while training, attention is one more implementation
registered with transformers ("cpu-training"). Short rows take plain batched matmuls in fp32, each
key/value head shared by its query heads without copies: forward and backward in 10.7 ms against
13.2 ms for flash in fp32, at 16 rows of 90 tokens (the benchmark's data). It keeps every layer's
probabilities for the backward pass, so longer rows (or bigger batches) take SDPA in fp32, whose
memory stays linear in the length.

Shared prefixes. Rows that begin with the same tokens (a system prompt, an instruction) arrive as one
row: the prefix once, then each row's own tokens (``data.batching.collate_shared_prefix``). The
attention gathers them into groups (the prefix; each row with the prefix's keys in front), attends
as above, and puts every token back; everything else in the model runs on the unpadded tokens.
On the benchmark's sentiment rows (46 shared of ~80 tokens) a step takes 35% less time.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunesmith.data.batching import SharedPrefixLayout
from tunesmith.models.parts import causal_lm


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
    # A LoRA layer exists only once peft is imported; asking that way spares evaluation and serving, which
    # import this module for the training attention's layout check, the second of importing peft.
    lora = sys.modules.get("peft.tuners.lora")
    if lora is None or not isinstance(module, lora.Linear) or module.merged or module.disable_adapters:
        return False
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1 or active[0] in module.lora_variant:  # DoRA and friends keep PEFT's path
        return False
    base = module.get_base_layer()
    return (
        type(base) is nn.Linear
        and not getattr(module, "fan_in_fan_out", False)
        and isinstance(module.lora_dropout[active[0]], nn.Identity)
        and not base.weight.requires_grad
    )


def _fused_forward(module):
    name = next(n for n in module.active_adapters if n in module.lora_A)
    base, lora_a, lora_b = module.get_base_layer(), module.lora_A[name], module.lora_B[name]
    scaling = module.scaling[name]

    def forward(x, *args, **kwargs):
        if module.disable_adapters:  # switched off while patched: DPO's reference model
            return base(x)
        # The weights are read at each call, not once when patched: FSDP (training.sharding) swaps each
        # layer's parameters for whole ones just before its forward, and back after.
        return _LoraLinearFunction.apply(x, base.weight, base.bias, lora_a.weight, lora_b.weight, scaling)

    return forward


CPU_ATTENTION = "cpu-training"
# Scores (batch x heads x query x key) up to this many take the matmul path: 16 rows of 128 tokens for
# a 9-head model, whose fp32 probabilities keep 9 MB per layer for the backward pass.
MATMUL_ATTENTION_MAX_SCORES = 16 * 9 * 128 * 128


def _cpu_training_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    segments: SharedPrefixLayout | None = None,
    **kwargs,
):
    """query (batch, heads, q, dim); key, value (batch, kv_heads, k, dim); the mask from ``sdpa_mask``
    (boolean, True = attend; None = causal). Returns (batch, q, heads, dim) like transformers' kernels.

    ``segments``: the one row is a shared prefix and the rows after it (data.batching); the mask is
    then the layout's, not transformers' (which would keep the rows from seeing the prefix)."""
    if segments is not None:
        return _shared_prefix_attention(module, query, key, value, segments, scaling=scaling, dropout=dropout, **kwargs)
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    plain = not dropout and not any(kwargs.get(name) is not None for name in ("softcap", "sliding_window", "s_aux"))
    if not plain or batch * heads * q_len * k_len > MATMUL_ATTENTION_MAX_SCORES or heads % kv_heads:
        return _sdpa_fp32(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    with torch.autocast(query.device.type, enabled=False):
        groups = heads // kv_heads
        # The query heads that share a key/value head stacked along the sequence: one matmul per kv head.
        # All in fp32, as the flash kernel computes. bf16 probabilities took 25% off the attention but
        # moved the embedded model's summed loss over 8 batches from 286.4 to 281.6 (fp32 model: 291.1).
        q, k, v = (t.float().reshape(batch * kv_heads, -1, dim) for t in (query, key, value))
        bias = _grouped_bias(attention_mask, batch, kv_heads, groups, q_len, k_len, query.device)
        scale = scaling if scaling is not None else dim**-0.5
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)  # scale and mask in the matmul
        probs = torch.softmax(scores, dim=-1)
        out = torch.bmm(probs, v).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).to(query.dtype, memory_format=torch.contiguous_format), None


def _shared_prefix_attention(module, query, key, value, segments: SharedPrefixLayout, **kwargs):
    """Gather each attention group's queries and keys into a padded batch, attend, put every token back.

    index_select rather than indexing: its backward is an index_add, where indexing's is an
    accumulating index_put that took 7% of a training step."""

    def gather(states, index):  # (1, heads, tokens, dim) -> (groups, heads, slots, dim)
        tokens = states[0].transpose(0, 1).reshape(states.shape[2], -1)
        picked = tokens.index_select(0, index.flatten())
        return picked.view(*index.shape, states.shape[1], states.shape[3]).transpose(1, 2)

    q = gather(query, segments.query_index)
    k, v = gather(key, segments.key_index), gather(value, segments.key_index)
    out, _ = _cpu_training_attention(module, q, k, v, segments.mask, **kwargs)  # (groups, slots, heads, dim)
    return out.reshape(-1, *out.shape[2:]).index_select(0, segments.token_slot)[None], None


def lays_out_shared_prefix(model) -> bool:
    """Whether ``model`` attends with the CPU training attention, which reads a SharedPrefixLayout."""
    lm = causal_lm(model)
    return lm.config._attn_implementation == CPU_ATTENTION


_last_bias: tuple = (None, None, None)  # (mask, shape key, bias): every layer of a forward gets the same mask


def _grouped_bias(attention_mask, batch, kv_heads, groups, q_len, k_len, device) -> torch.Tensor:
    """The boolean mask as an fp32 additive bias laid out like the stacked scores (once per forward)."""
    global _last_bias
    key = (batch, kv_heads, groups, q_len, k_len, device)
    mask, cached_key, bias = _last_bias
    if attention_mask is not None and mask is attention_mask and cached_key == key:
        return bias
    full = attention_mask
    if full is None:
        full = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    full = full[..., :k_len].expand(batch, 1, q_len, k_len)
    bias = torch.zeros(full.shape, device=device).masked_fill_(~full, torch.finfo(torch.float32).min)
    bias = bias[:, :, None].expand(batch, kv_heads, groups, q_len, k_len).reshape(batch * kv_heads, -1, k_len)
    _last_bias = (attention_mask, key, bias)
    return bias


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    with torch.autocast(query.device.type, enabled=False):  # autocast would take it back to bf16
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


def _register_cpu_attention() -> None:
    if CPU_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CPU_ATTENTION, _cpu_training_attention)
        AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)


@contextmanager
def cpu_training_attention(model):
    """The training attention while inside, for a model using SDPA on a CPU; else nothing."""
    lm = causal_lm(model)
    current = lm.config._attn_implementation
    if next(lm.parameters()).device.type != "cpu" or current != "sdpa":
        yield False
        return
    _register_cpu_attention()
    lm.set_attn_implementation(CPU_ATTENTION)
    try:
        yield True
    finally:
        lm.set_attn_implementation(current)


@contextmanager
def training_kernels(model, bf16: bool):
    """Every faster kernel that applies to ``model``, for the training loop.

    ``bf16``: compute in bf16. Weights already in bf16 (a frozen base under LoRA) run as they are;
    fp32 weights (full fine-tuning keeps fp32 masters) run under autocast.
    """
    with ExitStack() as stack:
        if bf16 and model.get_input_embeddings().weight.dtype == torch.float32:
            # No cast cache: it lives as long as the outermost autocast, here the whole loop, and would
            # keep serving the bf16 copies of the first step's weights after the optimizer updates them.
            stack.enter_context(
                torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, cache_enabled=False)
            )
        else:  # the fused layer computes in its input's dtype; autocast would not reach inside it
            stack.enter_context(fused_lora(model))
        stack.enter_context(cpu_training_attention(model))  # fp32 too: it also lays out shared prefixes
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
