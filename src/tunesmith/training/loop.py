"""The training loop: explicit and readable, one optimizer step at a time.

    for each epoch:        rows in a seeded, length-grouped order (batching.epoch_order)
      for each step:       the objective's micro-batches, gradients summed (supervised: loss
                           normalised by the step's target-token count, so accumulation equals one
                           big batch; DPO: training.dpo), clip, AdamW, warm-up + cosine schedule
        every eval_every:  validation loss; from the end of the first epoch on, keep the best weights and
                           stop early after `early_stopping_patience` passes without improvement
        every checkpoint_every (and on Ctrl-C or SIGTERM): an atomic checkpoint

Under torchrun (training.distributed) every process runs this same loop over the same order; each computes
its share of a step's rows, the gradients are summed once per step, and rank 0 alone writes checkpoints and
metrics while the others wait. Validation runs on rank 0 and its figures are sent to the others, so the best
weights and the early stop are decided alike everywhere. Under FSDP (training.sharding) each process holds a
share of the weights, so all of them validate and gather each checkpoint.

Everything the loop needs to continue lives in the checkpoint, so ``--resume`` after a crash
replays the same order from the same state and ends with the same weights.

``TrainHooks`` let code outside follow a run as it goes (``tunesmith serve`` turns them into job
events and checkpoint records); the loop works the same without them.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from tunesmith.core.config import ResolvedConfig
from tunesmith.core.errors import TunesmithError
from tunesmith.data.batching import Row, epoch_order
from tunesmith.training import checkpoint as ckpt
from tunesmith.training import distributed, sharding
from tunesmith.training.defaults import DEFAULT_BATCH, steps_per_epoch
from tunesmith.training.distributed import SINGLE, ProcessGroup
from tunesmith.training.kernels import training_kernels
from tunesmith.training.loss import answer_loss, loss_batch, token_loss_sums
from tunesmith.training.sharding import TokenLossSums
from tunesmith.training.state import LoopResult, LoopState, StepMetrics, TrainHooks
from tunesmith.training.stop_signals import StopSignals


def make_optimizer(model, config: ResolvedConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))


def make_scheduler(optimizer, total_steps: int, config: ResolvedConfig):
    warmup = math.ceil(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    model,
    rows: list[Row],
    micro_batch_size: int,
    pad_id: int,
    group: ProcessGroup = SINGLE,
    root: TokenLossSums | None = None,
) -> tuple[float, int]:
    """Forward/backward over micro-batches of this process's share of the step's ``rows``; returns (the step's
    mean target-token loss, its non-padding tokens), both over all processes. Each share is divided by the
    step's global target count, so the gradients summed over processes are the one-process gradient.

    ``root``: the sharded loss under FSDP (training.sharding), which reduces the gradients after the last
    micro-batch; an empty micro-batch (a share shorter than another process's) runs a row with weight 0."""
    n_target = max(1, sum(row.n_target for row in rows))
    chunks = sharding.passes(rows, micro_batch_size, group)
    total = 0.0
    for index, chunk in enumerate(chunks):
        batch = loss_batch(model, chunk or rows[:1], pad_id)
        if root is None:
            loss_sum = token_loss_sums(model, batch).sum()
        else:
            sharding.sync_gradients(root, last=index == len(chunks) - 1)
            loss_sum = root(batch).sum() * (1.0 if chunk else 0.0)
        (loss_sum / n_target).backward()
        total += loss_sum.item()
    total = distributed.sum_values([total], group)[0]
    return total / n_target, sum(len(row) for row in rows)


class Objective(Protocol):
    """What the loop optimises: one step's gradients, and the figures of a validation pass."""

    def step(
        self, model, rows: list, micro_batch_size: int, pad_id: int, group: ProcessGroup
    ) -> tuple[float, int, dict]:
        """Accumulate this process's share of the step's gradients, scaled so that their sum over processes is
        the step's gradient; (loss, tokens processed, extra figures to log), each over all processes."""

    def validate(self, model, rows: list, pad_id: int, batch_size: int, group: ProcessGroup) -> dict:
        """Figures on the validation rows; ``val_loss`` decides the best weights and early stopping. Called on
        rank 0 alone (``group`` SINGLE), or under FSDP on every process with the run's group."""


class SupervisedObjective:
    """Next-token loss on the answer tokens (LoRA and full fine-tuning). ``root``: the model sharded under FSDP
    (training.sharding.shard), through which every forward pass goes."""

    def __init__(self, root: TokenLossSums | None = None):
        self.root = root

    def step(
        self, model, rows: list[Row], micro_batch_size: int, pad_id: int, group: ProcessGroup = SINGLE
    ) -> tuple[float, int, dict]:
        return (*train_step(model, rows, micro_batch_size, pad_id, group, self.root), {})

    def validate(self, model, rows: list[Row], pad_id: int, batch_size: int, group: ProcessGroup = SINGLE) -> dict:
        if self.root is not None:
            return {"val_loss": sharding.answer_loss(self.root, rows, pad_id, batch_size, group)}
        return {"val_loss": answer_loss(model, rows, pad_id, batch_size)["loss"]}


def train_loop(
    model,
    config: ResolvedConfig,
    train_rows: list,
    val_rows: list,
    pad_id: int,
    run_dir: Path,
    resume: bool = False,
    log=print,
    hooks: TrainHooks | None = None,
    objective: Objective | None = None,
    group: ProcessGroup = SINGLE,
) -> LoopResult:
    """``objective``: supervised by default; rows are whatever it takes (``Row``, or ``PairRow`` for DPO).
    ``group``: this process's place under torchrun (training.distributed); hooks run on rank 0 only."""
    hooks = (hooks or TrainHooks()) if group.main else TrainHooks()
    objective = objective or SupervisedObjective()
    per_epoch = steps_per_epoch(len(train_rows), config.batch_size)
    total_steps = per_epoch * config.epochs
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, total_steps, config)
    lengths = [len(row) for row in train_rows]
    # Validation is forward-only: small data's batch of 1 or 2 need not make it one row at a time. A
    # micro-batch set below the batch is a memory limit, and is kept.
    accumulating = config.micro_batch_size < config.batch_size
    validation_batch = config.micro_batch_size if accumulating else max(config.batch_size, DEFAULT_BATCH)

    state = LoopState()
    best: dict[str, torch.Tensor] | None = None
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if group.parallel:
        _same_checkpoint_everywhere(latest, run_dir, group)
    if latest is not None:
        saved, best = ckpt.load_checkpoint(latest, model, optimizer, scheduler)
        state = LoopState.from_checkpoint(saved)
        log(f"Resuming from {latest.name} (step {state.global_step} of {total_steps})")
    metrics_file = run_dir / "metrics.jsonl"
    if group.main:
        metrics_file.write_text("".join(json.dumps(entry.to_json()) + "\n" for entry in state.history))
    if hooks.on_start:
        hooks.on_start(config, total_steps, state.global_step)

    def save() -> None:
        # Every process holds the same weights and optimizer state (the same summed gradients): one writes.
        # Sharded, each holds a share: all of them gather it, rank 0 writes.
        if group.main or group.sharded:
            folder = ckpt.save_checkpoint(
                run_dir, state.global_step, model, optimizer, scheduler, state.to_checkpoint(), best, group.main
            )
            if hooks.on_checkpoint and state.history:
                hooks.on_checkpoint(state.global_step, folder, state.history[-1])
        distributed.barrier(group)

    def record(entry: StepMetrics) -> None:
        state.history.append(entry)
        if not group.main:
            return
        with open(metrics_file, "a") as handle:
            handle.write(json.dumps(entry.to_json()) + "\n")
        if hooks.on_metrics:
            hooks.on_metrics(entry)

    model.train()
    # On a terminal the bar redraws in place; in a log (CI, a job) it writes a line every 10 s.
    progress = tqdm(
        total=total_steps,
        initial=state.global_step,
        unit="step",
        dynamic_ncols=True,
        desc="training",
        mininterval=0.5 if sys.stderr.isatty() else 10,
        disable=not group.main,
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    interrupted = False
    # The kernels are switched on once for the loop (~27 ms to patch every layer), validation included.
    with StopSignals() as stop, training_kernels(model, config.precision == "bf16"):
        while state.epoch < config.epochs and not state.stopped_early:
            order = epoch_order(lengths, config.batch_size, config.seed, state.epoch)
            while state.step_in_epoch < len(order):
                if distributed.any_process(stop.requested, group):
                    interrupted = True
                    break
                started = time.perf_counter()
                rows = [train_rows[i] for i in order[state.step_in_epoch]]
                loss, tokens, figures = objective.step(model, rows, config.micro_batch_size, pad_id, group)
                if not group.sharded:  # FSDP has reduced them
                    distributed.sum_gradients(trained, group)
                grad_norm = None
                if config.grad_clip:
                    norm = torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
                    grad_norm = sharding.full(norm).item()  # sharded gradients have a sharded norm
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - started
                state.step_in_epoch += 1
                state.global_step += 1
                state.seconds += seconds
                state.tokens += tokens
                step = state.global_step
                values = {
                    "step": step,
                    "epoch": state.epoch + state.step_in_epoch / len(order),
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens / seconds,
                    **figures,
                }
                if val_rows and (step % config.eval_every == 0 or step == total_steps):
                    if group.sharded:  # every process holds a share of the weights: all of them validate
                        values.update(objective.validate(model, val_rows, pad_id, validation_batch, group))
                    else:
                        measured = (
                            objective.validate(model, val_rows, pad_id, validation_batch, SINGLE)
                            if group.main
                            else None
                        )
                        values.update(distributed.from_main(measured, group))
                    # Weights that have not seen every example once are not candidates: on a small set the
                    # validation loss of 2-20 examples is noisy enough to crown a model from mid-epoch one
                    # (sentiment, 200 reviews: the best step was 36 of 135, 144 reviews seen, 82% on test).
                    if step >= per_epoch:
                        best = _track_best(state, values["val_loss"], step, model, best)
                    if config.early_stopping_patience and state.bad_evals >= config.early_stopping_patience:
                        state.stopped_early = True
                entry = StepMetrics(**values)
                record(entry)
                progress.set_postfix(_progress_figures(entry))
                progress.update(1)
                if step % config.checkpoint_every == 0 or state.stopped_early:
                    save()
                if state.stopped_early:
                    log(
                        f"Early stop at step {step}: no validation improvement in "
                        f"{config.early_stopping_patience} evaluations"
                    )
                    break
            if interrupted:
                break
            if state.step_in_epoch >= len(order):
                state.epoch += 1
                state.step_in_epoch = 0
        if interrupted:
            save()
    progress.close()

    if not interrupted and best is not None and state.best_step != state.global_step:
        ckpt.load_trainable_state(model, best)  # end on the best validation weights
    return LoopResult(
        steps=state.global_step,
        total_steps=total_steps,
        history=state.history,
        best_val_loss=state.best_val_loss,
        best_step=state.best_step,
        stopped_early=state.stopped_early,
        interrupted=interrupted,
        train_seconds=state.seconds,
        tokens=state.tokens,
        processes=group.world,
        sharded=group.sharded,
    )


def _same_checkpoint_everywhere(latest: Path | None, run_dir: Path, group: ProcessGroup) -> None:
    """Every process must resume from rank 0's checkpoint: one that starts afresh beside the others would
    silently train another model (machines that do not share TUNESMITH_HOME)."""
    mine = latest.name if latest else None
    expected = distributed.from_main(mine, group)
    if mine != expected:
        raise TunesmithError(
            f"process {group.rank} finds checkpoint {mine or 'none'} in {run_dir}, rank 0 resumes from "
            f"{expected or 'none'}: every process must see the same run folder (put TUNESMITH_HOME on a disk the "
            "machines share)"
        )


def _progress_figures(entry: StepMetrics) -> dict[str, str]:
    """The progress bar's postfix: loss, speed, and the validation figures of steps that have them."""
    shown = {"loss": f"{entry.loss:.4f}", "tok_s": f"{entry.tokens_per_s:.0f}"}
    if entry.val_loss is not None:
        shown["val"] = f"{entry.val_loss:.4f}"
    if entry.val_preference_accuracy is not None:
        shown["pref_acc"] = f"{entry.val_preference_accuracy:.2f}"
    return shown


def _track_best(state: LoopState, val_loss: float, step: int, model, best):
    """The best trainable weights so far (a copy), updating the state's best step and patience count."""
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        state.best_val_loss = val_loss
        state.best_step = step
        state.bad_evals = 0
        return {name: value.clone() for name, value in ckpt.trainable_state(model).items()}
    state.bad_evals += 1
    return best
