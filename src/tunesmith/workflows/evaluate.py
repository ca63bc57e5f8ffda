"""``tunesmith eval``: the fine-tuned model against its base, zero-shot and few-shot, on held-out data.

load the version (adapter kept separate) -> check the test file with the version's task/labels
pick K shots from the pool kept with the version -> measure each system (evaluation/measure.py)
-> per-example outputs and diffs, break-even -> one dict (the --json shape), table, HTML report
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console

from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.check import check_data
from tunesmith.data.formats import read_file
from tunesmith.data.records import Example, listed_errors
from tunesmith.data.render import example_messages
from tunesmith.data.shots import POOL_FILE, load_pool, pick_shots
from tunesmith.evaluation.compare import (
    PRIMARY,
    REFERENCES,
    blocks,
    diffs,
    judge,
    per_example,
)
from tunesmith.evaluation.measure import EvalOptions, Measured, measure
from tunesmith.evaluation.results import EvalResult, SystemMetrics
from tunesmith.evaluation.scores import break_even
from tunesmith.evaluation.systems import (
    SYSTEM_ORDER,
    System,
    same_model_systems,
    split_answer,
)
from tunesmith.evaluation.teacher import measure_teacher
from tunesmith.inference.loaded import LoadedModel, load
from tunesmith.models.base import resolve_base
from tunesmith.models.load import load_model
from tunesmith.models.openai_client import Teacher
from tunesmith.models.precision import precision_dtype
from tunesmith.registry.manifest import Manifest

BASELINES = ("base", "few_shot")
MAX_DIFFS = 200  # kept in the figures (the worst first); the totals count them all
DEFAULT_MAX_LENGTH = 1024


def evaluate(
    ref: str,
    data: Path,
    baselines: tuple[str, ...] = BASELINES,
    options: EvalOptions | None = None,
    shots_from: Path | None = None,
    prices: dict | None = None,
    console: Console | None = None,
    teacher: Teacher | None = None,
    teacher_parameters: int | None = None,
) -> EvalResult:
    """Every figure of ``ref`` (and, for a fine-tune, its baselines) on ``data``, in one stable shape.
    ``teacher``: a model behind an OpenAI-compatible URL, measured as the system "teacher" (a reference)."""
    options = options or EvalOptions()
    console = console or Console(stderr=True, soft_wrap=True)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        choices = ", ".join(name.replace("_", "-") for name in BASELINES)
        raise TunesmithError(
            f"unknown baseline {sorted(unknown)[0].replace('_', '-')!r}; choose from {choices}, or none"
        )
    started = time.perf_counter()
    loaded = load(ref, merge=False, precision=options.precision)
    manifest = loaded.version.manifest if loaded.version else None
    max_length = (manifest.config.max_length if manifest and manifest.config else None) or DEFAULT_MAX_LENGTH
    # Classifiers and text models are measured on their own task; a chat-like model (chat,
    # completion, DPO) on any chat-like data, preference pairs included.
    expected = loaded.task if manifest and loaded.task in ("classify", "text") else "auto"
    report = check_data(
        Path(data), expected, loaded.tokenizer, max_length, labels=loaded.labels, system_prompt=loaded.system_prompt
    )
    if not report.ok:
        raise DataError("the evaluation data has errors:\n" + listed_errors(report.errors), report)
    task, labels, examples = report.task, report.labels, report.train.examples
    if manifest and expected == "auto" and task in ("classify", "text"):
        raise TunesmithError(
            f"{data} is {task} data, but {loaded.ref} is a chat model; evaluate it on chat, "
            "completion or preference data"
        )

    reference = None
    if teacher is not None:  # first: a wrong URL or model name fails before minutes of local measuring
        with console.status(f"evaluating the teacher {teacher.model} on {len(examples)} examples"):
            reference = measure_teacher(
                teacher, loaded.tokenizer, task, examples, labels, loaded.system_prompt, options, teacher_parameters
            )
    pool = _shot_pool(loaded, shots_from) if "few_shot" in baselines and task != "text" else []
    shots = pick_shots(pool, options.shots, options.seed)
    dtype = precision_dtype(options.precision)
    systems = _systems(loaded, manifest, shots, baselines, dtype)
    measured: dict[str, Measured] = {}
    for name, system in systems.items():
        with console.status(f"evaluating {name} on {len(examples)} examples"):
            measured[name] = measure(
                system, loaded.tokenizer, task, examples, labels, loaded.system_prompt, options, max_length
            )
        measured[name].metrics["parameters"] = _parameters(system.model)
    if reference is not None:
        measured["teacher"] = reference
    results = {name: m.metrics for name, m in measured.items()}

    primary, higher_is_better = PRIMARY[task]
    examples_out = (
        []
        if task == "text"
        else per_example(*_inputs_and_references(examples, task), [e.line for e in examples], measured)
    )
    changed = diffs(examples_out, {name: m for name, m in measured.items() if name not in REFERENCES})
    judgement, intervals = judge(task, measured, options.seed)
    result = EvalResult(
        model=loaded.ref,
        task=task,
        data=str(data),
        n=len(examples),
        labels=labels,
        precision="bf16" if dtype == torch.bfloat16 else "fp32",
        primary=primary,
        higher_is_better=higher_is_better,
        systems=list(results),
        results={name: SystemMetrics(**metrics) for name, metrics in results.items()},
        helped=judgement.helped,
        helped_clearly=judgement.helped_clearly,
        significance=judgement.significance,
        intervals=intervals,
        break_even=_break_even(manifest, results, prices),
        examples=examples_out,
        diffs=changed[:MAX_DIFFS],
        diffs_total=len(changed),
        regressions_total=sum(d["kind"] == "regression" for d in changed),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 1),
    )
    if task == "text":  # set only here: the other tasks' JSON has no "blocks" key
        result.blocks = blocks(measured)
    return result


def _parameters(model) -> int:
    """The size of the model as served: LoRA weights are merged into the base weights, not added."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)


