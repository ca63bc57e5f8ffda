"""Label scoring: the log-likelihood of every candidate answer, without sampling, fast.

Each example is rendered once per candidate label (the full conversation, answer marked as the
loss target). Two kinds of sharing make this cheap:

- the **shared prefix** of all rows (system prompt, few-shot turns) is run through the model once
  and its key/value cache is reused by every batch;
- the candidates of one example share everything up to the answer, so they go in **one row**: the
  example's own tokens once, then one branch per label, with a 4-D attention mask that lets each
  branch see the prefix, the example and itself but not the other branches ("tree" attention).
  Each branch restarts its position ids where the answer starts, so the numbers equal scoring
  each candidate on its own (tested against the plain computation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.render import IGNORE, Rendered
from tunesmith.evaluate.metrics import PLAIN_HEAD_MODELS
from tunesmith.generation import common_prefix_length, expanded_cache, prefix_cache

ROW_TOKENS = 4096  # tokens per forward pass (rows x row length): bounds activation memory


@dataclass
class _Tree:
    """One example laid out as shared tokens + one branch per candidate."""
    tokens: list[int]
    positions: list[int]
    branch: list[int]             # -1 for shared tokens, else the candidate index
    targets: list[tuple[int, int, int]]  # (candidate, position in row that predicts it, token id)


def _first_target(rendered: Rendered) -> int:
    return next(i for i, label in enumerate(rendered.labels) if label != IGNORE)


def _last_target(rendered: Rendered) -> int:
    return max(i for i, label in enumerate(rendered.labels) if label != IGNORE)


def _tree(candidates: list[Rendered], start: int) -> _Tree:
    """Lay out one example's candidates after the ``start`` tokens already in the prefix cache."""
    # Shared part: at least one token (it predicts each answer's first token), never a target.
    first_targets = [_first_target(c) for c in candidates]
    shared_end = min(common_prefix_length([c.input_ids for c in candidates]), *first_targets)
    shared_end = max(shared_end, start + 1)
    tokens = list(candidates[0].input_ids[start:shared_end])
    positions = list(range(start, shared_end))
    branch = [-1] * len(tokens)
    targets = []
    last_shared = len(tokens) - 1
    for index, candidate in enumerate(candidates):
        row_of = {shared_end - 1: last_shared}  # absolute position -> row position
        for absolute in range(shared_end, _last_target(candidate) + 1):
            row_of[absolute] = len(tokens)
            tokens.append(candidate.input_ids[absolute])
            positions.append(absolute)
            branch.append(index)
        for absolute in range(shared_end, _last_target(candidate) + 1):
            if candidate.labels[absolute] != IGNORE:
                targets.append((index, row_of[absolute - 1], candidate.labels[absolute]))
    return _Tree(tokens, positions, branch, targets)


def _tree_mask(trees: list[_Tree], width: int, prefix: int, dtype) -> torch.Tensor:
    """Additive [batch, 1, width, prefix + width] mask: causal, prefix visible, branches apart."""
    allowed = torch.zeros(len(trees), width, prefix + width, dtype=torch.bool)
    allowed[:, :, :prefix] = True
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row, tree in enumerate(trees):
        branch = torch.tensor(tree.branch)
        length = len(tree.tokens)
        # a key is visible if it is shared or on the query's own branch (and not in the future)
        same = (branch[None, :] == -1) | (branch[None, :] == branch[:, None])
        allowed[row, :length, prefix:prefix + length] = same & causal[:length, :length]
        allowed[row, length:, :] = False
        allowed[row, length:, prefix + length:] = torch.eye(width - length, dtype=torch.bool)  # padding: itself
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _hidden_states(model, input_ids, position_ids, mask, cache):
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if causal_lm.config.model_type in PLAIN_HEAD_MODELS:
        out = causal_lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                                      past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state, causal_lm.get_output_embeddings()
    logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                   past_key_values=cache, use_cache=cache is not None).logits
    return logits, None  # already logits


@torch.no_grad()
def score_candidates(model, candidates: list[list[Rendered]], row_tokens: int = ROW_TOKENS
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_examples, n_candidates] summed log-probability of each candidate's target tokens, and
    the number of target tokens. ``candidates[i][j]`` is example i rendered with answer j."""
    n_candidates = len(candidates[0]) if candidates else 0
    scores = torch.zeros(len(candidates), n_candidates)
    counts = torch.zeros(len(candidates), n_candidates)
    if not candidates:
        return scores, counts
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    everything = [c for example in candidates for c in example]
    prefix_len = min(common_prefix_length([c.input_ids for c in everything]),
                     min(_first_target(c) for c in everything) - 1)
    prefix_len = max(prefix_len, 0)
    prefix = prefix_cache(model, everything[0].input_ids[:prefix_len]) if prefix_len else None

    trees = [_tree(example, prefix_len) for example in candidates]
    order = sorted(range(len(trees)), key=lambda i: len(trees[i].tokens))
    start = 0
    while start < len(order):
        width = len(trees[order[start]].tokens)
        batch = [order[start]]
        while start + len(batch) < len(order):
            longer = len(trees[order[start + len(batch)]].tokens)
            if longer * (len(batch) + 1) > row_tokens:
                break
            batch.append(order[start + len(batch)])
            width = longer
        start += len(batch)
        _score_batch(model, [trees[i] for i in batch], batch, width, prefix, prefix_len, device, dtype,
                     scores, counts)
    model.train(was_training)
    return scores, counts


def _score_batch(model, trees, indices, width, prefix, prefix_len, device, dtype, scores, counts) -> None:
    pad = lambda values, fill: values + [fill] * (width - len(values))  # noqa: E731
    input_ids = torch.tensor([pad(t.tokens, 0) for t in trees], device=device)
    position_ids = torch.tensor([pad(t.positions, t.positions[-1] + 1) for t in trees], device=device)
    mask = _tree_mask(trees, width, prefix_len, dtype).to(device)
    hidden, head = _hidden_states(model, input_ids, position_ids, mask, expanded_cache(prefix, len(trees)) if prefix is not None else None)
    rows = torch.tensor([r for r, t in enumerate(trees) for _ in t.targets], device=device)
    columns = torch.tensor([p for t in trees for _, p, _ in t.targets], device=device)
    wanted = torch.tensor([token for t in trees for _, _, token in t.targets], device=device)
    picked = hidden[rows, columns]
    logits = (head(picked) if head is not None else picked).float()
    log_probs = -F.cross_entropy(logits, wanted, reduction="none").cpu()
    cursor = 0
    for tree, example in zip(trees, indices):
        for candidate, _, _ in tree.targets:
            scores[example, candidate] += log_probs[cursor]
            counts[example, candidate] += 1
            cursor += 1
