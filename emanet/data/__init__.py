"""Datasets, selected by the ``dataset`` config group."""

from __future__ import annotations

import logging
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from emanet.data.classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_STUFF_CLASSES,
    CONTEXT59_CLASSES,
    CONTEXT60_CLASSES,
    VOC_CLASSES,
)
from emanet.data.demo import DEMO_CLASSES, generate_demo_dataset
from emanet.data.segmentation import SegmentationDataset

log = logging.getLogger(__name__)

# Every built-in dataset, once: its name (dataset.name) and class names in label order.
CLASS_NAMES = {
    "voc_aug": VOC_CLASSES,
    "pascal_context": CONTEXT60_CLASSES,
    "pascal_context59": CONTEXT59_CLASSES,
    "coco_stuff10k": COCO_STUFF_CLASSES,
    "coco_stuff164k": COCO_STUFF_CLASSES,
    "cityscapes": CITYSCAPES_CLASSES,
    "ade20k": ADE20K_CLASSES,
    "demo": DEMO_CLASSES,
}


def dataset_class_names(cfg: DictConfig) -> tuple[str, ...]:
    """The class names of the ``dataset`` config, in label order: ``dataset.class_names`` if
    given (a dataset of one's own), else the built-in list of ``dataset.name`` (the config
    check makes sure there is one, of ``dataset.num_classes`` names)."""
    if cfg.get("class_names") is not None:
        return tuple(cfg.class_names)
    return CLASS_NAMES[cfg.name]


def build_dataset(cfg: DictConfig, split: str, transform: Callable | None = None) -> SegmentationDataset:
    """The dataset described by the ``dataset`` config group, for one split."""
    class_names = dataset_class_names(cfg)
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
