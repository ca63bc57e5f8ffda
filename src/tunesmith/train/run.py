"""``tunesmith train``: check the data, fine-tune, compare with the base model, publish a version.

    data check (structure)  -> refuse bad data before any model is loaded
    base model + tokenizer  -> full data check (render, lengths, truncation), defaults resolved
    split + rows            -> base model evaluated on the validation split
    training loop           -> checkpoints in $TUNESMITH_HOME/runs/NAME (resumable)
    fine-tuned evaluated    -> comparison printed, version published atomically to the registry
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from tunesmith import paths
from tunesmith.config import TrainConfig, load_config
from tunesmith.data.check import DataReport, check_data, check_structure
from tunesmith.data.prepare import build_rows, split
from tunesmith.errors import DataError, TunesmithError
from tunesmith.evaluate.compare import comparison_table, evaluate_split, helped
from tunesmith.models.base import resolve_base
from tunesmith.models.load import add_lora, count_parameters, load_model, load_tokenizer
from tunesmith.registry import store
from tunesmith.registry.publish import file_sha256, write_version
from tunesmith.train import defaults
from tunesmith.train.checkpoint import atomic_write_text, latest_checkpoint
from tunesmith.train.loop import LoopResult, train_loop


@dataclass
class TrainResult:
    version: store.ModelVersion | None  # None when interrupted
    loop: LoopResult
    base_metrics: dict
    tuned_metrics: dict
    run_dir: Path


def default_name(data: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(data).stem).strip("-._")
    return (stem or "model")[:64]


def train(config: TrainConfig | None = None, resume: str | None = None,
          console: Console | None = None) -> TrainResult:
    """Run (or resume) a training run; returns the published version and the comparison."""
    console = console or Console(stderr=True, soft_wrap=True)
    if resume is not None:
        config = _config_for_resume(resume)
    assert config is not None
    name = config.name or default_name(config.data)
    run_dir = paths.runs_dir() / name
    if resume is None and latest_checkpoint(run_dir) is not None:
        raise TunesmithError(
            f"an unfinished run named {name!r} is in {run_dir}. Continue it with "
            f"`tunesmith train --resume {name}`, or delete that folder to start over")

    structure = check_structure(config.data, config.task, config.val_data, config.labels)
    if not structure.ok:
        raise DataError(_error_summary(structure), structure)
    data_hash = file_sha256(config.data)
    if resume is not None and (run_dir / "data.sha256").read_text().strip() != data_hash:
        raise TunesmithError(f"{config.data} changed since the run started; resuming would not give the "
                             "same model. Restore the file, or delete the run folder and train again")

    base_path = resolve_base(config.base)
    tokenizer = load_tokenizer(base_path)
    report = check_data(config.data, config.task, tokenizer, config.max_length, config.val_data,
                        config.labels, config.system_prompt)
    if not report.ok:
        raise DataError(_error_summary(report), report)
    for warning in report.warnings:
        console.print(Text(str(warning), style="yellow"))

    splits = split(report, config.val_fraction, config.seed)
    train_rows, val_rows = build_rows(report.task, splits, report.max_length, config.val_fraction,
                                      config.seed, config.val_data is not None)
    if not train_rows:
        raise TunesmithError(f"{config.data}: no training example keeps any answer token at "
                             f"max_length {report.max_length}; raise --max-length")
    config = defaults.resolve(config.model_copy(update={"name": name, "max_length": report.max_length}),
                              len(train_rows), [len(r) for r in train_rows],
                              getattr(tokenizer, "model_max_length", None), report.task, report.labels)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    atomic_write_text(run_dir / "data.sha256", data_hash + "\n")

    torch.manual_seed(config.seed)
    model = load_model(base_path)
    if config.method == "lora":
        model = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
    trainable, total = count_parameters(model)
    console.print(f"[bold]{name}[/]: {report.task} · {len(train_rows)} train / {len(val_rows)} validation rows · "
                  f"{config.method} ({trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters trained) · "
                  f"{config.epochs} epoch(s), lr {config.lr:g}, batch {config.batch_size}, "
                  f"max_length {config.max_length}")

    base_metrics = _base_metrics(run_dir, model, tokenizer, config, splits.val_examples, val_rows)
    started = time.time()
    loop = train_loop(model, config, train_rows, val_rows, tokenizer.pad_token_id, run_dir,
                      resume=resume is not None, log=console.print)
    if loop.interrupted:
        console.print(f"[yellow]Stopped at step {loop.steps}/{loop.total_steps}; checkpoint saved. "
                      f"Continue with:  tunesmith train --resume {name}[/]")
        return TrainResult(None, loop, base_metrics, {}, run_dir)

    tuned_metrics = evaluate_split(model, tokenizer, config.task, splits.val_examples, val_rows,
                                   config.labels, config.system_prompt) if val_rows else {}
    if base_metrics and tuned_metrics:
        console.print(comparison_table(config.task, base_metrics, tuned_metrics,
                                       f"{name}: base vs fine-tuned on {len(val_rows)} validation rows"))
    comparison = {"base": base_metrics, "fine_tuned": tuned_metrics,
                  "helped": helped(config.task, base_metrics, tuned_metrics) if base_metrics else None}
    version = write_version(name, model, tokenizer, config, report, base_path, loop, comparison,
                            wall_seconds=time.time() - started, run_dir=run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    console.print(f"Saved [bold]{version.ref}[/] to {version.path}")
    return TrainResult(version, loop, base_metrics, tuned_metrics, run_dir)


def _config_for_resume(name: str) -> TrainConfig:
    run_dir = paths.runs_dir() / store.parse_ref(name)[0]
    if latest_checkpoint(run_dir) is None or not (run_dir / "config.yaml").is_file():
        raise TunesmithError(f"nothing to resume: no checkpoint for a run named {name!r} in {run_dir}")
    return load_config(run_dir / "config.yaml")


def _base_metrics(run_dir: Path, model, tokenizer, config: TrainConfig, val_examples, val_rows) -> dict:
    """The base model on the validation split, computed once per run (kept for resumes)."""
    cached = run_dir / "base_metrics.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if not val_rows:
        return {}
    # With LoRA the base model is the same weights with the adapters switched off.
    context = model.disable_adapter() if config.method == "lora" else nullcontext()
    with context:
        metrics = evaluate_split(model, tokenizer, config.task, val_examples, val_rows,
                                 config.labels, config.system_prompt)
    atomic_write_text(cached, json.dumps(metrics))
    return metrics


def _error_summary(report: DataReport) -> str:
    errors = report.errors
    lines = [str(issue) for issue in errors[:50]]
    if len(errors) > 50:
        lines.append(f"... and {len(errors) - 50} more errors (see `tunesmith data check`)")
    return f"{len(errors)} error(s) in the data; nothing was trained:\n" + "\n".join(lines)
