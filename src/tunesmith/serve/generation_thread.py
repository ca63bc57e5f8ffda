"""One generation at a time, on a thread of its own, and the way back to the event loop.

torch already spreads one forward pass over every core, so two generations side by side would only
make both slower and hold two sets of activations. A single daemon thread taking jobs in arrival
order serialises them fairly, and no thread of the shared pool sits blocked on a lock meanwhile
(the file and job routes need those). Daemon, so a shutdown never waits for a long generation.

Each job gets a ``threading.Event``, set when nobody wants the answer any more (the client
disconnected from a stream, the request task was cancelled at shutdown). Jobs check it before they
start and generation checks it after every token, so an abandoned request frees the thread at once.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
Emit = Callable[[Any], None]


class GenerationThread:
    def __init__(self, name: str = "tunesmith-generate"):
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[[], Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, job: Callable[[], T]) -> Future:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
        future: Future = Future()
        self._jobs.put((future, job))
        return future

    def _work(self) -> None:
        while True:
            future, job = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while waiting in line
            try:
                future.set_result(job())
            except BaseException as error:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(error)


_thread = GenerationThread()


async def run(job: Callable[[threading.Event], T], thread: GenerationThread = _thread) -> T:
    """``job(cancelled)`` on the generation thread; its result or its exception."""
    cancelled = threading.Event()
    future = thread.submit(lambda: job(cancelled))
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def stream(
    job: Callable[[threading.Event, Emit], None], thread: GenerationThread = _thread
) -> AsyncIterator[Any]:
    """What ``job(cancelled, emit)`` emits on the generation thread, as it is emitted. Closing the
    iterator early (a client that went away) cancels the job."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    end = object()

    def emit(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone, so is the reader
            cancelled.set()

    def work() -> None:
        try:
            if not cancelled.is_set():
                job(cancelled, emit)
        except BaseException as error:  # noqa: BLE001 - re-raised in the reader
            emit(_Failed(error))
        finally:
            emit(end)

    future = thread.submit(work)
    try:
        while (item := await items.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        cancelled.set()
        future.cancel()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
