"""Who may see the page, and which form posts are the page's own.

- **Sessions.** A session is a random id in an http-only, SameSite=Strict cookie, signed with a secret kept
  in ``$TUNESMITH_HOME/web-secret`` (so sessions outlive a server restart) and with the API key's hash (so
  changing the key ends every session). With an API key, the cookie is only given out by the login form,
  after the key was typed once; every page and every stream then needs it. Without a key (the server
  refuses to bind off loopback then: serve.server.check_bind), the first page visit gets one silently:
  it still carries the CSRF token.
- **Cross-site requests.** Every POST of the page carries the session's CSRF token (a hidden field, or the
  ``X-CSRF-Token`` header for htmx and fetch), an HMAC of the session id, and a request whose ``Origin``
  is another site is refused before that. /v1 keeps its own rule (a bearer key), which a browser cannot
  be tricked into sending.
- **Headers.** A Content-Security-Policy of 'self' on every response of the page: no inline script or
  style, nothing from another host, no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from tunesmith.core import paths
from tunesmith.core.durable import append_line

COOKIE = "tunesmith_session"
COOKIE_MAX_AGE = 30 * 24 * 3600  # a browser restart keeps the session; a month of disuse ends it
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class LoginRequired(Exception):
    """No valid session where the server has an API key (answered by a redirect to /login, or 401)."""


class Forbidden(Exception):
    """A state-changing request without this session's CSRF token, or from another site."""


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    new_cookie: str | None = None  # set on the response when the session was opened by this request


def secret() -> bytes:
    """The signing secret of this home, made on first use (0600, written whole before anyone reads it)."""
    path = paths.home() / "web-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".web-secret.{os.getpid()}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        os.replace(staged, path)  # two servers starting at once: the last one's secret wins for both
    return path.read_text().strip().encode()


def _sign(key: bytes, api_key: str | None, *parts: str) -> str:
    salt = hashlib.sha256((api_key or "").encode()).hexdigest()
    return hmac.new(key, "|".join((salt, *parts)).encode(), hashlib.sha256).hexdigest()[:40]


def _session(request: Request, sid: str, new_cookie: str | None = None) -> Session:
    key, api_key = request.app.state.web_secret, request.app.state.settings.api_key
    return Session(sid, _sign(key, api_key, "csrf", sid), new_cookie)


def cookie_value(request: Request, sid: str) -> str:
    return f"{sid}.{_sign(request.app.state.web_secret, request.app.state.settings.api_key, 'session', sid)}"


def read_session(request: Request) -> Session | None:
    sid, _, signature = request.cookies.get(COOKIE, "").partition(".")
    if not sid or not hmac.compare_digest(cookie_value(request, sid), f"{sid}.{signature}"):
        return None
    if sid in revoked():
        return None
    return _session(request, sid)


def revoked() -> set[str]:
    """Sessions ended by logging out (a copy of their cookie is refused too), one id a line."""
    path = paths.home() / "web-sessions-ended"
    return set(path.read_text().split()) if path.exists() else set()


def end_session(session: Session) -> None:
    append_line(paths.home() / "web-sessions-ended", session.id)


def open_session(request: Request) -> Session:
    sid = secrets.token_hex(16)
    return _session(request, sid, new_cookie=cookie_value(request, sid))


def key_matches(request: Request, given: str) -> bool:
    expected = request.app.state.settings.api_key or ""
    return bool(expected) and hmac.compare_digest(given.strip().encode(), expected.encode())


def same_origin(request: Request) -> bool:
    """A request whose Origin (or, without one, Referer) names another host or port is cross-site."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None  # browsers send "null" from sandboxed frames and data: pages
    source = urlsplit(origin)
    return (source.scheme, source.netloc) == (request.url.scheme, request.url.netloc)


async def require_session(request: Request) -> Session:
    """The dependency of every page and stream: a session (opened here when the server has no key), and for
    a POST a same-origin request with this session's CSRF token."""
    session = read_session(request)
    if session is None:
        if request.app.state.settings.api_key:
            raise LoginRequired()
        if request.method not in SAFE_METHODS:
            raise Forbidden("this form has expired: reload the page and send it again")
        session = open_session(request)
    if request.method not in SAFE_METHODS:
        if not same_origin(request):
            raise Forbidden("refused: the request came from another site")
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            given = str((await request.form()).get(CSRF_FIELD, ""))
        if not given or not hmac.compare_digest(given, session.csrf):
            raise Forbidden("this form has expired: reload the page and send it again")
    request.state.session = session
    return session


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    # Secure where the browser will still send it back: over https, and on loopback, which browsers treat
    # as a secure context. Off loopback over plain http (behind a key) it cannot be Secure.
    host = request.url.hostname or ""
    secure = request.url.scheme == "https" or host in ("localhost", "127.0.0.1", "::1", "[::1]")
    response.set_cookie(
        COOKIE, value, max_age=COOKIE_MAX_AGE, httponly=True, samesite="strict", secure=secure, path="/"
    )
