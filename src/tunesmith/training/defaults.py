"""Defaults chosen from the data (the training-time estimate is in ``training.estimate``).

The rule (also in the README), with n = training examples after the validation split
(for raw text: packed blocks):

    epochs      raw text 1; otherwise 3 if n <= 200, 2 if n <= 1000, else 1
    batch_size  8, halved (down to 1) while the run would have fewer than 64 optimizer steps and the
                smaller batch still holds 256 target tokens a step (raw text's 512-token blocks: down to
                1; short answers and labels: 8, their steps are noisy enough already)
                Where that is still short of 64 steps, epochs are raised instead (up to 10), with early
                stopping guarding against overfitting (counted from the end of the first epoch: loop.py);
                not without a validation set (nothing would guard them), nor for DPO
    lr          LoRA 3e-4;  full fine-tuning 3e-5 if n < 1000 else 2e-5;
                DPO 2e-4 if n < 1000 else 1e-4  (times lr_multiplier)
    lora_rank   16 if n < 10000, else 32     (alpha = 2 * rank; LoRA and DPO)
    max_length  raw text: 512-token blocks (less if the whole corpus is shorter);
                otherwise the 99th percentile of rendered lengths, rounded up to a multiple of 32,
                between 64 and 2048 (and never above the model's context)
    eval_every  4 validation passes per epoch
    checkpoint_every  about 5 checkpoints per run, at most 20 steps apart (a short run that is stopped
                loses a few steps, not all of them)
    precision   bf16 where it is native (CUDA with bf16, or a CPU with AMX or AVX512-BF16), else fp32

On small data the number of optimizer steps, not the number of passes, decides what is learnt
(bench/RESULTS.md, defaults-ablation): smaller batches give more steps for the same compute, and
tiny sets get more passes. Raw text is read once: a second and third pass at batch 2 lowered the
perplexity further (0.79 of the base's against the plain loop's 0.86) but took 1.65x the plain loop's
time (bench/RESULTS.md, defaults-quality-austen-3-epochs), and `--epochs 3` is there for whoever wants it. Larger data
gets a larger rank because there is more to fit.
"""

from __future__ import annotations

import math

from tunesmith.core.config import ResolvedConfig, Task, TrainConfig, default_name
from tunesmith.data.check import default_max_length
from tunesmith.training.hardware import native_bf16

# Peak learning rate by method, (below 1000 examples, from 1000 on). LoRA keeps 3e-4 on larger data too: at
# 2e-4 the cosine decay (to 0.1x) gives about half the plain loop's constant 2e-4 over a run, and on the chat
# corpus (1549 rows) 2e-4 scored 1.1 ROUGE-L points below that loop, beyond the noise, where 3e-4 was level with it
# (bench/RESULTS.md, defaults-quality-chat). DPO's LoRA rate is below SFT's
# (it pushes margins, which overshoot easily) but far above the 5e-7..5e-6 of full-weight DPO recipes:
# on 40 reviewed pairs (examples/corrections, 15 steps) 5e-5 moved the held-out margin by 2 nats of
# 32 and flipped none; 5e-4 flipped all of them within 8 steps.
DEFAULT_LR = {"lora": (3e-4, 3e-4), "full": (3e-5, 2e-5), "dpo": (2e-4, 1e-4)}
DEFAULT_BATCH = 8
MIN_STEPS = 64  # a run's floor of optimizer steps, where the data allows
# A smaller batch must still carry this many target tokens a step. Raw text's blocks carry 511 each and gain
# from batch 1-2 (bench/RESULTS.md, defaults-ablation); a label carries 1-2, and sentiment at batch 1-4
# picked noisy checkpoints (82% at 200 reviews where batch 8 had 86%; bench/RESULTS.md, defaults-ablation).
MIN_STEP_TARGETS = 256
MAX_AUTO_EPOCHS = 10


def resolve(
    config: TrainConfig,
    n_train: int,
    lengths: list[int],
    model_max_length: int | None,
    task: Task,
    labels: list[str] | None = None,
    targets_per_row: float | None = None,
    has_validation: bool = True,
) -> ResolvedConfig:
    """A copy of ``config`` with every auto field filled in from the data and the hardware.
    ``targets_per_row``: the training rows' mean number of target tokens (None: as many as tokens);
    ``has_validation``: whether the run has validation rows (early stopping needs them)."""
    updates: dict = {"task": task, "name": config.name or default_name(config.data)}
    targets = targets_per_row if targets_per_row is not None else sum(lengths) / max(1, len(lengths))
    epochs, batch = epochs_and_batch(
        n_train,
        task,
        targets,
        config.epochs,
        config.batch_size,
        config.micro_batch_size,
        raise_epochs=may_raise_epochs(config.method, has_validation),
    )
    per_epoch = steps_per_epoch(n_train, batch)
    updates.update(batch_size=batch, epochs=epochs)
    if config.lr is None:
        updates["lr"] = DEFAULT_LR[config.method][n_train >= 1000] * config.lr_multiplier
    if config.uses_adapter:
        rank = config.lora_rank or (16 if n_train < 10000 else 32)
        updates["lora_rank"] = rank
        updates["lora_alpha"] = config.lora_alpha or 2.0 * rank
    if config.max_length is None:
        updates["max_length"] = default_max_length(lengths, task, model_max_length)
    if config.micro_batch_size is None:
        updates["micro_batch_size"] = batch
    if config.checkpoint_every is None:
        updates["checkpoint_every"] = default_checkpoint_every(per_epoch * epochs)
    if config.eval_every is None:
        # Rounded up, so the fourth pass of an epoch lands on its last step rather than one step before it.
        updates["eval_every"] = max(1, math.ceil(per_epoch / 4))
    if labels is not None:
        updates["labels"] = labels
    if config.precision == "auto":
        updates["precision"] = "bf16" if native_bf16() else "fp32"
    resolved = config.model_copy(update=updates)
    return ResolvedConfig.model_validate(resolved.model_dump())  # re-run the cross-field checks


