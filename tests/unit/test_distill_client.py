"""The teacher client and the generation loop against a real HTTP server on loopback (http.server in a
thread) that answers from a script: retries and back-off on 503/429/connection errors, no retry on
other 4xx, label normalisation, input checks before any request, resume, a torn last line, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import wait_until
from tunesmith.cli import main
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.labels import check_labels, classify_prompt, normalize_label
from tunesmith.models.openai_client import Teacher, TeacherError, TeacherUnavailable
from tunesmith.workflows.distill import distill, rejects_path

REPO = Path(__file__).resolve().parents[2]
LABELS = ["positive", "negative"]


def completion(text: str, finish: str = "stop") -> tuple[int, dict, dict]:
    return (
        200,
        {},
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
        },
    )


class Scripted:
    """A loopback server: ``answer(body, n) -> (status, headers, json)`` for POST, models for GET."""

    def __init__(self, answer, models=("teacher-1",), delay: float = 0.0):
        self.requests: list[tuple[float, dict, dict]] = []  # (time, headers, body)
        self.lock = threading.Lock()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {}, {"object": "list", "data": [{"id": m} for m in models]})
                else:
                    self._send(404, {}, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with scripted.lock:
                    scripted.requests.append((time.monotonic(), dict(self.headers), body))
                    count = len(scripted.requests)
                time.sleep(delay)
                self._send(*answer(body, count))

            def _send(self, status, headers, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(answer, **options) -> Scripted:
        servers.append(Scripted(answer, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def teacher(url: str, **options) -> Teacher:
    return Teacher(url, "teacher-1", **({"backoff": 0.01, "max_backoff": 0.05, "timeout": 10} | options))


def user_text(body: dict) -> str:
    return body["messages"][-1]["content"]


# --- the client --------------------------------------------------------------------------------------


def test_503_is_retried_then_answered(serve):
    server = serve(lambda body, n: (503, {}, {"error": {"message": "busy"}}) if n == 1 else completion("ok"))
    reply = teacher(server.url, api_key="sk-test").chat([{"role": "user", "content": "hi"}])
    assert (reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == ("ok", "stop", 12, 2)
    assert len(server.requests) == 2
    _, headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer sk-test"
    assert body == {
        "model": "teacher-1",
        "temperature": 0,
        "max_tokens": 512,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_429_waits_as_long_as_retry_after_says(serve):
    server = serve(
        lambda body, n: (429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}) if n == 1 else completion("ok")
    )
    assert teacher(server.url).chat([{"role": "user", "content": "hi"}]).text == "ok"
    (first, _, _), (second, _, _) = server.requests
    assert second - first >= 0.95  # the back-off alone would have waited 0.05 s at most


def test_400_is_not_retried_and_names_the_servers_message(serve):
    server = serve(lambda body, n: (400, {}, {"error": {"message": "max_tokens is too large", "type": "x"}}))
    with pytest.raises(TeacherError, match=r"HTTP 400\): max_tokens is too large"):
        teacher(server.url).chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_unknown_model_lists_what_the_server_offers(serve):
    server = serve(
        lambda body, n: (404, {}, {"error": {"message": "No model with id 'teacher-1'", "code": "model_not_found"}}),
        models=("big:1", "small:2"),
    )
    with pytest.raises(TeacherError) as refused:
        teacher(server.url).chat([{"role": "user", "content": "hi"}])
    assert "Check --teacher-model 'teacher-1'; the server offers: big:1, small:2" in str(refused.value)
    assert len(server.requests) == 1


def test_wrong_key_says_so(serve):
    server = serve(lambda body, n: (401, {}, {"error": {"message": "Incorrect API key provided"}}))
    with pytest.raises(TeacherError, match="Incorrect API key provided. Check the API key"):
        teacher(server.url).chat([{"role": "user", "content": "hi"}])


def test_gives_up_after_the_retries(serve):
    server = serve(lambda body, n: (500, {}, {"error": {"message": "boom"}}))
    with pytest.raises(TeacherUnavailable, match=r"after 3 tries: HTTP 500: boom"):
        teacher(server.url, retries=2).chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3


def test_connection_refused_is_retried_then_reported():
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    began = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="after 3 tries"):
        teacher(f"http://127.0.0.1:{port}/v1", retries=2).chat([{"role": "user", "content": "hi"}])
    assert time.monotonic() - began < 5


def test_backoff_grows_with_jitter():
    client = Teacher("http://x/v1", "m", backoff=1.0, max_backoff=30.0)
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (8, 16), (15, 30), (15, 30)]):
        delays = [client._delay(attempt) for _ in range(50)]
        assert all(low <= d <= high for d in delays) and len(set(delays)) > 1


# --- labels and inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, label",
    [
        ("positive", "positive"),
        (" Positive.\n", "positive"),
        ('"NEGATIVE"', "negative"),
        ("negative!", "negative"),
        ("'positive'.", "positive"),
        ("**positive**", "positive"),
        ("positive review", None),
        ("pos", None),
        ("I think it is positive", None),
        ("", None),
        ("positive, negative", None),
    ],
)
def test_normalize_label(answer, label):
    assert normalize_label(answer, LABELS) == label


def test_labels_that_an_answer_could_not_tell_apart_are_refused():
    assert check_labels([" spam", "ham "]) == ["spam", "ham"]
    with pytest.raises(TunesmithError, match="same label"):
        check_labels(["Spam", "spam."])
    with pytest.raises(TunesmithError, match="at least two"):
        check_labels(["spam"])


def test_bad_inputs_are_refused_before_any_request(serve, write_jsonl, tmp_path):
    server = serve(lambda body, n: completion("positive"))
    inputs = write_jsonl("in.jsonl", [{"text": "fine"}, {"txt": "typo"}, "not json", {"text": "  "}])
    with pytest.raises(DataError) as refused:
        distill(inputs, tmp_path / "out.jsonl", teacher(server.url), "classify", LABELS)
    message = str(refused.value)
    assert f"{inputs}:2: error: text: missing or empty" in message and f"{inputs}:3: error: bad JSON" in message
    assert f"{inputs}:4: error: text" in message and "(hint:" in message
    chat = write_jsonl(
        "chat.jsonl",
        [
            {"prompt": "hi"},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"prompt": "x", "messages": []},
        ],
    )
    with pytest.raises(DataError) as refused:
        distill(chat, tmp_path / "out.jsonl", teacher(server.url), "chat")
    assert f"{chat}:2: error: messages: the conversation must end with a user turn" in str(refused.value)
    assert f"{chat}:3: error: prompt: give either prompt or messages, not both" in str(refused.value)
    assert server.requests == [] and not (tmp_path / "out.jsonl").exists()


# --- the loop ----------------------------------------------------------------------------------------


def labeller(answers: dict[str, str]):
    """Answers a classify request with answers[text] (the text is the end of the instruction)."""

    def answer(body, n):
        text = user_text(body).rsplit("Text: ", 1)[1]
        return completion(answers[text])

    return answer


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_classify_writes_valid_labels_and_rejects_the_rest_then_resumes(serve, write_jsonl, tmp_path):
    answers = {f"review {i}": ("Positive." if i % 2 else "negative") for i in range(8)}
    answers["review 5"] = "maybe"
    server = serve(labeller(answers))
    rows = [{"text": text, "label": "ignored"} for text in answers]
    out = tmp_path / "out.jsonl"

    first = distill(
        write_jsonl("part.jsonl", rows[:6]),
        out,
        teacher(server.url),
        "classify",
        LABELS,
        system="Be brief.",
        concurrency=3,
    )
    assert (first.written, first.invalid, first.failed, first.skipped, first.complete) == (5, 1, 0, 0, True)
    # three workers: the requests reach the server in any order
    asked = {user_text(body).rsplit("Text: ", 1)[1]: body["messages"] for *_, body in server.requests}
    assert asked["review 0"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": classify_prompt("review 0", LABELS)},
    ]
    rejected = read_lines(rejects_path(out))
    assert rejected == [
        {
            "line": 6,
            "input": {"text": "review 5"},
            "answer": "maybe",
            "reason": "not one of the labels: positive, negative",
        }
    ]

    # A crash mid-write leaves a torn last line: it is dropped and that input asked again.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:10])
    full = write_jsonl("all.jsonl", rows + [rows[0]])  # a repeated input is asked once
    second = distill(full, out, teacher(server.url), "classify", LABELS, system="Be brief.", concurrency=3)
    assert (second.written, second.invalid, second.skipped, second.duplicates) == (3, 0, 5, 1)
    assert len(server.requests) == 6 + 3
    written = read_lines(out)
    assert sorted(line["text"] for line in written) == sorted(t for t in answers if t != "review 5")
    assert all(
        line == {"text": line["text"], "label": "positive" if int(line["text"][-1]) % 2 else "negative"}
        for line in written
    )

    third = distill(full, out, teacher(server.url), "classify", LABELS, system="Be brief.")
    assert (third.written, third.skipped, len(server.requests)) == (0, 8, 9)
    assert third.lines()[-1] == f"next: tunesmith train {out}"


def test_a_line_generate_did_not_write_stops_the_run(serve, write_jsonl, tmp_path):
    server = serve(lambda body, n: completion("positive"))
    out = write_jsonl("out.jsonl", [{"text": "a", "label": "positive"}, "garbage", {"text": "b", "label": "positive"}])
    with pytest.raises(TunesmithError, match=f"{out}:2: not a line `tunesmith data generate` writes"):
        distill(write_jsonl("in.jsonl", [{"text": "a"}]), out, teacher(server.url), "classify", LABELS)
    assert server.requests == []
    done = write_jsonl("done.jsonl", [{"text": "a", "label": "positive"}])
    done.write_text(done.read_text().rstrip("\n"))  # complete, only the newline missing: kept
    summary = distill(
        write_jsonl("in2.jsonl", [{"text": "a"}, {"text": "b"}]), done, teacher(server.url), "classify", LABELS
    )
    assert (summary.skipped, summary.written) == (1, 1) and len(read_lines(done)) == 2


def test_chat_answers_keep_the_conversation_and_refuse_empty_or_cut_off_answers(serve, write_jsonl, tmp_path):
    def answer(body, n):
        text = user_text(body)
        return completion("" if text == "empty" else "a long answer", "length" if text == "long" else "stop")

    server = serve(answer)
    inputs = write_jsonl(
        "chat.jsonl",
        [
            {"prompt": "hello"},
            {"prompt": "empty"},
            {"prompt": "long"},
            {
                "messages": [
                    {"role": "system", "content": "Own system."},
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "q2"},
                ]
            },
        ],
    )
    out = tmp_path / "chat-out.jsonl"
    summary = distill(inputs, out, teacher(server.url), "chat", system="House style.")
    assert (summary.written, summary.invalid) == (2, 2)
    # Lines are written as answers arrive (8 in flight): compare them in a fixed order.
    assert sorted(read_lines(out), key=json.dumps) == sorted(
        [
            {
                "messages": [
                    {"role": "system", "content": "House style."},
                    {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "a long answer"},
                ]
            },
            {
                "messages": [
                    {"role": "system", "content": "Own system."},
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "q2"},
                    {"role": "assistant", "content": "a long answer"},
                ]
            },
        ],
        key=json.dumps,
    )
    assert sorted(r["reason"] for r in read_lines(rejects_path(out))) == [
        "cut off at --max-tokens (finish_reason length)",
        "empty answer",
    ]
    again = distill(inputs, out, teacher(server.url), "chat", system="House style.")
    assert (again.skipped, again.written, len(server.requests)) == (4, 0, 4)


def test_a_refusal_stops_the_run_and_failures_are_left_for_the_next(serve, write_jsonl, tmp_path):
    inputs = write_jsonl("in.jsonl", [{"text": f"t{i}"} for i in range(6)])
    refused = serve(lambda body, n: (400, {}, {"error": {"message": "bad request"}}))
    summary = distill(inputs, tmp_path / "a.jsonl", teacher(refused.url), "classify", LABELS, concurrency=1)
    assert summary.error == f"{inputs}:1: the teacher at {refused.url} refused the request (HTTP 400): bad request"
    assert len(refused.requests) == 1 and not summary.complete

    flaky = serve(lambda body, n: (503, {}, {}) if user_text(body).endswith("t2") else completion("positive"))
    summary = distill(inputs, tmp_path / "b.jsonl", teacher(flaky.url, retries=1), "classify", LABELS)
    assert (summary.written, summary.failed) == (5, 1) and summary.failures[0].startswith(f"{inputs}:3: no answer")
    assert "run the same command again" in "\n".join(summary.lines())

    down = serve(lambda body, n: (503, {}, {}))
    summary = distill(inputs, tmp_path / "c.jsonl", teacher(down.url, retries=0), "classify", LABELS, concurrency=1)
    assert summary.failed == 3 and "none of the last 3 inputs" in summary.error


@pytest.mark.server  # the CLI as a subprocess
def test_cli_generate_and_ctrl_c_keeps_whole_lines(serve, write_jsonl, tmp_path, capsys):
    server = serve(lambda body, n: completion("positive"), delay=0.1)
    # 40 inputs take the CLI >= 2 s (2 at a time, 0.1 s each); Ctrl-C comes once 4 lines are written.
    inputs = write_jsonl("in.jsonl", [{"text": f"review {i}"} for i in range(40)])
    out = tmp_path / "out.jsonl"
    args = [
        "data",
        "generate",
        "--teacher-url",
        server.url,
        "--teacher-model",
        "teacher-1",
        "--inputs",
        str(inputs),
        "--out",
        str(out),
        "--labels",
        "positive,negative",
        "--concurrency",
        "2",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 4, 30, f"4 lines in {out}", interval=0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130, output
    assert "run the same command again" in output
    kept = out.read_text()
    assert kept.endswith("\n") and 4 <= len(kept.splitlines()) < 40
    assert all(json.loads(line)["label"] == "positive" for line in kept.splitlines())

    assert main(args) == 0
    assert len(read_lines(out)) == 40 and len({line["text"] for line in read_lines(out)}) == 40
    report = capsys.readouterr().err
    assert f"skipped {len(kept.splitlines())} already done" in report and f"next: tunesmith train {out}" in report

    assert main([*args[:-2], "--task", "chat"]) == 1  # --labels with --task chat
    assert "--labels only applies to --task classify" in capsys.readouterr().err
