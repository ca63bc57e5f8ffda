"""Key/value caches: a shared prefix run once and copied into each batch, and a cache layer that writes
new tokens into reserved room instead of concatenating (generation, evaluation losses, serving)."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin, DynamicLayer

from tunesmith.models.parts import causal_lm


def prefix_cache(model, prefix_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Key/value tensors of ``prefix_ids`` (batch of one), per layer."""
    device = next(model.parameters()).device
    cache = DynamicCache()
    lm = causal_lm(model)
    lm.get_decoder()(input_ids=torch.tensor([prefix_ids], device=device), cache=cache, use_cache=True)
    return [_keys_values(layer) for layer in cache.layers]


def _keys_values(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A filled attention layer's keys and values."""
    if not isinstance(layer, CacheLayerMixin) or layer.keys is None or layer.values is None:
        raise TypeError(f"a {type(layer).__name__} cache layer holds no keys and values")
    return layer.keys, layer.values


class _AppendingLayer(DynamicLayer):
    """A cache layer that writes new keys and values into room reserved after the old ones.

    transformers' DynamicLayer concatenates the whole cache with each new token (torch.cat): for a
    batch of 8-shot prompts (~2,000 tokens) that copy moved twice the bytes the attention reads, every
    step, in every layer. Here ``keys``/``values`` are views of a buffer with ``room`` positions
    (grown by doubling if a caller goes past it), so a step writes only its own token."""

    def __init__(self, room: int = 0):
        super().__init__()
        self.room = room
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None  # set by lazy_initialization
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        # Reallocate when full, or when someone replaced keys/values (beam reordering, cropping is fine).
        buffers = self._buffers
        if buffers is None or end > buffers[0].shape[-2] or (start and keys.data_ptr() != buffers[0].data_ptr()):
            length = max(end, self.room) if buffers is None else max(end, 2 * buffers[0].shape[-2])
            new_keys, new_values = (
                new.new_empty((*new.shape[:-2], length, new.shape[-1])) for new in (key_states, value_states)
            )
            buffers = (new_keys, new_values)
            if start:
                buffers[0][..., :start, :] = keys
                buffers[1][..., :start, :] = values
            self._buffers = buffers
        buffers[0][..., start:end, :] = key_states
        buffers[1][..., start:end, :] = value_states
        self.keys, self.values = buffers[0][..., :end, :], buffers[1][..., :end, :]
        return self.keys, self.values


def appends_in_place(model) -> bool:
    """Whether every layer of ``model`` attends to the whole sequence, so that its cache can be
    _AppendingLayers (sliding-window layers keep transformers' own cache)."""
    lm = causal_lm(model)
    config = lm.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    return all(kind == "full_attention" for kind in types) if types else getattr(config, "sliding_window", None) is None


def expanded_cache(prefix: list[tuple[torch.Tensor, torch.Tensor]], batch: int, room: int = 0) -> DynamicCache:
    """A fresh cache holding ``prefix`` for ``batch`` rows (copied: the prefix itself is never written).
    With ``room`` (only for a model that appends_in_place), that many positions per row, prefix included,
    are reserved and new tokens are written into them."""
    cache = DynamicCache()
    if room:
        # transformers calls it to make each layer: a factory serves as well as the class it is typed as
        cache.layer_class_to_replicate = lambda: _AppendingLayer(room)  # type: ignore[assignment]
    for index, (keys, values) in enumerate(prefix):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), index)
    return cache


def answer_cache(model, prompt_length: int, max_new_tokens: int) -> DynamicCache | None:
    """An empty cache for one prompt and its answer (``model.generate(cache=...)``), or None
    (generate's own) for a model that does not append_in_place. A large ``max_new_tokens`` is not
    reserved up front: past the first 1024 new tokens the room doubles."""
    if not appends_in_place(model):
        return None
    return expanded_cache([], 1, room=prompt_length + min(max_new_tokens, 1024))
