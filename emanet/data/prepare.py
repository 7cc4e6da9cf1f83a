"""Turn the benchmarks' original downloads into the layout the datasets read.

Each ``prepare_*`` function converts the original label files into single-channel PNGs
(index = class, 255 = ignore; palette or 8-bit greyscale, each as the dataset's official
tool or mmsegmentation's converter writes it: data/README.md says which) and writes the
split lists, then checks the counts against the published ones. Every file is written
atomically (temp file + rename), so an interrupted run leaves no half-written file; a
re-run checks each file written before against its source and rewrites one that differs. A
conversion holds a lock on the dataset folder it writes into, so two runs on one dataset
take turns and the second finds the first's files written.
``scripts/prepare_dataset.py`` is the command line; data/README.md the walk-through.
"""

from __future__ import annotations

import contextlib
import json
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

from emanet.data.classes import COCO_STUFF_UNUSED_IDS, CONTEXT59_CLASSES, CONTEXT_SOURCE_IDS
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

CONTEXT_MAX_ID = 459  # PASCAL Context's classes are ids 1-459; 0 is unlabelled


# ---------------------------------------------------------------------------- label maps


def context_lookup_table() -> np.ndarray:
    """459-class id (0-459) -> 60-class label: the 59 classes to 1..59, everything else to 0."""
    table = np.zeros(CONTEXT_MAX_ID + 1, dtype=np.uint8)
    table[list(CONTEXT_SOURCE_IDS)] = np.arange(1, len(CONTEXT_SOURCE_IDS) + 1)
    return table


def coco_stuff_lookup_table() -> np.ndarray:
    """COCO-Stuff id 0-181 -> one of the 171 used classes (0-170); unused ids and 255 -> 255."""
    table = np.full(256, 255, dtype=np.uint8)
    used = [i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS]
    table[used] = np.arange(len(used))
    return table


def read_source_png(png_path: Path, download: str) -> np.ndarray:
    """A label PNG of an original download, raw indices; DatasetError when it does not decode."""
    try:
        return read_label_png(png_path)
    except DECODE_ERRORS as error:
        raise DatasetError(
            f"{png_path}: cannot read the label PNG ({error}); unpack it again from {download} and re-run"
        ) from None


def voc_label(png_path: Path) -> np.ndarray:
    """VOC 2012's own ``SegmentationClass/<id>.png`` (palette PNG, 255 boundaries kept)."""
    return read_source_png(png_path, "VOCtrainval_11-May-2012.tar")


def sbd_label(mat_path: Path) -> np.ndarray:
    """SBD ``cls/<id>.mat``: struct ``GTcls``, field ``Segmentation`` (H, W class map)."""
    gtcls = _load_mat(mat_path, "GTcls", "benchmark.tgz")
    if not hasattr(gtcls, "Segmentation"):
        raise DatasetError(
            f"{mat_path}: GTcls has no field 'Segmentation' (has {sorted(getattr(gtcls, '_fieldnames', []))}): "
            "not an SBD class map; unpack it again from benchmark.tgz (dataset/cls) and re-run"
        )
    ids = whole_numbers(gtcls.Segmentation, f"{mat_path}: GTcls.Segmentation")
    outside = (ids < 0) | ((ids > 20) & (ids != 255))
    if outside.any():
        # A plain uint8 cast would wrap them around (300 -> 44) into valid-looking classes.
        raise DatasetError(
            f"{mat_path}: GTcls.Segmentation holds ids {sorted(np.unique(ids[outside]).tolist())[:10]} "
            "that are neither 0-20 nor 255: not an SBD class map"
        )
    return ids.astype(np.uint8)


def context_label(mat_path: Path, table: np.ndarray) -> np.ndarray:
    """PASCAL Context ``trainval/<id>.mat``: ``LabelMap`` with 459-class ids -> 60 classes."""
    label_map = whole_numbers(_load_mat(mat_path, "LabelMap", "trainval.tar.gz"), f"{mat_path}: LabelMap")
    _check_context_ids(label_map, f"{mat_path}: LabelMap")
    return table[label_map]


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


def coco_stuff10k_label(mat_path: Path, table: np.ndarray) -> np.ndarray:
    """COCO-Stuff 10k ``annotations/<id>.mat``: ``S`` with ids 1-182, 0 unlabelled."""
    ids = whole_numbers(_load_mat(mat_path, "S", "cocostuff-10k-v1.1.zip"), f"{mat_path}: S")
    outside = (ids < 0) | (ids > 182)
    if outside.any():
        raise DatasetError(
            f"{mat_path}: S holds ids {sorted(np.unique(ids[outside]).tolist())[:10]} outside 0-182: "
            "not a COCO-Stuff 10k annotation"
        )
    # 1-based ids to the 164k numbering; unlabelled 0 becomes 255, ignored.
    return table[np.where(ids == 0, 255, ids - 1)]


