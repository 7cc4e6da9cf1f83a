"""PASCAL VOC 2012 + SBD ("VOC aug"): ``SegmentationClassAug/`` and the trainaug list.

The downloads ``VOCtrainval_11-May-2012.tar`` (``VOCdevkit/VOC2012``) and SBD's
``benchmark.tgz`` (``benchmark_RELEASE``, Hariharan et al., ICCV 2011) give VOC's 1,464
train and 1,449 val images and SBD's class maps of 11,355 more.
:func:`prepare_voc_aug` merges them as the EMANet recipe trains on them: trainaug = VOC
train + SBD train + SBD val - VOC val (10,582 images), written as other converters of
:mod:`emanet.data.prepare` write theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emanet.data import prepare
from emanet.errors import DatasetError


def voc_label(png_path: Path) -> np.ndarray:
    """VOC 2012's own ``SegmentationClass/<id>.png`` (palette PNG, 255 boundaries kept)."""
    return prepare.read_source_png(png_path, "VOCtrainval_11-May-2012.tar")


def sbd_label(mat_path: Path) -> np.ndarray:
    """SBD ``cls/<id>.mat``: struct ``GTcls``, field ``Segmentation`` (H, W class map)."""
    gtcls = prepare.load_mat(mat_path, "GTcls", "benchmark.tgz")
    if not hasattr(gtcls, "Segmentation"):
        raise DatasetError(
            f"{mat_path}: GTcls has no field 'Segmentation' (has {sorted(getattr(gtcls, '_fieldnames', []))}): "
            "not an SBD class map; unpack it again from benchmark.tgz (dataset/cls) and re-run"
        )
    ids = prepare.whole_numbers(gtcls.Segmentation, f"{mat_path}: GTcls.Segmentation")
    outside = (ids < 0) | ((ids > 20) & (ids != 255))
    if outside.any():
        # A plain uint8 cast would wrap them around (300 -> 44) into valid-looking classes.
        raise DatasetError(
            f"{mat_path}: GTcls.Segmentation holds ids {sorted(np.unique(ids[outside]).tolist())[:10]} "
            "that are neither 0-20 nor 255: not an SBD class map"
        )
    return ids.astype(np.uint8)


def prepare_voc_aug(voc_root: Path, sbd_root: Path, workers: int = 1) -> dict[str, int]:
    """VOC 2012 + SBD -> ``SegmentationClassAug/`` and the train / val / trainaug lists.

    ``voc_root`` is ``VOCdevkit/VOC2012``, ``sbd_root`` SBD's ``benchmark_RELEASE``. VOC's
    own labels (with their 255 boundaries) are kept for VOC's annotated images; SBD's
    ``cls/*.mat`` labels fill in the rest. trainaug = VOC train + SBD train + SBD val - VOC
    val. Images SBD has but ``JPEGImages`` lacks are copied over.
    """
    voc_root, sbd = Path(voc_root), Path(sbd_root) / "dataset"
    prepare.require_dir(voc_root / "JPEGImages", "PASCAL VOC 2012 images")
    prepare.require_dir(sbd / "cls", "SBD labels (benchmark_RELEASE/dataset/cls)")
    lists = voc_root / "ImageSets" / "Segmentation"
    voc_train, voc_val = prepare.read_ids(lists / "train.txt"), prepare.read_ids(lists / "val.txt")
    sbd_ids = prepare.read_ids(sbd / "train.txt") + prepare.read_ids(sbd / "val.txt")
    excluded = set(voc_val)
    trainaug = sorted(set(voc_train).union(sbd_ids) - excluded)

    output = voc_root / "SegmentationClassAug"
    voc_labels = set(voc_train) | set(voc_val)
    jobs = []
    with prepare.converting_into(voc_root, [output, voc_root / "JPEGImages", lists]):
        for sample_id in sorted(voc_labels | set(sbd_ids)):
            destination = output / f"{sample_id}.png"
            if sample_id in voc_labels:
                jobs.append((voc_label, (voc_root / "SegmentationClass" / f"{sample_id}.png",), destination))
            else:
                jobs.append((sbd_label, (sbd / "cls" / f"{sample_id}.mat",), destination))
                prepare.copy_if_missing(sbd / "img" / f"{sample_id}.jpg", voc_root / "JPEGImages" / f"{sample_id}.jpg")
        prepare.check_images(
            voc_root / "JPEGImages", {"train": voc_train, "val": voc_val, "trainaug": trainaug},
            "VOCtrainval_11-May-2012.tar and benchmark.tgz",
        )
        # Palette: for VOC's images this folder holds VOC's own SegmentationClass labels, which
        # the devkit writes as palette PNGs (its colour map). mmsegmentation's
        # tools/dataset_converters/voc_aug.py writes SBD's as greyscale and reads VOC's as they are.
        prepare.convert_labels(jobs, "SegmentationClassAug", workers, mode="P")
        prepare.write_split(lists / "trainaug.txt", trainaug)
    counts = {"train": len(voc_train), "val": len(voc_val), "trainaug": len(trainaug)}
    prepare.check_counts("voc_aug", counts)
    return counts
