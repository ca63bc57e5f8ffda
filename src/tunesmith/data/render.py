"""Turning examples into token ids and loss labels with the base model's own chat template.

Chat-like examples (chat, completion, classify) are rendered with ``tokenizer.apply_chat_template``:
the same call inference uses, so training and serving see identical text. The loss falls on
assistant turns only (those with weight 1), including the end-of-turn token so the model learns
to stop. Raw text is tokenized as is (see ``batching.pack_documents``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from tunesmith.core.errors import TunesmithError
from tunesmith.data.labels import SHORTENED, classify_prompt, shortened_text
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
        """The first ``max_length`` tokens. Classification never gets here with a label to lose: its text
        is shortened inside the prompt first (``fit_classify_text``)."""
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


class NoToolSupport(TunesmithError):
    """A function-calling conversation the base model's chat template would render without its tools or calls."""

    REMEDY = "use a base model whose chat template renders tools and tool calls, or drop the function-calling examples"

    def __init__(self, dropped: str):
        self.problem = f"the base model's chat template has no tool support; it would drop the {dropped}"
        super().__init__(f"{self.problem}; {self.REMEDY}")


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates take them: role and content, and for function calling the assistant's
    ``tool_calls`` (their arguments as a mapping: the convention transformers' templates are written for)
    and a tool message's ``tool_call_id``. The weight stays out."""
    plain = []
    for m in messages:
        message = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            message["tool_calls"] = [
                {**call, "function": {**call["function"], "arguments": _arguments(call["function"]["arguments"])}}
                for call in m["tool_calls"]
            ]
        if "tool_call_id" in m:
            message["tool_call_id"] = m["tool_call_id"]
        plain.append(message)
    return plain


def _arguments(arguments: str | dict) -> dict:
    return json.loads(arguments) if isinstance(arguments, str) else arguments  # data files hold JSON strings


def require_tool_support(tokenizer, plain: list[dict], tools: list[dict] | None) -> None:
    """Refuse a function-calling conversation the template would silently render without its tools or
    calls: a template that never reads them renders the same text with them and without."""
    calls = any("tool_calls" in m for m in plain)
    if not tools and not calls:
        return
    full = tokenizer.apply_chat_template(plain, tools=tools, tokenize=False)
    dropped = []
    if tools and full == tokenizer.apply_chat_template(plain, tokenize=False):
        dropped.append("tools")
    no_calls = [{key: value for key, value in m.items() if key != "tool_calls"} for m in plain]
    if calls and full == tokenizer.apply_chat_template(no_calls, tools=tools, tokenize=False):
        dropped.append("tool calls")
    if dropped:
        raise NoToolSupport(" and ".join(dropped))


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text a model sees before it answers: the conversation (and the tools it may call) plus the
    assistant header."""
    plain = template_messages(messages)
    require_tool_support(tokenizer, plain, tools)
    return tokenizer.apply_chat_template(plain, tools=tools or None, tokenize=False, add_generation_prompt=True)


def render_messages(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> Rendered:
    """Tokenize a conversation and mark the assistant turns that carry loss.

    The character span of assistant turn i is found by rendering the conversation up to i
    (with the assistant header) and through i; tokens that start inside a span are targets.
    This relies only on the template being prefix-stable, which holds for the usual templates.
    A function-calling conversation renders with its tools; an assistant turn's tool calls are
    part of its span, tool messages (like user turns) carry no loss.
    """
    plain = template_messages(messages)
    require_tool_support(tokenizer, plain, tools)
    tools = tools or None
    full = tokenizer.apply_chat_template(plain, tools=tools, tokenize=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before = tokenizer.apply_chat_template(plain[:index], tools=tools, tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(plain[: index + 1], tools=tools, tokenize=False)
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
        return render_messages(tokenizer, messages, example.tools)
    return RenderedPair(
        render_messages(tokenizer, messages), render_messages(tokenizer, with_answer(messages, example.rejected))
    )


def fit_classify_text(
    tokenizer, example: Example, labels: list[str], system_prompt: str | None, max_length: int
) -> Example:
    """A classification example whose rendering fits ``max_length`` tokens: the text inside the prompt
    is cut (at a token boundary, ending with ``labels.SHORTENED``), the instruction and the label kept.
    The example itself when it fits already.

    The room is measured with the label set's longest label, so the text comes out the same whatever
    label follows it: training (the data check's rows), label scoring in evaluation (every candidate
    label) and the few-shot turns all see one prompt. When even an empty text does not fit, the text
    is just the mark and the row is truncated as before (the data check reports the lost answer)."""
    if example.label is None or example.text is None or not labels:
        return example
    longest = max(labels, key=lambda label: len(tokenizer(label, add_special_tokens=False)["input_ids"]))

    def excess(text: str) -> int:
        rendered = render_example(tokenizer, replace(example, text=text, label=longest), labels, system_prompt)
        return len(rendered.input_ids) - max_length

    over = excess(example.text)
    if over <= 0:
        return example
    offsets = tokenizer(example.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ends = [end for _start, end in offsets]
    keep = len(ends) - over - 1  # text tokens kept; one more for the mark
    while keep > 0:
        text = shortened_text(example.text, ends[keep - 1])
        over = excess(text)
        if over <= 0:
            return replace(example, text=text)
        keep -= over  # a cut can merge tokens differently: step back by what is still over
    return replace(example, text=SHORTENED)


def with_answer(messages: list[dict], answer: str) -> list[dict]:
    """The conversation with its last (assistant) turn replaced by ``answer``."""
    return [*messages[:-1], {**messages[-1], "content": answer}]


def tokenize_document(tokenizer, text: str) -> list[int]:
    """Raw text for continued pre-training: the text and an end-of-sequence token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return ids
