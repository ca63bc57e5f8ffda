"""Distillation end to end with a real `tunesmith serve` as the teacher: `data generate` labels inputs
over HTTP (an answer outside --labels is rejected, never guessed), resumes after a partial run and a torn
last line without asking twice, a student trains on the result, and `eval --teacher-url` puts student,
base and teacher side by side with latency and size.

The teacher must answer deterministically, so it is a full fine-tune of the tiny test model that has
memorised one answer per input: the user message it was trained on is exactly what `data generate`
sends (``classify_prompt(text, LABELS)``), the answer is the label, and one input's memorised answer
("maybe") is not in the label set."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import torch

from tunesmith.cli import main
from tunesmith.core.config import TrainConfig
from tunesmith.data.labels import classify_prompt
from tunesmith.workflows.train import train

LABELS = ["bad", "good"]  # sorted, as a student's labels are: eval then sends the teacher the same prompt
MEMORISED = {
    "the soup was great": "good",
    "the staff were kind": "good",
    "no signal at all": "bad",
    "the lazy dog": "maybe",
    "the dog is lazy": "bad",
    "great and kind": "good",
    "lazy fox, no": "bad",
    "how kind, great": "good",
    "no signal, lazy": "bad",
    "the quick brown fox": "good",
}
VALID = {text: label for text, label in MEMORISED.items() if label in LABELS}

# The tiny model as teacher and student, but the teacher is a real `tunesmith serve`.
pytestmark = [pytest.mark.server, pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(300)]


def learnable_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model with its (tied) embeddings 10x larger: at the 0.02 init its logits barely move, and
    memorising ten answers would take hundreds of epochs; like this 40 epochs (30 to 50 measured) do."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models.load import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10.0)
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_distill_label_resume_train_and_compare_with_the_teacher(home, start_server, tiny_model_dir, tmp_path, capsys):
    base = learnable_copy(tiny_model_dir, tmp_path / "base")
    memorise = write(
        tmp_path / "teacher.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": classify_prompt(text, LABELS)},
                    {"role": "assistant", "content": label},
                ]
            }
            for text, label in MEMORISED.items()
        ],
    )
    train(
        TrainConfig(
            data=memorise,
            base=str(base),
            method="full",
            name="teacher",
            epochs=40,
            lr=1e-2,
            batch_size=2,
            val_fraction=0,
            early_stopping_patience=None,
            precision="fp32",
            seed=0,
        )
    )
    server = start_server()
    with urllib.request.urlopen(f"{server.base_url}/models") as response:
        assert "teacher:1" in [model["id"] for model in json.load(response)["data"]]

    rows = [{"text": text, "label": "ignored"} for text in MEMORISED]  # a label already there is ignored
    out, rejects = tmp_path / "distilled.jsonl", tmp_path / "distilled.rejected.jsonl"
    command = [
        "data",
        "generate",
        "--teacher-url",
        server.base_url,
        "--teacher-model",
        "teacher:1",
        "--labels",
        ",".join(LABELS),
        "--out",
        str(out),
        "--concurrency",
        "3",
    ]

    # A first run on part of the inputs (as if it had been stopped): 5 labelled, the "maybe" rejected.
    assert main([*command, "--inputs", str(write(tmp_path / "part.jsonl", rows[:6]))]) == 0
    assert "wrote 5 to" in capsys.readouterr().err
    assert read(rejects) == [
        {"line": 4, "input": {"text": "the lazy dog"}, "answer": "maybe", "reason": "not one of the labels: bad, good"}
    ]
    # ... and a crash that tore the last line in half.
    lines = out.read_text().splitlines(keepends=True)
    torn = json.loads(lines[-1])["text"]
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

    assert main([*command, "--inputs", str(write(tmp_path / "inputs.jsonl", rows))]) == 0
    report = capsys.readouterr().err
    assert "dropped a torn last line" in report
    assert "wrote 5 to" in report and "skipped 5 already done" in report and "invalid 0" in report
    assert f"next: tunesmith train {out}" in report
    assert sorted(map(json.dumps, read(out))) == sorted(
        json.dumps({"text": t, "label": label}) for t, label in VALID.items()
    )
    assert len(read(rejects)) == 1
    asked = server.log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert asked == 6 + 4 + 1  # the first run, the four new inputs, the torn one again: nothing else twice
    assert torn in VALID

    # The student learns from the teacher's labels, and eval puts it beside its base and the teacher.
    student = train(
        TrainConfig(data=out, base=str(base), name="student", epochs=2, lr=1e-2, batch_size=3, val_fraction=0, seed=0)
    )
    assert student.version.ref == "student:1"
    test = write(tmp_path / "test.jsonl", [{"text": t, "label": label} for t, label in VALID.items()])
    figures_path = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "student",
                "--data",
                str(test),
                "--teacher-url",
                server.base_url,
                "--teacher-model",
                "teacher:1",
                "--latency-samples",
                "2",
                "--shots",
                "2",
                "--json",
                str(figures_path),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "teacher" in table and "parameters" in table and "latency_ms_p50" in table
    figures = json.loads(figures_path.read_text())
    assert figures["systems"] == ["base", "few_shot", "fine_tuned", "teacher"]
    results = figures["results"]
    size = sum(p.numel() for p in _load(base).parameters())
    for name in ("base", "few_shot", "fine_tuned", "teacher"):
        assert 0 <= results[name]["accuracy"] <= 1 and results[name]["latency_ms_p50"] > 0, name
    assert results["base"]["parameters"] == results["fine_tuned"]["parameters"] == size  # LoRA merged, not added
    teacher = results["teacher"]
    assert teacher["accuracy"] == 1.0 and teacher["invalid_answers"] == 0  # it memorised these
    assert teacher["parameters"] is None and "ece" not in teacher and teacher["model"] == "teacher:1"
    assert teacher["prompt_tokens_mean"] > 0 and teacher["latency_requests"] == 2
    # The teacher is a reference: "helped" compares the student with its baselines only.
    tuned = results["fine_tuned"]["accuracy"]
    assert figures["helped"] == all(tuned > results[name]["accuracy"] for name in ("base", "few_shot"))
    assert all(d["against"] != "teacher" for d in figures["diffs"])
    assert all(example["outputs"]["teacher"] == example["reference"] for example in figures["examples"])


def _load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder))
