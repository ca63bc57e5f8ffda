"""``tunesmith train``: check the data, fine-tune, compare with the base model, publish a version.

data check (structure)  -> refuse bad data before any model is loaded
starting model          -> a base, or a registry fine-tune to build on (models.lineage)
  + tokenizer           -> full data check (render, lengths, truncation), defaults resolved
split + rows            -> base model evaluated on the validation split
training loop           -> supervised or DPO objective; checkpoints in $TUNESMITH_HOME/runs/NAME
fine-tuned evaluated    -> comparison printed, version published atomically to the registry

Under torchrun every process runs this function: each checks the data and loads the model, rank 0 alone
measures, prints, writes the run folder and publishes, and the others wait for it (training.distributed).
With ``fsdp`` the model is sharded after the baselines are measured, and gathered into a whole copy on rank 0
for the closing comparison and the version (training.sharding).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from tunesmith.core import paths
from tunesmith.core.config import ResolvedConfig, TrainConfig, default_name, load_config, method_task_problem
from tunesmith.core.durable import atomic_write_text
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.check import DataReport, check_data, check_structure
from tunesmith.data.prepare import build_rows, split
from tunesmith.data.records import listed_errors
from tunesmith.data.shots import pick_shots
from tunesmith.evaluation.compare import comparison_table, judge, verdict
from tunesmith.evaluation.measure import EvalOptions, Measured, measure
from tunesmith.evaluation.results import Comparison, Judgement, SystemMetrics
from tunesmith.evaluation.systems import System, same_model_systems
from tunesmith.models.load import add_lora, count_parameters, load_tokenizer
from tunesmith.registry import store
from tunesmith.registry.lineage import StartingPoint, load_start, resolve_start
from tunesmith.registry.publish import file_sha256, write_version
from tunesmith.training import defaults, distributed, sharding
from tunesmith.training.checkpoint import latest_checkpoint, load_trainable_state, whole_trainable_state
from tunesmith.training.dpo import DPOObjective
from tunesmith.training.loop import (
    LoopResult,
    SupervisedObjective,
    TrainHooks,
    train_loop,
)
from tunesmith.training.state import chained
from tunesmith.workflows.tracking import RunTracking, require


@dataclass
class TrainResult:
    version: store.ModelVersion | None  # None when interrupted, and on processes other than rank 0
    loop: LoopResult
    run_dir: Path
    comparison: Comparison  # validation figures per system, and whether fine-tuning helped

    @property
    def base_metrics(self) -> SystemMetrics:
        return self.comparison.base or SystemMetrics()

    @property
    def tuned_metrics(self) -> SystemMetrics:
        return self.comparison.fine_tuned or SystemMetrics()


def train(
    config: TrainConfig | None = None,
    resume: str | None = None,
    console: Console | None = None,
    hooks: TrainHooks | None = None,
    provenance: dict | None = None,
    fsdp: bool = False,
) -> TrainResult:
    """Run (or resume) a training run; returns the published version and the comparison.

    ``hooks`` follow the loop (see TrainHooks); ``provenance`` is stored in the version's manifest so
    whoever started the run can find its version again (``tunesmith serve``: the job id).

    Started by torchrun (WORLD_SIZE > 1), the process joins the others: see the module's docstring.
    ``fsdp``: the processes also split the weights (training.sharding); how a run is executed, not what it
    trains, so a resume may give it or not."""
    group = distributed.join(sharded=fsdp)
    try:
        return _train(group, config, resume, console, hooks, provenance)
    finally:
        distributed.leave(group)


def _train(
    group: distributed.ProcessGroup,
    config: TrainConfig | None,
    resume: str | None,
    console: Console | None,
    hooks: TrainHooks | None,
    provenance: dict | None,
) -> TrainResult:
    # One process speaks: the others would print every line N times.
    console = console or Console(stderr=True, soft_wrap=True, quiet=not group.main)
    if resume is None and config is not None and _restarted_by_torchrun(group):
        unfinished = config.name or default_name(config.data)
        resume = unfinished if latest_checkpoint(paths.runs_dir() / unfinished) is not None else None
    if resume is not None:
        config = _config_for_resume(resume)
    assert config is not None
    if group.sharded and config.method == "dpo":
        raise TunesmithError(
            "--fsdp shards LoRA and full fine-tuning; DPO's reference passes are not sharded yet: "
            "train DPO without --fsdp (data-parallel with --nproc)"
        )
    name = config.name or default_name(config.data)
    run_dir = paths.runs_dir() / name
    if resume is None and latest_checkpoint(run_dir) is not None:
        raise TunesmithError(
            f"an unfinished run named {name!r} is in {run_dir}. Continue it with "
            f"`tunesmith train --resume {name}`, or delete that folder to start over"
        )

    require(config)  # a tracker's library, before anything is read or loaded
    structure = check_structure(config.data, config.task, config.val_data, config.labels)
    if not structure.ok:
        raise DataError(_error_summary(structure), structure)
    data_hash = file_sha256(config.data)
    if resume is not None and (run_dir / "data.sha256").read_text().strip() != data_hash:
        raise TunesmithError(
            f"{config.data} changed since the run started; resuming would not give the "
            "same model. Restore the file, or delete the run folder and train again"
        )

    if (problem := method_task_problem(config.method, structure.task)) is not None:
        raise TunesmithError(f"{config.data}: {problem}")
    start = resolve_start(config.base)
    config = config.model_copy(update={"base": start.spec})  # NAME -> NAME:VERSION: a resume builds on the same
    tokenizer = load_tokenizer(start.tokenizer)
    report = check_data(
        config.data, config.task, tokenizer, config.max_length, config.val_data, config.labels, config.system_prompt
    )
    if not report.ok:
        raise DataError(_error_summary(report), report)
    for warning in report.warnings:
        console.print(Text(str(warning), style="yellow"))

    splits = split(report, config.val_fraction, config.seed)
    assert report.max_length is not None  # check_data with a tokenizer sets it
    train_rows, val_rows = build_rows(
        report.task, splits, report.max_length, config.val_fraction, config.seed, config.val_data is not None
    )
    if not train_rows:
        raise TunesmithError(
            f"{config.data}: no training example keeps any answer token at "
            f"max_length {report.max_length}; raise --max-length"
        )
    resolved = defaults.resolve(
        config.model_copy(update={"name": name, "max_length": report.max_length}),
        len(train_rows),
        [len(r) for r in train_rows],
        getattr(tokenizer, "model_max_length", None),
        report.task,
        report.labels,
        sum(row.n_target for row in train_rows) / len(train_rows),
        has_validation=bool(val_rows),
    )
    if group.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", resolved.to_yaml())
        atomic_write_text(run_dir / "data.sha256", data_hash + "\n")

    torch.manual_seed(resolved.seed)
    model = _start_model(start, resolved)
    if resolved.uses_adapter:
        # The adapter's random start must be the same in every process (the base weights come from one file).
        distributed.broadcast_parameters([p for p in model.parameters() if p.requires_grad], group)
    trainable, total = count_parameters(model)
    built_on = f" on {start.parent}" if start.parent else ""
    console.print(
        f"[bold]{name}[/]: {report.task} · {len(train_rows)} train / {len(val_rows)} validation rows · "
        f"{resolved.method}{built_on} ({trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters trained) · "
        f"{resolved.epochs} epoch(s), lr {resolved.lr:g}, batch {resolved.batch_size}, "
        f"max_length {resolved.max_length}, {resolved.precision}{_processes(group)}"
    )
    chosen = defaults.explain(config, resolved, len(train_rows))
    for setting, why in chosen.items():
        console.print(f"  [dim]{setting} {why}[/]")

    evaluation = _ValidationComparison(model, tokenizer, resolved, splits, val_rows, start.parent)
    # The others wait for rank 0's measurement in the loop's first collective.
    baselines = evaluation.baselines(run_dir) if group.main else {}
    started = time.time()
    tracking = RunTracking.open(resolved, run_dir, group.main)
    if resolved.method == "dpo":
        objective: DPOObjective | SupervisedObjective = DPOObjective(resolved.beta)
    else:
        root = sharding.shard(model, _bf16_weights(resolved)) if group.sharded else None
        objective = SupervisedObjective(root)
    try:
        loop = train_loop(
            model,
            resolved,
            train_rows,
            val_rows,
            tokenizer.pad_token_id,
            run_dir,
            resume=resume is not None,
            log=console.print,
            hooks=chained(hooks, tracking.hooks()),
            objective=objective,
            group=group,
        )
    except distributed.ProcessLost as lost:
        raise TunesmithError(
            f"{lost}. The last checkpoint is intact; continue with: "
            f"tunesmith train --resume {name} --nproc {group.world}"
        ) from lost
    if group.sharded and not loop.interrupted:
        # Rank 0 measures and publishes a whole model: the trained weights gathered into a fresh start.
        trained = whole_trainable_state(model, keep=group.main)
        del model, objective
        if group.main:
            model = _start_model(start, resolved)
            load_trainable_state(model, trained)
            evaluation.use(model)
        del trained
    if not group.main:
        if not loop.interrupted:  # every rank agrees on that (the loop's stop is collective)
            distributed.barrier(group)  # until rank 0 has measured and published
        return TrainResult(None, loop, run_dir, _comparison({}))
    if loop.interrupted:
        tracking.finish(None)
        console.print(
            f"[yellow]Stopped at step {loop.steps}/{loop.total_steps}; checkpoint saved. "
            f"Continue with:  tunesmith train --resume {name}[/]"
        )
        return TrainResult(None, loop, run_dir, _comparison(baselines))

    results = {**baselines, **evaluation.fine_tuned()}
    judgement = judge(resolved.task, evaluation.measured, resolved.seed)[0]
    comparison = _comparison(results, judgement)
    if len(results) > 1:
        console.print(comparison_table(resolved.task, results, f"{name} on {len(val_rows)} validation rows"))
        for line in verdict(resolved.task, results, comparison.helped, judgement.significance):
            console.print(line)
    version = write_version(
        name,
        model,
        tokenizer,
        resolved,
        report,
        start,
        loop,
        comparison,
        wall_seconds=time.time() - started,
        run_dir=run_dir,
        shot_pool=splits.train_examples,
        provenance=provenance,
        defaults=chosen,
    )
    tracking.finish(comparison, version.path / "loss.png", version.ref)
    shutil.rmtree(run_dir, ignore_errors=True)
    console.print(f"Saved [bold]{version.ref}[/] to {version.path}")
    distributed.barrier(group)
    return TrainResult(version, loop, run_dir, comparison)


def _processes(group: distributed.ProcessGroup) -> str:
    """How the run is spread, for its header line: nothing for one plain process."""
    spread = f" · {group.world} processes" if group.parallel else ""
    return spread + (", weights sharded (FSDP)" if group.sharded else "")


def _bf16_weights(config: ResolvedConfig) -> bool:
    """bf16 weights only where nothing is learnt in them: the frozen base under LoRA. Full fine-tuning keeps
    fp32 masters and computes in bf16 under autocast (training.kernels)."""
    return config.precision == "bf16" and config.uses_adapter


def _start_model(start: StartingPoint, config: ResolvedConfig):
    """The model training starts from: the starting weights, with fresh LoRA adapters unless fine-tuning all."""
    model = load_start(start, dtype=torch.bfloat16 if _bf16_weights(config) else torch.float32)
    if config.uses_adapter:
        assert config.lora_rank is not None and config.lora_alpha is not None  # resolve fills both
        model = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
    return model


def _restarted_by_torchrun(group: distributed.ProcessGroup) -> bool:
    """torchrun restarts every process after a failure (--max-restarts): the run then continues from its last
    checkpoint instead of refusing the run folder it left."""
    return group.parallel and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _comparison(results: dict[str, dict], judgement: Judgement | None = None) -> Comparison:
    """Each system's figures (base, few_shot or parent, fine_tuned), with the verdict once there is one."""
    figures = {name: SystemMetrics(**metrics) for name, metrics in results.items()}
    verdict = judgement.model_dump(exclude_unset=True) if judgement else {}
    return Comparison.model_validate({**figures, **verdict})


