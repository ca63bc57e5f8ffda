"""The Python API: one function for each CLI command, and everything a command can do. The CLI
(tunesmith.cli) only turns flags into these arguments and prints what they return.

Each CLI command is a process of its own, so a function here imports the machinery it runs (torch,
transformers, the server) when it is called: `tunesmith models list` answers in a fraction of a second, and
`tunesmith eval` does not pay for loading the server. These are the only imports inside functions in the
package for that reason; none of them hides a cycle (import-linter checks the layers either way)."""

from __future__ import annotations

import inspect
import json
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console

import tunesmith
from tunesmith.core.config import (
    DEFAULT_BASE,
    ExportDtype,
    ExportFormat,
    GgufType,
    PrecisionChoice,
    TaskChoice,
    TrainConfig,
    format_validation_error,
    load_config,
)
from tunesmith.core.durable import atomic_write_text
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.core.results import Result
from tunesmith.data.check import DataReport
from tunesmith.data.records import listed_errors
from tunesmith.evaluation.results import CurveResult, EvalResult
from tunesmith.evaluation.scores import load_prices
from tunesmith.feedback import corrections
from tunesmith.models import base
from tunesmith.models.openai_client import Teacher
from tunesmith.registry import store
from tunesmith.workflows import distill as distillation

if TYPE_CHECKING:
    from tunesmith.export.run import ExportResult
    from tunesmith.inference.chat import ChatSession
    from tunesmith.inference.loaded import LoadedModel
    from tunesmith.workflows.train import TrainResult

CURVE_SIZES = (50, 100, 200, 400)


def check_data(
    path: str | Path,
    task: TaskChoice = "auto",
    base: str = DEFAULT_BASE,
    max_length: int | None = None,
    val: str | Path | None = None,
) -> DataReport:
    """The data check (`tunesmith data check`); returns a DataReport (``.ok``, ``.errors``, ``.to_json()``)."""
    from tunesmith.workflows import check

    return check.check_file(Path(path), task, base, max_length, Path(val) if val else None)


def train(
    config: TrainConfig | str | Path | None = None, resume: str | None = None, fsdp: bool = False, **settings: Any
) -> TrainResult:
    """Fine-tune (`tunesmith train`); returns a TrainResult with the published version.

    ``config``: a TrainConfig, or a YAML file of its fields. ``settings``: TrainConfig fields by name
    (``data="reviews.jsonl", lora_rank=16``) over the config, None meaning not given. ``resume``: continue
    the interrupted run of that name with its saved settings. ``fsdp``: under torchrun, the processes also
    split the weights, gradients and optimizer state (README: More than one process)."""
    from tunesmith.workflows import train as training

    given = {name: value for name, value in settings.items() if value is not None}
    if resume is not None:
        if config is not None or given:
            others = ", ".join(given) or "a config"
            raise TunesmithError(
                f"--resume {resume} continues the run with its saved settings; give no others ({others})"
            )
        return training.train(resume=resume, fsdp=fsdp)
    if config is None and "data" not in given:
        raise TunesmithError("give a training file (or a config with `data:`), or --resume NAME")
    return training.train(_train_config(config, given), fsdp=fsdp)


