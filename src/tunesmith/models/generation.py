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

from tunesmith.data.batching import MIN_SHARED_PREFIX, common_prefix_length
from tunesmith.models.kv_cache import appends_in_place, expanded_cache, prefix_cache
from tunesmith.models.parts import eval_mode


@dataclass
class Generated:
    text: str
    new_tokens: int
    seconds: float  # wall time of the batch it was in, divided among its prompts


@torch.no_grad()
def generate_batch(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16, share_prefix: bool = True
) -> list[Generated]:
    """Greedy completions of tokenised ``prompts`` (in their order), stopping at end-of-turn."""
    if not prompts:
        return []
    with eval_mode(model):
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
                input_ids=torch.tensor(ids, device=device),
                attention_mask=torch.tensor(mask, device=device),
                cache=expanded_cache(prefix or [], len(chunk), room) if prefix or room else None,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad_id,
            )
            seconds = (time.perf_counter() - began) / len(chunk)
            for row, index in enumerate(chunk):
                new = output[row, len(ids[row]) :].tolist()
                if tokenizer.eos_token_id in new:
                    new = new[: new.index(tokenizer.eos_token_id) + 1]
                results[index] = Generated(tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), seconds)
    return results  # type: ignore[return-value]
