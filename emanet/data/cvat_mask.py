"""CVAT's "Segmentation mask 1.1" export (unzipped) -> the ``folder`` dataset layout.

The export holds::

    labelmap.txt                          "# label:color_rgb:parts:actions", then name:r,g,b:: a line
    SegmentationClass/<id>.png            RGB masks, each pixel the colour of its label
    SegmentationObject/<id>.png           instance masks (not used)
    ImageSets/Segmentation/<subset>.txt   the ids of each CVAT subset (default.txt, or train.txt, val.txt...)
    JPEGImages/<id>.<ext>                 the images (jpg, jpeg, png, bmp, tif, tiff or webp)

:func:`prepare_cvat_mask` writes::

    OUT/classes.txt                       every label of labelmap.txt, in its order, with its colour
    OUT/images/<split>/<name>.<ext>       the images, copied byte for byte
    OUT/masks/<split>/<name>.png          the colour masks, copied byte for byte

The masks stay colour PNGs: the ``folder`` preparation turns colours into class indices
through classes.txt, so it is done in one place. Each mask is checked here all the same: it
decodes, has its image's size (upright, as the image's EXIF orientation turns it) and holds
only colours of labelmap.txt. A mask stored as palette or greyscale PNG (not CVAT's own
form) is written as the RGB PNG of its colours instead of copied, so that every mask of
the folder is a colour mask.

Subsets: ``train`` goes to the split train, ``val`` and ``validation`` to val, ``default``
and any other subset to train (logged). Ids may name sub-folders (``a/b``): the outputs
are named after the last component, which must then be unique. A re-run copies again only
the files that differ from their source.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from emanet.data.class_file import MAX_CLASSES
from emanet.data.coco_json import class_names, copy_files, last_component, write_or_compare_classes
from emanet.data.folder import colors_present, pack, unpack
from emanet.data.label_check import upright_image_size
from emanet.data.prepare import converting_into, label_png_difference, run_jobs
from emanet.data.segmentation import DECODE_ERRORS, IMAGE_SUFFIXES
from emanet.errors import DatasetError, DatasetNotFoundError
from emanet.io import atomic_write

log = logging.getLogger(__name__)

LABELMAP = "labelmap.txt"
IMAGE_FOLDER = "JPEGImages"
MASK_FOLDER = "SegmentationClass"
SUBSET_FOLDER = Path("ImageSets") / "Segmentation"
SPLIT_OF_SUBSET = {"train": "train", "val": "val", "validation": "val"}  # any other subset: train
COLOR_MODES = ("RGB", "P", "L", "RGBA", "LA")  # what a mask may be stored as; all but RGB are converted


def read_labelmap(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The labels of CVAT's ``labelmap.txt`` and their colours, in its order.

    Lines are ``name:r,g,b:parts:actions`` (``#`` starts a comment); a name may hold
    colons. DatasetError naming the file (and line) for a missing file, a malformed line,
    two labels of one name or one colour.
    """
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path}: no labelmap.txt; export the task or project from CVAT as \"Segmentation mask 1.1\" and unzip it"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the label map ({error})") from None
    names, colors, numbers = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.strip().split(":")
        name, color = (":".join(fields[:-3]), fields[-3]) if len(fields) >= 4 else (fields[0], fields[-1])
        values = color.split(",")
        if (
            len(fields) in (1, 3)
            or not name.strip()
            or len(values) != 3
            or not all(re.fullmatch(r"\s*\d{1,3}\s*", value) and int(value) <= 255 for value in values)
        ):
            raise DatasetError(
                f"{path}:{number}: {line.strip()!r} is not a label line name:r,g,b:parts:actions "
                "(three values 0-255); export again from CVAT or fix the line"
            )
        rgb = tuple(int(value) for value in values)
        if rgb in colors:
            other = names[colors.index(rgb)]
            raise DatasetError(
                f"{path}:{number}: label {name!r} has the colour {color.strip()} of {other!r} (line "
                f"{numbers[colors.index(rgb)]}); give each label its own colour in CVAT and export again"
            )
        names.append(name)
        colors.append(rgb)  # type: ignore[arg-type]
        numbers.append(number)
    if not names:
        raise DatasetError(f"{path}: no labels; export again from CVAT as \"Segmentation mask 1.1\"")
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{path}: {len(names)} labels; 8-bit labels hold at most {MAX_CLASSES} (255 is ignored)")
    return class_names(names, str(path), "label"), colors  # type: ignore[return-value]


