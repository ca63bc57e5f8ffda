"""The registry (numbered immutable versions) and crash-safe training checkpoints."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tunesmith.cli import main
from tunesmith.core import paths
from tunesmith.core.errors import TunesmithError
from tunesmith.models.load import add_lora, load_model
from tunesmith.registry import store
from tunesmith.training import checkpoint as ckpt


def staged(task: str = "chat", base: str = "tiny", method: str = "lora", lineage: list | None = None):
    folder = store.staging_dir()
    manifest = {
        "name": None,
        "version": None,
        "task": task,
        "method": method,
        "base": {"name": base},
        "created": "2024-01-01T00:00:00+00:00",
        "metrics": {},
        "lineage": lineage or [],
    }
    (folder / store.MANIFEST).write_text(json.dumps(manifest))
    (folder / "weights.bin").write_bytes(b"\x00" * 16)
    return folder


# --------------------------------------------------------------------------- registry


def test_staging_dir_is_hidden_inside_the_registry(home):
    folder = store.staging_dir()
    assert folder.parent == paths.registry_dir() == home / "registry"
    assert folder.name.startswith(".") and folder.is_dir()


def test_publish_numbers_versions_and_resolves_refs(home):
    first_stage = staged(task="chat")
    first = store.publish("demo", first_stage)
    second = store.publish("demo", staged(task="completion"))
    assert (first.version, second.version) == (1, 2)
    assert not first_stage.exists()  # moved, not copied
    assert first.path == home / "registry" / "demo" / "1"
    assert (second.path / "weights.bin").is_file()
    assert first.manifest["name"] == "demo" and first.manifest["version"] == 1
    assert second.manifest["version"] == 2

    assert store.get("demo").version == 2  # NAME -> latest
    assert store.get("demo:1").version == 1  # NAME:VERSION pinned
    assert store.get("demo:1").manifest["task"] == "chat"
    assert [v.ref for v in store.versions("demo")] == ["demo:1", "demo:2"]
    summary = store.get("demo").summary()
    assert summary["ref"] == "demo:2" and summary["base"] == "tiny" and summary["task"] == "completion"


def test_versions_of_several_names_are_listed(home):
    store.publish("b-model", staged())
    store.publish("a-model", staged())
    store.publish("b-model", staged())
    assert [v.ref for v in store.list_models()] == ["a-model:1", "b-model:1", "b-model:2"]


def test_unknown_name_and_version(home):
    with pytest.raises(TunesmithError, match="registry is empty"):
        store.get("nothing")
    store.publish("demo", staged())
    with pytest.raises(TunesmithError, match="no model named 'other'.*models: demo"):
        store.get("other")
    with pytest.raises(TunesmithError, match="demo has no version 7; versions: 1"):
        store.get("demo:7")


@pytest.mark.parametrize("ref", ["../etc", ".hidden", "a/b", "demo:x", "demo:-1", "demo:1.0", ""])
def test_invalid_refs(home, ref):
    with pytest.raises(TunesmithError):
        store.get(ref)
    with pytest.raises(TunesmithError):
        store.remove(ref)


def test_parse_ref():
    assert store.parse_ref("demo") == ("demo", None)
    assert store.parse_ref("demo:12") == ("demo", 12)


def test_remove_one_version_then_all(home):
    for _ in range(3):
        store.publish("demo", staged())
    removed = store.remove("demo:2")
    assert [v.ref for v in removed] == ["demo:2"]
    assert [v.version for v in store.versions("demo")] == [1, 3]
    assert store.get("demo").version == 3
    assert store.publish("demo", staged()).version == 4  # after the latest, not in the gap

    removed = store.remove("demo")
    assert sorted(v.version for v in removed) == [1, 3, 4]
    assert store.versions("demo") == [] and store.list_models() == []
    # Only tombstones stay, so numbers are not reused when the name comes back.
    assert not [p for p in (home / "registry" / "demo").iterdir() if not p.name.startswith(".removed-")]
    assert store.publish("demo", staged()).version == 5
    store.remove("demo")
    with pytest.raises(TunesmithError, match="no model named 'demo'"):
        store.remove("demo")


def test_removed_version_number_is_not_reused(home):
    store.publish("demo", staged())
    store.publish("demo", staged(task="chat"))
    store.remove("demo:2")
    assert store.publish("demo", staged(task="completion")).version == 3


def test_a_full_fine_tune_others_start_from_is_kept_unless_forced(home, capsys):
    store.publish("full", staged(method="full"))
    store.publish("sft", staged())  # a LoRA model: its children carry a copy of its adapter
    on_full = [{"ref": "full:1", "method": "full", "task": "chat", "adapter": None}]
    on_sft = [{"ref": "sft:1", "method": "lora", "task": "chat", "adapter": "lineage/0"}]
    store.publish("child", staged(lineage=on_full))
    store.publish(
        "grandchild",
        staged(lineage=[*on_full, {"ref": "child:1", "method": "lora", "task": "chat", "adapter": "lineage/1"}]),
    )
    store.publish("dpo", staged(lineage=on_sft))
    with pytest.raises(
        TunesmithError,
        match=r"nothing removed: full:1 is the starting point of child:1, "
        r"grandchild:1 .*--force",
    ):
        store.remove("full")
    assert main(["models", "rm", "full:1"]) == 1
    assert "child:1, grandchild:1" in capsys.readouterr().err
    assert [v.ref for v in store.list_models()] == ["child:1", "dpo:1", "full:1", "grandchild:1", "sft:1"]
    assert [v.ref for v in store.remove("sft")] == ["sft:1"]  # its adapter lives on in dpo:1
    assert [v.ref for v in store.remove("child")] == ["child:1"]  # built on full:1, not a full fine-tune itself
    store.remove("grandchild")
    assert [v.ref for v in store.remove("full")] == ["full:1"]  # nothing left that needs it
    store.publish("full", staged(method="full"))
    store.publish("child", staged(lineage=[{"ref": "full:2", "method": "full", "task": "chat", "adapter": None}]))
    assert main(["models", "rm", "full", "--force"]) == 0
    assert store.versions("full") == [] and [v.ref for v in store.list_models()] == ["child:2", "dpo:1"]


def test_remove_unknown_version(home):
    store.publish("demo", staged())
    with pytest.raises(TunesmithError, match="no version 5"):
        store.remove("demo:5")
    assert [v.version for v in store.versions("demo")] == [1]


def test_unpublished_staging_folder_is_invisible(home):
    leftover = staged()  # a run that crashed before the rename
    assert leftover.is_dir()
    assert store.list_models() == []
    with pytest.raises(TunesmithError):
        store.get(leftover.name)
    store.publish("demo", staged())
    assert [v.ref for v in store.list_models()] == ["demo:1"]
    assert leftover.is_dir()


def test_folders_without_manifest_are_not_versions(home):
    store.publish("demo", staged())
    (home / "registry" / "demo" / "2").mkdir()  # half-written by hand, no manifest
    (home / "registry" / "demo" / ".trash-3-99").mkdir()
    assert [v.version for v in store.versions("demo")] == [1]
    assert store.get("demo").version == 1


# --------------------------------------------------------------------------- checkpoints


def lora_model(tiny_model_dir, seed: int):
    torch.manual_seed(seed)
    return add_lora(load_model(tiny_model_dir, dtype=torch.float32), 4, 8, 0.0, "all-linear")


def optimizer_and_scheduler(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return optimizer, scheduler


def one_step(model, optimizer, scheduler, ids):
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def test_checkpoint_round_trip(tmp_path, tiny_model_dir, tiny_tokenizer):
    run_dir = tmp_path / "run"
    ids = torch.tensor([tiny_tokenizer("The quick brown fox jumps.", add_special_tokens=False)["input_ids"]])
    model = lora_model(tiny_model_dir, seed=0)
    optimizer, scheduler = optimizer_and_scheduler(model)
    assert ckpt.latest_checkpoint(run_dir) is None

    for step in (1, 2, 3):
        one_step(model, optimizer, scheduler, ids)
        best = {name: value.clone() * 0 + step for name, value in ckpt.trainable_state(model).items()}
        loop_state = {"global_step": step, "epoch": 0, "history": [{"step": step}]}
        folder = ckpt.save_checkpoint(run_dir, step, model, optimizer, scheduler, loop_state, best)
    saved_weights = {n: v.clone() for n, v in ckpt.trainable_state(model).items()}
    saved_optimizer = optimizer.state_dict()
    saved_exp_avg = {k: v["exp_avg"].clone() for k, v in saved_optimizer["state"].items()}
    expected_draws = (torch.rand(4), random.random(), np.random.rand())

    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000002", "step-000003"]  # KEEP = 2
    assert ckpt.KEEP == 2
    assert folder.name == "step-000003"
    assert (checkpoints / "LATEST").read_text().strip() == "step-000003"
    # a crash mid-save leaves a hidden temporary folder behind: it is ignored
    junk = checkpoints / ".step-000004.tmp-12345"
    junk.mkdir()
    (junk / "trainable.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(run_dir) == checkpoints / "step-000003"

    # load into a different model (other init, fresh optimizer) after the RNG moved on
    other = lora_model(tiny_model_dir, seed=123)
    other_optimizer, other_scheduler = optimizer_and_scheduler(other)
    one_step(other, other_optimizer, other_scheduler, ids)
    torch.rand(10), random.random(), np.random.rand(3)
    before = ckpt.trainable_state(other)
    assert any(not torch.equal(before[n], saved_weights[n]) for n in saved_weights)

    state, best = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), other, other_optimizer, other_scheduler)
    assert state == {"global_step": 3, "epoch": 0, "history": [{"step": 3}]}
    restored = ckpt.trainable_state(other)
    assert restored.keys() == saved_weights.keys()
    for name, value in saved_weights.items():
        assert torch.equal(restored[name], value), name
    assert best is not None and all(torch.all(v == 3) for v in best.values())
    assert other_scheduler.last_epoch == scheduler.last_epoch == 3
    assert other_scheduler.get_last_lr() == scheduler.get_last_lr()
    loaded = other_optimizer.state_dict()["state"]
    assert loaded.keys() == saved_exp_avg.keys()
    for key, value in saved_exp_avg.items():
        assert torch.equal(loaded[key]["exp_avg"], value)
        assert float(loaded[key]["step"]) == 3
    draws = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0])
    assert draws[1:] == expected_draws[1:]


def test_save_without_best_and_resave_same_step(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    model = lora_model(tiny_model_dir, seed=0)
    optimizer, scheduler = optimizer_and_scheduler(model)
    first = ckpt.save_checkpoint(run_dir, 5, model, optimizer, scheduler, {"global_step": 5}, None)
    assert not (first / "best.safetensors").exists()
    assert ckpt.load_checkpoint(first, model, optimizer, scheduler)[1] is None
    stamp = (first / "state.pt").stat().st_mtime_ns
    again = ckpt.save_checkpoint(run_dir, 5, model, optimizer, scheduler, {"global_step": 5}, None)
    assert again == first and (first / "state.pt").stat().st_mtime_ns == stamp


def test_latest_pointing_at_incomplete_folder_is_none(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-000001").mkdir(parents=True)
    (run_dir / "checkpoints" / "LATEST").write_text("step-000001\n")
    assert ckpt.latest_checkpoint(run_dir) is None
