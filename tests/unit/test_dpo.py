"""DPO on a tiny model: the loss equals a hand computation from full forward passes, the reference
is the base weights (adapter off, also under the fused training kernels), and accumulation does not
change the gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import sharpen
from tunesmith.data.batching import PairRow, Row
from tunesmith.data.records import Example
from tunesmith.data.render import IGNORE, render_example
from tunesmith.models.load import add_lora, load_model
from tunesmith.training.dpo import DPOObjective, dpo_loss
from tunesmith.training.kernels import training_kernels

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BETA = 0.3
PAIRS = [
    ("the soup was great", "positive", "negative"),
    ("Hello! How are you today?", "The quick brown fox.", "no"),
    ("Summarise the call.", "Customer: CU-1234 Product: FBX-200", "Issue: no signal"),
]


def _row(rendered) -> Row:
    return Row(rendered.input_ids, rendered.labels, list(range(len(rendered.input_ids))))


@pytest.fixture
def pairs(tiny_tokenizer) -> list[PairRow]:
    result = []
    for prompt, chosen, rejected in PAIRS:
        example = Example(
            line=1, messages=[{"role": "user", "content": prompt, "weight": 1}], chosen=chosen, rejected=rejected
        )
        rendered = render_example(tiny_tokenizer, example)
        result.append(PairRow(_row(rendered.chosen), _row(rendered.rejected)))
    return result


@pytest.fixture
def models(tiny_model_dir):
    """(policy with a non-zero LoRA adapter, the plain base model it was built on)."""
    base = load_model(tiny_model_dir, dtype=torch.float32)
    sharpen(base)
    reference = load_model(tiny_model_dir, dtype=torch.float32)
    reference.load_state_dict(base.state_dict())
    policy = add_lora(base, rank=4, alpha=8, dropout=0.0, targets="all-linear")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return policy, reference.eval()


def _log_likelihood(model, row: Row) -> torch.Tensor:
    """Plain computation: full logits, log-softmax, the answer tokens' log-probabilities summed."""
    logits = model(input_ids=torch.tensor([row.input_ids])).logits[0, :-1]
    targets = torch.tensor(row.labels[1:])
    mask = targets != IGNORE
    return F.log_softmax(logits.float(), dim=-1)[mask].gather(1, targets[mask, None]).sum()


def _hand_loss(policy, reference, pairs) -> torch.Tensor:
    losses = []
    for pair in pairs:
        with torch.no_grad():
            ref_chosen, ref_rejected = (
                _log_likelihood(reference, pair.chosen),
                _log_likelihood(reference, pair.rejected),
            )
        margin = (_log_likelihood(policy, pair.chosen) - ref_chosen) - (
            _log_likelihood(policy, pair.rejected) - ref_rejected
        )
        losses.append(-F.logsigmoid(BETA * margin))
    return torch.stack(losses).mean()


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fused", [False, True])
def test_dpo_loss_and_gradients_equal_the_hand_computation(models, pairs, tiny_tokenizer, fused):
    policy, reference = models
    expected = _hand_loss(policy, reference, pairs)
    expected.backward()
    expected_grads = _grads(policy)
    assert expected_grads and expected.item() != pytest.approx(0.6931, abs=1e-3)  # the adapter matters
    policy.zero_grad()

    objective = DPOObjective(BETA)
    with training_kernels(policy, bf16=False) if fused else torch.enable_grad():
        loss, tokens, figures = objective.step(policy, pairs, micro_batch_size=2, pad_id=tiny_tokenizer.pad_token_id)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert tokens == sum(len(p.chosen) + len(p.rejected) for p in pairs)
    for name, grad in _grads(policy).items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-5)  # fp32 sum order
    assert set(figures) == {"reward_margin", "reward_accuracy"}


def test_reference_is_the_base_with_the_adapter_off_even_under_the_fused_kernels(models, pairs, tiny_tokenizer):
    from tunesmith.training.dpo import pair_log_likelihoods

    policy, reference = models
    expected = torch.stack([_log_likelihood(reference, p.chosen) for p in pairs]).detach()
    with training_kernels(policy, bf16=False):
        chosen, _ = pair_log_likelihoods(policy, pairs, tiny_tokenizer.pad_token_id, reference=True)
        policy_chosen, _ = pair_log_likelihoods(policy, pairs, tiny_tokenizer.pad_token_id)
    torch.testing.assert_close(chosen, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy_chosen.detach(), expected)  # and the policy is not


def test_validation_figures(models, pairs, tiny_tokenizer):
    policy, reference = models
    figures = DPOObjective(BETA).validate(policy, pairs, tiny_tokenizer.pad_token_id, batch_size=2)
    preferred = [_log_likelihood(policy, p.chosen) > _log_likelihood(policy, p.rejected) for p in pairs]
    assert figures["val_preference_accuracy"] == pytest.approx(sum(map(bool, preferred)) / len(pairs))
    assert figures["val_loss"] == pytest.approx(_hand_loss(policy, reference, pairs).item(), rel=1e-5)
    assert 0 <= figures["val_reward_accuracy"] <= 1


def test_dpo_loss_formula():
    loss, chosen, rejected = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    # rewards 0.5 * (−1 − −2) = 0.5 and 0.5 * (−3 − −2) = −0.5; loss = −log σ(1)
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())
