"""Batched greedy generation with a KV cache, reusing the prompt prefix all requests share.

Prompts are sorted by length and generated in batches with ``model.generate`` (KV cache, left
padding). When every prompt starts with the same tokens (the system prompt, a few-shot block), that
prefix is run once; each batch then starts from a copy of its key/value cache, with the padding
placed between the prefix and each prompt's own tokens ("middle padding"): the attention mask hides
the padding and position ids come from the mask, so every prompt sees exactly what it would alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunesmith.data.batching import MIN_SHARED_PREFIX, common_prefix_length


@dataclass
class Generated:
    text: str
    new_tokens: int
    seconds: float  # wall time of the batch it was in, divided among its prompts


def prefix_cache(model, prefix_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Key/value tensors of ``prefix_ids`` (batch of one), per layer."""
    device = next(model.parameters()).device
    cache = DynamicCache()
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    causal_lm.get_decoder()(input_ids=torch.tensor([prefix_ids], device=device), past_key_values=cache,
                            use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


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
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        # Reallocate when full, or when someone replaced keys/values (beam reordering, cropping is fine).
        buffers = self._buffers
        if buffers is None or end > buffers[0].shape[-2] or (start and self.keys.data_ptr() != buffers[0].data_ptr()):
            length = max(end, self.room) if buffers is None else max(end, 2 * buffers[0].shape[-2])
            buffers = tuple(new.new_empty((*new.shape[:-2], length, new.shape[-1])) for new in (key_states, value_states))
            if start:
                buffers[0][..., :start, :] = self.keys
                buffers[1][..., :start, :] = self.values
            self._buffers = buffers
        buffers[0][..., start:end, :] = key_states
        buffers[1][..., start:end, :] = value_states
        self.keys, self.values = buffers[0][..., :end, :], buffers[1][..., :end, :]
        return self.keys, self.values


def appends_in_place(model) -> bool:
    """Whether every layer of ``model`` attends to the whole sequence, so that its cache can be
    _AppendingLayers (sliding-window layers keep transformers' own cache)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = causal_lm.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    return all(kind == "full_attention" for kind in types) if types else getattr(config, "sliding_window", None) is None


def expanded_cache(prefix: list[tuple[torch.Tensor, torch.Tensor]], batch: int, room: int = 0) -> DynamicCache:
    """A fresh cache holding ``prefix`` for ``batch`` rows (copied: the prefix itself is never written).
    With ``room`` (only for a model that appends_in_place), that many positions per row, prefix included,
    are reserved and new tokens are written into them."""
    cache = DynamicCache()
    if room:
        cache.layer_class_to_replicate = lambda: _AppendingLayer(room)
    for index, (keys, values) in enumerate(prefix):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), index)
    return cache


def answer_cache(model, prompt_length: int, max_new_tokens: int) -> DynamicCache | None:
    """An empty cache for one prompt and its answer (``model.generate(past_key_values=...)``), or None
    (generate's own) for a model that does not append_in_place. A large ``max_new_tokens`` is not
    reserved up front: past the first 1024 new tokens the room doubles."""
    if not appends_in_place(model):
        return None
    return expanded_cache([], 1, room=prompt_length + min(max_new_tokens, 1024))


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
                   share_prefix: bool = True) -> list[Generated]:
    """Greedy completions of tokenised ``prompts`` (in their order), stopping at end-of-turn."""
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shared = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1) if share_prefix else 0
    prefix = prefix_cache(model, prompts[0][:shared]) if shared >= MIN_SHARED_PREFIX else None
    if prefix is None:
        shared = 0
    appends = appends_in_place(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generated | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        tails = [prompts[i][shared:] for i in chunk]
        width = max(len(t) for t in tails)
        ids = [prompts[chunk[0]][:shared] + [pad_id] * (width - len(t)) + t for t in tails]
        mask = [[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails]
        room = shared + width + max_new_tokens if appends else 0
        began = time.perf_counter()
        output = model.generate(
            input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(mask, device=device),
            past_key_values=expanded_cache(prefix or [], len(chunk), room) if prefix or room else None,
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id)
        seconds = (time.perf_counter() - began) / len(chunk)
        for row, index in enumerate(chunk):
            new = output[row, len(ids[row]):].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            results[index] = Generated(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), seconds)
    model.train(was_training)
    return results  # type: ignore[return-value]
