"""The review queue: reviewers judge a model's answers, and their corrections train the next version.

    GET  /review                      the queues, and a form to start one (a prompts or test file, a model)
    POST /review                      a new queue (feedback.queue)
    POST /review/add                  a prompt from the playground into the model's newest queue
    GET  /review/ID                   a queue: progress, the item to review, what was reviewed, the jobs
    GET  /review/ID/item              the next item for this reviewer (an htmx fragment)
    POST /review/ID/verdict           good, bad with a correction, or the better of two answers; the next item
    POST /review/ID/train, /evaluate  the next version (serve.web.next_version)

Several reviewers at once: each item is lent to one reviewer's session for LEASE_S while they look at it,
so two people are not shown the same prompt, and recording a verdict re-reads the corrections file under
the queue's lock, so a prompt reviewed by someone else meanwhile is not recorded twice (the reviewer is
told, and gets the next item). The verdicts are lines of the corrections format ``tunesmith review``
writes, in the queue's own file; "train next version" runs ``data from-corrections``'s conversion on it.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
import zlib
from pathlib import Path

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tunesmith.core.errors import DataError, TunesmithError
from tunesmith.feedback import corrections
from tunesmith.feedback import queue as queues
from tunesmith.feedback.session import ReviewPrompt, ReviewSession
from tunesmith.serve import catalog, generation_thread
from tunesmith.serve.batcher import Request as Generation
from tunesmith.serve.completions import chat_prompt, fit_new_tokens
from tunesmith.serve.files import copy_limited, display_name
from tunesmith.serve.protocol import APIError
from tunesmith.serve.sampling import Sampling
from tunesmith.serve.web import evaluations
from tunesmith.serve.web.jobs_pages import job_summary
from tunesmith.serve.web.new_job import models
from tunesmith.serve.web.render import page
from tunesmith.serve.web.security import Session

router = APIRouter()
LEASE_S = 600  # an item shown to a reviewer is kept from others this long (then it is anyone's again)
MAX_ANSWER_TOKENS = 256  # a queue's default answer length (its form can set another)
ALTERNATIVE_TEMPERATURE = 0.8  # the second answer of a comparison: a sample, as a deployed model might say
_locks: dict[str, threading.Lock] = {}
_leases: dict[str, dict[str, tuple[str, float]]] = {}  # queue -> prompt key -> (session id, until)
_guard = threading.Lock()


def _lock(queue_id: str) -> threading.Lock:
    with _guard:
        return _locks.setdefault(queue_id, threading.Lock())


def queue_by_id(queue_id: str) -> queues.ReviewQueue:
    queue = queues.get(queue_id)
    if queue is None:
        raise APIError(404, f"no review queue {queue_id}")
    return queue


@router.get("/review", response_class=HTMLResponse)
def review_home(request: Request, model: str | None = None, error: str | None = None) -> Response:
    listed = []
    for queue in queues.all_queues():
        progress = queue.session().progress()
        listed.append({"queue": queue, "meta": queue.meta, "progress": progress})
    return page(request, "review_list.html", queues=listed, models=models(), model=model, error=error)


@router.post("/review", response_class=HTMLResponse)
def create_queue(
    request: Request,
    file: UploadFile = File(...),
    model: str = Form(...),
    name: str = Form(""),
    compare: str = Form(""),
    answer_tokens: int = Form(MAX_ANSWER_TOKENS, ge=1, le=2048),
) -> Response:
    filename = display_name(file.filename or "") or "prompts.jsonl"
    try:
        catalog.resolve(model)
        prompts = _read_prompts(file, filename, request.app.state.settings.max_upload_bytes)
    except (APIError, TunesmithError) as error:
        message = error.message if isinstance(error, APIError) else str(error)
        return page(request, "review_list.html", 400, queues=[], models=models(), model=model, error=message)
    queue = queues.create(model, name.strip() or filename, prompts, bool(compare), filename, answer_tokens)
    return RedirectResponse(f"/review/{queue.id}", status_code=303)


@router.post("/review/add")
def add_from_playground(request: Request, model: str = Form(...), prompt: str = Form(...)) -> Response:
    """A prompt tried in the playground, queued for review of ``model`` (its newest queue, or a new one)."""
    catalog.resolve(model)
    found = [q for q in queues.all_queues() if q.meta["model"] == model]
    if found:
        found[0].add_prompts([prompt])
        queue = found[0]
    else:
        queue = queues.create(model, f"from the playground ({model})", [prompt], False, "playground", MAX_ANSWER_TOKENS)
    return RedirectResponse(f"/review/{queue.id}", status_code=303)


@router.get("/review/{queue_id}", response_class=HTMLResponse)
def queue_page(request: Request, queue_id: str) -> Response:
    queue = queue_by_id(queue_id)
    session = queue.session()
    reviewed = corrections_list(queue)
    store = request.app.state.store
    trained = []
    for job in queue.meta.get("jobs", []):
        row = store.get_job(job["id"])
        if row is not None:
            model = row["fine_tuned_model"]
            trained.append(
                {
                    "job": job,
                    "summary": job_summary(store, row),
                    "evaluations": evaluations.for_model(model) if model else [],
                }
            )
    return page(
        request,
        "review_queue.html",
        queue=queue,
        meta=queue.meta,
        progress=session.progress(),
        reviewed=reviewed,
        trained=trained,
        pairs=sum(1 for c in reviewed if c.verdict == "bad" and c.response.strip()),
    )


@router.get("/review/{queue_id}/item", response_class=HTMLResponse)
async def item(request: Request, queue_id: str) -> Response:
    queue = queue_by_id(queue_id)
    return await _item_fragment(request, queue)


@router.post("/review/{queue_id}/verdict", response_class=HTMLResponse)
async def verdict(
    request: Request,
    queue_id: str,
    key: str = Form(...),
    action: str = Form(...),
    correction: str = Form(""),
) -> Response:
    """``action``: good, bad (with ``correction``), a (answer A is the better), b (answer B), or skip."""
    queue = queue_by_id(queue_id)
    session_id = request.state.session.id
    note = None
    if action == "skip":
        _release(queue.id, key, session_id, skip=True)
    else:
        note = await run_in_threadpool(_record, queue, key, action, correction)
        _release(queue.id, key, session_id)
    return await _item_fragment(request, queue, note)


def _read_prompts(file: UploadFile, filename: str, limit: int) -> list:
    """The prompts of an uploaded file (not training data: the data check's rules do not apply, the prompts
    file's do), read from a temporary copy whose name is ours; the user's name only labels the messages."""
    queues.review_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=queues.review_dir(), prefix=".upload-", suffix=".jsonl") as handle:
        copy_limited(file.file, handle, limit)
        handle.flush()
        try:
            return queues.prompts_from_file(Path(handle.name))
        except DataError as error:
            raise TunesmithError(str(error).replace(handle.name, filename)) from None


def corrections_list(queue: queues.ReviewQueue) -> list[corrections.Correction]:
    if not queue.corrections_path.exists():
        return []
    result = corrections.convert(queue.corrections_path)
    return result.kept


async def _item_fragment(request: Request, queue: queues.ReviewQueue, note: str | None = None) -> Response:
    session: Session = request.state.session
    pending = await run_in_threadpool(lambda: queue.session())
    prompt = _lease_next(queue.id, pending, session.id)
    if prompt is None:
        return page(request, "_review_item.html", queue=queue, prompt=None, note=note, progress=pending.progress())
    answers = await _answers(request, queue, prompt)
    return page(
        request,
        "_review_item.html",
        queue=queue,
        prompt=prompt,
        answers=answers,
        note=note,
        progress=pending.progress(),
    )


def _lease_next(queue_id: str, session: ReviewSession, reviewer: str) -> ReviewPrompt | None:
    """The first prompt without a verdict that no other reviewer is looking at, lent to ``reviewer``."""
    now = time.monotonic()
    with _guard:
        leases = _leases.setdefault(queue_id, {})
        for key, (_holder, until) in list(leases.items()):
            if until < now:
                del leases[key]
        pending = session.pending()
        mine = [p for p in pending if leases.get(p.key, ("", 0))[0] == reviewer]
        free = [p for p in pending if p.key not in leases]
        chosen = (mine or free or [None])[0]  # type: ignore[list-item]
        if chosen is not None:
            leases[chosen.key] = (reviewer, now + LEASE_S)
        return chosen


def _release(queue_id: str, key: str, reviewer: str, skip: bool = False) -> None:
    """Drop ``reviewer``'s lease on ``key``; a skipped item stays with them briefly, so the next one differs."""
    with _guard:
        leases = _leases.setdefault(queue_id, {})
        if leases.get(key, ("", 0))[0] == reviewer:
            if skip:
                leases[key] = ("skipped:" + reviewer, time.monotonic() + 60)
            else:
                del leases[key]


async def _answers(request: Request, queue: queues.ReviewQueue, prompt: ReviewPrompt) -> dict:
    """The model's answer to ``prompt`` (and a sampled second one for a comparing queue): generated once,
    in the batch /v1 requests decode in, and kept with the queue."""
    cached = queue.answers().get(prompt.key)
    if cached is not None:
        return cached
    pool = request.app.state.pool
    model = queue.meta["model"]
    loaded = await run_in_threadpool(lambda: pool.get(catalog.resolve(model)))
    compare = queue.meta.get("compare", False)
    max_tokens = queue.meta.get("answer_tokens", MAX_ANSWER_TOKENS)

    ids = await run_in_threadpool(chat_prompt, loaded, prompt.messages)
    max_new = fit_new_tokens(loaded, [ids], max_tokens, "messages", strict=False)
    batcher = request.app.state.batcher
    asked = [generation_thread.answer(batcher, Generation(loaded, [ids], 1, Sampling(max_new, temperature=0)))]
    if compare:
        # seeded by the prompt, so the second answer is the same however often it is generated
        seed = zlib.crc32(prompt.key.encode())
        sampled = Sampling(max_new, temperature=ALTERNATIVE_TEMPERATURE, seed=seed)
        asked.append(generation_thread.answer(batcher, Generation(loaded, [ids], 1, sampled)))
    answers = [choices[0].text for choices in await asyncio.gather(*asked)]
    answer, alternative = answers[0], answers[1] if compare else None
    fresh = queue.answers().get(prompt.key)  # another reviewer's request may have kept one meanwhile
    if fresh is not None:
        return fresh
    queue.add_answer(prompt.key, answer, alternative)
    return {"key": prompt.key, "answer": answer, "alternative": alternative}


def _record(queue: queues.ReviewQueue, key: str, action: str, correction: str) -> str | None:
    """Record a verdict under the queue's lock; a note for the reviewer when it was not recorded."""
    with _lock(queue.id):
        session = queue.session()  # the file as it is now: another reviewer may have answered this prompt
        prompt = next((p for p in session.prompts if p.key == key), None)
        if prompt is None:
            return "That prompt is not in this queue."
        if prompt.key in session.done_keys:
            return "Another reviewer has just reviewed that one; here is the next."
        answers = queue.answers().get(key)
        if answers is None:
            return "That answer was never shown; here it is again."
        answer, alternative = answers["answer"], answers.get("alternative")
        try:
            if action == "good":
                session.record(prompt, answer, "good")
            elif action == "bad":
                if not correction.strip():
                    return "A bad answer needs the better answer written in; nothing was recorded."
                session.record(prompt, answer, "bad", correction)
            elif action in ("a", "b") and alternative is not None:
                chosen, rejected = (answer, alternative) if action == "a" else (alternative, answer)
                if chosen == rejected:
                    session.record(prompt, answer, "good")
                else:  # the better one corrects the other: a supervised row and a preference pair
                    session.record(prompt, rejected, "bad", chosen)
            else:
                return f"Unknown action {action!r}; nothing was recorded."
        except TunesmithError as error:
            return f"Not recorded: {error}"
    return None
