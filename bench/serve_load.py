"""Concurrent clients against `tunesmith serve`: the batching server against the one-at-a-time server it replaced,
many LoRA versions at once against one, and a single stream against llama.cpp.

Both servers run on loopback ports in this run, on the embedded smollm2-135m (fp32), spoken to with the official
`openai` client, streaming: "batched" is this checkout; "one at a time" is the server as it was before continuous
batching (git `--baseline`, default e3e8904), run from a git worktree with the same packages. Each tier sends
`max(clients, 4)` chat requests from `clients` threads (one request at a time per thread), greedy, `--max-tokens`
new tokens at most, every prompt a different question under one shared system prompt. Reported per tier: generated
tokens/s over the tier's wall-clock, time to first token and request latency (p50/p95). Every greedy answer of the
batched server is compared with the one-at-a-time server's answer to the same prompt (transformers' generate,
adapters merged): the count of identical answers is the "no answer changes" check.

LoRA: four versions trained here through the CLI for a few steps (so their answers differ), 16 clients spread over
the four at once, against the same 16 requests all on the first version, both on the batching server.

Single stream: decode tokens/s of one request (first token to last, so prefill is excluded) on both servers, and
of llama.cpp (llama-cpp-python, where installed: `pip install llama-cpp-python==0.3.36` builds it from source)
on the same model exported to an F16 GGUF by `tunesmith models export`, and on the Q4_1 GGUF the package ships.

    .venv/bin/python bench/serve_load.py [--clients 1,4,16,64] [--max-tokens 64] [--baseline e3e8904]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO, machine, table, write_section  # noqa: E402

SYSTEM = "You are a concise, friendly assistant for a small bakery in Lyon. Answer in two or three sentences."
TOPICS = ["sourdough", "croissants", "rye bread", "brioche", "baguettes", "gluten", "yeast", "opening hours"]
ASKS = [
    "What should I know about {}?",
    "Can you explain {} to a child?",
    "Give me one tip about {}.",
    "Why do people like {}?",
    "How long does {} keep?",
    "What goes well with {}?",
    "Is {} healthy?",
    "Tell me a fun fact about {}.",
]
QUESTIONS = [ask.format(topic) for topic in TOPICS for ask in ASKS]  # 64 different prompts
TRAIN_ROWS = [  # answers as long as the base model's, so that decoding, not prefill, fills the LoRA tiers
    {
        "messages": [
            {"role": "user", "content": f"Say something about {topic}."},
            {
                "role": "assistant",
                "content": f"{style} {topic}! In our bakery we make it every morning before dawn, with flour from "
                "a mill near the river and a lot of patience. Come early on Saturday, when it is still warm, "
                "and ask for a taste: the bakers love to talk about how they make it.",
            },
        ]
    }
    for topic in TOPICS
    for style in ("Ah,", "Oh la la,")
]


class Server:
    """`tunesmith serve` on a free loopback port, from ``src`` (this checkout's or a worktree's)."""

    def __init__(self, home: Path, src: Path, extra: list[str]):
        self.port = _free_port()
        env = os.environ | {
            "TUNESMITH_HOME": str(home),
            "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith"),
            "PYTHONPATH": str(src),
        }
        command = [sys.executable, "-m", "tunesmith", "serve", "--port", str(self.port), "--no-worker", *extra]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server stopped: {Path(self.log.name).read_text()[-2000:]}") from None
                time.sleep(0.2)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ask(client: openai.OpenAI, model: str, question: str, max_tokens: int) -> dict:
    began = time.perf_counter()
    first = last = None
    text, tokens = [], 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            text.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    first = first or end
    return {
        "question": question,
        "model": model,
        "text": "".join(text),
        "tokens": tokens,
        "ttft": first - began,
        "latency": end - began,
        "decode": (tokens - 1) / ((last or end) - first) if tokens > 2 and last and last > first else None,
    }


def tier(server: Server, models: list[str], clients: int, max_tokens: int) -> dict:
    requests = max(clients, 4)
    jobs = [(models[i % len(models)], QUESTIONS[i % len(QUESTIONS)]) for i in range(requests)]
    lock = threading.Lock()

    def client_loop(k: int) -> list[dict]:
        done = []
        while True:
            with lock:
                if not jobs:
                    return done
                model, question = jobs.pop(0)
            done.append(ask(server.client, model, question, max_tokens))

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [a for batch in pool.map(client_loop, range(clients)) for a in batch]
    wall = time.perf_counter() - began
    return {"answers": answers, "wall": wall, "tokens_per_s": sum(a["tokens"] for a in answers) / wall}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def train_versions(home: Path, count: int) -> list[str]:
    data = home / "bakery.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in TRAIN_ROWS))
    env = os.environ | {"TUNESMITH_HOME": str(home), "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith")}
    names = []
    for i in range(count):
        name = f"bakery{i}"
        command = [sys.executable, "-m", "tunesmith", "train", str(data), "--name", name, "--epochs", "2"]
        command += ["--batch-size", "4", "--lr", str(5e-4 * (i + 1)), "--seed", str(i), "--val-fraction", "0.125"]
        subprocess.run(command, env=env, check=True, capture_output=True)
        names.append(f"{name}:1")
    return names


def llama_cpp_decode(home: Path, max_tokens: int) -> list[list]:
    """Decode tokens/s of llama.cpp on the F16 export and the shipped Q4_1 file, or why not measured."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return [["llama.cpp", "not installed here (llama-cpp-python)", "—"]]
    from tunesmith.models.base import DEFAULT_BASE, EMBEDDED

    out = home / "gguf-f16"
    env = os.environ | {"TUNESMITH_HOME": str(home), "TUNESMITH_CACHE": str(REPO / ".cache" / "tunesmith")}
    export = [sys.executable, "-m", "tunesmith", "models", "export", DEFAULT_BASE, "--format", "gguf"]
    subprocess.run([*export, "--gguf-type", "f16", "--out", str(out)], env=env, check=True, capture_output=True)
    shipped = EMBEDDED[DEFAULT_BASE]
    files = {"F16 (tunesmith export)": next(out.glob("*.gguf"))}
    folder = shipped.gguf_folder()
    if folder is not None:
        files["Q4_1 (shipped)"] = folder / shipped.gguf_file
    rows = []
    for label, path in files.items():
        llm = Llama(model_path=str(path), n_ctx=512, n_threads=os.cpu_count(), verbose=False)
        rates = []
        for question in QUESTIONS[:4]:
            prompt = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            prompt += "<|im_start|>assistant\n"
            stamps = []
            for _ in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
                stamps.append(time.perf_counter())
            if len(stamps) > 2:
                rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        rows.append([f"llama.cpp {label}", f"{statistics.median(rates):.1f}", f"{len(rates)} answers"])
    return rows


