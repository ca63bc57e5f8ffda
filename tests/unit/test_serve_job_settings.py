"""A fine-tuning job takes any training setting as a hyperparameter by its TrainConfig name: checked by
TrainConfig when the job is created (a bad value or an unknown key is a 400 naming the param), stored with
the job, and applied when it runs. In-process: no server is started."""

from __future__ import annotations

import json

import pytest

from tunesmith.core import paths
from tunesmith.core.config import ResolvedConfig
from tunesmith.serve.datacheck import validate_job
from tunesmith.serve.job_runner import job_config, resolved_hyperparameters
from tunesmith.serve.job_store import JobStore, job_object
from tunesmith.serve.jobs import JobRequest, _hyperparameters
from tunesmith.serve.protocol import APIError


def requested(**request) -> dict:
    return _hyperparameters(JobRequest(model="smollm2-135m", training_file="file-t", **request))


def refused(**request) -> APIError:
    with pytest.raises(APIError) as raised:
        requested(**request)
    assert raised.value.status == 400
    return raised.value


def test_settings_by_their_config_name_are_checked_and_kept_as_the_config_reads_them():
    assert requested(hyperparameters={"n_epochs": 2, "lora_rank": "16", "labels": ["neg", "pos"]}) == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "lora_rank": 16,
        "labels": ["neg", "pos"],
    }
    under_method = {"type": "supervised", "supervised": {"hyperparameters": {"max_length": 128}}}
    assert requested(method=under_method)["max_length"] == 128
    assert requested(hyperparameters={"precision": "auto"}) == requested()  # "auto" is not given


def test_a_bad_setting_is_a_400_naming_it():
    assert refused(hyperparameters={"lora_rank": 0}).param == "hyperparameters.lora_rank"
    assert "greater than or equal to 1" in refused(hyperparameters={"lora_rank": 0}).message
    assert refused(hyperparameters={"method": "qlora"}).param == "hyperparameters.method"
    unknown = refused(hyperparameters={"lora_rnak": 8})
    assert unknown.param == "hyperparameters.lora_rnak" and "lora_rank" in unknown.message
    assert refused(hyperparameters={"epochs": 2}).message == "epochs: give it as n_epochs"
    assert "the job's seed sets it" in refused(hyperparameters={"seed": 1}).message
    assert refused(hyperparameters={"data": "x.jsonl"}).param == "hyperparameters.data"
    # a rule between settings names the object they were given in
    between = refused(
        method={"type": "supervised", "supervised": {"hyperparameters": {"method": "full", "lora_rank": 8}}}
    )
    assert between.param == "method.supervised.hyperparameters" and "only apply to method 'lora'" in between.message
    twice = refused(
        hyperparameters={"lora_rank": 8},
        method={"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 4}}},
    )
    assert twice.param == "method.supervised.hyperparameters.lora_rank" and "given twice" in twice.message


def test_the_runner_applies_the_stored_settings(home):
    store = JobStore(paths.serve_db())
    (home / "files").mkdir(parents=True, exist_ok=True)
    (home / "files" / "file-t.jsonl").write_text(json.dumps({"text": "fine", "label": "pos"}) + "\n")
    store.add_file("file-t", "calls.jsonl", "file-t.jsonl", 1, "fine-tune")
    hyperparameters = requested(hyperparameters={"n_epochs": 2, "lora_rank": 16, "lora_targets": ["q_proj"]})
    store.create_job("ftjob-t", "smollm2-135m", "file-t", None, "calls", 7, hyperparameters, "calls-t", None)
    config = job_config(store, store.get_job("ftjob-t"))
    assert (config.epochs, config.lora_rank, config.lora_targets) == (2, 16, ["q_proj"])
    assert (config.batch_size, config.seed, config.name, config.base) == (None, 7, "calls-t", "smollm2-135m")
    # once it runs, the job shows every setting it asked for as the run resolved it
    run = {
        "task": "classify",
        "precision": "fp32",
        "batch_size": 8,
        "micro_batch_size": 8,
        "max_length": 64,
        "eval_every": 1,
        "checkpoint_every": 1,
        "lr": 3e-4,
    }
    resolved = resolved_hyperparameters(ResolvedConfig(**(config.model_dump() | run)), store.get_job("ftjob-t"))
    assert resolved == {
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
        "lora_rank": 16,
        "lora_targets": ["q_proj"],
    }


def test_a_job_can_report_to_trackers(home):
    """`report_to` is a setting like any other: checked when the job is created, applied when it runs."""
    assert requested(hyperparameters={"report_to": ["tensorboard", "mlflow"]})["report_to"] == ["tensorboard", "mlflow"]
    wrong = refused(hyperparameters={"report_to": ["wandb"]})
    assert wrong.param == "hyperparameters.report_to" and "unknown tracker wandb" in wrong.message
    store = JobStore(paths.serve_db())
    (home / "files").mkdir(parents=True, exist_ok=True)
    (home / "files" / "file-t.jsonl").write_text(json.dumps({"text": "fine", "label": "pos"}) + "\n")
    store.add_file("file-t", "calls.jsonl", "file-t.jsonl", 1, "fine-tune")
    hyperparameters = requested(hyperparameters={"report_to": ["tensorboard"]})
    store.create_job("ftjob-r", "smollm2-135m", "file-t", None, "calls", 7, hyperparameters, "calls-r", None)
    assert job_config(store, store.get_job("ftjob-r")).report_to == ["tensorboard"]


def test_a_dpo_job_trains_with_method_dpo_and_its_beta():
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}}
    assert requested(method=dpo) == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "method": "dpo",
        "beta": 0.2,
    }
    assert refused(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}).param == (
        "method.dpo.hyperparameters.beta"
    )
    clash = refused(method={"type": "dpo", "dpo": {"hyperparameters": {"method": "full"}}})
    assert clash.param == "method.dpo.hyperparameters.method" and "given twice" in clash.message
    other = refused(method={"type": "reinforcement"})
    assert other.param == "method.type" and "'supervised' or 'dpo'" in other.message


@pytest.mark.parametrize(
    "method,line,fails",
    [
        ({"type": "dpo"}, {"text": "fine", "label": "pos"}, "holds classify data; a job with method"),
        (None, {"prompt": "Rent bikes?", "chosen": "Yes.", "rejected": "No."}, "create the job with method"),
        ({"type": "dpo"}, {"prompt": "Rent bikes?", "chosen": "Yes.", "rejected": "No."}, None),
    ],
)
def test_a_job_whose_file_does_not_fit_its_method_fails_validation(home, method, line, fails):
    store = JobStore(paths.serve_db())
    (home / "files").mkdir(parents=True, exist_ok=True)
    lines = [line | {"label": label} if "label" in line else line for label in ("pos", "neg", "pos")]
    (home / "files" / "file-t.jsonl").write_text("".join(json.dumps(one) + "\n" for one in lines))
    store.add_file("file-t", "data.jsonl", "file-t.jsonl", 1, "fine-tune")
    hyperparameters = requested(method=method) if method else requested()
    store.create_job("ftjob-t", "smollm2-135m", "file-t", None, None, 7, hyperparameters, "t", None)
    assert validate_job(store, "ftjob-t") is (fails is None)
    job = job_object(store.get_job("ftjob-t"))
    if fails:
        assert job["status"] == "failed" and fails in job["error"]["message"]
        assert job["error"]["message"].startswith("data.jsonl")  # the user's name for the file
    else:
        assert job["status"] == "queued"
        assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["method"] == "dpo"
