"""Classification never loses its label to truncation: a text too long for max_length is shortened inside
the prompt (instruction and label kept), the same way for training rows, the data check and evaluation."""

from __future__ import annotations

import pytest

from tunesmith.data.check import check_data
from tunesmith.data.labels import SHORTENED, classify_prompt
from tunesmith.data.prepare import build_rows, split
from tunesmith.data.records import Example
from tunesmith.data.render import IGNORE, fit_classify_text, render_example
from tunesmith.evaluation import measure as measure_module
from tunesmith.evaluation.measure import EvalOptions, measure
from tunesmith.evaluation.systems import System

LABELS = ["negative", "positive"]
LONG = "The quick brown fox jumps over the lazy dog, and the staff were kind. " * 12
MAX_LENGTH = 96


def target_text(tokenizer, rendered) -> str:
    return tokenizer.decode([label for label in rendered.labels if label != IGNORE])


def test_a_long_text_is_shortened_and_keeps_its_label(tiny_tokenizer):
    example = Example(line=1, text=LONG, label="positive")
    assert len(render_example(tiny_tokenizer, example, LABELS).input_ids) > MAX_LENGTH  # would be cut
    fitted = fit_classify_text(tiny_tokenizer, example, LABELS, None, MAX_LENGTH)
    assert fitted.text != LONG and fitted.text.endswith(SHORTENED)
    assert LONG.startswith(fitted.text.removesuffix(SHORTENED))  # the beginning of the text, cut once
    rendered = render_example(tiny_tokenizer, fitted, LABELS)
    assert len(rendered.input_ids) <= MAX_LENGTH
    assert rendered.truncated(MAX_LENGTH).input_ids == rendered.input_ids  # nothing left to cut
    assert target_text(tiny_tokenizer, rendered) == "positive<|im_end|>\n"  # the label and the end of the turn
    prompt = tiny_tokenizer.decode(rendered.input_ids)
    assert classify_prompt("", LABELS) in prompt  # the instruction whole
    # the room went to the text: a few tokens at most are left over
    assert len(rendered.input_ids) >= MAX_LENGTH - 4


def test_the_shortened_text_is_the_same_for_every_label(tiny_tokenizer):
    # Evaluation scores each candidate label after the same prompt: the room is that of the longest label.
    labels = ["no", "yes, definitely"]
    fitted = [fit_classify_text(tiny_tokenizer, Example(1, text=LONG, label=lab), labels, None, 120) for lab in labels]
    assert fitted[0].text == fitted[1].text != LONG
    for example in fitted:
        assert len(render_example(tiny_tokenizer, example, labels).input_ids) <= 120


def test_the_system_prompt_counts_against_the_room(tiny_tokenizer):
    example = Example(line=1, text=LONG, label="negative")
    plain = fit_classify_text(tiny_tokenizer, example, LABELS, None, MAX_LENGTH)
    with_system = fit_classify_text(tiny_tokenizer, example, LABELS, "Answer like a careful film critic.", MAX_LENGTH)
    assert len(with_system.text) < len(plain.text)
    rendered = render_example(tiny_tokenizer, with_system, LABELS, "Answer like a careful film critic.")
    assert len(rendered.input_ids) <= MAX_LENGTH
    assert target_text(tiny_tokenizer, rendered) == "negative<|im_end|>\n"


def test_a_text_that_fits_is_left_alone(tiny_tokenizer):
    example = Example(line=1, text="the soup was great", label="positive")
    assert fit_classify_text(tiny_tokenizer, example, LABELS, None, MAX_LENGTH) is example
    chat = Example(line=1, messages=[{"role": "user", "content": LONG}, {"role": "assistant", "content": "ok"}])
    assert fit_classify_text(tiny_tokenizer, chat, LABELS, None, MAX_LENGTH) is chat


def test_no_room_even_for_the_instruction_leaves_just_the_mark(tiny_tokenizer):
    fitted = fit_classify_text(tiny_tokenizer, Example(line=1, text=LONG, label="positive"), LABELS, None, 20)
    assert fitted.text == SHORTENED  # the row is then cut as before, and the check says so


