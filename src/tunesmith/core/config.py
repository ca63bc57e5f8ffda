"""The typed training configuration: one pydantic model, from YAML and CLI flags to the saved run.

Fields left as ``None`` are "auto": :func:`tunesmith.training.defaults.resolve` fills them from the
data (the rule is documented there and in the README), and the resolved config is what is saved
with the run and in the registry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunesmith.core.errors import TunesmithError

# The choices every layer shares. "auto" exists only where a user chooses: the data check resolves a
# task, the hardware a precision, and what comes after holds the resolved value.
Task = Literal["chat", "completion", "text", "classify", "preference"]
TaskChoice = Literal["auto", "chat", "completion", "text", "classify", "preference"]
Method = Literal["lora", "full", "dpo"]
Precision = Literal["fp32", "bf16"]
PrecisionChoice = Literal["auto", "fp32", "bf16"]
TASKS: tuple[Task, ...] = get_args(Task)
TASK_CHOICES: tuple[TaskChoice, ...] = get_args(TaskChoice)
METHODS: tuple[Method, ...] = get_args(Method)
PRECISIONS: tuple[PrecisionChoice, ...] = get_args(PrecisionChoice)
# Exports (tunesmith.export): the format, an hf folder's weight dtype, a GGUF file's tensor type ("source": the
# types of the GGUF the base came from).
ExportFormat = Literal["hf", "peft", "gguf"]
ExportDtype = Literal["fp32", "bf16", "fp16"]
GgufType = Literal["source", "f32", "f16", "bf16", "q8_0"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
EXPORT_DTYPES: tuple[ExportDtype, ...] = get_args(ExportDtype)
GGUF_TYPES: tuple[GgufType, ...] = get_args(GgufType)
DEFAULT_BASE = "smollm2-135m"  # the embedded base (models.base), what every command starts from
TRACKERS = ("tensorboard", "mlflow")  # --report-to: where a run is logged besides metrics.jsonl
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """Model names become folder names: no separators, no dot-dot, nothing hidden."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def default_name(data: Path) -> str:
    """The registry name of a run given none: the data file's stem, made a valid name."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(data).stem).strip("-._")
    return (stem or "model")[:64]


def method_task_problem(method: Method, task: TaskChoice) -> str | None:
    """Why ``method`` cannot train ``task`` data, or None: DPO takes preference pairs, and only DPO does.
    Checked on the config (a task given) and again on the data (the task detected)."""
    if method == "dpo" and task not in ("auto", "preference"):
        return 'method dpo trains on preference pairs {"prompt", "chosen", "rejected"}, not ' + f"{task} data"
    if task == "preference" and method != "dpo":
        return "preference pairs: train them with --method dpo (optionally --base an earlier fine-tune to improve)"
    return None


def trains_adapter(method: Method) -> bool:
    """LoRA and DPO train adapters on frozen weights; full fine-tuning trains every weight."""
    return method != "full"


class TrainConfig(BaseModel):
    """Everything that decides a training run. ``None`` means: choose from the data."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: Path = Field(description="Training file (.jsonl, .json array, .csv or .txt).")
    val_data: Path | None = Field(None, description="Validation file; when absent a split is held out from `data`.")
    task: TaskChoice = Field("auto", description="Data format; `auto` detects it from the file.")
    base: str = Field(
        DEFAULT_BASE,
        description="Model to start from: a known base name (see `tunesmith base list`), a local Hugging "
        "Face model folder, or a registry fine-tune (NAME or NAME:VERSION) to build on; the manifest then "
        "records the lineage.",
    )
    method: Method = Field(
        "lora",
        description="LoRA adapters, full fine-tuning, or DPO (preference pairs, trained as LoRA "
        "adapters; the reference model is the same weights with the adapter switched off).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=10,
        description="DPO: strength of the pull towards the reference model (higher stays closer). Only for method dpo.",
    )
    name: str | None = Field(None, description="Registry name; defaults to the data file's stem.")

    epochs: int | None = Field(None, ge=1, le=100, description="Passes over the training data.")
    lr: float | None = Field(None, gt=0, lt=1, description="Peak learning rate (AdamW).")
    lr_multiplier: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Scales the automatic learning rate (the OpenAI API's "
        "`learning_rate_multiplier`); ignored when `lr` is given. A resolved config's `lr` already includes it.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Examples per optimizer step (auto: 8, fewer for small data so that an epoch has at least "
        "32 steps).",
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Examples per forward pass; batch_size/micro_batch_size steps "
        "of gradient accumulation. Defaults to batch_size.",
    )
    max_length: int | None = Field(
        None, ge=16, le=32768, description="Tokens per example (raw text: per packed block)."
    )
    warmup_ratio: float = Field(0.05, ge=0, le=0.5, description="Share of steps with linear warm-up.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm; null disables.")
    precision: PrecisionChoice = Field(
        "auto",
        description="Compute precision. `auto`: bf16 where the hardware multiplies it natively "
        "(CUDA, CPUs with AMX or AVX512-BF16), else fp32. Trained weights stay fp32 either way: LoRA "
        "adapters, and the master weights of full fine-tuning (which then runs under autocast).",
    )

    lora_rank: int | None = Field(None, ge=1, le=1024, description="LoRA rank r.")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha; defaults to 2 * rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or every linear layer but the output head."
    )

    val_fraction: float = Field(
        0.1, ge=0, le=0.5, description="Share held out for validation when no `val_data` is given."
    )
    eval_every: int | None = Field(
        None, ge=1, description="Optimizer steps between validation passes (auto: 4 per epoch)."
    )
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after this many validation passes without improvement; null disables."
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps between checkpoints (auto: about 5 per run, at most 20 steps "
        "apart). Ctrl-C also writes one.",
    )
    seed: int = Field(0, description="Seeds the split, the data order, LoRA init and dropout.")

    labels: list[str] | None = Field(
        None, description="Classification label set; defaults to the labels seen in `data`."
    )
    system_prompt: str | None = Field(
        None, description="System message added to examples that have none (chat-like tasks)."
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="Also log the run to tensorboard (event files in $TUNESMITH_HOME/tensorboard/NAME) and/or "
        "mlflow ($MLFLOW_TRACKING_URI, else $TUNESMITH_HOME/mlflow.db); needs the `tracking` extra. "
        "metrics.jsonl stays the record.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("a classification task needs at least two labels")
            if len(set(value)) != len(value):
                raise ValueError("labels must be unique")
            if any(not label.strip() for label in value):
                raise ValueError("labels must not be empty")
        return value

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracker {', '.join(unknown)}: choose from {', '.join(TRACKERS)}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _cross_field(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.method == "full" and (self.lora_rank is not None or self.lora_alpha is not None):
            raise ValueError("lora_rank/lora_alpha only apply to method 'lora'")
        if self.labels is not None and self.task not in ("auto", "classify"):
            raise ValueError(f"labels only apply to the classify task, not {self.task!r}")
        if (problem := method_task_problem(self.method, self.task)) is not None:
            raise ValueError(problem)
        return self

    @property
    def uses_adapter(self) -> bool:
        return trains_adapter(self.method)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ResolvedConfig(TrainConfig):
    """A TrainConfig once ``training.defaults.resolve`` has filled in every "auto" from the data and the
    hardware: what the loop runs with, and what a run saves (runs/NAME/config.yaml, the manifest).

    What can still be None means "none", not "auto": no validation file, no gradient clipping, no early
    stopping, no label set (not a classifier), no system prompt, no LoRA settings (full fine-tuning)."""

    task: Task  # detected from the file when it was "auto"
    precision: Precision  # chosen from the hardware when it was "auto"
    name: str
    epochs: int = Field(ge=1, le=100)
    batch_size: int = Field(ge=1, le=4096)
    lr: float = Field(gt=0, lt=1)
    micro_batch_size: int = Field(ge=1)
    max_length: int = Field(ge=16, le=32768)
    eval_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)


def load_config(yaml_path: Path | None = None, **overrides: Any) -> TrainConfig:
    """Build a config from an optional YAML file, then CLI-style overrides (``None`` = not given)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_path).read_text())
        except FileNotFoundError:
            raise TunesmithError(f"{yaml_path}: config file not found") from None
        except yaml.YAMLError as err:
            raise TunesmithError(f"{yaml_path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise TunesmithError(f"{yaml_path}: expected a mapping of config keys at the top level")
        values.update(loaded or {})
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise TunesmithError(format_validation_error(err, yaml_path)) from None


def format_validation_error(err: ValidationError, source: Path | None = None) -> str:
    where = f"{source}: " if source else ""
    lines = [f"{where}invalid configuration:"]
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(config)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key; see `tunesmith train --help` or docs for the valid keys"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)
