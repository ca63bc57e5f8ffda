"""Evaluation speed on the embedded model, measured side by side in one run.

1. Classification: label scoring (tunesmith's evaluation) against the same evaluation done by
   generating each answer with ``generate`` one example at a time, and against plain label scoring
   (one padded row per example x label, no shared prefix), zero-shot and 8-shot.
2. Generation: batched generation (KV cache, left/middle padding, shared prefix) against one prompt
   at a time, in useful new tokens per second.

Each in fp32 and in bf16 (`tunesmith eval --precision`).

    .venv/bin/python bench/eval_speed.py            # writes the "eval-speed" section of bench/RESULTS.md

Uses ../shared/data (sentiment-movie, chat-corpus) when present, else the project's examples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, table, write_section  # noqa: E402
from tunesmith.data.batching import Row, collate  # noqa: E402
from tunesmith.data.formats import read_file  # noqa: E402
from tunesmith.data.records import Example
from tunesmith.data.render import render_messages, render_prompt  # noqa: E402
from tunesmith.data.shots import pick_shots  # noqa: E402
from tunesmith.evaluation.label_scoring import score_candidates  # noqa: E402
from tunesmith.evaluation.scores import normalize_answer  # noqa: E402
from tunesmith.evaluation.systems import conversation, split_answer
from tunesmith.models.base import resolve_base  # noqa: E402
from tunesmith.models.generation import generate_batch  # noqa: E402
from tunesmith.models.load import load_model, load_tokenizer
from tunesmith.models.precision import precision_dtype  # noqa: E402
from tunesmith.training.loss import token_loss_sums  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def timed(function):
    began = time.perf_counter()
    value = function()
    return value, time.perf_counter() - began


def plain_scoring(model, tokenizer, candidates) -> torch.Tensor:
    """The straightforward way: every (example, label) row on its own, padded batches of 16."""
    rows = [Row(c.input_ids, c.labels, list(range(len(c.input_ids)))) for example in candidates for c in example]
    scores = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = collate(rows[start : start + 16], tokenizer.pad_token_id)
            scores.append(-token_loss_sums(model, batch))
    return torch.cat(scores).view(len(candidates), -1)


def generated_label(text: str, labels: list[str]) -> str | None:
    answer = normalize_answer(text)
    return next((label for label in labels if normalize_answer(label) == answer), None)


def classification(
    model,
    tokenizer,
    test: list[Example],
    pool: list[Example],
    n_generate: int,
    n_plain: int,
    rounds: int,
    precision: str,
) -> list[list]:
    labels = sorted({e.label for e in test})
    gold = [labels.index(e.label) for e in test]
    longest = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels) + 1
    rows = []
    for shots in (0, 8):
        chosen = pick_shots(pool, shots, seed=0)

        def render(example, label, chosen=chosen):
            candidate = Example(line=example.line, text=example.text, label=label)
            return render_messages(tokenizer, conversation(candidate, labels, None, chosen))

        candidates = [[render(e, label) for label in labels] for e in test]
        subset = test[:n_generate]
        prompts = [
            tokenizer(
                render_prompt(tokenizer, split_answer(conversation(e, labels, None, chosen))[0]),
                add_special_tokens=False,
            )["input_ids"]
            for e in subset
        ]
        score_candidates(model, candidates[:4])  # warm-up
        generate_batch(model, tokenizer, prompts[:1], longest, share_prefix=False)
        # Rounds alternate the two, so a machine that slows down mid-run slows both; the ratio is of medians.
        tree_rates, generate_rates = [], []
        for _ in range(rounds):
            scores, tree_s = timed(lambda candidates=candidates: score_candidates(model, candidates)[0])
            outputs, generate_s = timed(
                lambda prompts=prompts: [
                    generate_batch(model, tokenizer, [p], longest, share_prefix=False)[0] for p in prompts
                ]
            )
            tree_rates.append(len(test) / tree_s)
            generate_rates.append(len(subset) / generate_s)
        plain, plain_s = timed(lambda candidates=candidates: plain_scoring(model, tokenizer, candidates[:n_plain]))
        difference = (scores[:n_plain] - plain).abs().max().item()
        if precision == "fp32":
            assert difference < 1e-3, difference
        agree = (scores[:n_plain].argmax(1) == plain.argmax(1)).float().mean().item()
        accuracy = sum(int(p == g) for p, g in zip(scores.argmax(1).tolist(), gold)) / len(test)
        generated_acc = sum(int(generated_label(o.text, labels) == e.label) for o, e in zip(outputs, subset))
        tree_rate, generate_rate = statistics.median(tree_rates), statistics.median(generate_rates)
        rows.append(
            [
                precision,
                f"{shots}-shot",
                len(test),
                f"{tree_rate:.1f}",
                f"{len(plain) / plain_s:.1f}",
                f"{generate_rate:.2f}",
                f"**{tree_rate / generate_rate:.1f}×**",
                f"{difference:.1g} / {agree:.1%}",
                f"{accuracy:.1%}",
                f"{generated_acc / len(subset):.1%} ({len(subset)})",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def generation(model, tokenizer, prompts_file: Path, n_prompts: int, max_new: int, precision: str) -> list[list]:
    examples = read_file(prompts_file).examples[:n_prompts]
    prompts = [
        tokenizer(render_prompt(tokenizer, split_answer(e.messages)[0]), add_special_tokens=False)["input_ids"]
        for e in examples
    ]
    generate_batch(model, tokenizer, prompts[:2], 8)  # warm-up
    single, single_s = timed(
        lambda: [generate_batch(model, tokenizer, [p], max_new, share_prefix=False)[0] for p in prompts]
    )
    single_tokens = sum(g.new_tokens for g in single)
    rows = [
        [
            precision,
            "one at a time",
            len(prompts),
            single_tokens,
            f"{single_s:.1f}",
            f"{single_tokens / single_s:.1f}",
            "1.0×",
            "–",
        ]
    ]
    for batch_size in (8, 16, 32):
        batched, seconds = timed(
            lambda batch_size=batch_size: generate_batch(model, tokenizer, prompts, max_new, batch_size=batch_size)
        )
        tokens = sum(g.new_tokens for g in batched)
        same = sum(a.text == b.text for a, b in zip(single, batched))
        rows.append(
            [
                precision,
                f"batch {batch_size}",
                len(prompts),
                tokens,
                f"{seconds:.1f}",
                f"{tokens / seconds:.1f}",
                f"**{(tokens / seconds) / (single_tokens / single_s):.1f}×**",
                f"{same}/{len(prompts)}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="classification examples scored")
    parser.add_argument(
        "--generate-examples", type=int, default=60, help="of those, answered one at a time with generate (slow)"
    )
    parser.add_argument(
        "--plain-examples",
        type=int,
        default=50,
        help="of those, scored the plain way too (slow), to compare speed and scores",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of scoring and generate, alternated")
    parser.add_argument("--prompts", type=int, default=64, help="chat prompts for the generation benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated: fp32, bf16, auto (auto: what tunesmith eval uses by default here)",
    )
    args = parser.parse_args()

    base = resolve_base("smollm2-135m")
    tokenizer = load_tokenizer(base)
    sentiment = SHARED / "sentiment-movie"
    if sentiment.is_dir():
        test_file, pool_file = sentiment / "test.jsonl", sentiment / "train.jsonl"
    else:
        test_file, pool_file = REPO / "examples/reviews/test.jsonl", REPO / "examples/reviews/train.jsonl"
    chat_file = SHARED / "chat-corpus" / "test.jsonl"
    chat_file = chat_file if chat_file.is_file() else REPO / "examples/support/test.jsonl"
    test = read_file(test_file).examples[: args.examples]
    precisions = dict.fromkeys(
        "bf16" if precision_dtype(p) == torch.bfloat16 else "fp32" for p in args.precisions.split(",")
    )
    started = time.perf_counter()
    class_rows, gen_rows = [], []
    for precision in precisions:
        model = load_model(base, precision_dtype(precision)).eval()
        class_rows += classification(
            model,
            tokenizer,
            test,
            read_file(pool_file).examples,
            args.generate_examples,
            args.plain_examples,
            args.rounds,
            precision,
        )
        gen_rows += generation(model, tokenizer, chat_file, args.prompts, args.max_new_tokens, precision)
        del model

    command = "python bench/eval_speed.py " + " ".join(sys.argv[1:])
    write_section(
        "eval-speed",
        f"""
