"""The parity check: an export loaded back the way its users load it, against the model tunesmith serves.

On a few probe prompts rendered with each side's own chat template: the rendered text and its token ids, the
largest logit difference and the share of positions whose top token agrees (both models reading the reference's
tokens), and the greedy continuation of GREEDY_TOKENS tokens, each side stopping where its own configuration says.
The reference is the registry version in fp32 with its adapters merged, as `tunesmith serve` loads it on a CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.core.results import Result
from tunesmith.data.render import render_prompt
from tunesmith.data.shots import POOL_FILE, load_pool
from tunesmith.inference.loaded import LoadedModel

GREEDY_TOKENS = 32
FIXED_PROBES = (
    "Write one sentence about the sea.",
    "What is 12 plus 30? Answer with the number.",
    "Summarise in five words: the meeting moved to Tuesday because the room was booked.",
)
TEXT_PROBES = ("The morning was cold, and", "It is a truth universally acknowledged that")
POOL_PROBES = 3  # prompts taken from the version's own examples (its few-shot pool), where it has one


class Tolerance(Result):
    """What an export in one precision may differ by. The figures are from bench/RESULTS.md (export-parity)."""

    max_logit_diff: float
    min_top1: float  # share of positions whose top token agrees
    greedy_must_match: bool  # every greedy continuation identical


# fp32 stores the weights unchanged: only summation order differs (measured: at most 0.00015 on these logits). The
# others round every weight: fp16 keeps 11 bits of mantissa, bf16 8, q8_0 8 per block of 32 with a shared scale, and
# `source` keeps the tensors a fine-tune left alone exact and writes the others in q8_0. Measured on real
# fine-tunes (bench/RESULTS.md, export-parity), the largest logit moved by up to 0.05 (fp16), 0.75 (bf16) and 2.2
# (q8_0), and 96-100% of positions kept their top token; near-ties then part a greedy continuation now and then
# (fp16 included). The tolerances sit about twice above what was measured; a wrong tensor layout moves logits by
# tens and agrees on few positions.
TOLERANCES = {
    "fp32": Tolerance(max_logit_diff=1e-3, min_top1=1.0, greedy_must_match=True),
    "fp16": Tolerance(max_logit_diff=0.5, min_top1=0.97, greedy_must_match=False),
    "bf16": Tolerance(max_logit_diff=2.0, min_top1=0.93, greedy_must_match=False),
    "q8_0": Tolerance(max_logit_diff=4.0, min_top1=0.93, greedy_must_match=False),
    "source": Tolerance(max_logit_diff=4.0, min_top1=0.93, greedy_must_match=False),
}


class ProbeParity(Result):
    prompt: str
    tokens: int
    template_identical: bool
    tokens_identical: bool
    max_logit_diff: float
    top1_agreement: float
    greedy_identical: bool


class ParityReport(Result):
    loaded_with: str  # how the export was loaded back: the library its users load it with
    precision: str  # the key of TOLERANCES the export was held to
    tolerance: Tolerance
    probes: list[ProbeParity]
    max_logit_diff: float
    top1_agreement: float
    greedy_identical: int  # probes whose greedy continuation was the same
    passed: bool
    problems: list[str]


@dataclass
class Exported:
    """An export as its users load it."""

    model: Any  # a transformers causal LM, or a PeftModel around one
    tokenizer: Any
    loaded_with: str


def probe_prompts(reference: LoadedModel) -> list[str]:
    """A fixed set, and a few of the version's own training prompts (its few-shot pool), where it has them."""
    fixed = list(TEXT_PROBES if reference.task == "text" else FIXED_PROBES)
    pool_path = reference.version.path / POOL_FILE if reference.version else None
    if pool_path is None or not Path(pool_path).is_file():
        return fixed
    own = []
    for example in load_pool(pool_path)[:POOL_PROBES]:
        if example.text is not None:
            own.append(" ".join(example.text.split()[:40]) if reference.task == "text" else example.text)
        else:
            users = [m["content"] for m in example.messages if m["role"] == "user" and isinstance(m["content"], str)]
            if users:
                own.append(users[-1])
    return fixed + own


@dataclass
class Probe:
    prompt: str
    messages: list[dict] | None  # the conversation to render with each side's template; None: raw text


@dataclass
class ProbeOutput:
    """What one side makes of a probe."""

    text: str  # the prompt rendered with this side's own template
    ids: list[int]  # this side's token ids for that text
    logits: torch.Tensor  # [tokens, vocabulary], reading the reference's ids
    greedy: list[int]  # up to GREEDY_TOKENS tokens, greedy, from its own ids


