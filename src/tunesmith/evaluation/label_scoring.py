"""Label scoring: the log-likelihood of every candidate answer, without sampling, fast.

Each example is rendered once per candidate label (the full conversation, answer marked as the
loss target). Two kinds of sharing make this cheap:

- the **shared prefix** of all rows (system prompt, few-shot turns) is run through the model once
  and its key/value cache is reused by every batch;
- the candidates of one example share everything up to the answer, so they form one **tree**: the
  example's own tokens once, then one branch per label, with a 4-D attention mask that lets each
  branch see the prefix, the example and itself but not the other branches. Each branch restarts
  its position ids where the answer starts, so the numbers equal scoring each candidate on its own
  (tested against the plain computation);
- several trees are **packed into one row** (the mask keeps them apart), so the prefix's cache is
  copied once per row rather than once per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.data.batching import common_prefix_length
from tunesmith.data.render import IGNORE, Rendered
from tunesmith.models.kv_cache import expanded_cache, prefix_cache
from tunesmith.models.parts import eval_mode, hidden_and_head, output_head

ROW_TOKENS = 4096  # tokens per forward pass (rows x row length): bounds activation memory
MIN_PACK = 256  # tokens per packed row at least; at most about the prefix length more (see score_candidates)


@dataclass
class _Tree:
    """Examples laid out as shared tokens + one branch per candidate (one example, or several packed)."""

    tokens: list[int]
    positions: list[int]
    branch: list[int]  # -1 for shared tokens, else the candidate index
    group: list[int]  # which packed example each token belongs to
    targets: list[tuple[int, int, int, int]]  # (example, candidate, row position predicting it, token id)


def _first_target(rendered: Rendered) -> int:
    return next(i for i, label in enumerate(rendered.labels) if label != IGNORE)


def _last_target(rendered: Rendered) -> int:
    return max(i for i, label in enumerate(rendered.labels) if label != IGNORE)


def _tree(candidates: list[Rendered], start: int, example: int) -> _Tree:
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
                targets.append((example, index, row_of[absolute - 1], candidate.labels[absolute]))
    return _Tree(tokens, positions, branch, [0] * len(tokens), targets)


def _pack(trees: list[_Tree], length: int) -> list[_Tree]:
    """Concatenate trees (in the given order) into rows of at most ``length`` tokens."""
    rows: list[_Tree] = []
    for tree in trees:
        if not rows or len(rows[-1].tokens) + len(tree.tokens) > length:
            rows.append(_Tree([], [], [], [], []))
        row = rows[-1]
        offset, group = len(row.tokens), (row.group[-1] + 1 if row.group else 0)
        row.tokens += tree.tokens
        row.positions += tree.positions
        row.branch += tree.branch
        row.group += [group] * len(tree.tokens)
        row.targets += [(e, c, p + offset, t) for e, c, p, t in tree.targets]
    return rows


def _tree_mask(trees: list[_Tree], width: int, prefix: int, dtype) -> torch.Tensor:
    """Additive [batch, 1, width, prefix + width] mask: causal, prefix visible, examples and branches apart."""
    allowed = torch.zeros(len(trees), width, prefix + width, dtype=torch.bool)
    allowed[:, :, :prefix] = True
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row, tree in enumerate(trees):
        branch, group = torch.tensor(tree.branch), torch.tensor(tree.group)
        length = len(tree.tokens)
        # a key is visible if it is in the query's example, shared or on the query's branch, not in the future
        same = (group[None, :] == group[:, None]) & ((branch[None, :] == -1) | (branch[None, :] == branch[:, None]))
        allowed[row, :length, prefix : prefix + length] = same & causal[:length, :length]
        allowed[row, length:, :] = False
        allowed[row, length:, prefix + length :] = torch.eye(width - length, dtype=torch.bool)  # padding: itself
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.no_grad()
def score_candidates(
    model, candidates: list[list[Rendered]], row_tokens: int = ROW_TOKENS, pack_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_examples, n_candidates] summed log-probability of each candidate's target tokens, and
    the number of target tokens. ``candidates[i][j]`` is example i rendered with answer j.

    ``pack_tokens``: length of a packed row (default: the shared prefix's length, at least
    MIN_PACK). Longer rows copy the prefix cache less often but attend over more masked keys."""
    n_candidates = len(candidates[0]) if candidates else 0
    scores = torch.zeros(len(candidates), n_candidates)
    counts = torch.zeros(len(candidates), n_candidates)
    if not candidates:
        return scores, counts
    with eval_mode(model):
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        everything = [c for example in candidates for c in example]
        prefix_len = min(
            common_prefix_length([c.input_ids for c in everything]), min(_first_target(c) for c in everything) - 1
        )
        prefix_len = max(prefix_len, 0)
        prefix = prefix_cache(model, everything[0].input_ids[:prefix_len]) if prefix_len else None
        # The head in fp32 even for a bf16 model: bf16 logits of ~20 are rounded to steps of 0.125, enough
        # to flip near-tied labels (measured: 8% of zero-shot predictions, 3% with this); it runs on a few rows.
        head = output_head(model)
        head_weight = head.weight.float() if head is not None else None  # cast once, not per batch

        trees = sorted(
            (_tree(example, prefix_len, index) for index, example in enumerate(candidates)),
            key=lambda tree: len(tree.tokens),
        )
        rows = sorted(_pack(trees, pack_tokens or max(MIN_PACK, prefix_len)), key=lambda row: len(row.tokens))
        start = 0
        while start < len(rows):  # batches of similar length, at most row_tokens tokens (at least one row)
            end = start + 1
            while end < len(rows) and len(rows[end].tokens) * (end - start + 1) <= row_tokens:
                end += 1
            _score_batch(
                model,
                rows[start:end],
                len(rows[end - 1].tokens),
                prefix,
                prefix_len,
                device,
                dtype,
                head_weight,
                scores,
                counts,
            )
            start = end
    return scores, counts


def _score_batch(
    model, rows: list[_Tree], width, prefix, prefix_len, device, dtype, head_weight, scores, counts
) -> None:
    pad = lambda values, fill: values + [fill] * (width - len(values))  # noqa: E731
    input_ids = torch.tensor([pad(r.tokens, 0) for r in rows], device=device)
    position_ids = torch.tensor([pad(r.positions, r.positions[-1] + 1) for r in rows], device=device)
    mask = _tree_mask(rows, width, prefix_len, dtype).to(device)
    cache = expanded_cache(prefix, len(rows)) if prefix is not None else None
    hidden, head = hidden_and_head(
        model,
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        cache=cache,
        use_cache=cache is not None,
    )
    targets = [(index, *target) for index, row in enumerate(rows) for target in row.targets]
    row_index = torch.tensor([t[0] for t in targets], device=device)
    columns = torch.tensor([t[3] for t in targets], device=device)
    wanted = torch.tensor([t[4] for t in targets], device=device)
    picked = hidden[row_index, columns].float()
    logits = F.linear(picked, head_weight) if head is not None else picked
    log_probs = -F.cross_entropy(logits, wanted, reduction="none").cpu()
    for (_, example, candidate, _, _), log_prob in zip(targets, log_probs):
        scores[example, candidate] += log_prob
        counts[example, candidate] += 1
