"""Device selection, seeding and data loaders shared by training and evaluation."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from emanet.data import build_dataset
from emanet.data.segmentation import collate_skipping_bad
from emanet.data.transforms import eval_transform
from emanet.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name} but CUDA is not available: use runtime.device=cpu")
    return device


def configure_runtime(cfg: DictConfig) -> torch.device:
    """Seed every RNG, set thread count, and return the device to run on."""
    seed_everything(cfg.seed)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    return resolve_device(cfg.runtime.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker_transform(worker_id: int) -> None:
    # Each worker gets its own augmentation stream, derived from the loader's seed, so
    # runs with the same seed see the same crops and flips.
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def build_train_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    if num_workers == 0 and hasattr(dataset.transform, "set_random_seed"):
        dataset.transform.set_random_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker_transform,
        generator=generator,
        collate_fn=collate_skipping_bad,
    )


def build_eval_loader(cfg: DictConfig, pin_memory: bool = False) -> DataLoader:
    dataset = build_dataset(
        cfg.dataset, cfg.dataset.val_split, eval_transform(cfg.dataset.mean, cfg.dataset.std)
    )
    # Images keep their own sizes at evaluation, so they go one at a time.
    return DataLoader(
        dataset, batch_size=1, num_workers=cfg.runtime.num_workers, pin_memory=pin_memory,
        collate_fn=collate_skipping_bad,
    )


def forever(loader: DataLoader) -> Iterator[dict]:
    """Batches from ``loader`` epoch after epoch (reshuffled each epoch).

    A batch whose samples were all left out (``dataset.skip_bad``) is passed over.
    """
    while True:
        yield from (batch for batch in loader if batch is not None)
