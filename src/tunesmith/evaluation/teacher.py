"""The teacher as a system of ``tunesmith eval``: a model behind an OpenAI-compatible URL, measured over
HTTP on the same held-out examples, with the same prompts, as the local systems.

    classify            each example labelled with the student's own instruction (temperature 0); an
                        answer that names no label counts as wrong -> accuracy, macro-F1, per-label
                        figures, confusion matrix and the count of invalid answers. There are no label
                        probabilities over HTTP, so ECE and answer loss are absent rather than made up.
    chat / completion   greedy answers -> ROUGE-L, chrF, exact match (short answers)
    cost                single requests timed one at a time (p50/p90, like the local systems), prompt
                        tokens and tokens/s when the server reports ``usage``; the size only if given

The teacher is a reference, as in distillation papers: ``helped`` does not ask the student to beat it.
"""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tunesmith.core.errors import TunesmithError
from tunesmith.data.labels import normalize_label
from tunesmith.data.records import Example
from tunesmith.evaluation.measure import (
    SHORT_ANSWER_WORDS,
    EvalOptions,
    Measured,
    auto_max_new_tokens,
)
from tunesmith.evaluation.scores import (
    classification_scores,
    generation_scores,
    latency_summary,
)
from tunesmith.evaluation.systems import conversation, split_answer
from tunesmith.models.openai_client import Reply, Teacher

CONCURRENCY = 4  # quality requests in flight; latency is timed one request at a time
CLASSIFY_MAX_TOKENS = 32
TASKS = ("classify", "chat", "completion")


def measure_teacher(
    teacher: Teacher,
    tokenizer,
    task: str,
    examples: list[Example],
    labels: list[str] | None,
    system_prompt: str | None,
    options: EvalOptions,
    parameters: int | None = None,
) -> Measured:
    """``tokenizer`` is the student's: it sizes the generation cap exactly as for the local systems."""
    if task not in TASKS:
        raise TunesmithError(
            f"the teacher is measured on {', '.join(TASKS)} data, not {task}: over HTTP it "
            "can only answer, not score text"
        )
    prompts, references = [], []
    for example in examples:
        before, reference = split_answer(
            conversation(example, labels if task == "classify" else None, system_prompt, [])
        )
        prompts.append(before)
        references.append(reference)
    max_tokens = (
        CLASSIFY_MAX_TOKENS
        if task == "classify"
        else options.max_new_tokens or auto_max_new_tokens(tokenizer, references)
    )

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        replies = list(pool.map(lambda messages: teacher.chat(messages, max_tokens), prompts))
    measured = _classify(replies, references, labels or []) if task == "classify" else _generation(replies, references)
    metrics = measured.metrics
    metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
    prompt_tokens = [reply.prompt_tokens for reply in replies if reply.prompt_tokens is not None]
    if len(prompt_tokens) == len(replies):  # the server reported `usage` for every request
        metrics["prompt_tokens_mean"] = statistics.fmean(prompt_tokens)
    if options.latency_samples > 0:
        metrics.update(_latency(teacher, prompts, max_tokens, options))
    metrics.update(parameters=parameters, model=teacher.model)
    return measured


def _classify(replies: list[Reply], gold_labels: list[str], labels: list[str]) -> Measured:
    # An invalid answer is an extra column in the scoring, so it is wrong for every gold label; the
    # figures are then reported over the real labels only (a never-true "invalid" label would drag
    # macro-F1 down a second time).
    predicted = [normalize_label(reply.text, labels) for reply in replies]
    columns = [labels.index(label) if label is not None else len(labels) for label in predicted]
    one_hot = np.zeros((len(replies), len(labels) + 1))
    one_hot[np.arange(len(replies)), columns] = 1.0
    gold = [labels.index(label) for label in gold_labels]
    scores = classification_scores(one_hot, gold, [*labels, "(invalid)"])
    per_label = {label: scores["per_label"][label] for label in labels}
    metrics = {
        "accuracy": scores["accuracy"],
        "macro_f1": statistics.fmean(figures["f1"] for figures in per_label.values()),
        "per_label": per_label,
        # Over the answers that name a label; invalid_answers counts the rest.
        "confusion": [row[: len(labels)] for row in scores["confusion"][: len(labels)]],
        "invalid_answers": sum(label is None for label in predicted),
        "n": scores["n"],
    }
    outputs = [label if label is not None else reply.text for label, reply in zip(predicted, replies)]
    return Measured(metrics, outputs, [float(p == g) for p, g in zip(predicted, gold_labels)])


def _generation(replies: list[Reply], references: list[str]) -> Measured:
    outputs = [reply.text.strip() for reply in replies]
    scores = generation_scores(outputs, references)
    metrics = {"rouge_l": scores["rouge_l"], "chrf": scores["chrf"], "n": len(outputs)}
    if statistics.fmean(len(reference.split()) for reference in references) <= SHORT_ANSWER_WORDS:
        metrics["exact_match"] = scores["exact_match"]
    return Measured(metrics, outputs, [item["rouge_l"] for item in scores["per_example"]])


def _latency(teacher: Teacher, prompts: list[list[dict]], max_tokens: int, options: EvalOptions) -> dict:
    """The same seeded sample of requests the local systems time, sent one at a time after one untimed
    warm-up (a server may load the model on its first request)."""
    sample = [
        prompts[i]
        for i in random.Random(options.seed).sample(range(len(prompts)), min(options.latency_samples, len(prompts)))
    ]
    teacher.chat(sample[0], max_tokens)
    seconds, tokens = [], []
    for messages in sample:
        began = time.perf_counter()
        reply = teacher.chat(messages, max_tokens)
        seconds.append(time.perf_counter() - began)
        tokens.append(reply.completion_tokens)
    summary = latency_summary(seconds, [count or 0 for count in tokens])
    if any(count is None for count in tokens):
        del summary["tokens_per_s"]  # the server did not say how many tokens it generated
    summary["latency_requests"] = summary.pop("requests")
    return summary


def parse_parameters(text: str) -> int:
    """A parameter count as people write it: ``1.7B``, ``135M``, ``350k`` or ``7000000000``."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}.get(text.strip()[-1:].lower(), 1)
    try:
        value = float(text.strip()[:-1] if scale != 1 else text.strip()) * scale
    except ValueError:
        value = -1
    if not 0 < value < float("inf"):  # also refuses nan
        raise TunesmithError(f"--teacher-parameters {text!r}: give a count such as 1.7B, 135M or 7000000000")
    return round(value)
