"""Device selection, seeding and data loaders shared by training and evaluation."""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import threading
from collections.abc import Iterable

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from emanet.data import build_dataset
from emanet.data.segmentation import SegmentationDataset, collate_skipping_bad
from emanet.data.transforms import eval_transform
from emanet.engine.distributed import SeededSampler, ShardSampler, World
from emanet.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name} but CUDA is not available: use runtime.device=cpu")
    return device


def configure_runtime(cfg: DictConfig) -> torch.device:
    """Seed every RNG, set thread count and cuDNN autotuning, and return the device to run on."""
    seed_everything(cfg.seed)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
    return resolve_device(cfg.runtime.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (a
    container, ``taskset`` or a SLURM task can allow fewer than the machine's), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """``runtime.num_workers`` bounded by the usable cores: more loading processes than
    cores only take turns on them, each with its own copy of the dataset and torch's
    threads, and torch warns about it."""
    cores = usable_cores()
    if requested <= cores:
        return requested
    note_fewer_workers(requested, cores)
    return cores


@functools.cache  # once per process: training builds a loader for training and one per evaluation
def note_fewer_workers(requested: int, cores: int) -> None:
    log.info("runtime.num_workers=%d but this process may use %d cores: %d data-loading workers", requested,
             cores, cores)


def build_train_loader(
    dataset: Dataset, batch_size: int, num_workers: int, sampler: SeededSampler, seed: int, pin_memory: bool = False
) -> DataLoader:
    """Batches of ``batch_size`` samples (one process's share) in ``sampler``'s order.

    Augmentation is seeded per sample by the sampler; the loader's own generator (which
    only seeds its workers) is separate from the global RNG, so creating an iterator
    does not shift the dropout random numbers.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=loader_workers(num_workers),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_skipping_bad,
        worker_init_fn=leave_stopping_to_the_training_process,
    )


def leave_stopping_to_the_training_process(worker_id: int) -> None:
    """A data-loading worker's stop signals: a job scheduler signals every process of the
    job, and torch's handler in the worker would end it on SIGTERM, and the training
    process with it, before the checkpoint.

    SIGINT, SIGUSR1 and SIGUSR2 are ignored; SIGTERM ends the worker only when its training process
    sends it (as multiprocessing does to end workers), which only a thread waiting for the
    signal can tell (Linux: elsewhere torch's handler stays).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=exit_at_sigterm_from_parent, daemon=True).start()


def exit_at_sigterm_from_parent() -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != os.getppid():
        pass  # the scheduler's: the training process stops the run
    os._exit(0)


def build_eval_loader(cfg: DictConfig, world: World | None = None, pin_memory: bool = False) -> DataLoader:
    """This process's share of the val split, in batches of ``eval.batch_size`` images of
    one size (sizes differ between images, and a batch must be one tensor)."""
    dataset = build_dataset(
        cfg.dataset, cfg.dataset.val_split, eval_transform(cfg.dataset.mean, cfg.dataset.std)
    )
    shard = ShardSampler(len(dataset), world or World())
    return DataLoader(
        dataset, batch_sampler=size_grouped_batches(dataset, shard, cfg.eval.batch_size),
        num_workers=loader_workers(cfg.runtime.num_workers), pin_memory=pin_memory, collate_fn=collate_skipping_bad,
        worker_init_fn=leave_stopping_to_the_training_process,
    )


def size_grouped_batches(dataset: SegmentationDataset, indices: Iterable[int], batch_size: int) -> list[list[int]]:
    """``indices`` in batches of at most ``batch_size`` images of equal size, in order of
    first appearance (sizes are read from the image headers, without decoding)."""
    if batch_size == 1:
        return [[index] for index in indices]
    groups: dict[tuple, list[int]] = {}
    for index in indices:
        try:
            with Image.open(dataset.image_path(index)) as image:
                size = image.size
        except (OSError, ValueError):  # alone in its batch: loading it reports (or skips) it
            size = ("unreadable", index)
        groups.setdefault(size, []).append(index)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def log_to_file_only(level: int, message: str) -> None:
    """Log ``message`` to the job's log file but not to the terminal, which gets its own line
    on stderr: logged the usual way, the line would show twice there. Hydra's job logging
    puts the file handler on the root logger, next to the console's."""
    log = logging.getLogger("emanet")
    if not log.isEnabledFor(level):
        return
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and level >= handler.level:
            handler.handle(record)
