"""The data check as ``tunesmith data check`` runs it: with the base model's tokenizer and chat template,
the training time this machine would take and the time and cost on a rented GPU (``training.estimate``)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.core.config import TaskChoice
from tunesmith.data import check
from tunesmith.data.check import DataReport
from tunesmith.models.base import DEFAULT_BASE, parameter_count, resolve_base
from tunesmith.models.load import load_tokenizer
from tunesmith.training.estimate import estimate_training


def check_file(
    data: Path,
    task: TaskChoice = "auto",
    base: str = DEFAULT_BASE,
    max_length: int | None = None,
    val_data: Path | None = None,
) -> DataReport:
    """The whole check of a file for ``base``: the structure first, so a broken file loads no tokenizer; then
    rendering under the base's chat template, and one epoch's training time (LoRA; DPO for preference pairs)
    here and on a rented GPU, at the default batch size."""
    report = check.check_structure(Path(data), task, val_data)
    if not report.ok:
        return report
    base_path = resolve_base(base)
    report = check.check_data(Path(data), task, load_tokenizer(base_path), max_length, val_data)
    n_params = parameter_count(base_path)
    if n_params and report.ok and report.rendered:
        method = "dpo" if report.task == "preference" else "lora"
        report.estimate = estimate_training(report, n_params, method)
    return report