def find_image(export: Path, sample_id: str) -> Path | None:
    """``JPEGImages/<id>.<ext>`` for one of :data:`IMAGE_SUFFIXES` (either case), or None;
    DatasetError when two files are there for the id."""
    folder = export / IMAGE_FOLDER
    stem = folder / sample_id
    spellings = [stem.name + extension for lower in IMAGE_SUFFIXES for extension in (lower, lower.upper())]
    found = [stem.with_name(spelling) for spelling in spellings if stem.with_name(spelling).is_file()]
    if len(found) > 1 and folder.is_dir():
        # A case-insensitive file system finds one file under both spellings: keep the names it lists.
        listed = {path.name for path in stem.parent.iterdir()}
        found = [path for path in found if path.name in listed]
    if len(found) > 1:
        raise DatasetError(
            f"{found[0]}: {len(found)} images for the id {sample_id} ({', '.join(p.name for p in found)}); "
            "remove all but the one that was annotated"
        )
    return found[0] if found else None


def rgb_mask(mask: Path) -> tuple[Image.Image, str]:
    """The mask as an RGB image and the mode it is stored in; DatasetError naming it when it
    does not decode or is no 8-bit image."""
    try:
        with Image.open(mask) as image:
            mode = image.mode
            if mode not in COLOR_MODES:
                raise DatasetError(
                    f"{mask}: mask of mode {mode!r}, not an 8-bit colour image; export again from CVAT "
                    "as \"Segmentation mask 1.1\""
                )
            return image.convert("RGB"), mode
    except DECODE_ERRORS as error:
        raise DatasetError(f"{mask}: cannot read the mask ({error}); export again from CVAT") from None


def check_sample(job: tuple[Path, Path, Sequence[tuple[int, int, int]], Path]) -> str:
    """DatasetError naming the file unless ``image`` decodes, ``mask`` decodes, has the
    image's upright size and holds only colours of the label map. Returns the mask's mode."""
    image, mask, colors, labelmap = job
    try:
        width, height = upright_image_size(image)
    except DECODE_ERRORS as error:
        raise DatasetError(f"{image}: cannot read the image ({error}); export again from CVAT") from None
    rgb, mode = rgb_mask(mask)
    if rgb.size != (width, height):
        raise DatasetError(
            f"{mask}: mask is {rgb.width}x{rgb.height} but its image {image.name} is {width}x{height} "
            "(upright, as its EXIF orientation turns it); export images and masks of one task together"
        )
    known = {int(pack(np.array(color))) for color in colors}
    unknown = sorted((unpack(color), count) for color, count in colors_present(rgb) if color not in known)
    if unknown:
        (red, green, blue), count = unknown[0]
        more = f" (and {len(unknown) - 1} more unknown colours)" if len(unknown) > 1 else ""
        raise DatasetError(
            f"{mask}: colour {red},{green},{blue} on {count} pixels is not in {labelmap}"
            f"{more}; add its label to the map or repaint those pixels, and export again"
        )
    return mode


def write_rgb_mask(job: tuple[Path, Path]) -> str | None:
    """Write the mask ``source`` (palette, greyscale, with alpha) as the RGB PNG of its
    colours at ``destination``, unless one with those pixels is there; returns the
    destination when it replaced one that differed."""
    source, destination = job
    pixels = np.array(rgb_mask(source)[0])
    existed = destination.exists()
    if existed:
        problem = label_png_difference(destination, pixels, "RGB")
        if problem is None:
            return None
    atomic_write(destination, partial(Image.fromarray(pixels).save, format="PNG"))
    return str(destination) if existed else None


def read_subsets(export: Path) -> dict[str, list[str]]:
    """CVAT subset name -> its ids, from ``ImageSets/Segmentation/*.txt``."""
    folder = export / SUBSET_FOLDER
    lists = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not lists:
        raise DatasetNotFoundError(
            f"{folder}: no subset lists (default.txt, train.txt...); export from CVAT as \"Segmentation mask 1.1\" "
            "and unzip the whole archive"
        )
    subsets = {}
    for path in lists:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"{path}: cannot read the subset list ({error})") from None
        subsets[path.stem] = [line.strip() for line in lines if line.strip()]
    return subsets


