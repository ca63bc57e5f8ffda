"""`--report-to tensorboard,mlflow`: a run also logged where a team already looks at its runs.

    tensorboard   event files in $TUNESMITH_HOME/tensorboard/NAME (`tensorboard --logdir ~/.tunesmith/tensorboard`):
                  the config as text, every step's metrics (train/..., val/...), the closing comparison
                  (eval/SYSTEM/METRIC) and the loss plot as an image
    mlflow        $MLFLOW_TRACKING_URI, else a SQLite store $TUNESMITH_HOME/mlflow.db with artifacts in
                  $TUNESMITH_HOME/mlruns (`mlflow ui --backend-store-uri sqlite:///$HOME/.tunesmith/mlflow.db`):
                  experiment "tunesmith", a run named after the run, the config as params and config.yaml, the
                  same metrics, the loss plot, the version's reference as a tag; a resumed run continues the
                  same MLflow run

The metrics JSONL of the run folder and the version stays the record: these are copies for other tools, written
by rank 0 only. Both libraries are optional (`pip install 'tunesmith[tracking]'`); a run that asks for one that is
missing is refused before it loads a model.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from tunesmith.core import paths
from tunesmith.core.config import ResolvedConfig, TrainConfig
from tunesmith.core.durable import atomic_write_text
from tunesmith.core.errors import TunesmithError
from tunesmith.evaluation.results import Comparison
from tunesmith.training.state import StepMetrics, TrainHooks

EXPERIMENT = "tunesmith"
MLFLOW_RUN_FILE = "mlflow-run-id"  # in the run folder: a resumed run logs into the same MLflow run
INSTALL_HINT = "pip install 'tunesmith[tracking]'"


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, float], step: int, loss_plot: Path | None, version: str | None) -> None:
        """The closing figures and plot; ``version`` None: the run stopped and may be resumed."""


def require(config: TrainConfig) -> None:
    """Refuse a run that asks for a tracker whose library is not installed (before anything is loaded)."""
    for name in config.report_to:  # each tracker's name is its package's
        try:
            importlib.import_module(name)
        except ImportError as missing:
            raise TunesmithError(f"--report-to {name} needs the {name} package: {INSTALL_HINT}") from missing


class RunTracking:
    """The trackers of one run (none when ``report_to`` is empty, or on a process other than rank 0)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers
        self.last_step = 0

    @classmethod
    def open(cls, config: ResolvedConfig, run_dir: Path, main: bool) -> RunTracking:
        if not main:
            return cls([])
        assert config.name is not None  # resolve sets it
        trackers: list[Tracker] = []
        for name in config.report_to:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(paths.home() / "tensorboard" / config.name, config))
            else:
                trackers.append(MLflowTracker(run_dir, config))
        return cls(trackers)

    def hooks(self) -> TrainHooks:
        return TrainHooks(on_metrics=self._step) if self.trackers else TrainHooks()

    def _step(self, entry: StepMetrics) -> None:
        self.last_step = entry.step
        values = step_values(entry)
        for tracker in self.trackers:
            tracker.log(values, entry.step)

    def finish(self, comparison: Comparison | None, loss_plot: Path | None = None, version: str | None = None):
        summary = comparison_values(comparison) if comparison is not None else {}
        for tracker in self.trackers:
            tracker.finish(summary, self.last_step, loss_plot, version)


def step_values(entry: StepMetrics) -> dict[str, float]:
    """A step's figures under the names both tools group by: train/loss, val/loss, val/reward_margin, ..."""
    values = {}
    for key, value in entry.to_json().items():
        if key == "step" or value is None:
            continue
        values[f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"] = float(value)
    return values


def comparison_values(comparison: Comparison) -> dict[str, float]:
    """The closing comparison as eval/SYSTEM/METRIC, numbers only."""
    values: dict[str, float] = {}
    for system in ("base", "few_shot", "parent", "fine_tuned"):
        metrics = getattr(comparison, system)
        if metrics is None:
            continue
        for metric, value in metrics.to_json().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[f"eval/{system}/{metric}"] = float(value)
    if comparison.helped is not None:
        values["eval/helped"] = float(comparison.helped)
    return values


class TensorBoardTracker:
    def __init__(self, folder: Path, config: ResolvedConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))
        # Markdown: a fenced block keeps the YAML's line breaks in TensorBoard's text tab.
        self.writer.add_text("config", "```\n" + config.to_yaml() + "```")

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, summary: dict[str, float], step: int, loss_plot: Path | None, version: str | None) -> None:
        self.log(summary, step)
        if loss_plot is not None and loss_plot.is_file():
            from matplotlib.image import imread

            self.writer.add_image("loss", imread(loss_plot)[..., :3], step, dataformats="HWC")
        if version:
            self.writer.add_text("version", version, step)
        self.writer.close()


class MLflowTracker:
    def __init__(self, run_dir: Path, config: ResolvedConfig):
        from mlflow import MlflowClient

        # Its store's first use logs each table it creates (INFO); the run's own output says what matters.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        explicit = os.environ.get("MLFLOW_TRACKING_URI")
        home = paths.home()
        self.client = MlflowClient(tracking_uri=explicit or f"sqlite:///{home / 'mlflow.db'}")
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # artifacts beside the database, not in whatever folder the command ran from
            location = None if explicit else (home / "mlruns").as_uri()
            experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        saved = run_dir / MLFLOW_RUN_FILE
        if saved.is_file():  # a resumed run
            self.run_id = saved.read_text().strip()
            return
        self.run_id = self.client.create_run(experiment_id, run_name=config.name).info.run_id
        atomic_write_text(saved, self.run_id + "\n")
        for key, value in config.model_dump(mode="json").items():
            self.client.log_param(self.run_id, key, str(value)[:6000])  # MLflow's limit on a param's value
        self.client.log_text(self.run_id, config.to_yaml(), "config.yaml")

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, float], step: int, loss_plot: Path | None, version: str | None) -> None:
        self.log(summary, step)
        if loss_plot is not None and loss_plot.is_file():
            self.client.log_artifact(self.run_id, str(loss_plot))
        if version:
            self.client.set_tag(self.run_id, "tunesmith.version", version)
        if version:  # a stopped run stays RUNNING: --resume continues it
            self.client.set_terminated(self.run_id, "FINISHED")
