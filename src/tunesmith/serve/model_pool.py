"""Loaded models kept between requests, bounded by the bytes of their weights.

Keys are resolved refs (a base name or ``NAME:VERSION``, see serve.catalog), so a request for
``NAME`` after a new version was published loads the new version. A LoRA version may be its adapter over a
base that is an entry of its own (shared by every version on it): it then counts its adapter's bytes, is
kept as recently used as its base, and goes when its base goes. Once the loaded models' parameters
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
        self.loader = loader or catalog.load
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _entries
        self._load_lock = threading.RLock()  # one load at a time (a version's load gets its base's)

    def get(self, key: str) -> LoadedModel:
        with self._lock:
            if (loaded := self._touch(key)) is not None:
                return loaded
        with self._load_lock:
            with self._lock:
                if (loaded := self._touch(key)) is not None:  # loaded while this request waited
                    return loaded
            loaded = self.loader(key)
            size = loaded.adapter.bytes if loaded.adapter is not None else model_bytes(loaded.model)
            with self._lock:
                self._entries[key] = _Entry(loaded, size)
                self._evict(keep=loaded.model)
        return loaded

    def holds(self, model) -> bool:
        """Whether ``model`` is still the weights of a loaded entry."""
        with self._lock:
            return any(entry.loaded.model is model for entry in self._entries.values())

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
        if entry.loaded.adapter is not None:  # its base is in use too
            for other, shared in list(self._entries.items()):
                if shared.loaded.adapter is None and shared.loaded.model is entry.loaded.model:
                    self._entries.move_to_end(other)
            self._entries.move_to_end(key)
        return entry.loaded

    def _evict(self, keep) -> None:
        """Least recently used first, down to ``max_bytes``, sparing the weights ``keep`` (the model just
        loaded, and the base it rides on)."""
        total = sum(entry.size for entry in self._entries.values())
        for key in list(self._entries):
            if total <= self.max_bytes:
                return
            entry = self._entries.get(key)
            if entry is None or entry.loaded.model is keep:
                continue  # gone with its base already, or in use by the model just loaded
            del self._entries[key]
            total -= entry.size
            if entry.loaded.adapter is None:  # versions over these weights go with them
                for other, riding in list(self._entries.items()):
                    if riding.loaded.model is entry.loaded.model:
                        total -= self._entries.pop(other).size