def _config_for_resume(name: str) -> TrainConfig:
    run_dir = paths.runs_dir() / store.parse_ref(name)[0]
    if latest_checkpoint(run_dir) is None or not (run_dir / "config.yaml").is_file():
        raise TunesmithError(f"nothing to resume: no checkpoint for a run named {name!r} in {run_dir}")
    return load_config(run_dir / "config.yaml")


class _ValidationComparison:
    """The closing comparison on the validation split: base and few-shot measured before training
    (kept in the run folder for resumes), the fine-tuned model after."""

    LATENCY_SAMPLES = 4  # a rough median that keeps the closing comparison short; `tunesmith eval` times 16
    MAX_NEW_TOKENS = 64

    def __init__(self, model, tokenizer, config: ResolvedConfig, splits, val_rows, parent: str | None = None):
        self.tokenizer, self.config, self.val_rows = tokenizer, config, val_rows
        self.examples = splits.val_examples
        # Generation is capped so the closing comparison stays short on a CPU; `tunesmith eval` generates
        # up to 1.5x the longest reference.
        self.options = EvalOptions(
            latency_samples=self.LATENCY_SAMPLES, max_new_tokens=self.MAX_NEW_TOKENS, seed=config.seed
        )
        # Few-shot stands for prompt engineering a base model; built on a fine-tune, the adapter-off
        # model is that fine-tune (the "parent"), not a base to prompt.
        no_shots = config.task == "text" or parent is not None
        self.shots = [] if no_shots else pick_shots(splits.train_examples, self.options.shots, config.seed)
        self.parent = parent
        self.use(model)
        self.measured: dict[str, Measured] = {}

    def use(self, model) -> None:
        """Measure ``model`` from now on (under FSDP: the whole copy gathered after training)."""
        self.systems = same_model_systems(model, self.shots, lora=self.config.uses_adapter, parent=self.parent)

    def baselines(self, run_dir: Path) -> dict:
        """The baselines' figures; their per-example scores are kept for the verdict's intervals."""
        cached = run_dir / "baselines.json"
        if cached.is_file():
            stored = json.loads(cached.read_text())
            # A run folder from before the scores were kept holds figures only: no intervals then.
            self.measured = {
                name: Measured(**value) if "metrics" in value else Measured(value) for name, value in stored.items()
            }
        elif self.val_rows:
            # Before training the weights are the base model's (and LoRA can switch its adapter off).
            self.measured = {
                name: self._measure(system) for name, system in self.systems.items() if name != "fine_tuned"
            }
            atomic_write_text(
                cached,
                json.dumps(
                    {
                        name: {"metrics": m.metrics, "scores": m.scores, "weights": m.weights}
                        for name, m in self.measured.items()
                    }
                ),
            )
        return {name: m.metrics for name, m in self.measured.items()}

    def fine_tuned(self) -> dict:
        if not self.val_rows:
            return {}
        self.measured["fine_tuned"] = self._measure(self.systems["fine_tuned"])
        return {"fine_tuned": self.measured["fine_tuned"].metrics}

    def _measure(self, system: System) -> Measured:
        return measure(
            system,
            self.tokenizer,
            self.config.task,
            self.examples,
            self.config.labels,
            self.config.system_prompt,
            self.options,
            self.config.max_length,
            text_rows=self.val_rows,
        )


def _error_summary(report: DataReport) -> str:
    return f"{len(report.errors)} error(s) in the data; nothing was trained:\n" + listed_errors(report.errors)
