"""Training on a cluster: processes that SLURM (or submitit) starts instead of torchrun,
torchrun over two "nodes", and a job that submitit requeues after a preemption signal."""

import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from helpers import TINY, assert_same_weights

from emanet.engine.checkpoint import load_checkpoint
from emanet.engine.distributed import first_host, launcher_environment, port_of_job
from emanet.engine.train import STOP_SIGNALS, stop_signals

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")
# Four steps of two processes of two images: enough to cross an epoch of the 10 images.
# One thread each, whoever starts the processes (torchrun would set OMP_NUM_THREADS=1, srun
# leaves torch's default): sums over other threads round differently.
DISTRIBUTED = [*TINY, "schedule.iterations=4", "runtime.threads=1"]

# What srun exports to task 1 of a two-task step on nodes gpu[07-08] (two tasks per node
# would give it SLURM_LOCALID=1 too).
SLURM_TASK_1 = {
    "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
    "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def test_a_slurm_task_is_described_to_torch_as_torchrun_would():
    assert launcher_environment(SLURM_TASK_1) == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + zlib.crc32(b"4242") % 40000),
    }
    # A step may run fewer tasks than the job has; MASTER_ADDR / MASTER_PORT set by hand win.
    step = {**SLURM_TASK_1, "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8", "MASTER_PORT": "29400"}
    assert launcher_environment(step)["WORLD_SIZE"] == "4"
    assert launcher_environment(step)["MASTER_PORT"] == "29400"


def test_torchrun_a_batch_script_and_a_single_task_are_left_alone():
    assert launcher_environment({**SLURM_TASK_1, "WORLD_SIZE": "2", "RANK": "0"}) == {}  # torchrun inside srun
    batch_script = {key: value for key, value in SLURM_TASK_1.items() if key != "SLURM_STEP_ID"}
    assert launcher_environment(batch_script) == {}
    assert launcher_environment({**SLURM_TASK_1, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == {}
    assert launcher_environment({}) == {}


def test_a_submitit_local_task_meets_its_siblings_on_this_machine():
    task = {
        "SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
    }
    assert launcher_environment(task) == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port_of_job("777")),
    }


@pytest.mark.parametrize(
    "nodelist,host",
    [("gpu07", "gpu07"), ("gpu[07-08]", "gpu07"), ("node[3,5-9],login1", "node3"),
     ("rack[2-3]-n[010-011]", "rack2-n010"), ("a-b,c", "a-b"), ("10.0.0.4", "10.0.0.4")],
)
def test_the_master_is_the_first_host_of_the_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_a_batch_script_with_several_tasks_trains_alone_and_says_how_to_use_them(caplog):
    from emanet.engine.distributed import warn_if_not_a_slurm_task

    warn_if_not_a_slurm_task({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"})
    assert caplog.messages == [
        "SLURM allocated 4 tasks, but this process was not started by srun: training in one process; "
        "start it with `srun python train.py ...` (or torchrun) to use them all"
    ]


def test_submitits_preemption_signal_stops_training_too(monkeypatch):
    assert signal.SIGUSR2 in STOP_SIGNALS
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "HUP")
    assert stop_signals() == (*STOP_SIGNALS, signal.SIGHUP)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_id_with_a_free_port() -> str:
    """A SLURM job id whose derived port nothing on this machine listens on."""
    for job_id in range(1000, 2000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port_of_job(str(job_id))))
            except OSError:
                continue
        return str(job_id)
    raise RuntimeError("no free port among 1000 job ids")


def environment(**extra: str) -> dict[str, str]:
    launched = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SUBMITIT_"))}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        launched.pop(key, None)
    return {**launched, **extra}


def wait_all(processes: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    outputs = [process.stderr.read() for process in processes]
    assert [process.returncode for process in processes] == [0] * len(processes), "\n".join(outputs)


def last_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def torchrun_two_processes(data_root, tmp_path_factory):
    """The reference: DISTRIBUTED under torchrun, one node with two processes."""
    run_dir = tmp_path_factory.mktemp("torchrun")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", TRAIN,
        *DISTRIBUTED, f"data_root={data_root}", f"hydra.run.dir={run_dir}",
    ]
    wait_all([subprocess.Popen(command, env=environment(), cwd=run_dir, stderr=subprocess.PIPE, text=True)])
    return last_state(run_dir)


