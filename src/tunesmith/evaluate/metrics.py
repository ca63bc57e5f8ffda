"""Held-out metrics for one model: answer loss / perplexity, and label scoring for classification.

Label scoring compares the log-likelihood of each label's full token sequence (the label and the
end-of-turn token) after the prompt, so labels that share a prefix are told apart and nothing is
sampled; a softmax over the labels gives a probability per label.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tunesmith.data.batching import Row, collate
from tunesmith.data.formats import Example
from tunesmith.data.render import IGNORE, example_messages, render_messages


# Architectures whose logits are exactly output_embeddings(decoder(x)): no soft-capping or scaling.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2"}


def token_loss_sums(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy per row over positions whose label is not IGNORE.

    The output projection (576 x 49k for SmolLM2) is applied only where a label is, not at
    every position: for answer-only losses that skips most of the vocabulary matmul and the
    softmax. Equal to the plain computation (tested); other architectures take the plain path.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    if causal_lm.config.model_type in PLAIN_HEAD_MODELS:
        hidden = causal_lm.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                         use_cache=False).last_hidden_state
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
    else:
        full = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        logits = full[:, :-1][mask].float()
    losses = F.cross_entropy(logits, targets[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    return torch.zeros(targets.shape[0], dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)


@torch.no_grad()
def answer_loss(model, rows: list[Row], pad_id: int, batch_size: int = 8) -> dict:
    """Mean loss per target token over ``rows`` and its perplexity."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    ordered = sorted(rows, key=len)  # similar lengths together: less padding
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        total += token_loss_sums(model, batch).sum().item()
        count += sum(row.n_target for row in chunk)
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "target_tokens": count}


@torch.no_grad()
def label_log_likelihoods(model, tokenizer, examples: list[Example], labels: list[str],
                          system_prompt: str | None = None, batch_size: int = 16
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_examples, n_labels] summed log-likelihood of each label's tokens, and their token counts."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for example in examples:
        for label in labels:
            candidate = Example(line=example.line, text=example.text, label=label)
            rendered = render_messages(tokenizer, example_messages(candidate, labels, system_prompt))
            rows.append(Row(rendered.input_ids, rendered.labels, list(range(len(rendered.input_ids)))))
    scores = torch.empty(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
        scores[start : start + len(chunk)] = -token_loss_sums(model, batch).float().cpu()
    model.train(was_training)
    counts = torch.tensor([row.n_target for row in rows], dtype=torch.float32)
    shape = (len(examples), len(labels))
    return scores.view(shape), counts.view(shape)


def classification_metrics(log_likelihoods: torch.Tensor, counts: torch.Tensor, examples: list[Example],
                           labels: list[str]) -> dict:
    """Accuracy from label scoring, plus the answer loss of the gold labels (as ``answer_loss``)."""
    probabilities = torch.softmax(log_likelihoods, dim=1)
    gold = torch.tensor([labels.index(example.label) for example in examples])
    correct = (probabilities.argmax(dim=1) == gold).sum().item()
    picked = torch.arange(len(examples))
    loss = (-log_likelihoods[picked, gold].sum() / counts[picked, gold].sum().clamp(min=1)).item()
    return {"accuracy": correct / max(len(examples), 1), "n": len(examples), "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)), "target_tokens": int(counts[picked, gold].sum())}
