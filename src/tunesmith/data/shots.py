"""Few-shot examples: a seeded, label-balanced pick of training examples, and the pool of them kept with a
registry version for later few-shot baselines."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from tunesmith.data.records import Example, example_record

POOL_FILE = "fewshot.jsonl"


POOL_SIZE = 64  # training examples kept with a version for few-shot baselines


def pick_shots(pool: list[Example], k: int, seed: int) -> list[Example]:
    """K examples, seeded; for classification a round-robin over labels so every label is shown."""
    if k <= 0 or not pool:
        return []
    rng = random.Random(seed)
    if pool[0].label is None:
        return rng.sample(pool, min(k, len(pool)))
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in pool:
        assert example.label is not None  # a pool is one file's examples: all labelled or none
        by_label[example.label].append(example)
    for examples in by_label.values():
        rng.shuffle(examples)
    picked: list[Example] = []
    while len(picked) < min(k, len(pool)):
        for label in sorted(by_label):
            if by_label[label] and len(picked) < k:
                picked.append(by_label[label].pop())
    return picked


def pool_records(examples: list[Example], seed: int) -> list[dict]:
    """A seeded, label-balanced sample of training examples, as JSON records, kept with a version."""
    return [example_record(example) for example in pick_shots(examples, POOL_SIZE, seed)]


def load_pool(path: Path) -> list[Example]:
    """The pool kept with a version, as the examples it was written from (``example_record`` leaves out
    weight 1, the default: it is put back here, as the reader does)."""
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        messages = record.get("messages") or record.get("prompt") or []
        examples.append(
            Example(
                line=number,
                messages=[{**m, "weight": m.get("weight", 1)} for m in messages],
                text=record.get("text"),
                label=record.get("label"),
                chosen=record.get("chosen"),
                rejected=record.get("rejected"),
                tools=record.get("tools"),
            )
        )
    return examples