## Evaluation speed (`bench/eval_speed.py`)

Command: `{command.strip()}` · base model smollm2-135m on the CPU, weights in each precision listed
(`tunesmith eval` uses {"bf16" if precision_dtype("auto") == torch.bfloat16 else "fp32"} here by default) ·
{machine()} · whole run {time.perf_counter() - started:.0f} s.

**Classification** on `{test_file.parent.name}/{test_file.name}`:
examples per second of label scoring (shared-prefix KV cache + one forward pass per example with a
branch per label), of plain label scoring (one padded row per example × label; the first {
            args.plain_examples
        }), and of generating
each answer with `generate` one example at a time (the first {
            args.generate_examples
        }; max new tokens = longest label + end-of-turn), all
with the same weights. Label scoring and `generate` are timed in {args.rounds} alternating rounds after a
warm-up; the speed-up is the ratio of their medians. "vs plain" is the largest difference in a
log-likelihood between label scoring and plain scoring (asserted below 1e-3 in fp32) and how often
they pick the same label.

{
            table(
                [
                    "precision",
                    "prompt",
                    "examples",
                    "label scoring ex/s",
                    "plain scoring ex/s",
                    "generate 1-by-1 ex/s",
                    "speed-up",
                    "vs plain: max Δ / same pick",
                    "accuracy (scoring)",
                    "accuracy (generate, n)",
                ],
                class_rows,
            )
        }

**Generation** of {args.prompts} chat prompts from `{chat_file.parent.name}/{chat_file.name}` (greedy, at most
{args.max_new_tokens} new tokens, stop at end-of-turn): useful new tokens per second, and how many
outputs are identical to one-at-a-time generation.

{
            table(
                [
                    "precision",
                    "mode",
                    "prompts",
                    "new tokens",
                    "seconds",
                    "tokens/s",
                    "vs one at a time",
                    "identical outputs",
                ],
                gen_rows,
            )
        }
""",
    )
    print(json.dumps({"classification": class_rows, "generation": gen_rows}, indent=1))


if __name__ == "__main__":
    main()
