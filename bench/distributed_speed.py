"""One process against `--nproc N` on this machine: what data-parallel training buys here, and that it trains the
same model.

Trains the embedded model with LoRA for one epoch on the project's examples/reviews through the CLI, alternating
one process (all cores' threads) and N processes (the cores shared out, OMP_NUM_THREADS = cores / N), `--rounds`
times each so a slow spell of the machine hits both. Reports the training loop's tokens/s, the whole command's
wall-clock (model loads and the closing comparison included) and the best validation loss. That agrees to
rounding in fp32 (tests/integration/test_distributed.py); under bf16, the default where the CPU has AMX or
AVX512-BF16, each process's half-size micro-batches round differently and the runs drift apart somewhat.

    .venv/bin/python bench/distributed_speed.py [--nproc 2] [--rounds 2]     # the "distributed" section
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, machine, table, write_section  # noqa: E402

DATA = REPO / "examples" / "reviews" / "train.jsonl"


def one_run(home: Path, name: str, nproc: int) -> dict:
    command = [sys.executable, "-m", "tunesmith", "train", str(DATA), "--name", name, "--epochs", "1"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "TUNESMITH_HOME": str(home), "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith")}
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - began
    manifest = json.loads((home / "registry" / name / "1" / "manifest.json").read_text())
    training = manifest["training"]
    return {
        "wall_s": wall,
        "tokens_per_s": training["tokens"] / training["train_seconds"],
        "val_loss": training["best_val_loss"],
        "threads": training["threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    runs: dict[int, list[dict]] = {1: [], args.nproc: []}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for nproc in runs:
                figures = one_run(Path(tmp), f"r{round_}-p{nproc}", nproc)
                runs[nproc].append(figures)
                print(f"round {round_ + 1}, {nproc} process(es): {figures}", flush=True)
    rows = []
    for nproc, results in runs.items():
        rows.append(
            [
                f"{nproc} × {results[0]['threads']} thread(s)",
                f"{statistics.median(r['tokens_per_s'] for r in results):.0f}",
                f"{statistics.median(r['wall_s'] for r in results):.0f} s",
                f"{results[0]['val_loss']:.5f}",
            ]
        )
    one, many = (statistics.median(r["tokens_per_s"] for r in runs[n]) for n in runs)
    command = f"python bench/distributed_speed.py --nproc {args.nproc} --rounds {args.rounds}"
    section = (
        f"## Data-parallel training on this CPU (`bench/distributed_speed.py`)\n\n"
        f"Command: `{command}` · embedded smollm2-135m, LoRA, one epoch of examples/reviews (320 rows) · "
        f"{machine()} · {args.rounds} rounds alternating, medians, {(time.perf_counter() - began) / 60:.0f} min.\n\n"
        + table(["processes", "training tokens/s", "whole command", "best validation loss"], rows)
        + f"\n\n{args.nproc} processes: {many / one:.2f}× the training loop's tokens/s of one process."
    )
    print(section)
    if not args.no_write:
        write_section("distributed", section)


if __name__ == "__main__":
    main()
