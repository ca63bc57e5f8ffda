"""What a run starts from, and what a version is built on: base models and earlier fine-tunes.

A run may start from a registry fine-tune (``--base NAME[:VERSION]``), e.g. DPO on top of a
supervised model. The starting weights are then the base model with the ancestors' LoRA adapters
merged in, oldest first, or the weights of a full fine-tune. The new version records its
ancestors in the manifest's ``lineage`` (oldest first) and keeps a copy of every ancestor adapter it
needs under ``lineage/N/``, so it loads on its own even if an ancestor is removed later; a full
fine-tune ancestor (all weights, hundreds of MB) is referred to in the registry instead.

    lineage entry   {"ref": "support-sft:1", "method": "lora", "task": "chat",
                     "adapter": "lineage/0"}      (null for a full fine-tune: its weights are the start)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunesmith.core.config import Method, Task
from tunesmith.core.errors import TunesmithError
from tunesmith.models.base import EMBEDDED, resolve_base
from tunesmith.models.load import load_adapter, load_model
from tunesmith.registry import store
from tunesmith.registry.manifest import LineageEntry, Manifest


@dataclass
class Ancestor:
    ref: str
    method: Method
    task: Task
    adapter: Path | None  # the adapter folder to merge (None: a full fine-tune, whose weights are the start)

    def manifest_entry(self, copied_to: str | None) -> LineageEntry:
        return LineageEntry(ref=self.ref, method=self.method, task=self.task, adapter=copied_to)


@dataclass
class StartingPoint:
    spec: str  # as given; a registry fine-tune pinned to NAME:VERSION
    base_name: str  # the original base model, whatever the lineage
    weights: Path  # the folder of weights loaded first (a base model, or a full fine-tune)
    tokenizer: Path
    lineage: list[Ancestor] = field(default_factory=list)  # oldest first

    @property
    def adapters(self) -> list[Path]:
        """LoRA adapters merged into ``weights``, oldest first: those after the last full fine-tune."""
        tail: list[Path] = []
        for ancestor in self.lineage:
            tail = [] if ancestor.adapter is None else [*tail, ancestor.adapter]
        return tail

    @property
    def parent(self) -> str | None:
        return self.lineage[-1].ref if self.lineage else None


def resolve_start(spec: str) -> StartingPoint:
    """A base name, a model folder, or a registry fine-tune. A bare name in the registry wins over a
    folder of that name in the current directory (as in ``tunesmith chat``); spell a folder ``./NAME``."""
    pinned_version = ":" in spec and not Path(spec).exists()  # NAME:VERSION: let the registry explain
    if spec in EMBEDDED or not (in_registry(spec) or pinned_version):
        try:
            path = resolve_base(spec)
        except TunesmithError as err:
            raise TunesmithError(f"{err}, or a fine-tune in the registry (see `tunesmith models list`)") from None
        return StartingPoint(spec, spec, path, path)
    version = store.get(spec)
    manifest = version.manifest
    own = version_start(manifest, version.path)
    if not manifest.has_adapter:
        me = Ancestor(version.ref, "full", manifest.task, None)
        weights = version.path / "model"
    else:
        me = Ancestor(version.ref, manifest.method, manifest.task, version.path / "adapter")
        weights = own.weights
    return StartingPoint(version.ref, own.base_name, weights, version.path, [*own.lineage, me])


def version_start(manifest: Manifest, version_path: Path) -> StartingPoint:
    """What a registry version's own weights (its adapter, or nothing for a full fine-tune) sit on."""
    base_name = manifest.base.name
    lineage = [
        Ancestor(entry.ref, entry.method, entry.task, version_path / entry.adapter if entry.adapter else None)
        for entry in manifest.lineage
    ]
    full = [ancestor for ancestor in lineage if ancestor.adapter is None]
    if full:
        try:
            weights = store.get(full[-1].ref).path / "model"
        except TunesmithError:
            raise TunesmithError(
                f"{manifest.ref} is built on the full fine-tune {full[-1].ref}, which is no longer in the registry"
            ) from None
    else:
        try:
            weights = resolve_base(base_name)
        except TunesmithError as err:
            raise TunesmithError(f"the base model of this fine-tune is not available: {err}") from None
    return StartingPoint(manifest.ref, base_name, weights, version_path, lineage)


def load_start(start: StartingPoint, dtype: torch.dtype | None = None):
    """The starting weights as a plain model: ``weights`` with the ancestors' adapters merged in."""
    model = load_model(start.weights, dtype=dtype)
    for adapter in start.adapters:
        model = load_adapter(model, adapter).merge_and_unload()
    return model


def in_registry(spec: str) -> bool:
    """Whether ``spec`` names a registry version (a path-like spec never does)."""
    if "/" in spec or spec.startswith((".", "~")):
        return False
    try:
        store.get(spec)
        return True
    except TunesmithError:
        return False
