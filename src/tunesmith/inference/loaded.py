"""Loading a model for use and generating from it, with the template it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from tunesmith.core.config import Task
from tunesmith.core.errors import TunesmithError
from tunesmith.data.labels import CLASSIFY_TEMPLATE, classify_prompt
from tunesmith.data.render import render_prompt
from tunesmith.models.adapter_bank import LoraWeights, read_lora
from tunesmith.models.base import EMBEDDED, is_model_folder, resolve_base
from tunesmith.models.kv_cache import answer_cache
from tunesmith.models.load import load_adapter, load_model, load_tokenizer
from tunesmith.models.precision import precision_dtype
from tunesmith.registry import store
from tunesmith.registry.lineage import in_registry, load_start, version_start


@dataclass
class LoadedModel:
    ref: str
    model: Any  # a transformers causal LM, or the PEFT model around one (``merge=False``)
    tokenizer: PreTrainedTokenizerBase
    task: Task = "chat"
    labels: list[str] | None = None
    system_prompt: str | None = None
    version: store.ModelVersion | None = None
    # Set when ``model`` is a base shared with other versions and this version's LoRA adapter is applied
    # per request (models.batch_decoder), not merged into the weights.
    adapter: LoraWeights | None = None

    def messages_for(self, prompt: str, history: list[dict] | None = None) -> list[dict]:
        """The conversation to send: the stored system prompt, history, and the prompt wrapped
        the way training wrapped it (classification prompts get the label instruction)."""
        content = self._classify_prompt(prompt) if self.task == "classify" else prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, *(history or []), {"role": "user", "content": content}]

    def conversation(self, messages: list[dict]) -> list[dict]:
        """A conversation from a client (the OpenAI API) as training rendered it: the stored system
        prompt unless the client sent one, and for a classifier every user text wrapped in the label
        instruction (a lone user turn gives exactly ``messages_for``; earlier pairs read as shots)."""
        if self.task == "classify":
            # A client that already sends the instruction (`data generate` asking this model as a teacher)
            # is not wrapped twice.
            instruction = CLASSIFY_TEMPLATE.split("{labels}")[0]  # whatever the order of the labels sent
            messages = [
                {**m, "content": self._classify_prompt(m["content"])}
                if m["role"] == "user" and not m["content"].startswith(instruction)
                else m
                for m in messages
            ]
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def _classify_prompt(self, text: str) -> str:
        if self.labels is None:
            raise TunesmithError(f"{self.ref}: a classifier without its label set")
        return classify_prompt(text, self.labels)


def load(ref: str, merge: bool = True, precision: str = "auto") -> LoadedModel:
    """A registry model (NAME or NAME:VERSION), a base model name, or a local model folder, with its
    weights in ``precision`` (models.load.precision_dtype).

    A bare name in the registry wins over a folder of that name in the current directory: spell a
    folder as a path (``./NAME``) to load it."""
    if ref not in EMBEDDED and (in_registry(ref) or not is_model_folder(Path(ref).expanduser())):
        return load_version(store.get(ref), merge, precision)
    base_path = resolve_base(ref)
    model = load_model(base_path, precision_dtype(precision)).eval()
    return LoadedModel(ref=ref, model=model, tokenizer=load_tokenizer(base_path))


def load_version(version: store.ModelVersion, merge: bool = True, precision: str = "auto") -> LoadedModel:
    """One registry version with the base its manifest names. Unlike ``load`` nothing here reads a
    client's string as a folder path, which the API relies on."""
    manifest = version.manifest
    tokenizer = load_tokenizer(version.path)
    dtype = precision_dtype(precision)
    if manifest.has_adapter:
        # The base, with any earlier fine-tunes it builds on merged in (models.lineage), then its adapter.
        model = load_adapter(load_start(version_start(manifest, version.path), dtype), version.path / "adapter")
        if merge:
            model = model.merge_and_unload()  # plain weights: faster generation
    else:
        model = load_model(version.path / "model", dtype)
    return _as_loaded(version, model.eval(), tokenizer)


def adapter_start(version: store.ModelVersion) -> Path | None:
    """The weights a LoRA version's adapter applies to directly (a base model, or a full fine-tune), when it
    builds on no earlier adapter; None otherwise (then only its merged weights answer as it does)."""
    manifest = version.manifest
    if not manifest.has_adapter:
        return None
    start = version_start(manifest, version.path)
    return None if start.adapters else start.weights


def load_over(version: store.ModelVersion, start: LoadedModel) -> LoadedModel | str:
    """``version`` as its adapter over ``start`` (loaded from ``adapter_start(version)``), sharing its
    weights; or why the adapter cannot be applied unmerged (models.adapter_bank.read_lora)."""
    parameter = next(start.model.parameters())
    lora = read_lora(version.path / "adapter", parameter.dtype, parameter.device)
    if isinstance(lora, str):
        return lora
    loaded = _as_loaded(version, start.model, load_tokenizer(version.path))
    loaded.adapter = lora
    return loaded


def _as_loaded(version: store.ModelVersion, model, tokenizer) -> LoadedModel:
    manifest = version.manifest
    # A DPO model answers like the chat model it was trained from.
    task = "chat" if manifest.task == "preference" else manifest.task
    return LoadedModel(
        ref=version.ref,
        model=model,
        tokenizer=tokenizer,
        task=task,
        labels=manifest.labels,
        system_prompt=manifest.system_prompt,
        version=version,
    )


@torch.no_grad()
def generate_answer(
    loaded: LoadedModel,
    prompt: str | None = None,
    messages: list[dict] | None = None,
    max_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    streamer=None,
) -> str:
    """One completion. Chat-like models get the chat template; raw-text models continue the text."""
    tokenizer, model = loaded.tokenizer, loaded.model
    if loaded.task == "text" and messages is None:
        text = prompt or ""
    else:
        text = render_prompt(tokenizer, messages or loaded.messages_for(prompt or ""))
    device = next(model.parameters()).device
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    )
    output = model.generate(
        **inputs,
        cache=answer_cache(model, inputs["input_ids"].shape[1], max_tokens),
        max_new_tokens=max_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        **sampling,
    )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return cast(str, tokenizer.decode(new_tokens, skip_special_tokens=True))  # one sequence: one string
