"""``tunesmith data generate``: a teacher model behind any OpenAI-compatible endpoint labels or answers
the user's inputs, and its answers become the training file of a small student (distillation).

    read and check every input      file:line:field errors before a single request is sent
    skip what is already done       OUT and OUT.rejected.jsonl hold it; a torn last line is dropped
    N worker threads ask            POST {url}/chat/completions, temperature 0; transient failures are
                                    retried with back-off, a refusal (4xx) stops the run
    the main thread writes          valid -> OUT, invalid -> the rejects file; one write + fsync a line

The teacher is any OpenAI-compatible chat API (models.openai_client).
"""

from __future__ import annotations

import json
import queue
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from tunesmith.core.durable import append_line, repair_tail
from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.data.labels import check_labels, classify_prompt, normalize_label
from tunesmith.data.messages import check_prompt_messages
from tunesmith.data.records import Issue, listed_errors
from tunesmith.models.openai_client import Reply, Teacher, TeacherUnavailable


@dataclass(frozen=True)
class Input:
    line: int
    key: str  # the input as canonical JSON: how a rerun recognises what is done
    record: dict  # the input part of the output line
    messages: list[dict]  # what the teacher is sent


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def read_inputs(path: Path, task: str, labels: list[str] | None, system: str | None) -> list[Input]:
    """Every input of a JSONL file, or a DataError listing every bad line (file:line: field: ...)."""
    name, issues, inputs = str(path), [], []
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{name}: cannot read the inputs: {error}") from None
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as error:
            issues.append(Issue.error(name, number, None, f"bad JSON: {error}", "one JSON object a line"))
            continue
        if not isinstance(obj, dict):
            issues.append(Issue.error(name, number, None, "expected a JSON object", "one JSON object a line"))
        elif task == "classify":
            if not isinstance(obj.get("text"), str) or not obj["text"].strip():
                issues.append(
                    Issue.error(
                        name,
                        number,
                        "text",
                        "missing or empty",
                        'a classify input is {"text": "..."} (other keys are ignored)',
                    )
                )
                continue
            prompt = [{"role": "user", "content": classify_prompt(obj["text"], labels or [])}]
            inputs.append(_input(number, {"text": obj["text"]}, _with_system(prompt, system)))
        elif (messages := _chat_messages(obj, name, number, issues)) is not None:
            messages = _with_system(messages, system)
            inputs.append(_input(number, {"messages": messages}, messages))
    if not issues and not inputs:
        issues.append(Issue.error(name, None, None, "no inputs", "add one JSON object a line"))
    if issues:
        shown = listed_errors(issues)
        raise DataError(f"{len(issues)} error(s) in the inputs; nothing was sent:\n{shown}")
    return inputs


def _input(line: int, record: dict, messages: list[dict]) -> Input:
    key = record if "messages" not in record else {"messages": [_turn(m) for m in record["messages"]]}
    return Input(line, canonical(key), record, messages)


def _turn(message: dict) -> dict:
    return {"role": message["role"], "content": message["content"]}


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    return (
        messages
        if not system or messages[0]["role"] == "system"
        else [{"role": "system", "content": system}, *messages]
    )


def _chat_messages(obj: dict, name: str, line: int, issues: list[Issue]) -> list[dict] | None:
    hint = 'a chat input is {"prompt": "..."} or {"messages": [..., {"role": "user", "content": "..."}]}'
    if "prompt" in obj and "messages" in obj:
        issues.append(Issue.error(name, line, "prompt", "give either prompt or messages, not both", hint))
        return None
    if "prompt" not in obj and "messages" not in obj:
        issues.append(
            Issue.error(
                name,
                line,
                "prompt",
                "missing",
                hint
                if "text" not in obj
                else "a line with text is for classification: give --labels (or --task classify)",
            )
        )
        return None
    if "prompt" in obj:
        if isinstance(obj["prompt"], str) and obj["prompt"].strip():
            return [{"role": "user", "content": obj["prompt"]}]
        issues.append(Issue.error(name, line, "prompt", "must be a non-empty string", hint))
        return None
    messages = check_prompt_messages(obj["messages"], line, name, issues, field="messages")
    return None if messages is None else [_turn(m) for m in messages]


