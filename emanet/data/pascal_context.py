"""PASCAL Context (Mottaghi et al., CVPR 2014): the 459-class annotation -> 60 classes.

The annotation comes as ``trainval.tar.gz`` (``trainval/<id>.mat``, ``LabelMap``) or as
the Detail API's ``trainval_merged.json`` (run-length masks, decoded here); the images
are VOC 2010's (``VOCtrainval_03-May-2010.tar``). :func:`prepare_pascal_context` keeps
the 59 most frequent classes (1-59) and maps everything else to background (0), as the
benchmark does, written as other converters of :mod:`emanet.data.prepare` write theirs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from emanet.data import prepare
from emanet.data.classes import CONTEXT59_CLASSES, CONTEXT_SOURCE_IDS
from emanet.errors import DatasetError

log = logging.getLogger(__name__)

CONTEXT_MAX_ID = 459  # PASCAL Context's classes are ids 1-459; 0 is unlabelled


def context_lookup_table() -> np.ndarray:
    """459-class id (0-459) -> 60-class label: the 59 classes to 1..59, everything else to 0."""
    table = np.zeros(CONTEXT_MAX_ID + 1, dtype=np.uint8)
    table[list(CONTEXT_SOURCE_IDS)] = np.arange(1, len(CONTEXT_SOURCE_IDS) + 1)
    return table


def context_label(mat_path: Path, table: np.ndarray) -> np.ndarray:
    """PASCAL Context ``trainval/<id>.mat``: ``LabelMap`` with 459-class ids -> 60 classes."""
    label_map = prepare.load_mat(mat_path, "LabelMap", "trainval.tar.gz")
    label_map = prepare.whole_numbers(label_map, f"{mat_path}: LabelMap")
    _check_context_ids(label_map, f"{mat_path}: LabelMap")
    return table[label_map]


def _check_context_ids(ids: np.ndarray, where: str) -> None:
    outside = (ids < 0) | (ids > CONTEXT_MAX_ID)
    if outside.any():
        raise DatasetError(
            f"{where} holds ids {sorted(np.unique(ids[outside]).tolist())[:10]} outside 0-{CONTEXT_MAX_ID}: "
            "not PASCAL Context's 459-class annotation"
        )


def decode_rle(segmentation: dict) -> np.ndarray:
    """A COCO-style run-length mask (``{"size": [h, w], "counts": ...}``) as (h, w) bool.

    ``counts`` is a list of run lengths or the compressed string of pycocotools (runs
    as 5-bit groups offset by 48, from the third run on stored as the difference to the
    run two before); runs alternate 0s and 1s, starting with 0s, in column-major order.
    Written here so that the preparation needs no compiled COCO API.
    """
    height, width = segmentation["size"]
    counts = segmentation["counts"]
    if isinstance(counts, (str, bytes)):
        counts = decode_rle_string(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.zeros(height * width, dtype=bool)
    position = 0
    for index, run in enumerate(counts):
        if index % 2:
            flat[position : position + run] = True
        position += run
    return flat.reshape(width, height).T


def decode_rle_string(text: str) -> list[int]:
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # sign extension
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def read_context_json(json_path: Path) -> list[tuple[dict, list[dict]]]:
    """PASCAL Context's ``trainval_merged.json``: (image record, its segment annotations)."""
    try:
        data = json.loads(Path(json_path).read_text())
        segments: dict[int, list[dict]] = {image["image_id"]: [] for image in data["images"]}
        for annotation in data["annos_segmentation"]:
            segments[annotation["image_id"]].append(annotation)
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError(f"{json_path}: not PASCAL Context's trainval_merged.json ({error})") from None
    return [(image, segments[image["image_id"]]) for image in data["images"]]


def context_json_label(image: dict, segments: list[dict], table: np.ndarray) -> np.ndarray:
    """One image's segments (459-class ``category_id`` + run-length mask) -> 60 classes."""
    label_map = np.zeros((image["height"], image["width"]), dtype=np.int64)
    for segment in segments:
        if list(segment["segmentation"]["size"]) != list(label_map.shape):
            raise DatasetError(
                f"{image['file_name']}: trainval_merged.json has a mask of size {segment['segmentation']['size']} "
                f"for an image of {list(label_map.shape)} (height, width); the file is damaged, download it again"
            )
        label_map[decode_rle(segment["segmentation"])] = segment["category_id"]
    _check_context_ids(label_map, f"{image['file_name']}: trainval_merged.json")
    return table[label_map]


