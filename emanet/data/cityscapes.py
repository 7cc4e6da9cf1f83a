"""Cityscapes (fine annotations): ``gtFine`` labelIds -> trainIds, and the split lists.

The official downloads ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``,
unpacked into one folder, give::

    ROOT/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

:func:`prepare_cityscapes` writes ``..._gtFine_labelTrainIds.png`` beside each train and
val ``..._gtFine_labelIds.png`` (the 19 training classes 0-18 of the official label table
of ``cityscapesscripts.helpers.labels``, every other label 255; 8-bit greyscale PNGs, as the
official ``cityscapesscripts/preparation/createTrainIdLabelImgs.py`` writes them) and
``ROOT/splits/{train,val,test}.txt`` with ids ``<split>/<city>/<city>_<seq>_<frame>``
(the split is part of the id: the layout templates of the dataset config take only
``{id}``). The test split has no usable labels (its gtFine maps are placeholders): its
list names its images, for prediction. A train or val image without its labelIds file is
left out of its split, with a warning naming it. The files are written as the other
converters of :mod:`emanet.data.prepare` write theirs: atomically, in worker processes,
under the lock on ``ROOT``, a re-run checking the files written before against their
source; the split sizes are checked against the published 2,975 / 500 / 1,525.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from emanet.data import prepare
from emanet.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LABELLED_SPLITS = ("train", "val")

DOWNLOADS = "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"
IMAGE_SUFFIX = "_leftImg8bit.png"
SOURCE_SUFFIX = "_gtFine_labelIds.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def official_labels() -> list:
    """``cityscapesscripts.helpers.labels.labels`` (the optional extra ``cityscapes``)."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise DatasetError(
            "the Cityscapes conversion takes the official label table from the package cityscapesscripts, "
            'which is not installed: pip install -e ".[cityscapes]"'
        ) from None
    return list(labels)


def cityscapes_lookup_table(labels: list | None = None) -> np.ndarray:
    """labelId (0-255) -> trainId: the 19 training classes to 0-18, every other defined
    label (trainId 255 or -1) to 255; ids the table does not define stay -1 (refused)."""
    table = np.full(256, -1, dtype=np.int16)
    for label in official_labels() if labels is None else labels:
        if 0 <= label.id <= 255:  # license plate has id -1: never drawn into a labelIds PNG
            table[label.id] = label.trainId if 0 <= label.trainId < 255 else 255
    return table


def cityscapes_label(png_path: Path, table: np.ndarray) -> np.ndarray:
    """One ``*_gtFine_labelIds.png`` -> trainIds; DatasetError naming the file for ids the
    official table does not define."""
    ids = prepare.read_source_png(png_path, "gtFine_trainvaltest.zip")
    mapped = table[ids]
    undefined = mapped < 0
    if undefined.any():
        defined = np.flatnonzero(table >= 0)
        raise DatasetError(
            f"{png_path}: ids {sorted(np.unique(ids[undefined]).tolist())[:10]} are not labelIds of the official "
            f"Cityscapes table ({defined.min()}-{defined.max()}): not a gtFine_labelIds.png; unpack it again from "
            "gtFine_trainvaltest.zip and re-run"
        )
    return mapped.astype(np.uint8)


def _ids(folder: Path, split: str, suffix: str) -> list[str]:
    """``<split>/<city>/<name>`` of every ``folder/<split>/<city>/<name><suffix>``, sorted."""
    paths = (folder / split).glob(f"*/*{suffix}")
    return sorted(f"{split}/{path.parent.name}/{path.name[: -len(suffix)]}" for path in paths)


def _warn_unlabelled(images: Path, gtfine: Path, split: str, labelled: list[str]) -> None:
    """Log, in one line, how many images of ``images/<split>`` have no labelIds file in
    ``gtfine`` (so are left out of the split), naming the first ones."""
    unlabelled = sorted(set(_ids(images, split, IMAGE_SUFFIX)) - set(labelled))
    if unlabelled:
        more = f" and {len(unlabelled) - 5} more" if len(unlabelled) > 5 else ""
        log.warning(
            "cityscapes %s: %d images of %s have no <id>%s in %s and are left out of the split (%s%s)",
            split, len(unlabelled), images / split, SOURCE_SUFFIX, gtfine / split, ", ".join(unlabelled[:5]), more,
        )


def _check_images(images: Path, ids_by_split: dict[str, list[str]]) -> None:
    missing = [i for ids in ids_by_split.values() for i in ids if not (images / f"{i}{IMAGE_SUFFIX}").is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{images}: no image <id>{IMAGE_SUFFIX} for {len(missing)} annotated ids ({', '.join(missing[:5])}{more}); "
            f"unpack {DOWNLOADS} completely and re-run"
        )


def prepare_cityscapes(root: Path, workers: int = 1) -> dict[str, int]:
    """``gtFine/{train,val}/*/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png``, and
    ``splits/{train,val,test}.txt``; returns the split sizes."""
    root = Path(root)
    images = prepare.require_dir(root / "leftImg8bit", "Cityscapes images (leftImg8bit)")
    gtfine = prepare.require_dir(root / "gtFine", "Cityscapes fine annotations (gtFine)")
    table = cityscapes_lookup_table()
    ids = {split: _ids(gtfine, split, SOURCE_SUFFIX) for split in LABELLED_SPLITS}
    _check_images(images, ids)
    for split in LABELLED_SPLITS:
        _warn_unlabelled(images, gtfine, split, ids[split])
    ids["test"] = _ids(images, "test", IMAGE_SUFFIX)
    folders = sorted({(gtfine / i).parent for split in LABELLED_SPLITS for i in ids[split]})
    with prepare.converting_into(root, [root / "splits", *folders]):
        for split in LABELLED_SPLITS:
            jobs = [
                (cityscapes_label, (gtfine / f"{i}{SOURCE_SUFFIX}", table), gtfine / f"{i}{LABEL_SUFFIX}")
                for i in ids[split]
            ]
            # Greyscale, as createTrainIdLabelImgs writes them: tools that read them with
            # OpenCV (cv2.imread) get the trainIds, not the colours of a palette.
            prepare.convert_labels(jobs, f"gtFine labelTrainIds ({split})", workers, mode="L")
        for split in SPLITS:
            prepare.write_split(root / "splits" / f"{split}.txt", ids[split])
    counts = {split: len(ids[split]) for split in SPLITS}
    prepare.check_counts("cityscapes", counts)
    return counts
