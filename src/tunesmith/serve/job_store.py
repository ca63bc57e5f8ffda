"""The persistent queue of ``tunesmith serve``: files, fine-tuning jobs, their events and checkpoints.

One SQLite file, ``$TUNESMITH_HOME/serve.db``, shared by three kinds of process: the API (many
threads), the worker and a job's runner. Every call opens its own connection (cheap for SQLite and
safe across threads and processes); WAL lets readers go on while one process writes, and the busy
timeout makes writers wait their turn instead of failing.

A job's status only moves through ``transition``: one conditional UPDATE (``... WHERE status IN
(...)``) and its event in the same transaction. So a cancel from the API is never overwritten by
the worker finishing the job, and a job can never be claimed twice.

    validating_files -> queued -> running -> succeeded | failed | cancelled
                     \\-> failed            (running -> queued when the server stops)

Rows come back as ``sqlite3.Row``; the ``*_object`` functions turn them into the OpenAI objects.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tunesmith.core.config import Method
from tunesmith.core.results import Result
from tunesmith.serve.protocol import new_id

UNFINISHED = ("validating_files", "queued", "running")
BUSY_TIMEOUT_S = 30

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,            -- the user's name, shown only; never part of a path
    stored TEXT NOT NULL,              -- the name under files/: the id and an allowed extension
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    hyperparameters TEXT NOT NULL,     -- JSON as requested ("auto" where not given)
    resolved TEXT,                     -- JSON of the numbers used, once training has started
    registry_name TEXT NOT NULL,       -- the result is published as a version of this name
    fine_tuned_model TEXT,
    trained_tokens INTEGER,
    error TEXT,                        -- JSON {code, message, param} of a failed job
    metadata TEXT,
    runner_pid INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    model TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (job_id, step)
);
"""


class UnknownCursor(LookupError):
    """``after`` named no object of the list being paged (the API answers 404 naming ``after``)."""


class JobStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so read-then-write cannot interleave."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _page(
        self, table: str, where: str, params: list, after: str | None, limit: int, ascending: bool = False
    ) -> tuple[list[sqlite3.Row], bool]:
        """Rows newest first (or oldest first), starting after the object ``after``; and whether more follow."""
        with self._connect() as db:
            if after is not None:
                cursor = db.execute(f"SELECT seq FROM {table} WHERE id = ? AND {where}", [after, *params]).fetchone()
                if cursor is None:
                    raise UnknownCursor(f"No {table[:-1]} with id {after!r} to page after")
                where, params = f"{where} AND seq {'>' if ascending else '<'} ?", [*params, cursor["seq"]]
            rows = db.execute(
                f"SELECT * FROM {table} WHERE {where} ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
        return rows[:limit], len(rows) > limit

    # ------------------------------------------------------------------ files

    def add_file(self, file_id: str, filename: str, stored: str, size: int, purpose: str) -> sqlite3.Row:
        with self._connect() as db:
            db.execute(
                "INSERT INTO files (id, filename, stored, bytes, purpose, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, filename, stored, size, purpose, int(time.time())),
            )
        return _written(self.get_file(file_id))

    def get_file(self, file_id: str) -> sqlite3.Row | None:
        with self._connect() as db:
            return db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()

    def list_files(
        self, after: str | None, limit: int, ascending: bool = False, purpose: str | None = None
    ) -> tuple[list[sqlite3.Row], bool]:
        where, params = ("purpose = ?", [purpose]) if purpose else ("1", [])
        return self._page("files", where, params, after, limit, ascending)

    def delete_file(self, file_id: str) -> sqlite3.Row | None:
        """Delete the row unless an unfinished job uses the file; returns that job (None when deleted)."""
        with self._transaction() as db:
            user = db.execute(
                f"SELECT * FROM jobs WHERE status IN ({_marks(UNFINISHED)}) AND "
                "(training_file = ? OR validation_file = ?) ORDER BY seq LIMIT 1",
                (*UNFINISHED, file_id, file_id),
            ).fetchone()
            if user is None:
                db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            return user

    # ------------------------------------------------------------------ jobs

    def create_job(
        self,
        job_id: str,
        model: str,
        training_file: str,
        validation_file: str | None,
        suffix: str | None,
        seed: int,
        hyperparameters: dict,
        registry_name: str,
        metadata: dict | None,
    ) -> sqlite3.Row:
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, status, model, training_file, validation_file, suffix, seed, "
                "hyperparameters, registry_name, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    "validating_files",
                    model,
                    training_file,
                    validation_file,
                    suffix,
                    seed,
                    json.dumps(hyperparameters),
                    registry_name,
                    None if metadata is None else json.dumps(metadata),
                    int(time.time()),
                ),
            )
        return _written(self.get_job(job_id))

    def job(self, job_id: str) -> sqlite3.Row:
        """A job known to exist (created by this server: jobs are never deleted)."""
        return _written(self.get_job(job_id))

    def get_job(self, job_id: str) -> sqlite3.Row | None:
        with self._connect() as db:
            return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def list_jobs(self, after: str | None, limit: int) -> tuple[list[sqlite3.Row], bool]:
        return self._page("jobs", "1", [], after, limit)

    def jobs_with_status(self, *statuses: str) -> list[sqlite3.Row]:
        """Oldest first."""
        with self._connect() as db:
            return db.execute(
                f"SELECT * FROM jobs WHERE status IN ({_marks(statuses)}) ORDER BY seq", statuses
            ).fetchall()

    def update_job(self, job_id: str, **fields) -> None:
        """Fields that are not the status (``resolved``, ``runner_pid``): no condition needed."""
        assert "status" not in fields, "statuses change only through transition()"
        with self._connect() as db:
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{key} = ?' for key in fields)} WHERE id = ?",
                (*(_column(value) for value in fields.values()), job_id),
            )

    def transition(
        self,
        job_id: str,
        status: str,
        expected: tuple[str, ...],
        message: str | None = None,
        level: str = "info",
        data: dict | None = None,
        **fields,
    ) -> bool:
        """Move the job to ``status`` if it is in one of ``expected``, setting ``fields`` and recording the
        event with it; False (and nothing written) when it was not."""
        if status in ("succeeded", "failed", "cancelled"):
            fields.setdefault("finished_at", int(time.time()))
        fields["status"] = status
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET {', '.join(f'{key} = ?' for key in fields)} "
                f"WHERE id = ? AND status IN ({_marks(expected)})",
                (*(_column(value) for value in fields.values()), job_id, *expected),
            ).rowcount
            if changed and message:
                _insert_event(db, job_id, message, level, "message", data)
        return bool(changed)

    def claim_next(self) -> sqlite3.Row | None:
        """The oldest queued job, now marked running (one transaction: never handed out twice)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?", (int(time.time()), row["id"]))
        return self.get_job(row["id"])

    # ------------------------------------------------------------------ events and checkpoints

    def add_event(
        self, job_id: str, message: str, level: str = "info", type: str = "message", data: dict | None = None
    ) -> None:
        with self._connect() as db:
            _insert_event(db, job_id, message, level, type, data)

    def list_events(self, job_id: str, after: str | None, limit: int) -> tuple[list[sqlite3.Row], bool]:
        return self._page("events", "job_id = ?", [job_id], after, limit)

    def events_since(self, job_id: str, seq: int, limit: int = 1000) -> list[sqlite3.Row]:
        """A job's events after the one numbered ``seq`` (0: from the first), oldest first: the page's live
        stream sends ``seq`` as the event id, so a browser that reconnects resumes where it was."""
        with self._connect() as db:
            return db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?", (job_id, seq, limit)
            ).fetchall()

    def last_metrics_step(self, job_id: str) -> int:
        """The last training step already reported (steps replayed after a restart are not reported twice)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT MAX(CAST(json_extract(data, '$.step') AS INTEGER)) AS step FROM events "
                "WHERE job_id = ? AND type = 'metrics'",
                (job_id,),
            ).fetchone()
        return row["step"] or 0

    def add_checkpoint(self, job_id: str, step: int, model: str, metrics: dict, replace: bool = False) -> bool:
        """One checkpoint per step: a replay after a restart keeps the first record, the published model
        (``replace``) takes the place of the checkpoint at its step. False when nothing was written."""
        conflict = "DO UPDATE SET model = excluded.model, metrics = excluded.metrics" if replace else "DO NOTHING"
        with self._connect() as db:
            written = db.execute(
                "INSERT INTO checkpoints (id, job_id, step, model, metrics, created_at) "
                f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, step) {conflict}",
                (new_id("ftckpt"), job_id, step, model, json.dumps(metrics), int(time.time())),
            )
            return bool(written.rowcount)

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[sqlite3.Row], bool]:
        return self._page("checkpoints", "job_id = ?", [job_id], after, limit)


