"""The Python API: one function for each CLI command; the CLI is a thin shell over it."""

from __future__ import annotations

from pathlib import Path

from tunesmith.core.config import TrainConfig, load_config
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.check import DataReport
from tunesmith.evaluation.measure import EvalOptions
from tunesmith.evaluation.report import write_eval_report
from tunesmith.inference import loaded
from tunesmith.models import base
from tunesmith.registry import store
from tunesmith.workflows import check, curve
from tunesmith.workflows import evaluate as evaluation
from tunesmith.workflows import train as training

__all__ = [
    "TrainConfig",
    "load_config",
    "DataError",
    "TunesmithError",
    "check_data",
    "train",
    "evaluate",
    "learning_curve",
    "load",
    "generate",
    "list_models",
    "get_model",
    "remove_model",
    "list_bases",
]


def check_data(
    path: str | Path,
    task: str = "auto",
    base: str = base.DEFAULT_BASE,
    max_length: int | None = None,
    val: str | Path | None = None,
) -> DataReport:
    """The data check (`tunesmith data check`); returns a DataReport (``.ok``, ``.errors``, ``.to_json()``)."""
    return check.check_file(Path(path), task, base, max_length, Path(val) if val else None)


def train(config: TrainConfig | None = None, resume: str | None = None):
    """Fine-tune (`tunesmith train`); returns a TrainResult with the published version."""
    return training.train(config, resume=resume)


def evaluate(
    model: str,
    data: str | Path,
    baselines: tuple[str, ...] = ("base", "few_shot"),
    shots: int = 8,
    report: str | Path | None = None,
    **options,
) -> dict:
    """The model against the base zero-shot and few-shot on held-out data (`tunesmith eval`).

    ``options`` are the fields of ``tunesmith.evaluation.measure.EvalOptions``; ``report`` also writes
    the HTML report. Returns the same dict as ``tunesmith eval --json``."""
    figures = evaluation.evaluate(model, Path(data), tuple(baselines), EvalOptions(shots=shots, **options))
    if report is not None:
        write_eval_report(figures, Path(report))
    return figures


def learning_curve(
    train_file: str | Path,
    test_file: str | Path,
    sizes: list[int],
    config: TrainConfig | None = None,
    name: str | None = None,
) -> dict:
    """Train on nested subsets and evaluate each (`tunesmith curve`)."""
    return curve.learning_curve(Path(train_file), Path(test_file), sizes, config, name)


def load(model: str):
    """Load a registry model (NAME, NAME:VERSION), a base model name or a local folder for generation."""
    return loaded.load(model)


def generate(model, prompt: str, max_tokens: int = 128, temperature: float = 0.0) -> str:
    """One answer (`tunesmith generate`); ``model`` is a loaded model or a reference to load."""
    return loaded.generate_answer(
        load(model) if isinstance(model, str) else model, prompt, max_tokens=max_tokens, temperature=temperature
    )


def list_models() -> list[dict]:
    return [version.summary() for version in store.list_models()]


def get_model(ref: str) -> dict:
    return store.get(ref).manifest


def remove_model(ref: str, force: bool = False) -> list[str]:
    """Delete NAME (every version) or NAME:VERSION; ``force`` also when other versions are built on it."""
    return [version.ref for version in store.remove(ref, force)]


def list_bases() -> list[dict]:
    return base.list_bases()


# Shown as `tunesmith.train` (help(), tracebacks, docs), where users call them from.
for _function in (
    check_data,
    train,
    evaluate,
    learning_curve,
    load,
    generate,
    list_models,
    get_model,
    remove_model,
    list_bases,
):
    _function.__module__ = "tunesmith"
