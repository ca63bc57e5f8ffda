"""What the training loop records and carries: each step's metrics, its position in the run (saved in
every checkpoint), the callbacks that follow it, and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.core.config import ResolvedConfig
from tunesmith.core.results import Result


class StepMetrics(Result):
    """One optimizer step: a line of metrics.jsonl. Validation figures only on steps that validated."""

    step: int
    epoch: float  # fractional: 1.5 is halfway through the second epoch
    loss: float
    lr: float
    grad_norm: float | None  # before clipping; None when clipping is off
    tokens_per_s: float
    # DPO (training.dpo): mean implicit reward margin of the step's pairs, share with a positive margin
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    val_loss: float | None = None
    val_reward_margin: float | None = None
    val_reward_accuracy: float | None = None
    # DPO: share of held-out pairs whose chosen answer the model itself finds more likely
    val_preference_accuracy: float | None = None


@dataclass
class LoopState:
    """Where a run is. Everything the loop needs to continue is here or in the optimizer and scheduler,
    so a resumed run replays the same batches from the same state."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[StepMetrics] = field(default_factory=list)
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validation passes since the best one
    stopped_early: bool = False
    seconds: float = 0.0  # inside the loop's steps (validation included), summed over resumes
    tokens: int = 0

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain values for ``torch.save`` (loaded with weights_only=False, but plain survives refactors)."""
        return {**asdict(self), "history": [entry.to_json() for entry in self.history]}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> LoopState:
        return cls(**{**saved, "history": [StepMetrics(**entry) for entry in saved.get("history", [])]})


@dataclass
class TrainHooks:
    """Callbacks into a running loop; each is optional and runs in the loop's thread.

    on_start(config, total_steps, start_step)  once, with the resolved config (start_step > 0 on resume)
    on_metrics(entry)                          after each step (validation figures when measured)
    on_checkpoint(step, folder, entry)         after each checkpoint is on disk, with the latest entry
    """

    on_start: Callable[[ResolvedConfig, int, int], None] | None = None
    on_metrics: Callable[[StepMetrics], None] | None = None
    on_checkpoint: Callable[[int, Path, StepMetrics], None] | None = None


def chained(*hooks: TrainHooks | None) -> TrainHooks:
    """One TrainHooks calling each given one's callbacks in turn (the caller's, then a tracker's)."""
    present = [h for h in hooks if h is not None]

    def each(name: str):
        callbacks = [getattr(h, name) for h in present if getattr(h, name) is not None]
        if not callbacks:
            return None

        def call(*args) -> None:
            for callback in callbacks:
                callback(*args)

        return call

    return TrainHooks(on_start=each("on_start"), on_metrics=each("on_metrics"), on_checkpoint=each("on_checkpoint"))


@dataclass
class LoopResult:
    steps: int
    total_steps: int
    history: list[StepMetrics] = field(default_factory=list)
    best_val_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    train_seconds: float = 0.0
    tokens: int = 0
    processes: int = 1  # data-parallel processes (torchrun), each with `threads` torch threads
    sharded: bool = False  # the processes held a share of the weights each (FSDP)