def evaluate(
    model: str,
    data: str | Path,
    baselines: str | Sequence[str] = ("base", "few_shot"),
    shots: int = 8,
    report: str | Path | None = None,
    *,
    shots_from: str | Path | None = None,
    prices: dict | str | Path | None = None,
    teacher_url: str | None = None,
    teacher_model: str | None = None,
    teacher_api_key: str | None = None,
    teacher_parameters: int | str | None = None,
    json_path: str | Path | None = None,
    **options: Any,
) -> EvalResult:
    """The model against the base zero-shot and few-shot on held-out data (`tunesmith eval`).

    ``baselines``: names or a comma-separated string (``"base,few-shot"``, ``"none"``). ``options``: the
    fields of ``tunesmith.evaluation.measure.EvalOptions`` (latency_samples, max_new_tokens, precision,
    seed, batch_size). ``prices``: break-even price overrides, or a YAML/JSON file of them. ``teacher_url``
    with ``teacher_model``: also measure that OpenAI-compatible model as a reference (key: ``teacher_api_key``,
    else $OPENAI_API_KEY; ``teacher_parameters``: its size, e.g. "1.7B"). ``report`` writes the HTML report
    and ``json_path`` the figures as JSON. Returns the figures (an EvalResult; ``.to_json()`` is the JSON)."""
    from tunesmith.evaluation.measure import EvalOptions
    from tunesmith.evaluation.report import write_eval_report
    from tunesmith.evaluation.teacher import parse_parameters
    from tunesmith.workflows import evaluate as evaluation

    figures = evaluation.evaluate(
        model,
        Path(data),
        _baselines(baselines),
        EvalOptions(shots=shots, **options),
        Path(shots_from) if shots_from else None,
        load_prices(prices) if isinstance(prices, (str, Path)) else prices,
        teacher=_teacher(teacher_url, teacher_model, teacher_api_key),
        teacher_parameters=parse_parameters(str(teacher_parameters)) if teacher_parameters else None,
    )
    _save(figures, json_path, report, write_eval_report)
    return figures


def learning_curve(
    train_file: str | Path,
    test_file: str | Path,
    sizes: Sequence[int] = CURVE_SIZES,
    config: TrainConfig | str | Path | None = None,
    name: str | None = None,
    *,
    base: str | None = None,
    seed: int | None = None,
    report: str | Path | None = None,
    json_path: str | Path | None = None,
    **options: Any,
) -> CurveResult:
    """Train on nested subsets of ``train_file`` and evaluate each on ``test_file`` (`tunesmith curve`).

    ``config``: the training settings for every size (a TrainConfig or a YAML file); ``base`` and ``seed``
    override it, and the seed also picks the subsets and the shots. ``name``: the registry name prefix
    (models are NAME-nSIZE). ``options``: EvalOptions fields (shots, latency_samples, ...). ``report``
    and ``json_path`` write the HTML report and the JSON."""
    from tunesmith.evaluation.measure import EvalOptions
    from tunesmith.evaluation.report import write_curve_report
    from tunesmith.workflows import curve

    settings = {"data": train_file, "base": base, "seed": seed}
    config = _train_config(config, {key: value for key, value in settings.items() if value is not None})
    result = curve.learning_curve(
        Path(train_file), Path(test_file), list(sizes), config, name, EvalOptions(**{"seed": config.seed, **options})
    )
    _save(result, json_path, report, write_curve_report)
    return result


def load(model: str, precision: PrecisionChoice = "auto") -> LoadedModel:
    """Load a registry model (NAME, NAME:VERSION), a base model name or a local folder for generation, its
    weights in ``precision`` (auto: bf16 on a GPU with bf16, else fp32)."""
    from tunesmith.inference import loaded

    return loaded.load(model, precision=precision)


def generate(
    model: LoadedModel | str,
    prompt: str,
    max_tokens: int = 128,
    temperature: float = 0.0,
    precision: PrecisionChoice = "auto",
) -> str:
    """One answer (`tunesmith generate`); ``model`` is a loaded model or a reference to load in ``precision``."""
    from tunesmith.inference import loaded

    return loaded.generate_answer(_loaded(model, precision), prompt, max_tokens=max_tokens, temperature=temperature)


def chat(
    model: LoadedModel | str, max_tokens: int = 256, temperature: float = 0.0, precision: PrecisionChoice = "auto"
) -> ChatSession:
    """A conversation (`tunesmith chat`): ``session.say(prompt)`` answers after the earlier turns (a classifier
    answers each text alone), ``session.reset()`` forgets them."""
    from tunesmith.inference.chat import ChatSession

    return ChatSession(_loaded(model, precision), max_tokens, temperature)


