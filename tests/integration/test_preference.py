"""People's corrections to preference training, end to end on the embedded model:
``data from-corrections`` -> ``train`` (supervised) -> ``train --method dpo --base`` that model ->
``eval`` on held-out pairs, where DPO must beat both the base model and the supervised model it
started from on preference accuracy.

The data is the bundled example (examples/corrections, written for tunesmith): reviewed answers of
the base model to a bike shop's customer questions, corrected into the shop's voice, and 16 held-out
questions with the corrected answer as chosen and the base model's own answer as rejected.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from tunesmith.cli import main
from tunesmith.registry import store

EXAMPLES = REPO / "examples" / "corrections"

pytestmark = pytest.mark.model


@pytest.fixture
def fast_config(tmp_path):
    """No validation split: the closing comparison is `eval`'s job here, which keeps the test short."""
    path = tmp_path / "config.yaml"
    path.write_text("val_fraction: 0\n")
    return path


def test_corrections_to_sft_to_dpo_beats_base_and_parent(home, tmp_path, fast_config):
    out = tmp_path / "from-corrections"
    assert main(["data", "from-corrections", str(EXAMPLES / "corrections.jsonl"), "--out", str(out)]) == 0
    assert main(["train", str(out / "sft.jsonl"), "--name", "shop-sft", "-c", str(fast_config)]) == 0
    assert (
        main(
            [
                "train",
                str(out / "pairs.jsonl"),
                "--method",
                "dpo",
                "--base",
                "shop-sft",
                "--name",
                "shop-dpo",
                "-c",
                str(fast_config),
            ]
        )
        == 0
    )

    manifest = store.get("shop-dpo").manifest
    assert manifest["method"] == "dpo" and manifest["task"] == "preference"
    assert manifest["lineage"] == [{"ref": "shop-sft:1", "method": "lora", "task": "chat", "adapter": "lineage/0"}]
    assert manifest["config"]["base"] == "shop-sft:1" and manifest["base"]["name"] == "smollm2-135m"
    history = [json.loads(line) for line in (store.get("shop-dpo").path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "reward_margin", "reward_accuracy"} <= set(history[-1])

    figures_path = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "shop-dpo",
                "--data",
                str(EXAMPLES / "heldout-pairs.jsonl"),
                "--latency-samples",
                "0",
                "--json",
                str(figures_path),
            ]
        )
        == 0
    )
    figures = json.loads(figures_path.read_text())
    assert figures["task"] == "preference" and figures["n"] == 16
    accuracy = {name: result["preference_accuracy"] for name, result in figures["results"].items()}
    assert set(accuracy) == {"base", "few_shot", "parent", "fine_tuned"}
    assert accuracy["fine_tuned"] > accuracy["base"], accuracy
    assert accuracy["fine_tuned"] > accuracy["parent"], accuracy
    # (The 8-shot prompt, showing eight corrected answers, is a strong baseline here: `helped` says
    # whether DPO beat it too, and is not asserted either way.)

    # The supervised model on the same pairs: preference data evaluates chat models too.
    assert (
        main(
            [
                "eval",
                "shop-sft",
                "--data",
                str(EXAMPLES / "heldout-pairs.jsonl"),
                "--latency-samples",
                "0",
                "--baselines",
                "base",
                "--json",
                str(figures_path),
            ]
        )
        == 0
    )
    sft = json.loads(figures_path.read_text())["results"]
    assert sft["fine_tuned"]["preference_accuracy"] == pytest.approx(accuracy["parent"])
