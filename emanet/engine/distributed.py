"""Process groups under torchrun, per-rank batches, and the samplers that shard the data."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
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
    """Join the process group torchrun describes in the environment (if any).

    NCCL on GPUs, gloo on CPUs; under torchrun each process takes GPU ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


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
