"""Training in fp32 against bf16 on this CPU: why `precision: auto` picks what it picks.

Trains the embedded model with LoRA for one epoch on the project's examples/reviews, alternating fp32 and
bf16 (`--rounds` times each, so a slow spell of the machine hits both), and reports useful tokens/s of the
training loop, the best validation loss and the fine-tuned model's validation accuracy from the closing
comparison, with the matmul peaks measured in the same run.

    .venv/bin/python bench/precision_speed.py [--rounds 2]      # the "precision" section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, keep_registry_in, machine, table, write_section  # noqa: E402

DATA = REPO / "examples" / "reviews" / "train.jsonl"
PRECISIONS = ("fp32", "bf16")


def one_run(precision: str, name: str) -> dict:
    import tunesmith

    began = time.perf_counter()
    result = tunesmith.train(tunesmith.TrainConfig(data=DATA, name=name, epochs=1, precision=precision))
    loop = result.loop
    return {
        "wall_s": time.perf_counter() - began,
        "tokens_per_s": loop.tokens / loop.train_seconds,
        "val_loss": loop.best_val_loss,
        "accuracy": result.comparison["fine_tuned"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs per precision, alternated")
    args = parser.parse_args()
    keep_registry_in(Path(tempfile.mkdtemp(prefix="tunesmith-precision-")))

    from tunesmith.training.estimate import matmul_peak_gflops
    from tunesmith.training.hardware import native_bf16

    started = time.perf_counter()
    peaks = {p: matmul_peak_gflops(dtype) for p, dtype in zip(PRECISIONS, (torch.float32, torch.bfloat16))}
    runs: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    for round_ in range(args.rounds):
        for precision in PRECISIONS:
            runs[precision].append(one_run(precision, f"precision-{precision}-{round_}"))
            print(precision, runs[precision][-1], flush=True)

    def median(precision: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[precision])

    speed = {p: median(p, "tokens_per_s") for p in PRECISIONS}
    rows = [
        [
            p,
            len(runs[p]),
            f"{peaks[p]:.0f}",
            f"{speed[p]:.0f}",
            f"{speed[p] / speed['fp32']:.2f}×",
            f"{median(p, 'wall_s'):.1f}",
            " / ".join(f"{run['val_loss']:.4f}" for run in runs[p]),
            " / ".join(f"{run['accuracy']:.1%}" for run in runs[p]),
        ]
        for p in PRECISIONS
    ]
    write_section(
        "precision",
        f"""
## Training precision on this CPU (`bench/precision_speed.py`)

Command: `python bench/precision_speed.py --rounds {args.rounds}` · LoRA, one epoch of `examples/reviews/train.jsonl`
(the validation split is carved from it), runs alternated between precisions · {machine()} ·
`precision: auto` here: **{"bf16" if native_bf16() else "fp32"}** · whole run {time.perf_counter() - started:.0f} s.

{
            table(
                [
                    "precision",
                    "runs",
                    "matmul peak (GFLOP/s)",
                    "useful tok/s (loop, median)",
                    "vs fp32",
                    "whole command (s, median)",
                    "best validation loss, each run",
                    "validation accuracy, each run",
                ],
                rows,
            )
        }

The validation split is 32 reviews: an accuracy step is about 3 points, so compare the losses.
""",
    )


if __name__ == "__main__":
    main()
