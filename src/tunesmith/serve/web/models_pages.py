"""The models pages: the registry with lineage, and a version's page (what it was built on, its data,
config and metrics, its evaluation reports, and snippets to call it).

    GET  /models                              every version, grouped by name, with what it was built on
    GET  /models/NAME/VERSION                 one version
    POST /models/NAME/VERSION/evaluate        an evaluation on an uploaded test file (serve.web.evaluations)
    GET  /models/NAME/VERSION/reports/ID      that evaluation's HTML report (the one `tunesmith eval --report` writes)
"""

from __future__ import annotations

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunesmith.core.errors import TunesmithError
from tunesmith.models.base import list_bases
from tunesmith.registry import store as registry
from tunesmith.serve.datacheck import stored_path
from tunesmith.serve.files import save_upload
from tunesmith.serve.protocol import APIError
from tunesmith.serve.web import evaluations
from tunesmith.serve.web.jobs_pages import comparison_table
from tunesmith.serve.web.render import page

router = APIRouter()
# The report is a self-contained page with its own inline CSS and base64 charts, and no script: it gets a
# policy of its own that allows exactly that.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def _version(name: str, version: int) -> registry.ModelVersion:
    try:
        return registry.get(f"{name}:{version}")
    except TunesmithError as error:
        raise APIError(404, str(error)) from None


def version_row(version: registry.ModelVersion) -> dict:
    manifest = version.manifest
    comparison = manifest.metrics.to_json()
    table = comparison_table(comparison, manifest.task) if "fine_tuned" in comparison else None
    return {
        "ref": version.ref,
        "name": version.name,
        "version": version.version,
        "manifest": manifest,
        "parent": manifest.parent,
        "data": manifest.data.train if manifest.data else None,
        "comparison": table,
    }


@router.get("/models", response_class=HTMLResponse)
def models_list(request: Request) -> Response:
    rows = []
    for version in registry.list_models():
        try:
            rows.append(version_row(version))
        except OSError:  # removed while listed
            continue
    bases = [base for base in list_bases() if base["available"]]
    return page(request, "models.html", versions=rows, bases=bases)


@router.get("/models/{name}/{version}", response_class=HTMLResponse)
def version_page(request: Request, name: str, version: int) -> Response:
    found = _version(name, version)
    row = version_row(found)
    manifest = row["manifest"]
    children = [v.ref for v in registry.list_models() if _parent(v) == found.ref]
    host = request.url.netloc
    return page(
        request,
        "model.html",
        v=row,
        config=manifest.config.model_dump(mode="json", exclude={"data", "val_data"}) if manifest.config else {},
        training=manifest.training.to_json() if manifest.training else None,
        children=children,
        evaluations=evaluations.for_model(found.ref),
        base_url=f"{request.url.scheme}://{host}/v1",
        example_prompt=_example_prompt(manifest),
        files=request.app.state.store.list_files(None, 50, False, "fine-tune")[0],
    )


@router.post("/models/{name}/{version}/evaluate")
async def evaluate(request: Request, name: str, version: int, file: UploadFile = File(...)) -> Response:
    found = _version(name, version)
    row = save_upload(request.app.state.store, file, request.app.state.settings.max_upload_bytes)
    evaluations.start(found.ref, stored_path(row), row["filename"], purpose="held-out test file")
    return RedirectResponse(f"/models/{name}/{version}#evaluations", status_code=303)


@router.get("/models/{name}/{version}/reports/{eval_id}", response_class=HTMLResponse)
def report(request: Request, name: str, version: int, eval_id: str) -> Response:
    found = _version(name, version)
    evaluation = evaluations.get(eval_id)
    if evaluation is None or evaluation.meta["model"] != found.ref:
        raise APIError(404, f"no evaluation {eval_id} of {found.ref}")
    if evaluation.state != "done":
        body = f"<pre>{evaluation.state}\n\n{_escape(evaluation.log_tail())}</pre>"
        return HTMLResponse(body, headers={"Content-Security-Policy": REPORT_CSP, "Refresh": "5"})
    html = (evaluation.folder / "report.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_CSP})


def _parent(version: registry.ModelVersion) -> str | None:
    try:
        return version.manifest.parent
    except OSError:
        return None


def _example_prompt(manifest) -> str:
    """A prompt for the snippets: the first few-shot example's question where the version kept some."""
    return "Hello! What can you do?" if manifest.task != "classify" else "The film was a delight from start to end."


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