def probes_for(reference: LoadedModel) -> list[Probe]:
    return [
        Probe(prompt, None if reference.task == "text" else reference.messages_for(prompt))
        for prompt in probe_prompts(reference)
    ]


@torch.no_grad()
def run_probes(model, tokenizer, probes: list[Probe], reading: list[list[int]] | None, eos: int | None):
    """Each probe rendered and tokenized by ``tokenizer``; the logits of ``reading`` (the reference's ids, so both
    sides read the same tokens) or of its own ids; the greedy continuation, stopping at ``eos`` or, when None,
    where the model's own generation config says (what a user of the export gets from ``generate``)."""
    outputs = []
    for number, probe in enumerate(probes):
        text = probe.prompt if probe.messages is None else render_prompt(tokenizer, probe.messages)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        read = reading[number] if reading is not None else ids
        logits = model(input_ids=torch.tensor([read])).logits[0].float()
        outputs.append(ProbeOutput(text, ids, logits, _greedy(model, ids, eos)))
    return outputs


def reference_outputs(reference: LoadedModel) -> tuple[list[Probe], list[ProbeOutput]]:
    """The probes and what the model as tunesmith serves it makes of them (computed once per export)."""
    probes = probes_for(reference)
    return probes, run_probes(reference.model, reference.tokenizer, probes, None, reference.tokenizer.eos_token_id)


def check_parity(
    probes: list[Probe],
    ours: list[ProbeOutput],
    exported: Exported,
    precision: str,
    tolerances: dict[str, Tolerance] = TOLERANCES,
) -> ParityReport:
    theirs = run_probes(exported.model, exported.tokenizer, probes, [output.ids for output in ours], None)
    return compare(probes, ours, theirs, exported.loaded_with, precision, tolerances[precision])


def compare(
    probes: list[Probe],
    ours: list[ProbeOutput],
    theirs: list[ProbeOutput],
    loaded_with: str,
    precision: str,
    tolerance: Tolerance,
) -> ParityReport:
    rows = [
        ProbeParity(
            prompt=probe.prompt,
            tokens=len(mine.ids),
            template_identical=mine.text == other.text,
            tokens_identical=mine.ids == other.ids,
            max_logit_diff=(mine.logits - other.logits).abs().max().item(),
            top1_agreement=(mine.logits.argmax(-1) == other.logits.argmax(-1)).float().mean().item(),
            greedy_identical=mine.greedy == other.greedy,
        )
        for probe, mine, other in zip(probes, ours, theirs)
    ]
    return _report(loaded_with, precision, tolerance, rows)


def _greedy(model, ids: list[int], eos: int | None) -> list[int]:
    settings = {"eos_token_id": eos} if eos is not None else {}
    output = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=GREEDY_TOKENS,
        do_sample=False,
        **settings,
    )
    return output[0, len(ids) :].tolist()


def _report(loaded_with: str, precision: str, tolerance: Tolerance, probes: list[ProbeParity]) -> ParityReport:
    worst = max(probe.max_logit_diff for probe in probes)
    positions = sum(probe.tokens for probe in probes)
    agreement = sum(probe.top1_agreement * probe.tokens for probe in probes) / positions
    same_greedy = sum(probe.greedy_identical for probe in probes)
    problems = []
    if not all(probe.template_identical for probe in probes):
        problems.append("the chat template renders a prompt differently")
    if not all(probe.tokens_identical for probe in probes):
        problems.append("the tokenizer gives different token ids")
    if worst > tolerance.max_logit_diff:
        problems.append(f"logits differ by up to {worst:.3g} (at most {tolerance.max_logit_diff:g} for {precision})")
    if agreement < tolerance.min_top1:
        problems.append(f"top-1 agreement {agreement:.1%} (at least {tolerance.min_top1:.0%} for {precision})")
    if tolerance.greedy_must_match and same_greedy < len(probes):
        problems.append(f"greedy continuations differ on {len(probes) - same_greedy} of {len(probes)} probes")
    return ParityReport(
        loaded_with=loaded_with,
        precision=precision,
        tolerance=tolerance,
        probes=probes,
        max_logit_diff=worst,
        top1_agreement=agreement,
        greedy_identical=same_greedy,
        passed=not problems,
        problems=problems,
    )
