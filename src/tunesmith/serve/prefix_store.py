"""Keys and values of recent prompts, so that a prompt sharing their start (a system prompt, a few-shot
block, an earlier turn of the same chat) skips computing it.

A position's keys and values depend only on the tokens up to it (causal attention), so the first ``m``
columns of any stored prompt serve every prompt that begins with the same ``m`` tokens. Entries are kept
per adapter (an adapter changes the keys and values) and dropped least recently used first past
``max_bytes``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from tunesmith.data.batching import MIN_SHARED_PREFIX, common_prefix_length

KeysValues = tuple[list[torch.Tensor], list[torch.Tensor]]  # per layer [kv_heads, length, head_dim]


class PrefixStore:
    def __init__(self, max_bytes: int, min_tokens: int = MIN_SHARED_PREFIX):
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], KeysValues] = OrderedDict()
        self._bytes = 0
        self.hits = self.reused_tokens = 0

    def longest(self, adapter: str, prompt: list[int]) -> tuple[int, list[torch.Tensor], list[torch.Tensor]] | None:
        """(length, keys, values) of the longest stored start of ``prompt`` (leaving at least its last
        token to compute), or None below ``min_tokens``."""
        best, best_key = 0, None
        for key in self._entries:
            if key[0] == adapter:
                length = min(common_prefix_length([list(key[1]), prompt]), len(prompt) - 1)
                if length > best:
                    best, best_key = length, key
        if best_key is None or best < self.min_tokens:
            return None
        self._entries.move_to_end(best_key)
        keys, values = self._entries[best_key]
        self.hits += 1
        self.reused_tokens += best
        return best, [k[:, :best] for k in keys], [v[:, :best] for v in values]

    def add(self, adapter: str, tokens: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        if len(tokens) < self.min_tokens:
            return
        key = (adapter, tuple(tokens))
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = sum(t.numel() * t.element_size() for t in (*keys, *values))
        if size > self.max_bytes:
            return
        self._entries[key] = (keys, values)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (old_keys, old_values) = self._entries.popitem(last=False)
            self._bytes -= sum(t.numel() * t.element_size() for t in (*old_keys, *old_values))