def rejects_path(out: Path) -> Path:
    """Where invalid answers go: ``train.jsonl`` -> ``train.rejected.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix == '.jsonl' else out.name}.rejected.jsonl")


@dataclass
class Summary:
    out: Path
    rejects: Path
    total: int = 0  # distinct inputs in the file
    written: int = 0  # to OUT this run
    invalid: int = 0  # to the rejects file this run: not a label, empty or cut off
    failed: int = 0  # no answer after the retries: not written, asked again by the next run
    skipped: int = 0  # already in OUT or the rejects file
    duplicates: int = 0  # lines repeating an earlier input (asked once)
    seconds: float = 0.0
    interrupted: bool = False
    error: str | None = None  # why the run stopped early
    failures: list[str] = field(default_factory=list)  # "FILE:LINE: what went wrong"

    @property
    def complete(self) -> bool:
        return not (self.failed or self.error or self.interrupted)

    def lines(self) -> list[str]:
        """The closing report: the tally, what went wrong, and the command to run next."""
        tally = [
            f"wrote {self.written} to {self.out}",
            f"invalid {self.invalid}" + (f" (left out, see {self.rejects})" if self.invalid else ""),
            f"failed {self.failed}",
            f"skipped {self.skipped} already done",
            f"{self.seconds:.1f} s",
        ]
        lines = ["; ".join(tally)]
        if self.duplicates:
            lines.append(f"{self.duplicates} input line(s) repeat an earlier one: each input is asked once")
        lines += self.failures[:10] + ([f"... and {len(self.failures) - 10} more"] if len(self.failures) > 10 else [])
        if not self.complete:
            lines.append("some inputs are not done: run the same command again to ask them (done ones are skipped)")
        if self.out.is_file():
            lines.append(f"next: tunesmith train {shlex.quote(str(self.out))}")
        return lines


def distill(
    inputs: Path,
    out: Path,
    teacher: Teacher,
    task: str = "classify",
    labels: list[str] | None = None,
    system: str | None = None,
    concurrency: int = 8,
    console=None,
) -> Summary:
    """Ask ``teacher`` about every input not yet done and append its answers to ``out``. Returns the
    tally; a refusal or a teacher that stopped answering ends the run early (``Summary.error``)."""
    if task not in ("classify", "chat"):
        raise TunesmithError(f"--task {task}: the teacher labels texts (classify) or answers prompts (chat)")
    if task == "classify":
        labels = check_labels(labels)
    elif labels:
        raise TunesmithError("--labels only applies to --task classify")
    if concurrency < 1:
        raise TunesmithError("--concurrency must be at least 1")
    if console is None:
        console = Console(stderr=True, soft_wrap=True)
    inputs, out = Path(inputs), Path(out)
    summary = Summary(out, rejects_path(out))
    if inputs.resolve() in (out.resolve(), summary.rejects.resolve()):
        raise TunesmithError(f"--out {out} would overwrite the inputs; write the answers to another file")
    items = read_inputs(inputs, task, labels, system)
    unique = {item.key: item for item in reversed(items)}  # the first line of a repeated input wins
    done = done_keys(out, console) | done_keys(summary.rejects, console)
    pending = sorted((item for key, item in unique.items() if key not in done), key=lambda item: item.line)
    summary.total, summary.duplicates, summary.skipped = (
        len(unique),
        len(items) - len(unique),
        len(unique) - len(pending),
    )
    teacher.stopped.clear()
    started = time.perf_counter()
    try:
        _ask_all(pending, teacher, task, labels, concurrency, summary, str(inputs))
    except KeyboardInterrupt:
        summary.interrupted = True  # what is written stays; the rest is asked by the next run
    finally:
        teacher.stopped.set()  # workers take no new input and end their back-off waits
        summary.seconds = time.perf_counter() - started
    return summary


def _ask_all(
    pending: list[Input],
    teacher: Teacher,
    task: str,
    labels: list[str] | None,
    concurrency: int,
    summary: Summary,
    name: str,
) -> None:
    todo: queue.SimpleQueue = queue.SimpleQueue()
    answers: queue.SimpleQueue = queue.SimpleQueue()
    for item in pending:
        todo.put(item)

    def work() -> None:
        while not teacher.stopped.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                answers.put((item, teacher.chat(item.messages), None))
            except Exception as error:  # noqa: BLE001 - the main thread reports every failure
                if not isinstance(error, TeacherUnavailable):
                    teacher.stopped.set()  # a refusal: the next input would get one too; ask no more
                answers.put((item, None, error))

    # Daemon threads: on Ctrl-C the process exits without waiting for requests already on the wire.
    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(concurrency, len(pending)))]
    for worker in workers:
        worker.start()
    in_a_row = 0
    with tqdm(total=len(pending), unit="input", desc="teacher", disable=None) as bar:  # no bar off a terminal
        for _ in pending:
            item, reply, error = _next_answer(answers, workers)
            if item is None:
                break
            if error is not None and not isinstance(error, TeacherUnavailable):
                summary.error = f"{name}:{item.line}: {error}"  # a refusal: the other inputs would get one too
                return
            if error is not None:
                summary.failed += 1
                summary.failures.append(f"{name}:{item.line}: {error}")
                in_a_row += 1
                if in_a_row >= max(3, concurrency):
                    summary.error = f"the teacher answered none of the last {in_a_row} inputs: {error}"
                    return
            else:
                in_a_row = 0
                _keep(item, reply, task, labels, summary)
            bar.update()
            bar.set_postfix(invalid=summary.invalid, failed=summary.failed, refresh=False)


def _next_answer(answers: queue.SimpleQueue, workers: list[threading.Thread]) -> tuple:
    while True:
        try:
            return answers.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers) and answers.empty():
                return None, None, None


def _keep(item: Input, reply: Reply, task: str, labels: list[str] | None, summary: Summary) -> None:
    """A valid answer goes to OUT; an invalid one to the rejects file, raw, for the user to look at."""
    answer = reply.text.strip()
    if task == "classify":
        label = normalize_label(answer, labels or [])
        if label is not None:
            summary.written += 1
            return _append(summary.out, {**item.record, "label": label})
        reason = f"not one of the labels: {', '.join(labels or [])}"
    elif answer and reply.finish_reason != "length":
        summary.written += 1
        return _append(summary.out, {"messages": [*item.messages, {"role": "assistant", "content": answer}]})
    else:
        reason = "empty answer" if not answer else "cut off at --max-tokens (finish_reason length)"
    summary.invalid += 1
    _append(summary.rejects, {"line": item.line, "input": item.record, "answer": reply.text, "reason": reason})


def _append(path: Path, record: dict) -> None:
    append_line(path, json.dumps(record, ensure_ascii=False))  # whole lines only, synced (tunesmith.durable)


def done_keys(path: Path, console=None) -> set[str]:
    """The inputs a file of answers (or of rejects) already holds. A last line without its newline is
    cut off when it is not complete JSON (a crash mid-write), so the next append starts a fresh line."""
    if not Path(path).is_file():
        return set()
    if repair_tail(path) is not None and console is not None:
        console.print(
            f"warning: {path}: dropped a torn last line (a run stopped mid-write); that input is asked again",
            style="yellow",
            highlight=False,
            markup=False,
        )
    data = Path(path).read_bytes()
    keys = set()
    for number, raw in enumerate(data.decode("utf-8", "replace").split("\n"), start=1):
        if raw.strip():
            try:
                keys.add(_line_key(json.loads(raw)))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise TunesmithError(
                    f"{path}:{number}: not a line `tunesmith data generate` writes "
                    "(hint: fix or remove the line, or choose another --out)"
                ) from None
    return keys


def _line_key(obj: dict) -> str:
    if "input" in obj:  # a reject
        return canonical(obj["input"])
    if "messages" in obj:  # a chat answer: the conversation before the teacher's turn
        return canonical({"messages": [_turn(m) for m in obj["messages"][:-1]]})
    return canonical({"text": obj["text"]})
