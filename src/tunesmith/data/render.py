"""Turning examples into token ids and loss labels with the base model's own chat template.

Chat-like examples (chat, completion, classify) are rendered with ``tokenizer.apply_chat_template``:
the same call inference uses, so training and serving see identical text. The loss falls on
assistant turns only (those with weight 1), including the end-of-turn token so the model learns
to stop. Raw text is tokenized as is (see ``batching.pack_documents``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.core.errors import TunesmithError
from tunesmith.data.labels import classify_prompt
from tunesmith.data.records import Example

IGNORE = -100  # label of positions that carry no loss (PyTorch's cross-entropy ignore_index)


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # token id where the loss applies, IGNORE elsewhere

    @property
    def n_target(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)

    def truncated(self, max_length: int) -> Rendered:
        return Rendered(self.input_ids[:max_length], self.labels[:max_length])


@dataclass
class RenderedPair:
    """A preference pair: the prompt answered with the chosen and with the rejected answer.

    It reads like one ``Rendered`` where the data check wants a length and a preview (the longer
    answer's) or a target count (both answers')."""

    chosen: Rendered
    rejected: Rendered

    @property
    def input_ids(self) -> list[int]:
        return max(self.chosen, self.rejected, key=lambda r: len(r.input_ids)).input_ids

    @property
    def labels(self) -> list[int]:
        return max(self.chosen, self.rejected, key=lambda r: len(r.input_ids)).labels

    @property
    def n_target(self) -> int:
        return self.chosen.n_target + self.rejected.n_target

    def truncated(self, max_length: int) -> RenderedPair:
        return RenderedPair(self.chosen.truncated(max_length), self.rejected.truncated(max_length))


def example_messages(example: Example, labels: list[str] | None = None, system_prompt: str | None = None) -> list[dict]:
    """The conversation an example stands for (classification becomes question -> label, a
    preference pair the prompt answered with the chosen answer)."""
    if example.chosen is not None:
        messages = [*example.messages, {"role": "assistant", "content": example.chosen, "weight": 1}]
    elif example.label is not None:
        if labels is None:
            raise ValueError("classification examples need the label set")
        messages = [
            {"role": "user", "content": classify_prompt(example.text or "", labels), "weight": 1},
            {"role": "assistant", "content": example.label, "weight": 1},
        ]
    else:
        messages = list(example.messages)
    if system_prompt and messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt, "weight": 1}, *messages]
    return messages


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The text a model sees before it answers: the conversation plus the assistant header."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)


def render_messages(tokenizer, messages: list[dict]) -> Rendered:
    """Tokenize a conversation and mark the assistant turns that carry loss.

    The character span of assistant turn i is found by rendering the conversation up to i
    (with the assistant header) and through i; tokens that start inside a span are targets.
    This relies only on the template being prefix-stable, which holds for the usual templates.
    """
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = tokenizer.apply_chat_template(plain, tokenize=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = tokenizer.apply_chat_template(plain[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(plain[: index + 1], tokenize=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise TunesmithError(
                "the base model's chat template is not prefix-stable, so assistant turns cannot be "
                "located for the loss mask; use a model whose template renders turns in order"
            )
        spans.append((len(before), len(through)))
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = [IGNORE] * len(ids)
    for position, (start, _end) in enumerate(encoding["offset_mapping"]):
        if any(span_start <= start < span_end for span_start, span_end in spans):
            labels[position] = ids[position]
    return Rendered(ids, labels)


def render_example(
    tokenizer, example: Example, labels: list[str] | None = None, system_prompt: str | None = None
) -> Rendered | RenderedPair:
    messages = example_messages(example, labels, system_prompt)
    if example.rejected is None:
        return render_messages(tokenizer, messages)
    return RenderedPair(
        render_messages(tokenizer, messages), render_messages(tokenizer, with_answer(messages, example.rejected))
    )


def with_answer(messages: list[dict], answer: str) -> list[dict]:
    """The conversation with its last (assistant) turn replaced by ``answer``."""
    return [*messages[:-1], {**messages[-1], "content": answer}]


def tokenize_document(tokenizer, text: str) -> list[int]:
    """Raw text for continued pre-training: the text and an end-of-sequence token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return ids