def _written(row: sqlite3.Row | None) -> sqlite3.Row:
    """The row just inserted; files and jobs are never deleted, so it is there."""
    assert row is not None
    return row


def _insert_event(db: sqlite3.Connection, job_id: str, message: str, level: str, type: str, data: dict | None) -> None:
    db.execute(
        "INSERT INTO events (id, job_id, created_at, level, type, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (new_id("ftevent"), job_id, int(time.time()), level, type, message, None if data is None else json.dumps(data)),
    )


def _marks(values: tuple) -> str:
    return ", ".join("?" * len(values))


def _column(value):
    return json.dumps(value) if isinstance(value, (dict, list)) else value


# ---------------------------------------------------------------------- rows -> OpenAI objects


def file_object(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def job_hyperparameters(row: sqlite3.Row) -> dict:
    """The numbers used once training has started, else what was asked for ("auto" where not given)."""
    return json.loads(row["resolved"] or row["hyperparameters"])


def job_method(row: sqlite3.Row) -> Method:
    """The training method the job asked for (jobs.py stores "dpo" for OpenAI's DPO method)."""
    return json.loads(row["hyperparameters"]).get("method", "lora")


def job_object(row: sqlite3.Row) -> dict:
    hyperparameters = job_hyperparameters(row)
    kind = "dpo" if job_method(row) == "dpo" else "supervised"  # OpenAI's method.type
    return {
        "object": "fine_tuning.job",
        "id": row["id"],
        "model": row["model"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "local",
        "result_files": [],
        "status": row["status"],
        "validation_file": row["validation_file"],
        "training_file": row["training_file"],
        "hyperparameters": hyperparameters,
        "trained_tokens": row["trained_tokens"],
        "error": json.loads(row["error"]) if row["error"] else None,
        "seed": row["seed"],
        "estimated_finish": None,
        "integrations": [],
        "method": {"type": kind, kind: {"hyperparameters": hyperparameters}},
        "user_provided_suffix": row["suffix"],
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
    }


# OpenAI's hyperparameter names for TrainConfig fields; a job's other hyperparameters are TrainConfig names.
HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batch_size", "learning_rate_multiplier": "lr_multiplier"}


class StepEventData(Result):
    """The ``data`` of a job's per-step metrics event (type "metrics"), as OpenAI's jobs report them."""

    step: int
    total_steps: int
    train_loss: float
    tokens_per_s: float
    epoch: float
    valid_loss: float | None = None  # only on steps that validated


class JobEvent(Result):
    """``fine_tuning.job.event``: one line of a job's history (messages, per-step metrics, the comparison)."""

    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any]
    type: Literal["message", "metrics"]


def event_object(row: sqlite3.Row) -> JobEvent:
    return JobEvent(
        object="fine_tuning.job.event",
        id=row["id"],
        created_at=row["created_at"],
        level=row["level"],
        message=row["message"],
        data=json.loads(row["data"]) if row["data"] else {},
        type=row["type"],
    )


def checkpoint_object(row: sqlite3.Row) -> dict:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row["id"],
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["model"],
        "fine_tuning_job_id": row["job_id"],
        "metrics": json.loads(row["metrics"]),
        "step_number": row["step"],
    }
