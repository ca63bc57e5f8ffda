"""What an export writes out: a registry version or a base model, in fp32, with the tokenizer and template it was
trained with, and what its weights sit on (the original base, earlier fine-tunes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.core.errors import TunesmithError
from tunesmith.inference.loaded import LoadedModel, load, load_version
from tunesmith.models.base import EMBEDDED, EmbeddedBase, resolve_base, weights_hash
from tunesmith.registry import store
from tunesmith.registry.lineage import StartingPoint, in_registry, load_start, version_start


@dataclass
class ExportSource:
    ref: str  # NAME:VERSION, or the base model as given
    version: store.ModelVersion | None  # None: a base model exported as it is
    start: StartingPoint | None  # what the version's own weights sit on (None for a base model)
    base_name: str  # the original base model, whatever the lineage
    base_folder: Path  # its Hugging Face folder

    @property
    def has_adapter(self) -> bool:
        return self.version is not None and self.version.manifest.has_adapter

    @property
    def tokenizer_folder(self) -> Path:
        return self.version.path if self.version else self.base_folder

    @property
    def adapter_folder(self) -> Path:
        if not self.has_adapter:
            raise TunesmithError(
                f"{self.ref} is a full fine-tune: it has no adapter. Export it with --format hf or --format gguf"
            )
        assert self.version is not None  # has_adapter says so
        return self.version.path / "adapter"

    @property
    def builds_on_fine_tunes(self) -> bool:
        """Whether the version's own weights sit on earlier fine-tunes rather than on the original base."""
        return bool(self.start and self.start.lineage)

    @property
    def weights_folder(self) -> Path:
        """The folder whose config.json describes the exported architecture."""
        if self.version and not self.has_adapter:
            return self.version.path / "model"
        return self.start.weights if self.start else self.base_folder

    def model_config(self) -> dict:
        return json.loads((self.weights_folder / "config.json").read_text())

    def embedded(self) -> EmbeddedBase | None:
        """The shipped base the weights started from (its GGUF's tokenizer keys and tensors are reused)."""
        return EMBEDDED.get(self.base_name)

    def source_gguf(self) -> Path | None:
        embedded = self.embedded()
        folder = embedded.gguf_folder() if embedded else None
        return folder / embedded.gguf_file if folder and embedded else None

    def base_sha256(self) -> str:
        return weights_hash(self.base_folder)

    def reference(self) -> LoadedModel:
        """The model as tunesmith serves it (adapters merged), in fp32: the yardstick of every parity check."""
        if self.version:
            return load_version(self.version, merge=True, precision="fp32")
        return load(self.ref, precision="fp32")

    def starting_model(self):
        """The weights the version's adapter sits on, ancestors merged in fp32 (``--with-base``)."""
        if self.start is None:
            raise TunesmithError(f"{self.ref} is a base model: there is no adapter to put on it")
        return load_start(self.start, dtype=torch.float32)


def resolve_source(ref: str) -> ExportSource:
    """A registry version (NAME or NAME:VERSION), an embedded base name or a local model folder."""
    if ref not in EMBEDDED and (in_registry(ref) or not Path(ref).expanduser().is_dir()):
        version = store.get(ref)
        manifest = version.manifest
        start = version_start(manifest, version.path)
        return ExportSource(version.ref, version, start, start.base_name, resolve_base(start.base_name))
    folder = resolve_base(ref)
    return ExportSource(ref, None, None, ref, folder)
