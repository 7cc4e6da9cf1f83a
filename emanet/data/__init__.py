"""Datasets, selected by the ``dataset`` config group."""

from __future__ import annotations

import logging
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from emanet.data.classes import COCO_STUFF_CLASSES, CONTEXT59_CLASSES, CONTEXT60_CLASSES, VOC_CLASSES
from emanet.data.demo import DEMO_CLASSES, generate_demo_dataset
from emanet.data.segmentation import SegmentationDataset
from emanet.errors import ConfigError

log = logging.getLogger(__name__)

CLASS_NAMES = {
    "voc_aug": VOC_CLASSES,
    "pascal_context": CONTEXT60_CLASSES,
    "pascal_context59": CONTEXT59_CLASSES,
    "coco_stuff10k": COCO_STUFF_CLASSES,
    "coco_stuff164k": COCO_STUFF_CLASSES,
    "demo": DEMO_CLASSES,
}


def build_dataset(cfg: DictConfig, split: str, transform: Callable | None = None) -> SegmentationDataset:
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
    return SegmentationDataset(
        cfg.root, split, class_names, OmegaConf.to_container(cfg.layout), transform,
        ignore_background=cfg.ignore_background, ignore_index=cfg.ignore_index, skip_bad=cfg.skip_bad,
    )


def warn_skipped(dataset: SegmentationDataset) -> None:
    if dataset.num_skipped:
        log.warning(
            "left out %d bad sample loads of split %r (dataset.skip_bad=true); the files are named above",
            dataset.num_skipped, dataset.split,
        )
