"""tunesmith's defaults against the plain PEFT loop a user writes, on each shared data set, in one run.

    .venv/bin/python bench/defaults_quality.py [--sets austen,sentiment,chat] [--train-limit austen=1300] [--out DIR]
    .venv/bin/python bench/defaults_quality.py --sets austen --train-limit 1000 \
        --variant lr3e-4:lr=3e-4 --variant fp32:precision=fp32 --no-write                     # an experiment

For each data set, each system trains on the same training file as its own process (so the wall-clock is
the whole command, model load included) and is then measured here on the set's own test split with the
same code (evaluation/measure.py), the base model and the 8-shot prompt alongside:

  plain-256 / plain-512   bench/plain_peft_loop.py (raw text at 256- and 512-token blocks; the better
                          one counts); plain for supervised data
  tunesmith               `tunesmith train DATA` with its defaults (or a --variant's settings)

Differences come from the paired bootstrap of evaluation/significance.py over the test examples (raw
text: the held-out 512-token blocks, weighted by tokens); "clear" = the 95% interval excludes zero.
Needs ../shared/data. Models and reports go to --out (default /tmp/tunesmith-defaults-quality).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, SHARED, machine, table, use_shared_data, without_error_lines, write_section  # noqa: E402

SETS = {
    "austen": ("style-austen", "train.txt", "test.txt"),
    "sentiment": ("sentiment-movie", "train.jsonl", "test.jsonl"),
    "chat": ("chat-corpus", "train.jsonl", "test.jsonl"),
}
EVAL_BLOCK = 512  # raw text: every system's perplexity on the same 512-token test blocks
PYTHON = sys.executable


@dataclass
class Trained:
    name: str
    seconds: float
    adapter: Path | None = None  # plain loop
    ref: str | None = None  # tunesmith version


def timed(command: list[str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - started


def subset(source: Path, limit: int | None, out: Path) -> Path:
    """The first ``limit`` lines of ``source`` (all of it when None)."""
    if limit is None:
        return source
    target = out / f"train-{limit}{source.suffix}"
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:limit]))
    return target


def train_all(key: str, data: Path, out: Path, base_dir: Path, variants: list[tuple[str, dict]]) -> list[Trained]:
    trained = []
    blocks = (256, 512) if data.suffix == ".txt" else (None,)
    for block in blocks:
        name = f"plain-{block}" if block else "plain"
        adapter = out / name
        command = [PYTHON, str(REPO / "bench/plain_peft_loop.py"), str(data), str(adapter), "--base", str(base_dir)]
        seconds = timed(command + (["--block", str(block)] if block else []), out / f"{name}.log")
        trained.append(Trained(name, seconds, adapter=adapter))
        print(f"[{key}] {name}: {seconds:.0f} s", flush=True)
    for label, settings in variants:
        name = f"{key}-{label}"
        flags = [part for k, v in settings.items() for part in (f"--{k.replace('_', '-')}", v)]
        command = [str(Path(PYTHON).parent / "tunesmith"), "train", str(data), "--name", name, *flags]
        seconds = timed(command, out / f"{name}.log")
        trained.append(Trained(label, seconds, ref=f"{name}:1"))
        print(f"[{key}] tunesmith {label}: {seconds:.0f} s", flush=True)
    return trained


def measure_all(key: str, train_file: Path, test_file: Path, trained: list[Trained], base_dir: Path) -> dict:
    from contextlib import nullcontext

    from peft import PeftModel

    from tunesmith.data.check import check_data
    from tunesmith.data.shots import pick_shots
    from tunesmith.evaluation.compare import PRIMARY
    from tunesmith.evaluation.measure import EvalOptions, measure
    from tunesmith.evaluation.significance import Sample, bootstrap
    from tunesmith.evaluation.systems import System
    from tunesmith.inference.loaded import load
    from tunesmith.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(base_dir)
    first = load(trained[-1].ref)  # a tunesmith version: its task and label order are what every system is asked
    task, labels = first.task, first.labels
    report = check_data(test_file, task, tokenizer, 1024, labels=labels)
    examples = report.train.examples
    options = EvalOptions(latency_samples=0)
    base = load_model(base_dir).eval()
    systems = {"base": System("base", base)}
    if task != "text":
        pool = check_data(train_file, task, None, labels=labels).train.examples
        systems["few_shot"] = System("few_shot", base, nullcontext, pick_shots(pool, 8, 0))
    for t in trained:
        if t.adapter is not None:
            model = PeftModel.from_pretrained(load_model(base_dir).eval(), str(t.adapter)).merge_and_unload()
        else:
            model = load(t.ref).model
        systems[t.name] = System(t.name, model)
    measured = {}
    for name, system in systems.items():
        started = time.perf_counter()
        measured[name] = measure(system, tokenizer, task, examples, labels, None, options, EVAL_BLOCK)
        print(f"[{key}] measured {name} in {time.perf_counter() - started:.0f} s", flush=True)
    primary, higher = PRIMARY[task]
    samples = {name: Sample(m.scores, m.weights) for name, m in measured.items()}
    tested = {
        t.name: bootstrap(
            samples, list(samples), tuned=t.name, higher_is_better=higher, exponential=primary == "perplexity"
        )
        for t in trained
        if t.ref
    }
    return {
        "task": task,
        "primary": primary,
        "higher": higher,
        "n": len(measured["base"].scores),
        "values": {name: m.metrics[primary] for name, m in measured.items()},
        "tested": tested,
        "seconds": {t.name: t.seconds for t in trained},
    }


def fmt(primary: str, value: float) -> str:
    return f"{value:.2%}" if primary in ("accuracy", "rouge_l") else f"{value:.3f}"


def section(key: str, figures: dict) -> tuple[str, list[str]]:
    primary, values, seconds = figures["primary"], figures["values"], figures["seconds"]
    base = values["base"]
    plains = [name for name in seconds if name.startswith("plain")]
    best_plain = (min if not figures["higher"] else max)(plains, key=lambda name: values[name])
    rows = []
    for name, value in values.items():
        ratio = f"{value / base:.3f}" if primary == "perplexity" else ""
        rows.append([name, fmt(primary, value), ratio, f"{seconds[name]:.0f} s" if name in seconds else ""])
    unit = "blocks" if primary == "perplexity" else "examples"
    refused = "; ".join(f"{name} lines {', '.join(map(str, n))}" for name, n in figures["dropped"].items() if n)
    left_out = f"; left out as the data check refuses them: {refused}" if refused else ""
    lines = [f"**{key}** ({figures['task']}, {figures['n']} test {unit}{left_out})", ""]
    lines.append(table(["system", primary, "÷ base" if primary == "perplexity" else "", "train wall-clock"], rows))
    verdicts = []
    for variant, tested in figures["tested"].items():
        d = tested["differences"][best_plain]
        faster = seconds[variant] <= seconds[best_plain]
        clearly = "clearly better" if d["clear"] else "not clearly better"
        verdicts.append(
            f"- {key}: tunesmith {variant} − {best_plain} (the better plain loop): {d['difference']:+.4f} "
            f"(95% interval {d['low']:+.4f} to {d['high']:+.4f}) — {clearly}; wall-clock {seconds[variant]:.0f} s "
            f"against {seconds[best_plain]:.0f} s ({'no more' if faster else 'MORE'})"
        )
        for other in ("base", "few_shot"):
            if other in tested["differences"]:
                o = tested["differences"][other]
                verdicts.append(
                    f"  - against {other}: {o['difference']:+.4f} ({o['low']:+.4f} to {o['high']:+.4f}),"
                    f" {'clear' if o['clear'] else 'not clear'}"
                )
    return "\n".join(lines), verdicts


def parse_variant(text: str) -> tuple[str, dict]:
    label, _, settings = text.partition(":")
    return label, dict(item.split("=", 1) for item in settings.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="austen,sentiment,chat")
    parser.add_argument(
        "--train-limit", default="", help="first N lines of the training files: N for every set, or SET=N,..."
    )
    parser.add_argument("--variant", action="append", help="LABEL:key=value,... tunesmith settings to try")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-defaults-quality")
    parser.add_argument("--no-write", action="store_true", help="print, do not write bench/RESULTS.md")
    args = parser.parse_args()
    use_shared_data(SHARED, args.out)
    from tunesmith.models.base import DEFAULT_BASE, resolve_base

    base_dir = resolve_base(DEFAULT_BASE)
    variants = [parse_variant(v) for v in args.variant] if args.variant else [("defaults", {})]
    limits = {
        (item.split("=")[0] if "=" in item else "*"): int(item.split("=")[-1])
        for item in args.train_limit.split(",")
        if item
    }
    command = "python bench/defaults_quality.py " + " ".join(sys.argv[1:])
    for key in args.sets.split(","):
        began = time.perf_counter()
        folder, train_name, test_name = SETS[key]
        out = args.out / key
        out.mkdir(parents=True, exist_ok=True)
        limit = limits.get(key, limits.get("*"))
        train_file, dropped = without_error_lines(subset(SHARED / folder / train_name, limit, out), out)
        test_file, dropped_test = without_error_lines(SHARED / folder / test_name, out)
        trained = train_all(key, train_file, out, base_dir, variants)
        figures = measure_all(key, train_file, test_file, trained, base_dir)
        figures["dropped"] = {"train": dropped, "test": dropped_test}
        text, lines = section(key, figures)
        size = f"the first {limit} lines of {folder}/{train_name}" if limit else f"all of {folder}/{train_name}"
        # One section per data set, so a set can be run again alone without losing the others.
        markdown = f"""
## Defaults against the plain PEFT loop: {key} (`bench/defaults_quality.py`)

Command: `{command.strip()}` · embedded smollm2-135m, trained on {size} · {machine()} ·
{(time.perf_counter() - began) / 60:.0f} min for this set.

{text}

{chr(10).join(lines)}
"""
        print(markdown, flush=True)
        if not args.no_write:
            write_section(f"defaults-quality-{key}", markdown)


if __name__ == "__main__":
    main()
