"""Continuous batching: every request for one base model decodes in one batch, joining and leaving at any step.

One thread runs torch for the whole server (two would only fight over the cores). It loops:

1. admit waiting requests while the batch has room (``max_rows`` sequences): each choice of each prompt
   becomes a sequence; its prompt is prefilled into a slot of the base's ``BatchDecoder``, starting from
   the longest hot prefix another prompt left in the ``PrefixStore`` (a shared system prompt or few-shot
   block is computed once), and its first token is drawn at once;
2. one decode step of every base's batch: each row gets one token, sampled with its own settings and
   random stream, checked for its stop strings and end of turn, streamed out;
3. drop the rows that finished or whose client went away (cancelled) and answer their requests.

A request's answer does not depend on what else is in the batch: its rows attend only to their own keys
and values and draw from their own ``torch.Generator`` (choice ``i`` of a request seeded ``s`` uses seed
``s + i``), so the tokens are those of the request alone, up to float rounding in the batched matmuls.
Models whose architecture ``BatchDecoder`` does not run (see ``batch_decoder.supports``) are generated
with ``model.generate`` one request at a time, between steps, on the same thread.

Requests beyond ``max_waiting`` in line are refused (``QueueFull``, a 429 for the client), so a flood
never piles up unbounded work.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from tunesmith.inference.loaded import LoadedModel
from tunesmith.models.batch_decoder import BatchDecoder, supports
from tunesmith.serve.prefix_store import PrefixStore
from tunesmith.serve.sampling import Choice, OnText, Sampling, Watcher, draw, generate_choices, new_generator

log = logging.getLogger("tunesmith.serve")


PREFILL_TOKENS = 2048  # prompt tokens prefilled between two decode steps (beyond the first request's own)


class QueueFull(Exception):
    """More requests are waiting than the server accepts."""


@dataclass
class Request:
    """One API request: ``n`` choices for each prompt, numbered prompt by prompt (prompt * n + j)."""

    loaded: LoadedModel
    prompts: list[list[int]]
    n: int
    sampling: Sampling
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_text: OnText | None = None
    on_choice: Callable[[int, Choice], None] | None = None
    result: Future = field(default_factory=Future)  # list[Choice] in index order
    choices: dict[int, Choice] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Sequences it decodes: greedy choices of one prompt are one sequence, copied."""
        return len(self.prompts) * (1 if self.sampling.temperature == 0 else self.n)

    def finish(self, indexes: list[int], choice: Choice) -> None:
        for index in indexes:
            self.choices[index] = choice
            if self.on_choice is not None:
                self.on_choice(index, choice)
        if len(self.choices) == len(self.prompts) * self.n and not self.result.done():
            self.result.set_result([self.choices[i] for i in range(len(self.choices))])

    def fail(self, error: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(error)


@dataclass
class _Sequence:
    request: Request
    indexes: list[int]  # the choices it answers (several for greedy n > 1)
    generator: torch.Generator | None
    watcher: Watcher
    adapter: int  # its index in the base's AdapterBank (0: none)
    adapter_key: str  # the version it answers as ("": the base itself)
    token: int = -1  # the last token drawn, fed to the next step


class _Base:
    """The batch of one base model: its decoder, its rows (row i is slot i) and their hot prefixes."""

    def __init__(self, model, prefix_bytes: int):
        self.decoder = BatchDecoder(model)
        self.prefixes = PrefixStore(prefix_bytes)
        self.rows: list[_Sequence] = []

    def adapter_of(self, loaded: LoadedModel) -> tuple[int, str]:
        if loaded.adapter is None:
            return 0, ""
        return self.decoder.bank.add(loaded.ref, loaded.adapter), loaded.ref


class Batcher:
    def __init__(self, max_rows: int = 64, max_waiting: int = 256, prefix_bytes: int = 256 * 2**20):
        self.max_rows, self.max_waiting, self.prefix_bytes = max_rows, max_waiting, prefix_bytes
        self.before_work: Callable[[], None] = lambda: None  # e.g. to share the cores with a training job
        self.keep: Callable[[Any], bool] = lambda model: True  # whether a base model is still loaded
        self._waiting: deque[Request] = deque()
        self._bases: dict[int, _Base] = {}  # id of the base model -> its batch
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    # ---- from any thread ---------------------------------------------------------------------------------

    def submit(self, request: Request) -> Future:
        """Queues ``request``; its future gets the choices. ``QueueFull`` when the line is full."""
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(request)
            self._start()
            self._wake.notify()
        return request.result

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active_rows(self) -> int:
        return sum(len(base.rows) for base in self._bases.values())

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tunesmith-generate", daemon=True)
            self._thread.start()

    # ---- on the generation thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self.active_rows):
                    self._wake.wait()
            self.before_work()
            self._admit()
            for key, base in list(self._bases.items()):
                if base.rows:
                    self._step(base)
                elif not self.keep(base.decoder.lm):  # gone from the model pool: let it be freed
                    del self._bases[key]
                else:
                    base.decoder.shrink()  # idle: give back the cache's memory, keep the hot prefixes

    def _admit(self) -> None:
        """Takes waiting requests while rows and this round's prefill budget allow (the first always), and
        prefills each base's new rows together: one pass reads the weights once for all of them."""
        budget = PREFILL_TOKENS
        fresh: dict[int, list[tuple[int, list[int], list[int]]]] = {}  # base -> (slot, tokens to run, prompt)
        while True:
            with self._wake:
                if not self._waiting:
                    break
                request = self._waiting[0]
                tokens = sum(len(p) for p in request.prompts) * (request.rows // len(request.prompts))
                # a request waits for room in the batch (one larger than the whole batch runs alone) and for
                # the next round once this round's prompts are enough work between two steps
                if (self.active_rows and self.active_rows + request.rows > self.max_rows) or (
                    fresh and tokens > budget
                ):
                    break
                self._waiting.popleft()
            budget -= tokens
            if request.cancelled.is_set():
                request.fail(CancelledRequest())
                continue
            try:
                self._start_request(request, fresh)
            except Exception as error:  # noqa: BLE001 - this request fails, the batch goes on
                log.exception("a request failed to start", exc_info=error)
                request.fail(error)
                self._drop_unstarted(request, fresh)
        for key, rows in fresh.items():
            if rows:
                self._prefill(self._bases[key], rows)

    def _start_request(self, request: Request, fresh: dict) -> None:
        """Rows for ``request`` in its base's batch, started from hot prefixes; prefilled by the caller."""
        model = request.loaded.model
        if not supports(model):  # generate's own loop, this request alone
            generate_choices(
                request.loaded,
                request.prompts,
                request.n,
                request.sampling,
                request.cancelled,
                request.on_text,
                lambda index, choice: request.finish([index], choice),
            )
            request.fail(CancelledRequest())  # a no-op unless it stopped short, cancelled
            return
        base = self._bases.get(id(model))
        if base is None:
            base = self._bases[id(model)] = _Base(model, self.prefix_bytes)
        adapter, adapter_key = base.adapter_of(request.loaded)
        sampling = request.sampling
        for p, prompt in enumerate(request.prompts):
            indexes = [p * request.n + j for j in range(request.n)]
            groups = [indexes] if sampling.temperature == 0 else [[i] for i in indexes]
            for group in groups:
                seed = None if sampling.seed is None else sampling.seed + group[0]
                generator = None if sampling.temperature == 0 else new_generator(model, seed)
                emit = _fan_out(request.on_text, group)
                watcher = Watcher(request.loaded.tokenizer, prompt, sampling.stop, request.cancelled, emit)
                slot = base.decoder.add_slot()
                base.rows.append(_Sequence(request, group, generator, watcher, adapter, adapter_key))
                start = 0
                hit = base.prefixes.longest(adapter_key, prompt)
                if hit is not None:
                    start, keys, values = hit
                    base.decoder.copy_prefix(slot, keys, values)
                fresh.setdefault(id(model), []).append((slot, prompt[start:], prompt))

    def _drop_unstarted(self, request: Request, fresh: dict) -> None:
        """Removes the rows ``request`` got before it failed to start (the last ones of its base)."""
        base = self._bases.get(id(request.loaded.model))
        if base is None:
            return
        while base.rows and base.rows[-1].request is request:
            slot = len(base.rows) - 1
            fresh[id(request.loaded.model)] = [r for r in fresh.get(id(request.loaded.model), []) if r[0] != slot]
            self._end(base, slot, failed=True)

    def _prefill(self, base: _Base, rows: list[tuple[int, list[int], list[int]]]) -> None:
        slots = [slot for slot, _, _ in rows]
        try:
            logits = base.decoder.prefill(slots, [tail for _, tail, _ in rows], [base.rows[s].adapter for s in slots])
        except Exception as error:  # noqa: BLE001 - these requests fail, the batch goes on
            log.exception("a prefill failed", exc_info=error)
            for slot in reversed(slots):
                base.rows[slot].request.fail(error)
                self._end(base, slot, failed=True)
            return
        for slot, tail, prompt in rows:
            if len(tail) > 1:  # something new to keep for the prompts that share its start
                sequence = base.rows[slot]
                keys, values = base.decoder.slot_prefix(slot, len(prompt) - 1)
                base.prefixes.add(sequence.adapter_key, prompt[:-1], keys, values)
        self._take(base, slots, logits)

    def _step(self, base: _Base) -> None:
        try:
            logits = base.decoder.step([s.token for s in base.rows], [s.adapter for s in base.rows])
        except Exception as error:  # noqa: BLE001 - every request in this batch fails, the server goes on
            log.exception("a decode step failed", exc_info=error)
            for sequence in base.rows:
                sequence.request.fail(error)
            self._bases.pop(id(base.decoder.lm), None)
            return
        self._take(base, None, logits)

    def _take(self, base: _Base, rows: list[int] | None, logits: torch.Tensor) -> None:
        """Draws the next token of every row (or of ``rows``, just prefilled) from ``logits`` and ends the
        rows that are done."""
        rows = rows if rows is not None else list(range(len(base.rows)))
        greedy = logits.argmax(dim=-1).tolist()
        done = []
        for i, row in zip(rows, range(logits.shape[0]), strict=True):
            sequence = base.rows[i]
            sampling = sequence.request.sampling
            if sequence.generator is None:
                token = greedy[row]
            else:
                token = int(draw(logits[row], sampling.temperature, sampling.top_p, sequence.generator))
            sequence.token = token
            stop = sequence.watcher.push(token)
            eos = token == sequence.request.loaded.tokenizer.eos_token_id
            if stop or eos or sequence.watcher.tokens >= sampling.max_tokens:
                done.append(i)
        for i in sorted(done, reverse=True):  # from the end: removing a row moves the last into its place
            self._end(base, i)

    def _end(self, base: _Base, row: int, failed: bool = False) -> None:
        sequence = base.rows[row]
        watcher, request = sequence.watcher, sequence.request
        moved = base.decoder.remove_slot(row)
        last = base.rows.pop()
        if moved is not None:
            base.rows[row] = last
        if failed or request.cancelled.is_set():
            request.fail(CancelledRequest())
        else:
            text = watcher.finish()
            ended = watcher.stopped_at is not None or watcher.last_token == request.loaded.tokenizer.eos_token_id
            request.finish(sequence.indexes, Choice(text, watcher.tokens, "stop" if ended else "length"))
        if sequence.adapter and not any(s.adapter == sequence.adapter for s in base.rows):
            base.decoder.bank.release(sequence.adapter_key)


class CancelledRequest(Exception):
    """The client went away."""


def _fan_out(on_text: OnText | None, indexes: list[int]) -> Callable[[str], None] | None:
    if on_text is None:
        return None

    def emit(piece: str) -> None:
        for index in indexes:
            on_text(index, piece)

    return emit


def wait_seconds(batcher: Batcher) -> int:
    """A Retry-After for a refused request: about the time the line ahead of it takes, at least 1 s."""
    return max(1, round(batcher.waiting / max(batcher.max_rows, 1)))
