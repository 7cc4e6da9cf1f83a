"""Every label of a split checked before training starts, and the result cached.

A sample is good when its label PNG decodes (palette or greyscale, as
:func:`emanet.data.palette.read_label_png` reads it), has the size of its image (read from
the image's header only, never decoded) and holds only values that, after the dataset's
mapping (:meth:`SegmentationDataset.map_label`: ``dataset.reduce_zero_label``), are a
class or ``dataset.ignore_index``. Without the check a bad train label stops training at
the iteration that draws it, and a bad val label only after all of training.

What a file holds (its size, its image's size, the values present; or why it does not
decode) is cached per dataset root, layout and split, keyed by each label's path and the
size and modification time (ns) of the label and its image: a second run reads only the
files that changed since, and judges the cached values against the current classes,
ignore index and mapping (changing those does not need a re-read). The cache lives in
``$EMANET_LABEL_CHECK_CACHE`` if set (``off`` disables it), else in
``$XDG_CACHE_HOME/emanet/label_checks`` (``~/.cache/emanet/label_checks``): never beside
the dataset, which may be read-only or shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from emanet.data.palette import LABEL_PNG_MODES
from emanet.data.segmentation import DECODE_ERRORS, SegmentationDataset, exif_orientation, fill_template
from emanet.errors import DatasetError
from emanet.io import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "EMANET_LABEL_CHECK_CACHE"
CACHE_OFF = ("off", "false", "0", "no", "none")
# Bumped when what an entry records changes: a cache of another version is read as empty.
CACHE_VERSION = 2  # 2: entries record the image's EXIF orientation
# Samples per task of the thread pool: one task per file costs more in scheduling than a
# cached file costs to check (two stat calls).
CHUNK = 64


def label_check_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder of the label-check caches: ``$EMANET_LABEL_CHECK_CACHE`` (None for ``off``),
    else ``$XDG_CACHE_HOME/emanet/label_checks``, ``~/.cache/emanet/label_checks`` when
    XDG_CACHE_HOME is unset, empty or relative (as the XDG base directory spec says)."""
    chosen = environ.get(CACHE_ENV, "").strip()
    if chosen.lower() in CACHE_OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    xdg = environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path("~/.cache").expanduser()
    return base / "emanet" / "label_checks"


def cache_file(directory: Path, dataset: SegmentationDataset) -> Path:
    """One file per dataset root, image and label templates and split; the name starts with
    the root's folder and the split, for whoever looks into the cache folder."""
    key = [CACHE_VERSION, str(dataset.root), dataset.layout["images"], dataset.layout["labels"], dataset.split]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dataset.root.name}-{dataset.split}")
    return directory / f"{readable}-{digest}.json"


def read_label_values(path: str | Path) -> tuple[tuple[int, int], list[int]]:
    """(width, height) of a label PNG and the values present in it, read as
    :func:`~emanet.data.palette.read_label_png` reads it (palette indices or grey levels);
    raises what that raises for a file it refuses."""
    with Image.open(path) as image:
        if image.mode not in LABEL_PNG_MODES:
            raise ValueError(
                f"{path}: label PNGs must be palette ('P') or grayscale ('L') images of "
                f"class indices, got mode {image.mode!r}"
            )
        # Decodes and counts the 256 values in C, without the copy to an array that
        # np.array + np.bincount would add (a third of the time for a VOC-sized label).
        counts = image.histogram()
        return image.size, [value for value, count in enumerate(counts) if count]


def read_image_size(path: str | Path) -> tuple[tuple[int, int], int]:
    """(width, height) of an image and its EXIF orientation (1: upright), from its header:
    nothing is decoded."""
    with Image.open(path) as image:
        return image.size, exif_orientation(image)


