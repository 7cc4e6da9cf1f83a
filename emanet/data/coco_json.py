"""COCO-format JSON exports (CVAT, Label Studio, Roboflow...) -> the ``folder`` dataset layout.

A COCO JSON lists ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories``
(``id``, ``name``) and ``annotations`` (``id``, ``image_id``, ``category_id``,
``segmentation``, ``area``, ``iscrowd``). :func:`prepare_coco_json` writes::

    OUT/classes.txt                      the categories, one a line
    OUT/images/<split>/<name>            each image, copied byte for byte
    OUT/masks/<split>/<stem>.png         its label, an 8-bit palette PNG (255 = ignored)

The rule that turns the annotations into one label per pixel:

* Classes are the ``categories`` in the JSON's order, numbered contiguously whatever their
  ids. With ``background`` (the default) class 0 is ``background`` and the i-th category
  (0-based) is class i + 1; without it the i-th category is class i.
* The annotations of an image are painted in decreasing order of their ``area`` field (the
  pixel count of their mask where an annotation has none), ties in the JSON's order: a
  smaller object painted later stays visible on a larger one it lies on. A crowd
  annotation (``iscrowd`` 1) is painted in that same order with 255, ignored.
* Pixels no annotation covers are class 0, ``background``, or 255 (ignored) without
  ``background``.

Each annotation's mask is what pycocotools' ``COCO.annToMask`` gives, pixel for pixel, but
decoded here (pycocotools is compiled C; it is no dependency of this package): a polygon
is rasterised as cocodataset/cocoapi's ``rleFrPoly`` (common/maskApi.c) does, an
uncompressed RLE (``counts`` a list of run lengths) and a compressed one (``counts`` the
string of ``rleToString``, decoded as ``rleFrString``) are expanded column by column. The
parts of a polygon list are united, as ``annToRLE`` merges them. One deviation: a polygon
part of fewer than three points encloses nothing and gives no pixels, where pycocotools
reads a list whose first part holds exactly four numbers as boxes ``[x, y, w, h]``.

``file_name`` may name sub-folders (it is looked up under the images folder as given, then
by its last component); the outputs are named after its last component. Every input is
checked before anything is written; a re-run checks the files written before against
their sources and rewrites only those that differ, so it resumes an interrupted run and
otherwise writes nothing. A second split converted into the same folder must have the
same categories (its ``classes.txt`` is compared).
"""

from __future__ import annotations

import filecmp
import json
import logging
import math
import re
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from emanet.data.class_file import CLASSES_FILE, MAX_CLASSES, parse_line, read_class_file, write_class_file
from emanet.data.label_check import upright_image_size
from emanet.data.prepare import convert_labels, converting_into, run_jobs
from emanet.data.segmentation import DECODE_ERRORS
from emanet.errors import DatasetError, DatasetNotFoundError
from emanet.io import atomic_write

log = logging.getLogger(__name__)

BACKGROUND = "background"
IGNORE = 255
SCALE = 5  # rleFrPoly's upsampling of the polygon before it walks the edges
# Coordinates beyond this are refused: rleFrPoly stores the upsampled ones in C ints, and
# walking an edge that long would take gigabytes.
MAX_COORDINATE = 2**20


# --- decoding one annotation --------------------------------------------------------------


