"""Time the check of every label before training (emanet.data.label_check) on VOC-sized data.

Writes ``--count`` synthetic samples in the layout of ``dataset=voc_aug`` (split in VOC's
proportion: 10,582 trainaug and 1,449 val by default, the real sizes): label PNGs of
class indices with a 255 band on object boundaries, in palette mode as
``scripts/prepare_dataset.py voc_aug`` writes ``SegmentationClassAug`` (``--mode L`` for
greyscale), at the sizes of VOC's images (500x375 and the like), and a low-quality JPEG
of the same size beside each (the check reads only image headers). One label holds a bad
value (37), which every check must find. Then, for each thread count of ``--workers``
(``runtime.num_workers`` in training; 0 and 1 read in the calling thread), both splits are
checked three times:

* cold, from disk: no label-check cache, and every file dropped from the operating
  system's page cache first (``posix_fadvise(DONTNEED)`` after ``sync``: what a first run
  after copying the dataset onto another disk, or after a reboot, meets; a virtual
  machine's host may still cache the disk);
* cold: no label-check cache, the files in the page cache (a first run just after
  preparing the dataset);
* cached: the second run, which only compares each label's and image's size and
  modification time with the cache.

Results go to a results folder (``results.json``, ``results.md``); the synthetic data is
deleted at the end. :func:`record` writes the table into the published benchmarks.md,
between ``<!-- label-check:begin -->`` and ``<!-- label-check:end -->``.
"""

from __future__ import annotations

import datetime
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from emanet.benchmarks.records import machine_cell, machine_description, replace_section
from emanet.data.classes import VOC_CLASSES
from emanet.data.label_check import find_bad_labels
from emanet.data.palette import save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.errors import EmanetError
from emanet.io import atomic_write, write_json

VOC_TRAIN, VOC_VAL = 10582, 1449
LAYOUT = {"labels": "SegmentationClassAug/{id}.png"}  # dataset=voc_aug's
# (width, height) of VOC 2012 images, most common first, with how often each comes.
SIZES = [((500, 375), 0.55), ((500, 333), 0.15), ((375, 500), 0.15), ((500, 334), 0.05),
         ((500, 332), 0.03), ((500, 366), 0.03), ((500, 400), 0.02), ((333, 500), 0.02)]
DISTINCT_LABELS = 32  # per size: written once each, then copied byte for byte (quicker than encoding 12k)
BAD_VALUE = 37
DEFAULT_WORKERS = [0, 2, 4]


class MissedLabelError(EmanetError):
    """The check found another number of bad labels than the one written: the timing is void."""


