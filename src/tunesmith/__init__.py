"""tunesmith: fine-tune small language models on your own data and prove that it helped.

The Python API mirrors the CLI::

    import tunesmith
    report = tunesmith.check_data("reviews.jsonl")                 # tunesmith data check
    result = tunesmith.train(tunesmith.TrainConfig(data="reviews.jsonl", name="reviews"))
    figures = tunesmith.evaluate("reviews", "test.jsonl")           # tunesmith eval
    model = tunesmith.load("reviews")                               # registry, base name or folder
    print(tunesmith.generate(model, "The soup was cold."))         # tunesmith generate
    tunesmith.list_models(); tunesmith.get_model("reviews:1"); tunesmith.remove_model("reviews")
    tunesmith.list_bases()                                          # tunesmith base list
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import TrainConfig, load_config
from tunesmith.errors import DataError, TunesmithError

__version__ = "0.1.0"
__all__ = ["TrainConfig", "load_config", "DataError", "TunesmithError", "check_data", "train", "evaluate",
           "load", "generate", "list_models", "get_model", "remove_model", "list_bases"]


def check_data(path: str | Path, task: str = "auto", base: str = "smollm2-135m", max_length: int | None = None,
               val: str | Path | None = None):
    """The data check (`tunesmith data check`); returns a DataReport (``.ok``, ``.errors``, ``.to_json()``)."""
    from tunesmith.data import check
    from tunesmith.models.base import parameter_count, resolve_base
    from tunesmith.models.load import load_tokenizer

    report = check.check_structure(Path(path), task, Path(val) if val else None)
    if not report.ok:
        return report
    base_path = resolve_base(base)
    return check.check_data(Path(path), task, load_tokenizer(base_path), max_length,
                            Path(val) if val else None, n_params=parameter_count(base_path))


def train(config: TrainConfig | None = None, resume: str | None = None):
    """Fine-tune (`tunesmith train`); returns a TrainResult with the published version."""
    from tunesmith.training.run import train as run

    return run(config, resume=resume)


def evaluate(model: str, data: str | Path, baselines: tuple[str, ...] = ("base", "few_shot"), shots: int = 8,
             report: str | Path | None = None, **options) -> dict:
    """The model against the base zero-shot and few-shot on held-out data (`tunesmith eval`).

    ``options`` are the fields of ``tunesmith.evaluation.measure.EvalOptions``; ``report`` also writes
    the HTML report. Returns the same dict as ``tunesmith eval --json``."""
    from tunesmith.evaluation.measure import EvalOptions
    from tunesmith.evaluation.run import evaluate as run

    figures = run(model, Path(data), tuple(baselines), EvalOptions(shots=shots, **options))
    if report is not None:
        from tunesmith.evaluation.report import write_eval_report

        write_eval_report(figures, Path(report))
    return figures


def learning_curve(train_file: str | Path, test_file: str | Path, sizes: list[int],
                   config: TrainConfig | None = None, name: str | None = None) -> dict:
    """Train on nested subsets and evaluate each (`tunesmith curve`)."""
    from tunesmith.evaluation.curve import learning_curve as run

    return run(Path(train_file), Path(test_file), sizes, config, name)


def load(model: str):
    """Load a registry model (NAME, NAME:VERSION), a base model name or a local folder for generation."""
    from tunesmith.inference import load as run

    return run(model)


def generate(model, prompt: str, max_tokens: int = 128, temperature: float = 0.0) -> str:
    """One answer (`tunesmith generate`); ``model`` is a loaded model or a reference to load."""
    from tunesmith.inference import generate as run

    return run(load(model) if isinstance(model, str) else model, prompt, max_tokens=max_tokens,
               temperature=temperature)


def list_models() -> list[dict]:
    from tunesmith.registry import store

    return [version.summary() for version in store.list_models()]


def get_model(ref: str) -> dict:
    from tunesmith.registry import store

    return store.get(ref).manifest


def remove_model(ref: str, force: bool = False) -> list[str]:
    """Delete NAME (every version) or NAME:VERSION; ``force`` also when other versions are built on it."""
    from tunesmith.registry import store

    return [version.ref for version in store.remove(ref, force)]


def list_bases() -> list[dict]:
    from tunesmith.models.base import list_bases as run

    return run()
