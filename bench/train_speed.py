"""Training speed: `tunesmith train` against TRL's SFTTrainer, same model, data, machine, in one run.

Run by hand (not in CI), from the repository root after `make install`, with ../shared present:

    .venv/bin/python bench/train_speed.py                 # ~40 min on 2 cores
    .venv/bin/python bench/train_speed.py --trl-runs 3    # 3 runs of TRL best too: ~55 min
    .venv/bin/python bench/train_speed.py --only-full     # the full fine-tuning pair alone: ~15 min

LoRA goes to the section train-speed of bench/RESULTS.md, full fine-tuning to train-speed-full.

What runs, each as its own process (so the time is the whole command and the peak memory its own):
  tunesmith       `tunesmith train train.jsonl -c config.yaml` as a user runs it: data check, model
                  load, baselines, training with validation passes, the closing comparison, publish.
  TRL defaults    SFTTrainer + PEFT with TRL's defaults (bf16, gradient checkpointing).
  TRL best        the fastest TRL settings on this CPU, chosen by trying them (see BEST_TRL below).
  full fine-tuning: tunesmith --method full and TRL best without PEFT (one run each).
Every system trains on the same 900 rows: the training split `tunesmith train` makes of the 1000
examples (it holds out 100 for validation). TRL gets those rows already tokenized by tunesmith's
renderer, with the same labels (loss on the answer only), so the prompts are token for token the
same. Same LoRA (rank 16, alpha 32, all linear layers, no dropout), effective batch 16, lr 2e-4 with
5% warm-up and cosine decay to 10%, clip 1.0, 1 epoch, seed 0, max length 128.

Figures: wall-clock of the whole command; the training loop's own time (tunesmith's manifest,
TRL's train_runtime); useful tokens/s = non-padding tokens of the epoch / time; peak resident memory
(the process's ru_maxrss); test accuracy on sentiment-movie/test.jsonl by `tunesmith eval` (first run
of each system); model-FLOPs utilisation = k x N x useful tokens / loop time / matmul peak, with
N = all parameters of the model (134.5M, tied embeddings counted once), k = 4 for LoRA (forward 2N,
backward through the frozen weights 2N) and 6 for full fine-tuning, against the fp32 and the bf16
matmul peaks measured in the same run.
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
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

SHARED = ROOT.parent / "shared" / "data" / "sentiment-movie"
SETTINGS = {
    "epochs": 1,
    "batch_size": 16,
    "lr": 2e-4,
    "max_length": 128,
    "warmup_ratio": 0.05,
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "seed": 0,
    "weight_decay": 0.0,
}
LORA = {"lora_rank": 16, "lora_alpha": 32.0, "lora_dropout": 0.0}
FULL_LR = 3e-5  # tunesmith's default for full fine-tuning on < 1000 examples; 2e-4 would wreck the model
# Tried on 128 examples before choosing (useful tokens/s, this 2-core AMX CPU): defaults (bf16 +
# gradient checkpointing) 163; fp32 without checkpointing 167; + padding_free 152; + packing 157;
# bf16 without checkpointing 210 (172 on a second try: runs vary by ~20% here); bf16 with the
# weights loaded in bf16 (model_init_kwargs dtype) 176 against 172 side by side; bf16 + padding_free
# 166; bf16 + torch_compile was still compiling after 7 minutes, so it cannot pay on one epoch. On the
# full epoch the defaults came out as fast as these "best" settings (RESULTS.md): with native bf16 here,
# gradient checkpointing is the only thing the defaults cost.
BEST_TRL = {"bf16": True, "gradient_checkpointing": False}
PYTHON = sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of tunesmith (LoRA)")
    parser.add_argument(
        "--trl-runs",
        type=int,
        default=1,
        help="timed runs of TRL best (LoRA); each takes ~7 min, 3 would pass 45 min in all",
    )
    parser.add_argument("--default-runs", type=int, default=1, help="timed runs of TRL with its defaults")
    full = parser.add_mutually_exclusive_group()
    full.add_argument("--no-full", action="store_true", help="skip full fine-tuning")
    full.add_argument(
        "--only-full", action="store_true", help="only the full fine-tuning pair (~15 min); rewrites only its section"
    )
    parser.add_argument("--limit", type=int, help="smoke test: the first N train/test examples; RESULTS.md untouched")
    parser.add_argument("--worker", choices=["trl", "merge"], help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "trl":
        return trl_worker(json.loads(args.args))
    if args.worker == "merge":
        return merge_worker(json.loads(args.args))
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is missing: this benchmark needs ../shared/data/sentiment-movie")
    run_benchmark(args)


# ----------------------------------------------------------------------------------------- parent


def run_benchmark(args) -> None:
    import torch

    from results import machine, table, write_section
    from tunesmith.training.estimate import matmul_peak_gflops

    started = time.time()
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    work = Path(tempfile.mkdtemp(prefix="tunesmith-train-speed-"))
    env = {**os.environ, "TUNESMITH_CACHE": os.environ.get("TUNESMITH_CACHE", str(ROOT / ".cache" / "tunesmith"))}
    data = {"train": SHARED / "train.jsonl", "test": SHARED / "test.jsonl"}
    if args.limit:
        for split_name, source in list(data.items()):
            data[split_name] = work / source.name
            data[split_name].write_text("".join(source.read_text().splitlines(keepends=True)[: args.limit]))
    rows_file, useful_tokens, n_rows, n_params = prepare(work, env, data["train"])
    print(f"{n_rows} training rows, {useful_tokens} useful tokens per epoch; work folder {work}", flush=True)

    plan = (
        []
        if args.only_full
        else [
            ("tunesmith", "lora", args.runs),
            ("TRL best", "lora", args.trl_runs),
            ("TRL defaults", "lora", args.default_runs),
        ]
    )
    if not args.no_full:
        plan += [("tunesmith", "full", 1), ("TRL best", "full", 1)]
    measured: dict[tuple[str, str], list[dict]] = {}
    for run in range(max(count for _, _, count in plan)):  # interleaved, so drift hits all systems alike
        for system, method, count in plan:
            if run < count:
                result = timed_run(system, method, run, work, rows_file, env, data["train"])
                print(f"{system} {method} run {run + 1}: {json.dumps(result)}", flush=True)
                measured.setdefault((system, method), []).append(result)
    for (system, method), results in measured.items():
        results[0]["accuracy"] = test_accuracy(results[0], env, data["test"])
        print(f"{system} {method}: test accuracy {results[0]['accuracy']:.4f}", flush=True)

    sections = []
    for method, section in (("lora", "train-speed"), ("full", "train-speed-full")):
        subset = {key: results for key, results in measured.items() if key[1] == method}
        if subset:
            markdown = report(
                subset, peaks, useful_tokens, n_rows, n_params, args, time.time() - started, machine(), table
            )
            if args.limit:
                print(markdown)
            else:
                write_section(section, markdown)
            sections.append(section)
    if not args.limit:
        print(f"wrote bench/RESULTS.md (sections {', '.join(sections)}) in {(time.time() - started) / 60:.1f} min")


def prepare(work: Path, env: dict, train_file: Path) -> tuple[Path, int, int, int]:
    """The training rows exactly as `tunesmith train` builds them, for TRL; their useful tokens."""
    os.environ.update(env)
    from tunesmith.core.config import TrainConfig
    from tunesmith.data.check import check_data
    from tunesmith.data.prepare import build_rows, split
    from tunesmith.models.base import resolve_base
    from tunesmith.models.load import load_tokenizer

    config = TrainConfig(data=train_file, **method_settings("lora"))
    base = resolve_base(config.base)
    tokenizer = load_tokenizer(base)
    data_report = check_data(config.data, "auto", tokenizer, config.max_length)
    splits = split(data_report, config.val_fraction, config.seed)
    rows, _ = build_rows(data_report.task, splits, data_report.max_length, config.val_fraction, config.seed, False)
    rows_file = work / "trl_rows.jsonl"
    rows_file.write_text("".join(json.dumps({"input_ids": r.input_ids, "labels": r.labels}) + "\n" for r in rows))
    for method in ("lora", "full"):
        (work / f"tunesmith-{method}.yaml").write_text(
            "\n".join(f"{k}: {v}" for k, v in method_settings(method).items()) + "\n"
        )
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        n_params = sum(
            p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base)).parameters()
        )
    return rows_file, sum(len(r) for r in rows), len(rows), n_params


def method_settings(method: str) -> dict:
    return {**SETTINGS, **LORA} if method == "lora" else {**SETTINGS, "lr": FULL_LR}


def timed_run(system: str, method: str, run: int, work: Path, rows_file: Path, env: dict, train_file: Path) -> dict:
    out = work / f"{system.replace(' ', '-')}-{method}-{run}"
    out.mkdir()
    if system == "tunesmith":
        run_env = {**env, "TUNESMITH_HOME": str(out / "home")}
        command = [
            str(Path(PYTHON).parent / "tunesmith"),
            "train",
            str(train_file),
            "-c",
            str(work / f"tunesmith-{method}.yaml"),
            "--name",
            "bench",
            "--method",
            method,
        ]
    else:
        run_env = env
        settings = {
            "method": method,
            "rows": str(rows_file),
            "out": str(out),
            "trl": BEST_TRL if system == "TRL best" else {},
        }
        command = [PYTHON, __file__, "--worker", "trl", "--args", json.dumps(settings)]
    log = out / "log.txt"
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=run_env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{system} ({method}) failed; its log is {log}:\n" + log.read_text()[-3000:])
    result = {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024), "out": str(out)}
    if system == "tunesmith":
        manifest = json.loads(next((out / "home").rglob("manifest.json")).read_text())
        result["loop_s"] = manifest["training"]["train_seconds"]
        result["precision"] = manifest["training"].get("precision")
        result["model"] = str(next((out / "home").rglob("manifest.json")).parent)
    else:
        summary = json.loads((out / "summary.json").read_text())
        result["loop_s"] = round(summary["train_runtime"], 1)
        result["precision"] = "bf16" if summary["bf16"] else "fp32"
        result["model"] = str(out / "model")
    return result


def test_accuracy(result: dict, env: dict, test_file: Path) -> float:
    model = Path(result["model"])
    if (model / "adapter_config.json").is_file():  # a TRL LoRA adapter: merge it into a model folder
        merged = Path(result["out"]) / "merged"
        subprocess.run(
            [PYTHON, __file__, "--worker", "merge", "--args", json.dumps({"adapter": str(model), "out": str(merged)})],
            env=env,
            check=True,
        )
        model = merged
    run_env = dict(env)
    if (model / "manifest.json").is_file():  # a tunesmith version: evaluate it from its registry
        run_env["TUNESMITH_HOME"] = str(model.parents[2])
        ref = f"{model.parent.name}:{model.name}"
    else:
        ref = str(model)
    target = Path(result["out"]) / "eval.json"
    subprocess.run(
        [
            str(Path(PYTHON).parent / "tunesmith"),
            "eval",
            ref,
            "--data",
            str(test_file),
            "--baselines",
            "none",
            "--json",
            str(target),
        ],
        env=run_env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (only,) = json.loads(target.read_text())["results"].values()  # "fine_tuned" for a version, else "base"
    return only["accuracy"]


def report(measured, peaks, useful_tokens, n_rows, n_params, args, seconds, machine_line, table) -> str:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("trl", "accelerate", "datasets"))
    header = [
        "system",
        "method",
        "precision",
        "runs",
        "whole command (s)",
        "training loop (s)",
        "useful tok/s (loop)",
        "peak RSS (MB)",
        "test accuracy",
        "MFU vs fp32 peak",
        "MFU vs bf16 peak",
        "wall / TRL defaults",
        "wall / TRL best",
    ]
    medians = {
        key: {field: statistics.median(r[field] for r in results) for field in ("wall_s", "loop_s", "peak_rss_mb")}
        for key, results in measured.items()
    }
    rows, raw = [], []
    for (system, method), results in measured.items():
        m = medians[(system, method)]
        flops = (4 if method == "lora" else 6) * n_params * useful_tokens / m["loop_s"] / 1e9

        def ratio(other: str, m: dict = m, method: str = method) -> str:
            """This row's wall time over ``other``'s for the same method ("" when ``other`` did not run)."""
            return f"{m['wall_s'] / medians[(other, method)]['wall_s']:.2f}" if (other, method) in medians else ""

        rows.append(
            [
                system,
                method,
                results[0]["precision"],
                len(results),
                f"{m['wall_s']:.1f}",
                f"{m['loop_s']:.1f}",
                f"{useful_tokens / m['loop_s']:.0f}",
                f"{m['peak_rss_mb']:.0f}",
                f"{100 * results[0]['accuracy']:.1f}%",
                f"{100 * flops / peaks['fp32']:.0f}%",
                f"{100 * flops / peaks['bf16']:.0f}%",
                ratio("TRL defaults"),
                ratio("TRL best"),
            ]
        )
        for i, r in enumerate(results):
            raw.append([system, method, i + 1, r["wall_s"], r["loop_s"], r["peak_rss_mb"]])
    full = all(method == "full" for _, method in measured)
    title = "Full fine-tuning speed" if full else "Training speed"
    flags = (
        "--only-full"
        if args.only_full
        else (
            f"--runs {args.runs} --trl-runs {args.trl_runs} "
            f"--default-runs {args.default_runs}" + " --no-full" * args.no_full
        )
    )
    return f"""## {title}: tunesmith against TRL (`bench/train_speed.py`)

