"""A GGUF export run by llama.cpp itself (``llama-cpp-python``), where it is installed: an optional second
parity check. It is not a dependency (it builds from source, ~20 min on 2 cores); transformers' GGUF reader
checks every export without it.

llama.cpp runs in a child process (``python -m tunesmith.export.llama_cpp``): a crash in its native code is
reported instead of taking the export down with it. Measured: llama-cpp-python 0.3.36 built natively on a 2-core
AMX VM crashed (SIGSEGV, SIGILL) on every Q8_0 and Q4_1 file, the shipped one and llama.cpp's own quantiser's
output included; built with ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AMX_INT8=OFF ..."`` it runs them.

Wrapped so that the parity check reads it as it reads a transformers model: the prompt rendered with the GGUF's
own template by llama-cpp-python's Jinja formatter (what its chat completions do), token ids from llama.cpp's
tokenizer, the logits of every position, and greedy decoding that stops at the file's end-of-text token."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tunesmith.export.parity import TOLERANCES, ParityReport, Probe, ProbeOutput, Tolerance, compare, run_probes

# llama.cpp computes in its own kernels (activations rounded to the weights' type for f16 and q8_0 matmuls, its own
# RoPE and norm code): an f32 file agreed to 0.07 logits and 99.8% of top tokens there, not 0.0001 and 100%
# (bench/RESULTS.md, export-parity). The lower precisions keep transformers' tolerances, which held.
LLAMA_CPP_TOLERANCES = TOLERANCES | {"fp32": Tolerance(max_logit_diff=0.25, min_top1=0.99, greedy_must_match=False)}


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppTokenizer:
    def __init__(self, llm, template: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llm
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", errors="replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", errors="replace")
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def apply_chat_template(self, messages, tools=None, tokenize=False, add_generation_prompt=True):
        self.formatter.add_generation_prompt = add_generation_prompt
        return self.formatter(messages=messages, tools=tools).prompt

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)}


class LlamaCppModel:
    def __init__(self, llm):
        self.llm = llm

    def __call__(self, input_ids: torch.Tensor):
        ids = input_ids[0].tolist()
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.array(self.llm.scores[: len(ids)], dtype=np.float32)
        return SimpleNamespace(logits=torch.from_numpy(logits)[None])

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **_: object) -> torch.Tensor:
        ids = input_ids[0].tolist()
        new: list[int] = []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            new.append(token)
            if token == self.llm.token_eos() or len(new) >= max_new_tokens:
                break
        return torch.tensor([ids + new])


def load(path: Path, context: int = 1024) -> tuple[LlamaCppModel, LlamaCppTokenizer]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=context,
        logits_all=True,
        verbose=False,
        n_threads=torch.get_num_threads(),
    )
    template = llm.metadata.get("tokenizer.chat_template", "")
    return LlamaCppModel(llm), LlamaCppTokenizer(llm, template)


def check_in_llama_cpp(
    path: Path, probes: list[Probe], ours: list[ProbeOutput], precision: str, timeout: float = 900
) -> tuple[ParityReport | None, str | None]:
    """(the parity report, None), or (None, why) where llama.cpp could not run the file."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-llama-cpp-") as folder:
        request, answer = Path(folder) / "probes.json", Path(folder) / "outputs.pt"
        request.write_text(json.dumps({"probes": [asdict(p) for p in probes], "reading": [o.ids for o in ours]}))
        command = [sys.executable, "-m", "tunesmith.export.llama_cpp", str(path), str(request), str(answer)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"llama.cpp did not finish the probes within {timeout:.0f} s"
        if done.returncode != 0:
            code = done.returncode
            how = f"crashed ({signal.Signals(-code).name})" if code < 0 else f"failed (exit {code})"
            last = (done.stderr.strip().splitlines() or [""])[-1][:300]
            return None, f"llama.cpp {how} running {path.name}" + (f": {last}" if last else "")
        theirs = [ProbeOutput(**output) for output in torch.load(answer)]
    return compare(probes, ours, theirs, "llama.cpp", precision, LLAMA_CPP_TOLERANCES[precision]), None


def _main(gguf_path: str, request: str, answer: str) -> None:
    data = json.loads(Path(request).read_text())
    model, tokenizer = load(Path(gguf_path))
    outputs = run_probes(model, tokenizer, [Probe(**probe) for probe in data["probes"]], data["reading"], None)
    torch.save([asdict(output) for output in outputs], answer)


if __name__ == "__main__":
    _main(*sys.argv[1:])
