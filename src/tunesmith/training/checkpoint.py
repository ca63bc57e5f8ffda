"""Checkpoints that survive ``kill -9`` at any moment.

A checkpoint is a folder ``checkpoints/step-NNNNNN`` holding the trainable weights (the LoRA
adapter, or all weights for full fine-tuning) as safetensors, the best weights so far, and
``state.pt`` with optimizer, scheduler, RNG states and the loop position. It is written into a
temporary folder, flushed, and renamed into place; then ``LATEST`` (a one-line file, replaced
atomically) points at it. A crash at any point leaves the previous checkpoint intact.

Tensors are saved whole, also under FSDP (training.sharding), where every process takes part in gathering them
and rank 0 writes: a checkpoint does not depend on how many processes wrote it, nor on whether they sharded.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.core.durable import atomic_write_text
from tunesmith.training.sharding import like, optimizer_state_like, whole, whole_optimizer_state

KEEP = 2  # checkpoints kept on disk


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def whole_trainable_state(model, keep: bool = True) -> dict[str, torch.Tensor]:
    """The trainable weights whole, on the CPU (under FSDP a collective: see sharding.whole)."""
    return whole(trainable_state(model), keep)


def load_trainable_state(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (whole, or shards laid out as the weights) into the model's trainable weights."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(like(value, params[name]))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    loop_state: dict,
    best: dict[str, torch.Tensor] | None,
    write: bool = True,
) -> Path:
    """Write the checkpoint of ``step``; its folder. Under FSDP every process calls this (the shards are
    gathered first) and only the one given ``write`` writes."""
    trainable = whole_trainable_state(model, write)
    best = whole(best, write) if best is not None else None
    optimizer_state = whole_optimizer_state(optimizer, write)
    folder = run_dir / "checkpoints"
    final = folder / f"step-{step:06d}"
    if not write:
        return final
    folder.mkdir(parents=True, exist_ok=True)
    if (final / "state.pt").is_file():
        # Saved already: Ctrl-C right after a checkpoint, or a replay after resuming from an
        # earlier one (deterministic, so the content is the same). Only move the pointer.
        atomic_write_text(folder / "LATEST", final.name + "\n")
        return final
    staging = folder / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({k: v.contiguous() for k, v in trainable.items()}, staging / "trainable.safetensors")
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, staging / "best.safetensors")
    torch.save(
        {
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "loop": loop_state,
        },
        staging / "state.pt",
    )
    _fsync_tree(staging)
    shutil.rmtree(final, ignore_errors=True)  # an incomplete one from before a crash
    os.rename(staging, final)
    atomic_write_text(folder / "LATEST", final.name + "\n")
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / "state.pt").is_file() else None


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, scheduler and RNG; returns (loop state, best weights or None)."""
    load_trainable_state(model, load_file(folder / "trainable.safetensors"))
    state = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(optimizer_state_like(state["optimizer"], optimizer))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    best_file = folder / "best.safetensors"
    best = load_file(best_file) if best_file.is_file() else None
    return state["loop"], best
