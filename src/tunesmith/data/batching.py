"""Rows, batches and the order they are seen in.

A training row is one or more *segments* (an example, or a piece of a document) laid end to end.
Position ids restart at 0 at each segment and no attention mask is passed, so transformers builds
a block-diagonal causal mask: a token never attends across segments, padding included (padding is
one more segment, with no loss). The label of a segment's first token is masked so that no loss
crosses a boundary either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.render import IGNORE, Rendered


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
