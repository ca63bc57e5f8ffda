"""Generating the choices of one API request: sampling, stop strings, text as it is made.

Everything runs inside ``model.generate`` (KV cache, the model's own logits processors) with two hooks:

* ``_Nucleus``, a logits processor, draws the next token itself (temperature, then top-p) from the
  request's own ``torch.Generator`` and leaves only that token standing, so generate's greedy pick takes
  it. A seeded request therefore gives the same text whatever else the process does with torch's
  global random state (loading a LoRA adapter draws from it, for one).
* ``Watcher``, a stopping criterion, sees every new token before the next forward pass: it decodes the
  text incrementally, ends generation at the first stop string or when the request is cancelled, and
  passes on only text that can no longer turn out to be the start of a stop string, so a stop string
  never leaks into a stream and the streamed pieces always join to the non-streamed text.

Generation ends at the tokenizer's eos token (the end of turn the model was trained to emit), at a stop
string (not included in the text), or after ``max_tokens`` ("length").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from tunesmith.inference.loaded import LoadedModel
from tunesmith.models.kv_cache import answer_cache

OnText = Callable[[int, str], None]  # (choice index, text that is final)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int  # new tokens per choice, already fitted to the context window
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Choice:
    text: str
    completion_tokens: int  # every generated token, the closing eos included
    finish_reason: str  # "stop" (eos or a stop string) or "length"


def new_generator(model, seed: int | None) -> torch.Generator:
    """The request's random stream, on the model's device; a fresh random seed when none was asked for."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def draw(scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """A token drawn from ``scores`` ([..., vocab]) at ``temperature`` within the ``top_p`` nucleus; [..., 1]."""
    # shifted so the best logit is 0: a tiny temperature then sends the others to -inf, never to nan
    shifted = scores - scores.max(dim=-1, keepdim=True).values
    probs = torch.softmax(shifted / max(temperature, 1e-6), dim=-1)
    if top_p < 1.0:
        # the smallest set of most likely tokens whose mass reaches top_p (at least one token)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        outside[..., 0] = False
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, num_samples=1, generator=generator)


class _Nucleus(LogitsProcessor):
    def __init__(self, temperature: float, top_p: float, generator: torch.Generator):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        token = draw(scores, self.temperature, self.top_p, self.generator)
        return torch.full_like(scores, float("-inf")).scatter(-1, token, 0.0)


class Watcher(StoppingCriteria):
    """Incremental detokenisation (a short window of earlier tokens gives each new piece the context
    it decodes in: leading spaces, multi-byte characters split over tokens), stop strings, cancellation."""

    def __init__(
        self,
        tokenizer,
        prompt_ids: list[int],
        stop: tuple[str, ...],
        cancelled: threading.Event,
        on_text: Callable[[str], None] | None,
    ):
        self.tokenizer, self.stop, self.cancelled, self.on_text = tokenizer, stop, cancelled, on_text
        self.ids = list(prompt_ids[-4:])
        self.prefix, self.read = 0, len(self.ids)
        self.text, self.sent = "", 0
        self.tokens = 0
        self.last_token: int | None = None
        self.stopped_at: int | None = None  # index in text of the stop string that ended generation

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = self.push(int(input_ids[0, -1]))
        # transformers types the result as the legacy torch.BoolTensor, which no operation returns
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def push(self, token: int) -> bool:
        """Takes a new token; whether generation ends here (a stop string, or cancelled)."""
        self.last_token = token
        self.tokens += 1
        searched = len(self.text)
        self._decode(self.last_token, flush=False)
        done = self.cancelled.is_set()
        if self.stop:
            hits = [i for s in self.stop if (i := self.text.find(s, max(0, searched - len(s) + 1))) >= 0]
            if hits:
                self.stopped_at, done = min(hits), True
                self._send(self.stopped_at)
            else:
                self._send(len(self.text) - _held_back(self.text, self.stop))
        else:
            self._send(len(self.text))
        return done

    def finish(self) -> str:
        """The whole text once generation ended; sends what was held back."""
        if self.stopped_at is not None:
            return self.text[: self.stopped_at]
        self._decode(None, flush=True)
        self._send(len(self.text))
        return self.text

    def _decode(self, token: int | None, flush: bool) -> None:
        if token is not None:
            self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        # an incomplete UTF-8 sequence decodes to U+FFFD: wait for the token that completes it
        if len(after) > len(before) and (flush or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)

    def _send(self, end: int) -> None:
        if end > self.sent:
            if self.on_text is not None:
                self.on_text(self.text[self.sent : end])
            self.sent = end


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string (it may yet complete)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def generate_choice(
    loaded: LoadedModel,
    prompt_ids: list[int],
    sampling: Sampling,
    generator: torch.Generator,
    cancelled: threading.Event,
    on_text: Callable[[str], None] | None = None,
) -> Choice:
    """One completion of a tokenised prompt; ``on_text`` receives the text piece by piece as it is final."""
    model, tokenizer = loaded.model, loaded.tokenizer
    watcher = Watcher(tokenizer, prompt_ids, sampling.stop, cancelled, on_text)
    processors = LogitsProcessorList()
    if sampling.temperature > 0:
        processors.append(_Nucleus(sampling.temperature, sampling.top_p, generator))
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        cache=answer_cache(model, len(prompt_ids), sampling.max_tokens),
        max_new_tokens=sampling.max_tokens,
        do_sample=False,
        logits_processor=processors,
        stopping_criteria=StoppingCriteriaList([watcher]),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = watcher.finish()
    # short of max_tokens without eos or a stop string: a stopping rule of the model's own ended the turn
    stopped = (
        watcher.stopped_at is not None
        or watcher.last_token == tokenizer.eos_token_id
        or watcher.tokens < sampling.max_tokens
    )
    return Choice(text, watcher.tokens, "stop" if stopped else "length")


def generate_choices(
    loaded: LoadedModel,
    prompts: list[list[int]],
    n: int,
    sampling: Sampling,
    cancelled: threading.Event,
    on_text: OnText | None = None,
    on_choice: Callable[[int, Choice], None] | None = None,
) -> list[Choice]:
    """``n`` choices for each prompt, indexed prompt by prompt (index = prompt * n + j), one after another
    from one random stream, so a seeded request is reproducible as a whole. Greedy choices of one prompt
    are all the same text: it is generated once."""
    generator = new_generator(loaded.model, sampling.seed)
    choices: list[Choice] = []
    for prompt in prompts:
        first: Choice | None = None
        for _ in range(n):
            index = len(choices)
            if first is not None and sampling.temperature == 0:
                choice = first
                if on_text is not None and choice.text:
                    on_text(index, choice.text)
            else:
                if cancelled.is_set():
                    return choices
                emit = (lambda piece, i=index: on_text(i, piece)) if on_text is not None else None
                choice = generate_choice(loaded, prompt, sampling, generator, cancelled, emit)
            first = first or choice
            choices.append(choice)
            if on_choice is not None:
                on_choice(index, choice)
    return choices
