"""Label scoring (shared prefix cache + tree attention) equals scoring each candidate on its own."""

from __future__ import annotations

import pytest
import torch

from conftest import sharpen
from tunesmith.data.batching import Row, collate
from tunesmith.data.records import Example
from tunesmith.data.render import Rendered, render_messages
from tunesmith.evaluation import label_scoring
from tunesmith.evaluation.label_scoring import score_candidates
from tunesmith.evaluation.systems import conversation
from tunesmith.models.load import load_model
from tunesmith.training.loss import token_loss_sums

LABELS = ["neg", "negative", "positive", "neutral mood"]  # shared first tokens, 2 to 9 tokens long
TEXTS = [
    "the soup was great",
    "Customer: CU-1234 Product: FBX-200 Issue: no signal, the staff were not kind at all and I waited.",
    "ok",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again.",
    "the soup was great and the staff were kind",  # starts like the first text
]
SHOTS = [
    Example(line=100 + i, text=text, label=label)
    for i, (text, label) in enumerate(
        [("Hello! How are you today?", "positive"), ("no signal at all", "neg"), ("the fox is lazy", "neutral mood")]
    )
]
SYSTEM = "You are a helpful assistant. Answer with the label only."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["random", "sharp"])
def model(request, tiny_model_dir):
    loaded = load_model(tiny_model_dir, dtype=torch.float32).eval()
    if request.param == "sharp":
        sharpen(loaded)
    return loaded


def candidates(tokenizer, setting: str, texts=TEXTS, labels=LABELS) -> list[list[Rendered]]:
    system = SYSTEM if setting == "system" else None
    shots = SHOTS if setting == "few_shot" else []
    return [
        [
            render_messages(tokenizer, conversation(Example(line=i, text=text, label=label), labels, system, shots))
            for label in labels
        ]
        for i, text in enumerate(texts)
    ]


def plain_score(model, rendered: Rendered, pad_id: int) -> float:
    row = Row(rendered.input_ids, rendered.labels, list(range(len(rendered.input_ids))))
    with torch.no_grad():
        return -token_loss_sums(model, collate([row], pad_id)).item()


@pytest.fixture(scope="module")
def rendered_by_setting(tiny_tokenizer) -> dict[str, list[list[Rendered]]]:
    return {setting: candidates(tiny_tokenizer, setting) for setting in ("plain", "system", "few_shot")}


@pytest.fixture(scope="module")
def plain_scores(model, tiny_tokenizer, rendered_by_setting) -> dict[str, torch.Tensor]:
    return {
        setting: torch.tensor(
            [[plain_score(model, c, tiny_tokenizer.pad_token_id) for c in example] for example in rendered]
        )
        for setting, rendered in rendered_by_setting.items()
    }


@pytest.mark.parametrize(("row_tokens", "pack_tokens"), [(1, 1), (100, 1), (1_000_000, 1), (1_000_000, None)])
@pytest.mark.parametrize("setting", ["plain", "system", "few_shot"])
def test_equals_scoring_each_candidate_alone(
    model, tiny_tokenizer, rendered_by_setting, plain_scores, setting, row_tokens, pack_tokens, monkeypatch
):
    rendered = rendered_by_setting[setting]
    batches, rows = [], []  # examples per forward pass, examples per packed row
    score_batch = label_scoring._score_batch

    def spy(model, packed, *rest):
        rows.extend(len(set(row.group)) for row in packed)
        batches.append(sum(len(set(row.group)) for row in packed))
        return score_batch(model, packed, *rest)

    monkeypatch.setattr(label_scoring, "_score_batch", spy)
    if setting == "few_shot":
        first = [c.input_ids for example in rendered for c in example]
        shared = next(i for i in range(min(map(len, first))) if len({ids[i] for ids in first}) > 1)
        assert shared > 100  # the system message and the shots: a long prefix every row shares
    scores, counts = score_candidates(model, rendered, row_tokens=row_tokens, pack_tokens=pack_tokens)
    assert scores.shape == counts.shape == (len(TEXTS), len(LABELS))
    assert sum(batches) == len(TEXTS)
    if pack_tokens is None:
        assert rows == [len(TEXTS)]  # all examples packed into one row (they fit in MIN_PACK tokens)
    elif row_tokens == 1:
        assert batches == [1] * len(TEXTS)
    elif row_tokens == 100:
        assert 1 < len(batches) < len(TEXTS)  # several rows per batch, several batches
    else:
        assert batches == [len(TEXTS)]
    expected = plain_scores[setting]
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    # every target token counted once: the label's tokens and the end of the turn ("<|im_end|>\n")
    n_targets = torch.tensor([[float(c.n_target) for c in example] for example in rendered])
    assert torch.equal(counts, n_targets)
    for example in rendered:
        for label, c in zip(LABELS, example):
            assert c.n_target == len(tiny_tokenizer(label, add_special_tokens=False)["input_ids"]) + 2
            assert tiny_tokenizer.decode([t for t in c.labels if t != -100]) == label + "<|im_end|>\n"
    # the comparison is not vacuous: the numbers depend on the context and on the label
    assert expected.std(dim=0).min() > 1e-3 and expected.std(dim=1).min() > 1e-3


def test_one_example_and_labels_of_one_token(model, tiny_tokenizer):
    rendered = candidates(tiny_tokenizer, "system", texts=["ok"], labels=["a", "b"])
    scores, counts = score_candidates(model, rendered)
    expected = torch.tensor([[plain_score(model, c, tiny_tokenizer.pad_token_id) for c in rendered[0]]])
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    assert counts.tolist() == [[3.0, 3.0]]


def test_empty_input(model):
    scores, counts = score_candidates(model, [])
    assert scores.shape == counts.shape == (0, 0)


def test_branches_cannot_see_each_other(model, rendered_by_setting):
    """The score of answer A does not depend on which other answer shares its row."""
    for setting in ("plain", "few_shot"):
        rendered = rendered_by_setting[setting]  # one prompt (listing all labels) per example
        a_b = [[example[1], example[2]] for example in rendered]  # "negative" beside "positive"
        a_c = [[example[1], example[3]] for example in rendered]  # "negative" beside "neutral mood"
        first, _ = score_candidates(model, a_b)
        second, _ = score_candidates(model, a_c)
        torch.testing.assert_close(first[:, 0], second[:, 0], atol=1e-4, rtol=0)
        assert (first[:, 1] - second[:, 1]).abs().min() > 1e-3  # the other branch did change
        # and B, C on their own rows agree with the four-candidate rows
        full, _ = score_candidates(model, rendered)
        torch.testing.assert_close(first, full[:, [1, 2]], atol=1e-4, rtol=0)
        torch.testing.assert_close(second, full[:, [1, 3]], atol=1e-4, rtol=0)


def test_training_mode_is_restored(model, rendered_by_setting):
    model.train()
    try:
        score_candidates(model, rendered_by_setting["plain"][:2])
        assert model.training
    finally:
        model.eval()
