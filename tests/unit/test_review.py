"""`tunesmith review`: the real command in a subprocess, answered through a pipe, and the session logic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, sharpen, wait_until
from tunesmith.cli import main
from tunesmith.core.errors import TunesmithError
from tunesmith.feedback.corrections import convert
from tunesmith.feedback.session import ReviewSession
from tunesmith.feedback.terminal import QUESTION

PROMPTS = [
    {"prompt": "Where is my order SC-20417?"},
    {"prompt": "Do you fix punctures while I wait?"},
    {"messages": [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Sunday hours?"}]},
    {"prompt": "Can I return a helmet?"},
]


@pytest.fixture(scope="module")
def review_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with sharpened weights: the plain one answers only whitespace, which cannot be
    marked good, and a review needs answers of both kinds."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models.load import load_tokenizer

    folder = tmp_path_factory.mktemp("review-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sharpen(model)
    model.save_pretrained(folder)
    load_tokenizer(tiny_model_dir).save_pretrained(folder)
    return folder


def review_command(model: Path, prompts: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tunesmith",
        "review",
        str(model),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--max-tokens",
        "8",
    ]


def environment(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "TUNESMITH_HOME": str(home),
        "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


def review(home: Path, model: Path, prompts: Path, out: Path, keys: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        review_command(model, prompts, out),
        input=keys,
        capture_output=True,
        text=True,
        env=environment(home),
        timeout=120,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.server  # the CLI as a subprocess
def test_good_bad_skip_quit_then_resume(review_model, write_jsonl, home, tmp_path):
    prompts = write_jsonl("prompts.jsonl", PROMPTS)
    out = tmp_path / "reviews" / "corrections.jsonl"  # the folder is created on the first verdict
    first = review(home, review_model, prompts, out, "g\nb\nWe do, in about\\\n20 minutes.\ns\nq\n")
    assert first.returncode == 0, first.stderr
    recorded = lines(out)
    assert [{k: v for k, v in line.items() if k != "response"} for line in recorded] == [
        {"prompt": PROMPTS[0]["prompt"], "verdict": "good"},
        {"prompt": PROMPTS[1]["prompt"], "verdict": "bad", "correction": "We do, in about\n20 minutes."},
    ]
    assert all(isinstance(line["response"], str) and line["response"].strip() for line in recorded)
    assert "0 of 4 prompt(s) reviewed, 4 to go" in first.stdout
    assert "this session: 2 recorded (1 good, 1 bad), 1 skipped; 2 of 4 reviewed, 2 to go" in first.stdout
    assert (
        f"resume with: tunesmith review {review_model} --prompts {prompts} --out {out} --max-tokens 8" in first.stdout
    )

    # The rerun starts with the skipped prompt (a messages prompt) and never shows the reviewed ones;
    # the end of input quits like q.
    second = review(home, review_model, prompts, out, "b\nOpen 10 to 4.\n")
    assert second.returncode == 0, second.stderr
    assert "2 of 4 prompt(s) reviewed, 2 to go" in second.stdout
    assert "prompt 1/2 (line 3)" in second.stdout and "system: Answer in one line." in second.stdout
    assert PROMPTS[0]["prompt"] not in second.stdout and PROMPTS[1]["prompt"] not in second.stdout
    assert lines(out)[:2] == recorded
    assert {k: v for k, v in lines(out)[2].items() if k != "response"} == {
        "messages": PROMPTS[2]["messages"],
        "verdict": "bad",
        "correction": "Open 10 to 4.",
    }
    assert len(lines(out)) == 3

    # What the review wrote is a valid corrections file.
    result = convert(out)
    assert result.errors == [] and (result.good, result.bad) == (1, 2)


@pytest.mark.server  # the CLI as a subprocess
def test_sigint_while_waiting_keeps_every_recorded_review(review_model, write_jsonl, home, tmp_path):
    prompts = write_jsonl("prompts.jsonl", PROMPTS)
    out = tmp_path / "corrections.jsonl"
    process = subprocess.Popen(
        review_command(review_model, prompts, out),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment(home),
    )
    transcript = bytearray()
    reader = threading.Thread(
        target=lambda: [transcript.extend(chunk) for chunk in iter(lambda: process.stdout.read1(4096), b"")],
        daemon=True,
    )
    reader.start()
    try:
        wait_for(transcript, 1)
        process.stdin.write(b"g\n")
        process.stdin.flush()
        wait_for(transcript, 2)  # waiting for the verdict on the second prompt
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # e.g. SIGINT ignored (see conftest): show where it stood
            pytest.fail("no exit 60 s after Ctrl-C; transcript:\n" + transcript.decode(errors="replace")[-3000:])
        assert code == 130
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    text = transcript.decode()
    assert [line["prompt"] for line in lines(out)] == [PROMPTS[0]["prompt"]]
    assert out.read_bytes().endswith(b"\n")
    assert f"interrupted: every review recorded so far is in {out}" in text
    assert "resume with: tunesmith review" in text and "Traceback" not in text


def wait_for(transcript: bytearray, questions: int, timeout: float = 90) -> None:
    wait_until(
        lambda: transcript.decode(errors="replace").count(QUESTION) >= questions,
        timeout,
        f"question {questions} of `tunesmith review`",
        interval=0.05,
        details=lambda: transcript.decode(errors="replace"),
    )


def test_a_torn_last_line_is_dropped_with_a_warning(write_jsonl, tmp_path):
    prompts = write_jsonl("prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "corrections.jsonl"
    done = {"prompt": PROMPTS[0]["prompt"], "response": "Tomorrow.", "verdict": "good"}
    out.write_bytes(json.dumps(done).encode() + b"\n" + b'{"prompt": "Do you fix punctures while I wait?", "resp')
    session = ReviewSession(prompts, out)
    assert [(w.line, w.message.split(" (")[0]) for w in session.warnings] == [(2, "dropped an incomplete last line")]
    assert "asked again" in session.warnings[0].hint
    assert lines(out) == [done]  # cut off on disk, not only skipped in memory
    assert [p.prompt for p in session.pending()] == [PROMPTS[1]["prompt"]]
    session.record(session.pending()[0], "No.", "bad", "Yes, in 20 minutes.")
    assert convert(out).errors == [] and len(lines(out)) == 2
    assert session.progress().remaining == 0


def test_a_complete_last_line_without_newline_is_kept(write_jsonl, tmp_path):
    prompts = write_jsonl("prompts.jsonl", PROMPTS[:2])
    out = tmp_path / "corrections.jsonl"
    done = {"prompt": PROMPTS[0]["prompt"], "response": "Tomorrow.", "verdict": "good"}
    out.write_text(json.dumps(done))  # saved by an editor without the final newline
    session = ReviewSession(prompts, out)
    assert session.warnings == [] and session.progress().done == 1
    session.record(session.pending()[0], "Yes.", "good")
    assert len(lines(out)) == 2


def test_a_record_the_corrections_rules_refuse_is_not_written(write_jsonl, tmp_path):
    session = ReviewSession(write_jsonl("prompts.jsonl", PROMPTS[:1]), tmp_path / "corrections.jsonl")
    prompt = session.pending()[0]
    with pytest.raises(TunesmithError, match="an empty answer marked good"):
        session.record(prompt, "  ", "good")
    with pytest.raises(TunesmithError, match="correction: empty correction"):
        session.record(prompt, "No.", "bad", "")
    assert not (tmp_path / "corrections.jsonl").exists() and session.pending() == [prompt]


def test_bad_files_stop_before_a_model_is_loaded(write_jsonl, tmp_path, home, capsys):
    prompts = write_jsonl(
        "prompts.jsonl",
        [
            {"prompt": "fine"},
            {"text": "not a prompt"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "[1]",
        ],
    )
    code = main(["review", "no-such-model", "--prompts", str(prompts), "--out", str(tmp_path / "c.jsonl")])
    stderr = capsys.readouterr().err
    assert code == 1
    assert f"{prompts}:2: error: text: unknown key" in stderr
    assert f"{prompts}:2: error: prompt, messages: missing key: prompt or messages" in stderr
    assert f"{prompts}:3: error: messages: the conversation must end with a user turn" in stderr
    assert f"{prompts}:4: error: expected a JSON object, got list" in stderr

    out = write_jsonl("corrections.jsonl", [{"prompt": "fine", "response": "r", "verdict": "maybe"}])
    good_prompts = write_jsonl("good.jsonl", [{"prompt": "fine"}])
    assert main(["review", "no-such-model", "--prompts", str(good_prompts), "--out", str(out)]) == 1
    assert f'{out}:1: error: verdict: must be "good" or "bad", got \'maybe\'' in capsys.readouterr().err


def test_nothing_pending_needs_no_model(write_jsonl, tmp_path, home, capsys):
    prompts = write_jsonl("prompts.jsonl", [{"prompt": "fine"}, {"prompt": "fine"}])
    out = write_jsonl(
        "corrections.jsonl", [{"messages": [{"role": "user", "content": "fine"}], "response": "r", "verdict": "good"}]
    )
    assert main(["review", "no-such-model", "--prompts", str(prompts), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "All 1 prompt(s)" in stdout and "next: tunesmith data from-corrections" in stdout


def test_the_answer_is_the_models_with_its_system_prompt(tiny_model_dir, write_jsonl, tmp_path, one_torch_thread):
    from tunesmith.feedback.session import answer
    from tunesmith.inference.loaded import generate_answer, load

    loaded = load(str(tiny_model_dir))
    loaded.system_prompt = "You are the Spokes & Co. assistant."  # as a registry version stores it
    session = ReviewSession(write_jsonl("prompts.jsonl", PROMPTS[:1]), tmp_path / "c.jsonl")
    expected = generate_answer(
        loaded,
        messages=[
            {"role": "system", "content": loaded.system_prompt},
            {"role": "user", "content": PROMPTS[0]["prompt"]},
        ],
        max_tokens=8,
    )
    assert answer(loaded, session.pending()[0], max_tokens=8) == expected