def coco_stuff164k_label(png_path: Path, table: np.ndarray) -> np.ndarray:
    """COCO-Stuff 164k ``stuffthingmaps``: PNG with ids 0-181, 255 unlabelled."""
    ids = read_source_png(png_path, "stuffthingmaps_trainval2017.zip")
    outside = (ids > 181) & (ids != 255)
    if outside.any():
        # COCO also offers stuff-only maps (stuff_annotations_trainval2017.zip: 0 unlabelled,
        # 92-182 stuff, 183 other); read as stuffthing maps they would mislabel silently.
        raise DatasetError(
            f"{png_path}: ids {sorted(np.unique(ids[outside]).tolist())[:10]} are neither 0-181 nor 255: "
            "not a stuffthing map; unpack stuffthingmaps_trainval2017.zip (not the stuff-only maps)"
        )
    return table[ids]


def _load_mat(path: Path, key: str, download: str):
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


# -------------------------------------------------------------------------- file writing


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
    """One message per split whose size differs from the published one."""
    return [
        f"{dataset} {split}: {count} images, but the published split has {EXPECTED_COUNTS[dataset][split]}"
        for split, count in counts.items()
        if EXPECTED_COUNTS[dataset].get(split, count) != count
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


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found at {path}: see data/README.md")
    return path


def _read_ids(path: Path) -> list[str]:
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


# ---------------------------------------------------------------------------- benchmarks


def prepare_voc_aug(voc_root: Path, sbd_root: Path, workers: int = 1) -> dict[str, int]:
    """VOC 2012 + SBD -> ``SegmentationClassAug/`` and the train / val / trainaug lists.

    ``voc_root`` is ``VOCdevkit/VOC2012``, ``sbd_root`` SBD's ``benchmark_RELEASE``. VOC's
    own labels (with their 255 boundaries) are kept for VOC's annotated images; SBD's
    ``cls/*.mat`` labels fill in the rest. trainaug = VOC train + SBD train + SBD val - VOC
    val. Images SBD has but ``JPEGImages`` lacks are copied over.
    """
    voc_root, sbd = Path(voc_root), Path(sbd_root) / "dataset"
    _require_dir(voc_root / "JPEGImages", "PASCAL VOC 2012 images")
    _require_dir(sbd / "cls", "SBD labels (benchmark_RELEASE/dataset/cls)")
    lists = voc_root / "ImageSets" / "Segmentation"
    voc_train, voc_val = _read_ids(lists / "train.txt"), _read_ids(lists / "val.txt")
    sbd_ids = _read_ids(sbd / "train.txt") + _read_ids(sbd / "val.txt")
    excluded = set(voc_val)
    trainaug = sorted(set(voc_train).union(sbd_ids) - excluded)

    output = voc_root / "SegmentationClassAug"
    voc_labels = set(voc_train) | set(voc_val)
    jobs = []
    with converting_into(voc_root, [output, voc_root / "JPEGImages", lists]):
        for sample_id in sorted(voc_labels | set(sbd_ids)):
            destination = output / f"{sample_id}.png"
            if sample_id in voc_labels:
                jobs.append((voc_label, (voc_root / "SegmentationClass" / f"{sample_id}.png",), destination))
            else:
                jobs.append((sbd_label, (sbd / "cls" / f"{sample_id}.mat",), destination))
                _copy_if_missing(sbd / "img" / f"{sample_id}.jpg", voc_root / "JPEGImages" / f"{sample_id}.jpg")
        check_images(
            voc_root / "JPEGImages", {"train": voc_train, "val": voc_val, "trainaug": trainaug},
            "VOCtrainval_11-May-2012.tar and benchmark.tgz",
        )
        # Palette: for VOC's images this folder holds VOC's own SegmentationClass labels, which
        # the devkit writes as palette PNGs (its colour map). mmsegmentation's
        # tools/dataset_converters/voc_aug.py writes SBD's as greyscale and reads VOC's as they are.
        convert_labels(jobs, "SegmentationClassAug", workers, mode="P")
        write_split(lists / "trainaug.txt", trainaug)
    counts = {"train": len(voc_train), "val": len(voc_val), "trainaug": len(trainaug)}
    check_counts("voc_aug", counts)
    return counts


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
    _require_dir(voc2010_root / "JPEGImages", "PASCAL VOC 2010 images")
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
        _require_dir(annotations, "PASCAL Context annotations (trainval/*.mat or trainval_merged.json)")
        annotated = {path.stem for path in annotations.glob("*.mat")}
        ids = {
            split: [i for i in _read_ids(voc2010_root / "ImageSets" / "Main" / f"{split}.txt") if i in annotated]
            for split in ("train", "val")
        }
        jobs = {
            split: [(context_label, (annotations / f"{i}.mat", table), output / f"{i}.png") for i in split_ids]
            for split, split_ids in ids.items()
        }
    check_images(voc2010_root / "JPEGImages", ids, "VOCtrainval_03-May-2010.tar")
    lists = voc2010_root / "ImageSets" / "SegmentationContext"
    with converting_into(voc2010_root, [output, lists]):
        for split in ("train", "val"):
            # Greyscale: the release has no PNGs, and mmsegmentation's
            # tools/dataset_converters/pascal_context.py writes these so.
            convert_labels(jobs[split], f"SegmentationClassContext ({split})", workers, mode="L")
            write_split(lists / f"{split}.txt", ids[split])
    counts = {split: len(split_ids) for split, split_ids in ids.items()}
    check_counts("pascal_context", counts)
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


def prepare_coco_stuff10k(root: Path, workers: int = 1) -> dict[str, int]:
    """COCO-Stuff 10k (``cocostuff-10k-v1.1``): ``annotations/*.mat`` -> ``labels171/*.png``.

    The split lists are the release's own ``imageLists/{train,test}.txt``.
    """
    root = Path(root)
    _require_dir(root / "images", "COCO-Stuff 10k images")
    _require_dir(root / "annotations", "COCO-Stuff 10k annotations")
    table = coco_stuff_lookup_table()
    ids = {split: _read_ids(root / "imageLists" / f"{split}.txt") for split in ("train", "test")}
    check_images(root / "images", ids, "cocostuff-10k-v1.1.zip")
    with converting_into(root, [root / "labels171"]):
        for split, split_ids in ids.items():
            jobs = [
                (coco_stuff10k_label, (root / "annotations" / f"{i}.mat", table), root / "labels171" / f"{i}.png")
                for i in split_ids
            ]
            # Greyscale: the release has .mat files only, and mmsegmentation's
            # tools/dataset_converters/coco_stuff10k.py writes these so.
            convert_labels(jobs, f"labels171 ({split})", workers, mode="L")
    counts = {split: len(split_ids) for split, split_ids in ids.items()}
    check_counts("coco_stuff10k", counts)
    return counts


def prepare_coco_stuff164k(root: Path, workers: int = 1) -> dict[str, int]:
    """COCO-Stuff 164k: ``annotations/{train,val}2017/*.png`` -> ``labels171/`` + ``splits/``.

    ``root`` holds COCO 2017's ``images/{train2017,val2017}`` and the unpacked
    ``stuffthingmaps_trainval2017.zip`` as ``annotations/{train2017,val2017}``.
    """
    root = Path(root)
    table = coco_stuff_lookup_table()
    ids = {}
    for split in ("train2017", "val2017"):
        _require_dir(root / "images" / split, f"COCO 2017 {split} images")
        maps = _require_dir(root / "annotations" / split, f"COCO-Stuff {split} maps (stuffthingmaps_trainval2017)")
        ids[split] = sorted(f"{split}/{path.stem}" for path in maps.glob("*.png"))
    check_images(root / "images", ids, "COCO 2017's train2017.zip and val2017.zip")
    with converting_into(root, [root / "splits", *(root / "labels171" / split for split in ids)]):
        for split, split_ids in ids.items():
            jobs = [
                (coco_stuff164k_label, (root / "annotations" / f"{i}.png", table), root / "labels171" / f"{i}.png")
                for i in split_ids
            ]
            # Greyscale, as mmsegmentation's tools/dataset_converters/coco_stuff164k.py writes them.
            convert_labels(jobs, f"labels171 ({split})", workers, mode="L")
            write_split(root / "splits" / f"{split}.txt", split_ids)
    counts = {split: len(split_ids) for split, split_ids in ids.items()}
    check_counts("coco_stuff164k", counts)
    return counts


def _copy_if_missing(source: Path, destination: Path) -> None:
    if destination.exists() or not source.exists():
        return
    atomic_write(destination, partial(shutil.copyfile, source))

