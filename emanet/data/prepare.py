"""What the benchmark converters share: atomic, parallel, re-checked label writing.

Each benchmark has a module of its own (:mod:`emanet.data.voc_aug`,
:mod:`~emanet.data.pascal_context`, :mod:`~emanet.data.coco_stuff`,
:mod:`~emanet.data.cityscapes`, :mod:`~emanet.data.ade20k`) that converts the original
label files into single-channel PNGs (index = class, 255 = ignore; palette or 8-bit
greyscale, each as the dataset's official tool or mmsegmentation's converter writes it:
data/README.md says which) and writes the split lists, then checks the counts against the
published ones (:data:`EXPECTED_COUNTS`). Every file is written atomically (temp file +
rename), so an interrupted run leaves no half-written file; a re-run checks each file
written before against its source and rewrites one that differs. A conversion holds a
lock on the dataset folder it writes into, so two runs on one dataset take turns and the
second finds the first's files written. ``emanet-prepare-dataset`` (``scripts/prepare_dataset.py``)
is the command line; data/README.md the walk-through.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from emanet.data.palette import read_label_png, save_label_png
from emanet.data.segmentation import DECODE_ERRORS
from emanet.errors import DatasetError, DatasetNotFoundError
from emanet.io import atomic_write, exclusive_lock

log = logging.getLogger(__name__)

EXPECTED_COUNTS = {
    "voc_aug": {"train": 1464, "val": 1449, "trainaug": 10582},
    "pascal_context": {"train": 4998, "val": 5105},
    "coco_stuff10k": {"train": 9000, "test": 1000},
    "coco_stuff164k": {"train2017": 118287, "val2017": 5000},
    "cityscapes": {"train": 2975, "val": 500, "test": 1525},
    "ade20k": {"training": 20210, "validation": 2000},
}


def read_source_png(png_path: Path, download: str) -> np.ndarray:
    """A label PNG of an original download, raw indices; DatasetError when it does not decode."""
    try:
        return read_label_png(png_path)
    except DECODE_ERRORS as error:
        raise DatasetError(
            f"{png_path}: cannot read the label PNG ({error}); unpack it again from {download} and re-run"
        ) from None


def whole_numbers(values, where: str) -> np.ndarray:
    """``values`` as int64 class ids; DatasetError naming ``where`` unless all are whole numbers.

    A float map cast to integers would be truncated silently (2.7 -> class 2).
    """
    values = np.asarray(values)
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind != "f":
        raise DatasetError(f"{where} holds {values.dtype} values, not class ids")
    fractional = ~np.isfinite(values) | (values != np.floor(values))
    if fractional.any():
        raise DatasetError(
            f"{where} holds values that are not whole numbers ({np.unique(values[fractional]).tolist()[:5]}), "
            "so not class ids"
        )
    return values.astype(np.int64)


def load_mat(path: Path, key: str, download: str):
    if not path.is_file():
        raise DatasetError(f"{path}: MATLAB file is missing; unpack it again from {download} and re-run")
    try:
        content = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as error:  # scipy's reader fails on a damaged file with many types (IndexError for a cut one)
        raise DatasetError(
            f"{path}: cannot read the MATLAB file ({error}); unpack it again from {download} and re-run"
        ) from None
    if key not in content:
        raise DatasetError(f"{path}: no variable {key!r} in the MATLAB file (has {sorted(content)})")
    return content[key]


def write_split(path: Path, ids: Iterable[str]) -> None:
    """Write a split list atomically, one id per line."""
    text = "".join(f"{sample_id}\n" for sample_id in ids)
    atomic_write(path, lambda temp: Path(temp).write_text(text))


def _convert_one(job: tuple[Callable[..., np.ndarray], tuple, Path, str]) -> tuple[str, str] | None:
    """Convert one source; returns (destination, why it was rewritten) for an existing
    output that differed, else None."""
    read, args, destination, mode = job
    label = read(*args)
    problem = None
    if destination.exists():
        problem = label_png_difference(destination, label, mode)
        if problem is None:
            return None
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_label_png(label, destination, mode)
    return None if problem is None else (str(destination), problem)


def label_png_difference(path: Path, expected: np.ndarray, mode: str) -> str | None:
    """Why the label PNG at ``path`` is not ``expected`` written in ``mode``, or None.

    A file that does not decode differs. Only the indices and the mode count: a palette
    PNG with other colours holds the same classes.
    """
    try:
        with Image.open(path) as image:
            found_mode = image.mode
            pixels = np.array(image)
    except DECODE_ERRORS:  # Pillow's message repeats the path the caller names
        return "does not decode"
    if found_mode != mode:
        return f"mode {found_mode!r}, not {mode!r}"
    if pixels.shape != expected.shape:
        return f"{pixels.shape[1]}x{pixels.shape[0]}, not {expected.shape[1]}x{expected.shape[0]}"
    wrong = np.count_nonzero(pixels != expected)
    return f"{wrong} of {expected.size} pixels differ" if wrong else None


def convert_labels(
    jobs: Sequence[tuple[Callable[..., np.ndarray], tuple, Path]], description: str, workers: int = 1, mode: str = "P"
) -> int:
    """``save_label_png(read(*args), destination, mode)`` for each job whose PNG is missing
    or differs from what its source converts to.

    A re-run decodes every source again and compares the existing PNG with it (indices and
    mode): a file another tool wrote, or one a former version wrote wrongly, is not kept
    just because it exists. The rewritten ones are logged in one line. Returns how many
    PNGs were written. ``read`` must be a module-level function so that worker processes
    can receive it.
    """
    existing = sum(job[2].exists() for job in jobs)
    log.info(
        "%s: %d label PNGs to write, %d written before to check against their source",
        description, len(jobs) - existing, existing,
    )
    results = run_jobs(_convert_one, [(*job, mode) for job in jobs], description, workers, chunksize=16)
    rewritten = sorted(result for result in results if result is not None)
    if rewritten:
        more = f" and {len(rewritten) - 5} more" if len(rewritten) > 5 else ""
        named = ", ".join(f"{path} ({problem})" for path, problem in rewritten[:5])
        log.warning(
            "%s: rewrote %d of the %d label PNGs written before, which differed from their source: %s%s",
            description, len(rewritten), existing, named, more,
        )
    return len(jobs) - existing + len(rewritten)


def run_jobs(function: Callable, jobs: Sequence, description: str, workers: int = 1, chunksize: int = 16) -> list:
    """``function(job)`` for every job, in ``workers`` spawned processes (with more than one
    job), with a progress bar; the first exception raised ends it. Returns the results, in
    no particular order. ``function`` must be a module-level function so that worker
    processes can receive it."""
    if workers > 1 and len(jobs) > 1:
        # Ctrl-C sends SIGINT to the workers too. Started while this process ignores it,
        # they ignore it for good (an ignored signal stays ignored across the spawn's exec,
        # and Python leaves it so), so only this process reports it; leaving the with-block
        # terminates them. A Ctrl-C in the instant the pool starts is lost.
        default_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = multiprocessing.get_context("spawn").Pool(workers)
        finally:
            signal.signal(signal.SIGINT, default_handler)
        with pool:
            return list(
                tqdm(pool.imap_unordered(function, jobs, chunksize=chunksize), total=len(jobs), desc=description)
            )
    results = []
    # A for statement, not a comprehension: on an exception it drops the progress bar at
    # once (a comprehension's frame, kept by the traceback, would keep it open), so the bar
    # ends its line before the caller prints the error.
    for job in tqdm(jobs, desc=description):
        results.append(function(job))
    return results


def count_mismatches(dataset: str, counts: dict[str, int]) -> list[str]:
    """One message per split whose size differs from the published one (none for a dataset
    of one's own, which has no published size)."""
    published = EXPECTED_COUNTS.get(dataset, {})
    return [
        f"{dataset} {split}: {count} images, but the published split has {published[split]}"
        for split, count in counts.items()
        if published.get(split, count) != count
    ]


def check_counts(dataset: str, counts: dict[str, int]) -> list[str]:
    """Log each split's size beside the published one; return the mismatches."""
    mismatches = count_mismatches(dataset, counts)
    for split, count in counts.items():
        published = " (as published)" if split in EXPECTED_COUNTS[dataset] else ""
        if not any(message.startswith(f"{dataset} {split}:") for message in mismatches):
            log.info("%s %s: %d images%s", dataset, split, count, published)
    for message in mismatches:
        log.warning("%s", message)
    return mismatches


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found at {path}: see data/README.md")
    return path


def read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetNotFoundError(f"split list not found at {path}: see data/README.md")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def converting_into(dataset_root: Path, output_folders: Iterable[Path]) -> Iterator[None]:
    """Hold the lock on ``dataset_root`` for a whole conversion, after removing the temp
    files of killed runs from ``output_folders``.

    Two jobs preparing the same dataset take turns, and the second skips the files the
    first wrote. Under the lock no other conversion writes there, so every
    ``.<name>.<random>.tmp`` of :func:`~emanet.io.atomic_write` found is stale.
    """
    with exclusive_lock(dataset_root):
        for folder in output_folders:
            stale = list(folder.glob(".*.tmp"))
            for temp in stale:
                temp.unlink()
            if stale:
                log.info("%s: removed %d temp files an interrupted run left", folder, len(stale))
        yield


def check_images(folder: Path, ids_by_split: dict[str, list[str]], download: str) -> None:
    """DatasetError naming the first missing ids unless ``folder/<id>.jpg`` exists for every
    listed id: the loader would stop on them only once training reaches them."""
    listed = dict.fromkeys(i for ids in ids_by_split.values() for i in ids)
    missing = [i for i in listed if not (folder / f"{i}.jpg").is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{folder}: no image <id>.jpg for {len(missing)} listed ids ({', '.join(missing[:5])}{more}); "
            f"unpack {download} completely and re-run"
        )


def copy_if_missing(source: Path, destination: Path) -> None:
    if destination.exists() or not source.exists():
        return
    atomic_write(destination, partial(shutil.copyfile, source))