def prepare_pascal_context(voc2010_root: Path, context_root: Path, workers: int = 1) -> dict[str, int]:
    """PASCAL Context's 459-class annotation -> 60-class PNGs and train / val lists.

    Reads ``trainval/<id>.mat`` (``LabelMap``) or, when that folder is absent,
    ``trainval_merged.json`` (the Detail API's file, run-length masks), from
    ``context_root``. Writes ``VOC2010/SegmentationClassContext/<id>.png`` (0 = background,
    1-59 = the 59 classes; the 59-class convention ignores 0 at load time) and
    ``VOC2010/ImageSets/SegmentationContext/{train,val}.txt``: VOC 2010's main train and
    val lists restricted to annotated images (the JSON's own phases). ``labels.txt`` in
    ``context_root``, when present, is checked against the class ids used.
    """
    voc2010_root, context_root = Path(voc2010_root), Path(context_root)
    prepare.require_dir(voc2010_root / "JPEGImages", "PASCAL VOC 2010 images")
    if (context_root / "labels.txt").is_file():
        check_context_label_names(context_root / "labels.txt")
    table = context_lookup_table()
    output = voc2010_root / "SegmentationClassContext"
    annotations = context_root / "trainval"
    json_path = context_root / "trainval_merged.json"
    if not annotations.is_dir() and json_path.is_file():
        entries = sorted(read_context_json(json_path), key=lambda entry: entry[0]["file_name"])
        ids, jobs = {}, {}
        for split in ("train", "val"):
            chosen = [(image, segments) for image, segments in entries if image["phase"] == split]
            ids[split] = [Path(image["file_name"]).stem for image, _ in chosen]
            jobs[split] = [
                (context_json_label, (image, segments, table), output / f"{Path(image['file_name']).stem}.png")
                for image, segments in chosen
            ]
    else:
        prepare.require_dir(annotations, "PASCAL Context annotations (trainval/*.mat or trainval_merged.json)")
        annotated = {path.stem for path in annotations.glob("*.mat")}
        ids = {
            split: [i for i in prepare.read_ids(voc2010_root / "ImageSets" / "Main" / f"{split}.txt") if i in annotated]
            for split in ("train", "val")
        }
        jobs = {
            split: [(context_label, (annotations / f"{i}.mat", table), output / f"{i}.png") for i in split_ids]
            for split, split_ids in ids.items()
        }
    prepare.check_images(voc2010_root / "JPEGImages", ids, "VOCtrainval_03-May-2010.tar")
    lists = voc2010_root / "ImageSets" / "SegmentationContext"
    with prepare.converting_into(voc2010_root, [output, lists]):
        for split in ("train", "val"):
            # Greyscale: the release has no PNGs, and mmsegmentation's
            # tools/dataset_converters/pascal_context.py writes these so.
            prepare.convert_labels(jobs[split], f"SegmentationClassContext ({split})", workers, mode="L")
            prepare.write_split(lists / f"{split}.txt", ids[split])
    counts = {split: len(split_ids) for split, split_ids in ids.items()}
    prepare.check_counts("pascal_context", counts)
    return counts


def check_context_label_names(labels_txt: Path) -> list[int]:
    """Warn about class ids whose name in ``labels.txt`` ("<id>: <name>" lines) differs."""
    names = {}
    for line in labels_txt.read_text().splitlines():
        if ":" in line:
            key, name = line.split(":", 1)
            if key.strip().isdigit():
                names[int(key)] = name.strip().lower().replace(" ", "")
    different = [
        source for source, expected in zip(CONTEXT_SOURCE_IDS, CONTEXT59_CLASSES, strict=True)
        if names.get(source) not in (None, expected)
    ]
    if different:
        log.warning(
            "%s: the names of ids %s differ from the 59 classes this project maps them to; "
            "check that this is the 459-class labels.txt of PASCAL Context", labels_txt, different,
        )
    return different
