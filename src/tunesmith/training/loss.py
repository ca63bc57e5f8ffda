"""The training loss, and the teacher-forced figures evaluation takes from it: answer loss, perplexity and
summed log-likelihoods of held-out rows.

``token_loss_sums`` is what the loop minimises; validation and evaluation call the same function, so they
agree with training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from tunesmith.data.batching import (
    Row,
    collate,
    collate_shared_prefix,
    shared_prefix_length,
)
from tunesmith.data.render import IGNORE
from tunesmith.models.kv_cache import expanded_cache, prefix_cache
from tunesmith.models.parts import eval_mode, hidden_and_head
from tunesmith.training.kernels import lays_out_shared_prefix


def token_loss_sums(model, batch: dict[str, Any]) -> torch.Tensor:
    """Summed next-token cross-entropy per row over positions whose label is not IGNORE.

    The output projection (576 x 49k for SmolLM2) is applied only where a label is, not at
    every position: for answer-only losses that skips most of the vocabulary matmul and the
    softmax. Equal to the plain computation (tested); other architectures take the plain path.
    """
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    # One row with the prefix once (collate_shared_prefix), or rows after a prefix in a key/value cache.
    layout = {key: batch[key] for key in ("segments", "cache") if key in batch}
    hidden, head = hidden_and_head(
        model, input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache="cache" in batch, **layout
    )
    picked = hidden[:, :-1][mask]
    logits = (head(picked) if head is not None else picked).float()
    losses = F.cross_entropy(logits, targets[mask], reduction="none")
    if "segments" in batch:
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


def loss_sums_in_batches(model, rows: list[Row], pad_id: int, batch_size: int = 8):
    """Yields (indices into ``rows``, each row's summed target loss) batch by batch, rows of similar
    lengths together.

    Outside the training attention, a prefix every row shares (a system prompt, few-shot turns) is run
    once into a key/value cache that each batch reads: with 8 shots that is most of every row, which
    the padded rows would otherwise compute once per row (the training attention lays out a shared
    prefix per batch itself, see loss_batch)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths together: less padding
    prefix = 0 if lays_out_shared_prefix(model) else shared_prefix_length(rows)
    cache = prefix_cache(model, rows[0].input_ids[:prefix]) if prefix else None
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        chunk = [rows[i] for i in index]
        if cache is None:
            batch = loss_batch(model, chunk, pad_id)
        else:  # the rows after the prefix, padded (no layout: this is not the training attention)
            batch = loss_batch(
                model,
                [Row(row.input_ids[prefix:], row.labels[prefix:], row.position_ids[prefix:]) for row in chunk],
                pad_id,
            )
            batch["cache"] = expanded_cache(cache, len(chunk))
        yield index, token_loss_sums(model, batch)


@torch.no_grad()
def row_loss_sums(model, rows: list[Row], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Each row's summed target loss in nats (float64), in the order given, computed in eval mode."""
    with eval_mode(model):
        result = torch.zeros(len(rows), dtype=torch.float64)
        for index, sums in loss_sums_in_batches(model, rows, pad_id, batch_size):
            result[index] = sums.double().cpu()
    return result


def answer_loss(model, rows: list[Row], pad_id: int, batch_size: int = 8) -> dict:
    """Mean loss per target token over ``rows`` and its perplexity."""
    if not rows:
        return {}
    return mean_loss(row_loss_sums(model, rows, pad_id, batch_size).sum().item(), sum(row.n_target for row in rows))


def mean_loss(total: float, count: int) -> dict:
    """Loss per target token from a summed loss, and its perplexity."""
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "target_tokens": count}


def sequence_log_likelihoods(model, rows: list[Row], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Summed log-likelihood of each row's target tokens, in the order given."""
    return -row_loss_sums(model, rows, pad_id, batch_size)
