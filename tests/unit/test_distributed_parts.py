"""The pieces of data-parallel training that need no second process: shares of a step, gradient buckets, the
single-process no-ops, and the `--nproc` command line (the processes: tests/integration/test_distributed.py)."""

from __future__ import annotations

import os
import signal
import socket

import pytest
import torch

from tunesmith.cli import launch, main
from tunesmith.training import distributed
from tunesmith.training.distributed import SINGLE, ProcessGroup
from tunesmith.training.stop_signals import StopSignals
from tunesmith.workflows.train import _restarted_by_torchrun


def test_each_process_takes_every_world_th_row_and_together_they_take_all():
    rows = list(range(7))
    shares = [distributed.shard(rows, ProcessGroup(rank, 3)) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert distributed.shard([5], ProcessGroup(1, 2)) == []  # a short last batch: nothing for rank 1
    assert distributed.shard(rows, SINGLE) == rows


def test_gradient_buckets_keep_every_parameter_once_in_order(monkeypatch):
    monkeypatch.setattr(distributed, "BUCKET_ELEMENTS", 10)
    parameters = [torch.nn.Parameter(torch.zeros(n)) for n in (4, 4, 4, 12, 1)]
    buckets = distributed._buckets(parameters)
    assert [[p.numel() for p in bucket] for bucket in buckets] == [[4, 4], [4], [12], [1]]


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.join() == SINGLE and SINGLE.main and not SINGLE.parallel
    grad = torch.ones(3)
    parameter = torch.nn.Parameter(torch.zeros(3))
    parameter.grad = grad.clone()
    distributed.sum_gradients([parameter], SINGLE)
    assert torch.equal(parameter.grad, grad)
    assert distributed.sum_values([1.5, 2.0], SINGLE) == [1.5, 2.0]
    assert distributed.any_process(True, SINGLE) and distributed.from_main({"a": 1}, SINGLE) == {"a": 1}


def test_nproc_runs_the_same_command_line_under_torchrun():
    argv = ["train", "data.jsonl", "--nproc", "4", "--epochs", "2", "--nproc=3", "--fsdp", "--join-timeout", "9"]
    assert launch.without_launch_flags(argv) == ["train", "data.jsonl", "--epochs", "2", "--fsdp"]
    arguments = launch.torchrun_arguments(argv, 4)
    assert arguments == ["--standalone", "--nproc-per-node=4", "-m", "tunesmith", *launch.without_launch_flags(argv)]
    several = launch.torchrun_arguments(argv, 4, nnodes=2, endpoint="10.0.0.1:29500", join_timeout=9)
    assert several[:4] == [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29500",
        "--rdzv-conf=join_timeout=9",
    ]


@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_nproc_must_be_one_or_more(nproc, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "x.jsonl", "--nproc", nproc]) == 1
    assert f"--nproc {nproc}: give the number of processes, 1 or more" in capsys.readouterr().err


def test_nproc_inside_torchrun_must_agree_with_it(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "x.jsonl", "--nproc", "4"]) == 1
    assert "--nproc 4 under torchrun's 2 processes" in capsys.readouterr().err


def test_a_stop_signal_twice_at_once_is_one_request_and_a_later_ctrl_c_aborts(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("tunesmith.training.stop_signals.time.monotonic", lambda: now[0])
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's or a scheduler's stop
        assert stop.requested
        now[0] += 0.5
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl-C, forwarded by torchrun's agent
        now[0] += 5
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C, later: abort
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_run_restarted_by_torchrun_resumes_instead_of_refusing_its_folder(monkeypatch):
    # torchrun --max-restarts starts the processes again with TORCHELASTIC_RESTART_COUNT > 0. (Not run end to
    # end: on this machine a restarted round's gloo connection setup itself fails at random, before any of
    # tunesmith's code runs, with a plain all-reduce script too; pytorch/pytorch#167288.)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _restarted_by_torchrun(ProcessGroup(1, 2))
    assert not _restarted_by_torchrun(SINGLE)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not _restarted_by_torchrun(ProcessGroup(0, 2))


def test_fsdp_refuses_dpo_before_loading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}\n')
    assert main(["train", str(pairs), "--method", "dpo", "--fsdp"]) == 1
    assert "--fsdp shards LoRA and full fine-tuning" in capsys.readouterr().err
    assert not (tmp_path / "home" / "runs").exists()


def test_several_machines_need_a_meeting_point(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "x.jsonl", "--nproc", "2", "--nnodes", "2"]) == 1
    assert "--nnodes 2: give --rdzv-endpoint HOST:PORT" in capsys.readouterr().err
    assert main(["train", "x.jsonl", "--nnodes", "2", "--rdzv-endpoint", "nohost"]) == 1
    assert "--rdzv-endpoint nohost: give HOST:PORT" in capsys.readouterr().err


def test_a_meeting_port_taken_on_this_machine_is_refused_at_once(capsys, monkeypatch):
    # torchrun itself would wait for ever on a port another program listens on.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        endpoint = f"127.0.0.1:{port}"
        assert main(["train", "x.jsonl", "--nproc", "2", "--nnodes", "2", "--rdzv-endpoint", endpoint]) == 1
    assert f"port {port} is already in use on this machine" in capsys.readouterr().err
