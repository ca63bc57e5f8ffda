"""The jobs pages: the list, a job's page with its live loss chart, its event stream, and cancel.

A job's page is drawn from the job store on every load, and its chart and events then follow the job
through a server-sent event stream (``/jobs/ID/stream``) whose event ids are the store's sequence
numbers: a browser that loses the connection resumes with ``Last-Event-ID`` where it stopped, and a
reload replays the job from its first event. Nothing lives in the browser or in this process: the
job runs in the worker whether or not a page watches it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunesmith.core.errors import TunesmithError
from tunesmith.evaluation.compare import PRIMARY
from tunesmith.registry import store as registry
from tunesmith.serve import jobs
from tunesmith.serve.job_runner import comparison_message
from tunesmith.serve.job_store import UNFINISHED, JobStore
from tunesmith.serve.protocol import APIError
from tunesmith.serve.web.render import page

router = APIRouter()
POLL_S = 0.5  # how often a stream looks for new events (the worker writes one a step at most)
KEEPALIVE_S = 15.0  # a comment line now and then, so proxies and browsers keep an idle stream open
SYSTEMS = {"base": "base model, zero-shot", "few_shot": "base model, few-shot prompt", "fine_tuned": "fine-tuned"}


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _job(request: Request, job_id: str):
    row = _store(request).get_job(job_id)
    if row is None:
        raise APIError(404, f"no fine-tuning job {job_id}")
    return row


def job_summary(store: JobStore, row) -> dict:
    """What the list and the job page show of a job, beside its row: its data file's name, how long it ran,
    its error, and (once it succeeded) the closing comparison from the version's manifest."""
    training = store.get_file(row["training_file"])
    started, finished = row["started_at"], row["finished_at"]
    table = None
    if row["fine_tuned_model"]:
        try:
            manifest = registry.get(row["fine_tuned_model"]).manifest
        except (TunesmithError, OSError):  # the version was removed since
            manifest = None
        comparison = manifest.metrics.to_json() if manifest is not None else {}
        if manifest is not None and "fine_tuned" in comparison:
            table = comparison_table(comparison, manifest.task)
    return {
        "row": row,
        "data": training["filename"] if training else row["training_file"],
        "duration": (finished or time.time()) - started if started else None,
        "error": json.loads(row["error"])["message"] if row["error"] else None,
        "comparison": table,
    }


@router.get("/jobs", response_class=HTMLResponse)
def jobs_list(request: Request) -> Response:
    store = _store(request)
    rows, _ = store.list_jobs(None, 100)
    return page(request, "jobs.html", jobs=[job_summary(store, row) for row in rows])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    store = _store(request)
    row = _job(request, job_id)
    others, _ = store.list_jobs(None, 100)
    return page(
        request,
        "job.html",
        job=job_summary(store, row),
        unfinished=row["status"] in UNFINISHED,
        others=[other for other in others if other["id"] != job_id],
    )


@router.post("/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: str) -> Response:
    _job(request, job_id)
    jobs.cancel(_store(request), job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/jobs/{job_id}/metrics.json")
def metrics(request: Request, job_id: str) -> JSONResponse:
    """Every step's losses of a job (the chart's overlay of another run)."""
    _job(request, job_id)
    points = []
    seq = 0
    while rows := _store(request).events_since(job_id, seq):
        seq = rows[-1]["seq"]
        points += [json.loads(r["data"]) for r in rows if r["type"] == "metrics" and _is_step(r)]
    return JSONResponse({"job": job_id, "points": points})


@router.get("/jobs/{job_id}/stream")
async def stream(request: Request, job_id: str) -> StreamingResponse:
    _job(request, job_id)
    last = request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() else 0
    return StreamingResponse(
        _events(request, job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(request: Request, job_id: str, seq: int) -> AsyncIterator[str]:
    store = _store(request)
    status = None
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        rows = await run_in_threadpool(store.events_since, job_id, seq)
        for row in rows:
            seq = row["seq"]
            yield _sse(_kind(row), _event_data(row), seq)
        row = await run_in_threadpool(store.job, job_id)
        if row["status"] != status:
            status = row["status"]
            yield _sse("status", {"status": status, "fine_tuned_model": row["fine_tuned_model"]})
        if rows or status != row["status"]:
            quiet_since = time.monotonic()
        if status not in UNFINISHED and not rows:
            yield _sse("end", {"status": status})
            return
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_S)


def _is_step(row) -> bool:
    return row["data"] is not None and "train_loss" in json.loads(row["data"])


def _kind(row) -> str:
    """The stream's event type: ``step`` (a training step's losses), ``checkpoint``, ``comparison`` (the
    closing one) or ``message``."""
    data = json.loads(row["data"]) if row["data"] else {}
    if row["type"] == "metrics":
        return "step" if "train_loss" in data else "comparison"
    return "checkpoint" if row["message"].startswith("Checkpoint created") else "message"


def _event_data(row) -> dict:
    data = json.loads(row["data"]) if row["data"] else {}
    return {"message": row["message"], "level": row["level"], "created_at": row["created_at"], "data": data}


def _sse(event: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def comparison_table(comparison: dict, task: str) -> dict:
    """The closing comparison as the page shows it (jobs and models): the primary metric and the others of
    each system, the differences with their 95% intervals, and the verdict."""
    primary = PRIMARY[task][0] if task in PRIMARY else next(iter(comparison.get("fine_tuned", {})), "")
    metrics = [primary] + [m for m in ("macro_f1", "rouge_l", "exact_match", "perplexity", "loss") if m != primary]
    present = [m for m in metrics if any(m in comparison.get(s, {}) for s in SYSTEMS)]
    rows = [
        {"system": label, "cells": [comparison[s].get(m) for m in present], "shots": comparison[s].get("shots")}
        for s, label in SYSTEMS.items()
        if s in comparison
    ]
    differences = [
        {"against": SYSTEMS[s], **d} for s, d in (comparison.get("significance") or {}).items() if s in SYSTEMS
    ]
    return {
        "metrics": present,
        "rows": rows,
        "differences": differences,
        "helped": comparison.get("helped"),
        "helped_clearly": comparison.get("helped_clearly"),
        "message": comparison_message(task, comparison) if task in PRIMARY else None,  # type: ignore[arg-type]
    }