def where_decode_time_goes(llama_f16: float | None, steps: int = 20) -> str:
    """One row's decode step in-process, under torch's profiler: the share of matrix products and the rate
    at which they read the weights, against the rate llama.cpp's F16 decode implies."""
    import torch
    from torch.profiler import profile

    from tunesmith.inference.loaded import load
    from tunesmith.models.batch_decoder import BatchDecoder

    loaded = load("smollm2-135m", precision="fp32")
    decoder = BatchDecoder(loaded.model)
    slot = decoder.add_slot()
    token = int(decoder.prefill([slot], [list(range(100, 160))], [0])[0].argmax())
    for _ in range(3):
        token = int(decoder.step([token], [0])[0].argmax())
    began = time.perf_counter()
    with profile() as profiler:
        for _ in range(steps):
            token = int(decoder.step([token], [0])[0].argmax())
    step = (time.perf_counter() - began) / steps
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    # the products run as oneDNN's packed linear (models.packed_linear) or as aten's matmul
    products = sum(
        e.self_cpu_time_total for e in events if "linear_pointwise" in e.key or e.key in ("aten::mm", "aten::addmm")
    )
    weights = sum(
        m.weight.numel() * m.weight.element_size() for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)
    )
    seconds_in_products = step * products / total
    line = (
        f"Where one row's decode step goes (torch profiler, in-process, fp32): {step * 1000:.0f} ms a step "
        f"(profiled), {products / total:.0%} of it in matrix products, which read the {weights / 1e6:.0f} MB of "
        f"projection and head weights at {weights / seconds_in_products / 1e9:.1f} GB/s"
    )
    if llama_f16:
        rate = weights / 2 * llama_f16 / 1e9
        line += f"; llama.cpp's F16 decode reads half those bytes per token, at its rate about {rate:.0f} GB/s"
    return line + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--baseline", default="e3e8904", help="git revision of the one-at-a-time server")
    parser.add_argument("--lora-versions", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        worktree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=REPO, check=True)
        try:
            versions = train_versions(home, args.lora_versions)
            print(f"trained {versions}", flush=True)
            results: dict[str, dict] = {}
            for label, src in (("batched", REPO / "src"), ("one at a time", worktree / "src")):
                server = Server(home, src, [])
                try:
                    ask(server.client, "smollm2-135m", "Hello", 4)  # loads the model
                    for clients in counts:
                        results[f"{label}/{clients}"] = tier(server, ["smollm2-135m"], clients, args.max_tokens)
                        print(label, clients, f"{results[f'{label}/{clients}']['tokens_per_s']:.1f} tok/s", flush=True)
                    if label == "batched":
                        for version in versions:
                            ask(server.client, version, "Hello", 4)
                        for version in versions:  # each version alone, then all at once: the same requests
                            results[f"lora/one/{version}"] = tier(server, [version], 16, args.max_tokens)
                        results["lora/mixed"] = tier(server, versions, 16, args.max_tokens)
                    else:
                        results["lora/reference"] = tier(server, versions, 16, args.max_tokens)
                finally:
                    server.stop()
            server = Server(home, REPO / "src", ["--precision", "bf16"])
            try:
                ask(server.client, "smollm2-135m", "Hello", 4)
                results["bf16/1"] = tier(server, ["smollm2-135m"], 1, args.max_tokens)
                results["bf16/16"] = tier(server, ["smollm2-135m"], 16, args.max_tokens)
            finally:
                server.stop()
            llama_rows = llama_cpp_decode(home, args.max_tokens)
            f16 = next((float(row[1]) for row in llama_rows if "F16" in row[0]), None)
            profile_line = where_decode_time_goes(f16)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    section = report(results, counts, llama_rows, args, time.perf_counter() - began, versions)
    section += "\n\n" + profile_line
    print(section)
    if not args.no_write:
        write_section("serve-load", section)


