"""The manifest of a registry version (``manifest.json``): what it was built from and how, and what it
scored. Typed here, read by attribute; the file is a public contract (core.results).

The registry itself needs only the first few fields (name, version, task, method, base, lineage);
the rest describe how a run made the version, and a manifest without them (an earlier release's, a
test's) still reads, with those fields None. A version reads back exactly what its file holds."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from tunesmith.core.config import Method, Precision, Task, TrainConfig, trains_adapter
from tunesmith.core.results import Result
from tunesmith.evaluation.results import Comparison


class BaseModelInfo(Result):
    name: str  # the original base model, whatever the lineage
    path: str | None = None  # the folder its weights were loaded from
    sha256: str | None = None  # of its weight files (models.base.weights_hash)
    embedded: bool | None = None  # the package-shipped default


class LineageEntry(Result):
    """An earlier fine-tune this version is built on (registry.lineage), oldest first."""

    ref: str
    method: Method
    task: Task
    adapter: str | None  # its adapter's copy inside this version (lineage/N); None: a full fine-tune


class DataFile(Result):
    path: str
    sha256: str
    rows: int


class DataFiles(Result):
    train: DataFile | None
    val: DataFile | None = None


class TrainingInfo(Result):
    steps: int
    total_steps: int
    best_step: int | None
    best_val_loss: float | None
    stopped_early: bool
    tokens: int
    train_seconds: float
    wall_seconds: float
    device: str = "cpu"  # "cuda" where it trained on a GPU
    precision: Precision | None = None
    threads: int | None = None  # torch threads while training (per process): the CPU-seconds of break-even
    processes: int = 1  # data-parallel processes (`--nproc`, torchrun)
    sharded: bool = False  # the processes split the weights too (`--fsdp`)
    defaults: dict[str, str] | None = None  # why each setting left on auto got its value (training.defaults.explain)


class Manifest(Result):
    # Keys a later release adds survive a read and a write by this one.
    model_config = ConfigDict(extra="allow")

    name: str | None  # None until store.publish names and numbers it
    version: int | None
    created: str | None = None
    task: Task
    method: Method
    base: BaseModelInfo
    lineage: list[LineageEntry] = []
    data: DataFiles | None = None
    labels: list[str] | None = None
    system_prompt: str | None = None
    prompt_template: str | None = None
    seed: int = 0
    # The resolved config (ResolvedConfig); read as a TrainConfig since older releases left some fields null.
    config: TrainConfig | None = None
    libraries: dict[str, str | None] = {}
    metrics: Comparison = Comparison()  # the closing comparison on the validation split
    provenance: dict[str, Any] | None = None  # who started the run: {"job": ID, ...} from `tunesmith serve`
    training: TrainingInfo | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def has_adapter(self) -> bool:
        """LoRA and DPO versions hold an adapter; full fine-tunes hold every weight."""
        return trains_adapter(self.method)

    @property
    def parent(self) -> str | None:
        """The fine-tune this version was trained on top of, if any."""
        return self.lineage[-1].ref if self.lineage else None
