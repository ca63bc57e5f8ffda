"""One process against `--nproc N`, and against `--nproc N --fsdp`, on this machine: what data-parallel training
and sharding buy here, and that they train the same model.

Trains the embedded model (LoRA and full fine-tuning) for one epoch on the project's examples/reviews through the
CLI, alternating one process (all cores' threads), N processes (the cores shared out, OMP_NUM_THREADS = cores / N)
and N sharded processes, `--rounds` times each so a slow spell of the machine hits all. Reports the training loop's
tokens/s, the whole command's wall-clock (model loads and the closing comparison included), each process's peak
resident memory (rank 1 only trains; rank 0 also measures before and after) and the best validation loss.
That agrees to rounding in fp32 (tests/integration/test_distributed.py); under bf16, the default where the CPU has
AMX or AVX512-BF16, each process's half-size micro-batches round differently and the runs drift apart somewhat.

    .venv/bin/python bench/distributed_speed.py [--nproc 2] [--rounds 2] [--methods lora,full]   # "distributed"
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


def process_peaks(home: Path, running: subprocess.Popen) -> dict[int, float]:
    """Each training process's peak resident memory (VmHWM) in GB by rank, sampled from /proc until ``running``
    ends. The launcher of `--nproc` (its command line keeps the flag) holds no model and is left out. Rank 1 is
    the one to compare: it only trains, where rank 0 also measures the baselines and the fine-tuned model."""
    marker = f"TUNESMITH_HOME={home}".encode()
    peaks: dict[int, float] = {}
    while running.poll() is None:
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit():
                    continue
                environ = (proc / "environ").read_bytes().split(b"\0")
                arguments = (proc / "cmdline").read_bytes().split(b"\0")
                if marker not in environ or b"tunesmith" not in arguments or b"--nproc" in arguments:
                    continue
                rank = next((int(e[5:]) for e in environ if e.startswith(b"RANK=")), 0)
                status = (proc / "status").read_text().splitlines()
                high_water = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
                peaks[rank] = max(peaks.get(rank, 0.0), high_water / 1024**2)
            except (OSError, ValueError, StopIteration):
                continue  # a process that ended meanwhile
        time.sleep(0.5)
    return peaks


def one_run(home: Path, name: str, method: str, nproc: int, fsdp: bool) -> dict:
    command = [sys.executable, "-m", "tunesmith", "train", str(DATA), "--name", name, "--epochs", "1"]
    command += ["--method", method]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    if fsdp:
        command += ["--fsdp"]
    env = {**os.environ, "TUNESMITH_HOME": str(home), "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith")}
    began = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        running = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        peaks = process_peaks(home, running)
        if running.wait() != 0:
            log.seek(0)
            raise SystemExit(log.read().decode()[-3000:])
    wall = time.perf_counter() - began
    manifest = json.loads((home / "registry" / name / "1" / "manifest.json").read_text())
    training = manifest["training"]
    return {
        "wall_s": wall,
        "tokens_per_s": training["tokens"] / training["train_seconds"],
        "val_loss": training["best_val_loss"],
        "threads": training["threads"],
        "peak_gb": peaks,  # VmHWM by rank (the launcher itself excluded: it holds no model)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    arms = {"1 process": (1, False), f"{args.nproc} processes": (args.nproc, False)}
    arms[f"{args.nproc} processes, FSDP"] = (args.nproc, True)
    methods = args.methods.split(",")
    runs: dict[tuple[str, str], list[dict]] = {(method, arm): [] for method in methods for arm in arms}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for index, (method, arm) in enumerate(runs):
                nproc, fsdp = arms[arm]
                figures = one_run(Path(tmp), f"r{round_}-{index}", method, nproc, fsdp)
                runs[method, arm].append(figures)
                print(f"round {round_ + 1}, {method}, {arm}: {figures}", flush=True)
    rows = []
    for (method, arm), results in runs.items():
        speed = statistics.median(r["tokens_per_s"] for r in results)
        one = statistics.median(r["tokens_per_s"] for r in runs[method, "1 process"])
        main_peak = max(r["peak_gb"].get(0, 0.0) for r in results)
        other_peak = max(r["peak_gb"].get(1, 0.0) for r in results)
        rows.append(
            [
                method,
                f"{arm} × {results[0]['threads']} thread(s)",
                f"{speed:.0f} ({speed / one:.2f}×)",
                f"{statistics.median(r['wall_s'] for r in results):.0f} s",
                f"{main_peak:.2f} GB",
                f"{other_peak:.2f} GB" if other_peak else "—",
                f"{results[0]['val_loss']:.5f}",
            ]
        )
    command = f"python bench/distributed_speed.py --nproc {args.nproc} --rounds {args.rounds} --methods {args.methods}"
    section = (
        f"## Data-parallel and sharded training on this CPU (`bench/distributed_speed.py`)\n\n"
        f"Command: `{command}` · embedded smollm2-135m, one epoch of examples/reviews (320 rows) · "
        f"{machine()} · {args.rounds} rounds alternating, medians; peak resident memory (VmHWM) of "
        f"each training process, the highest over the rounds, "
        f"{(time.perf_counter() - began) / 60:.0f} min.\n\n"
        + table(
            [
                "method",
                "processes",
                "training tokens/s (× 1 process)",
                "whole command",
                "rank 0 peak memory",
                "rank 1 peak memory (trains only)",
                "best validation loss",
            ],
            rows,
        )
    )
    print(section)
    if not args.no_write:
        write_section("distributed", section)


if __name__ == "__main__":
    main()
