"""New job: upload a data file, see the data check before anything trains, then start with the settings.

GET  /jobs/new                 the upload form
POST /jobs/new                 store the file (serve.files.save_upload: the structural check; on an
                               error the page shows it with its lines, and nothing is stored or queued)
GET  /jobs/new/FILE_ID         the full check of a stored file for a model (tokens, cut-off, duplicates,
                               labels, one example with the tokens that carry loss, the time estimate)
                               and the settings form, with the values the defaults pick for this data
POST /jobs/new/FILE_ID/start   the job, through serve.jobs.submit_job as POST /v1/fine_tuning/jobs
"""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tunesmith.core.errors import TunesmithError
from tunesmith.data.check import DataReport
from tunesmith.models.base import list_bases
from tunesmith.registry import store as registry
from tunesmith.serve.datacheck import stored_path, user_text
from tunesmith.serve.files import save_upload
from tunesmith.serve.jobs import JobRequest, submit_job
from tunesmith.serve.protocol import APIError
from tunesmith.serve.web.render import page
from tunesmith.training.defaults import DEFAULT_LR
from tunesmith.workflows.check import check_file

router = APIRouter()
# The settings the form offers: (hyperparameter, label, what "auto" means). OpenAI's names where it has them.
SETTINGS = (
    ("n_epochs", "Epochs", "passes over the data"),
    ("batch_size", "Batch size", "examples per optimizer step"),
    ("learning_rate_multiplier", "Learning-rate multiplier", "scales the automatic learning rate"),
    ("lora_rank", "LoRA rank", "adapter size"),
    ("max_length", "Max length", "tokens per example"),
)
METHODS = ("lora", "full", "dpo")


def models() -> list[str]:
    """What a job can start from: the available bases, then every registry version (to build on)."""
    bases = [base["name"] for base in list_bases() if base["available"]]
    return bases + [version.ref for version in registry.list_models()]


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_form(request: Request, model: str | None = None) -> Response:
    return page_form(request, model=model)


def page_form(request: Request, status_code: int = 200, **context) -> Response:
    return page(request, "new_job.html", status_code=status_code, models=models(), **context)


@router.post("/jobs/new", response_class=HTMLResponse)
def upload(request: Request, file: UploadFile = File(...), model: str = Form(...)) -> Response:
    try:
        row = save_upload(request.app.state.store, file, request.app.state.settings.max_upload_bytes)
    except APIError as error:
        return page_form(request, status_code=400, model=model, error=error.message, filename=file.filename)
    return RedirectResponse(f"/jobs/new/{row['id']}?model={model}", status_code=303)


@router.get("/jobs/new/{file_id}", response_class=HTMLResponse)
async def check_page(request: Request, file_id: str, model: str) -> Response:
    return await _check_response(request, _file(request, file_id), model)


async def _check_response(
    request: Request, row, model: str, error: str | None = None, given: dict | None = None
) -> Response:
    report = await run_in_threadpool(_check, row, model)
    return page(
        request,
        "data_check.html",
        status_code=400 if error else 200,
        error=error,
        given=given or {},
        file=row,
        model=model,
        report=report,
        view=check_view(report, {str(stored_path(row)): row["filename"]}),
        settings=SETTINGS,
        defaults=implied_settings(report),
        methods=METHODS,
    )


@router.post("/jobs/new/{file_id}/start")
async def start(request: Request, file_id: str) -> Response:
    form = await request.form()
    row = _file(request, file_id)
    hyperparameters = {name: str(form.get(name, "")).strip() for name, _, _ in SETTINGS}
    chosen = {name: _number(value) for name, value in hyperparameters.items() if value}
    method = str(form.get("method", "lora"))
    if method != "lora":
        chosen["method"] = method
    body = JobRequest(
        model=str(form.get("model", "")),
        training_file=row["id"],
        suffix=str(form.get("suffix", "")).strip() or None,
        hyperparameters=chosen or None,  # type: ignore[arg-type]
    )
    try:
        job = await run_in_threadpool(submit_job, request.app.state.store, body)
    except APIError as error:  # a setting out of range, an unknown model: the form again, saying which
        return await _check_response(request, row, body.model, error.message, {**hyperparameters, "method": method})
    return RedirectResponse(f"/jobs/{job['id']}", status_code=303)


def _number(text: str) -> int | float | str:
    try:
        value = float(text)
    except ValueError:
        return text  # submit_job names the field and what it takes
    return int(value) if value.is_integer() else value


def _file(request: Request, file_id: str):
    row = request.app.state.store.get_file(file_id)
    if row is None:
        raise APIError(404, f"no uploaded file {file_id}")
    return row


def _check(row, model: str) -> DataReport:
    base = model
    if model not in [b["name"] for b in list_bases()]:
        try:
            base = registry.get(model).manifest.base.name  # a fine-tune: its base's tokenizer and template
        except TunesmithError as error:
            raise APIError(404, str(error)) from None
    return check_file(stored_path(row), base=base)


def check_view(report: DataReport, names: dict[str, str]) -> dict:
    """The report in the page's terms: issues naming the user's file, label balance, the preview."""
    issues = [{"severity": i.severity, "text": user_text(str(i), names), "hint": i.hint} for i in report.issues]
    balance = None
    if report.task == "classify":
        counts = Counter(e.label for e in report.train.examples)
        balance = [(label, counts.get(label, 0)) for label in report.labels or []]
    return {
        "issues": issues,
        "errors": sum(1 for i in report.issues if i.severity == "error"),
        "balance": balance,
        "examples": len(report.train.examples),
    }


def implied_settings(report: DataReport) -> dict[str, str]:
    """What "auto" becomes for this data (training.defaults, as the estimate applied it)."""
    if not report.ok or report.estimate is None:
        return {}
    n = len(report.train.examples)
    return {
        "n_epochs": str(report.estimate.epochs),
        "batch_size": str(report.estimate.batch_size),
        "learning_rate_multiplier": f"1 (lr {DEFAULT_LR['lora'][n >= 1000]:g})",
        "lora_rank": "16" if n < 10000 else "32",
        "max_length": str(report.max_length or ""),
    }
