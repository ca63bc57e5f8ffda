"""``tunesmith curve``: how the metric grows with the number of training examples.

The training file is shuffled once (seeded) and cut into nested subsets (the 100 contain the 50),
each subset is trained with the same settings and evaluated on the same test file, and the
zero-shot and few-shot baselines are measured once as reference lines. Each trained model stays in
the registry as NAME-nSIZE, so the best trade-off can be used directly.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from tunesmith.core.config import TrainConfig, default_name
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.check import check_structure
from tunesmith.data.records import example_record, listed_errors
from tunesmith.evaluation.compare import sample
from tunesmith.evaluation.measure import EvalOptions
from tunesmith.evaluation.results import CurvePoint, CurveResult, Difference
from tunesmith.evaluation.significance import Sample, bootstrap
from tunesmith.workflows.evaluate import BASELINES, evaluate
from tunesmith.workflows.train import train


def learning_curve(
    train_file: Path,
    test_file: Path,
    sizes: list[int],
    config: TrainConfig | None = None,
    name: str | None = None,
    options: EvalOptions | None = None,
    console: Console | None = None,
) -> CurveResult:
    """Train on nested subsets of ``train_file`` and evaluate each on ``test_file``."""
    console = console or Console(stderr=True, soft_wrap=True)
    options = options or EvalOptions()
    config = config or TrainConfig(data=train_file)
    name = name or f"{default_name(train_file)}-curve"
    structure = check_structure(train_file, config.task, None, config.labels)
    if not structure.ok:
        raise DataError("the training file has errors:\n" + listed_errors(structure.errors), structure)
    examples = structure.train.examples
    sizes = sorted(set(sizes))
    if not sizes or sizes[0] < 1:
        raise TunesmithError("--sizes needs positive numbers of examples, e.g. 50,100,200")
    if sizes[-1] > len(examples):
        raise TunesmithError(
            f"{train_file} has {len(examples)} examples, fewer than the largest size "
            f"{sizes[-1]}; use sizes up to {len(examples)}"
        )
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)

    started = time.perf_counter()
    points, samples, figures = [], [], None
    with tempfile.TemporaryDirectory(prefix="tunesmith-curve-") as folder:
        for size in sizes:
            subset = Path(folder) / f"{size}.jsonl"
            subset.write_text(
                "".join(json.dumps(example_record(examples[i]), ensure_ascii=False) + "\n" for i in order[:size]),
                encoding="utf-8",
            )
            console.rule(f"{size} training examples")
            result = train(
                config.model_copy(
                    update={
                        "data": subset,
                        "name": f"{name}-n{size}",
                        "task": structure.task,
                        "labels": structure.labels,
                    }
                ),
                console=console,
            )
            if result.version is None:
                raise TunesmithError(f"training on {size} examples was interrupted; the curve is incomplete")
            # The baselines do not depend on the fine-tune: measure them once, with shots drawn from
            # the whole training file so every size is compared with the same prompt.
            baselines = BASELINES if figures is None else ()
            measured = evaluate(
                result.version.ref,
                test_file,
                baselines=baselines,
                options=options,
                shots_from=train_file,
                console=console,
            )
            figures = figures or measured
            training = result.version.manifest.training
            points.append(
                CurvePoint(
                    n=size,
                    model=result.version.ref,
                    value=getattr(measured.results["fine_tuned"], measured.primary),
                    interval=measured.intervals.get("fine_tuned"),
                    train_seconds=training.wall_seconds if training else 0.0,
                )
            )
            samples.append(sample(measured, "fine_tuned"))
    assert figures is not None
    primary = figures.primary
    _add_gains(points, samples, primary, figures.higher_is_better, options.seed)
    _add_versus(points, samples, figures, options.seed)
    few_shot = figures.results.get("few_shot")
    return CurveResult(
        task=figures.task,
        metric=primary,
        higher_is_better=figures.higher_is_better,
        train=str(train_file),
        test=str(test_file),
        seed=config.seed,
        points=points,
        baselines={
            system: getattr(figures.results[system], primary) for system in BASELINES if system in figures.results
        },
        shots=(few_shot.shots if few_shot else None) or 0,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 1),
    )


def _add_versus(points: list[CurvePoint], samples: list[Sample | None], figures, seed: int) -> None:
    """Give each point ``versus``: its paired difference from the base model zero-shot and few-shot (measured
    once, on the same test examples), so "50 examples already beat the 8-shot prompt" is read with its noise."""
    baselines = {system: found for system in BASELINES if (found := sample(figures, system)) is not None}
    for point, tuned in zip(points, samples):
        if tuned is None or not baselines:
            continue
        tested = bootstrap(
            {"fine_tuned": tuned, **baselines},
            list(baselines),
            higher_is_better=figures.higher_is_better,
            exponential=figures.primary == "perplexity",
            seed=seed,
        )
        point.versus = {system: Difference(**d, metric=figures.primary) for system, d in tested["differences"].items()}


def _add_gains(
    points: list[CurvePoint], samples: list[Sample | None], metric: str, higher_is_better: bool, seed: int
) -> None:
    """Give each point ``gains``: its paired difference from every smaller size, with a 95% interval
    (significance.bootstrap; the sizes were measured on the same test examples), keyed by that size."""
    for j, (point, larger) in enumerate(zip(points, samples)):
        if larger is None:
            continue
        smaller = {str(points[i].n): sample for i in range(j) if (sample := samples[i]) is not None}
        if not smaller:
            continue
        tested = bootstrap(
            {"larger": larger, **smaller},
            list(smaller),
            tuned="larger",
            higher_is_better=higher_is_better,
            exponential=metric == "perplexity",
            seed=seed,
        )
        point.gains = {n: Difference(**d, metric=metric) for n, d in tested["differences"].items()}
