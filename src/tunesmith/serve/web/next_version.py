"""Train the next version from a review queue, and measure it on what the reviewers corrected.

POST /review/ID/train             corrections -> training data -> a job on top of the reviewed model
POST /review/ID/evaluate/JOB      the new version on the corrected items, against the reviewed version
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response

from tunesmith.feedback import corrections
from tunesmith.serve.files import save_upload
from tunesmith.serve.jobs import JobRequest, submit_job
from tunesmith.serve.protocol import APIError
from tunesmith.serve.web import evaluations
from tunesmith.serve.web.review_pages import queue_by_id

router = APIRouter()


@router.post("/review/{queue_id}/train")
def train(request: Request, queue_id: str, method: str = Form("supervised")) -> Response:
    """The queue's corrections converted (supervised rows; preference pairs for DPO) and a job started on
    top of the reviewed model, as ``data from-corrections`` and ``tunesmith train --base MODEL`` would."""
    queue = queue_by_id(queue_id)
    if not queue.corrections_path.exists():
        raise APIError(400, "nothing reviewed yet: judge some answers first")
    result = corrections.convert(queue.corrections_path)
    if result.errors:
        raise APIError(400, f"{queue.corrections_path.name} has errors: {result.errors[0]}")
    out = queue.folder / f"data-{int(time.time())}"
    written = corrections.write_outputs(result, out)
    source = out / (corrections.PAIRS_FILE if method == "dpo" else corrections.SFT_FILE)
    if source not in written:
        raise APIError(400, "no preference pairs: DPO needs bad answers with a correction", param="method")
    store = request.app.state.store
    with open(source, "rb") as handle:
        upload = UploadFile(file=handle, filename=f"{queue.id}-{source.name}")
        row = save_upload(store, upload, request.app.state.settings.max_upload_bytes)
    hyperparameters = {"method": "dpo"} if method == "dpo" else None
    body = JobRequest(
        model=queue.meta["model"],
        training_file=row["id"],
        suffix=None,
        hyperparameters=hyperparameters,  # type: ignore[arg-type]
        metadata={"review_queue": queue.id},
    )
    job = submit_job(store, body)
    queue.add_job(job["id"], method, {path.name: rows for path, rows in written.items()})
    return RedirectResponse(f"/review/{queue.id}#trained", status_code=303)


@router.post("/review/{queue_id}/evaluate/{job_id}")
def evaluate_trained(request: Request, queue_id: str, job_id: str) -> Response:
    """The version a queue's job made, measured on the corrected items (the supervised rows of its data)
    against the version that was reviewed (its parent) and the base model."""
    queue = queue_by_id(queue_id)
    job = next((j for j in queue.meta.get("jobs", []) if j["id"] == job_id), None)
    row = request.app.state.store.get_job(job_id)
    if job is None or row is None or not row["fine_tuned_model"]:
        raise APIError(404, f"no finished job {job_id} of this queue")
    data = sorted(queue.folder.glob(f"data-*/{corrections.SFT_FILE}"))[-1]
    evaluations.start(row["fine_tuned_model"], data, f"{queue.id}: corrected items", purpose="corrected items")
    return RedirectResponse(f"/review/{queue.id}#trained", status_code=303)
