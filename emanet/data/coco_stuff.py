"""COCO-Stuff (Caesar et al., CVPR 2018), 10k and 164k: ids 0-181 -> the 171 used classes.

COCO-Stuff numbers 182 classes of which 11 thing ids are unused; both releases are
mapped to the 171 used ones (0-170, 255 unlabelled), as mmsegmentation's
``tools/dataset_converters/coco_stuff10k.py`` and ``coco_stuff164k.py`` do, written as
other converters of :mod:`emanet.data.prepare` write theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emanet.data import prepare
from emanet.data.classes import COCO_STUFF_UNUSED_IDS
from emanet.errors import DatasetError


def coco_stuff_lookup_table() -> np.ndarray:
    """COCO-Stuff id 0-181 -> one of the 171 used classes (0-170); unused ids and 255 -> 255."""
    table = np.full(256, 255, dtype=np.uint8)
    used = [i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS]
    table[used] = np.arange(len(used))
    return table


def coco_stuff10k_label(mat_path: Path, table: np.ndarray) -> np.ndarray:
    """COCO-Stuff 10k ``annotations/<id>.mat``: ``S`` with ids 1-182, 0 unlabelled."""
    ids = prepare.whole_numbers(prepare.load_mat(mat_path, "S", "cocostuff-10k-v1.1.zip"), f"{mat_path}: S")
    outside = (ids < 0) | (ids > 182)
    if outside.any():
        raise DatasetError(
            f"{mat_path}: S holds ids {sorted(np.unique(ids[outside]).tolist())[:10]} outside 0-182: "
            "not a COCO-Stuff 10k annotation"
        )
    # 1-based ids to the 164k numbering; unlabelled 0 becomes 255, ignored.
    return table[np.where(ids == 0, 255, ids - 1)]


def coco_stuff164k_label(png_path: Path, table: np.ndarray) -> np.ndarray:
    """COCO-Stuff 164k ``stuffthingmaps``: PNG with ids 0-181, 255 unlabelled."""
    ids = prepare.read_source_png(png_path, "stuffthingmaps_trainval2017.zip")
    outside = (ids > 181) & (ids != 255)
    if outside.any():
        # COCO also offers stuff-only maps (stuff_annotations_trainval2017.zip: 0 unlabelled,
        # 92-182 stuff, 183 other); read as stuffthing maps they would mislabel silently.
        raise DatasetError(
            f"{png_path}: ids {sorted(np.unique(ids[outside]).tolist())[:10]} are neither 0-181 nor 255: "
            "not a stuffthing map; unpack stuffthingmaps_trainval2017.zip (not the stuff-only maps)"
        )
    return table[ids]


def prepare_coco_stuff10k(root: Path, workers: int = 1) -> dict[str, int]:
    """COCO-Stuff 10k (``cocostuff-10k-v1.1``): ``annotations/*.mat`` -> ``labels171/*.png``.

    The split lists are the release's own ``imageLists/{train,test}.txt``.
    """
    root = Path(root)
    prepare.require_dir(root / "images", "COCO-Stuff 10k images")
    prepare.require_dir(root / "annotations", "COCO-Stuff 10k annotations")
    table = coco_stuff_lookup_table()
    ids = {split: prepare.read_ids(root / "imageLists" / f"{split}.txt") for split in ("train", "test")}
    prepare.check_images(root / "images", ids, "cocostuff-10k-v1.1.zip")
    with prepare.converting_into(root, [root / "labels171"]):
        for split, split_ids in ids.items():
            jobs = [
                (coco_stuff10k_label, (root / "annotations" / f"{i}.mat", table), root / "labels171" / f"{i}.png")
                for i in split_ids
            ]
            # Greyscale: the release has .mat files only, and mmsegmentation's
            # tools/dataset_converters/coco_stuff10k.py writes these so.
            prepare.convert_labels(jobs, f"labels171 ({split})", workers, mode="L")
    counts = {split: len(split_ids) for split, split_ids in ids.items()}
    prepare.check_counts("coco_stuff10k", counts)
    return counts


def prepare_coco_stuff164k(root: Path, workers: int = 1) -> dict[str, int]:
    """COCO-Stuff 164k: ``annotations/{train,val}2017/*.png`` -> ``labels171/`` + ``splits/``.

    ``root`` holds COCO 2017's ``images/{train2017,val2017}`` and the unpacked
    ``stuffthingmaps_trainval2017.zip`` as ``annotations/{train2017,val2017}``.
    """
    root = Path(root)
    table = coco_stuff_lookup_table()
    ids = {}
    for split in ("train2017", "val2017"):
        prepare.require_dir(root / "images" / split, f"COCO 2017 {split} images")
        maps = prepare.require_dir(
            root / "annotations" / split, f"COCO-Stuff {split} maps (stuffthingmaps_trainval2017)"
        )
        ids[split] = sorted(f"{split}/{path.stem}" for path in maps.glob("*.png"))
    prepare.check_images(root / "images", ids, "COCO 2017's train2017.zip and val2017.zip")
    with prepare.converting_into(root, [root / "splits", *(root / "labels171" / split for split in ids)]):
        for split, split_ids in ids.items():
            jobs = [
                (coco_stuff164k_label, (root / "annotations" / f"{i}.png", table), root / "labels171" / f"{i}.png")
                for i in split_ids
            ]
            # Greyscale, as mmsegmentation's tools/dataset_converters/coco_stuff164k.py writes them.
            prepare.convert_labels(jobs, f"labels171 ({split})", workers, mode="L")
            prepare.write_split(root / "splits" / f"{split}.txt", split_ids)
    counts = {split: len(split_ids) for split, split_ids in ids.items()}
    prepare.check_counts("coco_stuff164k", counts)
    return counts
