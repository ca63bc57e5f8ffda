"""Data-parallel training over torch.distributed: which process this is, and the few collectives the loop needs.

torchrun (or `tunesmith train --nproc N`, which re-launches under it) starts N copies of the same command and
sets WORLD_SIZE, RANK and LOCAL_RANK; ``join`` reads them and opens the process group (NCCL on GPUs, one
device per local rank; gloo on CPUs). Every process loads the same data and model and computes the same batch
order (a function of seed and epoch only); each takes its share of a step's rows (``shard``), and the gradients
are summed across processes once per optimizer step (``sum_gradients``) before clipping. The loss is divided by
the step's *global* number of target tokens, so N processes make exactly the update one process makes on the
same batch, and a checkpoint does not depend on how many processes wrote it.

Why an explicit all-reduce after the micro-batches and not a DistributedDataParallel wrapper: the loss runs the
decoder and applies the output head only at target positions (models.parts.hidden_and_head), not through the
module DDP would wrap, whose hooks would then never fire; and a process with no rows in a step (the last, short
batch) must still take part, which DDP's one-reduction-per-backward rule makes awkward. One reduction per step is
what DDP does under ``no_sync`` accumulation anyway; what is given up is overlapping it with the backward pass,
which matters for large models on fast interconnects, not for adapters of a few million weights.

With ``--fsdp`` the processes also split the weights, their gradients and the optimizer's state
(training.sharding): FSDP then reduces the gradients itself, and every process takes part in validation and in
gathering a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tunesmith.core.errors import TunesmithError

# Rank 0 measures the baselines and the fine-tuned model, and publishes, while the others wait: minutes on a
# CPU. A process that dies breaks the others' collectives at once (the connection closes); this bounds a hang.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
# Gradients are reduced in buckets of this many elements: full fine-tuning need not hold a second copy of all
# of them at once.
BUCKET_ELEMENTS = 1 << 24

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a run: ``rank`` of ``world`` processes, ``local_rank`` on its machine;
    ``sharded``: each process holds a share of the weights (FSDP), not all of them."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False

    @property
    def main(self) -> bool:
        """The process that writes: checkpoints, metrics, the registry version, the printed comparison."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


SINGLE = ProcessGroup()


def join(sharded: bool = False) -> ProcessGroup:
    """The group this process belongs to, from torchrun's environment; one process where it is not set. Opens
    the default process group once (NCCL with CUDA, each local rank on its own GPU; gloo otherwise).
    ``sharded`` (FSDP) opens a group of one for a single process too: FSDP shards over a process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if not sharded:
            return SINGLE
        if not dist.is_initialized():  # FSDP over one process (a smoke run): a group of one, no rendezvous
            dist.init_process_group(_backend(), store=dist.HashStore(), rank=0, world_size=1)
        return ProcessGroup(sharded=True)
    group = ProcessGroup(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), sharded)
    if not dist.is_initialized():
        if torch.cuda.is_available():
            if group.local_rank >= torch.cuda.device_count():
                raise TunesmithError(
                    f"local rank {group.local_rank} but {torch.cuda.device_count()} GPU(s) on this machine: "
                    "start at most one process per GPU (--nproc / --nproc-per-node)"
                )
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group(_backend(), timeout=COLLECTIVE_TIMEOUT)
    return group


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


class ProcessLost(TunesmithError):
    """A collective failed: another process of the run is gone (killed, crashed, or its machine lost)."""


@contextmanager
def _collective() -> Iterator[None]:
    """A collective that fails because another process is gone says so, instead of gloo's or NCCL's socket
    error (torchrun reports which process failed first)."""
    try:
        yield
    except RuntimeError as failure:  # DistBackendError is one; gloo raises RuntimeError itself
        raise ProcessLost(
            f"another process of this run stopped (torchrun reports which failed first), so this one stopped too "
            f"({str(failure).splitlines()[0][:300]})"
        ) from failure


def leave(group: ProcessGroup) -> None:
    """Close the process group (after the last collective), so the process exits without NCCL's warning."""
    if (group.parallel or group.sharded) and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: list[T], group: ProcessGroup) -> list[T]:
    """This process's share of a step's rows: every world-th one, so lengths (the order groups similar ones)
    and counts stay balanced; a process may get none in a short last batch."""
    return rows[group.rank :: group.world]


def _device() -> torch.device:
    # NCCL reduces tensors on the process's GPU, gloo on the CPU.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_values(values: Iterable[float], group: ProcessGroup) -> list[float]:
    """Each value summed over the processes (float64)."""
    values = list(values)
    if not group.parallel:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    with _collective():
        dist.all_reduce(tensor)
    return tensor.tolist()


def any_process(flag: bool, group: ProcessGroup) -> bool:
    """True on every process when it is true on one (a stop request seen by one rank stops them all at the
    same step)."""
    return bool(sum_values([float(flag)], group)[0]) if group.parallel else flag


def sum_gradients(parameters: list[torch.nn.Parameter], group: ProcessGroup) -> None:
    """Replace each parameter's gradient with its sum over the processes, in buckets; a parameter with no
    gradient here (a process without rows this step) counts as zeros."""
    if not group.parallel:
        return
    device = _device()
    for bucket in _buckets(parameters):
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device, torch.float32)
                for p in bucket
            ]
        )
        with _collective():
            dist.all_reduce(flat)
        offset = 0
        for p in bucket:
            summed = flat[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype)
            offset += p.numel()
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)


def _buckets(parameters: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    buckets: list[list[torch.nn.Parameter]] = [[]]
    size = 0
    for p in parameters:
        if buckets[-1] and size + p.numel() > BUCKET_ELEMENTS:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    return [bucket for bucket in buckets if bucket]


def broadcast_parameters(parameters: Iterable[torch.nn.Parameter], group: ProcessGroup) -> None:
    """Rank 0's values in every process (the LoRA initialisation is random: the same seed gives the same
    values, this makes sure of it, as DDP does when it wraps a module)."""
    if not group.parallel:
        return
    device = _device()
    with torch.no_grad():
        for p in parameters:
            value = p.data.to(device)
            with _collective():
                dist.broadcast(value, src=0)
            p.data.copy_(value.to(p.device))


def from_main(value: Any, group: ProcessGroup) -> Any:
    """Rank 0's ``value`` on every process (validation figures, so that every rank takes the same decision)."""
    if not group.parallel:
        return value
    box = [value]
    with _collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (the others wait here while rank 0 writes or measures)."""
    if group.parallel:
        with _collective():
            dist.barrier()
