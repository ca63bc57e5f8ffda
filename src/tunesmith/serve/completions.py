"""/v1/models, /v1/chat/completions and /v1/completions in the OpenAI shapes.

A prompt reaches a model the way the model was trained (``LoadedModel.conversation`` and the
tokenizer's chat template, as ``tunesmith chat``): the stored system prompt unless the request has
its own, and a classifier's user text wrapped in the label instruction. /v1/completions follows
``tunesmith generate``: a model fine-tuned on raw text (task "text") continues the prompt as it is;
every other model (base models, chat, completion and classify fine-tunes) gets the prompt as one
user turn through its chat template, since that is the only text such a model was trained to answer.

Generation runs on one thread that decodes concurrent requests together (serve.batcher), and streams
come back through a queue as server-sent events: a chat stream opens each choice with a role delta, ends
it with a chunk carrying its finish_reason, may add a usage chunk, and ends with ``data: [DONE]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError
from starlette.concurrency import run_in_threadpool

from tunesmith.core.errors import TunesmithError
from tunesmith.core.version import VERSION
from tunesmith.data.render import render_prompt
from tunesmith.inference.loaded import LoadedModel
from tunesmith.serve import catalog, generation_thread
from tunesmith.serve.batcher import Request as Generation
from tunesmith.serve.protocol import APIError, error_body, new_id
from tunesmith.serve.sampling import Choice, Sampling
from tunesmith.serve.schemas import MAX_TOKENS, ChatCompletionRequest, CompletionRequest

log = logging.getLogger("tunesmith.serve")
router = APIRouter()
ALL_THREADS = torch.get_num_threads()


@router.get("/models")
def list_models() -> dict:
    return {"object": "list", "data": catalog.model_objects()}


@router.get("/models/{model_id:path}")
def retrieve_model(model_id: str) -> dict:
    return catalog.model_object(model_id)


@dataclass
class _Call:
    """One request on its way through generation, and the shapes of its answer."""

    chat: bool  # chat.completion or text_completion
    key: str  # the resolved model
    loaded: LoadedModel
    prompts: list[list[int]]
    n: int
    sampling: Sampling
    include_usage: bool = False
    id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = new_id("chatcmpl" if self.chat else "cmpl")

    @property
    def head(self) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.key,
            "system_fingerprint": _fingerprint(self.key),
        }

    def usage(self, choices: list[Choice]) -> dict:
        prompt = sum(len(ids) for ids in self.prompts)
        completion = sum(choice.completion_tokens for choice in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def response(self, choices: list[Choice]) -> dict:
        if self.chat:
            listed = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ]
        else:
            listed = [
                {"text": c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(choices)
            ]
        return self.head | {"choices": listed, "usage": self.usage(choices)}

    def chunk(self, index: int, text: str | None = None, role: bool = False, finish: str | None = None) -> str:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish}
        return self._event({"choices": [choice]})

    def usage_chunk(self, choices: list[Choice]) -> str:
        return self._event({"choices": [], "usage": self.usage(choices)})

    def _event(self, body: dict) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        payload = self.head | {"object": kind} | body
        if self.include_usage:
            payload.setdefault("usage", None)
        return _sse(payload)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    body.refuse_unsupported()
    key, loaded = await _load(request, body.model)
    messages = [message.as_dict() for message in body.messages]
    prompt = await run_in_threadpool(chat_prompt, loaded, messages)
    max_new = fit_new_tokens(loaded, [prompt], body.new_tokens(), "messages")
    call = _Call(True, key, loaded, [prompt], body.choices_per_prompt(), _sampling(body, max_new), body.include_usage())
    return await _answer(call, bool(body.stream), request)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    body.refuse_unsupported()
    key, loaded = await _load(request, body.model)
    prompts = await run_in_threadpool(lambda: [completion_prompt(loaded, text) for text in body.prompt])
    max_new = fit_new_tokens(loaded, prompts, body.new_tokens(), "prompt")
    call = _Call(False, key, loaded, prompts, body.choices_per_prompt(), _sampling(body, max_new), body.include_usage())
    return await _answer(call, bool(body.stream), request)


async def _load(request: Request, name: str) -> tuple[str, LoadedModel]:
    pool = request.app.state.pool

    def resolve_and_load() -> tuple[str, LoadedModel]:
        key = catalog.resolve(name)
        return key, pool.get(key)

    return await run_in_threadpool(resolve_and_load)


def chat_prompt(loaded: LoadedModel, messages: list[dict]) -> list[int]:
    try:
        text = render_prompt(loaded.tokenizer, loaded.conversation(messages))
    except TemplateError as error:  # templates that insist on an order of roles, for one
        raise APIError(400, f"the model's chat template refused these messages: {error}", param="messages") from None
    return _tokens(loaded, text)


def completion_prompt(loaded: LoadedModel, prompt: str) -> list[int]:
    if loaded.task != "text":
        return chat_prompt(loaded, loaded.messages_for(prompt))
    ids = _tokens(loaded, prompt)
    if ids:
        return ids
    # an empty prompt starts a new document: the separator raw-text training put between documents
    start = (
        loaded.tokenizer.eos_token_id if loaded.tokenizer.eos_token_id is not None else loaded.tokenizer.bos_token_id
    )
    if start is None:
        raise APIError(400, "this model cannot continue an empty prompt", param="prompt")
    return [start]


def _tokens(loaded: LoadedModel, text: str) -> list[int]:
    return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_new_tokens(
    loaded: LoadedModel, prompts: list[list[int]], requested: int | None, param: str, strict: bool = True
) -> int:
    """New tokens per choice: as requested (by default the rest of the context). A prompt that leaves no
    room is a 400, and so is (``strict``, as OpenAI does) a ``max_tokens`` that runs past the context;
    otherwise (the web page's answers) the request is cut to fit."""
    window = getattr(loaded.model.config, "max_position_embeddings", None)
    if not window:
        return requested or MAX_TOKENS
    longest = max(len(ids) for ids in prompts)
    if longest >= window:
        raise APIError(
            400,
            f"This model's maximum context length is {window} tokens; the prompt has {longest}",
            param=param,
            code="context_length_exceeded",
        )
    if strict and requested and longest + requested > window:
        raise APIError(
            400,
            f"This model's maximum context length is {window} tokens; the prompt has {longest} and "
            f"max_tokens asks for {requested} more: ask for at most {window - longest}, or leave it out",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return min(requested or MAX_TOKENS, window - longest)


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_new: int) -> Sampling:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    return Sampling(max_new, temperature, top_p, body.stops(), body.seed)


async def _answer(call: _Call, stream: bool, request: Request) -> dict | StreamingResponse:
    batcher = request.app.state.batcher
    generation = Generation(call.loaded, call.prompts, call.n, call.sampling)
    if not stream:
        return call.response(await generation_thread.answer(batcher, generation))
    generated = generation_thread.stream(batcher, generation)  # queued now: a full line is a 429 status
    return StreamingResponse(
        _events(call, generated),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def share_cores(store) -> Callable[[], None]:
    """One thread for generation while a fine-tuning job trains, every core otherwise. Two processes
    that each run a thread per core on the same cores wait on each other's spinning threads: measured
    on 2 cores, 8-token answers took 5.6 s instead of 0.43 s beside a training job, and 0.72 s with one
    thread, while the job's steps stayed at 0.75 s. The batcher calls it before its work; the job table
    is read at most once a second."""
    checked = [0.0]

    def before_work() -> None:
        if time.monotonic() - checked[0] >= 1.0:
            checked[0] = time.monotonic()
            torch.set_num_threads(1 if store.jobs_with_status("running") else ALL_THREADS)

    return before_work


async def _events(call: _Call, generated: AsyncIterator) -> AsyncIterator[str]:
    finished: list[Choice] = []
    opened: set[int] = set()
    try:
        async for index, text, choice in generated:
            if call.chat and index not in opened:
                opened.add(index)
                yield call.chunk(index, role=True)
            if text:
                yield call.chunk(index, text)
            if choice is not None:
                finished.append(choice)
                yield call.chunk(index, finish=choice.finish_reason)
    except Exception as error:  # noqa: BLE001 - the status line is out: the error goes in the stream
        log.exception("generation failed mid-stream", exc_info=error)
        status = error.status if isinstance(error, APIError) else 400 if isinstance(error, TunesmithError) else 500
        yield _sse(error_body(status, f"generation failed: {error}"))
        return
    if call.include_usage:
        yield call.usage_chunk(finished)
    yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


@lru_cache(maxsize=256)
def _fingerprint(key: str) -> str:
    """Changes when what answers changes: the model version (immutable), tunesmith, torch."""
    return "fp_" + hashlib.sha256(f"{key}|{VERSION}|{torch.__version__}".encode()).hexdigest()[:10]
