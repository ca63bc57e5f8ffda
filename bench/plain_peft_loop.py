"""The plain PEFT loop a user writes: the yardstick `bench/defaults_quality.py` holds tunesmith's defaults to.

    .venv/bin/python bench/plain_peft_loop.py DATA OUT [--block 256] [--epochs 1]

transformers + PEFT, nothing else: LoRA r16 (alpha 32, all linear layers, no dropout) on the fp32 model,
AdamW at a constant 2e-4, batch 8, one epoch over the whole file (no validation split), shuffled with
seed 0. Raw text (.txt) is tokenized, concatenated and cut into --block-token blocks, the loss on every
token. Supervised data (.jsonl) is rendered by tunesmith's renderer (the same chat template and answer-only
loss mask tunesmith trains on, cut at 512 tokens), so the two differ in the recipe, not in the data.
Writes the adapter to OUT with `save_pretrained`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def rows_of(data: Path, tokenizer, block: int) -> list[tuple[list[int], list[int]]]:
    if data.suffix == ".txt":
        ids = tokenizer(data.read_text(), add_special_tokens=False)["input_ids"]
        blocks = [ids[start : start + block] for start in range(0, len(ids), block)]
        return [(b, b) for b in blocks if len(b) > 1]
    from tunesmith.data.check import check_data

    report = check_data(data, "auto", tokenizer, 512)
    return [(cut.input_ids, cut.labels) for cut in (r.truncated(512) for r in report.rendered)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="the embedded base's Hugging Face folder")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    rows = rows_of(args.data, tokenizer, args.block)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    steps = 0
    for epoch in range(args.epochs):
        random.Random(epoch).shuffle(rows)
        for start in range(0, len(rows), 8):
            batch = rows[start : start + 8]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            print(f"step {steps} loss {loss.item():.4f}", flush=True)
    model.save_pretrained(args.out)
    print(f"{steps} steps, {len(rows)} rows, {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
