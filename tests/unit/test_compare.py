"""Side by side: did fine-tuning help, which examples changed, and the comparison table."""

from __future__ import annotations

from rich.console import Console

from tunesmith.evaluation.compare import comparison_table, diffs, format_value, helped, per_example
from tunesmith.evaluation.measure import Measured


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


# helped --------------------------------------------------------------------------------------------


def test_helped_needs_to_beat_every_baseline():
    results = {"base": {"accuracy": 0.5}, "few_shot": {"accuracy": 0.7}, "fine_tuned": {"accuracy": 0.8}}
    assert helped("classify", results) is True
    assert helped("classify", results | {"few_shot": {"accuracy": 0.9}}) is False
    assert helped("classify", results | {"few_shot": {"accuracy": 0.8}}) is False  # a tie does not count
    assert helped("chat", {"base": {"rouge_l": 0.2}, "fine_tuned": {"rouge_l": 0.3}}) is True
    assert helped("completion", {"base": {"rouge_l": 0.4}, "fine_tuned": {"rouge_l": 0.3}}) is False


def test_helped_for_text_wants_lower_perplexity():
    assert helped("text", {"base": {"perplexity": 30.0}, "fine_tuned": {"perplexity": 12.0}}) is True
    assert helped("text", {"base": {"perplexity": 12.0}, "fine_tuned": {"perplexity": 30.0}}) is False


def test_helped_is_none_without_something_to_compare():
    assert helped("classify", {"fine_tuned": {"accuracy": 0.9}}) is None
    assert helped("classify", {"base": {"accuracy": 0.9}}) is None
    assert helped("classify", {"base": {"rouge_l": 0.1}, "fine_tuned": {"accuracy": 0.9}}) is None
    # a baseline without the primary metric is left out, the others still count
    assert (
        helped("classify", {"base": {"loss": 1.0}, "few_shot": {"accuracy": 0.5}, "fine_tuned": {"accuracy": 0.6}})
        is True
    )


# diffs ---------------------------------------------------------------------------------------------


def measured(scores: list[float], confidences: list[float] | None = None) -> Measured:
    outputs = [f"out{s}" for s in scores]
    return Measured({}, outputs, scores, confidences or [])


def build(systems: dict[str, Measured]) -> list[dict]:
    n = max(len(m.scores) for m in systems.values())
    return per_example(
        [f"input {i}" for i in range(n)], [f"ref {i}" for i in range(n)], [10 + i for i in range(n)], systems
    )


def test_per_example_records():
    systems = {"base": measured([1.0, 0.0]), "fine_tuned": measured([0.0, 1.0], [0.9, 0.6])}
    examples = build(systems)
    assert examples[0] == {
        "line": 10,
        "input": "input 0",
        "reference": "ref 0",
        "outputs": {"base": "out1.0", "fine_tuned": "out0.0"},
        "scores": {"base": 1.0, "fine_tuned": 0.0},
    }
    # a system without per-example outputs (raw text) adds nothing
    assert build({"base": Measured({}), "fine_tuned": measured([1.0])})[0]["scores"] == {"fine_tuned": 1.0}


