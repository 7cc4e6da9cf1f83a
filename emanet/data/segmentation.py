"""Segmentation datasets: images and label PNGs listed in a split file.

Every benchmark, once prepared (``scripts/prepare_dataset.py``, see data/README.md), is a
folder of RGB images, a folder of single-channel label PNGs (index = class, 255 = ignore)
and split lists of ids. Where each lives is given by three path templates relative to the
dataset root; the defaults are the PASCAL VOC layout::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png
    ROOT/ImageSets/Segmentation/<split>.txt

A template may also use ``{stem}``, the id without its file extension: a dataset of one's
own (``dataset=folder``) lists ``train/photo.jpg`` and finds its label at
``labels/{stem}.png``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from emanet.data.palette import read_label_png
from emanet.data.transforms import seed_transform
from emanet.errors import DatasetError, DatasetNotFoundError

log = logging.getLogger(__name__)

VOC_LAYOUT = {
    "images": "JPEGImages/{id}.jpg",
    "labels": "SegmentationClass/{id}.png",
    "split": "ImageSets/Segmentation/{split}.txt",
}


# What Pillow raises on a bad file; DecompressionBombError (not an OSError) for one of over
# 2 x Image.MAX_IMAGE_PIXELS pixels, whose header may be forged to exhaust memory.
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 = as stored, 5-8 turn the image by a quarter


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag of an open image, 1 (as stored) where it has none."""
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def eight_bits(pixels: np.ndarray) -> np.ndarray:
    """16-bit values as 8-bit ones, round(value * 255 / 65535); values outside 0..65535 clipped."""
    # Exact in integers: value * 255 / 65535 = value / 257 never ends in .5.
    return ((np.clip(pixels, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def eight_bit_rgb(image: Image.Image) -> np.ndarray:
    """A decoded image as RGB (H, W, 3) uint8: 16-bit greyscale (modes I;16, I;16B, I;16L
    and I) scaled by :func:`eight_bits`, any other mode converted by Pillow."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.repeat(eight_bits(np.array(image))[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))


def read_image(path: str | Path, upright: bool = False) -> np.ndarray:
    """Decode an image file to RGB (H, W, 3) uint8 with Pillow.

    Training, evaluation and prediction all decode through here, so they see identical
    pixels. ``upright`` turns a photo as its EXIF orientation says (a phone's portrait
    shot is stored sideways): prediction does, and so do datasets of one's own
    (``dataset.exif_orientation``); the benchmarks keep the stored pixel grid, on which
    their labels were drawn. A file that cannot be decoded raises DatasetError
    naming it.

    16-bit images are scaled to 8 bits, round(value * 255 / 65535): Pillow's
    ``convert("RGB")`` saturates 16-bit grayscale (modes I;16, I;16B, I;16L, I) to white,
    and decodes 16-bit colour to the high byte (value // 256, up to one level off), so
    16-bit colour is decoded with OpenCV instead. Mode I (32-bit integers) is read as
    16-bit, the depth Pillow gives that mode to 16-bit grayscale files; values outside
    0..65535 are clipped.
    """
    import cv2  # here, not at the top of the module: only 16-bit colour files need it

    try:
        with Image.open(path) as image:
            rawmode = image.tile[0].args if image.tile else None  # the stored layout, e.g. "RGB;16B"
            rawmode = rawmode[0] if isinstance(rawmode, tuple) else rawmode
            if image.mode in ("RGB", "RGBA", "LA") and isinstance(rawmode, str) and ";16" in rawmode:
                flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
                pixels = cv2.imread(str(path), flags)  # BGR uint16, alpha dropped as convert("RGB") drops it
                if pixels is not None and pixels.dtype == np.uint16 and pixels.shape[:2] == image.size[::-1]:
                    orientation = exif_orientation(image)
                    image = Image.fromarray(eight_bits(pixels[..., ::-1]))
                    image.getexif()[EXIF_ORIENTATION] = orientation  # for exif_transpose below
            if upright:
                image = ImageOps.exif_transpose(image)
            return eight_bit_rgb(image)
    except DECODE_ERRORS as error:
        raise DatasetError(f"{path}: cannot decode the image ({error})") from None


def reduce_zero_label(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Drop label 0: 0 -> ignore_index, k -> k - 1, ignore_index stays (PASCAL Context's 59
    classes, ADE20K; mmsegmentation's ``reduce_zero_label``)."""
    shifted = label - np.uint8(1)  # uint8 arithmetic wraps 0 to 255
    shifted[(label == 0) | (label == ignore_index)] = ignore_index
    return shifted


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def output_name(sample_id: str) -> str:
    """The name a sample's outputs (predictions/<name>.png) are written under: its id, less
    an image file's extension (a folder dataset's ids are file names, ``train/IMG_1.jpg``)."""
    path = PurePosixPath(sample_id)
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_SUFFIXES else sample_id


def fill_template(template: str, sample_id: str) -> str:
    """A layout template with ``{id}`` and ``{stem}`` (the id without its extension) filled in."""
    return template.format(id=sample_id, stem=str(PurePosixPath(sample_id).with_suffix("")))


class SegmentationDataset(Dataset):
    """Images and label PNGs listed in a split file.

    Args:
        root: the dataset folder.
        split: name of the split list (``train``, ``val``, ``trainaug``...).
        class_names: names of the classes, index order.
        layout: path templates relative to ``root``: ``images`` and ``labels`` with
            ``{id}``, ``split`` with ``{split}``; missing keys take VOC's.
        transform: callable ``(image=HxWx3 uint8, mask=HxW uint8) -> dict`` returning the
            transformed ``image`` tensor (3, h, w) and ``mask`` (h, w); typically an
            albumentations pipeline from :mod:`emanet.data.transforms`.
        reduce_zero_label: map label 0 to the ignore index and shift the others down.
        ignore_index: the label value that marks pixels without a class.
        upright: turn images as their EXIF orientation says (photos of phones, whose masks
            were drawn on the image as viewers show it), as prediction does; False keeps
            the stored pixel grid, on which the benchmarks' labels were drawn.
        skip_bad: leave out samples whose files are missing, unreadable or inconsistent
            (each logged, counted in :attr:`num_skipped`) instead of stopping with an
            error that names the file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        layout: dict[str, str] | None = None,
        transform: Callable[..., dict] | None = None,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        skip_bad: bool = False,
        upright: bool = False,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"dataset not found at {self.root}: see data/README.md")
        self.layout = {**VOC_LAYOUT, **(layout or {})}
        split_file = self.root / self.layout["split"].format(split=split)
        if not split_file.is_file():
            raise DatasetNotFoundError(f"split list not found at {split_file}: see data/README.md")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetNotFoundError(f"split list {split_file} is empty: see data/README.md")
        self.split = split
        self.class_names = tuple(class_names)
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.upright = upright
        self.ignore_index = ignore_index
        self.skip_bad = skip_bad
        # Shared with the DataLoader's workers, which do the loading (and the skipping).
        self._skipped = multiprocessing.Value("i", 0)
        self.ids = self._ids_with_both_files(ids, split_file)

    def _ids_with_both_files(self, ids: list[str], split_file: Path) -> list[str]:
        # One directory listing per folder instead of two stat calls per sample: fast on
        # network file systems, where 10k stats take minutes.
        listings: dict[Path, set[str]] = {}

        def exists(path: Path, what: str) -> bool:
            if path.parent not in listings:
                if not path.parent.is_dir():
                    # A whole folder missing is a layout problem, not a bad sample: skip_bad
                    # would only leave every sample out.
                    raise DatasetNotFoundError(
                        f"{path.parent}: folder of the {what} does not exist; prepare the benchmark with "
                        "`python scripts/prepare_dataset.py <name>` (see data/README.md) or fix dataset.layout"
                    )
                listings[path.parent] = set(p.name for p in path.parent.iterdir())
            return path.name in listings[path.parent]

        kept = []
        for sample_id in ids:
            image, label = self._image_path(sample_id), self._label_path(sample_id)
            problem = None
            if not exists(image, "images"):
                problem = f"{image}: image listed in {split_file} is missing"
            elif not exists(label, "labels"):
                problem = f"{label}: label of image {image.name} is missing"
            if problem is None:
                kept.append(sample_id)
            elif self.skip_bad:
                log.warning("skipping %s", problem)
                self._skipped.value += 1
            else:
                raise DatasetError(f"{problem} (set dataset.skip_bad=true to leave such samples out)")
        if not kept:
            raise DatasetError(f"no usable sample in {split_file}: see data/README.md")
        return kept

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """Samples left out so far, in this process and in every DataLoader worker."""
        return self._skipped.value

    def __len__(self) -> int:
        return len(self.ids)

    def _image_path(self, sample_id: str) -> Path:
        return self.root / fill_template(self.layout["images"], sample_id)

    def _label_path(self, sample_id: str) -> Path:
        return self.root / fill_template(self.layout["labels"], sample_id)

    def image_path(self, index: int) -> Path:
        return self._image_path(self.ids[index])

    def label_path(self, index: int) -> Path:
        return self._label_path(self.ids[index])

    def map_label(self, label: np.ndarray) -> np.ndarray:
        """Stored label values (uint8) -> training values: ``reduce_zero_label`` drops label 0.
        The one place of the mapping, so that the label check (:mod:`emanet.data.label_check`)
        judges the values training sees."""
        return reduce_zero_label(label, self.ignore_index) if self.reduce_zero_label else label

    def leave_out(self, problems: Mapping[str, str]) -> None:
        """Drop the samples ``problems`` names (id -> what is wrong with its files), each
        logged and counted in :attr:`num_skipped` as a sample skipped when loaded is
        (``dataset.skip_bad``); DatasetError when none is left."""
        for problem in problems.values():
            log.warning("skipping %s", problem)
        with self._skipped.get_lock():
            self._skipped.value += sum(sample_id in problems for sample_id in self.ids)
        self.ids = [sample_id for sample_id in self.ids if sample_id not in problems]
        if not self.ids:
            split_file = self.root / self.layout["split"].format(split=self.split)
            raise DatasetError(f"no usable sample in {split_file}: every one is bad (named above); see data/README.md")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The image (H, W, 3) uint8 and label (H, W) uint8 of one sample, checked.

        Raises DatasetError naming the file when a file cannot be decoded, the sizes
        differ, or the label holds a value that is neither a class nor the ignore index.
        """
        image_path, label_path = self.image_path(index), self.label_path(index)
        image = read_image(image_path, upright=self.upright)
        try:
            label = read_label_png(label_path)
        except DECODE_ERRORS as error:
            raise DatasetError(f"{label_path}: cannot decode the label PNG ({error})") from None
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                f"{image_path.name} is {image.shape[1]}x{image.shape[0]}"
            )
        label = self.map_label(label)
        invalid = (label >= self.num_classes) & (label != self.ignore_index)
        if invalid.any():
            raise DatasetError(
                f"{label_path}: label values {sorted(set(np.unique(label[invalid]).tolist()))} are "
                f"neither classes 0-{self.num_classes - 1} nor the ignore index {self.ignore_index}"
            )
        return image, label

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | str] | None:
        """Sample ``index``; ``(index, seed)`` (from a SeededSampler) first seeds the transform."""
        if isinstance(index, tuple):
            index, seed = index
            if self.transform is not None:
                seed_transform(self.transform, seed)
        try:
            image, label = self.load(index)
        except DatasetError as error:
            if not self.skip_bad:
                raise
            log.warning("skipping %s", error)
            with self._skipped.get_lock():
                self._skipped.value += 1
            return None
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        else:
            image = torch.from_numpy(image).permute(2, 0, 1)
            label = torch.from_numpy(label)
        return {"image": image, "label": torch.as_tensor(label).long(), "id": self.ids[index]}


def collate_skipping_bad(samples: list[dict | None]) -> dict | None:
    """``default_collate`` of the samples that loaded; None when none did."""
    samples = [sample for sample in samples if sample is not None]
    return default_collate(samples) if samples else None