def explain(config: TrainConfig, resolved: ResolvedConfig, n_train: int) -> dict[str, str]:
    """Why each setting left on auto got its value, for the run's output and its manifest."""
    why: dict[str, str] = {}
    steps = steps_per_epoch(n_train, resolved.batch_size) * resolved.epochs
    rows = f"{n_train} training {'blocks' if resolved.task == 'text' else 'rows'}"
    if config.batch_size is None:
        short = (
            f"; a smaller batch would hold under {MIN_STEP_TARGETS} target tokens a step" if steps < MIN_STEPS else ""
        )
        why["batch_size"] = (
            f"{resolved.batch_size}: the run makes {steps} optimizer steps{short}"
            if resolved.batch_size == DEFAULT_BATCH
            else f"{resolved.batch_size}, down from {DEFAULT_BATCH}, so that {rows} make {steps} optimizer steps "
            f"(at least {MIN_STEPS} where a step keeps {MIN_STEP_TARGETS} target tokens: small data is short of "
            "steps, not of passes)"
        )
    if config.epochs is None:
        usual = default_epochs(n_train, resolved.task)
        size = (
            "raw text is read once"
            if resolved.task == "text"
            else {3: "up to 200", 2: "up to 1000", 1: "over 1000"}[usual]
        )
        why["epochs"] = (
            f"{resolved.epochs}: up from {usual}, so that a run on {rows} makes {steps} optimizer steps "
            f"(at most {MAX_AUTO_EPOCHS} epochs; early stopping guards against overfitting)"
            if resolved.epochs > usual
            else f"{resolved.epochs}: {rows} ({size})"
        )
    if config.lr is None:
        small, large = DEFAULT_LR[resolved.method]
        size = f" with {'fewer than' if n_train < 1000 else 'at least'} 1000 rows" if small != large else ""
        why["lr"] = f"{resolved.lr:g}: {resolved.method}{size}"
        if config.lr_multiplier != 1:
            why["lr"] += f", times lr_multiplier {config.lr_multiplier:g}"

    if config.uses_adapter and config.lora_rank is None:
        why["lora_rank"] = f"{resolved.lora_rank}: {'fewer than' if n_train < 10000 else 'at least'} 10000 rows"
    return why


def may_raise_epochs(method: str, has_validation: bool) -> bool:
    """More passes only where early stopping can guard them (validation rows), and not for DPO, whose
    margins overshoot within a few steps (DEFAULT_LR): both keep the usual passes."""
    return method != "dpo" and has_validation


def epochs_and_batch(
    n_rows: int,
    task: Task,
    targets_per_row: float,
    epochs: int | None = None,
    batch_size: int | None = None,
    micro_batch_size: int | None = None,
    raise_epochs: bool = True,
) -> tuple[int, int]:
    """The passes and the batch size of a run on ``n_rows`` of ``targets_per_row`` target tokens on average,
    each as given or by the rule above."""
    passes = epochs or default_epochs(n_rows, task)
    batch = batch_size or default_batch_size(n_rows, passes, targets_per_row, micro_batch_size)
    if epochs is None and raise_epochs:
        passes = min(MAX_AUTO_EPOCHS, max(passes, math.ceil(MIN_STEPS / steps_per_epoch(n_rows, batch))))
    return passes, batch


def default_epochs(n_rows: int, task: Task) -> int:
    """Raw text 1 pass; otherwise 3 passes up to 200 examples, 2 up to 1000, then 1."""
    if task == "text":
        return 1
    return 3 if n_rows <= 200 else 2 if n_rows <= 1000 else 1


def default_batch_size(n_rows: int, epochs: int, targets_per_row: float, micro_batch_size: int | None = None) -> int:
    """8, halved while the run would make fewer than MIN_STEPS optimizer steps and half the batch still
    carries MIN_STEP_TARGETS target tokens; a multiple of a given micro-batch size. On small raw-text data
    the steps are what is short, not the passes: the plain PEFT loop at 256-token blocks beat the same loop
    at 512 (the same tokens in twice the steps), and tunesmith at batch 2 beat both clearly. Smaller
    batches buy the steps without more compute."""
    batch = DEFAULT_BATCH
    while (
        batch > 1
        and steps_per_epoch(n_rows, batch) * epochs < MIN_STEPS
        and batch // 2 * targets_per_row >= MIN_STEP_TARGETS
    ):
        batch //= 2
    if micro_batch_size:
        batch = micro_batch_size * max(1, math.ceil(batch / micro_batch_size))
    return batch


def default_checkpoint_every(total_steps: int) -> int:
    """About 5 checkpoints per run, never more than 20 steps apart."""
    return max(1, min(20, math.ceil(total_steps / 5)))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return max(1, math.ceil(n_rows / batch_size))
