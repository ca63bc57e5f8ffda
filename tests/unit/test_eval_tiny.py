"""``tunesmith eval`` and ``tunesmith curve`` end to end on the tiny model: the stable JSON shape,
the CLI, the baselines, bare and chat models, and the learning curve."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import pytest
import torch

from tunesmith.cli import main
from tunesmith.core.config import TrainConfig
from tunesmith.core.errors import TunesmithError
from tunesmith.data.shots import POOL_FILE, load_pool
from tunesmith.evaluation.measure import EvalOptions
from tunesmith.evaluation.report import curve_verdict
from tunesmith.registry import store
from tunesmith.workflows.curve import learning_curve
from tunesmith.workflows.evaluate import evaluate
from tunesmith.workflows.train import train

REPO = Path(__file__).resolve().parents[2]

SYSTEMS = ["base", "few_shot", "fine_tuned"]
CLASSIFY_METRICS = (
    "accuracy",
    "macro_f1",
    "ece",
    "per_label",
    "confusion",
    "loss",
    "prompt_tokens_mean",
    "latency_ms_p50",
    "latency_ms_p90",
    "tokens_per_s",
)
TEMPLATES = {  # labels of equal token length, so that length alone does not decide the answer
    "good": ["the soup was great {i}", "the staff were kind {i}", "great and kind {i}", "how kind, great {i}"],
    "bad": ["no signal at all {i}", "the dog is lazy {i}", "no signal, lazy {i}", "lazy fox, no {i}"],
}


def classify_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        label = "good" if i % 2 else "bad"
        rows.append({"text": TEMPLATES[label][(i // 2) % 4].format(i=i), "label": label})
    return rows


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Customer: CU-{1000 + i} Issue: no signal."},
                {"role": "assistant", "content": f"ticket CU-{1000 + i}"},
            ]
        }
        for i in range(offset, offset + n)
    ]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """Like the ``home`` fixture, for the whole module: the models trained once are used by many tests."""
    home = tmp_path_factory.mktemp("eval-tiny") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNESMITH_HOME", str(home))
        patch.setenv("TUNESMITH_CACHE", str(REPO / ".cache" / "tunesmith"))
        yield home


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-data")
    paths = {}
    for name, rows in {
        "train": classify_rows(40),
        "test": classify_rows(12, offset=100),
        "chat_train": chat_rows(24),
        "chat_test": chat_rows(6, offset=100),
    }.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


@pytest.fixture(scope="module")
def learnable_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with its (tied) embeddings 30x larger. At the usual 0.02 init the output logits
    stay within about +-0.6 whatever LoRA does, so fine-tuning cannot change a single prediction and
    the per-example comparison would be vacuous; here two epochs flip the predicted label."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models.load import load_tokenizer

    folder = tmp_path_factory.mktemp("learnable-model")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(30.0)
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tinycls(shared_home, files, learnable_model_dir):
    return train(
        TrainConfig(
            data=files["train"], base=str(learnable_model_dir), name="tinycls", epochs=2, batch_size=4, lr=1e-2, seed=0
        )
    )


@pytest.fixture(scope="module")
def figures(tinycls, files):
    return evaluate("tinycls", files["test"], options=EvalOptions(shots=4, latency_samples=2)).to_json()


def test_eval_classify_shape(figures, tinycls):
    assert tinycls.version.ref == "tinycls:1"
    assert figures["task"] == "classify" and figures["n"] == 12 and figures["model"] == "tinycls:1"
    assert figures["labels"] == ["bad", "good"] and figures["primary"] == "accuracy"
    assert list(figures["results"]) == SYSTEMS == figures["systems"]
    for name, metrics in figures["results"].items():
        for key in CLASSIFY_METRICS:
            assert key in metrics, (name, key)
        assert sum(map(sum, metrics["confusion"])) == 12
        assert metrics["n"] == 12
        assert set(metrics["per_label"]) == {"bad", "good"}
        assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
        assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p90"] and metrics["tokens_per_s"] > 0
    few, base = figures["results"]["few_shot"], figures["results"]["base"]
    assert few["shots"] == 4 and "shots" not in base and "shots" not in figures["results"]["fine_tuned"]
    assert few["prompt_tokens_mean"] > base["prompt_tokens_mean"]
    assert figures["results"]["fine_tuned"]["prompt_tokens_mean"] == base["prompt_tokens_mean"]
    assert figures["helped"] == all(
        figures["results"]["fine_tuned"]["accuracy"] > figures["results"][b]["accuracy"] for b in ("base", "few_shot")
    )
    json.dumps(figures)  # the --json shape: plain JSON


def test_eval_intervals_come_from_the_same_examples(figures):
    # The bootstrap's point estimates are the reported metrics: it resampled the examples that were scored.
    results, tested = figures["results"], figures["significance"]
    assert set(tested) == {"base", "few_shot"} and set(figures["intervals"]) == set(SYSTEMS)
    for baseline, d in tested.items():
        assert d["metric"] == "accuracy" and d["n"] == 12
        assert d["difference"] == pytest.approx(results["fine_tuned"]["accuracy"] - results[baseline]["accuracy"])
        assert d["low"] <= d["high"] and d["clear"] == (d["low"] > 0)
    for low, high in figures["intervals"].values():
        assert 0 <= low <= high <= 1
    assert figures["helped_clearly"] == (figures["helped"] and all(d["clear"] for d in tested.values()))


def test_eval_records_and_honours_its_precision(figures, tinycls, files):
    from tunesmith.models.precision import precision_dtype

    assert figures["precision"] == ("bf16" if precision_dtype("auto") == torch.bfloat16 else "fp32")
    bf16 = evaluate("tinycls", files["test"], baselines=(), options=EvalOptions(latency_samples=0, precision="bf16"))
    assert bf16["precision"] == "bf16" and list(bf16["results"]) == ["fine_tuned"]
    # the tiny classifier is confident: both precisions give it the same answers
    assert [e["outputs"]["fine_tuned"] for e in bf16["examples"]] == [
        e["outputs"]["fine_tuned"] for e in figures["examples"]
    ]


def test_eval_examples_and_diffs_agree(figures, files):
    examples = figures["examples"]
    test_rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
    assert len(examples) == 12
    assert [e["line"] for e in examples] == list(range(1, 13))
    assert [e["input"] for e in examples] == [row["text"] for row in test_rows]
    assert [e["reference"] for e in examples] == [row["label"] for row in test_rows]
    for example in examples:
        assert set(example["outputs"]) == set(SYSTEMS) == set(example["scores"])
        for name in SYSTEMS:
            assert example["outputs"][name] in ("bad", "good")
            assert example["scores"][name] == float(example["outputs"][name] == example["reference"])
    for name in SYSTEMS:  # accuracy is the share of correct examples
        assert figures["results"][name]["accuracy"] == pytest.approx(
            statistics.fmean(e["scores"][name] for e in examples)
        )

    # fine-tuning changed some answers (see learnable_model_dir), so the diffs have something to show
    assert any(e["outputs"]["fine_tuned"] != e["outputs"]["base"] for e in examples)
    assert figures["diffs"]
    expected = {
        (e["line"], baseline): e["scores"]["fine_tuned"] - e["scores"][baseline]
        for e in examples
        for baseline in ("base", "few_shot")
        if e["scores"]["fine_tuned"] != e["scores"][baseline]
    }
    found = {(d["line"], d["against"]): d["delta"] for d in figures["diffs"]}
    assert found == pytest.approx(expected)
    kinds = [d["kind"] for d in figures["diffs"]]
    assert kinds == sorted(kinds, key=lambda kind: kind != "regression")  # regressions first
    for diff in figures["diffs"]:
        assert diff["kind"] == ("regression" if diff["delta"] < 0 else "improvement")


def test_eval_break_even(figures):
    even = figures["break_even"]
    assert isinstance(even, dict) and even["vs"] == "few_shot"
    assert even["requests"] is None or (isinstance(even["requests"], int) and even["requests"] > 0)
    assert even["training_cpu_seconds"] > 0


def test_cli_eval_writes_json_and_report(tinycls, files, tmp_path, capsys):
    out_json, out_html = tmp_path / "eval.json", tmp_path / "eval.html"
    code = main(
        [
            "eval",
            "tinycls",
            "--data",
            str(files["test"]),
            "--shots",
            "2",
            "--latency-samples",
            "1",
            "--json",
            str(out_json),
            "--report",
            str(out_html),
        ]
    )
    assert code == 0
    written = json.loads(out_json.read_text())
    assert {"task", "n", "results", "examples", "diffs", "break_even", "helped"} <= set(written)
    assert list(written["results"]) == SYSTEMS and written["results"]["few_shot"]["shots"] == 2
    page = out_html.read_text()
    assert "data:image/png;base64," in page and "http" not in page
    printed = capsys.readouterr().out
    assert "fine-tuned" in printed and "base + 2-shot prompt" in printed
    # the verdict: one line per baseline with the difference and its interval, in the report too
    assert "accuracy against base (zero-shot):" in printed and "95% interval" in printed
    assert "fine-tuned against" in page and "Paired bootstrap over 12 examples" in page


def test_cli_eval_baselines(tinycls, files, tmp_path, capsys):
    out_json = tmp_path / "none.json"
    assert (
        main(
            [
                "eval",
                "tinycls",
                "--data",
                str(files["test"]),
                "--baselines",
                "none",
                "--latency-samples",
                "0",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    written = json.loads(out_json.read_text())
    assert list(written["results"]) == ["fine_tuned"]
    assert written["helped"] is None and written["diffs"] == [] and written["break_even"] is None
    assert "latency_ms_p50" not in written["results"]["fine_tuned"]
    capsys.readouterr()

    assert main(["eval", "tinycls", "--data", str(files["test"]), "--baselines", "base,zero-shot"]) == 1
    assert "unknown baseline 'zero-shot'; choose from base, few-shot" in capsys.readouterr().err
    with pytest.raises(TunesmithError, match="unknown baseline"):
        evaluate("tinycls", files["test"], baselines=("base", "fewshot"))


def test_eval_a_bare_model(shared_home, files, tiny_model_dir):
    figures = evaluate(str(tiny_model_dir), files["test"], options=EvalOptions(shots=2, latency_samples=1))
    assert figures["task"] == "classify" and list(figures["results"]) == ["base"]
    assert figures["helped"] is None and figures["break_even"] is None and figures["diffs"] == []
    assert figures["results"]["base"]["n"] == 12
    assert all(set(e["outputs"]) == {"base"} for e in figures["examples"])


def test_eval_a_chat_model(shared_home, files, tiny_model_dir):
    result = train(
        TrainConfig(
            data=files["chat_train"], base=str(tiny_model_dir), name="tinychat", epochs=1, batch_size=4, lr=1e-2, seed=0
        )
    )
    figures = evaluate(result.version.ref, files["chat_test"], options=EvalOptions(shots=2, latency_samples=1))
    assert figures["task"] == "chat" and figures["primary"] == "rouge_l" and figures["n"] == 6
    assert list(figures["results"]) == SYSTEMS
    for metrics in figures["results"].values():
        for key in ("rouge_l", "chrf", "loss", "perplexity", "exact_match", "prompt_tokens_mean"):
            assert key in metrics
        assert 0 <= metrics["rouge_l"] <= 1 and metrics["loss"] > 0
        assert "accuracy" not in metrics
    assert figures["results"]["few_shot"]["prompt_tokens_mean"] > figures["results"]["base"]["prompt_tokens_mean"]
    for example in figures["examples"]:
        assert example["input"].startswith("Customer: CU-1") and example["reference"].startswith("ticket CU-")
        assert set(example["outputs"]) == set(SYSTEMS)
        assert all(0 <= score <= 1 for score in example["scores"].values())
    for name in SYSTEMS:  # ROUGE-L is the mean of the per-example scores
        assert figures["results"][name]["rouge_l"] == pytest.approx(
            statistics.fmean(e["scores"][name] for e in figures["examples"])
        )
    assert figures["significance"]["base"]["difference"] == pytest.approx(
        figures["results"]["fine_tuned"]["rouge_l"] - figures["results"]["base"]["rouge_l"]
    )


def test_learning_curve(home, files, tiny_model_dir, tmp_path):
    config = TrainConfig(
        data=files["train"], base=str(tiny_model_dir), epochs=1, batch_size=4, lr=1e-2, seed=0, val_fraction=0
    )  # no split: each model's few-shot pool is its whole subset
    options = EvalOptions(shots=2, latency_samples=1)
    curve = learning_curve(files["train"], files["test"], [16, 8, 8], config, name="tc", options=options)

    assert curve["task"] == "classify" and curve["metric"] == "accuracy" and curve["higher_is_better"] is True
    assert [(p["n"], p["model"]) for p in curve["points"]] == [(8, "tc-n8:1"), (16, "tc-n16:1")]
    assert all(0 <= p["value"] <= 1 and p["train_seconds"] > 0 for p in curve["points"])
    assert all(0 <= p["interval"][0] <= p["interval"][1] <= 1 for p in curve["points"])
    # the larger size's paired difference from the smaller one, measured on the same test examples
    small_point, large_point = curve["points"]
    assert "gains" not in small_point and list(large_point["gains"]) == ["8"]
    gain = large_point["gains"]["8"]
    assert gain["difference"] == pytest.approx(large_point["value"] - small_point["value"])
    assert gain["low"] <= gain["difference"] <= gain["high"] and gain["n"] == 12 and gain["metric"] == "accuracy"
    assert set(curve["baselines"]) == {"base", "few_shot"} and curve["shots"] == 2
    # each point against the baselines, paired on the same test examples
    for point in curve["points"]:
        for system, baseline in curve["baselines"].items():
            versus = point["versus"][system]
            assert versus["difference"] == pytest.approx(point["value"] - baseline, abs=1e-6)
            assert versus["low"] <= versus["difference"] <= versus["high"] and versus["n"] == 12
    small, large = store.get("tc-n8:1"), store.get("tc-n16:1")
    assert small.manifest["data"]["train"]["rows"] == 8 and large.manifest["data"]["train"]["rows"] == 16
    assert small.manifest["labels"] == large.manifest["labels"] == ["bad", "good"]

    def pool(version) -> set[str]:
        return {example.text for example in load_pool(version.path / POOL_FILE)}

    train_texts = {json.loads(line)["text"] for line in files["train"].read_text().splitlines()}
    assert len(pool(small)) == 8 and len(pool(large)) == 16
    assert pool(small) < pool(large) <= train_texts  # nested subsets of the training file
    assert Counter(e.label for e in load_pool(small.path / POOL_FILE)) == {"bad": 4, "good": 4}

    with pytest.raises(TunesmithError) as raised:
        learning_curve(files["train"], files["test"], [8, 41], config, name="tc2", options=options)
    assert str(files["train"]) in str(raised.value) and "40 examples" in str(raised.value)
    assert "41" in str(raised.value)
    with pytest.raises(TunesmithError, match="positive numbers"):
        learning_curve(files["train"], files["test"], [0, 8], config, name="tc2", options=options)


def test_cli_curve_report(home, files, tiny_model_dir, tmp_path, capsys):
    out_html, out_json = tmp_path / "curve.html", tmp_path / "curve.json"
    code = main(
        [
            "curve",
            str(files["train"]),
            "--test",
            str(files["test"]),
            "--sizes",
            "4,8",
            "--base",
            str(tiny_model_dir),
            "--name",
            "cc",
            "--shots",
            "2",
            "--report",
            str(out_html),
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    page = out_html.read_text()
    assert "data:image/png;base64," in page and "http" not in page
    written = json.loads(out_json.read_text())
    assert [(p["n"], p["model"]) for p in written["points"]] == [(4, "cc-n4:1"), (8, "cc-n8:1")]
    printed = capsys.readouterr().out
    assert "gain on previous" in printed and curve_verdict(written) in " ".join(printed.split())
    assert store.get("cc-n8").version == 1
    assert main(["curve", str(files["train"]), "--test", str(files["test"]), "--sizes", "8,x"]) == 1
    assert "--sizes" in capsys.readouterr().err