def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """The pixels of the polygon ``[x1, y1, x2, y2, ...]`` as (height, width) bool.

    cocodataset/cocoapi's ``rleFrPoly`` (common/maskApi.c), in NumPy: the vertices are
    scaled by 5 and rounded, each edge is walked one upsampled step at a time along its
    longer axis, and where the walk crosses the centre of a pixel column the first pixel
    below the edge is a boundary point. The mask toggles at each boundary point, in
    column-major order: inside are the pixels after an odd number of them. Fewer than
    three points enclose nothing.
    """
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3:
        return np.zeros((height, width), dtype=bool)
    # (int)(scale * x + .5): C's conversion truncates toward zero, as astype does.
    x = (SCALE * xy[:, 0] + 0.5).astype(np.int64)
    y = (SCALE * xy[:, 1] + 0.5).astype(np.int64)
    xs, ys, xe, ye = x, y, np.roll(x, -1), np.roll(y, -1)  # edge j runs from vertex j to vertex j + 1
    dx, dy = np.abs(xe - xs), np.abs(ys - ye)
    along_x = dx >= dy
    flip = (along_x & (xs > xe)) | (~along_x & (ys > ye))
    xs, xe = np.where(flip, xe, xs), np.where(flip, xs, xe)
    ys, ye = np.where(flip, ye, ys), np.where(flip, ys, ye)
    steps = np.maximum(dx, dy)
    # The slope along the longer axis; an edge of one point (steps 0) gets 0 where C gets
    # NaN: its one point has the x of its neighbours, so no boundary point comes of it.
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(along_x, (ye - ys) / dx, (xe - xs) / dy)
    slope[steps == 0] = 0.0
    counts = steps + 1
    edge = np.repeat(np.arange(len(xs)), counts)
    d = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = np.where(flip[edge], steps[edge] - d, d)  # each edge is walked from its first vertex to its last
    offset = (np.where(along_x, ys, xs)[edge] + slope[edge] * t + 0.5).astype(np.int64)
    u = np.where(along_x[edge], xs[edge] + t, offset)
    v = np.where(along_x[edge], offset, ys[edge] + t)
    # Boundary points where the walk moves to another upsampled column.
    moved = u[1:] != u[:-1]
    u_now, u_before, v_now, v_before = u[1:][moved], u[:-1][moved], v[1:][moved], v[:-1][moved]
    xd = (np.where(u_now < u_before, u_now, u_now - 1) + 0.5) / SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = (np.minimum(v_now, v_before)[keep] + 0.5) / SCALE - 0.5
    yd = np.ceil(np.clip(yd, 0, height))
    positions = xd[keep].astype(np.int64) * height + yd.astype(np.int64)
    # Points at one position toggle once per point: an even number cancels.
    positions, multiplicity = np.unique(positions, return_counts=True)
    toggles = np.zeros(height * width + 1, dtype=bool)
    toggles[positions[multiplicity % 2 == 1]] = True
    inside = np.logical_xor.accumulate(toggles[:-1]) if height * width else toggles[:0]
    return inside.reshape(width, height).T


