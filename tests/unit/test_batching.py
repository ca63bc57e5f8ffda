"""Rows, packing, padding and order; and that packed segments never see each other."""

from __future__ import annotations

import pytest
import torch

from tunesmith.data.batching import Row, collate, epoch_order, pack_documents
from tunesmith.data.render import IGNORE, Rendered
from tunesmith.models.load import load_model


def segment(ids: list[int], labelled: bool = True) -> Rendered:
    return Rendered(list(ids), list(ids) if labelled else [IGNORE] * len(ids))


def split_segments(row: Row) -> list[list[int]]:
    pieces: list[list[int]] = []
    for token, position in zip(row.input_ids, row.position_ids):
        if position == 0:
            pieces.append([])
        pieces[-1].append(token)
    return pieces


# --------------------------------------------------------------------------- Row


def test_from_segments_masks_first_label_of_later_segments():
    row = Row.from_segments([segment([1, 2, 3]), segment([4, 5]), segment([6, 7, 8, 9])])
    assert row.input_ids == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert row.position_ids == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert row.labels == [1, 2, 3, IGNORE, 5, IGNORE, 7, 8, 9]
    # the row's very first label is never predicted, so it is not counted
    assert row.n_target == 6
    assert len(row) == 9


def test_from_segments_keeps_masked_labels_masked():
    row = Row.from_segments([Rendered([1, 2], [IGNORE, 2]), Rendered([3, 4, 5], [IGNORE, IGNORE, 5])])
    assert row.labels == [IGNORE, 2, IGNORE, IGNORE, 5]
    assert row.n_target == 2


def test_single_segment_row_is_unchanged():
    row = Row.from_segments([Rendered([7, 8, 9], [IGNORE, 8, 9])])
    assert (row.input_ids, row.labels, row.position_ids) == ([7, 8, 9], [IGNORE, 8, 9], [0, 1, 2])


# --------------------------------------------------------------------------- packing


def test_pack_documents_respects_block_size_and_keeps_all_tokens():
    block = 8
    lengths = [3, 20, 5, 2, 8, 13, 4, 6]  # no piece of length 1
    documents, start = [], 1
    for n in lengths:
        documents.append(list(range(start, start + n)))
        start += n
    rows = pack_documents(documents, block)
    assert all(len(row) <= block for row in rows)
    expected_pieces = sorted(doc[i : i + block] for doc in documents for i in range(0, len(doc), block))
    assert sorted(piece for row in rows for piece in split_segments(row)) == expected_pieces
    assert sorted(token for row in rows for token in row.input_ids) == sorted(t for d in documents for t in d)
    # first-fit packing: fewer rows than pieces, and each piece is a segment of its own
    assert len(rows) < len(expected_pieces)
    for row in rows:
        assert all(label == IGNORE or label == token for token, label in zip(row.input_ids, row.labels))
        firsts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE for i in firsts[1:])


def test_pack_documents_drops_single_token_pieces():
    rows = pack_documents([[1, 2, 3, 4, 5], [6]], block_size=4)
    tokens = [token for row in rows for token in row.input_ids]
    assert sorted(tokens) == [1, 2, 3, 4]  # the 1-token tail (5) and document (6) teach nothing


# --------------------------------------------------------------------------- collate


def test_collate_pads_with_ignore_and_restarting_positions():
    short = Row.from_segments([segment([5, 6, 7])])
    long = Row.from_segments([segment([1, 2, 3]), segment([4, 5, 6, 7, 8])])
    batch = collate([short, long], pad_id=99)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, 99, 99, 99, 99, 99], long.input_ids]
    assert batch["labels"].tolist() == [[5, 6, 7] + [IGNORE] * 5, long.labels]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], long.position_ids]
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long


# --------------------------------------------------------------------------- order


