"""The typed config: validation, YAML + overrides, and the documented data-driven defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tunesmith.core.config import TrainConfig, check_name, load_config
from tunesmith.core.errors import TunesmithError
from tunesmith.data.check import default_max_length
from tunesmith.training.defaults import explain, resolve


def yaml_file(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    path = yaml_file(tmp_path, "data: train.jsonl\nlearning_rate: 0.1\n")
    with pytest.raises(TunesmithError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "learning_rate: unknown key" in message


def test_yaml_must_be_a_mapping(tmp_path):
    with pytest.raises(TunesmithError, match="expected a mapping"):
        load_config(yaml_file(tmp_path, "- data\n- train.jsonl\n"))


def test_yaml_errors_and_missing_file(tmp_path):
    with pytest.raises(TunesmithError, match="not valid YAML"):
        load_config(yaml_file(tmp_path, "data: [unclosed\n"))
    with pytest.raises(TunesmithError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_empty_yaml_with_overrides(tmp_path):
    config = load_config(yaml_file(tmp_path, ""), data=Path("x.jsonl"))
    assert config.data == Path("x.jsonl") and config.batch_size is None  # auto: chosen from the data


def test_missing_data_is_an_error():
    with pytest.raises(TunesmithError, match="data: Field required"):
        load_config()


def test_batch_size_must_be_a_multiple_of_micro_batch_size():
    with pytest.raises(TunesmithError, match=r"batch_size \(6\) must be a multiple of micro_batch_size \(4\)"):
        load_config(data="x.jsonl", batch_size=6, micro_batch_size=4)
    assert load_config(data="x.jsonl", batch_size=8, micro_batch_size=2).micro_batch_size == 2


def test_lora_settings_with_full_method_are_rejected():
    with pytest.raises(TunesmithError, match="lora_rank/lora_alpha only apply to method 'lora'"):
        load_config(data="x.jsonl", method="full", lora_rank=8)
    with pytest.raises(TunesmithError, match="only apply to method 'lora'"):
        load_config(data="x.jsonl", method="full", lora_alpha=16)
    assert load_config(data="x.jsonl", method="lora", lora_rank=8).lora_rank == 8


def test_labels_only_with_classify():
    with pytest.raises(TunesmithError, match="labels only apply to the classify task, not 'chat'"):
        load_config(data="x.jsonl", task="chat", labels=["a", "b"])
    assert load_config(data="x.jsonl", task="classify", labels=["a", "b"]).labels == ["a", "b"]
    assert load_config(data="x.jsonl", labels=["a", "b"]).task == "auto"


@pytest.mark.parametrize(
    "labels,message", [(["a"], "at least two labels"), (["a", "a"], "unique"), (["a", " "], "must not be empty")]
)
def test_bad_label_sets(labels, message):
    with pytest.raises(TunesmithError, match=message):
        load_config(data="x.jsonl", labels=labels)


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "..", "a\\b", "x" * 65, "-dash", "a..b"])
def test_invalid_names(name):
    with pytest.raises(TunesmithError, match="invalid model name"):
        load_config(data="x.jsonl", name=name)
    with pytest.raises(ValueError):
        check_name(name)


@pytest.mark.parametrize("name", ["reviews", "my-model_1.2", "A", "x" * 64])
def test_valid_names(name):
    assert load_config(data="x.jsonl", name=name).name == name


def test_name_with_trailing_newline_is_invalid():
    with pytest.raises(ValueError):
        check_name("abc\n")


def test_range_checks():
    for bad in ({"epochs": 0}, {"lr": 1.5}, {"max_length": 8}, {"batch_size": 0}, {"val_fraction": 0.9}):
        with pytest.raises(TunesmithError):
            load_config(data="x.jsonl", **bad)


def test_cli_overrides_beat_yaml_and_none_is_ignored(tmp_path):
    path = yaml_file(tmp_path, "data: from-yaml.jsonl\nepochs: 5\nlr: 0.001\nname: yaml-name\nseed: 7\n")
    config = load_config(path, data=Path("from-cli.jsonl"), epochs=2, lr=None, name=None, seed=None, batch_size=None)
    assert config.data == Path("from-cli.jsonl")
    assert config.epochs == 2
    assert config.lr == 0.001 and config.name == "yaml-name" and config.seed == 7
    assert config.batch_size is None


def test_assignment_is_validated():
    config = TrainConfig(data="x.jsonl")
    with pytest.raises(ValidationError):
        config.name = "../escape"


def test_yaml_round_trip(tmp_path):
    config = load_config(data="x.jsonl", name="m", epochs=3, labels=["a", "b"], lora_targets=["q_proj"])
    assert load_config(yaml_file(tmp_path, config.to_yaml())) == config


# --------------------------------------------------------------------------- defaults.resolve


@pytest.mark.parametrize(
    "n,batch,epochs,lr,rank",
    [
        # raw text is read once; its rows are all targets (511 of 512), so the batch halves while the run is
        # short of 64 optimizer steps, and at batch 1 the epochs rise instead
        (22, 1, 3, 3e-4, 16),
        (45, 1, 2, 3e-4, 16),
        (90, 1, 1, 3e-4, 16),
        (180, 2, 1, 3e-4, 16),
        (256, 4, 1, 3e-4, 16),
        (400, 4, 1, 3e-4, 16),
        (511, 8, 1, 3e-4, 16),
        (999, 8, 1, 3e-4, 16),
        (1000, 8, 1, 3e-4, 16),
        (9999, 8, 1, 3e-4, 16),
        (10000, 8, 1, 3e-4, 32),
        (50000, 8, 1, 3e-4, 32),
    ],
)
def test_resolve_lora_defaults(n, batch, epochs, lr, rank):
    resolved = resolve(TrainConfig(data="x.jsonl"), n, [512] * 10, None, "text", targets_per_row=511)
    assert (resolved.batch_size, resolved.epochs, resolved.lr, resolved.lora_rank) == (batch, epochs, lr, rank)
    assert resolved.lora_alpha == 2 * rank
    assert resolved.task == "text"
    assert resolved.micro_batch_size == resolved.batch_size
    steps_a_pass = -(-n // batch)
    assert steps_a_pass * epochs >= 64
    assert batch == 8 or -(-n // (2 * batch)) * epochs < 64  # twice the batch would have made too few steps


@pytest.mark.parametrize(
    "n,targets,batch,epochs",
    [
        (45, 2, 8, 10),  # labels: batch 8 kept, epochs raised (6 steps a pass; at most 10 passes)
        (90, 2, 8, 6),  # 12 a pass
        (180, 2, 8, 3),  # 23 a pass: the usual 3 passes make 69
        (360, 2, 8, 2),
        (1500, 2, 8, 1),
        (45, 40, 8, 10),  # short answers: 4 x 40 = 160 target tokens is below the 256 a step keeps
        (45, 70, 4, 6),  # 4 x 70 = 280: the batch halves once, 12 steps a pass
        (90, 200, 4, 3),  # long answers: halved once, 23 steps a pass for 3 passes make 69
    ],
)
def test_resolve_keeps_enough_target_tokens_a_step(n, targets, batch, epochs):
    resolved = resolve(TrainConfig(data="x.jsonl"), n, [300], None, "chat", targets_per_row=targets)
    assert (resolved.batch_size, resolved.epochs) == (batch, epochs)


def test_resolve_auto_batch_respects_a_given_micro_batch():
    assert resolve(TrainConfig(data="x.jsonl", micro_batch_size=4), 45, [100], None, "chat").batch_size == 4
    assert resolve(TrainConfig(data="x.jsonl", micro_batch_size=3), 500, [100], None, "chat").batch_size == 9


def test_resolve_given_epochs_or_batch_shape_the_other():
    assert resolve(TrainConfig(data="x.jsonl", epochs=1), 400, [100], None, "chat").batch_size == 4
    assert resolve(TrainConfig(data="x.jsonl", batch_size=8), 45, [100], None, "chat").epochs == 10
    explicit = resolve(TrainConfig(data="x.jsonl", batch_size=8, epochs=1), 45, [100], None, "chat")
    assert (explicit.batch_size, explicit.epochs) == (8, 1)


def test_resolve_tiny_data_epochs_are_capped():
    resolved = resolve(TrainConfig(data="x.jsonl"), 3, [512], None, "text", targets_per_row=511)
    assert (resolved.batch_size, resolved.epochs) == (1, 10)


@pytest.mark.parametrize("n,lr", [(10, 3e-5), (999, 3e-5), (1000, 2e-5), (5000, 2e-5)])
def test_resolve_full_fine_tuning_defaults(n, lr):
    resolved = resolve(TrainConfig(data="x.jsonl", method="full"), n, [100], None, "completion")
    assert resolved.lr == lr
    assert resolved.lora_rank is None and resolved.lora_alpha is None


def test_resolve_keeps_explicit_values():
    config = TrainConfig(
        data="x.jsonl", epochs=7, lr=0.01, lora_rank=4, lora_alpha=3.0, max_length=100, batch_size=8, micro_batch_size=2
    )
    resolved = resolve(config, 5000, [3000] * 10, 50, "chat", labels=None)
    assert (resolved.epochs, resolved.lr, resolved.lora_rank, resolved.lora_alpha) == (7, 0.01, 4, 3.0)
    assert resolved.max_length == 100 and resolved.micro_batch_size == 2
    assert config.epochs == 7 and config.task == "auto"  # the input is not modified


def test_resolve_rank_given_alpha_defaults_to_twice_it():
    assert resolve(TrainConfig(data="x.jsonl", lora_rank=12), 10, [100], None, "chat").lora_alpha == 24


def test_resolve_sets_labels():
    resolved = resolve(TrainConfig(data="x.jsonl"), 10, [100], None, "classify", labels=["neg", "pos"])
    assert resolved.labels == ["neg", "pos"] and resolved.task == "classify"


def test_lr_multiplier_scales_only_the_automatic_learning_rate():
    assert resolve(TrainConfig(data="x.jsonl", lr_multiplier=2), 100, [100], None, "chat").lr == pytest.approx(6e-4)
    assert resolve(TrainConfig(data="x.jsonl", lr=0.01, lr_multiplier=2), 100, [100], None, "chat").lr == 0.01
    resolved = resolve(TrainConfig(data="x.jsonl", lr_multiplier=0.5), 100, [100], None, "chat")
    assert resolve(resolved, 100, [100], None, "chat").lr == resolved.lr  # resolving again does not scale twice
    for bad in (0, -1, 101):
        with pytest.raises(ValidationError):
            TrainConfig(data="x.jsonl", lr_multiplier=bad)


@pytest.mark.parametrize(
    "n,batch_size,epochs,expected",
    [
        (16, 8, 1, 1),  # 2 steps: a checkpoint after each
        (80, 8, 2, 4),  # 20 steps: about 5 checkpoints
        (800, 8, 3, 20),  # 300 steps: never more than 20 steps apart
    ],
)
def test_checkpoint_every_auto(n, batch_size, epochs, expected):
    config = TrainConfig(data="x.jsonl", batch_size=batch_size, epochs=epochs)
    assert resolve(config, n, [100], None, "chat").checkpoint_every == expected
    explicit = config.model_copy(update={"checkpoint_every": 7})
    assert resolve(explicit, n, [100], None, "chat").checkpoint_every == 7


@pytest.mark.parametrize(
    "lengths,model_max,expected",
    [
        ([10] * 50, None, 64),  # floor of 64
        ([100] * 50, None, 128),  # rounded up to a multiple of 32
        ([96] * 50, None, 96),
        ([100] * 99 + [5000], None, 128),  # 99th percentile: one outlier in 100 is ignored
        ([100] * 98 + [5000] * 2, None, 2048),  # two are not; capped at 2048
        ([300] * 10, 200, 200),  # never above the model's context
        ([], None, 512),
    ],
)
def test_default_max_length_chat(lengths, model_max, expected):
    assert default_max_length(lengths, "chat", model_max) == expected
    if lengths:
        assert resolve(TrainConfig(data="x.jsonl"), 10, lengths, model_max, "chat").max_length == expected


@pytest.mark.parametrize("lengths,expected", [([100, 100], 224), ([1000, 1000], 512), ([5], 64)])
def test_default_max_length_text(lengths, expected):
    assert default_max_length(lengths, "text", None) == expected


def test_precision_auto_resolves_from_the_hardware(monkeypatch):
    from tunesmith.training import defaults

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(defaults, "native_bf16", lambda native=native: native)
        assert resolve(TrainConfig(data="x.jsonl"), 100, [100] * 10, None, "chat").precision == expected
    # an explicit choice is kept whatever the hardware
    assert resolve(TrainConfig(data="x.jsonl", precision="fp32"), 100, [100] * 10, None, "chat").precision == "fp32"


def test_native_bf16_on_a_cpu_means_amx_or_avx512_bf16(monkeypatch, tmp_path):
    import torch

    from tunesmith.training import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for amx, avx512_bf16, unit in ((True, True, "AMX"), (False, True, "AVX512-BF16"), (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert hardware.cpu_bf16_unit() == unit and hardware.native_bf16() is (unit is not None)
    # a torch without the checks: the CPU's flags (an AVX-512 CPU without bf16 stays fp32)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "Path", lambda _: cpuinfo)
    for flags, unit in (
        ("fpu avx512f avx512_bf16", "AVX512-BF16"),
        ("avx512f amx_bf16 amx_tile", "AMX"),
        ("fpu avx512f avx512_vnni", None),
    ):
        cpuinfo.write_text(f"flags\t\t: {flags}\n")
        assert hardware.cpu_bf16_unit() == unit


def test_precision_rejects_unknown_values():
    with pytest.raises(ValidationError):
        TrainConfig(data="x.jsonl", precision="fp16")


def test_inference_precision_is_bf16_only_on_a_gpu_that_has_it(monkeypatch):
    # (an AMX CPU, where training's auto is bf16, does not make inference bf16: only torch.cuda is asked)
    import torch

    from tunesmith.core.errors import TunesmithError
    from tunesmith.models import load

    for cuda, bf16, expected in (
        (True, True, torch.bfloat16),
        (True, False, torch.float32),
        (False, False, torch.float32),
    ):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert load.precision_dtype("auto") == load.precision_dtype() == expected
        assert load.precision_dtype("fp32") == torch.float32 and load.precision_dtype("bf16") == torch.bfloat16
    with pytest.raises(TunesmithError, match="unknown precision 'fp16'"):
        load.precision_dtype("fp16")


def test_explain_says_why_each_auto_setting_has_its_value():
    config = TrainConfig(data="x.jsonl", lr=1e-4)
    resolved = resolve(config, 90, [512], None, "text", targets_per_row=511)
    why = explain(config, resolved, 90)
    assert set(why) == {"batch_size", "epochs", "lora_rank"}  # lr was given
    assert why["batch_size"] == (
        "1, down from 8, so that 90 training blocks make 90 optimizer steps (at least 64 where a step keeps "
        "256 target tokens: small data is short of steps, not of passes)"
    )
    assert why["epochs"] == "1: 90 training blocks (raw text is read once)"
    labels = resolve(config, 45, [60], None, "classify", targets_per_row=2)
    assert explain(config, labels, 45)["batch_size"] == (
        "8: the run makes 60 optimizer steps; a smaller batch would hold under 256 target tokens a step"
    )
    assert explain(config, labels, 45)["epochs"] == (
        "10: up from 3, so that a run on 45 training rows makes 60 optimizer steps "
        "(at most 10 epochs; early stopping guards against overfitting)"
    )


def test_explain_names_the_size_only_where_the_rate_depends_on_it():
    lora = TrainConfig(data="x.jsonl", lr_multiplier=0.5)
    assert (
        explain(lora, resolve(lora, 5000, [60], None, "chat"), 5000)["lr"] == "0.00015: lora, times lr_multiplier 0.5"
    )
    full = TrainConfig(data="x.jsonl", method="full")
    assert explain(full, resolve(full, 5000, [60], None, "chat"), 5000)["lr"] == "2e-05: full with at least 1000 rows"


def test_epochs_are_raised_only_where_early_stopping_guards_them():
    tiny = {"n_train": 45, "lengths": [60], "model_max_length": None, "targets_per_row": 2}
    assert resolve(TrainConfig(data="x.jsonl"), task="chat", **tiny).epochs == 10
    assert resolve(TrainConfig(data="x.jsonl", val_fraction=0), task="chat", has_validation=False, **tiny).epochs == 3
    assert resolve(TrainConfig(data="x.jsonl", method="dpo"), task="preference", **tiny).epochs == 3
