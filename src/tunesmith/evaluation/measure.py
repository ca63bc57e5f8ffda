"""Every figure of one system on one set of held-out examples: quality and cost per request.

classify            label scoring (one forward pass per example, all labels) -> accuracy,
                    macro-F1, per-label precision/recall, confusion matrix, ECE, answer loss
chat / completion   batched greedy generation -> ROUGE-L, chrF, exact match (short answers);
                    teacher-forced answer loss and perplexity
text                perplexity and bits per byte of the held-out text
preference          preference accuracy: how often the chosen answer gets the higher summed
                    log-likelihood than the rejected one; the mean margin between them (nats)
cost                prompt tokens, and latency of single requests (generation, batch of one)
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass, field

import torch

from tunesmith.data.batching import Row, pack_documents
from tunesmith.data.records import Example
from tunesmith.data.render import (
    IGNORE,
    fit_classify_text,
    render_messages,
    render_prompt,
    tokenize_document,
    with_answer,
)
from tunesmith.evaluation.label_scoring import score_candidates
from tunesmith.evaluation.scores import (
    bits_per_byte,
    classification_scores,
    generation_scores,
    latency_summary,
)
from tunesmith.evaluation.systems import System, conversation, split_answer
from tunesmith.models.generation import generate_batch
from tunesmith.training.loss import (
    answer_loss,
    mean_loss,
    row_loss_sums,
    sequence_log_likelihoods,
)

SHORT_ANSWER_WORDS = 10  # exact match is reported when references average at most this many words
MAX_NEW_TOKENS = 256


@dataclass
class EvalOptions:
    """How an evaluation runs."""

    shots: int = 8
    """Training examples shown to the base model in the few-shot baseline."""
    latency_samples: int = 16
    """Single requests timed per system (0: no latency figures)."""
    max_new_tokens: int | None = None
    """Generation length cap; by default 1.5x the longest reference (at most 256)."""
    batch_size: int = 16
    """Prompts generated together."""
    seed: int = 0
    """Picks the shots and the requests that are timed."""
    precision: str = "auto"
    """Weights' precision (models.precision.precision_dtype): auto is bf16 on a GPU with bf16, else fp32."""


@dataclass
class Measured:
    metrics: dict
    outputs: list[str] = field(default_factory=list)  # per example: predicted label or generated text
    scores: list[float] = field(default_factory=list)  # per example: correct (1/0), ROUGE-L; text: per block loss
    confidences: list[float] = field(default_factory=list)  # classify: probability of the prediction
    weights: list[float] | None = None  # per score: how much it counts in the metric (text: tokens); None: 1 each


def measure(
    system: System,
    tokenizer,
    task: str,
    examples: list[Example],
    labels: list[str] | None,
    system_prompt: str | None,
    options: EvalOptions,
    max_length: int,
    text_rows: list[Row] | None = None,
) -> Measured:
    """``text_rows``: already packed held-out blocks (training's validation split) for raw text."""
    started = time.perf_counter()
    with system.context():
        if task == "classify":
            measured, prompts, new_tokens = _classify(system, tokenizer, examples, labels, system_prompt, max_length)
        elif task == "text":
            measured, prompts, new_tokens = _text(system.model, tokenizer, examples, max_length, text_rows), [], 0
        elif task == "preference":
            measured, prompts, new_tokens = _preference(system, tokenizer, examples, system_prompt)
        else:
            measured, prompts, new_tokens = _generation(system, tokenizer, examples, system_prompt, options)
        measured.metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
        if prompts:
            measured.metrics["prompt_tokens_mean"] = statistics.fmean(len(p) for p in prompts)
            if options.latency_samples > 0:
                measured.metrics.update(_latency(system.model, tokenizer, prompts, new_tokens, options))
    if system.shots:
        measured.metrics["shots"] = len(system.shots)
    return measured


def _classify(system, tokenizer, examples, labels, system_prompt, max_length):
    # A text too long for max_length is shortened inside the prompt exactly as training shortened it
    # (data.render.fit_classify_text), the shots' texts too: every candidate label then follows the prompt
    # the model was trained on.
    def fit(example: Example) -> Example:
        return fit_classify_text(tokenizer, example, labels, system_prompt, max_length)

    examples = [fit(example) for example in examples]
    shots = [fit(shot) for shot in system.shots]

    def rendered(example: Example, label: str):
        candidate = Example(line=example.line, text=example.text, label=label)
        return render_messages(tokenizer, conversation(candidate, labels, system_prompt, shots))

    log_likelihoods, counts = score_candidates(
        system.model, [[rendered(e, label) for label in labels] for e in examples]
    )
    gold = [labels.index(example.label) for example in examples]
    scores = classification_scores(torch.softmax(log_likelihoods, dim=1), gold, labels)
    picked = torch.arange(len(examples)), torch.tensor(gold)
    loss = (-log_likelihoods[picked].sum() / counts[picked].sum().clamp(min=1)).item()
    metrics = {key: scores[key] for key in ("accuracy", "macro_f1", "ece", "per_label", "confusion", "n")}
    metrics.update(loss=loss, perplexity=math.exp(min(loss, 50.0)))
    correct = [float(p == g) for p, g in zip(scores["predictions"], gold)]
    measured = Measured(metrics, [labels[p] for p in scores["predictions"]], correct, scores["confidences"])
    prompts = [_prompt_ids(tokenizer, split_answer(conversation(e, labels, system_prompt, shots))[0]) for e in examples]
    longest_label = max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    return measured, prompts, longest_label + 1  # the label and the end-of-turn token