@pytest.mark.slow
def test_two_tasks_started_by_slurm_train_bit_identically_to_torchrun(torchrun_two_processes, data_root, tmp_path):
    job_id = job_id_with_a_free_port()
    tasks = [
        subprocess.Popen(
            [sys.executable, TRAIN, *DISTRIBUTED, f"data_root={data_root}", f"hydra.run.dir={tmp_path}"],
            env=environment(
                SLURM_JOB_ID=job_id, SLURM_STEP_ID="0", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost",
            ),
            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    wait_all(tasks)
    state = last_state(tmp_path)
    assert len(state["rng"]) == 2  # two processes trained, each with its own random state
    assert state["batches_drawn"] == torchrun_two_processes["batches_drawn"] == [4, 4]
    assert_same_weights(state, torchrun_two_processes)


@pytest.mark.slow
def test_torchrun_over_two_nodes_trains_bit_identically_to_one_node(torchrun_two_processes, data_root, tmp_path):
    # Two torchrun agents meeting through a c10d rendezvous on 127.0.0.1, one process each:
    # two "nodes" of one machine, sharing the run directory as a cluster's file system would.
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=two_nodes", TRAIN,
             *DISTRIBUTED, f"data_root={data_root}", f"hydra.run.dir={tmp_path}"],
            env=environment(), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    wait_all(nodes)
    state = last_state(tmp_path)
    assert len(state["rng"]) == 2
    assert_same_weights(state, torchrun_two_processes)


@pytest.mark.slow
def test_two_tasks_of_the_submitit_local_launcher_train_bit_identically_to_torchrun(
    torchrun_two_processes, data_root, tmp_path
):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    finished = subprocess.run(
        [sys.executable, TRAIN, "-m", *DISTRIBUTED, f"data_root={data_root}", "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=job"],
        env=environment(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    state = last_state(tmp_path / "job")
    assert len(state["rng"]) == 2
    assert_same_weights(state, torchrun_two_processes)


@pytest.mark.parametrize("node,gpus,cpus,memory", [("slurm_4gpu", 4, 8, 160), ("slurm_8gpu", 8, 10, 320)])
def test_the_node_presets_submit_a_task_per_gpu_warned_before_the_time_limit(
    node, gpus, cpus, memory, tmp_path, monkeypatch
):
    # The batch script submitit writes from a preset, as the launcher passes it on
    # (submitit looks for srun on PATH before it writes one).
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from emanet.cli import compose_config

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config("train", [f"hydra/launcher={node}", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher)
    assert cpus > cfg.runtime.num_workers  # the training process and its loader workers
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"])
    queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{
        key if key in queue_keys else f"slurm_{key}": value for key, value in params.items()
        if key not in ("_target_", "submitit_folder", "max_num_timeout", "name")
    })
    script = executor._executor._make_submission_file_text("python train.py", "uid")
    for line in (f"--gpus-per-node={gpus}", f"--ntasks-per-node={gpus}", f"--cpus-per-task={cpus}",
                 f"--mem={memory}GB", "--nodes=1", "--partition=gpu", "--signal=USR2@180", "--time=1440"):
        assert f"#SBATCH {line}\n" in script


@pytest.mark.slow
def test_a_job_preempted_under_submitit_is_requeued_and_ends_bit_identically(full_run, data_root, tmp_path):
    # The submitit local launcher runs the job in a process of its own and requeues it when
    # the job's handler of submitit's preemption signal (SIGUSR2) asks to. The signal comes
    # once the run has written its first checkpoint (of 6), so it stops mid-run even on a busy machine.
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    run_dir = sweep / "job"
    launcher = subprocess.Popen(
        [sys.executable, TRAIN, "-m", *TINY, f"data_root={data_root}", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job"],
        env=environment(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lock = run_dir / "train.lock"
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "iter_0000001.pt").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    training_pid = int(lock.read_text().split()[1])  # the lock names its holder: "pid PID on host HOST"
    os.kill(training_pid, signal.SIGUSR2)
    output, errors = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, errors

    logs = "\n".join(path.read_text() for path in sorted((sweep / ".submitit").rglob("*_0_log.*")))
    stops = [line for line in logs.splitlines() if "stopped by SIGUSR2 at iteration" in line]
    assert len(stops) == 1, logs
    stopped_at = int(stops[0].split("at iteration ")[1].split(";")[0])
    assert 1 <= stopped_at < 6  # mid-run: the requeued job trained the rest
    assert "Requeued job" in logs
    assert_same_weights(load_checkpoint(run_dir / "checkpoints" / "last.pt"), last_state(full_run))
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_the_cluster_pages_commands_compose():
    # Every `python train.py -m ...` of docs/clusters.md's SLURM section, with the first value
    # of each sweep, is a config Hydra accepts (launcher presets and settings included).
    from test_install_docs import code_blocks

    from emanet.cli import compose_config

    text = (REPO / "docs" / "clusters.md").read_text()
    section = text.split("\n## Running on a cluster\n", 1)[1].split("\n## ", 1)[0]
    commands = [line.split() for block in code_blocks(section) for line in block if line.startswith("python train.py")]
    assert len(commands) == 4
    for command in commands:
        overrides = [word.split(",")[0] if "=" in word and "{" not in word else word for word in command[3:]]
        assert command[2] == "-m"
        cfg = compose_config("train", overrides, return_hydra_config=True)
        assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher.")
