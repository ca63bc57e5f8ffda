"""The systems an evaluation compares, and the K-shot prompt that stands for prompt engineering.

    base        the base model, zero-shot, with the same instruction the fine-tune was trained on
    few_shot    the base model with K training examples shown as earlier turns of the conversation
    parent      for a fine-tune built on an earlier one (e.g. DPO on a supervised model): that
                earlier fine-tune, the model it started from
    fine_tuned  the fine-tuned model, zero-shot
    teacher     a model behind an OpenAI-compatible URL (``eval --teacher-url``), measured over HTTP as a
                reference, not a baseline to beat (evaluation/teacher.py)

With LoRA these are one set of weights: the adapter switched off for the baselines (for a model
with a parent, adapter-off *is* the parent) and merged (reversibly) for the fine-tuned model, so
its latency is that of the merged model users serve.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

from tunesmith.data.records import Example
from tunesmith.data.render import example_messages

SYSTEM_ORDER = ("base", "few_shot", "parent", "fine_tuned", "teacher")
DISPLAY = {
    "base": "base (zero-shot)",
    "few_shot": "base + {shots}-shot prompt",
    "parent": "starting fine-tune",
    "fine_tuned": "fine-tuned",
    "teacher": "teacher",
}


@dataclass
class System:
    name: str
    model: object
    context: Callable[[], AbstractContextManager] = nullcontext
    shots: list[Example] = field(default_factory=list)


def display_name(name: str, shots: int | str = 0) -> str:
    return DISPLAY[name].format(shots=shots)


@contextmanager
def adapter_off(model):
    with model.disable_adapter():
        yield


@contextmanager
def adapter_merged(model):
    """LoRA weights folded into the base weights for the duration (undone after)."""
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def same_model_systems(model, shots: list[Example], lora: bool = True, parent: str | None = None) -> dict[str, System]:
    """base / few_shot / fine_tuned on one model. With LoRA the adapter is switched off for the
    baselines and merged for the fine-tuned model; without it (a full fine-tune, in training) the
    baselines are measured before training and the fine-tuned model after. Given a ``parent`` (the
    fine-tune the weights started from) the adapter-off system is that parent, not the base."""
    off = (lambda: adapter_off(model)) if lora else nullcontext
    merged = (lambda: adapter_merged(model)) if lora else nullcontext
    start = "parent" if parent else "base"
    systems = {start: System(start, model, off)}
    if shots:
        systems["few_shot"] = System("few_shot", model, off, shots)
    systems["fine_tuned"] = System("fine_tuned", model, merged)
    return systems


def conversation(
    example: Example, labels: list[str] | None, system_prompt: str | None, shots: list[Example]
) -> list[dict]:
    """The example's messages, after the shots as earlier turns (which carry no loss)."""
    messages = example_messages(example, labels, None)
    own_system = [m for m in messages[:1] if m["role"] == "system"]
    messages = messages[len(own_system) :]
    shot_turns = []
    for shot in shots:
        turns = [m for m in example_messages(shot, labels, None) if m["role"] != "system"]
        shot_turns += [{**m, "weight": 0} for m in turns]
    system = own_system or ([{"role": "system", "content": system_prompt, "weight": 1}] if system_prompt else [])
    return [*system, *shot_turns, *messages]


def split_answer(messages: list[dict]) -> tuple[list[dict], str]:
    """(the conversation before the last assistant turn, that turn's text): prompt and reference."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
