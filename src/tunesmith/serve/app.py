"""The FastAPI application: settings, shared state, the OpenAI error shape, the /v1 routes and the page.

    /v1/models, /v1/chat/completions, /v1/completions   using models      (serve.completions)
    /v1/files                                            uploads           (serve.files)
    /v1/fine_tuning/jobs                                 making models     (serve.jobs)
    /, /jobs, /models, /playground, /review              the web page      (serve.web)

Training never runs in this process: jobs go into the SQLite queue and a separate worker process
(serve.worker) runs them, so answering requests stays responsive while a job trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.core import paths
from tunesmith.core.errors import TunesmithError
from tunesmith.core.version import VERSION
from tunesmith.serve import catalog, completions, files, jobs
from tunesmith.serve.batcher import Batcher
from tunesmith.serve.job_store import JobStore, UnknownCursor
from tunesmith.serve.model_pool import ModelPool
from tunesmith.serve.protocol import (
    APIError,
    api_error_response,
    error_body,
    require_api_key,
    validation_error_response,
)
from tunesmith.serve.web import site

log = logging.getLogger("tunesmith.serve")


@dataclass(frozen=True)
class ServeSettings:
    """What a server is started with (``tunesmith serve`` flags)."""

    api_key: str | None = None  # required on every /v1 call when set
    max_upload_bytes: int = 100 * 2**20  # uploads above this are refused with 413
    model_memory_bytes: int = 3 * 2**30  # loaded models beyond this are evicted, least recently used first
    precision: str = "auto"  # of the served weights (models.precision.precision_dtype)
    max_batch: int = 64  # sequences decoded together (serve.batcher); more requests wait in line
    max_queue: int = 256  # requests waiting in line; beyond it a request is refused with 429


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, which the page's policy of
    # 'self' (and an offline machine) refuses. The OpenAPI document stays at /openapi.json.
    app = FastAPI(
        title="tunesmith",
        version=VERSION,
        description="OpenAI-compatible API for using and fine-tuning small language models locally.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    pool = app.state.pool = ModelPool(settings.model_memory_bytes)
    # LoRA versions are loaded as adapters over base weights the pool holds once (serve.catalog)
    pool.loader = partial(catalog.load, precision=settings.precision, shared=pool.get)
    app.state.store = JobStore(paths.serve_db())
    batcher = app.state.batcher = Batcher(settings.max_batch, settings.max_queue)
    batcher.before_work = completions.share_cores(app.state.store)
    batcher.keep = pool.holds

    # FastAPI's decorator, called directly, registers each handler the same way as add_exception_handler,
    # whose type (a handler of any Exception) refuses handlers of one exception class
    app.exception_handler(APIError)(api_error_response)
    app.exception_handler(RequestValidationError)(validation_error_response)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(TunesmithError)(_tunesmith_error)
    app.exception_handler(UnknownCursor)(_unknown_cursor)
    app.exception_handler(Exception)(_unexpected_error)

    for router in (completions.router, files.router, jobs.router):
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_api_key)])

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    site.install(app)  # the web page at / (serve.web), after the handlers above, some of which it refines

    return app


def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    message = error.detail if isinstance(error.detail, str) else "request failed"
    return JSONResponse(error_body(error.status_code, message), status_code=error.status_code)


def _unknown_cursor(_request: Request, error: UnknownCursor) -> JSONResponse:
    return JSONResponse(error_body(404, str(error), param="after"), status_code=404)


def _tunesmith_error(_request: Request, error: TunesmithError) -> JSONResponse:
    return JSONResponse(error_body(400, str(error)), status_code=400)


def _unexpected_error(_request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=error)
    return JSONResponse(error_body(500, f"internal error: {type(error).__name__}: {error}"), status_code=500)