def rle_string_counts(text: str) -> list[int]:
    """The run lengths of a compressed RLE string, as cocodataset/cocoapi's ``rleFrString``
    (common/maskApi.c) reads them.

    Each run is a signed number in 5-bit groups, least significant first, each group a
    character 48 + group, with 32 added while more groups follow; from the fourth run on
    the number is the difference to the run two before. ValueError for a character
    outside the alphabet or a string that ends inside a number.
    """
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text):
                raise ValueError("the string ends inside a run length")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {text[position]!r} at {position} is not one of an RLE string")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # the number is negative: extend its sign
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Run lengths (0s first, then 1s, alternating; column-major) as (height, width) bool.

    ValueError unless the runs are whole numbers >= 0 adding up to height x width
    (pycocotools would read past its buffer, or leave pixels unset).
    """
    runs = np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError(f"run length {int(runs.min())} is negative")
    if int(runs.sum()) != height * width:
        raise ValueError(f"the run lengths add up to {int(runs.sum())} pixels, not height x width = {height * width}")
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


def segmentation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """An annotation's ``segmentation`` as (height, width) bool: what pycocotools'
    ``COCO.annToMask`` gives (polygon parts united, uncompressed or compressed RLE).

    ValueError saying what is wrong with it; :func:`segmentation_problem` finds the
    problems that need no decoding.
    """
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), dtype=bool)
        for polygon in segmentation:
            mask |= polygon_mask(polygon, height, width)
        return mask
    counts = segmentation["counts"]
    return rle_mask(rle_string_counts(counts) if isinstance(counts, str) else counts, height, width)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def segmentation_problem(segmentation: object, height: int, width: int) -> str | None:
    """What makes ``segmentation`` no polygon list or RLE of an image of height x width, or
    None. The run lengths of an RLE are checked when it is decoded."""
    if isinstance(segmentation, list):
        for number, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(_is_number(value) for value in polygon):
                return f"polygon {number} is not a list of numbers [x1, y1, x2, y2, ...]"
            if len(polygon) % 2:
                return f"polygon {number} has an odd count of numbers ({len(polygon)}), not x, y pairs"
            if not all(math.isfinite(value) and abs(value) <= MAX_COORDINATE for value in polygon):
                return f"polygon {number} has a coordinate that is not a finite number within +-{MAX_COORDINATE}"
        return None
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        return "segmentation is neither a list of polygons nor an RLE {'counts': ..., 'size': [height, width]}"
    size, counts = segmentation["size"], segmentation["counts"]
    if size != [height, width]:
        return f"RLE size {size} differs from its image's [height, width] = [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(run, int) and not isinstance(run, bool) for run in counts):
            return "RLE counts is a list holding other values than whole numbers"
        if any(run < 0 for run in counts):
            return "RLE counts holds a negative run length"
        if sum(counts) != height * width:
            return f"RLE run lengths add up to {sum(counts)} pixels, not height x width = {height * width}"
    elif not isinstance(counts, str):
        return "RLE counts is neither a list of run lengths nor a compressed string"
    return None


def coco_label(height: int, width: int, fill: int, painted: Sequence[tuple], where: str) -> np.ndarray:
    """One image's label: ``fill`` everywhere, then each ``(area, value, segmentation,
    annotation id)`` of ``painted`` in decreasing area (JSON order on ties; an area of None
    is the mask's pixel count) painted with its value. DatasetError naming ``where`` and the
    annotation for a segmentation that does not decode."""

    def mask(segmentation, annotation_id) -> np.ndarray:
        try:
            return segmentation_mask(segmentation, height, width)
        except ValueError as error:
            raise DatasetError(
                f"{where}: annotation {annotation_id}: {error}; fix or delete it in the annotation tool, export again"
            ) from None

    decoded = {index: mask(item[2], item[3]) for index, item in enumerate(painted) if item[0] is None}
    areas = [item[0] if item[0] is not None else int(decoded[index].sum()) for index, item in enumerate(painted)]
    label = np.full((height, width), fill, dtype=np.uint8)
    for index in sorted(range(len(painted)), key=lambda i: -areas[i]):  # sorted() is stable
        _, value, segmentation, annotation_id = painted[index]
        label[decoded.pop(index) if index in decoded else mask(segmentation, annotation_id)] = value
    return label


# --- files ---------------------------------------------------------------------------------


def check_image_size(job: tuple[Path, int, int, str]) -> None:
    """DatasetError naming the file unless the image ``path`` decodes and is, upright,
    ``width`` x ``height``, the size ``where`` says it is."""
    path, width, height, where = job
    try:
        found = upright_image_size(path)
    except DECODE_ERRORS as error:
        raise DatasetError(f"{path}: cannot read the image ({error}); replace it with the file {where} lists") from None
    if found != (width, height):
        raise DatasetError(
            f"{path}: image is {found[0]}x{found[1]} (upright, as its EXIF orientation turns it) but {where} says "
            f"{width}x{height}; the annotations were drawn on another image: use the images of that export"
        )


def copy_file(job: tuple[Path, Path]) -> str | None:
    """Copy ``source`` to ``destination`` atomically unless it holds the same bytes already;
    returns the destination when it replaced a file that differed."""
    source, destination = job
    existed = destination.exists()
    if existed and filecmp.cmp(source, destination, shallow=False):
        return None
    atomic_write(destination, partial(shutil.copyfile, source))
    return str(destination) if existed else None


def copy_files(jobs: Sequence[tuple[Path, Path]], description: str, workers: int = 1) -> None:
    """:func:`copy_file` for every job with a progress bar; logs the files replaced."""
    replaced = sorted(path for path in run_jobs(copy_file, jobs, description, workers) if path is not None)
    if replaced:
        more = f" and {len(replaced) - 5} more" if len(replaced) > 5 else ""
        log.warning(
            "%s: replaced %d files written before, which differed from their source: %s%s",
            description, len(replaced), ", ".join(replaced[:5]), more,
        )


def last_component(file_name: str) -> str:
    """The file's name without its folders (either separator: exports made on Windows use \\)."""
    return re.split(r"[\\/]", file_name)[-1]


def class_names(names: Sequence[str], where: str, what: str) -> list[str]:
    """``names`` as classes.txt will hold them (spaces collapsed); DatasetError naming
    ``where`` for an empty one, two alike, or one a class list would misread."""
    result: list[str] = []
    for name in names:
        clean = " ".join(str(name).split())
        if not clean:
            raise DatasetError(f"{where}: {what} {name!r} has an empty name; name it in the annotation tool")
        if parse_line(clean)[1] is not None:
            raise DatasetError(
                f"{where}: {what} {clean!r} ends in three numbers, which classes.txt reads as a colour; rename it"
            )
        if clean in result:
            raise DatasetError(f"{where}: the {what} name {clean!r} is given twice; give each {what} its own name")
        result.append(clean)
    return result


def write_or_compare_classes(
    root: Path, names: Sequence[str], colors: Sequence[tuple[int, int, int]] | None, source: Path, what: str
) -> None:
    """Write ``root/classes.txt``, or, where one exists (another split converted before),
    DatasetError naming both files unless it lists the same classes (and colours, when
    ``colors`` are given); ``what`` names the classes of ``source`` (its categories)."""
    path = root / CLASSES_FILE
    if not path.exists():
        write_class_file(path, names, colors)
        return
    existing = read_class_file(path)
    if colors is None:
        found, wanted = list(existing.names), list(names)
    else:
        found = list(zip(existing.names, existing.colors, strict=True))
        wanted = [(name, tuple(color)) for name, color in zip(names, colors, strict=True)]
    if found == wanted:
        return
    if len(found) != len(wanted):
        difference = f"{len(found)} classes there, {len(wanted)} here"
    else:
        index = next(i for i, (a, b) in enumerate(zip(found, wanted, strict=True)) if a != b)
        difference = f"class {index} is {found[index]!r} there, {wanted[index]!r} here"
    raise DatasetError(
        f"{source}: its {what} differ from those of {path}, written by an earlier conversion ({difference}); "
        "convert the splits of one export, or into another folder"
    )


def check_split_name(split: str) -> None:
    if not split or split in (".", "..") or re.search(r"[\\/]", split):
        raise DatasetError(f"split {split!r} is not a folder name: use train or val")


# --- the JSON ------------------------------------------------------------------------------


def read_coco_json(path: Path) -> dict:
    """The JSON at ``path`` with its three lists; DatasetError naming it otherwise."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such COCO JSON file; export the annotations in COCO format")
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read it as JSON ({error}); export the annotations in COCO format") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: not a COCO JSON (an object with images, annotations, categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(
                f"{path}: no {key!r} list: not a COCO-format export; export the annotations in COCO format"
            )
    return data


def _field(record: object, key: str, where: str, kind: type | tuple[type, ...]):
    if not isinstance(record, dict) or key not in record:
        raise DatasetError(f"{where} has no {key!r}; export the annotations again in COCO format")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{where}: {key} {value!r} is not a {getattr(kind, '__name__', 'number')}")
    return value


def _key(value: object, where: str):
    """An id as a dict key (JSON gives ints or strings)."""
    if isinstance(value, int | str) and not isinstance(value, bool):
        return value
    raise DatasetError(f"{where}: id {value!r} is neither a whole number nor a string")


def prepare_coco_json(
    annotations: Path, images: Path, root: Path, split: str = "train", background: bool = True, workers: int = 1
) -> dict[str, int]:
    """Convert the COCO JSON ``annotations`` on the images in ``images`` into the folder
    layout at ``root``, as ``split``: the module's docstring gives the rule.

    Checks everything before writing: the JSON's structure, that every annotation names a
    listed image and category, that every RLE has its image's size, that every listed image
    exists under ``images`` and has (upright) the JSON's size, and that no two images
    would be written under one name; a DatasetError naming the file says what to fix. Holds
    the lock on ``root`` while it writes. Returns ``{split: number of images}``.
    """
    json_path, images, root = Path(annotations), Path(images), Path(root)
    check_split_name(split)
    data = read_coco_json(json_path)
    if not images.is_dir():
        raise DatasetNotFoundError(f"{images}: no such images folder; pass the folder the images of {json_path} are in")

    categories: dict = {}
    names = []
    for number, category in enumerate(data["categories"]):
        where = f"{json_path}: category {number}"
        category_id = _key(_field(category, "id", where, (int, str)), where)
        if category_id in categories:
            raise DatasetError(f"{json_path}: category id {category_id} is listed twice")
        categories[category_id] = len(names)
        names.append(_field(category, "name", f"{json_path}: category {category_id}", str))
    names = class_names(names, str(json_path), "category")
    if background:
        if BACKGROUND in names:
            raise DatasetError(
                f"{json_path}: a category is named {BACKGROUND!r}, the name of class 0 that unannotated pixels get; "
                "convert with --no-background (unannotated pixels ignored), or rename the category"
            )
        names = [BACKGROUND, *names]
    limit = MAX_CLASSES if not background else MAX_CLASSES - 1
    if len(data["categories"]) > limit:
        raise DatasetError(
            f"{json_path}: {len(data['categories'])} categories; 8-bit labels hold at most {limit} "
            f"{'besides background ' if background else ''}(255 marks ignored pixels)"
        )
    if not data["categories"]:
        raise DatasetError(f"{json_path}: no categories; define the labels in the annotation tool and export again")

    records: dict = {}
    by_stem: dict[str, str] = {}
    for number, record in enumerate(data["images"]):
        where = f"{json_path}: image {number}"
        image_id = _key(_field(record, "id", where, (int, str)), where)
        where = f"{json_path}: image {image_id}"
        if image_id in records:
            raise DatasetError(f"{json_path}: image id {image_id} is listed twice")
        file_name = _field(record, "file_name", where, str)
        width, height = (_field(record, key, where, int) for key in ("width", "height"))
        if width < 1 or height < 1:
            raise DatasetError(f"{where}: size {width}x{height} is not that of an image")
        name = last_component(file_name)
        if not name or name in (".", ".."):
            raise DatasetError(f"{where}: file_name {file_name!r} names no file")
        stem = Path(name).stem
        if stem in by_stem:
            raise DatasetError(
                f"{json_path}: images {by_stem[stem]!r} and {file_name!r} would both be written as {stem} "
                "(outputs are named after the file name without its folders); rename one of them"
            )
        by_stem[stem] = file_name
        records[image_id] = {"file_name": file_name, "name": name, "width": width, "height": height, "painted": []}

    fill = 0 if background else IGNORE
    for number, annotation in enumerate(data["annotations"]):
        annotation_id = annotation.get("id", f"#{number}") if isinstance(annotation, dict) else f"#{number}"
        where = f"{json_path}: annotation {annotation_id}"
        image_id = _field(annotation, "image_id", where, (int, str))
        category_id = _field(annotation, "category_id", where, (int, str))
        if image_id not in records:
            raise DatasetError(f"{where}: image_id {image_id!r} is not among the images; export the images with it")
        if category_id not in categories:
            raise DatasetError(f"{where}: category_id {category_id!r} is not among the categories; export them all")
        record = records[image_id]
        problem = segmentation_problem(annotation.get("segmentation"), record["height"], record["width"])
        if problem is not None:
            raise DatasetError(f"{where} (image {image_id}): {problem}; fix or delete it in the annotation tool")
        area = annotation.get("area")
        if area is not None and not (_is_number(area) and math.isfinite(area)):
            raise DatasetError(f"{where}: area {area!r} is not a number")
        crowd = annotation.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DatasetError(f"{where}: iscrowd {crowd!r} is neither 0 nor 1")
        value = IGNORE if crowd else categories[category_id] + (1 if background else 0)
        record["painted"].append((area, value, annotation["segmentation"], annotation_id))

    sources = {}
    missing = []
    for image_id, record in records.items():
        candidates = dict.fromkeys([images / record["file_name"], images / record["name"]])
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            missing.append(str(images / record["file_name"]))
        sources[image_id] = found
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{json_path}: {len(missing)} listed images are not in {images} (looked for "
            f"{', '.join(missing[:5])}{more}, and by file name without folders); pass the folder the exported images "
            "are in"
        )

    image_folder, mask_folder = root / "images" / split, root / "masks" / split
    root.mkdir(parents=True, exist_ok=True)
    with converting_into(root, [root, image_folder, mask_folder]):
        run_jobs(
            check_image_size,
            [(sources[i], r["width"], r["height"], f"{json_path} (image {i})") for i, r in records.items()],
            f"image sizes ({split})", workers, chunksize=64,
        )
        write_or_compare_classes(root, names, None, json_path, "categories")
        copy_files(
            [(sources[image_id], image_folder / record["name"]) for image_id, record in records.items()],
            f"images ({split})", workers,
        )
        written = convert_labels(
            [
                (
                    coco_label,
                    (record["height"], record["width"], fill, record["painted"], f"{json_path} (image {image_id})"),
                    mask_folder / f"{Path(record['name']).stem}.png",
                )
                for image_id, record in records.items()
            ],
            f"masks ({split})", workers, mode="P",
        )
    annotated = sum(bool(record["painted"]) for record in records.values())
    log.info(
        "%s -> %s: %d images (%d with annotations), %d classes; %d masks written",
        json_path, root, len(records), annotated, len(names), written,
    )
    return {split: len(records)}
