"""Teacher-forced loss of one model on held-out rows: answer loss and perplexity.

The same ``token_loss_sums`` is the training loss, so validation and evaluation agree with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tunesmith.data.batching import Row, collate, collate_shared_prefix, shared_prefix_length
from tunesmith.data.render import IGNORE
from tunesmith.training.kernels import lays_out_shared_prefix


# Architectures whose logits are exactly output_embeddings(decoder(x)): no soft-capping or scaling.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2"}


def output_head(model) -> torch.nn.Module | None:
    """The output projection of a plain-head model (logits = head(last hidden state)), else None."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm.get_output_embeddings() if causal_lm.config.model_type in PLAIN_HEAD_MODELS else None


def hidden_and_head(model, **inputs) -> tuple[torch.Tensor, torch.nn.Module | None]:
    """(last hidden states, output head) for plain-head models, so callers can apply the 49k-vocabulary
    projection only where they need logits; (logits, None) for other architectures."""
    head = output_head(model)
    if head is not None:
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        return causal_lm.get_decoder()(**inputs).last_hidden_state, head
    return model(**inputs).logits, None


def token_loss_sums(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy per row over positions whose label is not IGNORE.

    The output projection (576 x 49k for SmolLM2) is applied only where a label is, not at
    every position: for answer-only losses that skips most of the vocabulary matmul and the
    softmax. Equal to the plain computation (tested); other architectures take the plain path.
    """
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    shared = {"segments": batch["segments"]} if "segments" in batch else {}  # one row: collate_shared_prefix
    hidden, head = hidden_and_head(model, input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                   use_cache=False, **shared)
    picked = hidden[:, :-1][mask]
    logits = (head(picked) if head is not None else picked).float()
    losses = F.cross_entropy(logits, targets[mask], reduction="none")
    if shared:
        rows, n_rows = batch["row_index"][:, 1:][mask], batch["segments"].rows
    else:
        rows, n_rows = mask.nonzero()[:, 0], targets.shape[0]
    return torch.zeros(n_rows, dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)


def loss_batch(model, rows: list[Row], pad_id: int) -> dict:
    """``rows`` as tensors on the model's device for token_loss_sums: right-padded rows, or, where the
    training attention reads the layout (training.kernels) and the rows share a prefix, one row with
    the prefix once (data.batching.collate_shared_prefix)."""
    prefix = shared_prefix_length(rows) if lays_out_shared_prefix(model) else 0
    batch = collate_shared_prefix(rows, prefix) if prefix else collate(rows, pad_id)
    device = next(model.parameters()).device
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def answer_loss(model, rows: list[Row], pad_id: int, batch_size: int = 8) -> dict:
    """Mean loss per target token over ``rows`` and its perplexity."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(rows, key=len)  # similar lengths together: less padding
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        total += token_loss_sums(model, loss_batch(model, chunk, pad_id)).sum().item()
        count += sum(row.n_target for row in chunk)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "target_tokens": count}


@torch.no_grad()
def sequence_log_likelihoods(model, rows: list[Row], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Summed log-likelihood of each row's target tokens, in the order given."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together
    result = torch.zeros(len(rows), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = loss_batch(model, [rows[i] for i in index], pad_id)
        result[index] = -token_loss_sums(model, batch).double().cpu()
    return result
