"""FSDP's parts in one process (a process group of one, sharded all the same: every weight a DTensor that is
gathered around each layer's forward): a sharded step computes the plain step's loss and gradients, and a
checkpoint moves between sharded and plain training both ways. Two processes: tests/integration/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

from conftest import random_lora
from tunesmith.data.batching import Row
from tunesmith.data.render import render_messages
from tunesmith.models.load import load_model
from tunesmith.training import checkpoint as ckpt
from tunesmith.training import distributed, sharding
from tunesmith.training.distributed import ProcessGroup
from tunesmith.training.kernels import training_kernels
from tunesmith.training.loop import train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_sharded_process_makes_as_many_passes_the_last_ones_empty():
    rows = list(range(5))
    assert sharding.passes(rows, 1, ProcessGroup(1, 2)) == [[1], [3]]  # plain: only its own rows
    assert sharding.passes(rows, 1, ProcessGroup(1, 2, sharded=True)) == [[1], [3], []]  # rank 0 makes 3
    assert sharding.passes(rows, 2, ProcessGroup(0, 2, sharded=True)) == [[0, 2], [4]]
    assert sharding.passes(rows, 2, ProcessGroup(1, 2, sharded=True)) == [[1, 3], []]
    assert sharding.passes([7], 4, ProcessGroup(1, 2, sharded=True)) == [[]]  # no row at all: one pass still


@pytest.fixture(scope="module")
def group():
    group = distributed.join(sharded=True)  # no WORLD_SIZE: a group of one, without a rendezvous
    assert group.sharded and group.world == 1
    yield group
    distributed.leave(group)


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[Row]:
    texts = [("hi", "hello there"), ("2+2?", "four"), ("name a colour", "blue, or red"), ("bye", "see you soon")]
    return [
        Row.from_segments(
            [render_messages(tiny_tokenizer, [{"role": "user", "content": u}, {"role": "assistant", "content": a}])]
        )
        for u, a in texts
    ]


def lora_model(tiny_model_dir, method: str):
    model = load_model(tiny_model_dir, dtype=torch.float32)
    return (random_lora(model, rank=4, scale=0.5, seed=1) if method == "lora" else model).train()


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: sharding.full(p.grad).clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_sharded_step_is_the_plain_step(tiny_model_dir, tiny_tokenizer, rows, group, method):
    pad = tiny_tokenizer.pad_token_id
    plain, sharded = lora_model(tiny_model_dir, method), lora_model(tiny_model_dir, method)
    root = sharding.shard(sharded, bf16_weights=False)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    # Micro-batches of one (accumulation, gradients reduced after the last only), the fused LoRA layer on.
    with training_kernels(plain, bf16=False):
        loss, tokens = train_step(plain, rows, 1, pad)
    with training_kernels(sharded, bf16=False):
        sharded_loss, sharded_tokens = train_step(sharded, rows, 1, pad, group, root)
    assert sharded_loss == pytest.approx(loss, rel=1e-6) and sharded_tokens == tokens
    expected, got = gradients(plain), gradients(sharded)
    assert expected.keys() == got.keys() and len(expected) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)
    validated = sharding.answer_loss(root, rows, pad, 3, group)
    assert validated == pytest.approx(loss, rel=1e-5)  # the same weights: validation's loss is the step's


def adamw(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@pytest.mark.parametrize("direction", ["plain to sharded", "sharded to plain"])
def test_a_checkpoint_moves_between_sharded_and_plain_training(
    tiny_model_dir, tiny_tokenizer, rows, group, tmp_path, direction
):
    pad = tiny_tokenizer.pad_token_id
    single = distributed.SINGLE
    writer, reader = lora_model(tiny_model_dir, "lora"), lora_model(tiny_model_dir, "lora")
    writer_root = sharding.shard(writer, False) if direction == "sharded to plain" else None
    reader_root = sharding.shard(reader, False) if direction == "plain to sharded" else None
    writer_group = group if writer_root else single
    reader_group = group if reader_root else single

    optimizer, scheduler = adamw(writer)
    train_step(writer, rows, 2, pad, writer_group, writer_root)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    folder = ckpt.save_checkpoint(tmp_path, 1, writer, optimizer, scheduler, {"global_step": 1}, None)
    saved = torch.load(folder / "state.pt", weights_only=False)["optimizer"]["state"]
    assert not any(isinstance(value, DTensor) for state in saved.values() for value in state.values())  # whole

    reader_optimizer, reader_scheduler = adamw(reader)
    loop_state, _ = ckpt.load_checkpoint(folder, reader, reader_optimizer, reader_scheduler)
    assert loop_state == {"global_step": 1}
    # One more step on each: equal weights afterwards need equal weights and AdamW moments before.
    for model, opt, group_, root in (
        (writer, optimizer, writer_group, writer_root),
        (reader, reader_optimizer, reader_group, reader_root),
    ):
        train_step(model, rows, 2, pad, group_, root)
        opt.step()
        opt.zero_grad(set_to_none=True)
    written, read = ckpt.whole_trainable_state(writer), ckpt.whole_trainable_state(reader)
    assert written.keys() == read.keys()
    for name in written:
        torch.testing.assert_close(read[name], written[name], rtol=1e-5, atol=1e-6)