def upright_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as ``ImageOps.exif_transpose`` turns it, from its header."""
    return upright_size(*read_image_size(path))


def upright_size(size: Sequence[int], orientation: int) -> tuple[int, int]:
    """(width, height) of an image of stored ``size`` turned as its EXIF orientation says:
    orientations 5-8 turn it by a quarter, swapping the sides (``ImageOps.exif_transpose``)."""
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def inspect_sample(image_path: Path, label_path: Path) -> dict:
    """What the files of one sample hold, independent of the classes: ``size``,
    ``image_size`` and ``values``, or ``error`` when one cannot be read."""
    try:
        size, values = read_label_values(label_path)
    except DECODE_ERRORS as error:
        return {"error": f"{label_path}: cannot decode the label PNG ({error})"}
    try:
        image_size, orientation = read_image_size(image_path)
    except DECODE_ERRORS as error:
        return {"error": f"{image_path}: cannot read the image ({error})"}
    return {"size": list(size), "image_size": list(image_size), "orientation": orientation, "values": values}


def file_stamp(path: Path) -> list[int] | None:
    """(size, modification time in ns): a file replaced or rewritten since differs in one."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class LabelRules:
    """Which stored label values a dataset accepts, after its mapping, and how to say so."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.upright = dataset.upright
        mapped = dataset.map_label(np.arange(256, dtype=np.uint8))
        self.valid = (mapped < dataset.num_classes) | (mapped == dataset.ignore_index)
        last = dataset.num_classes - 1
        if dataset.reduce_zero_label:
            self.allowed = (
                f"a class (1-{last + 1}, which dataset.reduce_zero_label=true shifts to 0-{last}) "
                f"nor 0 or dataset.ignore_index={dataset.ignore_index}"
            )
        else:
            self.allowed = f"a class (0-{last}) nor dataset.ignore_index={dataset.ignore_index}"

    def problem(self, finding: dict, label_path: Path, image_path: Path) -> str | None:
        """What is wrong with a sample, in words that name the file; None if nothing is."""
        if "error" in finding:
            return finding["error"]
        width, height = finding["size"]
        image_width, image_height = finding["image_size"]
        turned = ""
        if self.upright and finding["orientation"] != 1:
            image_width, image_height = upright_size(finding["image_size"], finding["orientation"])
            turned = f" once turned upright (EXIF orientation {finding['orientation']})"
        if (width, height) != (image_width, image_height):
            return (
                f"{label_path}: label is {width}x{height} but its image {image_path.name} is "
                f"{image_width}x{image_height}{turned}"
            )
        bad = [value for value in finding["values"] if not self.valid[value]]
        if not bad:
            return None
        listed = ", ".join(str(value) for value in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        values = f"value {listed} is" if len(bad) == 1 else f"values {listed} are"
        return f"{label_path}: {values} neither {self.allowed}"


def read_cache(path: Path | None) -> dict:
    """The entries of a cache file; none when there is no file, or it is damaged or of another version."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, ValueError, AttributeError) as error:
        log.info("label-check cache %s unreadable (%s): every label is read again", path, error)
    return {}


def usable(entry: object) -> bool:
    """Whether a cache entry has the fields of :func:`inspect_sample` (a cache edited by
    hand, or damaged, is read again rather than trusted)."""
    return isinstance(entry, dict) and "stamps" in entry and (
        isinstance(entry.get("error"), str) or {"size", "image_size", "orientation", "values"} <= entry.keys()
    )


def write_cache(path: Path, dataset: SegmentationDataset, entries: dict) -> None:
    """Atomically: processes checking the same split at once (DDP ranks, two runs) each
    leave a whole file. A cache that cannot be written costs only a re-read next time."""
    data = {"version": CACHE_VERSION, "root": str(dataset.root), "split": dataset.split,
            "layout": {key: dataset.layout[key] for key in ("images", "labels")}, "entries": entries}
    try:
        # Compact: one entry per label, some 100 bytes each instead of a dozen indented lines.
        atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(data, separators=(",", ":"))))
    except OSError as error:
        log.warning(
            "cannot write the label-check cache %s (%s): the next run reads every label again; "
            "point %s at a writable folder, or set it to off", path, error, CACHE_ENV,
        )