def data_from_corrections(path: str | Path, out: str | Path) -> tuple[corrections.CorrectionsResult, dict[Path, int]]:
    """Reviewed answers to training data (`tunesmith data from-corrections`): OUT/sft.jsonl, and preference
    pairs OUT/pairs.jsonl when some answers were bad. Returns the conversion (its warnings in ``.issues``:
    duplicates, conflicts) and the rows written per file. Raises DataError, writing nothing, when the file
    has errors or every review is in a conflict."""
    result = corrections.convert(Path(path))
    if result.errors:
        raise DataError(
            f"{path}: {len(result.errors)} error(s): nothing written\n{listed_errors(result.errors)}", result
        )
    if not result.sft:
        listed = "\n".join(str(issue) for issue in result.warnings)
        raise DataError(
            f"{path}: every review is in a conflict, nothing left to write; resolve the conflicts:\n{listed}", result
        )
    return result, corrections.write_outputs(result, Path(out))


def distill(
    inputs: str | Path,
    out: str | Path,
    teacher_url: str,
    teacher_model: str,
    *,
    task: str | None = None,
    labels: str | Sequence[str] | None = None,
    system: str | None = None,
    concurrency: int = 8,
    api_key: str | None = None,
    max_tokens: int | None = None,
    retries: int = 5,
    timeout: float = 120.0,
) -> distillation.Summary:
    """Distillation (`tunesmith data generate`): the teacher behind an OpenAI-compatible URL labels (classify,
    one of ``labels``) or answers (chat) every input not yet done, appended to ``out`` as training lines.

    ``task`` defaults to classify when labels are given, else chat; ``labels``: a list or a comma-separated
    string. ``api_key`` defaults to $OPENAI_API_KEY; ``max_tokens`` to 32 for classify, 512 for chat;
    ``retries`` and ``timeout`` (seconds) are per request. Returns the tally (``.lines()``, ``.complete``)."""
    task = task or ("classify" if labels else "chat")
    label_list = [label.strip() for label in labels.split(",")] if isinstance(labels, str) else labels
    teacher = Teacher(
        teacher_url,
        teacher_model,
        api_key or os.environ.get("OPENAI_API_KEY") or None,
        max_tokens=max_tokens or (32 if task == "classify" else 512),
        retries=retries,
        timeout=timeout,
    )
    return distillation.distill(
        Path(inputs), Path(out), teacher, task, list(label_list) if label_list else None, system, concurrency
    )


def review(
    model: str, prompts: str | Path, out: str | Path, max_tokens: int = 256, console: Console | None = None
) -> int:
    """Review a model's answers in the terminal (`tunesmith review`): each pending prompt of ``prompts`` with
    the model's answer, judged good, or bad with a correction; verdicts are appended to ``out`` as they are
    given, and a rerun resumes. Returns 0 when done or quit, 130 on Ctrl-C."""
    from tunesmith.feedback.session import ReviewSession
    from tunesmith.feedback.terminal import review_in_terminal

    session = ReviewSession(Path(prompts), Path(out))  # file errors stop here, before a model is loaded
    resume = ["tunesmith", "review", model, "--prompts", str(prompts), "--out", str(out)]
    resume += ["--max-tokens", str(max_tokens)] if max_tokens != 256 else []
    return review_in_terminal(session, model, max_tokens, shlex.join(resume), console or Console())


def run_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_upload_mb: float = 100,
    model_memory_gb: float = 3,
    precision: PrecisionChoice = "auto",
    worker: bool = True,
    max_batch: int = 64,
    max_queue: int = 256,
) -> None:
    """The OpenAI-compatible API (`tunesmith serve`), until stopped. ``api_key`` (default $TUNESMITH_API_KEY)
    is required on every call, and on any address but loopback; ``worker=False`` queues fine-tuning jobs
    without running them here. Up to ``max_batch`` sequences decode together; up to ``max_queue`` requests
    wait for a place, and more are refused with 429."""
    from tunesmith.serve.app import ServeSettings
    from tunesmith.serve.server import serve

    settings = ServeSettings(
        api_key=api_key or os.environ.get("TUNESMITH_API_KEY") or None,
        max_upload_bytes=int(max_upload_mb * 2**20),
        model_memory_bytes=int(model_memory_gb * 2**30),
        precision=precision,
        max_batch=max_batch,
        max_queue=max_queue,
    )
    serve(host, port, settings, worker_enabled=worker)


