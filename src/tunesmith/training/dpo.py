"""Direct Preference Optimization (Rafailov et al., 2023) on LoRA adapters.

For a pair (prompt x, chosen y_w, rejected y_l) with policy pi and reference model ref:

    reward(y)  = beta * (log pi(y | x) - log ref(y | x))          (summed over the answer's tokens)
    loss       = -log sigmoid(reward(y_w) - reward(y_l))

The reference is the starting model: the same weights with the LoRA adapter switched off, so no
second copy is held in memory. Its log-likelihoods are computed in each step, in the same batch
as the policy's (chosen and rejected rows side by side), without gradients.

Logged per step: ``loss``, ``reward_margin`` (mean reward(y_w) - reward(y_l)) and
``reward_accuracy`` (share of pairs with a positive margin); on the held-out pairs the same, plus
``preference_accuracy``: the share where the model itself gives the chosen answer the higher
likelihood, the figure ``tunesmith eval`` reports.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tunesmith.data.batching import PairRow
from tunesmith.models.parts import eval_mode
from tunesmith.training import distributed
from tunesmith.training.distributed import SINGLE, ProcessGroup
from tunesmith.training.loss import loss_batch, token_loss_sums


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and the implicit rewards of both answers (from summed log-likelihoods)."""
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards.detach(), rejected_rewards.detach()


@contextmanager
def reference_model(model):
    """The model as it was before training: LoRA adapters switched off."""
    with model.disable_adapter():
        yield


def pair_log_likelihoods(model, pairs: list[PairRow], pad_id: int, reference: bool = False):
    """(chosen, rejected) summed answer log-likelihoods, one forward pass over both answers."""
    batch = loss_batch(model, [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_id)
    if reference:
        with torch.no_grad(), reference_model(model):
            log_likelihoods = -token_loss_sums(model, batch)
    else:
        log_likelihoods = -token_loss_sums(model, batch)
    return log_likelihoods[: len(pairs)], log_likelihoods[len(pairs) :]


class DPOObjective:
    """The loop's objective for preference pairs (see ``training.loop.SupervisedObjective``)."""

    def __init__(self, beta: float):
        self.beta = beta

    def step(
        self, model, pairs: list[PairRow], micro_batch_size: int, pad_id: int, group: ProcessGroup = SINGLE
    ) -> tuple[float, int, dict]:
        mine = distributed.shard(pairs, group)
        total, margin_sum, positive = 0.0, 0.0, 0.0
        for start in range(0, len(mine), micro_batch_size):
            chunk = mine[start : start + micro_batch_size]
            ref_chosen, ref_rejected = pair_log_likelihoods(model, chunk, pad_id, reference=True)
            chosen, rejected = pair_log_likelihoods(model, chunk, pad_id)
            losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
            (losses.sum() / len(pairs)).backward()  # mean over the step's pairs, however and wherever it is split
            total += losses.sum().item()
            margins = chosen_rewards - rejected_rewards
            margin_sum += margins.sum().item()
            positive += (margins > 0).sum().item()
        total, margin_sum, positive = distributed.sum_values([total, margin_sum, positive], group)
        tokens = sum(len(pair.chosen) + len(pair.rejected) for pair in pairs)
        return total / len(pairs), tokens, _reward_figures(margin_sum, positive, len(pairs))

    @torch.no_grad()
    def validate(self, model, pairs: list[PairRow], pad_id: int, batch_size: int, group: ProcessGroup = SINGLE) -> dict:
        assert not group.sharded  # DPO under FSDP is refused (workflows.train): rank 0 validates alone
        with eval_mode(model):
            losses, margins, preferred = [], [], []
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                ref_chosen, ref_rejected = pair_log_likelihoods(model, chunk, pad_id, reference=True)
                chosen, rejected = pair_log_likelihoods(model, chunk, pad_id)
                loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
                losses += loss.tolist()
                margins += (chosen_rewards - rejected_rewards).tolist()
                preferred += (chosen > rejected).tolist()
        positive = sum(margin > 0 for margin in margins)
        figures = {f"val_{key}": value for key, value in _reward_figures(sum(margins), positive, len(margins)).items()}
        return {
            "val_loss": sum(losses) / len(losses),
            **figures,
            "val_preference_accuracy": sum(preferred) / len(preferred),
        }


def _reward_figures(margin_sum: float, positive: float, pairs: int) -> dict:
    """Mean implicit reward margin and the share of pairs with a positive one, from their sums (which add up
    over processes)."""
    return {"reward_margin": margin_sum / pairs, "reward_accuracy": positive / pairs}
