"""The way between the event loop and the generation thread (serve.batcher): a request's answer awaited,
or its text as it is made.

A request whose client goes away (a closed stream, a task cancelled at shutdown) is marked cancelled, and
the batcher drops its rows at the next step. A request beyond the batcher's line is a 429 with a
Retry-After, before anything is generated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from tunesmith.serve.batcher import Batcher, QueueFull, Request, wait_seconds
from tunesmith.serve.protocol import APIError
from tunesmith.serve.sampling import Choice


async def answer(batcher: Batcher, request: Request) -> list[Choice]:
    """Every choice of ``request``, once all are made."""
    future = _submit(batcher, request)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        request.cancelled.set()
        raise


def stream(batcher: Batcher, request: Request) -> AsyncIterator[tuple[int, str | None, Choice | None]]:
    """``(choice index, text, None)`` as text becomes final and ``(index, None, choice)`` as a choice ends.
    The request is queued at once, so a full line is a 429 raised here, before a response has begun; what
    it generates waits in the iterator's queue until read. Closing the iterator early (a client that went
    away) cancels the request."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()  # unbounded: a slow reader never holds up the batch

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone, so is the reader
            request.cancelled.set()

    request.on_text = lambda index, text: put((index, text, None))
    request.on_choice = lambda index, choice: put((index, None, choice))
    future = _submit(batcher, request)
    future.add_done_callback(lambda _: put(future))
    return _read(items, future, request)


async def _read(items: asyncio.Queue, future: Future, request: Request) -> AsyncIterator:
    try:
        while True:
            item = await items.get()
            if item is future:
                future.result()  # raises what generation raised
                return
            yield item
    finally:
        request.cancelled.set()


def _submit(batcher: Batcher, request: Request) -> Future:
    try:
        return batcher.submit(request)
    except QueueFull as error:
        seconds = wait_seconds(batcher)
        raise APIError(
            429,
            f"the server is busy ({error}); retry in {seconds} s",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(seconds)},
        ) from None
