"""From a checked data report to training and validation rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.batching import PairRow, Row, pack_documents
from tunesmith.data.check import DataReport
from tunesmith.data.records import Example
from tunesmith.data.render import Rendered, RenderedPair


@dataclass
class Splits:
    train_examples: list[Example]
    val_examples: list[Example]
    train_rendered: list[Rendered | RenderedPair]
    val_rendered: list[Rendered | RenderedPair]


def validation_size(n: int, fraction: float) -> int:
    """Held-out examples when no validation file is given: ``fraction`` of n, 1..200, none below 10."""
    if n < 10 or fraction == 0:
        return 0
    return max(1, min(200, round(n * fraction)))


def split(report: DataReport, fraction: float, seed: int) -> Splits:
    """Use the validation file if there is one, else hold out a seeded random share."""
    if report.val is not None:
        return Splits(report.train.examples, report.val.examples, report.rendered, report.val_rendered)
    n = len(report.train.examples)
    if report.task == "text":  # documents are split after packing (see build_rows)
        return Splits(report.train.examples, [], report.rendered, [])
    n_val = validation_size(n, fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_index, train_index = sorted(order[:n_val]), sorted(order[n_val:])
    pick = lambda items, index: [items[i] for i in index]  # noqa: E731
    return Splits(
        pick(report.train.examples, train_index),
        pick(report.train.examples, val_index),
        pick(report.rendered, train_index),
        pick(report.rendered, val_index),
    )


def build_rows(
    task: str, splits: Splits, max_length: int, fraction: float, seed: int, has_val_file: bool
) -> tuple[list[Row | PairRow], list[Row | PairRow]]:
    """Rows for the loop: one example per row (truncated), or packed blocks for raw text."""
    if task == "text":
        train: list[Row | PairRow] = list(pack_documents([r.input_ids for r in splits.train_rendered], max_length))
        if has_val_file:
            return train, list(pack_documents([r.input_ids for r in splits.val_rendered], max_length))
        n_val = validation_size(len(train), fraction)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        return [train[i] for i in sorted(order[n_val:])], [train[i] for i in sorted(order[:n_val])]
    return _rows(splits.train_rendered, max_length), _rows(splits.val_rendered, max_length)


def _rows(rendered: list[Rendered | RenderedPair], max_length: int) -> list[Row | PairRow]:
    rows = [_row(r.truncated(max_length)) for r in rendered]
    return [row for row in rows if row.n_target > 0]  # nothing left to learn after truncation


def _row(rendered: Rendered | RenderedPair) -> Row | PairRow:
    if isinstance(rendered, RenderedPair):
        return PairRow(Row.from_segments([rendered.chosen]), Row.from_segments([rendered.rejected]))
    return Row.from_segments([rendered])
