"""SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 stop training after the step under way, with a
checkpoint there and exit status 3; re-running resumes as if nothing had happened."""

import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import TINY, assert_same_weights, compose_config

import emanet.engine.train as train_module
from emanet.engine.checkpoint import load_checkpoint
from emanet.engine.train import StopRequest, train
from emanet.errors import TrainingStopped


@pytest.fixture(scope="module")
def uninterrupted(full_run):
    return torch.load(full_run / "checkpoints" / "last.pt", weights_only=True)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def signal_after_step(monkeypatch, step: int, signal_number: int) -> None:
    """Make training send itself ``signal_number`` during its ``step``-th step (counted from 1)."""
    real_step, steps = train_module.train_step, []

    def step_then_signal(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        steps.append(loss)
        if len(steps) == step:
            os.kill(os.getpid(), signal_number)
        return loss

    monkeypatch.setattr(train_module, "train_step", step_then_signal)


# A training run as train.py runs it (one_line_errors sets the exit status), whose process
# group (data-loading workers included) gets the signal from another process during its third
# step, as SLURM signals every process of a job. (torch's workers take a SIGTERM from their
# training process as the order to exit.) A signal from another process may reach the
# training process a moment after `kill` returns (the kernel wakes any of its threads, and
# Python runs the handler on the main thread later): the step waits until the handler has
# run, so that the run stops after step 3 and not, by chance, after step 4.
SIGNALLED_RUN = """
import os, subprocess, sys, time
from pathlib import Path
import emanet.engine.train as train_module
from emanet.cli import compose_config, one_line_errors
real_step, real_handle, steps, handled = train_module.train_step, train_module.StopRequest.handle, [], []
def noting_handle(self, number, frame):
    real_handle(self, number, frame)
    handled.append(number)
def step_then_signal(*args, **kwargs):
    loss = real_step(*args, **kwargs)
    steps.append(loss)
    if len(steps) == 3:
        subprocess.run(["kill", "-s", sys.argv[1], "--", f"-{os.getpgid(0)}"], start_new_session=True)
        deadline = time.monotonic() + 60
        while not handled and time.monotonic() < deadline:
            time.sleep(0.01)
    return loss
train_module.train_step = step_then_signal
train_module.StopRequest.handle = noting_handle
with one_line_errors():
    train_module.train(compose_config("train", sys.argv[3:]), Path(sys.argv[2]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"])
def test_a_signalled_run_checkpoints_exits_3_and_resumes_bit_identically(
    uninterrupted, data_root, tmp_path, signal_name
):
    overrides = [*TINY, f"data_root={data_root}"]
    finished = subprocess.run(
        [sys.executable, "-c", SIGNALLED_RUN, signal_name, str(tmp_path), *overrides, "runtime.num_workers=1"],
        capture_output=True, text=True, timeout=300, start_new_session=True,  # a process group of its own
    )
    assert finished.returncode == 3, finished.stderr
    checkpoint = tmp_path / "checkpoints" / "iter_0000003.pt"
    assert finished.stderr.splitlines()[-1] == (
        f"stopped by {signal_name} at iteration 3; checkpoint {checkpoint}; re-run the same command to resume"
    )
    assert load_checkpoint(checkpoint)["iteration"] == 3
    assert not (tmp_path / "checkpoints" / "iter_0000004.pt").exists()
    assert not (tmp_path / "metrics.json").exists()  # stopped before the final evaluation
    train(compose_config(overrides), tmp_path)
    assert_same_weights(load_checkpoint(tmp_path / "checkpoints" / "last.pt"), uninterrupted)


@pytest.mark.slow
def test_a_job_managers_handler_gets_the_signal_after_the_checkpoint_and_is_restored(data_root, tmp_path, monkeypatch):
    # submitit's handler of its preemption signal requeues the job and exits: it must run
    # once the step under way is checkpointed, not in the middle of it.
    calls = []

    def job_managers_handler(number, frame):
        calls.append((signal.Signals(number).name, load_checkpoint(tmp_path)["iteration"]))

    previous = {number: signal.signal(number, job_managers_handler) for number in STOP_SIGNALS}
    try:
        signal_after_step(monkeypatch, 2, signal.SIGUSR2)  # checkpoint_every=3: not a checkpointed step
        overrides = [*TINY, f"data_root={data_root}", "schedule.checkpoint_every=3"]
        with pytest.raises(TrainingStopped, match=r"^stopped by SIGUSR2 at iteration 2; "):
            train(compose_config(overrides), tmp_path)
        assert calls == [("SIGUSR2", 2)]
        assert all(signal.getsignal(number) is job_managers_handler for number in STOP_SIGNALS)
        monkeypatch.undo()
        train(compose_config(overrides), tmp_path)
        assert calls == [("SIGUSR2", 2)]
        assert all(signal.getsignal(number) is job_managers_handler for number in STOP_SIGNALS)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_a_second_sigint_interrupts_at_once():
    with StopRequest() as request:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def signalled_rank_worker(rank, world_size, rendezvous, overrides, run_dir, results):
    os.environ["WORLD_SIZE"] = str(world_size)  # as torchrun sets it
    logging.basicConfig(level=logging.WARNING)
    if rank == 1:  # SLURM may signal one process of many
        signal_after_step(pytest.MonkeyPatch(), 2, signal.SIGUSR1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        train(compose_config(overrides), run_dir)
    except TrainingStopped as stopped:
        (results / f"rank{rank}.txt").write_text(str(stopped))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_every_process_stops_after_the_step_one_of_them_was_signalled_in(data_root, tmp_path):
    overrides = [*TINY, f"data_root={data_root}", "schedule.checkpoint_every=4"]
    mp.spawn(signalled_rank_worker, args=(2, tmp_path / "rendezvous", overrides, tmp_path / "run", tmp_path),
             nprocs=2, join=True)
    checkpoint = tmp_path / "run" / "checkpoints" / "iter_0000002.pt"
    expected = f"stopped by SIGUSR1 at iteration 2; checkpoint {checkpoint}; re-run the same command to resume"
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == [expected, expected]
    state = load_checkpoint(checkpoint)
    assert state["iteration"] == 2 and state["batches_drawn"] == [2, 2]


def test_the_evaluation_loaders_workers_also_leave_stopping_to_the_training_process(data_root):
    # A periodic evaluation's workers get the scheduler's SIGTERM too; torch's own handler
    # would end them, and the run with them, before its checkpoint.
    from emanet.engine.runtime import build_eval_loader, leave_stopping_to_the_training_process

    cfg = compose_config([*TINY, f"data_root={data_root}", "runtime.num_workers=1"])
    assert build_eval_loader(cfg).worker_init_fn is leave_stopping_to_the_training_process