def find_bad_labels(
    dataset: SegmentationDataset, workers: int = 0, progress: bool = False, cache_dir: Path | None | str = "env"
) -> dict[str, str]:
    """Check every sample of ``dataset``; returns ``{id: problem}`` of the bad ones, in split
    order, each problem one line naming the file.

    ``workers`` threads read the files (Pillow decodes without holding the GIL); 0 or 1
    reads them in this thread. ``cache_dir``: the cache folder, None for no cache, ``"env"``
    for :func:`label_check_cache_dir`. Logs one line with the count and the time taken.
    """
    began = time.perf_counter()
    rules = LabelRules(dataset)
    directory = label_check_cache_dir() if cache_dir == "env" else cache_dir
    cache_path = cache_file(Path(directory), dataset) if directory is not None else None
    cached = read_cache(cache_path)
    samples = [  # (cache key: the label's path in the layout, image, label)
        (fill_template(dataset.layout["labels"], sample_id), dataset._image_path(sample_id),
         dataset._label_path(sample_id))
        for sample_id in dataset.ids
    ]

    def check(chunk: list[tuple[str, Path, Path]]) -> list[tuple[dict, bool]]:
        results = []
        for key, image_path, label_path in chunk:
            # Stamped before reading: a file rewritten meanwhile has a newer stamp next time.
            stamps = [file_stamp(label_path), file_stamp(image_path)]
            entry = cached.get(key)
            if None not in stamps and usable(entry) and entry["stamps"] == stamps:
                results.append((entry, False))
            else:
                results.append(({"stamps": stamps, **inspect_sample(image_path, label_path)}, True))
        return results

    chunks = [samples[start:start + CHUNK] for start in range(0, len(samples), CHUNK)]
    bar = tqdm(total=len(samples), desc=f"checking labels ({dataset.split})", unit="file", delay=2.0,
               disable=not progress, dynamic_ncols=True)
    results = []
    with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        for chunk_results in (pool.map if pool else map)(check, chunks):
            results.extend(chunk_results)
            bar.update(len(chunk_results))
    bar.close()

    entries, bad, read = {}, {}, 0
    for sample_id, (key, image_path, label_path), (entry, was_read) in zip(dataset.ids, samples, results, strict=True):
        read += was_read
        if None not in entry["stamps"]:  # a file that vanished is not remembered
            entries[key] = entry
        problem = rules.problem(entry, label_path, image_path)
        if problem is not None:
            bad[sample_id] = problem
    if cache_path is not None and (read or set(entries) != set(cached)):
        write_cache(cache_path, dataset, entries)
    where = f"cache {cache_path}" if cache_path is not None else "no cache"
    log.info(
        "checked the %d labels of split %r in %.1f s: %d read, %d unchanged since the last check, %d bad (%s)",
        len(samples), dataset.split, time.perf_counter() - began, read, len(samples) - read, len(bad), where,
    )
    return bad


# The benchmarks scripts/prepare_dataset.py converts, by the dataset config's name.
PREPARED_AS = {
    "voc_aug": "voc_aug", "pascal_context": "pascal_context", "pascal_context59": "pascal_context",
    "coco_stuff10k": "coco_stuff10k", "coco_stuff164k": "coco_stuff164k", "cityscapes": "cityscapes",
    "ade20k": "ade20k",
}


def bad_labels_message(dataset: SegmentationDataset, bad: Mapping[str, str], name: str | None = None) -> str:
    """One line: the first bad sample's problem, how many more there are, and the fixes."""
    first, *others = bad.values()
    count = ""
    if others:
        named = ", ".join(Path(problem.split(": ", 1)[0]).name for problem in others[:3])
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        count = f" ({len(bad)} of the {len(dataset)} samples of split {dataset.split!r} are bad; also {named}{more})"
    if name in PREPARED_AS:
        fix = f"convert the labels with `python scripts/prepare_dataset.py {PREPARED_AS[name]}` (see data/README.md)"
    else:  # the demo, a dataset of one's own: no converter of ours made its labels
        fix = "correct the label file"
    return f"{first}{count}; {fix}, or set dataset.skip_bad=true to leave such samples out"


def refuse_or_leave_out(dataset: SegmentationDataset, bad: Mapping[str, str], name: str | None = None) -> None:
    """Act on :func:`find_bad_labels`: with ``dataset.skip_bad`` leave the samples out (each
    logged and counted, as samples without files are), else stop with one line."""
    if not bad:
        return
    if dataset.skip_bad:
        dataset.leave_out(bad)
        return
    raise DatasetError(bad_labels_message(dataset, bad, name))
