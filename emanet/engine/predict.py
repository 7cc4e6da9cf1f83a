"""Segmenting image files with a trained checkpoint: ``scripts/predict.py``'s job.

A run over a folder of photos is long and its files are the user's, not a prepared
dataset: a file that cannot be decoded is reported and skipped (``stop_on_bad_file``),
``predictions.json`` is rewritten as the run goes, and a run stopped by a signal or a crash
resumes where it was when re-run into the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from emanet.data import dataset_class_names
from emanet.data.palette import colorize, save_label_png
from emanet.data.segmentation import DECODE_ERRORS, IMAGE_SUFFIXES, read_image
from emanet.data.transforms import eval_transform
from emanet.engine.checkpoint import checkpoint_file
from emanet.engine.evaluate import evaluation_settings, prediction_writer, protocol_record
from emanet.engine.evaluator import is_multi_scale
from emanet.engine.run_directory import own_run_dir, run_directory_lock
from emanet.engine.runtime import (
    configure_runtime,
    leave_stopping_to_the_training_process,
    loader_workers,
    log_to_file_only,
    size_grouped_batches,
)
from emanet.engine.segmenter import Segmenter
from emanet.errors import ConfigError, DatasetError, PredictionStopped
from emanet.io import atomic_write, write_json

log = logging.getLogger(__name__)

# Elements of the float32 class probabilities resized to an image's full resolution that
# exist at once (64 MiB): the rows of a strip, whatever the image's size.
STRIP_ELEMENTS = 2**24
# predictions.json is rewritten after a batch once SAVE_INTERVAL seconds have passed since
# the last write, and at least SAVE_COST_FACTOR times as long as that write took: a run
# killed outright (SIGKILL, a crash) redoes at most a few seconds of images, and the
# rewrites (8 ms for 1000 images, 0.7 s for 100 000 on a busy 2-core machine) stay under
# 5% of any run.
SAVE_INTERVAL = 2.0
SAVE_COST_FACTOR = 20
# Exit status of a run stopped by SIGINT or SIGTERM: the shell's for Ctrl-C. One status
# for both, as training has one (3): "stopped, re-run the same command to resume".
# The outputs of an image, by folder and suffix, as the eval.save_* keys enable them.
OUTPUTS = {"predictions": ".png", "overlays": ".jpg"}
# Ctrl-C, and what a scheduler, `timeout` or `kill` sends first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def find_images(inputs: Sequence[str]) -> dict[str, Path]:
    """The image files that ``inputs`` name, by the id their outputs are written under.

    An input is an image file (id: its name without suffix) or a folder, searched
    recursively for files ending in one of IMAGE_SUFFIXES (id: the path inside the
    folder without suffix, so sub-folders are kept in the output).

    Inside a folder, hidden files and folders (a name starting with '.') are left out:
    they are metadata or caches, not photos (macOS's ``._IMG_0001.JPG`` AppleDouble
    sidecars, ``.thumbs/``, ``.git/``), and hidden folders are not even searched. A hidden
    file named as an input itself is segmented: the user asked for that file.
    """
    found: dict[str, Path] = {}
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            files = images_in_folder(path)
            if not files:
                raise ConfigError(
                    f"input={entry}: {path} holds no image files ({' '.join(IMAGE_SUFFIXES)}; hidden files "
                    "and folders, named with a leading '.', are left out)"
                )
            named = [(file.relative_to(path).with_suffix("").as_posix(), file) for file in files]
        elif path.is_file():
            named = [(path.stem, path)]
        else:
            raise ConfigError(
                f"input={entry}: no such file or folder; pass input=IMAGE, input=FOLDER or input=[A,B,...]"
            )
        for sample_id, file in named:
            if sample_id in found:
                raise ConfigError(
                    f"input: {found[sample_id]} and {file} would both be written as {sample_id}.png; "
                    "rename one or segment them in separate runs"
                )
            found[sample_id] = file
    return found


def images_in_folder(folder: Path) -> list[Path]:
    """The image files in ``folder`` and its sub-folders, sorted, hidden ones left out
    (:func:`find_images`). A sub-folder that cannot be listed is named in a warning."""

    def unlisted(error: OSError) -> None:
        log.warning("left out %s: %s", error.filename, error.strerror or error)

    files = []
    for directory, folders, names in os.walk(folder, onerror=unlisted):
        folders[:] = [name for name in folders if not name.startswith(".")]  # pruned: never descended into
        for name in names:
            file = Path(directory) / name
            if not name.startswith(".") and file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                files.append(file)
    return sorted(files)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The size an image is segmented at: its own, or with ``max_side`` set and exceeded,
    scaled down so that its long side is ``max_side`` (the other rounded, at least 1)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class ImageFiles(Dataset):
    """Normalised images (3, H, W) of the given files, with their ids.

    An image whose long side is over ``max_side`` is normalised at its working size
    (:func:`working_size`), resized from its uint8 pixels with OpenCV's area averaging;
    its full-resolution pixels come along as ``pixels`` (H, W, 3) uint8, for the overlay.
    Batch them with :func:`collate_images`.
    """

    def __init__(
        self, files: dict[str, Path], mean: Sequence[float], std: Sequence[float], max_side: int | None = None
    ) -> None:
        self.ids = list(files)
        self.files = list(files.values())
        self.transform = eval_transform(mean, std)
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index]

    def __getitem__(self, index: int) -> dict:
        """The sample, or ``{"id", "error"}`` for a file that cannot be decoded: returned, not
        raised, so that the main process decides whether it stops the run, and an error in a
        DataLoader worker does not end the loader (nor arrive wrapped in the worker's
        traceback)."""
        try:
            image = read_image(self.files[index], upright=True)
        except DatasetError as error:
            return {"id": self.ids[index], "error": str(error)}
        height, width = working_size(*image.shape[:2], self.max_side)
        if (height, width) == image.shape[:2]:
            return {"image": self.transform(image=image)["image"], "id": self.ids[index]}
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return {
            "image": self.transform(image=resized)["image"], "pixels": torch.from_numpy(image), "id": self.ids[index]
        }


def collate_images(samples: list[dict]) -> dict:
    """A loader batch of :class:`ImageFiles` samples: ``batches``, the samples that loaded,
    collated a tensor per size, and ``failed``, (id, message) of the files that did not.

    A batch's files are of one stored size (:func:`size_grouped_batches`), but an EXIF
    orientation can turn one of them upright the other way: such samples are collated
    apart rather than failing to stack.
    """
    groups: dict[tuple, list[dict]] = {}
    for sample in samples:
        if "error" not in sample:
            pixels = tuple(sample["pixels"].shape) if "pixels" in sample else None
            groups.setdefault((tuple(sample["image"].shape), pixels), []).append(sample)
    return {
        "batches": [default_collate(group) for group in groups.values()],
        "failed": [(sample["id"], sample["error"]) for sample in samples if "error" in sample],
    }


def full_resolution_classes(probabilities: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The classes (height, width) uint8, on the CPU, of class probabilities (classes, h, w)
    resized bilinearly to (height, width) with half-pixel centres.

    The probabilities are resized and their argmax taken a strip of rows at a time
    (STRIP_ELEMENTS), so that those of the full resolution never exist at once: each
    strip's rows are interpolated from their two source rows, then along the width with
    ``F.interpolate``. The result is ``F.interpolate(size=(height, width),
    align_corners=False)``'s argmax but for float rounding: a pixel may differ where two
    classes' probabilities tie to within it.
    """
    num_classes, source_height, _ = probabilities.shape
    rows_per_strip = max(1, STRIP_ELEMENTS // (num_classes * width))
    classes = torch.empty((height, width), dtype=torch.uint8)
    for top in range(0, height, rows_per_strip):
        rows = torch.arange(top, min(top + rows_per_strip, height), device=probabilities.device)
        source = ((rows + 0.5) * (source_height / height) - 0.5).clamp(min=0)
        above = source.long()  # floor, as source >= 0
        below = (above + 1).clamp(max=source_height - 1)
        weight = (source - above)[:, None]  # (rows, 1): the share of the row below
        strip = probabilities[:, above] * (1 - weight) + probabilities[:, below] * weight  # (classes, rows, w)
        strip = F.interpolate(strip.transpose(0, 1), size=width, mode="linear", align_corners=False)
        classes[top : top + len(rows)] = strip.argmax(1).to(torch.uint8).cpu()
    return classes


def write_full_resolution(
    cfg: DictConfig, run_dir: Path, sample_id: str, pixels: np.ndarray, classes: np.ndarray
) -> None:
    """``predictions/<id>.png`` and ``overlays/<id>.jpg`` as ``prediction_writer`` writes them,
    for an image segmented at a smaller working size: the overlay is blended from its
    uint8 pixels a strip of rows at a time rather than from a normalised float copy."""
    if cfg.eval.save_predictions:
        path = run_dir / "predictions" / f"{sample_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_label_png(classes, path, class_colors=cfg.dataset.class_colors)
    if cfg.eval.save_overlays:
        overlay = np.empty_like(pixels)
        rows_per_strip = max(1, STRIP_ELEMENTS // (3 * pixels.shape[1]))
        for top in range(0, pixels.shape[0], rows_per_strip):
            rows = slice(top, top + rows_per_strip)
            overlay[rows] = (0.5 * pixels[rows] + 0.5 * colorize(classes[rows], cfg.dataset.class_colors)).astype(
                np.uint8)
        path = run_dir / "overlays" / f"{sample_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, partial(Image.fromarray(overlay).save, format="JPEG"))


def images(count: int) -> str:
    """"1 image", "2 images": for messages."""
    return f"{count} image{'' if count == 1 else 's'}"


def input_list(cfg: DictConfig) -> list[str]:
    """``input`` as a list: one path, or a list of them."""
    return [str(entry) for entry in cfg.input] if OmegaConf.is_list(cfg.input) else [str(cfg.input)]


# The entries of predictions.json that make its outputs what they are: a run into the same
# directory resumes only where all are the same, and redoes everything otherwise. By the
# name a message gives a difference.
IDENTITY = {
    "experiment": "experiment", "checkpoint": "checkpoint", "checkpoint_file": "checkpoint",
    "iteration": "checkpoint", "backend": "backend", "classes": "classes", "normalization": "dataset.mean/std",
    "eval": "eval protocol",
    "max_side": "max_side", "outputs": "eval.save_predictions/save_overlays",
}


def run_record(cfg: DictConfig, segmenter: Segmenter) -> dict:
    """The settings predictions.json opens with, as JSON would read them back (so that an
    earlier run's compare equal): what was segmented how, with which checkpoint.

    The checkpoint is told apart by its path, size and modification time and the iteration
    it holds rather than by a hash of its contents, which would read hundreds of MB at
    every start: a checkpoint rewritten in place (a training run's ``last.pt``) changes
    them.
    """
    path = checkpoint_file(cfg.checkpoint)
    stat = path.stat()
    record = {
        "experiment": cfg.name,
        "checkpoint": str(path),
        "checkpoint_file": {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "iteration": segmenter.trained.get("iteration"),
        "backend": segmenter.backend,
        "eval": protocol_record(cfg, segmenter.amp, segmenter.output_stride),
        "classes": list(dataset_class_names(cfg.dataset)),
        "normalization": {"mean": list(cfg.dataset.mean), "std": list(cfg.dataset.std)},
        "max_side": cfg.max_side,
        "outputs": {"predictions": bool(cfg.eval.save_predictions), "overlays": bool(cfg.eval.save_overlays)},
    }
    return json.loads(json.dumps(record))


def output_paths(run_dir: Path, sample_id: str, outputs: dict[str, bool]) -> list[Path]:
    return [run_dir / folder / f"{sample_id}{suffix}" for folder, suffix in OUTPUTS.items() if outputs[folder]]


def intact(path: Path) -> bool:
    """Whether ``path`` is an image that opens and passes Pillow's check (a PNG's CRCs)."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except DECODE_ERRORS:
        return False


def earlier_run(run_dir: Path, record: dict, sources: dict[str, str]) -> tuple[dict[str, list[int]], str, int] | None:
    """The images an earlier run into ``run_dir`` segmented that this one keeps, with the
    size each was segmented at, and the start of the line that says so with its log level
    (a warning where outputs are replaced); None where no earlier run left a
    predictions.json. ``sources``: this run's files (resolved paths) by id.

    Kept: those its predictions.json lists as segmented, with the same settings
    (:data:`IDENTITY`), from the same file, whose outputs are present and readable. The
    others are redone (their outputs are removed by :func:`remove_outputs_but`).
    """
    path = run_dir / "predictions.json"
    if not path.is_file():
        return None
    try:
        earlier = json.loads(path.read_text())
        listed = {
            sample_id: (source, earlier["working_sizes"][sample_id])
            for sample_id, source in earlier["images"].items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        note = f"replacing the outputs in {run_dir}, whose predictions.json cannot be read ({error})"
        return {}, note, logging.WARNING
    differences = list(dict.fromkeys(name for key, name in IDENTITY.items() if earlier.get(key) != record[key]))
    if differences:
        return {}, (
            f"replacing the predictions of {images(len(listed))} in {run_dir}, made with another "
            f"{', '.join(differences)}: segmenting all {images(len(sources))} of this run anew"
        ), logging.WARNING
    kept, damaged = {}, 0
    for sample_id, (source, size) in listed.items():
        if sources.get(sample_id) != source:
            continue
        if all(intact(output) for output in output_paths(run_dir, sample_id, record["outputs"])):
            kept[sample_id] = size
        else:
            damaged += 1
    rest = len(sources) - len(kept)
    return kept, (
        f"resuming {run_dir}: {len(kept)} of {images(len(sources))} were segmented there with this checkpoint and "
        f"protocol; {f'segmenting the other {rest}' if rest else 'nothing left to segment'}"
        + (f" ({damaged} of them again: outputs missing or unreadable)" if damaged else "")
    ), logging.INFO


def remove_outputs_but(run_dir: Path, kept: dict, files: dict[str, Path]) -> int:
    """Remove every output in ``run_dir`` but those of the ``kept`` images; returns how many
    images not in this run had some. A directory that predictions.json describes holds the
    outputs it lists and no others (those of an earlier run's other images, of one that
    was being written when it stopped, of a replaced protocol). Leftover temporary files
    of writes cut short by a kill go too."""
    gone = set()
    for folder, suffix in OUTPUTS.items():
        top = run_dir / folder
        for directory, _, names in os.walk(top, topdown=False):
            for name in names:
                output = Path(directory) / name
                sample_id = output.relative_to(top).with_suffix("").as_posix()
                temporary = name.startswith(".") and name.endswith(".tmp")
                if temporary or (name.endswith(suffix) and sample_id not in kept):
                    output.unlink()
                    if not temporary and sample_id not in files:
                        gone.add(sample_id)
            if Path(directory) != top and not any(Path(directory).iterdir()):
                Path(directory).rmdir()
    return len(gone)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the run was; ``args[0]``: the signal's name. A
    KeyboardInterrupt, so that no ``except Exception`` on the way takes it for an error,
    and a DataLoader worker that gets it before it ignores signals ends quietly."""


class StopSignals:
    """While entered, SIGINT and SIGTERM raise :class:`Stopped` (with the signal's name) at
    once rather than after the image under way, whose multi-scale passes can take minutes
    on a large photo: outputs are written atomically, so stopping mid-image loses only
    that image's work. Within :meth:`writing` (an image's outputs written and noted as
    done) the signal waits for the end of the block, so that predictions.json lists
    exactly the images whose outputs exist. Later signals are ignored while the run
    writes its record; the previous handlers are restored on exit. (Python lets only the
    main thread set handlers: elsewhere, KeyboardInterrupt stops the run.)
    """

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.protected = False
        self.pending: str | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exception: object) -> None:
        for number, handler in self.previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the nearest.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def handle(self, number: int, frame: object) -> None:
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        if self.protected:
            self.pending = signal.Signals(number).name
            return
        raise Stopped(signal.Signals(number).name)

    @contextmanager
    def writing(self) -> Iterator[None]:
        self.protected = True
        try:
            yield
        finally:
            self.protected = False
        if self.pending is not None:
            raise Stopped(self.pending)


class Progress:
    """predictions.json: the run's settings, the images segmented so far (each with the file
    it came from and the size it was segmented at), those skipped and why, rewritten as the
    run goes (:data:`SAVE_INTERVAL`) so that a stopped run is resumed where it was."""

    def __init__(
        self, path: Path, record: dict, files: dict[str, Path], sources: dict[str, str], kept: dict[str, list[int]]
    ) -> None:
        self.path = path
        self.record = record
        self.files = files
        self.sources = sources
        self.working_sizes = dict(kept)
        self.kept = len(kept)
        self.skipped: dict[str, dict[str, str]] = {}
        self.saved_at = -float("inf")
        self.interval = SAVE_INTERVAL

    @property
    def segmented(self) -> int:
        return len(self.working_sizes)

    def done(self, sample_id: str, size: Sequence[int]) -> None:
        """Note an image whose outputs are all written."""
        self.working_sizes[sample_id] = [int(side) for side in size]

    def skip(self, sample_id: str, reason: str) -> None:
        self.skipped[sample_id] = {"file": self.sources[sample_id], "reason": reason}

    def summary(self, finished: bool = False, stopped_by: str | None = None) -> dict:
        order = [sample_id for sample_id in self.files if sample_id in self.working_sizes]  # the input's
        summary = {
            **self.record,
            "finished": finished,
            "remaining": len(self.files) - self.segmented - len(self.skipped),
            "images": {sample_id: self.sources[sample_id] for sample_id in order},
            "working_sizes": {sample_id: self.working_sizes[sample_id] for sample_id in order},
            "skipped": self.skipped,
        }
        if stopped_by is not None:
            summary["stopped_by"] = stopped_by
        return summary

    def save(self, force: bool = False, **state: object) -> None:
        """Write predictions.json if :data:`SAVE_INTERVAL` has passed (or ``force``)."""
        started = time.monotonic()
        if force or started - self.saved_at >= self.interval:
            write_json(self.summary(**state), self.path)
            self.saved_at = time.monotonic()
            self.interval = max(SAVE_INTERVAL, SAVE_COST_FACTOR * (self.saved_at - started))


def predict_files(cfg: DictConfig, run_dir: Path) -> dict:
    """``scripts/predict.py``: segment the images of ``input`` with ``checkpoint``.

    Uses the ``eval`` protocol (scales, flip, whole or sliding-window inference,
    precision, EM iterations). Writes ``predictions/<id>.png`` (class-index palette PNGs)
    and ``overlays/<id>.jpg`` into ``run_dir``, as ``eval.save_predictions`` /
    ``eval.save_overlays`` say, with ``config.yaml`` and ``predictions.json`` (settings,
    the file each id came from and the size it was segmented at, the files skipped and
    why); returns the contents of the latter.

    An image whose long side is over ``max_side`` runs the protocol at a working size
    with that long side; its class probabilities are resized back to the full resolution
    a strip at a time (:func:`full_resolution_classes`), which bounds the memory of any
    photo. Images within ``max_side`` are segmented at their own size, as evaluation does.

    A file that cannot be decoded is named in a warning and skipped, or, with
    ``stop_on_bad_file``, stops the run with a DatasetError. predictions.json is rewritten
    as the run goes (:class:`Progress`); a re-run into the same ``run_dir`` keeps what an
    earlier one segmented with the same settings (:func:`earlier_run`) and redoes the
    rest. SIGINT or SIGTERM ends the run with one line and :class:`PredictionStopped`.
    """
    with ExitStack() as stack:
        stop = stack.enter_context(StopSignals())
        progress = None
        try:
            files = find_images(input_list(cfg))  # a folder of 100 000 photos on a network share takes a while
            run_dir, note = own_run_dir(run_dir, "predict")  # said by the Hydra callback for a single run
            if note:
                log.warning("%s", note)
            stack.enter_context(run_directory_lock(run_dir, job="predict"))
            segmenter = Segmenter.from_config(cfg, configure_runtime(cfg), cfg.backend)
            settings = evaluation_settings(segmenter.network, cfg) if segmenter.backend == "pytorch" else nullcontext()
            with settings:
                record = run_record(cfg, segmenter)
                sources = {sample_id: str(file.resolve()) for sample_id, file in files.items()}
                earlier = earlier_run(run_dir, record, sources)
                kept, note, level = earlier or ({}, None, logging.INFO)
                progress = Progress(run_dir / "predictions.json", record, files, sources, kept)
                progress.save(force=True)  # before the removal: the record never lists a removed output
                if earlier is not None:  # a folder predict made: its outputs are predict's to remove
                    gone = remove_outputs_but(run_dir, kept, files)
                    removed = f"; removed the outputs of {images(gone)} not in this run" if gone else ""
                    log.log(level, "%s%s", note, removed)
                OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
                segment(cfg, run_dir, segmenter, progress, stop)
        except KeyboardInterrupt as interrupt:
            name = interrupt.args[0] if isinstance(interrupt, Stopped) and interrupt.args else "SIGINT"
            stopped(name, progress)
    summary = progress.summary(finished=True)
    if progress.skipped and not progress.segmented:
        first = next(iter(progress.skipped.values()))
        raise DatasetError(
            f"none of the {images(len(files))} could be read (see predictions.json): {first['file']}: "
            f"{first['reason']}"
        )
    protocol = "MS+flip" if is_multi_scale(cfg.eval.scales, cfg.eval.flip) else "single scale"
    resumed = f", {progress.kept} of them in an earlier run" if progress.kept else ""
    skipped = f", skipped {len(progress.skipped)} (see predictions.json)" if progress.skipped else ""
    log.info("segmented %s (%s%s)%s; results in %s", images(progress.segmented), protocol, resumed, skipped, run_dir)
    return summary


def stopped(name: str, progress: Progress | None) -> None:
    """End a run stopped by signal ``name``: predictions.json of what was done, one line (on
    stderr, as an error's, and in the job's log file), then :class:`PredictionStopped`, which
    the entry points end with its exit status (130)."""
    if progress is None:
        message = f"stopped by {name} before segmenting began; re-run the same command to start it"
    else:
        progress.save(force=True, stopped_by=name)
        skipped = f" ({len(progress.skipped)} skipped)" if progress.skipped else ""
        message = (
            f"stopped by {name} after {progress.segmented} of {images(len(progress.files))}{skipped}; "
            f"{progress.path} lists them; re-run the same command to resume"
        )

    log_to_file_only(logging.WARNING, message)
    print(message, file=sys.stderr, flush=True)
    raise PredictionStopped(message)


def segment(cfg: DictConfig, run_dir: Path, segmenter: Segmenter, progress: Progress, stop: StopSignals) -> None:
    """Segment the images of ``progress`` not yet done, noting each as its outputs are
    written; a file that cannot be decoded is skipped, or stops the run (``stop_on_bad_file``)."""
    dataset = ImageFiles(progress.files, cfg.dataset.mean, cfg.dataset.std, cfg.max_side)
    pending = [index for index, sample_id in enumerate(dataset.ids) if sample_id not in progress.working_sizes]
    loader = DataLoader(
        dataset, batch_sampler=size_grouped_batches(dataset, pending, cfg.eval.batch_size),
        num_workers=loader_workers(cfg.runtime.num_workers), pin_memory=segmenter.device.type == "cuda",
        collate_fn=collate_images,
        # The main process stops the run at SIGINT and shuts its workers down; left to
        # themselves, workers would die of the Ctrl-C sent to the whole process group, and
        # the loader would report that with a traceback of its own.
        worker_init_fn=leave_stopping_to_the_training_process,
    )
    write = prediction_writer(cfg, run_dir)
    batches = iter(loader)
    bar = tqdm(batches, total=len(loader), desc="predict", disable=not cfg.runtime.progress, dynamic_ncols=True)
    try:
        for batch in bar:
            for sample_id, message in batch["failed"]:
                if cfg.stop_on_bad_file:
                    progress.save(force=True)
                    raise DatasetError(f"{message} (stop_on_bad_file=true; false skips such files)")
                file = progress.files[sample_id]
                reason = message.removeprefix(f"{file}: ")
                log.warning("skipping %s: %s", file, reason)
                progress.skip(sample_id, reason)
            for images in batch["batches"]:
                size = list(images["image"].shape[-2:])
                if "pixels" not in images:
                    prediction, _ = segmenter.predict_classes(images["image"], images["id"])
                    with stop.writing():
                        write(images, prediction)
                        for sample_id in images["id"]:
                            progress.done(sample_id, size)
                    continue
                # Over max_side: the probabilities at the working size, taken to the full resolution strip by strip.
                probabilities, _ = segmenter.probabilities(images["image"], images["id"])
                for sample_id, pixels, image_probabilities in zip(
                    images["id"], images["pixels"], probabilities, strict=True
                ):
                    classes = full_resolution_classes(image_probabilities, *pixels.shape[:2])
                    with stop.writing():
                        write_full_resolution(cfg, run_dir, sample_id, pixels.numpy(), classes.numpy())
                        progress.done(sample_id, size)
            progress.save()
        progress.save(force=True, finished=True)
    finally:
        bar.close()
        # Now rather than when the iterator is collected: a run stopped mid-batch leaves it
        # referenced from the traceback, with its workers waiting.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