def _systems(
    loaded: LoadedModel, manifest: Manifest | None, shots: list[Example], baselines: tuple[str, ...], dtype: torch.dtype
) -> dict[str, System]:
    if manifest is None:  # a model on its own
        systems = {"base": System("base", loaded.model)}
        if shots:
            systems["few_shot"] = System("few_shot", loaded.model, shots=shots)
        return systems
    parent = manifest.parent
    if manifest.has_adapter:
        systems = same_model_systems(loaded.model, [] if parent else shots, parent=parent)
        if parent and baselines:  # adapter-off is the parent; the base is loaded beside it
            base = load_model(resolve_base(manifest.base.name), dtype).eval()
            systems.update(base=System("base", base), few_shot=System("few_shot", base, shots=shots))
    elif baselines:  # a full fine-tune: the baselines need the base weights loaded beside it
        base = load_model(resolve_base(manifest.base.name), dtype).eval()
        systems = {
            "base": System("base", base),
            "few_shot": System("few_shot", base, shots=shots),
            "fine_tuned": System("fine_tuned", loaded.model),
        }
    else:
        systems = {"fine_tuned": System("fine_tuned", loaded.model)}
    keep = set(baselines) | {"fine_tuned", "parent"}
    return {
        name: systems[name]
        for name in SYSTEM_ORDER
        if name in systems and name in keep and (name != "few_shot" or shots)
    }


def _shot_pool(loaded: LoadedModel, shots_from: Path | None) -> list[Example]:
    """Examples for the K-shot prompt: --shots-from, else the pool kept with the version."""
    if shots_from is not None:
        parsed = read_file(Path(shots_from), loaded.task if loaded.version else "auto")
        if parsed.errors:
            raise DataError(f"{shots_from} has errors:\n" + listed_errors(parsed.errors))
        return parsed.examples
    if loaded.version is not None and (loaded.version.path / POOL_FILE).is_file():
        return load_pool(loaded.version.path / POOL_FILE)
    if loaded.version is not None:
        data = loaded.version.manifest.data
        if data and data.train and Path(data.train.path).is_file():
            return read_file(Path(data.train.path), loaded.task).examples
    return []  # a model alone, with no examples to show: no few-shot baseline


def _inputs_and_references(examples: list[Example], task: str) -> tuple[list[str], list[str]]:
    if task == "classify":
        return [e.text or "" for e in examples], [e.label or "" for e in examples]
    inputs, references = [], []
    for example in examples:
        before, reference = split_answer(example_messages(example))
        users = [m["content"] for m in before if m["role"] == "user"]
        inputs.append(users[-1] if users else "")
        references.append(reference)
    return inputs, references


def _break_even(manifest: Manifest | None, results: dict[str, dict], prices: dict | None) -> dict | None:
    """Requests after which training pays for itself against the few-shot prompt it replaces."""
    tuned, alternative = results.get("fine_tuned", {}), results.get("few_shot", {})
    if (
        manifest is None
        or manifest.training is None
        or "latency_ms_p50" not in tuned
        or "latency_ms_p50" not in alternative
    ):
        return None
    training = manifest.training
    threads = torch.get_num_threads()
    on_gpu = training.device == "cuda"
    wall = training.wall_seconds
    train_threads = (training.threads or threads) * training.processes
    figures = break_even(
        training_cpu_seconds=0.0 if on_gpu else wall * train_threads,
        training_gpu_seconds=wall * training.processes if on_gpu else 0.0,
        tuned_request_cpu_seconds=tuned["latency_ms_p50"] / 1000 * threads,
        alternative_request_cpu_seconds=alternative["latency_ms_p50"] / 1000 * threads,
        prices=prices,
    )
    return {"vs": "few_shot", "threads": threads, **figures}
