"""The teacher as an evaluation system, against a scripted OpenAI-compatible server on loopback: the
same prompts as the student, invalid answers counted wrong, no made-up figures, latency and size; and
``helped`` does not ask the student to beat the teacher."""

from __future__ import annotations

import pytest
from test_distill_client import Scripted, completion  # the scripted server

from tunesmith.core.errors import TunesmithError
from tunesmith.data.labels import classify_prompt
from tunesmith.data.records import Example
from tunesmith.evaluation.compare import comparison_table, format_value, helped
from tunesmith.evaluation.measure import EvalOptions
from tunesmith.evaluation.teacher import measure_teacher, parse_parameters
from tunesmith.models.openai_client import Teacher

LABELS = ["bad", "good"]


@pytest.fixture
def server():
    answers = {"one": "good", "two": "Bad.", "three": "no idea", "four": "good"}

    def answer(body, n):
        text = body["messages"][-1]["content"]
        return completion(answers.get(text.rsplit("Text: ", 1)[-1], f"echo {text}"))

    scripted = Scripted(answer)
    yield scripted
    scripted.close()


def test_classify_counts_invalid_answers_wrong_and_fakes_nothing(server, tiny_tokenizer):
    examples = [
        Example(line=i + 1, text=text, label=label)
        for i, (text, label) in enumerate([("one", "good"), ("two", "bad"), ("three", "bad"), ("four", "bad")])
    ]
    teacher = Teacher(server.url, "teacher-1")
    measured = measure_teacher(
        teacher,
        tiny_tokenizer,
        "classify",
        examples,
        LABELS,
        "Be brief.",
        EvalOptions(latency_samples=3),
        parameters=1_700_000_000,
    )
    metrics = measured.metrics
    assert metrics["accuracy"] == 0.5 and metrics["invalid_answers"] == 1 and metrics["n"] == 4
    # bad: 1 of 3 found (recall 1/3, precision 1); good: 1 of 1 found, precision 1/2
    assert metrics["per_label"]["bad"]["recall"] == pytest.approx(1 / 3)
    assert metrics["per_label"]["good"]["precision"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics["confusion"] == [[1, 1], [0, 1]]  # the invalid answer is in no column
    assert "ece" not in metrics and "loss" not in metrics
    assert metrics["parameters"] == 1_700_000_000 and metrics["model"] == "teacher-1"
    assert metrics["prompt_tokens_mean"] == 12 and metrics["latency_requests"] == 3
    assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p90"] and metrics["tokens_per_s"] > 0
    assert measured.outputs == ["good", "bad", "no idea", "good"] and measured.scores == [1.0, 1.0, 0.0, 0.0]
    # the student's prompt: its system prompt and its instruction; 4 answers + 1 warm-up + 3 timed
    assert [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": classify_prompt("one", LABELS)},
    ] in [body["messages"] for _, _, body in server.requests]
    assert len(server.requests) == 8


def test_chat_is_scored_on_the_answers(server, tiny_tokenizer):
    examples = [
        Example(
            line=1,
            messages=[
                {"role": "user", "content": "hi", "weight": 1},
                {"role": "assistant", "content": "echo hi", "weight": 1},
            ],
        ),
        Example(
            line=2,
            messages=[
                {"role": "user", "content": "yo", "weight": 1},
                {"role": "assistant", "content": "something else", "weight": 1},
            ],
        ),
    ]
    measured = measure_teacher(
        Teacher(server.url, "teacher-1"), tiny_tokenizer, "chat", examples, None, None, EvalOptions(latency_samples=0)
    )
    assert measured.outputs == ["echo hi", "echo yo"] and measured.metrics["exact_match"] == 0.5
    assert 0 < measured.metrics["rouge_l"] < 1 and measured.metrics["parameters"] is None
    assert "latency_ms_p50" not in measured.metrics
    with pytest.raises(TunesmithError, match="not text"):
        measure_teacher(Teacher(server.url, "t"), tiny_tokenizer, "text", examples, None, None, EvalOptions())


def test_the_teacher_is_a_reference_not_a_baseline():
    results = {
        "base": {"accuracy": 0.5},
        "few_shot": {"accuracy": 0.6},
        "fine_tuned": {"accuracy": 0.8},
        "teacher": {"accuracy": 0.95, "parameters": None},
    }
    assert helped("classify", results) is True
    assert helped("classify", {**results, "few_shot": {"accuracy": 0.9}}) is False


def test_sizes_read_and_shown_like_people_write_them():
    assert [parse_parameters(t) for t in ("1.7B", "135M", "350k", "7000000000")] == [
        1_700_000_000,
        135_000_000,
        350_000,
        7_000_000_000,
    ]
    for bad in ("big", "-3M", "nan", "0"):
        with pytest.raises(TunesmithError, match="--teacher-parameters"):
            parse_parameters(bad)
    assert [format_value("parameters", v) for v in (28_000, 4_200_000, 135e6, 1.7e9)] == ["28K", "4.2M", "135M", "1.7B"]


def test_table_shows_size_beside_latency_and_a_dash_for_unknown():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(
        comparison_table(
            "classify",
            {
                "fine_tuned": {"accuracy": 0.8, "latency_ms_p50": 12.0, "parameters": 4_200_000},
                "teacher": {"accuracy": 0.9, "latency_ms_p50": 300.0, "parameters": None},
            },
            "t",
        )
    )
    text = console.export_text()
    assert "teacher" in text and "4.2M" in text
    assert [line for line in text.splitlines() if "parameters" in line][0].rstrip().rstrip("│").rstrip().endswith("–")
