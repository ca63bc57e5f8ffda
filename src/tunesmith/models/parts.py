"""The parts of a loaded model that several layers reach for: the causal LM under a PEFT wrapper, its
output head, and eval mode for a while."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def causal_lm(model):
    """The transformers model itself: under a PEFT wrapper, the model it wraps."""
    # A model can only be a PeftModel once peft is imported; asking that way spares every process that never
    # wraps a model (generate, chat, serve a base) the second of importing peft.
    peft = sys.modules.get("peft")
    return model.get_base_model() if peft is not None and isinstance(model, peft.PeftModel) else model


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """``model.eval()`` for the duration (no dropout), then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# Architectures whose logits are exactly output_embeddings(decoder(x)): no soft-capping or scaling.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2"}


def output_head(model) -> torch.nn.Module | None:
    """The output projection of a plain-head model (logits = head(last hidden state)), else None."""
    lm = causal_lm(model)
    return lm.get_output_embeddings() if lm.config.model_type in PLAIN_HEAD_MODELS else None


def hidden_and_head(model, **inputs) -> tuple[torch.Tensor, torch.nn.Module | None]:
    """(last hidden states, output head) for plain-head models, so callers can apply the 49k-vocabulary
    projection only where they need logits; (logits, None) for other architectures."""
    head = output_head(model)
    if head is not None:
        lm = causal_lm(model)
        return lm.get_decoder()(**inputs).last_hidden_state, head
    return model(**inputs).logits, None
