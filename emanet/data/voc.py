"""PASCAL VOC-layout segmentation datasets.

Layout (the one the VOC 2012 download unpacks to, and that the demo and the prepared
SBD "aug" labels follow)::

    ROOT/JPEGImages/<id>.jpg
    ROOT/<label_dir>/<id>.png            palette PNG, index = class, 255 = ignore
    ROOT/ImageSets/Segmentation/<split>.txt
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from emanet.data.palette import read_label_png
from emanet.errors import DatasetNotFoundError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB (H, W, 3) uint8 with Pillow.

    Training and evaluation both decode through here, so they see identical pixels.
    """
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


class VOCSegmentation(Dataset):
    """Images and palette-PNG labels listed in a VOC split file.

    Args:
        root: folder holding ``JPEGImages``, the label folder and ``ImageSets``.
        split: name of the split list (``train``, ``val``, ``trainaug``...).
        class_names: names of the classes, index order.
        label_dir: folder of the label PNGs, relative to ``root``.
        transform: callable ``(image=HxWx3 uint8, mask=HxW uint8) -> dict`` returning the
            transformed ``image`` tensor (3, h, w) and ``mask`` (h, w); typically an
            albumentations pipeline from :mod:`emanet.data.transforms`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        label_dir: str = "SegmentationClass",
        transform: Callable[..., dict] | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"dataset not found at {self.root}: see data/README.md")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetNotFoundError(
                f"split list not found at {split_file}: see data/README.md"
            )
        self.ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise DatasetNotFoundError(f"split list {split_file} is empty: see data/README.md")
        self.split = split
        self.class_names = tuple(class_names)
        self.image_dir = self.root / "JPEGImages"
        self.label_dir = self.root / label_dir
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.ids[index]}.jpg"

    def label_path(self, index: int) -> Path:
        return self.label_dir / f"{self.ids[index]}.png"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image (H, W, 3) uint8 and label (H, W) uint8 of one sample."""
        return read_image(self.image_path(index)), read_label_png(self.label_path(index))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        image, label = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        else:
            image = torch.from_numpy(image).permute(2, 0, 1)
            label = torch.from_numpy(label)
        return {"image": image, "label": torch.as_tensor(label).long(), "id": self.ids[index]}
