"""Linear layers with their weights pre-packed once for oneDNN: the matrix products of decode steps (CPU).

A decode step is products of a few rows against every weight of the model, so its speed is how fast the weights
stream through the cores. PyTorch's fp32 product of 2 to 64 rows packs the whole weight matrix again on every
call: on 2 cores a step of 4 rows took 88 ms where one row took 58. oneDNN's ``_reorder_linear_weight`` packs
each weight once, when a base's decoder is built, and ``_linear_pointwise`` multiplies by the packed copy. Decode
steps of the embedded model (fp32, 2 threads, in-process): 1 row 58 -> 41 ms, 4 rows 88 -> 42 ms, 16 rows 99 -> 64
ms, 32 rows 134 -> 92 ms; bf16: 1 row 37 -> 31 ms. Products equal the plain ones to fp32 rounding. The packed
copies cost the weights' bytes again; GPUs and builds without oneDNN use the plain product.
"""

from __future__ import annotations

import torch


class PackedLinears:
    def __init__(self, linears: list[torch.nn.Linear]):
        self._packed: dict[int, torch.Tensor] = {}
        weight = linears[0].weight if linears else None
        usable = (
            weight is not None
            and weight.device.type == "cpu"
            and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()
        )
        if usable:
            with torch.no_grad():
                for linear in linears:
                    self._packed[id(linear)] = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._packed.values())

    def __call__(self, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed.get(id(linear))
        if packed is None:
            return linear(x)
        return torch.ops.mkldnn._linear_pointwise(x, packed, linear.bias, "none", [], "")
