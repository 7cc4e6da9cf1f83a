"""A dataset of one's own in one folder (``dataset=folder``): checked and made ready once.

The layout a user brings (data/README.md, "Your own data")::

    ROOT/classes.txt                       line k names class k (optionally `name r g b`)
    ROOT/images/{train,val}/<stem>.<ext>   jpg, jpeg, png, bmp, tif, tiff or webp
    ROOT/masks/{train,val}/<stem>.png      8-bit index masks (L or P) or RGB colour masks

:func:`prepare_folder` checks every image and mask pair before any training and names each
bad file in one line; then it writes what ``configs/dataset/folder.yaml`` reads::

    ROOT/labels/{train,val}/<stem>.png     index PNGs (255 = ignored): colour masks converted
    ROOT/splits/{train,val}.txt            ids <folder>/<image file name>
    ROOT/class_pixels.md, .png, .pdf       pixels per class per split, as a table and bars

Index masks are copied as they are (their values are the classes); a colour mask's pixel
of a class's colour in classes.txt becomes that class, one of the colour PASCAL VOC draws
ignored pixels in (224 224 192) becomes 255. Without an ``images/val`` folder a fixed
fraction of train, drawn with a fixed seed, is the val split.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from emanet.data.class_file import CLASSES_FILE, ClassList, read_class_file
from emanet.data.label_check import upright_size
from emanet.data.palette import LABEL_PNG_MODES, color_map
from emanet.data.prepare import convert_labels, converting_into, run_jobs, write_split
from emanet.data.segmentation import DECODE_ERRORS, IMAGE_SUFFIXES, exif_orientation
from emanet.errors import DatasetError, DatasetNotFoundError
from emanet.io import atomic_write

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
COLOR_MODES = ("RGB", "RGBA")
IGNORED_COLOR = tuple(int(value) for value in color_map()[255])  # VOC's (224, 224, 192)
IGNORE_INDEX = 255
MAX_COLORS_NAMED = 5  # a colour mask's unknown colours named one a line, the rest counted in one
STATISTICS = "class_pixels"  # ROOT/class_pixels.md and its bar chart .png / .pdf


def pack(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> one uint32 each, the bytes r, g, b, 255 read little-endian:
    what :func:`packed_pixels` gives an image's pixels."""
    colors = np.asarray(colors, dtype=np.uint32)
    return colors[..., 0] | (colors[..., 1] << 8) | (colors[..., 2] << 16) | np.uint32(255 << 24)


def unpack(color: int) -> tuple[int, int, int]:
    return color & 255, (color >> 8) & 255, (color >> 16) & 255


def packed_pixels(rgb: Image.Image) -> np.ndarray:
    """(H, W) uint32: each pixel's colour of an RGB image as :func:`pack` packs it, without
    arithmetic: the RGBA bytes (alpha 255) viewed as integers, 4 bytes a pixel instead of
    three int64."""
    return np.asarray(rgb.convert("RGBA")).view("<u4")[..., 0]


def color_table(classes: ClassList, reduce_zero_label: bool = False) -> dict[int, int]:
    """Packed colour -> stored label value of a colour mask: class k's colour is value k
    (k + 1 with ``reduce_zero_label``, whose value 0 is ignored), VOC's ignore colour 255."""
    offset = 1 if reduce_zero_label else 0
    table = {int(pack(np.array(IGNORED_COLOR))): IGNORE_INDEX}
    for index, color in enumerate(classes.colors):
        if color is not None:
            table[int(pack(np.array(color)))] = index + offset
    return table