def report(results: dict, counts: list[int], llama_rows: list[list], args, seconds: float, versions) -> str:
    rows = []
    for clients in counts:
        new, old = results[f"batched/{clients}"], results[f"one at a time/{clients}"]
        row = [f"{clients}"]
        for r in (new, old):
            ttft = [a["ttft"] for a in r["answers"]]
            latency = [a["latency"] for a in r["answers"]]
            row += [
                f"{r['tokens_per_s']:.1f}",
                f"{statistics.median(ttft):.2f} / {percentile(ttft, 0.95):.2f}",
                f"{statistics.median(latency):.2f} / {percentile(latency, 0.95):.2f}",
            ]
        row.append(f"{new['tokens_per_s'] / old['tokens_per_s']:.1f}×")
        rows.append(row)
    reference = {
        (a["model"], a["question"]): a["text"] for k, r in results.items() if k.startswith("one") for a in r["answers"]
    }
    reference |= {(a["model"], a["question"]): a["text"] for a in results["lora/reference"]["answers"]}
    compared = [
        a["text"] == reference[(a["model"], a["question"])]
        for k, r in results.items()
        if k.startswith(("batched", "lora/"))
        if k != "lora/reference"
        for a in r["answers"]
        if (a["model"], a["question"]) in reference
    ]
    alone = [r for k, r in results.items() if k.startswith("lora/one/")]
    one = {"tokens_per_s": sum(r["tokens_per_s"] * r["wall"] for r in alone) / sum(r["wall"] for r in alone)}
    mixed = results["lora/mixed"]
    fp32 = {a["question"]: a["text"] for a in results["batched/16"]["answers"]}
    bf16 = [a["text"] == fp32[a["question"]] for a in results["bf16/16"]["answers"] if a["question"] in fp32]
    single = [
        ["tunesmith serve, batched (fp32)", _decode(results[f"batched/{counts[0]}"]), "same server as above"],
        [
            "tunesmith serve, batched, `--precision bf16`",
            _decode(results["bf16/1"]),
            f"16 clients: {results['bf16/16']['tokens_per_s']:.1f} tokens/s; greedy answers as in fp32: "
            f"{sum(bf16)} of {len(bf16)}",
        ],
        [
            "tunesmith serve, one at a time (fp32)",
            _decode(results[f"one at a time/{counts[0]}"]),
            "transformers generate",
        ],
        *llama_rows,
    ]
    command = (
        f"python bench/serve_load.py --clients {args.clients} --max-tokens {args.max_tokens} --baseline {args.baseline}"
    )
    return (
        "## Serving under load (`bench/serve_load.py`)\n\n"
        f"Command: `{command}` · {machine()} · {seconds / 60:.0f} min.\n\n"
        f"Concurrent streaming chat clients (official `openai` client), greedy, at most {args.max_tokens} new tokens, "
        "embedded smollm2-135m in fp32; each tier sends max(clients, 4) requests. TTFT and latency in seconds, "
        "p50 / p95.\n\n"
        + table(
            [
                "clients",
                "batched tokens/s",
                "batched TTFT",
                "batched latency",
                "one-at-a-time tokens/s",
                "one-at-a-time TTFT",
                "one-at-a-time latency",
                "throughput ratio",
            ],
            rows,
        )
        + f"\n\nSame greedy answers as the one-at-a-time server (transformers' generate, adapters merged): "
        f"{sum(compared)} of {len(compared)}.\n\n"
        f"LoRA: 16 clients spread over {len(versions)} versions at once: {mixed['tokens_per_s']:.1f} tokens/s; "
        f"16 clients on one version at a time (each version in turn, the same requests): "
        f"{one['tokens_per_s']:.1f} tokens/s ({mixed['tokens_per_s'] / one['tokens_per_s']:.2f}×). The base "
        f"alone, 16 clients: {results.get('batched/16', {}).get('tokens_per_s', float('nan')):.1f} tokens/s.\n\n"
        "Single stream, decode only (first token to last):\n\n" + table(["engine", "decode tokens/s", "note"], single)
    )


def _decode(result: dict) -> str:
    rates = [a["decode"] for a in result["answers"] if a["decode"]]
    return f"{statistics.median(rates):.1f}" if rates else "—"


if __name__ == "__main__":
    main()