def list_models() -> list[dict]:
    """Every registry version (`tunesmith models list --json`): name, version, ref, base, task, method, created,
    metrics, path."""
    return [version.summary().to_json() for version in store.list_models()]


def get_model(ref: str) -> dict:
    """A version's manifest (`tunesmith models show`), NAME meaning its latest version, with its folder as ``path``."""
    version = store.get(ref)
    return version.manifest.to_json() | {"path": str(version.path)}


def remove_model(ref: str, force: bool = False) -> list[str]:
    """Delete NAME (every version) or NAME:VERSION; ``force`` also when other versions are built on it."""
    return [version.ref for version in store.remove(ref, force)]


def export_model(
    model: str,
    format: ExportFormat,
    out: str | Path,
    dtype: ExportDtype = "fp32",
    gguf_type: GgufType = "f16",
    with_base: bool = False,
    check: bool = True,
    say: Callable[[str], None] = print,
) -> ExportResult:
    """Write a registry version (or a base model) for other tools (`tunesmith models export`): ``hf`` a merged
    Hugging Face folder (weights in ``dtype``), ``peft`` its LoRA adapter (``with_base``: and the weights it sits
    on), ``gguf`` one file for llama.cpp with an Ollama Modelfile (tensors in ``gguf_type``). With ``check`` the
    export is loaded back the way its users load it and compared with the model; one that drifts past its
    precision's tolerance raises ExportParityError and nothing is written. ``say`` gets the progress lines."""
    from tunesmith.export import run

    return run.export_model(model, format, Path(out), dtype, gguf_type, with_base, check, say)


def list_bases() -> list[dict]:
    """The known base models (`tunesmith base list`): name, available, converted, path, description, install."""
    return base.list_bases()


def _train_config(config: TrainConfig | str | Path | None, settings: dict[str, Any]) -> TrainConfig:
    """``config`` (a TrainConfig or a YAML file) with ``settings`` over it, validated."""
    if not isinstance(config, TrainConfig):
        return load_config(Path(config) if config is not None else None, **settings)
    if not settings:
        return config
    try:
        return TrainConfig(**(config.model_dump() | settings))
    except ValidationError as problem:
        raise TunesmithError(format_validation_error(problem)) from None


def _loaded(model: LoadedModel | str, precision: PrecisionChoice) -> LoadedModel:
    from tunesmith.inference import loaded

    return model if isinstance(model, loaded.LoadedModel) else loaded.load(model, precision=precision)


def _baselines(baselines: str | Sequence[str]) -> tuple[str, ...]:
    """``"base,few-shot"`` or ``["base", "few_shot"]`` -> ("base", "few_shot"); ``none`` is no baseline."""
    names = baselines.split(",") if isinstance(baselines, str) else baselines
    return tuple(name.strip().replace("-", "_") for name in names if name.strip() not in ("", "none"))


def _teacher(url: str | None, model: str | None, api_key: str | None) -> Teacher | None:
    """The teacher an evaluation measures as a reference, or None when neither URL nor model is given."""
    if not url and not model:
        return None
    if not (url and model):
        raise TunesmithError("--teacher-url and --teacher-model go together: the API's base URL and the model id")
    return Teacher(url, model, api_key or os.environ.get("OPENAI_API_KEY") or None)


def _save(
    result: Result, json_path: str | Path | None, report: str | Path | None, write_report: Callable[[Any, Path], None]
) -> None:
    """``json_path`` (written atomically) and the HTML ``report``."""
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(result.to_json(), indent=2))
    if report:
        write_report(result, Path(report))


# Shown as `tunesmith.train` (help(), tracebacks, docs), where users call them from; tunesmith/__init__.py
# lists the public names (and loads this module on first use of one).
for _name in tunesmith.__all__:
    if inspect.isfunction(_public := globals()[_name]):
        _public.__module__ = "tunesmith"
