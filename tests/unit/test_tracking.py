"""`--report-to tensorboard,mlflow`: a tiny run's steps, config, comparison and plot, read back by each tool's own
reader (TensorBoard's event accumulator, MLflow's search_runs)."""

from __future__ import annotations

import sys

import pytest

from conftest import call_rows as calls
from tunesmith.core.config import TrainConfig
from tunesmith.core.errors import TunesmithError
from tunesmith.workflows.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# MLflow 3.18's own store code, under SQLAlchemy 2.1 (not something a user of tunesmith can act on).
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_a_run_is_logged_to_tensorboard_and_mlflow(home, write_jsonl, tiny_model_dir, monkeypatch):
    from mlflow import MlflowClient, search_runs, set_tracking_uri
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_jsonl("calls.jsonl", calls(24))
    config = TrainConfig(
        data=data,
        base=str(tiny_model_dir),
        name="tracked",
        epochs=2,
        batch_size=4,
        lr=1e-2,
        seed=0,
        report_to=["tensorboard", "mlflow"],
    )
    result = train(config)
    steps = result.loop.steps
    losses = [entry.loss for entry in result.loop.history]

    events = EventAccumulator(str(home / "tensorboard" / "tracked"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses)
    assert len(events.Scalars("val/loss")) == sum(e.val_loss is not None for e in result.loop.history)
    fine_tuned = result.comparison.fine_tuned
    assert events.Scalars("eval/fine_tuned/loss")[0].value == pytest.approx(fine_tuned.loss)
    assert (
        events.Images("loss")
        and "lora_rank" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    )

    set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    runs = search_runs(experiment_names=["tunesmith"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.01" and run.data.params["report_to"] == "['tensorboard', 'mlflow']"
    assert run.data.tags["tunesmith.version"] == "tracked:1"
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, steps + 1))
    assert run.data.metrics["eval/fine_tuned/loss"] == pytest.approx(fine_tuned.loss)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss.png", "config.yaml"} <= artifacts
    assert (home / "mlruns").is_dir()  # artifacts beside the database, not in the working folder


def test_unknown_or_missing_trackers_are_refused_before_training(home, write_jsonl, tiny_model_dir, monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker wandb: choose from tensorboard, mlflow"):
        TrainConfig(data="x.jsonl", report_to=["wandb"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    data = write_jsonl("calls.jsonl", calls(8))
    with pytest.raises(TunesmithError, match=r"--report-to mlflow needs the mlflow package: pip install"):
        train(TrainConfig(data=data, base=str(tiny_model_dir), name="untracked", report_to=["mlflow"]))
    assert not (home / "runs" / "untracked").exists()
