"""Rows that share a prefix, laid out as one row with the prefix once (data.batching), give the same
loss and gradients as the padded rows, and no row sees another's tokens."""

from __future__ import annotations

import pytest
import torch
from test_kernels import assert_grads_close, make_model

from tunesmith.data.batching import MIN_SHARED_PREFIX, Row, collate, shared_prefix_length
from tunesmith.data.render import IGNORE, Rendered
from tunesmith.training import loss as metrics
from tunesmith.training.kernels import cpu_training_attention, training_kernels
from tunesmith.training.loss import answer_loss, loss_batch, sequence_log_likelihoods, token_loss_sums

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PREFIX = 20


def rows_with_prefix(vocab: int, suffix_lengths=(9, 4, 13, 6), prefix: int = PREFIX, seed: int = 0) -> list[Row]:
    """Rows that start with the same ``prefix`` tokens; the last 3 tokens of each are its answer."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, vocab, (prefix,), generator=generator).tolist()
    rows = []
    for length in suffix_lengths:
        ids = shared + torch.randint(3, vocab, (length,), generator=generator).tolist()
        labels = [IGNORE] * (len(ids) - 3) + ids[-3:]
        rows.append(Row(ids, labels, list(range(len(ids)))))
    return rows


def test_shared_prefix_length_stops_before_the_first_target_and_needs_plain_rows():
    rows = rows_with_prefix(100)
    assert shared_prefix_length(rows) == PREFIX
    assert shared_prefix_length(rows[:1]) == 0  # nothing to share with
    # A target right after the common start: the token predicting it is not shared.
    early = Row(rows[0].input_ids, [IGNORE] * 18 + rows[0].input_ids[18:], rows[0].position_ids)
    assert shared_prefix_length([early, *rows[1:]]) == 17
    short = rows_with_prefix(100, prefix=MIN_SHARED_PREFIX - 1)
    assert shared_prefix_length(short) == 0
    # A packed row: its second segment starts at position 0 and could not see the prefix.
    a, b = (Rendered(r.input_ids, r.labels) for r in rows[:2])
    assert shared_prefix_length([Row.from_segments([a, b]), *rows[2:]]) == 0


def test_loss_batch_lays_out_the_prefix_only_under_the_training_attention(tiny_model_dir):
    model = make_model(tiny_model_dir)
    rows = rows_with_prefix(model.config.vocab_size)
    assert "segments" not in loss_batch(model, rows, model.config.pad_token_id)
    with cpu_training_attention(model):
        batch = loss_batch(model, rows, model.config.pad_token_id)
    assert "segments" in batch
    # The prefix once, then each row's own tokens: no padding.
    assert batch["input_ids"].shape == (1, PREFIX + sum(len(r) - PREFIX for r in rows))


def test_evaluation_runs_the_shared_prefix_once_into_a_cache(tiny_model_dir, monkeypatch):
    # Outside the training attention (eval, the closing comparison): the prefix goes through the model
    # once, each batch reads its cache, and every row's figures equal the padded rows'.
    model = make_model(tiny_model_dir).eval()
    rows = rows_with_prefix(model.config.vocab_size, suffix_lengths=(9, 4, 13, 6, 11))
    pad = model.config.pad_token_id
    with torch.no_grad():
        padded = token_loss_sums(model, collate(rows, pad))
    prefixes = []
    real_prefix_cache = metrics.prefix_cache
    monkeypatch.setattr(metrics, "prefix_cache", lambda m, ids: prefixes.append(len(ids)) or real_prefix_cache(m, ids))
    log_likelihoods = sequence_log_likelihoods(model, rows, pad, batch_size=2)
    loss = answer_loss(model, rows, pad, batch_size=2)
    assert prefixes == [PREFIX, PREFIX]  # once per call, not once per batch of 2
    torch.testing.assert_close(log_likelihoods.float(), -padded, rtol=1e-5, atol=1e-5)
    assert loss["loss"] == pytest.approx(padded.sum().item() / sum(r.n_target for r in rows), rel=1e-5)
    # Rows that share less than MIN_SHARED_PREFIX tokens run padded, without a cache.
    prefixes.clear()
    short = rows_with_prefix(model.config.vocab_size, prefix=MIN_SHARED_PREFIX - 1)
    sequence_log_likelihoods(model, short, pad, batch_size=2)
    assert prefixes == []


def loss_sums_and_grads(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    sums = token_loss_sums(model, batch)
    sums.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return sums.detach(), grads


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_shared_prefix_loss_and_gradients_equal_padded_rows(tiny_model_dir, lora, attention_path):
    model = make_model(tiny_model_dir, lora=lora, sharp=True)
    rows = rows_with_prefix(model.config.vocab_size)
    pad = model.config.pad_token_id
    with cpu_training_attention(model):
        padded_sums, padded_grads = loss_sums_and_grads(model, collate(rows, pad))
        batch = loss_batch(model, rows, pad)
        assert "segments" in batch
        sums, grads = loss_sums_and_grads(model, batch)
    assert (padded_sums > 0).all()
    torch.testing.assert_close(sums, padded_sums, rtol=1e-5, atol=0)  # per row, in the rows' order
    # Gradients reach the prefix's weights once, summed over the rows that attend to it.
    assert_grads_close(grads, padded_grads, rel=1e-4)


def test_rows_laid_out_together_never_see_each_other(tiny_model_dir, attention_path):
    model = make_model(tiny_model_dir, lora=False, sharp=True).eval()
    pad = model.config.pad_token_id
    rows = rows_with_prefix(model.config.vocab_size)
    other = rows_with_prefix(model.config.vocab_size, suffix_lengths=(9, 11, 13, 2), seed=0)
    other[0] = rows[0]  # same prefix (same seed) and same first row; the rows after it differ
    assert [r.input_ids for r in other[1:]] != [r.input_ids for r in rows[1:]]
    with torch.no_grad(), cpu_training_attention(model):
        first = token_loss_sums(model, loss_batch(model, rows, pad))
        again = token_loss_sums(model, loss_batch(model, other, pad))
        alone = token_loss_sums(model, collate(rows[:1], pad))
    torch.testing.assert_close(again[0], first[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(first[0], alone[0], rtol=1e-5, atol=0)


def test_shared_prefix_under_bf16_training_kernels(tiny_model_dir, attention_path):
    # The step as the loop runs it: bf16 frozen base, fused LoRA, the layout; close to the padded rows.
    model = make_model(tiny_model_dir, dtype=torch.bfloat16, sharp=True)
    rows = rows_with_prefix(model.config.vocab_size)
    pad = model.config.pad_token_id
    with training_kernels(model, bf16=True):
        padded_sums, padded_grads = loss_sums_and_grads(model, collate(rows, pad))
        sums, grads = loss_sums_and_grads(model, loss_batch(model, rows, pad))
        validation = answer_loss(model, rows, pad, batch_size=4)["loss"]
    torch.testing.assert_close(sums, padded_sums, rtol=3e-2, atol=0)
    assert_grads_close(grads, padded_grads, rel=5e-2)
    n_targets = sum(r.n_target for r in rows)
    assert validation == pytest.approx(padded_sums.sum().item() / n_targets, rel=3e-2)
