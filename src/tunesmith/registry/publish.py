"""Writing a finished run into the registry as a new immutable version.

A version folder holds:

    adapter/           LoRA adapter in PEFT format (methods lora and dpo)   or
    model/             all weights as safetensors + config (method full)
    lineage/N/         copies of the adapters of earlier fine-tunes it builds on (models.lineage)
    tokenizer files    tokenizer.json, tokenizer_config.json, chat_template.jinja
    config.yaml        the resolved training config
    manifest.json      base model and its hash, lineage (earlier fine-tunes it builds on, oldest
                       first), data hashes and counts, labels, prompt template, library versions,
                       seed, metrics, training time, provenance (who started the run: null from
                       the CLI, {"job": ID, ...} from a `tunesmith serve` job)
    metrics.jsonl      the training history, one line per step
    loss.png           training and validation loss
    fewshot.jsonl      a seeded, label-balanced sample of training examples for the few-shot baseline
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from tunesmith.core.config import ResolvedConfig
from tunesmith.data.check import DataReport
from tunesmith.data.labels import CLASSIFY_TEMPLATE
from tunesmith.data.shots import POOL_FILE, pool_records
from tunesmith.evaluation.results import Comparison
from tunesmith.models.base import EMBEDDED, weights_hash
from tunesmith.registry import store
from tunesmith.registry.lineage import StartingPoint
from tunesmith.registry.manifest import BaseModelInfo, DataFile, DataFiles, LineageEntry, Manifest, TrainingInfo
from tunesmith.training.state import LoopResult, StepMetrics


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("tunesmith", "torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_version(
    name: str,
    model,
    tokenizer,
    config: ResolvedConfig,
    report: DataReport,
    start: StartingPoint,
    loop: LoopResult,
    comparison: Comparison,
    wall_seconds: float,
    run_dir: Path,
    shot_pool: list | None = None,
    provenance: dict | None = None,
    defaults: dict[str, str] | None = None,
) -> store.ModelVersion:
    staging = store.staging_dir()
    try:
        weights = staging / ("adapter" if config.uses_adapter else "model")
        model.save_pretrained(weights)
        lineage = (
            _copy_lineage(start, staging)
            if config.uses_adapter
            else [ancestor.manifest_entry(None) for ancestor in start.lineage]
        )  # all weights are in model/
        tokenizer.save_pretrained(staging)
        (staging / "config.yaml").write_text(config.to_yaml())
        shutil.copy(run_dir / "metrics.jsonl", staging / "metrics.jsonl")
        plot_loss(loop.history, staging / "loss.png", title=name)
        if shot_pool and config.task != "text":
            records = pool_records(shot_pool, config.seed)
            (staging / POOL_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        manifest = Manifest(
            name=name,
            version=None,  # set by store.publish
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            task=config.task,
            method=config.method,
            base=BaseModelInfo(
                name=start.base_name,
                path=str(start.weights),
                sha256=weights_hash(start.weights),
                embedded=start.base_name in EMBEDDED,
            ),
            lineage=lineage,
            data=DataFiles(
                train=_data_entry(config.data, len(report.train.examples)),
                val=_data_entry(config.val_data, len(report.val.examples)) if report.val else None,
            ),
            labels=config.labels,
            system_prompt=config.system_prompt,
            prompt_template=CLASSIFY_TEMPLATE if config.task == "classify" else None,
            seed=config.seed,
            config=config,
            libraries=library_versions(),
            metrics=comparison,
            provenance=provenance,
            training=TrainingInfo(
                steps=loop.steps,
                total_steps=loop.total_steps,
                best_step=loop.best_step,
                best_val_loss=loop.best_val_loss,
                stopped_early=loop.stopped_early,
                tokens=loop.tokens,
                train_seconds=round(loop.train_seconds, 2),
                wall_seconds=round(wall_seconds, 2),
                device=str(next(model.parameters()).device.type),
                precision=config.precision,
                threads=torch.get_num_threads(),
                processes=loop.processes,
                sharded=loop.sharded,
                defaults=defaults,
            ),
        )
        (staging / store.MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2))
        return store.publish(name, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a successful rename anyway


def _copy_lineage(start: StartingPoint, staging: Path) -> list[LineageEntry]:
    """Manifest entries for the ancestors, with a copy of each adapter the new one sits on."""
    needed = set(start.adapters)
    entries = []
    for index, ancestor in enumerate(start.lineage):
        copied = None
        if ancestor.adapter in needed:
            copied = f"lineage/{index}"
            shutil.copytree(ancestor.adapter, staging / copied)
        entries.append(ancestor.manifest_entry(copied))
    return entries


def _data_entry(path: Path | None, rows: int) -> DataFile | None:
    if path is None:
        return None
    return DataFile(path=str(Path(path).resolve()), sha256=file_sha256(Path(path)), rows=rows)


def plot_loss(history: list[StepMetrics], target: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [entry.step for entry in history]
    axis.plot(steps, [entry.loss for entry in history], label="train loss", linewidth=1)
    val = [(entry.step, entry.val_loss) for entry in history if entry.val_loss is not None]
    if val:
        axis.plot(*zip(*val), marker="o", label="validation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss per target token")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