Command: `.venv/bin/python bench/train_speed.py {flags}` ({seconds / 60:.0f} min for the whole run). \
Machine: {machine_line}; {versions}.
Measured matmul peak in this run: fp32 {peaks["fp32"]:.0f} GFLOP/s, bf16 {peaks["bf16"]:.0f} GFLOP/s (1024^3).
Data: sentiment-movie, the {n_rows} training rows `tunesmith train` keeps of train.jsonl (100 held out),
{useful_tokens} useful (non-padding) tokens per epoch; settings: {json.dumps(SETTINGS)}; LoRA {json.dumps(LORA)} on all
linear layers; full fine-tuning with lr {FULL_LR:g}.
MFU = k x N x useful tokens / training-loop seconds / peak, \
N = {n_params / 1e6:.1f}M parameters, k = 4 (LoRA), 6 (full).
Figures are medians over the runs; accuracy is from the first run, on the 500 test reviews.

{table(header, rows)}

Raw runs (seconds, MB):

{table(["system", "method", "run", "whole command", "training loop", "peak RSS"], raw)}
"""


# ---------------------------------------------------------------------------------------- workers


def trl_worker(settings: dict) -> None:
    """The whole TRL script that is timed: load, prepare, train one epoch, save."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models.base import resolve_base
    from tunesmith.models.load import load_tokenizer

    base = resolve_base("smollm2-135m")
    tokenizer = load_tokenizer(base)
    rows = [json.loads(line) for line in Path(settings["rows"]).read_text().splitlines()]
    dataset = Dataset.from_list(rows)  # input_ids + labels: TRL uses them as they are
    s = method_settings(settings["method"])
    config = SFTConfig(
        output_dir=settings["out"],
        per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=s["lr"],
        num_train_epochs=s["epochs"],
        seed=s["seed"],
        max_length=s["max_length"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": s["min_lr_ratio"]},
        warmup_steps=s["warmup_ratio"],
        max_grad_norm=s["grad_clip"],
        weight_decay=s["weight_decay"],
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        use_cpu=not torch.cuda.is_available(),
        **settings["trl"],
    )
    peft_config = None
    if settings["method"] == "lora":
        peft_config = LoraConfig(
            r=s["lora_rank"],
            lora_alpha=s["lora_alpha"],
            lora_dropout=s["lora_dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    trainer = SFTTrainer(
        model=str(base), args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    output = trainer.train()
    model_dir = Path(settings["out"]) / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(model_dir)
    summary = {
        "train_runtime": output.metrics["train_runtime"],
        "bf16": bool(config.bf16),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "loss": output.training_loss,
    }
    (Path(settings["out"]) / "summary.json").write_text(json.dumps(summary))


def merge_worker(settings: dict) -> None:
    """A TRL LoRA adapter merged into the base, as a model folder `tunesmith eval` can load."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.models.base import resolve_base
    from tunesmith.models.load import load_tokenizer

    base = resolve_base("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, settings["adapter"]).merge_and_unload()
    merged.save_pretrained(settings["out"])
    load_tokenizer(base).save_pretrained(settings["out"])


if __name__ == "__main__":
    main()