def prepare_cvat_mask(export: Path, root: Path, workers: int = 1) -> dict[str, int]:
    """Convert the unzipped CVAT "Segmentation mask 1.1" export at ``export`` into the folder
    layout at ``root``: the module's docstring gives the rule.

    Checks everything before writing: the label map, that every listed id has its image in
    ``JPEGImages`` and its mask in ``SegmentationClass``, that no two ids are written under
    one name, and every mask (decodes, image's size, label map colours); a DatasetError
    naming the file says what to fix. Holds the lock on ``root`` while it writes. Returns the
    number of images of each split.
    """
    export, root = Path(export), Path(root)
    if not export.is_dir():
        raise DatasetNotFoundError(f"{export}: no such folder; unzip CVAT's \"Segmentation mask 1.1\" export there")
    labelmap = export / LABELMAP
    names, colors = read_labelmap(labelmap)
    subsets = read_subsets(export)

    samples: dict[str, list[tuple[str, Path, Path]]] = {}  # split -> (output name, image, mask)
    listed: dict[str, str] = {}  # output name -> "subset list: id"
    missing = []
    for subset, ids in subsets.items():
        split = SPLIT_OF_SUBSET.get(subset.lower(), "train")
        if subset.lower() not in SPLIT_OF_SUBSET:
            log.info("%s: CVAT subset %r (%d images) goes to the split %s", export, subset, len(ids), split)
        subset_list = export / SUBSET_FOLDER / f"{subset}.txt"
        for sample_id in ids:
            name = last_component(sample_id)
            if not name or name in (".", "..") or Path(sample_id).is_absolute() or ".." in Path(sample_id).parts:
                raise DatasetError(f"{subset_list}: id {sample_id!r} names no file inside the export")
            if name in listed:
                raise DatasetError(
                    f"{subset_list}: id {sample_id!r} would be written as {name}, as {listed[name]} is (outputs are "
                    "named after the id without its folders); rename one of the images in CVAT"
                )
            listed[name] = f"{sample_id!r} of {subset}.txt"
            image = find_image(export, sample_id)
            mask = export / MASK_FOLDER / f"{sample_id}.png"
            if image is None:
                missing.append(
                    f"{export / IMAGE_FOLDER / sample_id}.<{'|'.join(e[1:] for e in IMAGE_SUFFIXES)}> "
                    f"(id {sample_id} of {subset_list.name}; images are looked for in {IMAGE_FOLDER} only)"
                )
            elif not mask.is_file():
                missing.append(f"{mask} (the mask of id {sample_id} of {subset_list.name})")
            else:
                samples.setdefault(split, []).append((name, image, mask))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(
            f"{export}: {len(missing)} listed ids lack their image or mask: {'; '.join(missing[:3])}{more}; "
            "export again from CVAT with \"Save images\" checked and unzip the whole archive"
        )
    if not samples:
        raise DatasetError(f"{export / SUBSET_FOLDER}: the subset lists name no images; annotate and export again")

    root.mkdir(parents=True, exist_ok=True)
    folders = [root / kind / split for split in samples for kind in ("images", "masks")]
    with converting_into(root, [root, *folders]):
        everything = [sample for split_samples in samples.values() for sample in split_samples]
        jobs = [(image, mask, colors, labelmap) for _, image, mask in everything]
        modes = run_jobs(_check_sample_with_path, jobs, "masks (check)", workers, chunksize=32)
        converted = {mask for mask, mode in modes if mode != "RGB"}
        write_or_compare_classes(root, names, colors, labelmap, "labels and colours")
        for split, split_samples in samples.items():
            copies = [(image, root / "images" / split / f"{name}{image.suffix}") for name, image, _ in split_samples]
            masks = [(mask, root / "masks" / split / f"{name}.png") for name, _, mask in split_samples]
            copies += [job for job in masks if job[0] not in converted]
            copy_files(copies, f"images and masks ({split})", workers)
            conversions = [job for job in masks if job[0] in converted]
            if conversions:
                log.info("%s: %d masks are not RGB PNGs; written as RGB PNGs of their colours", split, len(conversions))
                run_jobs(write_rgb_mask, conversions, f"masks to RGB ({split})", workers)
    counts = {split: len(split_samples) for split, split_samples in samples.items()}
    log.info("%s -> %s: %s images, %d classes", export, root, counts, len(names))
    return counts


def _check_sample_with_path(job: tuple[Path, Path, Sequence[tuple[int, int, int]], Path]) -> tuple[Path, str]:
    return job[1], check_sample(job)
