"""LoRA adapters kept apart from the base they adapt, so that many versions share one copy of its weights.

``read_lora`` reads a PEFT adapter folder into plain tensors (A, and B with the scaling folded in), or says
why it cannot (DoRA, per-module ranks, adapted embeddings, ...: such versions are merged and served
alone). An ``AdapterBank`` lays the adapters in use for one base side by side per projection (index 0 is
no adapter), so that a batch whose rows use different adapters computes every row's delta with the same two
small matmuls per projection (``RowAdapters.project``): the batched-adapter matmul S-LoRA/Punica do with
custom GPU kernels, done here with a mask since on a CPU a few dozen extra columns cost next to nothing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

# base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
_KEY = re.compile(r"\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
Projection = tuple[int, str]  # (layer index, projection name)


@dataclass
class LoraWeights:
    """One adapter: per projection, A [rank, in] and B·scaling [out, rank]."""

    weights: dict[Projection, tuple[torch.Tensor, torch.Tensor]]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.weights.values() for t in pair)


def read_lora(folder: Path, dtype: torch.dtype, device: torch.device) -> LoraWeights | str:
    """The adapter in ``folder`` (adapter_config.json, adapter_model.safetensors), or why it cannot be
    applied unmerged here."""
    config = json.loads((folder / "adapter_config.json").read_text())
    for setting, why in (
        ("use_dora", "DoRA"),
        ("rank_pattern", "per-module ranks"),
        ("alpha_pattern", "per-module alphas"),
        ("modules_to_save", "fully trained modules"),
    ):
        if config.get(setting):
            return why
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        return "trained biases"
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    halves: dict[Projection, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            return f"an adapted module outside the decoder layers ({key})"
        layer, name, half = match.groups()
        halves.setdefault((int(layer), name), {})[half] = tensor
    weights = {}
    for projection, pair in halves.items():
        a, b = pair["A"], pair["B"] * scaling
        weights[projection] = (a.to(device, dtype), b.to(device, dtype))
    return LoraWeights(weights)


class AdapterBank:
    """The adapters a base serves at the moment, side by side per projection (block 0: no adapter, zeros)."""

    def __init__(self, model):
        self.model = model
        self.ids: dict[str, int] = {}  # adapter key -> index in the stacks
        self._adapters: list[LoraWeights | None] = [None]  # index 0: no adapter
        self._stacks: dict[Projection, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rank = 0

    def add(self, key: str, lora: LoraWeights) -> int:
        """The index of ``key``'s adapter, stacking it if it is not in use yet."""
        if key in self.ids:
            return self.ids[key]
        free = [i for i, adapter in enumerate(self._adapters) if adapter is None and i > 0]
        index = free[0] if free else len(self._adapters)
        if index == len(self._adapters):
            self._adapters.append(lora)
        else:
            self._adapters[index] = lora
        self.ids[key] = index
        self._restack()
        return index

    def release(self, key: str) -> None:
        """No row uses ``key`` any more: its place may be reused."""
        index = self.ids.pop(key, None)
        if index is not None:
            self._adapters[index] = None
            self._restack()

    def stack(self, projection: Projection) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A of every adapter side by side [in, slots * rank], B likewise [slots * rank, out]) or None."""
        return self._stacks.get(projection)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def slots(self) -> int:
        return len(self._adapters)

    def _restack(self) -> None:
        """Every adapter's rank padded to the largest with zeros, in its own block of columns; a projection
        an adapter does not touch is zero in its block. Adapters change between requests, not between
        steps: rebuilding the stacks (a few MB) then is cheap."""
        present = [a for a in self._adapters if a is not None]
        projections = {p for adapter in present for p in adapter.weights}
        self._rank = max((a.shape[0] for adapter in present for a, _ in adapter.weights.values()), default=0)
        self._stacks = {}
        rank, slots = self._rank, len(self._adapters)
        for projection in projections:
            a0, b0 = next(adapter.weights[projection] for adapter in present if projection in adapter.weights)
            a_cat = a0.new_zeros(a0.shape[1], slots * rank)
            b_cat = b0.new_zeros(slots * rank, b0.shape[0])
            for index, adapter in enumerate(self._adapters):
                pair = None if adapter is None else adapter.weights.get(projection)
                if pair is not None:
                    a, b = pair
                    a_cat[:, index * rank : index * rank + a.shape[0]] = a.T
                    b_cat[index * rank : index * rank + b.shape[1]] = b.T
            self._stacks[projection] = (a_cat, b_cat)


class RowAdapters:
    """Which adapter each row of a forward pass uses, and what they add to each projection.

    Every row's input goes through every adapter's A at once (one matmul: adapters × rank columns, a few
    dozen), a mask keeps each row's own block, and one matmul with the B blocks gives each row its own
    delta: two small matmuls per projection whatever the mix of adapters, no per-row gather of weights."""

    def __init__(self, bank: AdapterBank | None, ids: list[int]):
        self.bank = bank
        self.none = bank is None or not any(ids)
        if not self.none:
            assert bank is not None
            parameter = next(bank.model.parameters())
            blocks = torch.nn.functional.one_hot(torch.tensor(ids, device=parameter.device), bank.slots)
            # [rows, 1, slots * rank]: 1 on the row's own adapter's block
            self.mask = blocks.repeat_interleave(bank.rank, dim=1).unsqueeze(1).to(parameter.dtype)

    def delta(self, x: torch.Tensor, layer: int, name: str) -> torch.Tensor | None:
        """What the rows' adapters add to projection ``name`` of ``layer`` for input ``x``; None for nothing."""
        if self.none:
            return None
        assert self.bank is not None
        stack = self.bank.stack((layer, name))
        if stack is None:
            return None
        a_cat, b_cat = stack
        return ((x @ a_cat) * self.mask) @ b_cat
