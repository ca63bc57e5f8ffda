"""A client of an OpenAI-compatible chat API (``POST {url}/chat/completions``): the teacher of
``tunesmith data generate`` and the "teacher" system of ``tunesmith eval``.

Only the standard library talks HTTP, so any server that speaks the OpenAI chat API can teach: OpenAI,
vLLM, llama.cpp, Ollama, ``tunesmith serve``. Connection errors, timeouts, 408, 429 and 5xx are retried
with exponential back-off and jitter (a ``Retry-After`` header wins); any other 4xx is a refusal that
retrying will not change, raised at once with the server's own message and what to check.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tunesmith.core.errors import TunesmithError

RETRY_AFTER_CAP = 300.0  # seconds: a longer Retry-After is waited out only this long


class TeacherError(TunesmithError):
    """The teacher refused a request (a 4xx other than 408/429): retrying will not help."""


class TeacherUnavailable(TunesmithError):
    """No answer after every retry (connection errors, timeouts, 429, 5xx)."""


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None  # as the server reports them in `usage`, when it does
    completion_tokens: int | None = None


@dataclass
class Teacher:
    """A chat model behind an OpenAI-compatible URL such as ``http://127.0.0.1:8000/v1``."""

    url: str
    model: str
    api_key: str | None = None
    max_tokens: int = 512
    retries: int = 5  # after the first try
    timeout: float = 120.0
    backoff: float = 1.0  # first delay in seconds, doubled each retry up to max_backoff
    max_backoff: float = 30.0
    stopped: threading.Event = field(default_factory=threading.Event, repr=False)  # ends back-off waits

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> Reply:
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": max_tokens or self.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        }
        problem = "stopped"
        for attempt in range(self.retries + 1):
            wait = None
            try:
                return _reply(self._request("/chat/completions", body), self.url)
            except urllib.error.HTTPError as error:
                message = _error_message(error)
                if error.code not in (408, 429) and error.code < 500:
                    raise self._refused(error.code, message) from None
                problem, wait = f"HTTP {error.code}: {message}", _retry_after(error.headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut short
                problem = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            if attempt == self.retries or self.stopped.wait(wait if wait is not None else self._delay(attempt)):
                break
        raise TeacherUnavailable(f"no answer from {self.url} after {self.retries + 1} tries: {problem}")

    def models(self) -> list[str] | None:
        """The model ids GET {url}/models lists, or None when it does not answer."""
        try:
            listed = self._request("/models", None, timeout=10)
            return [str(entry["id"]) for entry in listed["data"]]
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
            return None

    def _request(self, path: str, body: dict | None, timeout: float | None = None) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method="GET" if body is None else "POST"
        )
        with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise TeacherError(
                f"{self.url}{path} answered with something other than JSON ({raw[:200]!r}); "
                "check --teacher-url: it should be an OpenAI-compatible API ending in /v1"
            ) from None

    def _delay(self, attempt: int) -> float:
        # Exponential with "equal jitter": N workers that failed together do not retry together.
        delay = min(self.max_backoff, self.backoff * 2**attempt)
        return random.uniform(delay / 2, delay)

    def _refused(self, status: int, message: str) -> TeacherError:
        text = f"the teacher at {self.url} refused the request (HTTP {status}): {message}"
        if status in (401, 403):
            return TeacherError(f"{text}. Check the API key (--api-key or --teacher-api-key; default $OPENAI_API_KEY)")
        if status == 404 or "model" in message.lower():
            offered = self.models()
            if offered is None:
                return TeacherError(
                    f"{text}. Check --teacher-url: it is the API's base, ending in /v1 "
                    "(e.g. http://127.0.0.1:8000/v1), and --teacher-model"
                )
            if self.model not in offered:
                return TeacherError(
                    f"{text}. Check --teacher-model {self.model!r}; the server offers: "
                    f"{', '.join(offered[:30]) or '(no models)'}"
                )
        return TeacherError(text)


def _reply(body: dict, url: str) -> Reply:
    try:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Reply(
            choice["message"].get("content") or "",
            choice.get("finish_reason"),
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
        )
    except (KeyError, IndexError, TypeError, AttributeError):
        raise TeacherError(
            f"{url}/chat/completions did not answer in the OpenAI shape "
            f"(choices[0].message.content): {json.dumps(body)[:300]}"
        ) from None


def _error_message(error: urllib.error.HTTPError) -> str:
    raw = error.read().decode("utf-8", "replace")
    try:
        detail = json.loads(raw)["error"]
        return str(detail["message"] if isinstance(detail, dict) else detail)
    except (ValueError, KeyError, TypeError):
        return raw.strip()[:300] or error.reason


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), within [0, RETRY_AFTER_CAP]."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return None if math.isnan(seconds) else min(max(seconds, 0.0), RETRY_AFTER_CAP)
