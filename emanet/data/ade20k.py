"""ADE20K (MIT SceneParsing, ``ADEChallengeData2016.zip``): the split lists the release lacks.

The release is read as unpacked; nothing is converted::

    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
    ADEChallengeData2016/annotations/{training,validation}/<same name>.png

The annotations are grayscale PNGs, 0 = "other" and 1-150 the classes of
``objectInfo150``; ``dataset=ade20k`` ignores 0 at load time (``reduce_zero_label``:
0 -> 255, k -> k - 1). :func:`prepare_ade20k` writes ``training.txt`` and
``validation.txt`` at the root, one ``<folder>/<name>`` id a line (the layout templates
add ``images/`` + ``.jpg`` and ``annotations/`` + ``.png``), after checking that every
image has its annotation, of its size, with values in 0-150.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from emanet.data.prepare import check_counts, converting_into, read_source_png, run_jobs, write_split
from emanet.data.segmentation import DECODE_ERRORS
from emanet.errors import DatasetError, DatasetNotFoundError

log = logging.getLogger(__name__)

DOWNLOAD = "ADEChallengeData2016.zip"
FOLDERS = ("training", "validation")  # also the split names (dataset.train_split / val_split)
MAX_ID = 150  # 0 = other, 1-150 the classes


def check_annotation(root: Path, sample_id: str) -> None:
    """DatasetError naming the file unless ``annotations/<id>.png`` decodes, has the size of
    ``images/<id>.jpg`` and holds only values 0-150."""
    png, jpg = root / "annotations" / f"{sample_id}.png", root / "images" / f"{sample_id}.jpg"
    label = read_source_png(png, DOWNLOAD)
    outside = label > MAX_ID
    if outside.any():
        raise DatasetError(
            f"{png}: values {sorted(np.unique(label[outside]).tolist())[:10]} are outside 0-{MAX_ID}: not a "
            f"SceneParsing annotation (0 = other, 1-{MAX_ID} the classes); unpack {DOWNLOAD} again and re-run"
        )
    try:
        with Image.open(jpg) as image:  # reads the header only
            width, height = image.size
    except DECODE_ERRORS as error:
        raise DatasetError(f"{jpg}: cannot read the image ({error}); unpack {DOWNLOAD} again and re-run") from None
    if label.shape != (height, width):
        raise DatasetError(
            f"{png}: annotation is {label.shape[1]}x{label.shape[0]} but its image {jpg.name} is {width}x{height}"
        )


def _check_one(job: tuple[Path, str]) -> None:
    check_annotation(*job)


def check_annotations(root: Path, ids: Sequence[str], description: str, workers: int = 1) -> None:
    """:func:`check_annotation` for every id, in ``workers`` processes; the first bad file raises."""
    run_jobs(_check_one, [(root, sample_id) for sample_id in ids], description, workers, chunksize=64)


def _listed(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()} if path.is_file() else set()


def prepare_ade20k(root: Path, workers: int = 1) -> dict[str, int]:
    """Write ``root/{training,validation}.txt``: the ids of the images present, each checked.

    An image without its annotation, an annotation that does not decode, differs in size
    from its image or holds a value above 150 ends it with a DatasetError naming the files;
    annotations without an image are logged. Ids a previous run listed (so checked) are not
    checked again: a re-run after an interruption resumes, and a second run rewrites the
    same lists. Holds the lock on ``root``. Returns the size of each split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"ADE20K not found at {root}: unpack {DOWNLOAD} there (see data/README.md)")
    ids = {}
    for folder in FOLDERS:
        images, annotations = root / "images" / folder, root / "annotations" / folder
        for path, what in ((images, "images"), (annotations, "annotations")):
            if not path.is_dir():
                raise DatasetNotFoundError(f"ADE20K {what} not found at {path}: unpack {DOWNLOAD} completely")
        image_names = sorted(path.stem for path in images.glob("*.jpg"))
        annotation_names = {path.stem for path in annotations.glob("*.png")}
        missing = [name for name in image_names if name not in annotation_names]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(
                f"{annotations}: no annotation <name>.png for {len(missing)} images of {images} "
                f"({', '.join(missing[:5])}{more}); unpack {DOWNLOAD} completely and re-run"
            )
        orphans = len(annotation_names) - len(image_names)
        if orphans:
            log.warning("%s: %d annotations have no image in %s; they are left out", annotations, orphans, images)
        ids[folder] = [f"{folder}/{name}" for name in image_names]
    with converting_into(root, [root]):
        for folder in FOLDERS:
            split_list = root / f"{folder}.txt"
            checked = _listed(split_list)
            todo = [sample_id for sample_id in ids[folder] if sample_id not in checked]
            log.info(
                "ade20k %s: %d annotations to check, %d checked before (listed in %s)",
                folder, len(todo), len(ids[folder]) - len(todo), split_list.name,
            )
            check_annotations(root, todo, f"annotations ({folder})", workers)
            write_split(split_list, ids[folder])
    counts = {folder: len(folder_ids) for folder, folder_ids in ids.items()}
    check_counts("ade20k", counts)
    return counts
