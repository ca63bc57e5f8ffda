"""End to end on the tiny model: train, publish, version again, refuse bad data; and the CLI."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import yaml

from conftest import call_rows as rows
from tunesmith.cli import main
from tunesmith.core.config import TrainConfig
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.evaluation.compare import sample
from tunesmith.evaluation.measure import EvalOptions
from tunesmith.registry import store
from tunesmith.training.loop import TrainHooks
from tunesmith.workflows.evaluate import evaluate
from tunesmith.workflows.train import train

PNG = b"\x89PNG\r\n\x1a\n"

# Training the tiny model: two threads on its tiny matrices wait on each other, 4-10x slower on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(data, tiny_model_dir, **overrides) -> TrainConfig:
    values = dict(data=data, base=str(tiny_model_dir), name="tiny", epochs=2, batch_size=4, lr=1e-2, seed=0)
    return TrainConfig(**(values | overrides))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_publishes_versions(home, write_jsonl, tiny_model_dir, capsys):
    data = write_jsonl("calls.jsonl", rows())
    result = train(config(data, tiny_model_dir))

    # the loss went down
    losses = [entry["loss"] for entry in result.loop.history]
    assert result.loop.steps == result.loop.total_steps == len(losses) == 12  # 22 train rows / 4, 2 epochs
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.tuned_metrics["loss"] < result.base_metrics["loss"]

    version = result.version
    assert version.ref == "tiny:1" and version.path == home / "registry" / "tiny" / "1"
    assert not (home / "runs" / "tiny").exists()  # the work folder is gone once published
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "loss.png",
        "manifest.json",
        "tokenizer.json",
    ):
        assert (version.path / name).is_file(), name
    assert (version.path / "loss.png").read_bytes().startswith(PNG)
    assert json.loads((version.path / "adapter" / "adapter_config.json").read_text())["r"] == 16

    manifest = version.manifest
    assert manifest["name"] == "tiny" and manifest["version"] == 1
    assert manifest["task"] == "chat" and manifest["method"] == "lora" and manifest["seed"] == 0
    assert manifest["base"]["sha256"] == sha256(tiny_model_dir / "model.safetensors")
    assert manifest["base"]["embedded"] is False
    assert manifest["data"]["train"]["sha256"] == sha256(data)
    assert manifest["data"]["train"]["rows"] == 24
    assert manifest["data"]["val"] is None
    assert manifest["provenance"] is None  # a run from the CLI or the Python API
    for library in ("python", "torch", "transformers", "peft", "tunesmith"):
        assert manifest["libraries"][library]
    assert manifest["metrics"]["base"]["loss"] > manifest["metrics"]["fine_tuned"]["loss"]
    # the closing comparison: base zero-shot and 8-shot measured on the validation split too
    metrics = manifest["metrics"]
    assert list(metrics) == ["base", "few_shot", "fine_tuned", "helped", "helped_clearly", "significance"]
    assert metrics["few_shot"]["shots"] == 8
    assert metrics["few_shot"]["prompt_tokens_mean"] > metrics["base"]["prompt_tokens_mean"]
    assert metrics["helped"] == all(
        metrics["fine_tuned"]["rouge_l"] > metrics[b]["rouge_l"] for b in ("base", "few_shot")
    )
    # how clearly: the baselines' per-example scores were kept from before training for the intervals
    for baseline in ("base", "few_shot"):
        tested = metrics["significance"][baseline]
        assert tested["n"] == 2 and tested["metric"] == "rouge_l"
        assert tested["difference"] == pytest.approx(
            metrics["fine_tuned"]["rouge_l"] - metrics[baseline]["rouge_l"], abs=1e-6
        )
    printed = capsys.readouterr().err  # train reports on stderr
    assert "rouge_l against base (zero-shot):" in printed and "95% interval" in printed
    pool = [json.loads(line) for line in (version.path / "fewshot.jsonl").read_text().splitlines()]
    assert len(pool) == 22 and all("messages" in record for record in pool)  # every train row, none from val
    assert manifest["training"]["train_seconds"] > 0 and manifest["training"]["steps"] == 12

    saved = TrainConfig(**yaml.safe_load((version.path / "config.yaml").read_text()))
    assert (saved.epochs, saved.lr, saved.lora_rank, saved.lora_alpha) == (2, 1e-2, 16, 32.0)
    assert saved.task == "chat" and saved.max_length >= 64 and saved.micro_batch_size == 4
    history = [json.loads(line) for line in (version.path / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in history] == list(range(1, 13))
    assert [entry["loss"] for entry in history] == pytest.approx(losses)

    # same name again: version 2, version 1 untouched
    second = train(config(data, tiny_model_dir, epochs=1))
    assert second.version.ref == "tiny:2"
    assert store.get("tiny").version == 2
    assert store.get("tiny:1").manifest["training"]["steps"] == 12
    assert store.get("tiny:2").manifest["training"]["steps"] == 6

    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["version"]) for row in listed] == [("tiny", 1), ("tiny", 2)]
    for row in listed:
        assert row["base"] == str(tiny_model_dir) and row["task"] == "chat" and row["created"]
    assert main(["models", "show", "tiny:1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1


def test_hooks_follow_the_loop_and_provenance_reaches_the_manifest(home, write_jsonl, tiny_model_dir):
    seen: dict[str, list] = {"start": [], "metrics": [], "checkpoints": []}
    hooks = TrainHooks(
        on_start=lambda config, total, start: seen["start"].append((config.epochs, config.lr, total, start)),
        on_metrics=seen["metrics"].append,
        on_checkpoint=lambda step, folder, entry: seen["checkpoints"].append((step, folder.name, entry["step"])),
    )
    data = write_jsonl("calls.jsonl", rows())
    result = train(config(data, tiny_model_dir, lr=None, lr_multiplier=2.0), hooks=hooks, provenance={"job": "ftjob-1"})
    assert seen["start"] == [(2, pytest.approx(6e-4), 12, 0)]  # resolved: 3e-4 x 2
    assert seen["metrics"] == result.loop.history and any("val_loss" in entry for entry in seen["metrics"])
    # 12 steps: a checkpoint every 3 (about 5 per run)
    assert seen["checkpoints"] == [(step, f"step-{step:06d}", step) for step in (3, 6, 9, 12)]
    assert result.version.manifest["provenance"] == {"job": "ftjob-1"}
    assert result.version.manifest["config"]["checkpoint_every"] == 3


def test_full_fine_tuning_writes_model_weights(home, write_jsonl, tiny_model_dir):
    data = write_jsonl("calls.jsonl", rows())
    result = train(config(data, tiny_model_dir, name="tiny-full", method="full", lr=1e-3))
    path = result.version.path
    assert (path / "model" / "model.safetensors").is_file()
    assert (path / "model" / "config.json").is_file()
    assert not (path / "adapter").exists()
    assert result.version.manifest["method"] == "full"
    losses = [entry["loss"] for entry in result.loop.history]
    assert losses[-1] < losses[0]


def test_raw_text_closing_comparison_bootstraps_held_out_blocks(home, tmp_path, tiny_model_dir):
    # Perplexity is exp(total loss / total tokens): the bootstrap weights each held-out block by its tokens.
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(f"Chapter {i}. The ship left port {i} at dawn, and the crew sang." for i in range(60)))
    result = train(config(book, tiny_model_dir, name="book", max_length=32, epochs=1))
    metrics = result.version.manifest["metrics"]
    assert list(metrics) == ["base", "fine_tuned", "helped", "helped_clearly", "significance"]
    tested = metrics["significance"]["base"]
    assert tested["metric"] == "perplexity" and tested["n"] >= 2
    assert tested["difference"] == pytest.approx(
        metrics["fine_tuned"]["perplexity"] - metrics["base"]["perplexity"], abs=1e-5
    )
    assert tested["clear"] == (tested["high"] < 0)
    # eval keeps the blocks behind its perplexities (the curve's paired differences read them back)
    figures = evaluate(result.version.ref, book, options=EvalOptions(latency_samples=0))
    blocks = figures["blocks"]
    assert sum(b["tokens"] for b in blocks) == figures["results"]["base"]["target_tokens"]
    for system in ("base", "fine_tuned"):
        kept = sample(figures, system)
        assert kept.weights == [b["tokens"] for b in blocks]
        assert math.exp(sum(v * w for v, w in zip(kept.values, kept.weights)) / sum(kept.weights)) == pytest.approx(
            figures["results"][system]["perplexity"], rel=1e-5
        )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_bf16_training_keeps_the_trained_weights_fp32(home, write_jsonl, tiny_model_dir, method):
    from safetensors.torch import load_file

    data = write_jsonl("calls.jsonl", rows())
    lr = 1e-2 if method == "lora" else 1e-3
    result = train(config(data, tiny_model_dir, name=f"tiny-{method}-bf16", method=method, precision="bf16", lr=lr))
    assert result.version.manifest["training"]["precision"] == "bf16"
    (weights,) = (result.version.path / ("adapter" if method == "lora" else "model")).glob("*.safetensors")
    tensors = load_file(weights)
    assert tensors and {tensor.dtype for tensor in tensors.values()} == {torch.float32}
    losses = [entry["loss"] for entry in result.loop.history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_bad_data_is_refused_before_anything_is_written(home, write_jsonl, tiny_model_dir):
    data = write_jsonl(
        "bad.jsonl", rows(5) + ['{"messages": oops}', {"messages": [{"role": "robot", "content": "hi"}]}]
    )
    with pytest.raises(DataError) as raised:
        train(config(data, tiny_model_dir))
    message = str(raised.value)
    assert f"{data}:6" in message and f"{data}:7" in message
    assert "3 error(s)" in message and "nothing was trained" in message
    assert raised.value.report is not None and not raised.value.report.ok
    assert store.list_models() == []
    assert not (home / "runs" / "tiny").exists()


def test_unfinished_run_blocks_a_new_one(home, write_jsonl, tiny_model_dir):
    checkpoint = home / "runs" / "tiny" / "checkpoints" / "step-000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"x")
    (checkpoint.parent / "LATEST").write_text("step-000001\n")
    with pytest.raises(TunesmithError, match="--resume tiny"):
        train(config(write_jsonl("calls.jsonl", rows()), tiny_model_dir))


def test_resume_refuses_a_changed_data_file(home, write_jsonl, tiny_model_dir):
    data = write_jsonl("calls.jsonl", rows())
    run_dir = home / "runs" / "tiny"
    checkpoint = run_dir / "checkpoints" / "step-000001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"x")
    (checkpoint.parent / "LATEST").write_text("step-000001\n")
    (run_dir / "config.yaml").write_text(config(data, tiny_model_dir).to_yaml())
    (run_dir / "data.sha256").write_text(sha256(data) + "\n")
    data.write_text(data.read_text() + json.dumps(rows(1)[0] | {"messages": rows(30)[29]["messages"]}) + "\n")
    with pytest.raises(TunesmithError, match="changed since the run started"):
        train(resume="tiny")


def test_cli_models_list_empty(home, capsys):
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_data_check(write_jsonl, tiny_model_dir, capsys):
    good = write_jsonl("good.jsonl", rows(4))
    assert main(["data", "check", str(good), "--base", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["examples"] == 4 and report["task"] == "chat"
    assert report["stats"]["tokens_total"] > 0

    bad = write_jsonl("bad.jsonl", rows(2) + ['{"messages": [}'])
    assert main(["data", "check", str(bad), "--base", str(tiny_model_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [(e["line"], e["severity"]) for e in report["errors"]] == [(3, "error")]
