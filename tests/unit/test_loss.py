"""The answer-only loss against a plain reference, and gradient accumulation = one big batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunesmith.data.batching import Row, collate
from tunesmith.data.render import IGNORE, render_messages
from tunesmith.models.load import add_lora, load_model
from tunesmith.training.loop import train_step
from tunesmith.training.loss import answer_loss, token_loss_sums

CONVERSATIONS = [
    ("Hello!", "How are you today?"),
    ("Classify the text as one of: negative, positive.", "positive"),
    ("Summarise the call. Customer: CU-1234 Product: FBX-200", "Issue: no signal."),
    ("The quick brown fox", "jumps over the lazy dog. The quick brown fox jumps."),
]

# Training the tiny model: two threads on its tiny matrices wait on each other, 4-10x slower on a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_loss_sums(model, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    shifted, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    losses = F.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(targets.shape).sum(dim=1)


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[Row]:
    rendered = [
        render_messages(tiny_tokenizer, [{"role": "user", "content": u}, {"role": "assistant", "content": a}])
        for u, a in CONVERSATIONS
    ]
    single = [Row.from_segments([r]) for r in rendered]
    return single + [Row.from_segments(rendered[:2]), Row.from_segments(rendered[2:])]


def fresh_model(tiny_model_dir, lora: bool = False):
    model = load_model(tiny_model_dir, dtype=torch.float32)
    if lora:
        torch.manual_seed(1)
        model = add_lora(model, rank=4, alpha=8, dropout=0.0, targets="all-linear")
        with torch.no_grad():  # B starts at zero; make the adapter matter
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_token_loss_sums_equals_plain_reference(tiny_model_dir, tiny_tokenizer, rows, lora):
    model = fresh_model(tiny_model_dir, lora)
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        ours = token_loss_sums(model, batch)
        reference = reference_loss_sums(model, batch)
    assert ours.shape == (len(rows),)
    assert torch.all(reference > 0)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-4)


def test_lora_loss_differs_from_base_loss(tiny_model_dir, tiny_tokenizer, rows):
    batch = collate(rows, tiny_tokenizer.pad_token_id)
    model = fresh_model(tiny_model_dir, lora=True)
    with torch.no_grad():
        tuned = token_loss_sums(model, batch)
        with model.disable_adapter():
            base = token_loss_sums(model, batch)
        plain = token_loss_sums(fresh_model(tiny_model_dir), batch)
    assert torch.allclose(base, plain, atol=1e-4)
    assert not torch.allclose(tuned, base, atol=1e-2)


def test_token_loss_sums_ignores_masked_positions(tiny_model_dir, tiny_tokenizer, rows):
    model = fresh_model(tiny_model_dir)
    batch = collate(rows[:2], tiny_tokenizer.pad_token_id)
    masked = {**batch, "labels": torch.full_like(batch["labels"], IGNORE)}
    masked["labels"][1] = batch["labels"][1]
    with torch.no_grad():
        full, partial = token_loss_sums(model, batch), token_loss_sums(model, masked)
    assert partial[0].item() == 0.0
    assert torch.allclose(partial[1], full[1], atol=1e-5)


def test_answer_loss_is_mean_per_target_token(tiny_model_dir, tiny_tokenizer, rows):
    model = fresh_model(tiny_model_dir).train()
    with torch.no_grad():
        total = reference_loss_sums(model, collate(rows, tiny_tokenizer.pad_token_id)).sum().item()
    result = answer_loss(model, rows, tiny_tokenizer.pad_token_id, batch_size=2)
    n_target = sum(row.n_target for row in rows)
    assert result["target_tokens"] == n_target
    assert result["loss"] == pytest.approx(total / n_target, rel=1e-5)
    assert result["perplexity"] == pytest.approx(torch.tensor(total / n_target).exp().item(), rel=1e-5)
    assert model.training  # restored


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tiny_tokenizer, rows, lora):
    model = fresh_model(tiny_model_dir, lora)
    four = rows[:4]  # different lengths, so micro-batches pad differently
    assert len({len(row) for row in four}) == 4

    def run(micro_batch_size: int):
        model.zero_grad(set_to_none=True)
        loss, tokens = train_step(model, four, micro_batch_size, tiny_tokenizer.pad_token_id)
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss, tokens, grads

    loss4, tokens4, grads4 = run(4)
    loss2, tokens2, grads2 = run(2)
    loss1, _, grads1 = run(1)
    assert tokens4 == tokens2 == sum(len(row) for row in four)
    assert loss2 == pytest.approx(loss4, rel=1e-5) and loss1 == pytest.approx(loss4, rel=1e-5)
    with torch.no_grad():
        expected = reference_loss_sums(model, collate(four, tiny_tokenizer.pad_token_id)).sum().item()
    assert loss4 == pytest.approx(expected / sum(row.n_target for row in four), rel=1e-5)
    assert grads4.keys() == grads2.keys() and len(grads4) > 0
    assert any(g.abs().sum() > 0 for g in grads4.values())
    for name in grads4:
        assert torch.allclose(grads2[name], grads4[name], atol=1e-6, rtol=1e-4), name
        assert torch.allclose(grads1[name], grads4[name], atol=1e-6, rtol=1e-4), name