def test_diffs_regressions_first_most_confident_first():
    #          example:  0    1    2    3    4    5
    base = measured([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    tuned = measured([0.0, 0.0, 1.0, 1.0, 1.0, 0.0], confidences=[0.55, 0.95, 0.60, 0.99, 0.90, 0.75])
    systems = {"base": base, "fine_tuned": tuned}
    found = diffs(build(systems), systems)

    assert [d["line"] - 10 for d in found] == [1, 5, 0, 4, 2]  # regressions by confidence, then improvements
    assert [d["kind"] for d in found] == ["regression"] * 3 + ["improvement"] * 2
    assert [d["delta"] for d in found] == [-1.0, -1.0, -1.0, 1.0, 1.0]
    assert all(d["against"] == "base" for d in found)
    assert [d["confidence"] for d in found] == [0.95, 0.75, 0.55, 0.90, 0.60]  # shown in the report
    assert 3 not in [d["line"] - 10 for d in found]  # equal scores: no entry
    assert found[0]["outputs"] == {"base": "out1.0", "fine_tuned": "out0.0"}


def test_diffs_larger_drops_first_and_every_baseline():
    base = measured([0.9, 0.5, 0.2, 0.4])
    few = measured([0.6, 0.5, 0.2, 0.4])
    tuned = measured([0.3, 0.4, 0.7, 0.4])  # no confidences (generation): ties keep their order
    systems = {"base": base, "few_shot": few, "fine_tuned": tuned}
    found = diffs(build(systems), systems)
    assert [(d["line"] - 10, d["against"], d["delta"]) for d in found] == [
        (0, "base", -0.6),
        (0, "few_shot", -0.3),
        (1, "base", -0.1),
        (1, "few_shot", -0.1),
        (2, "base", 0.5),
        (2, "few_shot", 0.5),
    ]
    # the kind follows the sign of the change; example 3 (equal everywhere) never appears
    assert all((d["delta"] < 0) == (d["kind"] == "regression") for d in found)
    assert all("confidence" not in d for d in found)  # nothing to show without label probabilities


def test_diffs_lower_is_better_and_nothing_to_compare():
    base = measured([2.0, 3.0])
    tuned = measured([3.0, 1.0])
    systems = {"base": base, "fine_tuned": tuned}
    found = diffs(build(systems), systems, higher_is_better=False)
    assert [(d["line"] - 10, d["kind"], d["delta"]) for d in found] == [
        (0, "regression", -1.0),
        (1, "improvement", 2.0),
    ]
    assert diffs(build({"base": base}), {"base": base}) == []
    assert diffs([], {"base": base, "fine_tuned": Measured({})}) == []


# the table -----------------------------------------------------------------------------------------

RESULTS = {
    "base": {"accuracy": 0.5, "macro_f1": 0.4, "loss": 2.5, "prompt_tokens_mean": 40.0, "latency_ms_p50": 12.3},
    "few_shot": {
        "accuracy": 0.75,
        "macro_f1": 0.7,
        "loss": 1.5,
        "prompt_tokens_mean": 300.0,
        "shots": 4,
        "latency_ms_p50": 40.0,
    },
    "fine_tuned": {
        "accuracy": 0.875,
        "macro_f1": 0.8,
        "loss": 0.5,
        "prompt_tokens_mean": 40.0,
        "per_label": {"a": {}},
        "confusion": [[1]],
    },
}


def test_comparison_table_has_the_systems_as_columns():
    table = comparison_table("classify", RESULTS, "tiny on test.jsonl (8 examples)")
    assert [column.header for column in table.columns] == [
        "metric",
        "base (zero-shot)",
        "base + 4-shot prompt",
        "fine-tuned",
    ]
    text = render(table)
    assert "tiny on test.jsonl (8 examples)" in text
    header = next(line for line in text.splitlines() if "metric" in line)
    assert header.index("base (zero-shot)") < header.index("base + 4-shot prompt") < header.index("fine-tuned")
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in text.splitlines()
        if line.count("│") == 5
    }
    assert rows["accuracy *"] == ["50.0%", "75.0%", "87.5%"]  # the primary metric is starred
    assert rows["macro_f1"] == ["40.0%", "70.0%", "80.0%"]
    assert rows["loss"] == ["2.500", "1.500", "0.500"]
    assert rows["prompt_tokens_mean"] == ["40.0", "300.0", "40.0"]
    assert rows["latency_ms_p50"] == ["12 ms", "40 ms", "–"]  # missing for one system
    assert list(rows)[:2] == ["accuracy *", "macro_f1"]  # rows in the fixed metric order
    # metrics no system has are left out; dicts (per_label, confusion) are not table rows
    for absent in ("rouge_l", "perplexity", "ece", "per_label", "confusion", "shots"):
        assert absent not in rows


def test_comparison_table_marks_the_best_value():
    columns = [list(column.cells) for column in comparison_table("classify", RESULTS, "t").columns]
    accuracy, loss, latency = (columns[0].index(name) for name in ("accuracy *", "loss", "latency_ms_p50"))
    assert [cells[accuracy] for cells in columns[1:]] == ["50.0%", "75.0%", "[bold]87.5%[/]"]  # higher is better
    assert [cells[loss] for cells in columns[1:]] == ["2.500", "1.500", "[bold]0.500[/]"]  # lower is better
    assert [cells[latency] for cells in columns[1:]] == ["[bold]12 ms[/]", "40 ms", "–"]
    # one system alone is not bold
    single = [list(column.cells) for column in comparison_table("chat", {"fine_tuned": {"rouge_l": 0.3}}, "t").columns]
    assert single == [["rouge_l *"], ["30.0%"]]


def test_format_value():
    assert format_value("accuracy", 0.8125) == "81.2%"
    assert format_value("chrf", 41.234) == "41.2"
    assert format_value("latency_ms_p90", 12.6) == "13 ms"
    assert format_value("perplexity", 3.14159) == "3.14"
    assert format_value("loss", 0.12345) == "0.123"
    assert format_value("tokens_per_s", 99.96) == "100.0"
