"""Datasets, selected by the ``dataset`` config group."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from emanet.data.class_file import CLASSES_FILE, read_class_file
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
from emanet.errors import DatasetNotFoundError

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


FOLDER = "folder"  # dataset.name of a dataset of one's own (configs/dataset/folder.yaml)


def fill_folder_classes(cfg: DictConfig) -> None:
    """For ``dataset=folder``: set ``dataset.num_classes``, ``class_names`` and
    ``class_colors``, those left unset, from ``ROOT/classes.txt`` (DatasetError naming the
    file for a missing or bad one). Done once the config is composed, not by an
    interpolation: OmegaConf resolves those while merging the config groups, before the
    command line has set ``dataset.root``."""
    dataset = cfg.get("dataset")
    if dataset is None or dataset.get("name") != FOLDER:
        return
    unset = [key for key in ("num_classes", "class_names", "class_colors")
             if OmegaConf.is_missing(dataset, key) or dataset[key] is None]
    if not unset:
        return
    root = Path(str(dataset.root)).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"dataset.root={dataset.root}: no such folder; give the folder with classes.txt, images/ and masks/ "
            "(see data/README.md, \"Your own data\")"
        )
    classes = read_class_file(root / CLASSES_FILE)
    values = {
        "num_classes": len(classes),
        "class_names": list(classes.names),
        "class_colors": classes.display_colors() if classes.has_colors else None,
    }
    with read_write(dataset):
        for key in unset:
            dataset[key] = values[key]


def build_dataset(cfg: DictConfig, split: str, transform: Callable | None = None) -> SegmentationDataset:
    """The dataset described by the ``dataset`` config group, for one split."""
    class_names = dataset_class_names(cfg)
    if cfg.name == "demo":
        generate_demo_dataset(cfg.root, **cfg.generate)
    return SegmentationDataset(
        cfg.root, split, class_names, OmegaConf.to_container(cfg.layout), transform,
        reduce_zero_label=cfg.reduce_zero_label, ignore_index=cfg.ignore_index, skip_bad=cfg.skip_bad,
        upright=cfg.exif_orientation,
    )


def warn_skipped(dataset: SegmentationDataset) -> None:
    if dataset.num_skipped:
        log.warning(
            "left out %d bad sample loads of split %r (dataset.skip_bad=true); the files are named above",
            dataset.num_skipped, dataset.split,
        )