def classify_rows(n_long: tuple[int, ...]) -> list[dict]:
    return [{"text": LONG if i in n_long else f"the soup was great {i}", "label": LABELS[i % 2]} for i in range(12)]


def test_the_data_check_names_the_shortened_lines(write_jsonl, tiny_tokenizer):
    path = write_jsonl("long.jsonl", classify_rows((2, 5, 9)))
    report = check_data(path, tokenizer=tiny_tokenizer, max_length=MAX_LENGTH)
    assert report.ok
    (warning,) = [w for w in report.warnings if "shortened" in w.message]
    assert warning.field == "max_length" and warning.line == 3 and warning.file == str(path)
    assert f"3 text(s) are longer than max_length {MAX_LENGTH} allows" in warning.message
    assert "instruction and label kept" in warning.message and "lines 3, 6, 10" in warning.message
    assert "--max-length" in warning.hint
    assert not [w for w in report.warnings if "lose answer tokens" in w.message]  # no label is cut any more
    for index in (2, 5, 9):
        rendered = report.rendered[index]
        assert len(rendered.input_ids) <= MAX_LENGTH
        assert target_text(tiny_tokenizer, rendered) == f"{LABELS[index % 2]}<|im_end|>\n"
    # the training rows are those renderings: every one keeps its label
    splits = split(report, 0.0, 0)
    rows, _ = build_rows("classify", splits, MAX_LENGTH, 0.0, 0, False)
    assert len(rows) == 12 and all(row.n_target == report.rendered[i].n_target for i, row in enumerate(rows))
    # the statistics stay those of the data as written
    assert report.stats["length_max"] > MAX_LENGTH


def test_validation_texts_are_shortened_too(write_jsonl, tiny_tokenizer):
    train = write_jsonl("train.jsonl", classify_rows(()))
    val = write_jsonl("val.jsonl", classify_rows((4,)))
    report = check_data(train, tokenizer=tiny_tokenizer, max_length=MAX_LENGTH, val_data=val)
    (warning,) = [w for w in report.warnings if "shortened" in w.message]
    assert warning.file == str(val) and "lines 5" in warning.message
    assert len(report.val_rendered[4].input_ids) <= MAX_LENGTH


def test_other_tasks_are_still_cut_and_warned_about(write_jsonl, tiny_tokenizer):
    chat = {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "the answer"}]}
    report = check_data(write_jsonl("chat.jsonl", [chat]), tokenizer=tiny_tokenizer, max_length=MAX_LENGTH)
    assert [w for w in report.warnings if "lose answer tokens" in w.message]
    assert not [w for w in report.warnings if "shortened" in w.message]
    assert len(report.rendered[0].input_ids) > MAX_LENGTH  # rendered whole; rows are cut at max_length


@pytest.mark.parametrize("shots", [0, 2])
def test_evaluation_scores_the_prompt_training_saw(write_jsonl, tiny_tokenizer, tiny_model_dir, monkeypatch, shots):
    from tunesmith.models.load import load_model

    path = write_jsonl("long.jsonl", classify_rows((1, 2)))
    report = check_data(path, tokenizer=tiny_tokenizer, max_length=MAX_LENGTH)
    examples = report.train.examples
    scored: list = []
    real = measure_module.score_candidates

    def spy(model, candidates, *args, **kwargs):
        scored.extend(candidates)
        return real(model, candidates, *args, **kwargs)

    monkeypatch.setattr(measure_module, "score_candidates", spy)
    system = System("few_shot" if shots else "base", load_model(tiny_model_dir), shots=examples[1 : 1 + shots])
    measure(system, tiny_tokenizer, "classify", examples, LABELS, None, EvalOptions(latency_samples=0), MAX_LENGTH)
    start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    for index, example in enumerate(examples):
        gold = scored[index][LABELS.index(example.label)]
        own = report.rendered[index].input_ids  # the training row: system turn, then the example's own turns
        own_turns = own[[i for i, token in enumerate(own) if token == start][1] :]
        assert gold.input_ids[-len(own_turns) :] == own_turns  # the same (shortened) prompt and label
        if not shots:
            assert gold.input_ids == own
        assert len(gold.input_ids) <= MAX_LENGTH * (1 + shots)  # the shots' texts are shortened too
