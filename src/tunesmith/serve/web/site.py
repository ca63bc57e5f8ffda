"""The page's place in the app: its routers behind the session (security.require_session), its static
files, the login form, and the security headers on every page response.

    /login, /logout                     the key, once (only when the server has one)
    /jobs, /jobs/new, /jobs/ID, ...     serve.web.jobs_pages, serve.web.new_job
    /models, /models/NAME/VERSION       serve.web.models_pages
    /playground                         serve.web.playground
    /review                             serve.web.review_pages, serve.web.next_version
    /static/...                         the page's own CSS and JavaScript, and the vendored htmx and uPlot

The page is a client of the services /v1 uses (the job store, serve.files.save_upload,
serve.jobs.submit_job, the model pool and generation thread, the registry): it renders their results as
HTML instead of JSON, and keeps no logic of its own about jobs, files or models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith.core.errors import TunesmithError
from tunesmith.serve.protocol import APIError
from tunesmith.serve.web import jobs_pages, models_pages, new_job, next_version, playground, review_pages, security
from tunesmith.serve.web.render import TEMPLATES, page

STATIC = Path(__file__).parent / "static"
PAGE_ROUTERS = (
    new_job.router,
    jobs_pages.router,
    models_pages.router,
    playground.router,
    review_pages.router,
    next_version.router,
)


def install(app: FastAPI) -> None:
    app.state.web_secret = security.secret()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for router in PAGE_ROUTERS:
        app.include_router(router, dependencies=[Depends(security.require_session)], include_in_schema=False)
    app.include_router(_login_router, include_in_schema=False)
    app.exception_handler(security.LoginRequired)(_login_required)
    app.exception_handler(security.Forbidden)(_forbidden)
    for kind in (APIError, TunesmithError):  # /v1 keeps the OpenAI error shape; a page gets a page
        app.exception_handler(kind)(_on_pages(app.exception_handlers[kind]))
    app.add_middleware(SecurityHeaders)


def _on_pages(for_api: Callable) -> Callable:
    def handle(request: Request, error: Exception) -> Response:
        if request.url.path.startswith("/v1/"):
            return for_api(request, error)
        status = error.status if isinstance(error, APIError) else 400
        message = error.message if isinstance(error, APIError) else str(error)
        context = {"status": status, "message": message}
        return TEMPLATES.TemplateResponse(request, "error.html", context, status_code=status)

    return handle


class SecurityHeaders:
    """Adds security.SECURITY_HEADERS to every response outside /v1 (a plain ASGI middleware: it leaves
    streaming responses and disconnect detection alone, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name for name, _ in headers}  # a response with its own policy keeps it (reports)
                headers += [
                    (name.lower().encode(), value.encode())
                    for name, value in security.SECURITY_HEADERS.items()
                    if name.lower().encode() not in present
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _login_required(request: Request, _error: security.LoginRequired) -> Response:
    """A page asks for the key (and comes back here after it); a stream or a form post gets 401."""
    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    return PlainTextResponse("log in first: open /login and give the server's API key", status_code=401)


def _forbidden(_request: Request, error: security.Forbidden) -> Response:
    return PlainTextResponse(str(error), status_code=403)


_login_router = APIRouter()


@_login_router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    return RedirectResponse("/jobs", status_code=303)


@_login_router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/jobs") -> Response:
    if not request.app.state.settings.api_key:
        return RedirectResponse(_local(next), status_code=303)
    return TEMPLATES.TemplateResponse(request, "login.html", {"next": _local(next), "error": None})


@_login_router.post("/login", response_class=HTMLResponse)
def login(request: Request, key: str = Form(""), next: str = Form("/jobs")) -> Response:
    if not security.same_origin(request):
        raise security.Forbidden("refused: the request came from another site")
    if not security.key_matches(request, key):
        context = {"next": _local(next), "error": "That is not this server's API key."}
        return TEMPLATES.TemplateResponse(request, "login.html", context)  # the form again, not an error page
    response = RedirectResponse(_local(next), status_code=303)
    security.set_session_cookie(request, response, security.open_session(request).new_cookie or "")
    return response


@_login_router.post("/logout")
def logout(request: Request) -> Response:
    session = security.read_session(request)  # no CSRF check: logging someone out harms no one
    if session is not None:
        security.end_session(session)
    response = RedirectResponse("/login" if request.app.state.settings.api_key else "/jobs", status_code=303)
    response.delete_cookie(security.COOKIE, path="/")
    return response


def _local(target: str) -> str:
    """Only a path on this server: ``next`` never sends the browser elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/jobs"


__all__ = ["install", "page"]