def _generation(system, tokenizer, examples, system_prompt, options):
    conversations = [conversation(e, None, system_prompt, system.shots) for e in examples]
    rendered = [render_messages(tokenizer, c) for c in conversations]
    rows = [Row(r.input_ids, r.labels, list(range(len(r.input_ids)))) for r in rendered]
    metrics = answer_loss(system.model, [r for r in rows if r.n_target], tokenizer.pad_token_id)
    metrics.pop("target_tokens", None)
    prompts, references = [], []
    for messages in conversations:
        before, reference = split_answer(messages)
        prompts.append(_prompt_ids(tokenizer, before))
        references.append(reference)
    max_new = options.max_new_tokens or auto_max_new_tokens(tokenizer, references)
    generated = generate_batch(system.model, tokenizer, prompts, max_new, options.batch_size)
    outputs = [g.text for g in generated]
    scores = generation_scores(outputs, references)
    metrics.update(rouge_l=scores["rouge_l"], chrf=scores["chrf"], n=len(examples))
    if statistics.fmean(len(r.split()) for r in references) <= SHORT_ANSWER_WORDS:
        metrics["exact_match"] = scores["exact_match"]
    per_example = [item["rouge_l"] for item in scores["per_example"]]
    return Measured(metrics, outputs, per_example), prompts, max_new


def _preference(system, tokenizer, examples, system_prompt):
    rows, prompts = [], []
    for example in examples:
        chosen = conversation(example, None, system_prompt, system.shots)
        for messages in (chosen, with_answer(chosen, example.rejected)):
            rendered = render_messages(tokenizer, messages)  # not cut: shots make the prompt long
            rows.append(Row(rendered.input_ids, rendered.labels, list(range(len(rendered.input_ids)))))
        prompts.append(_prompt_ids(tokenizer, chosen[:-1]))
    log_likelihoods = sequence_log_likelihoods(system.model, rows, tokenizer.pad_token_id)
    margins = (log_likelihoods[0::2] - log_likelihoods[1::2]).tolist()
    preferred = [float(margin > 0) for margin in margins]
    metrics = {
        "preference_accuracy": statistics.fmean(preferred),
        "preference_margin": statistics.fmean(margins),
        "n": len(examples),
    }
    measured = Measured(metrics, ["chosen" if p else "rejected" for p in preferred], preferred)
    return measured, prompts, auto_max_new_tokens(tokenizer, [e.chosen for e in examples])


def _text(model, tokenizer, examples, max_length, rows=None):
    if rows is None:
        rows = pack_documents([tokenize_document(tokenizer, e.text or "") for e in examples], max_length)
    rows = [row for row in rows if row.n_target]
    sums, metrics = row_loss_sums(model, rows, tokenizer.pad_token_id), {}
    if rows:
        metrics = mean_loss(sums.sum().item(), sum(row.n_target for row in rows))
        n_bytes = sum(len(tokenizer.decode([t for t in row.labels if t != IGNORE]).encode("utf-8")) for row in rows)
        metrics["bits_per_byte"] = bits_per_byte(metrics["loss"] * metrics["target_tokens"], max(n_bytes, 1))
    metrics["n"] = len(examples) or len(rows)
    # Per held-out block: its mean loss, weighted by its tokens (the bootstrap's unit; significance.py).
    tokens = [float(row.n_target) for row in rows]
    return Measured(metrics, scores=[s / t for s, t in zip(sums.tolist(), tokens)], weights=tokens)


def _prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def auto_max_new_tokens(tokenizer, references: list[str]) -> int:
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    return min(MAX_NEW_TOKENS, int(longest * 1.5) + 8)


def _latency(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, options: EvalOptions) -> dict:
    """Requests answered one at a time, as a user sends them: wall time and new tokens each."""
    sample = random.Random(options.seed).sample(prompts, min(options.latency_samples, len(prompts)))
    # Untimed warm-up of the code paths (prefill, one decode step); its length would add nothing.
    generate_batch(model, tokenizer, sample[:1], min(2, max_new_tokens), share_prefix=False)
    seconds, tokens = [], []
    for prompt in sample:
        began = time.perf_counter()
        generated = generate_batch(model, tokenizer, [prompt], max_new_tokens, share_prefix=False)[0]
        seconds.append(time.perf_counter() - began)
        tokens.append(generated.new_tokens)
    summary = latency_summary(seconds, tokens)
    summary["latency_requests"] = summary.pop("requests")
    return summary
