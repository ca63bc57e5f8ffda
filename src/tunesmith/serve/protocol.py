"""The OpenAI protocol pieces every route shares: the error shape, the API key, ids, list pages.

Errors always leave the server as ``{"error": {"message", "type", "param", "code"}}`` with the
status the OpenAI API uses (400 bad request, 401 key, 404 unknown object, 409 state, 413 too large),
so the official client raises its matching exception class.
"""

from __future__ import annotations

import hmac
import secrets
import time

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
}


class APIError(Exception):
    """An error answered in the OpenAI shape. ``param`` names the offending request field."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers  # e.g. Retry-After on a 429


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"No {what} with id {ident!r}", param=param, code="model_not_found" if what == "model" else None
    )


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def api_error_response(_request: Request, error: APIError) -> JSONResponse:
    body = error_body(error.status, error.message, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def validation_error_response(_request: Request, error: RequestValidationError) -> JSONResponse:
    """pydantic's complaints as one 400 that names the first bad field (``messages.0.role``)."""
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first["loc"] if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    details = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'query', 'path')) or 'body'}: {e['msg']}"
        for e in problems[:5]
    )
    return JSONResponse(error_body(400, f"Invalid request: {details}", param, "invalid_request"), status_code=400)


def require_api_key(request: Request) -> None:
    """With a key configured, every /v1 call needs ``Authorization: Bearer KEY``."""
    expected = request.app.state.settings.api_key
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        message = (
            "You didn't provide an API key: send `Authorization: Bearer KEY`"
            if not header
            else "Incorrect API key provided"
        )
        raise APIError(401, message, code="invalid_api_key")


def new_id(prefix: str) -> str:
    """OpenAI-style object ids: ``file-…``, ``ftjob-…``; 24 random hex digits, never a path."""
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more}
