"""The 8-shot baseline of a generation task, the slowest system `tunesmith eval` measures, side by side
against what it cost before two changes (same weights, same prompts, alternating rounds):

1. Batched generation with transformers' DynamicCache, which concatenates the whole key/value cache
   with each new token, against tunesmith's cache that writes each token into room reserved after
   the prompt (generation._AppendingLayer). Outputs must be identical.
2. Answer loss (teacher-forced) with every row computed whole (padded rows) against the prefix the
   rows share (system prompt + 8 shots) run once into a key/value cache (metrics.loss_sums_in_batches).
   Losses must agree to 1e-4.

Data: the project's own examples/support (chat; 8 shots from train.jsonl, the 10 test prompts).

    .venv/bin/python bench/fewshot_eval.py      # writes the "fewshot-eval" section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, table, write_section  # noqa: E402
from tunesmith.data.batching import Row  # noqa: E402
from tunesmith.data.formats import read_file  # noqa: E402
from tunesmith.data.render import render_messages, render_prompt  # noqa: E402
from tunesmith.data.shots import pick_shots  # noqa: E402
from tunesmith.evaluation.systems import conversation, split_answer
from tunesmith.models import generation  # noqa: E402
from tunesmith.models.base import resolve_base  # noqa: E402
from tunesmith.models.load import load_model, load_tokenizer
from tunesmith.models.precision import precision_dtype  # noqa: E402
from tunesmith.training import loss as metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 64  # the cap of train's closing comparison


def concatenating_cache(prefix, batch, room=0):
    """The cache before: transformers' DynamicCache (torch.cat of the whole cache at every step)."""
    return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix])


def timed(function):
    began = time.perf_counter()
    value = function()
    return value, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.manual_seed(0)
    path = resolve_base("smollm2-135m")
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=precision_dtype(args.precision)).eval()
    train = read_file(REPO / "examples/support/train.jsonl", "chat").examples
    test = read_file(REPO / "examples/support/test.jsonl", "chat").examples
    shots = pick_shots(train, 8, 0)
    conversations = [conversation(example, None, None, shots) for example in test]
    prompts = [
        tokenizer(render_prompt(tokenizer, split_answer(c)[0]), add_special_tokens=False)["input_ids"]
        for c in conversations
    ]
    rendered = [render_messages(tokenizer, c) for c in conversations]
    rows = [Row(r.input_ids, r.labels, list(range(len(r.input_ids)))) for r in rendered]
    shared = metrics.shared_prefix_length(rows)

    def generate():
        return [g.text for g in generation.generate_batch(model, tokenizer, prompts, MAX_NEW_TOKENS)]

    def generate_before():
        appending, generation.expanded_cache = generation.expanded_cache, concatenating_cache
        try:
            return generate()
        finally:
            generation.expanded_cache = appending

    def loss():
        return metrics.answer_loss(model, rows, tokenizer.pad_token_id)["loss"]

    def loss_before():
        sharing, metrics.shared_prefix_length = metrics.shared_prefix_length, lambda rows: 0
        try:
            return loss()
        finally:
            metrics.shared_prefix_length = sharing

    began = time.perf_counter()
    generate(), generate_before()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in ("gen_before", "gen", "loss_before", "loss")}
    outputs: dict[str, object] = {}
    for _ in range(args.rounds):
        for name, function in (
            ("gen_before", generate_before),
            ("gen", generate),
            ("loss_before", loss_before),
            ("loss", loss),
        ):
            outputs[name], elapsed = timed(function)
            seconds[name].append(elapsed)
            print(f"{name}: {elapsed:.1f} s", flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    identical = sum(a == b for a, b in zip(outputs["gen"], outputs["gen_before"]))
    difference = abs(outputs["loss"] - outputs["loss_before"])
    assert identical == len(prompts), "the appending cache changed a generated answer"
    assert difference < 1e-4, f"the prefix cache moved the answer loss by {difference}"
    prompt_tokens = statistics.fmean(len(p) for p in prompts)
    rows_md = [
        [
            "batched generation (64 new tokens)",
            "DynamicCache (torch.cat per token)",
            "cache with reserved room",
            f"{median['gen_before']:.1f}",
            f"{median['gen']:.1f}",
            f"**{median['gen_before'] / median['gen']:.1f}×**",
            f"{identical}/{len(prompts)} outputs identical",
        ],
        [
            "answer loss",
            "every row whole (padded)",
            f"shared prefix ({shared} tokens) cached once",
            f"{median['loss_before']:.1f}",
            f"{median['loss']:.1f}",
            f"**{median['loss_before'] / median['loss']:.1f}×**",
            f"loss {outputs['loss']:.4f} vs {outputs['loss_before']:.4f}",
        ],
    ]
    write_section(
        "fewshot-eval",
        f"""## The 8-shot baseline of a generation task (`bench/fewshot_eval.py`)

Command: `python bench/fewshot_eval.py` · smollm2-135m, {args.precision} on the CPU · {machine()} ·
{len(prompts)} prompts of examples/support/test.jsonl with 8 shots from train.jsonl (prompts of
{prompt_tokens:.0f} tokens on average, {shared} shared) · median of {args.rounds} alternating rounds after a
warm-up · whole run {time.perf_counter() - began:.0f} s.

{table(["work", "before", "now", "before (s)", "now (s)", "speed-up", "same result"], rows_md)}
""",
    )
    print(rows_md)


if __name__ == "__main__":
    main()
