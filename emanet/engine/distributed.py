"""Process groups under torchrun, SLURM or submitit, per-rank batches, and the samplers
that shard the data."""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from emanet.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> World:
    """Join the process group that torchrun, SLURM or submitit describe in the environment
    (if any; see :func:`export_launcher_environment`).

    NCCL on GPUs, gloo on CPUs; each process takes GPU ``LOCAL_RANK`` (modulo the GPUs it
    sees: SLURM may give every task only its own).
    """
    export_launcher_environment()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        warn_if_not_a_slurm_task()
        return World(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


# A process started by srun (or by submitit on SLURM) is one task of a job step; submitit's
# local executor describes its tasks in variables of its own.
SLURM_TASK = {"rank": "SLURM_PROCID", "size": "SLURM_NTASKS", "local_rank": "SLURM_LOCALID",
              "nodes": "SLURM_JOB_NUM_NODES", "job_id": "SLURM_JOB_ID"}
SUBMITIT_LOCAL_TASK = {"rank": "SUBMITIT_LOCAL_GLOBALID", "size": "SUBMITIT_LOCAL_NTASKS",
                       "local_rank": "SUBMITIT_LOCAL_LOCALID", "nodes": "SUBMITIT_LOCAL_JOB_NUM_NODES",
                       "job_id": "SUBMITIT_LOCAL_JOB_ID"}


def launcher_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) for a process that SLURM or submitit started as one of several tasks;
    empty when torchrun started it (WORLD_SIZE is set), or when it runs alone.

    Under SLURM the master is the first host of SLURM_JOB_NODELIST, and the port is derived
    from the job id (every task derives the same one; a job array's tasks differ), unless
    MASTER_PORT is set. A task must have been started by srun (SLURM_STEP_ID is set): a
    batch script itself also sees SLURM_NTASKS of the whole allocation, and waiting there
    for the other tasks would hang.
    """
    if "WORLD_SIZE" in environ:
        return {}
    if "SUBMITIT_LOCAL_GLOBALID" in environ:
        names, master = SUBMITIT_LOCAL_TASK, "127.0.0.1"
    elif "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        names, master = SLURM_TASK, first_host(environ.get("SLURM_STEP_NODELIST", environ["SLURM_JOB_NODELIST"]))
    else:
        return {}
    size = int(environ[names["size"]])
    if names is SLURM_TASK:
        size = int(environ.get("SLURM_STEP_NUM_TASKS", size))  # a step may run fewer tasks than the job has
    if size == 1:
        return {}
    nodes = int(environ.get(names["nodes"], "1"))
    job_id = environ[names["job_id"]]
    return {
        "RANK": environ[names["rank"]],
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": environ.get(names["local_rank"], "0"),
        "LOCAL_WORLD_SIZE": str(max(size // nodes, 1)),
        "MASTER_ADDR": environ.get("MASTER_ADDR", master),
        "MASTER_PORT": environ.get("MASTER_PORT", str(port_of_job(job_id))),
    }


def export_launcher_environment() -> None:
    """Describe a SLURM or submitit task to torch.distributed the way torchrun does (in
    the environment), so that the rest of the program treats every launcher alike."""
    os.environ.update(launcher_environment())


def port_of_job(job_id: str) -> int:
    """A port in 20000-59999 that every task of one job derives alike."""
    return 20000 + zlib.crc32(job_id.encode()) % 40000


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``node[03-05,9],gpu1`` -> ``node03``,
    ``rack[1-2]-n[7,9]`` -> ``rack1-n7``."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if not first:
        raise ConfigError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", first.group(0))


def warn_if_not_a_slurm_task(environ: Mapping[str, str] = os.environ) -> None:
    """A batch script that runs ``python train.py`` itself, not under srun, trains in one
    process while SLURM gave it several tasks: say so once."""
    tasks = int(environ.get("SLURM_NTASKS", "1"))
    if tasks > 1 and "SLURM_STEP_ID" not in environ and "WORLD_SIZE" not in environ:
        log.warning(
            "SLURM allocated %d tasks, but this process was not started by srun: training in one "
            "process; start it with `srun python train.py ...` (or torchrun) to use them all", tasks,
        )


def shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run directory, on every process.

    Under torchrun each process resolves Hydra's timestamped ``hydra.run.dir`` itself, and
    processes that start in different seconds would write into different directories.
    """
    return Path(broadcast_from_main(str(run_dir)))


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every process (``value`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def per_rank_batch(global_batch: int, world_size: int, accumulation_steps: int) -> int:
    """Images each process feeds the network per forward pass: the global batch split
    over processes and accumulation steps."""
    shares = world_size * accumulation_steps
    if accumulation_steps < 1 or global_batch % shares:
        raise ConfigError(
            f"schedule.batch_size={global_batch} (the global batch) must divide into {world_size} "
            f"processes x schedule.accumulation_steps={accumulation_steps}; choose sizes that divide"
        )
    return global_batch // shares


def prepare_batch_norm(model: nn.Module, world: World) -> nn.Module:
    """SyncBatchNorm across GPUs, so the statistics are those of the global batch."""
    if world.size == 1:
        return model
    if world.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world.is_main:
        log.warning(
            "BatchNorm stays per-process on CPU (SyncBatchNorm needs CUDA): its statistics "
            "cover each process's share of the batch, not the global batch"
        )
    return model


class SeededSampler(Sampler):
    """A DistributedSampler's indices, each paired with its own augmentation seed.

    The seed depends only on (seed, epoch, index), so a sample is augmented the same way
    whichever process or worker loads it and whenever: the property that makes an
    interrupted run resume bit-identically. ``skip`` drops the first samples of the
    epoch (those an interrupted run had already trained on).
    """

    def __init__(self, dataset: Dataset, world: World, seed: int, shuffle: bool = True) -> None:
        self.sampler = DistributedSampler(
            dataset, num_replicas=world.size, rank=world.rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return len(self.sampler) - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
                yield index, int(seed)


class ShardSampler(Sampler):
    """Every ``size``-th index from ``rank``, without DistributedSampler's padding, so
    each image is evaluated exactly once across processes."""

    def __init__(self, length: int, world: World) -> None:
        self.indices = range(world.rank, length, world.size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
        reduced = tensor.cuda()
        dist.all_reduce(reduced)
        return tensor.copy_(reduced.cpu())
    dist.all_reduce(tensor)
    return tensor


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average ``value`` over processes in place (no-op without a process group); the
    tensor must live where the backend reduces (CPU for gloo, GPU for NCCL)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_reduce_max(value: int) -> int:
    """The largest of every process's ``value`` (``value`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor(value, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def shutdown_distributed() -> None:
    """Wait for every process, then leave the process group (a process that exits while
    others still use the group makes gloo abort them)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
