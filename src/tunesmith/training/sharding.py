"""FSDP (`--fsdp`): each process keeps 1/N of the weights, their gradients and the optimizer's state, through
PyTorch's own ``fully_shard`` (FSDP2), on top of the data parallelism of training.distributed.

What training holds per weight is what FSDP divides: full fine-tuning in AdamW keeps 16 bytes for each (the fp32
weight, its gradient, two moments), so a base whose bf16 weights fit one device for inference often does not
fit it for training; sharded over N processes, each holds a 1/N share, plus one decoder layer gathered at a time.

How it is laid out:
- every decoder layer (transformers' ``_no_split_modules``, the classes accelerate and TRL wrap) is one unit,
  gathered just before it runs and freed after;
- the rest (embeddings, final norm, output head, tied or not) belongs to :class:`TokenLossSums`, the loss as a
  module, which is the root FSDP shards. The forward has to go through it: the loss runs the decoder and applies
  the head at target positions only (models.parts.hidden_and_head), and a root whose own forward never ran would
  never gather those weights nor reduce their gradients;
- gradients are reduced as sums, not means (the loss is already divided by the step's global target count, as
  in training.distributed), with a plain SUM, which gloo also has;
- every process runs the same number of forward passes in a step and in a validation pass (each one gathers
  weights with every other process): a process with fewer rows runs a row with weight 0.

What is not sharded: the baselines before training and the comparison after it, which rank 0 measures on the
whole model (training.checkpoint.whole_trainable_state gathers it); so the base must fit one device for inference.
"""

from __future__ import annotations

import ctypes
import math
from typing import TypeVar

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from tunesmith.core.errors import TunesmithError
from tunesmith.data.batching import Row
from tunesmith.models.parts import causal_lm, eval_mode
from tunesmith.training import distributed
from tunesmith.training.distributed import ProcessGroup
from tunesmith.training.loss import loss_batch, token_loss_sums

T = TypeVar("T")


class TokenLossSums(nn.Module):
    """``token_loss_sums(model, batch)`` as a module: FSDP's root, whose forward gathers the weights outside the
    decoder layers and whose backward reduces their gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return token_loss_sums(self.model, batch)


def shard(model: nn.Module, bf16_weights: bool) -> TokenLossSums:
    """Shard ``model`` in place over the default process group; the root to call for the loss.

    ``bf16_weights``: the frozen base is bf16 and the LoRA adapters fp32 (training's bf16 LoRA): the gathered
    weights are all bf16 (the fused LoRA layer computes in bf16 anyway), gradients are reduced in fp32."""
    lm = causal_lm(model)
    layer_classes = set(lm._no_split_modules or ())
    layers = [module for module in lm.modules() if type(module).__name__ in layer_classes]
    if not layers:
        raise TunesmithError(
            f"--fsdp: {type(lm).__name__} names no decoder layer class (_no_split_modules) to shard by; "
            "train it without --fsdp"
        )
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_weights else None
    if next(model.parameters()).device.type == "cpu":
        _map_large_blocks()
    root = TokenLossSums(model)
    for unit in [*layers, root]:
        fully_shard(unit, mp_policy=policy or MixedPrecisionPolicy())
        assert isinstance(unit, FSDPModule)
        unit.set_gradient_divide_factor(1.0)  # sums: the loss is already divided by the global target count
        unit.set_force_sum_reduction_for_comms(True)  # SUM, not PREMUL_SUM, which gloo lacks
    return root


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MAPPED_BLOCKS = 64 * 1024


def _map_large_blocks() -> None:
    """Have glibc map blocks of 64 KB and more on their own, and unmap them when freed. By default it raises that
    threshold as blocks are freed and serves them from its heap, which FSDP's gathers, allocated and freed layer
    by layer, fragment: measured on the embedded model, full fine-tuning over 2 CPU processes held 2.19 GB
    resident after 4 steps sharded against 2.43 GB unsharded; with this setting, 1.13 GB against 1.88 GB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, MAPPED_BLOCKS)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded one (a collective: every process calls it, in the same order)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) laid out as ``target``: this process's shard when ``target`` is sharded (a collective:
    rank 0's value is scattered). A value sharded already is returned as it is."""
    if isinstance(target, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
    return value


def sync_gradients(root: TokenLossSums, last: bool) -> None:
    """Reduce gradients after this backward only when it is the step's last micro-batch (FSDP's no_sync)."""
    assert isinstance(root, FSDPModule)
    root.set_requires_gradient_sync(last)


def whole(tensors: dict, keep: bool = True) -> dict:
    """``tensors`` whole, on the CPU. Under FSDP a collective: every process calls it, and one not told to
    ``keep`` the result drops each tensor once gathered (an empty dict)."""
    gathered = {}
    for name, value in tensors.items():
        value = full(value)
        if keep:
            gathered[name] = value.cpu()
    return gathered


def whole_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict:
    """``optimizer.state_dict()`` (AdamW's: tensors only) whole, on the CPU: the same file whether or not the
    processes sharded, so a run resumes either way. Under FSDP a collective, as :func:`whole`."""
    state = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: build new ones
    per_parameter = {index: whole(values, keep) for index, values in state["state"].items()}
    return {**state, "state": per_parameter} if keep else {}


def optimizer_state_like(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole optimizer state laid out as ``optimizer``'s parameters (this process's shards under FSDP; a
    collective then)."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]  # a state dict's numbering

    def laid_out(value, target: torch.Tensor):
        if isinstance(value, torch.Tensor) and value.shape == target.shape:  # the moments; `step` is a scalar
            return like(value, target)
        return value

    return {
        **state,
        "state": {
            index: {key: laid_out(value, parameters[index]) for key, value in values.items()}
            for index, values in state["state"].items()
        },
    }


def passes(rows: list[T], size: int, group: ProcessGroup) -> list[list[T]]:
    """This process's share of ``rows`` in chunks of ``size``. Sharded, every process gets as many chunks (the
    last ones empty where its share is shorter): each forward pass gathers weights with all the others."""
    mine = distributed.shard(rows, group)
    chunks = [mine[start : start + size] for start in range(0, len(mine), size)]
    if group.sharded:
        most = math.ceil(math.ceil(len(rows) / group.world) / size)
        chunks += [[] for _ in range(most - len(chunks))]
    return chunks


@torch.no_grad()
def answer_loss(root: TokenLossSums, rows: list[Row], pad_id: int, batch_size: int, group: ProcessGroup) -> float:
    """Mean loss per target token over ``rows``, each process computing its share through the sharded root (an
    empty chunk runs the first row, its loss not counted); the same value on every process."""
    total = 0.0
    with eval_mode(root.model):
        for chunk in passes(rows, batch_size, group):
            sums = root(loss_batch(root.model, chunk or rows[:1], pad_id))
            total += sums.sum().item() if chunk else 0.0
    return distributed.sum_values([total], group)[0] / max(1, sum(row.n_target for row in rows))
