"""Rendering a page: the templates, their filters, and the session's cookie and CSRF token."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from tunesmith.serve.web.security import Session, set_session_cookie

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


def when(timestamp: int | float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def duration(seconds: int | float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def metric(value: float | None, name: str) -> str:
    """A metric as reports write it: rates in percent, perplexity and loss as numbers."""
    if value is None:
        return ""
    return f"{value:.1%}" if name in RATES else f"{value:.3f}"


RATES = ("accuracy", "macro_f1", "rouge_l", "exact_match", "chrf", "bleu")
TEMPLATES.env.filters.update(
    when=when, duration=duration, percent=percent, metric=metric, pretty=lambda v: json.dumps(v, indent=2)
)


def page(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    """``template`` rendered with ``context``, the nav and the session's CSRF token; a session opened by
    this request (no API key, first visit) gets its cookie here."""
    session: Session = request.state.session
    context = {"csrf": session.csrf, "has_key": bool(request.app.state.settings.api_key), **context}
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)
    if session.new_cookie:
        set_session_cookie(request, response, session.new_cookie)
    return response
