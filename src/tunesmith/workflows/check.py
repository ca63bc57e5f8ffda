"""The data check as ``tunesmith data check`` runs it: with the base model's tokenizer and chat template,
and the training time this machine would take (``training.defaults.estimate_seconds``)."""

from __future__ import annotations

from pathlib import Path

from tunesmith.core.config import Method
from tunesmith.data import check
from tunesmith.data.check import DataReport
from tunesmith.models.base import DEFAULT_BASE, parameter_count, resolve_base
from tunesmith.models.load import load_tokenizer
from tunesmith.training.defaults import estimate_seconds


def check_data(
    data: Path,
    task: str = "auto",
    tokenizer=None,
    max_length: int | None = None,
    val_data: Path | None = None,
    labels: list[str] | None = None,
    system_prompt: str | None = None,
    n_params: int | None = None,
    method: Method = "lora",
) -> DataReport:
    """``data.check.check_data``, and with ``n_params`` the estimated time of one training epoch."""
    report = check.check_data(data, task, tokenizer, max_length, val_data, labels, system_prompt)
    if n_params and report.ok and report.rendered:
        trained_as: Method = "dpo" if report.task == "preference" else method
        report.estimate_seconds = estimate_seconds(report.tokens_per_epoch(), n_params, trained_as)
    return report


def check_file(
    data: Path,
    task: str = "auto",
    base: str = DEFAULT_BASE,
    max_length: int | None = None,
    val_data: Path | None = None,
) -> DataReport:
    """The whole check of a file for ``base``; the structure first, so a broken file loads no tokenizer."""
    report = check.check_structure(Path(data), task, val_data)
    if not report.ok:
        return report
    base_path = resolve_base(base)
    return check_data(
        Path(data), task, load_tokenizer(base_path), max_length, val_data, n_params=parameter_count(base_path)
    )