def test_epoch_order_is_deterministic_and_covers_every_index_once():
    lengths = [(i * 37) % 101 + 1 for i in range(300)]
    first = epoch_order(lengths, batch_size=8, seed=3, epoch=0)
    assert first == epoch_order(lengths, batch_size=8, seed=3, epoch=0)
    flat = [i for batch in first for i in batch]
    assert sorted(flat) == list(range(300))
    assert all(1 <= len(batch) <= 8 for batch in first)
    assert len(first) == 300 // 8 + 1


def test_epoch_order_differs_across_epochs_and_seeds():
    lengths = list(range(1, 101))
    base = epoch_order(lengths, 4, seed=0, epoch=0)
    assert epoch_order(lengths, 4, seed=0, epoch=1) != base
    assert epoch_order(lengths, 4, seed=1, epoch=0) != base
    for epoch in range(3):
        assert sorted(i for b in epoch_order(lengths, 4, 0, epoch) for i in b) == list(range(100))


def test_epoch_order_groups_similar_lengths():
    lengths = list(range(1, 129))  # one mega-batch of 16 steps x 8
    for batch in epoch_order(lengths, 8, seed=0, epoch=0):
        values = [lengths[i] for i in batch]
        assert values == sorted(values, reverse=True) and max(values) - min(values) == 7


def test_epoch_order_accepts_large_seeds():
    order = epoch_order([1, 2, 3, 4], batch_size=2, seed=2**50, epoch=0)
    assert sorted(i for batch in order for i in batch) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- isolation on a real model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def texts(tiny_tokenizer):
    encode = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return {
        "a": encode("The quick brown fox jumps over the lazy dog."),
        "a2": encode("Summarise the call. Customer: CU-1234"),
        "b": encode("Hello! How are you today?"),
    }


def logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


def test_packed_segment_equals_segment_alone(model, texts, tiny_tokenizer):
    a, a2, b = texts["a"], texts["a2"], texts["b"]
    pad = tiny_tokenizer.pad_token_id
    alone = logits(model, collate([Row.from_segments([segment(b)])], pad))[0]
    packed = logits(model, collate([Row.from_segments([segment(a), segment(b)])], pad))[0, len(a) :]
    assert torch.allclose(packed, alone, atol=1e-5)

    other_first = logits(model, collate([Row.from_segments([segment(a2), segment(b)])], pad))[0, len(a2) :]
    assert torch.allclose(other_first, alone, atol=1e-5)

    # sensitivity check: without restarting positions the segments do see each other
    continuous = {"input_ids": torch.tensor([a + b]), "position_ids": torch.arange(len(a + b))[None]}
    assert not torch.allclose(logits(model, continuous)[0, len(a) :], alone, atol=1e-3)


def test_packed_segment_is_isolated_inside_a_batch(model, texts, tiny_tokenizer):
    a, a2, b = texts["a"], texts["a2"], texts["b"]
    pad = tiny_tokenizer.pad_token_id
    alone = logits(model, collate([Row.from_segments([segment(b)])], pad))[0]
    rows = [Row.from_segments([segment(a), segment(b)]), Row.from_segments([segment(b), segment(a2), segment(a)])]
    out = logits(model, collate(rows, pad))
    assert torch.allclose(out[0, len(a) : len(a) + len(b)], alone, atol=1e-5)
    assert torch.allclose(out[1, : len(b)], alone, atol=1e-5)


def test_padding_after_an_example_does_not_change_it(model, texts, tiny_tokenizer):
    a, b = texts["a"], texts["b"]
    alone = logits(model, collate([Row.from_segments([segment(b)])], tiny_tokenizer.pad_token_id))[0]
    long_row = Row.from_segments([segment(a + a)])
    for pad_id in (tiny_tokenizer.pad_token_id, 7):
        batch = collate([Row.from_segments([segment(b)]), long_row], pad_id)
        assert batch["input_ids"].shape[1] > len(b)
        assert torch.allclose(logits(model, batch)[0, : len(b)], alone, atol=1e-5)
