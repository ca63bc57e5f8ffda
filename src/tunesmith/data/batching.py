"""Rows, batches and the order they are seen in.

A training row is one or more *segments* (an example, or a piece of a document) laid end to end.
Position ids restart at 0 at each segment and no attention mask is passed, so transformers builds
a block-diagonal causal mask: a token never attends across segments, padding included (padding is
one more segment, with no loss). The label of a segment's first token is masked so that no loss
crosses a boundary either.

Rows that all begin with the same tokens (a system prompt, an instruction: 46 of the 80 tokens of a
sentiment row) can be laid out as one row instead: the shared prefix once, then each row's own
tokens, with a :class:`SharedPrefixLayout` saying which keys each token may attend to (the prefix
and its own row). The training attention (``training.kernels``) reads that layout; the loss and
its gradients equal those of the padded rows (tested), at a fraction of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.render import IGNORE, Rendered

# Below this many common tokens, sharing a prefix saves too little to pay for laying it out apart
# (a second forward pass when generating, the attention layout when training).
MIN_SHARED_PREFIX = 16


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @classmethod
    def from_segments(cls, segments: list[Rendered]) -> Row:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for segment in segments:
            seg_labels = list(segment.labels)
            if ids and seg_labels:
                seg_labels[0] = IGNORE  # would be predicted from the previous segment
            ids += segment.input_ids
            labels += seg_labels
            positions += range(len(segment.input_ids))
        return cls(ids, labels, positions)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_target(self) -> int:
        # The first label is never predicted (labels are shifted by one inside the loss).
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass
class PairRow:
    """A preference pair for DPO: the prompt with the chosen answer and with the rejected one.
    Its length (for length-grouped batches) is the longer of the two."""

    chosen: Row
    rejected: Row

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))

    @property
    def n_target(self) -> int:
        return min(self.chosen.n_target, self.rejected.n_target)


def pack_documents(documents: list[list[int]], block_size: int) -> list[Row]:
    """Cut tokenized documents into pieces of at most ``block_size`` and pack them into rows.

    Long documents fill whole blocks; their tails and short documents are packed first-fit,
    in order, each piece a segment of its own (so no cross-document attention).
    """
    pieces: list[list[int]] = []
    for doc in documents:
        for start in range(0, len(doc), block_size):
            piece = doc[start : start + block_size]
            if len(piece) > 1:
                pieces.append(piece)
    rows: list[list[Rendered]] = []
    fill: list[int] = []
    for piece in pieces:
        segment = Rendered(piece, list(piece))
        for index, used in enumerate(fill):
            if used + len(piece) <= block_size:
                rows[index].append(segment)
                fill[index] += len(piece)
                break
        else:
            rows.append([segment])
            fill.append(len(piece))
    return [Row.from_segments(segments) for segments in rows]


def epoch_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices for each optimizer step of one epoch: shuffled, with similar lengths together.

    Rows are shuffled, cut into "mega-batches" of 16 steps, sorted by length inside each (so a
    batch wastes little on padding), and the batches shuffled again. Deterministic in (seed, epoch):
    a resumed run replays exactly the same order.
    """
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    mega = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def collate(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows into tensors; the padding is its own segment (positions from 0, no loss)."""
    width = max(len(row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        pad = width - len(row)
        ids.append(row.input_ids + [pad_id] * pad)
        labels.append(row.labels + [IGNORE] * pad)
        positions.append(row.position_ids + list(range(pad)))
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "position_ids": torch.tensor(positions),
    }


def common_prefix_length(sequences: list[list[int]]) -> int:
    if not sequences:
        return 0
    first, shortest = sequences[0], min(len(s) for s in sequences)
    for index in range(shortest):
        if any(s[index] != first[index] for s in sequences[1:]):
            return index
    return shortest


def shared_prefix_length(rows: list[Row]) -> int:
    """How many leading tokens every row has in common before any loss looks at them (0 when that
    is fewer than MIN_SHARED_PREFIX, when there are fewer than two rows, or when a row is packed:
    its later segments could not see the prefix)."""
    if len(rows) < 2 or any(row.position_ids != list(range(len(row))) for row in rows):
        return 0
    # Token k's label is predicted at k - 1: the prefix may end just before the first target's predictor.
    first_targets = (next((k for k in range(1, len(row)) if row.labels[k] != IGNORE), len(row)) for row in rows)
    shared = min(common_prefix_length([row.input_ids for row in rows]), min(first_targets) - 1)
    return shared if shared >= MIN_SHARED_PREFIX else 0


@dataclass
class SharedPrefixLayout:
    """Which keys each token of a shared-prefix row attends to, as attention *groups*: group 0 is
    the prefix (causal in itself), group i the i-th row's own tokens, which see the whole prefix
    and themselves (causal). Groups are padded to a common number of query and key slots."""

    query_index: torch.Tensor  # [groups, query slots]: the token in each slot (padding slots: token 0)
    key_index: torch.Tensor  # [groups, key slots]
    mask: torch.Tensor  # [groups, 1, query slots, key slots], True = attend (padding query slots: all)
    token_slot: torch.Tensor  # [tokens]: the flattened (group, query slot) of each token

    @property
    def rows(self) -> int:
        return self.query_index.shape[0] - 1  # every group but the prefix's

    @classmethod
    def build(cls, prefix: int, lengths: list[int]) -> SharedPrefixLayout:
        """``lengths``: each row's token count after the prefix, in the order laid out."""
        groups = [(list(range(prefix)), 0)]  # (the group's own tokens, prefix tokens it also sees)
        start = prefix
        for length in lengths:
            groups.append((list(range(start, start + length)), prefix))
            start += length
        queries = max(len(own) for own, _ in groups)
        keys = max(seen + len(own) for own, seen in groups)
        query_index = torch.zeros(len(groups), queries, dtype=torch.long)
        key_index = torch.zeros(len(groups), keys, dtype=torch.long)
        mask = torch.ones(len(groups), queries, keys, dtype=torch.bool)
        token_slot = torch.zeros(start, dtype=torch.long)
        for group, (own, seen) in enumerate(groups):
            query_index[group, : len(own)] = torch.tensor(own, dtype=torch.long)
            key_index[group, : seen + len(own)] = torch.tensor(list(range(seen)) + own, dtype=torch.long)
            # Query i sees the prefix (key slots < seen) and its own tokens up to itself (slots seen..seen+i).
            mask[group, : len(own)] = torch.arange(keys)[None, :] <= seen + torch.arange(len(own))[:, None]
            token_slot[own] = group * queries + torch.arange(len(own))
        return cls(query_index, key_index, mask[:, None], token_slot)

    def to(self, device) -> SharedPrefixLayout:
        return SharedPrefixLayout(
            self.query_index.to(device), self.key_index.to(device), self.mask.to(device), self.token_slot.to(device)
        )


def collate_shared_prefix(rows: list[Row], prefix: int) -> dict:
    """The rows as one row: the ``prefix`` tokens they share (shared_prefix_length) once, then each
    row's remaining tokens, positions continuing from the prefix; ``row_index`` says whose each
    token is (-1: the prefix), ``segments`` the attention layout. No padding at all."""
    ids, labels = list(rows[0].input_ids[:prefix]), [IGNORE] * prefix
    positions, owner = list(range(prefix)), [-1] * prefix
    for index, row in enumerate(rows):
        ids += row.input_ids[prefix:]
        labels += row.labels[prefix:]  # the first is IGNORE (shared_prefix_length): no loss across rows
        positions += row.position_ids[prefix:]
        owner += [index] * (len(row) - prefix)
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "row_index": torch.tensor([owner]),
        "segments": SharedPrefixLayout.build(prefix, [len(row) - prefix for row in rows]),
    }
