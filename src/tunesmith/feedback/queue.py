"""Review queues: prompts waiting for a reviewer's verdict on one model's answers, kept on disk.

A queue is a folder, ``$TUNESMITH_HOME/review/ID/``:

    queue.json         what it reviews (model, name, whether a second answer is sampled to compare), and the
                       jobs trained from it; rewritten whole (atomically) when a job is added
    prompts.jsonl      the prompts, in the format ``tunesmith review`` reads ({"prompt"} or {"messages"})
    answers.jsonl      each prompt's answers once generated, so that every reviewer (and a reload) sees the same
    corrections.jsonl  the verdicts, in the format ``tunesmith review`` writes: ``data from-corrections`` and
                       ``tunesmith review --out`` read it as they read their own

The page is one client of this (serve.web.review_pages); ``tunesmith review PROMPTS --out CORRECTIONS``
works on the same two files. Appends go through ``core.durable.append_line`` (one synced write a line).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.core import paths
from tunesmith.core.durable import append_line, atomic_write_text
from tunesmith.core.errors import DataError
from tunesmith.data.readers import read_json_objects
from tunesmith.data.records import Issue, listed_errors
from tunesmith.feedback.corrections import Prompt, parse_prompt, prompt_key
from tunesmith.feedback.session import ReviewSession

QUEUE_FILE, PROMPTS_FILE, ANSWERS_FILE, CORRECTIONS_FILE = (
    "queue.json",
    "prompts.jsonl",
    "answers.jsonl",
    "corrections.jsonl",
)


def review_dir() -> Path:
    return paths.home() / "review"


@dataclass(frozen=True)
class ReviewQueue:
    folder: Path

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def meta(self) -> dict:
        return json.loads((self.folder / QUEUE_FILE).read_text())

    @property
    def prompts_path(self) -> Path:
        return self.folder / PROMPTS_FILE

    @property
    def corrections_path(self) -> Path:
        return self.folder / CORRECTIONS_FILE

    def session(self) -> ReviewSession:
        """The review state as the files hold it now (what is done, what is left)."""
        return ReviewSession(self.prompts_path, self.corrections_path)

    def answers(self) -> dict[str, dict]:
        """Generated answers by prompt key: {"answer": greedy, "alternative": sampled or None}."""
        path = self.folder / ANSWERS_FILE
        if not path.exists():
            return {}
        found: dict[str, dict] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: that answer is generated again
                continue
            found.setdefault(record["key"], record)
        return found

    def add_answer(self, key: str, answer: str, alternative: str | None) -> None:
        record = {"key": key, "answer": answer, "alternative": alternative}
        append_line(self.folder / ANSWERS_FILE, json.dumps(record, ensure_ascii=False))

    def add_prompts(self, prompts: list[Prompt]) -> int:
        """Append the prompts the queue does not have yet; returns how many were new."""
        empty = not self.prompts_path.exists() or not self.prompts_path.read_text().strip()
        known = set() if empty else {p.key for p in self.session().prompts}
        added = 0
        for prompt in prompts:
            if prompt_key(prompt) in known:
                continue
            known.add(prompt_key(prompt))
            append_line(self.prompts_path, json.dumps(_prompt_line(prompt), ensure_ascii=False))
            added += 1
        return added

    def add_job(self, job_id: str, method: str, data: dict[str, int]) -> None:
        meta = self.meta
        meta.setdefault("jobs", []).append({"id": job_id, "method": method, "data": data, "at": int(time.time())})
        atomic_write_text(self.folder / QUEUE_FILE, json.dumps(meta, indent=2))


def create(model: str, name: str, prompts: list[Prompt], compare: bool, source: str, answer_tokens: int) -> ReviewQueue:
    """A new queue of ``prompts`` for ``model`` (NAME:VERSION or a base name). ``compare``: sample a second
    answer for each prompt, so that the reviewer can pick the better of two; ``answer_tokens``: the
    answers' length limit."""
    folder = review_dir() / f"rq-{secrets.token_hex(6)}"
    folder.mkdir(parents=True)
    meta = {
        "model": model,
        "name": name,
        "compare": compare,
        "answer_tokens": answer_tokens,
        "source": source,
        "created_at": int(time.time()),
    }
    queue = ReviewQueue(folder)
    queue.prompts_path.touch()
    queue.add_prompts(prompts)
    atomic_write_text(folder / QUEUE_FILE, json.dumps({**meta, "jobs": []}, indent=2))  # last: marks it complete
    return queue


def get(queue_id: str) -> ReviewQueue | None:
    """A queue by id (an id, never a path: anything but ``rq-`` and hex digits is no queue)."""
    if not queue_id.startswith("rq-") or not all(c in "0123456789abcdef" for c in queue_id[3:]):
        return None
    folder = review_dir() / queue_id
    return ReviewQueue(folder) if (folder / QUEUE_FILE).exists() else None


def all_queues() -> list[ReviewQueue]:
    """Every queue, newest first."""
    if not review_dir().exists():
        return []
    found = [ReviewQueue(folder) for folder in review_dir().iterdir() if (folder / QUEUE_FILE).exists()]
    return sorted(found, key=lambda q: q.meta["created_at"], reverse=True)


def prompts_from_file(path: Path) -> list[Prompt]:
    """The prompts of a JSONL file: prompt lines as ``tunesmith review`` reads them, and also training or
    test data (the answer is what gets reviewed, so it is dropped): chat ``messages`` ending with the
    assistant's answer, ``prompt``/``completion``, ``text``/``label``. Raises DataError naming each bad line."""
    issues: list[Issue] = []
    prompts: list[Prompt] = []
    name = str(path)
    for line, obj in read_json_objects(path, issues):
        if "text" in obj and "prompt" not in obj and "messages" not in obj:
            obj = {"prompt": obj["text"]}
        elif isinstance(obj.get("messages"), list) and obj["messages"] and isinstance(obj["messages"][-1], dict):
            messages = obj["messages"]
            while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
                messages = messages[:-1]
            obj = {"messages": messages}
        else:
            obj = {key: obj[key] for key in ("prompt", "messages") if key in obj}
        prompt = parse_prompt(obj, name, line, issues)
        if prompt is not None:
            prompts.append(prompt)
    errors = [issue for issue in issues if issue.severity == "error"]
    if errors:
        raise DataError(f"{path} has {len(errors)} error(s):\n{listed_errors(errors)}")
    if not prompts:
        raise DataError(f'{path} has no prompts: give one JSON object a line, e.g. {{"prompt": "..."}}')
    return prompts


def _prompt_line(prompt: Prompt) -> dict:
    return {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