def synthetic_label(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Background and one to four rectangles or ellipses of VOC classes, each object edged
    with the 5-pixel 255 band of VOC's labels."""
    label = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        rx, ry = rng.integers(20, width // 2), rng.integers(20, height // 2)
        if rng.random() < 0.5:
            inside = (abs(xx - cx) < rx) & (abs(yy - cy) < ry)
        else:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        label[inside] = rng.integers(1, 21)
    edges = np.zeros_like(label, dtype=bool)
    edges[1:] |= label[1:] != label[:-1]
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    band = edges.copy()
    for shift in (1, 2):  # widen the edge to 5 pixels
        band[shift:] |= edges[:-shift]
        band[:-shift] |= edges[shift:]
        band[:, shift:] |= edges[:, :-shift]
        band[:, :-shift] |= edges[:, shift:]
    label[band] = 255
    return label


def write_dataset(root: Path, count: int, mode: str, seed: int = 0) -> dict[str, list[str]]:
    """``count`` samples in the voc_aug layout under ``root``; returns the ids of each split."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    jpegs, pngs = {}, {}
    distinct = max(1, min(DISTINCT_LABELS, count // len(SIZES)))
    for (width, height), _ in SIZES:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=10)
        jpegs[width, height] = buffer.getvalue()
        pngs[width, height] = []
        for number in range(distinct):
            path = root / f"label_{width}x{height}_{number}.png"
            save_label_png(synthetic_label(rng, width, height), path, mode=mode)
            pngs[width, height].append(path.read_bytes())
            path.unlink()
    sizes = [size for size, _ in SIZES]
    weights = np.array([weight for _, weight in SIZES])
    val_count = round(count * VOC_VAL / (VOC_TRAIN + VOC_VAL))
    ids = {"trainaug": [f"2008_{i:06d}" for i in range(count - val_count)],
           "val": [f"2007_{i:06d}" for i in range(val_count)]}
    for split, split_ids in ids.items():
        for sample_id in split_ids:
            size = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
            (root / "JPEGImages" / f"{sample_id}.jpg").write_bytes(jpegs[size])
            label = pngs[size][rng.integers(distinct)]
            (root / "SegmentationClassAug" / f"{sample_id}.png").write_bytes(label)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
    # The one bad label: a value that is neither a VOC class nor 255.
    bad = root / "SegmentationClassAug" / f"{ids['trainaug'][len(ids['trainaug']) // 2]}.png"
    with Image.open(bad) as image:
        label = np.array(image)
    label[0, 0] = BAD_VALUE
    save_label_png(label, bad, mode=mode)
    return ids


def drop_from_page_cache(root: Path) -> None:
    """Evict every file under ``root`` from the page cache. Written back first, in one
    sync (an fsync per file takes longer than the check): dirty pages are not evicted."""
    os.sync()
    for path in root.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def timed_check(root: Path, cache: Path, workers: int) -> tuple[float, int]:
    """Seconds to check both splits, and the bad labels found."""
    datasets = [SegmentationDataset(root, split, VOC_CLASSES, LAYOUT) for split in ("trainaug", "val")]
    start = time.perf_counter()
    bad = sum(len(find_bad_labels(dataset, workers, cache_dir=cache)) for dataset in datasets)
    return time.perf_counter() - start, bad


def measure(root: Path, cache: Path, workers: int) -> dict:
    """Seconds of the check with ``workers`` threads: cold from disk, cold, and cached."""
    row = {"workers": workers}
    for name, drop in (("cold_disk_seconds", True), ("cold_seconds", False), ("cached_seconds", None)):
        if drop is not None:
            shutil.rmtree(cache, ignore_errors=True)
        if drop:
            drop_from_page_cache(root)
        seconds, bad = timed_check(root, cache, workers)
        if bad != 1:
            raise MissedLabelError(f"the check found {bad} bad labels instead of the 1 written")
        row[name] = round(seconds, 2)
    return row


def table(rows: list[dict], files: int) -> str:
    scale = (VOC_TRAIN + VOC_VAL) / files
    lines = ["| threads (runtime.num_workers) | files | cold, from disk (s) | cold (s) | cached (s) | "
             "per file cold / cached (ms) |", "|---|---|---|---|---|---|"]
    for row in rows:
        per_file = f"{row['cold_seconds'] / files * 1e3:.2f} / {row['cached_seconds'] / files * 1e3:.3f}"
        cells = [str(max(1, row["workers"])), str(files), f"{row['cold_disk_seconds']:.1f}",
                 f"{row['cold_seconds']:.1f}", f"{row['cached_seconds']:.2f}", per_file]
        if files != VOC_TRAIN + VOC_VAL:
            cells[2:5] = [f"{cell} (VOC: {float(cell) * scale:.1f})" for cell in cells[2:5]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def record(docs: Path, text_table: str, machine: str, command: str, files: int, mode: str, load: float) -> None:
    """Replace the table between the markers in ``docs``'s benchmarks.md (a new section if absent)."""
    extrapolated = "" if files == VOC_TRAIN + VOC_VAL else (
        f" Measured on {files} files; in brackets, scaled linearly to VOC's {VOC_TRAIN + VOC_VAL}."
    )
    body = (f"{datetime.date.today().isoformat()}, {machine}, {files} label PNGs (mode {mode}) of "
            f"VOC's sizes (`{command}`), load average {load:.2f} at the start.{extrapolated}\n\n{text_table}")
    replace_section(docs, "label-check", body, "Label check before training")


def command_line(count: int, workers: list[int], mode: str, publish: bool) -> str:
    """The command of a measurement, naming only what differs from the defaults."""
    command = "python scripts/benchmark_label_check.py"
    command += "" if count == VOC_TRAIN + VOC_VAL else f" --count {count}"
    command += "" if workers == DEFAULT_WORKERS else " --workers " + " ".join(map(str, workers))
    command += "" if mode == "P" else f" --mode {mode}"
    return command + (" --record" if publish else "")


def label_check_benchmark(
    out: Path, count: int, workers: list[int], mode: str, docs: Path, publish: bool = False
) -> dict:
    """Write ``count`` samples under ``out``, time the check with each thread count of
    ``workers``, delete the samples and keep the results in ``out`` (results.json,
    results.md), and with ``publish`` in ``docs``'s benchmarks.md too."""
    load = os.getloadavg()[0]  # other work on the machine slows every pass
    root, cache = out / "data" / "VOC2012", out / "label_cache"
    try:
        start = time.perf_counter()
        ids = write_dataset(root, count, mode)
        files = sum(len(split_ids) for split_ids in ids.values())
        print(f"wrote {files} samples in {time.perf_counter() - start:.1f} s")
        rows = []
        for threads in workers:
            rows.append(measure(root, cache, threads))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(out / "data", ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    command = command_line(count, workers, mode, publish)
    results = {"machine": machine_description(), "command": command, "files": files, "mode": mode,
               "load_average": load, "rows": rows}
    write_json(results, out / "results.json")
    text_table = table(rows, files)
    atomic_write(out / "results.md", lambda temp: Path(temp).write_text(text_table))
    print(text_table)
    print(f"results in {out}")
    if publish:
        record(docs, text_table, machine_cell({"machine": machine_description()}), command, files, mode, load)
    return results
