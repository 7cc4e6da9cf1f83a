"""Datasets, selected by the ``dataset`` config group."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from emanet.data.demo import DEMO_CLASSES, generate_demo_dataset
from emanet.data.voc import VOC_CLASSES, VOCSegmentation
from emanet.errors import ConfigError

CLASS_NAMES = {"voc_aug": VOC_CLASSES, "demo": DEMO_CLASSES}


def build_dataset(cfg: DictConfig, split: str, transform: Callable | None = None) -> VOCSegmentation:
    """The dataset described by the ``dataset`` config group, for one split."""
    if cfg.name not in CLASS_NAMES:
        raise ConfigError(f"dataset.name must be one of {sorted(CLASS_NAMES)}, got {cfg.name!r}")
    class_names = CLASS_NAMES[cfg.name]
    if len(class_names) != cfg.num_classes:
        raise ConfigError(
            f"dataset.num_classes is {cfg.num_classes} but {cfg.name} has {len(class_names)} classes"
        )
    if cfg.name == "demo":
        generate_demo_dataset(cfg.root, **cfg.generate)
    return VOCSegmentation(cfg.root, split, class_names, cfg.label_dir, transform)
