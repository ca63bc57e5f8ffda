"""The data check in the API's terms: uploads and jobs checked, messages naming the user's files.

Uploaded files are stored as ``files/ID.EXT``, so the data check's messages name that path; a user
knows the file as ``reviews.jsonl``. Every message that leaves the server goes through
``user_text``, which puts the user's names back (``reviews.jsonl:3: error: label: ...``).

The check here is the structural one (``check_structure``: no tokenizer, fast), run when a file is
uploaded and again when a job is created (training and validation file together: overlap, label
sets, mixed formats). What needs the tokenizer (lengths, truncation) runs when the job trains.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tunesmith.core import paths
from tunesmith.core.config import method_task_problem
from tunesmith.data.check import DataReport, check_structure
from tunesmith.data.records import listed_errors
from tunesmith.serve.job_store import JobStore, job_method


def stored_path(file_row: sqlite3.Row) -> Path:
    return paths.files_dir() / file_row["stored"]


def user_text(text: str, names: dict[str, str]) -> str:
    """``text`` with every stored path replaced by the user's file name."""
    for stored, shown in names.items():
        text = text.replace(stored, shown)
    return text


def error_lines(report: DataReport, names: dict[str, str]) -> str:
    return f"{len(report.errors)} error(s) in the data:\n" + user_text(listed_errors(report.errors), names)


def check_upload(path: Path, filename: str) -> str | None:
    """The data check's errors for a new upload, in the user's terms; None when the file is usable."""
    report = check_structure(path)
    return None if report.ok else error_lines(report, {str(path): filename})


def validate_job(store: JobStore, job_id: str) -> bool:
    """Check a job's files together: the job moves to queued, or to failed with the data check's lines.

    Runs in the API when a job is created, and in the worker for a job left in validating_files by
    a server that stopped mid-check."""
    job = store.get_job(job_id)
    assert job is not None  # jobs are never deleted
    rows: dict[str, sqlite3.Row] = {}
    for param in ("training_file", "validation_file"):
        if not job[param]:
            continue
        row = store.get_file(job[param])
        if row is None:  # deleted between the request's check and now
            return _fail(store, job_id, param, f"{param} {job[param]} was deleted")
        rows[param] = row
    train, val = rows["training_file"], rows.get("validation_file")
    names = {str(stored_path(row)): row["filename"] for row in rows.values()}
    store.add_event(
        job_id, f"Validating training file: {train['id']}" + (f" and validation file: {val['id']}" if val else "")
    )
    report = check_structure(stored_path(train), "auto", stored_path(val) if val else None)
    for warning in report.warnings:
        store.add_event(job_id, user_text(str(warning), names), level="warn")
    if not report.ok:
        return _fail(store, job_id, "training_file", error_lines(report, names))
    method = job_method(job)
    if method_task_problem(method, report.task) is not None:
        return _fail(store, job_id, "training_file", _method_problem(train["filename"], report.task, method == "dpo"))
    return store.transition(
        job_id,
        "queued",
        ("validating_files",),
        "Files validated, moving job to queued state",
        data={
            "task": report.task,
            "examples": len(report.train.examples),
            "validation_examples": len(report.val.examples) if report.val else None,
            "labels": report.labels,
        },
    )


def _method_problem(filename: str, task: str, dpo: bool) -> str:
    if dpo:
        return (
            f'{filename} holds {task} data; a job with method {{"type": "dpo"}} trains on preference pairs: '
            '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]} (OpenAI\'s '
            'format) or {"prompt", "chosen", "rejected"}'
        )
    return f'{filename} holds preference pairs: create the job with method {{"type": "dpo"}}'


def _fail(store: JobStore, job_id: str, param: str, message: str) -> bool:
    """The job fails validation because of ``param`` (an ``invalid_<param>`` error, as OpenAI reports it)."""
    error = {"code": f"invalid_{param}", "param": param, "message": message}
    store.transition(job_id, "failed", ("validating_files",), message, level="error", error=error)
    return False
