"""Loaded models kept between requests, bounded by the bytes of their weights.

Keys are resolved refs (a base name or ``NAME:VERSION``, see serve.catalog), so a request for
``NAME`` after a new version was published loads the new version. Once the loaded models' parameters
and buffers exceed ``max_bytes``, the least recently used are dropped; the model just loaded always
stays, so a model larger than the bound still serves. The bound is enforced after a load: for a
moment the old models and the new one are in memory together. A dropped model that a request is
still generating with lives on until that request ends (the request holds a reference).

Concurrent first requests for one key load it once, and different keys load one after the other: loading
in transformers is not thread-safe (two models loaded on two threads at once failed with "Cannot copy out
of meta tensor": the playground asks for its columns' models together). ``get`` blocks while loading:
call it from a worker thread, never from the event loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.inference.loaded import LoadedModel
from tunesmith.serve import catalog


def model_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (tied weights counted once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class _Entry:
    loaded: LoadedModel
    size: int


class ModelPool:
    def __init__(self, max_bytes: int, loader: Callable[[str], LoadedModel] | None = None):
        self.max_bytes = max_bytes
        self._loader = loader or catalog.load
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _entries
        self._load_lock = threading.Lock()  # one load at a time

    def get(self, key: str) -> LoadedModel:
        with self._lock:
            if (loaded := self._touch(key)) is not None:
                return loaded
        with self._load_lock:
            with self._lock:
                if (loaded := self._touch(key)) is not None:  # loaded while this request waited
                    return loaded
            loaded = self._loader(key)
            size = model_bytes(loaded.model)
            with self._lock:
                self._entries[key] = _Entry(loaded, size)
                self._evict()
        return loaded

    def keys(self) -> list[str]:
        """Loaded keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    def _touch(self, key: str) -> LoadedModel | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.loaded

    def _evict(self) -> None:
        total = sum(entry.size for entry in self._entries.values())
        while total > self.max_bytes and len(self._entries) > 1:
            _key, entry = self._entries.popitem(last=False)
            total -= entry.size