def find_files(folder: Path, suffixes: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """``{stem: path}`` of the files of ``folder`` with one of ``suffixes`` (any case), and
    one problem line per stem two files share (``a.jpg`` and ``a.png``)."""
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.append(f"{path}: has the name of {found[path.stem].name}; rename one (their masks would clash)")
            continue
        found[path.stem] = path
    return found, problems


def colors_present(rgb: Image.Image) -> list[tuple[int, int]]:
    """(packed colour, pixel count) of each colour of an RGB image.

    Pillow counts them in C (``getcolors``), about 30 times faster than ``np.unique`` over a
    12-megapixel photo's mask; an image of over 65536 colours (a mask saved as JPEG, or
    antialiased) is counted with NumPy."""
    counted = rgb.getcolors(maxcolors=65536)
    if counted is not None:
        return [(int(pack(np.array(color))), count) for count, color in counted]
    colors, counts = np.unique(packed_pixels(rgb), return_counts=True)
    return [(int(color), int(count)) for color, count in zip(colors, counts, strict=True)]


def read_mask(path: Path, table: dict[int, int]) -> np.ndarray:
    """The stored label values (H, W) uint8 of a mask: an index mask's own values, a colour
    mask's mapped through ``table`` (a colour not in it raises DatasetError)."""
    with Image.open(path) as image:
        if image.mode in LABEL_PNG_MODES:
            return np.array(image, dtype=np.uint8)
        rgb = image.convert("RGB")  # alpha dropped
        present = colors_present(rgb)
        packed = packed_pixels(rgb)
    unknown = [color for color, _ in present if color not in table]
    if unknown:
        raise DatasetError(f"{path}: colours {[unpack(color) for color in unknown[:5]]} are not in {CLASSES_FILE}")
    # One comparison per colour present (a mask has a few): faster than a lookup per pixel.
    label = np.empty(packed.shape, dtype=np.uint8)
    for color, _ in present:
        label[packed == color] = table[color]
    return label


def inspect_pair(job: tuple[Path, Path, dict[int, int], int, bool]) -> dict:
    """Check one image and mask: the ``mask`` path, its ``problems`` (lines naming the file)
    and, for a good pair, ``pixels``: the count of each stored label value 0-255."""
    return {"mask": str(job[1]), "problems": [], **pair_findings(*job)}


def pair_findings(
    image_path: Path, mask_path: Path, table: dict[int, int], num_classes: int, reduce_zero_label: bool
) -> dict:
    """``{"problems": [...]}`` of a bad pair, ``{"pixels": counts}`` of a good one."""
    try:
        with Image.open(image_path) as image:
            size, orientation = image.size, exif_orientation(image)
            image.load()  # decodes every byte: a truncated file fails here, not in training
    except DECODE_ERRORS as error:
        return {"problems": [f"{image_path}: cannot read the image ({error})"]}
    try:
        with Image.open(mask_path) as mask:
            mode, mask_size = mask.mode, mask.size
            mask.load()
            if mode in LABEL_PNG_MODES:
                pixels = np.array(mask.histogram(), dtype=np.int64)  # counts in C, no array of the pixels
            elif mode in COLOR_MODES:
                present = colors_present(mask.convert("RGB"))
            else:
                return {"problems": [
                    f"{mask_path}: a mask of mode {mode!r}; masks are 8-bit index PNGs (L or P) or RGB colour PNGs"]}
    except DECODE_ERRORS as error:
        return {"problems": [f"{mask_path}: cannot read the mask ({error})"]}
    width, height = upright_size(size, orientation)
    if mask_size != (width, height):
        turned = f" once turned upright (EXIF orientation {orientation})" if (width, height) != size else ""
        return {"problems": [
            f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image {image_path.name} is "
            f"{width}x{height}{turned}"]}
    if mode in COLOR_MODES:
        unknown = sorted((color, count) for color, count in present if color not in table)
        problems = [f"{mask_path}: colour {' '.join(map(str, unpack(color)))} ({count} pixels) is not in {CLASSES_FILE}"
                    for color, count in unknown[:MAX_COLORS_NAMED]]
        if len(unknown) > MAX_COLORS_NAMED:
            more = unknown[MAX_COLORS_NAMED:]
            problems.append(f"{mask_path}: and {len(more)} more colours ({sum(c for _, c in more)} pixels) not in "
                            f"{CLASSES_FILE}; a mask saved as JPEG or drawn with antialiasing has such colours")
        if problems:
            return {"problems": problems}
        pixels = np.zeros(256, dtype=np.int64)
        for color, count in present:
            pixels[table[color]] += count
    last = num_classes if reduce_zero_label else num_classes - 1
    bad = [value for value in np.flatnonzero(pixels) if value > last and value != IGNORE_INDEX]
    if bad:
        listed = ", ".join(f"{value} ({pixels[value]} pixels)" for value in bad[:10])
        allowed = f"0 (ignored) or a class 1-{last}" if reduce_zero_label else f"a class 0-{last}"
        return {"problems": [f"{mask_path}: values {listed} are neither {allowed} nor {IGNORE_INDEX} (ignored)"]}
    return {"pixels": pixels}


def split_off_val(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val): ``fraction`` of ``ids`` (at least one, when there are two or more) drawn
    with ``seed``; the same ids and seed always draw the same split."""
    count = min(len(ids) - 1, max(1, round(len(ids) * fraction))) if len(ids) > 1 else 0
    chosen = set(random.Random(seed).sample(sorted(ids), count))
    return [i for i in ids if i not in chosen], [i for i in ids if i in chosen]


def class_pixels(pixels: dict[str, np.ndarray], classes: ClassList, reduce_zero_label: bool) -> dict[str, list[int]]:
    """Per split, the labelled pixels of each class (stored values mapped as training maps them)."""
    offset = 1 if reduce_zero_label else 0
    return {split: [int(counts[index + offset]) for index in range(len(classes))] for split, counts in pixels.items()}


def pixel_table(counts: dict[str, list[int]], names: Sequence[str]) -> str:
    """A Markdown table: each class's pixels and share of the labelled pixels, per split."""
    splits = list(counts)
    header = "| class | " + " | ".join(f"{split} pixels | {split} %" for split in splits) + " |"
    lines = [header, "| --- |" + " ---: | ---: |" * len(splits)]
    totals = {split: sum(values) or 1 for split, values in counts.items()}
    for index, name in enumerate(names):
        cells = [f"{counts[split][index]:,} | {100 * counts[split][index] / totals[split]:.2f}" for split in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_statistics(root: Path, counts: dict[str, list[int]], classes: ClassList, images: dict[str, int]) -> None:
    """ROOT/class_pixels.md (the table) and class_pixels.png / .pdf (the bar chart)."""
    from emanet.plots import class_pixels_figure, write_figure

    title = ", ".join(f"{split}: {count} images" for split, count in images.items())
    text = f"# Pixels per class\n\n{title}\n\n{pixel_table(counts, classes.names)}"
    atomic_write(root / f"{STATISTICS}.md", lambda temp: Path(temp).write_text(text))
    write_figure(class_pixels_figure(counts, classes.names, classes.display_colors(), title), root / STATISTICS)


def prepare_folder(
    root: Path, val_fraction: float = 0.1, seed: int = 0, reduce_zero_label: bool = False, workers: int = 1
) -> dict[str, int]:
    """Check every image and mask of ``root``, write the index labels and split lists and
    the pixels per class; returns the number of images of each split.

    Every problem is logged in one line naming the file before a DatasetError ends it:
    an image without mask or a mask without image, a file that does not decode (truncated
    ones included), sizes that differ (the image turned as its EXIF orientation says, as
    training reads it), a value that is neither a class nor 255, an RGB colour not in
    classes.txt with its pixel count. Nothing is written then. Holds the lock on ``root``;
    labels written before are checked against their mask and kept when equal.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: no such folder; see data/README.md for the folder layout")
    classes = read_class_file(root / CLASSES_FILE)
    if not (root / "images" / "train").is_dir():
        raise DatasetNotFoundError(
            f"{root / 'images' / 'train'}: no such folder; put the training images there and their masks in "
            f"{root / 'masks' / 'train'} (see data/README.md)"
        )
    if not 0 < val_fraction < 1:
        raise DatasetError(f"--val-fraction {val_fraction}: give a fraction of the training images, between 0 and 1")
    table = color_table(classes, reduce_zero_label)
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    problems: list[str] = []
    for split in SPLITS:
        image_folder, mask_folder = root / "images" / split, root / "masks" / split
        images, clashes = find_files(image_folder, IMAGE_SUFFIXES)
        masks, mask_clashes = find_files(mask_folder, (".png",))
        problems += clashes + mask_clashes
        problems += [f"{path}: image without mask (expected {mask_folder / (stem + '.png')})"
                     for stem, path in images.items() if stem not in masks]
        problems += [f"{path}: mask without image (no {stem}.<{','.join(s[1:] for s in IMAGE_SUFFIXES)}> in "
                     f"{image_folder})" for stem, path in masks.items() if stem not in images]
        if images:  # no val images: val is drawn from train below
            pairs[split] = [(images[stem], masks[stem]) for stem in sorted(images) if stem in masks]
    if "train" not in pairs:
        raise DatasetNotFoundError(
            f"{root / 'images' / 'train'}: no image ({' '.join(IMAGE_SUFFIXES)}); put the training images there "
            "(see data/README.md)"
        )
    jobs = [(image, mask, table, len(classes), reduce_zero_label) for split in pairs for image, mask in pairs[split]]
    results = run_jobs(inspect_pair, jobs, "checking images and masks", workers, chunksize=8)
    # Pairs in name order (workers return them in any), each pair's lines in its own order.
    problems += [problem for result in sorted(results, key=lambda result: result["mask"])
                 for problem in result["problems"]]
    if problems:
        for problem in problems:
            log.error("%s", problem)
        bad_pairs = sum(bool(result["problems"]) for result in results)
        several = len(problems) > 1
        raise DatasetError(
            f"{root}: {len(problems)} problem{'s' if several else ''} (each named above; {bad_pairs} of {len(jobs)} "
            f"image/mask pairs are bad); fix {'them' if several else 'it'} and run the same command again"
        )
    pixels_of = {result["mask"]: result["pixels"] for result in results}
    ids = {split: [f"{split}/{image.name}" for image, _ in split_pairs] for split, split_pairs in pairs.items()}
    if "val" not in ids:
        ids["train"], ids["val"] = split_off_val(ids["train"], val_fraction, seed)
        log.info("no %s folder: %d of the %d training images are the val split (--val-fraction %g, --seed %d)",
                 root / "images" / "val", len(ids["val"]), len(ids["train"]) + len(ids["val"]), val_fraction, seed)
    labels = root / "labels"
    with converting_into(root, [labels / split for split in SPLITS] + [root / "splits"]):
        convert_labels(
            [(read_mask, (mask, table), labels / image.parent.name / f"{mask.stem}.png")
             for split_pairs in pairs.values() for image, mask in split_pairs],
            "index labels", workers,
        )
        for split in SPLITS:
            write_split(root / "splits" / f"{split}.txt", ids[split])
        mask_of = {f"{image.parent.name}/{image.name}": str(mask) for split_pairs in pairs.values()
                   for image, mask in split_pairs}
        pixels = {split: sum((pixels_of[mask_of[i]] for i in ids[split]), np.zeros(256, dtype=np.int64))
                  for split in SPLITS}
        counts = class_pixels(pixels, classes, reduce_zero_label)
        sizes = {split: len(ids[split]) for split in SPLITS}
        write_statistics(root, counts, classes, sizes)
    log.info("%s", pixel_table(counts, classes.names).rstrip())
    for split in SPLITS:
        absent = [name for name, count in zip(classes.names, counts[split], strict=True) if count == 0]
        if absent:
            log.warning("%s split: no pixel of %s: its IoU cannot be measured%s", split, ", ".join(absent),
                        "" if split == "val" else " and the network cannot learn it")
    log.info("folder dataset %s: %s; train with `python train.py experiment=folder_emanet512 dataset.root=%s`",
             root, ", ".join(f"{split} {count} images" for split, count in sizes.items()), root)
    return sizes
