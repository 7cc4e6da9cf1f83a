"""The PASCAL VOC colour map, and label PNGs (palette or 8-bit greyscale) reading/writing."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from emanet.io import atomic_write


def color_map(num_colors: int = 256) -> np.ndarray:
    """The VOC development kit's colour map: (num_colors, 3) uint8, index 255 = (224, 224, 192).

    Colour bits are spread from the index's bits, most significant first, as in the
    devkit's ``labelcolormap.m``.
    """
    colors = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    return colors


def palette(class_colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(256, 3) uint8: ``class_colors`` (a dataset's ``dataset.class_colors``, [r, g, b] per
    class) for the first classes, the VOC colour map for the other indices (255 included)."""
    colors = color_map()
    if class_colors:
        colors[: len(class_colors)] = np.asarray(class_colors, dtype=np.uint8)
    return colors


def colorize(label: np.ndarray, class_colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Class-index map (H, W) -> RGB (H, W, 3) in the classes' colours (VOC's by default)."""
    return palette(class_colors)[label]


LABEL_PNG_MODES = ("P", "L")


def save_label_png(
    label: np.ndarray, path: str | Path, mode: str = "P", class_colors: Sequence[Sequence[int]] | None = None
) -> None:
    """Write a class-index map as a PNG, atomically (temp file + rename).

    ``mode="P"``: a palette PNG in VOC colours (the PASCAL VOC devkit's form), or in
    ``class_colors``, which shows the classes in an image viewer. ``mode="L"``: 8-bit greyscale, the form of
    cityscapesscripts' ``createTrainIdLabelImgs`` and mmsegmentation's converters, whose
    colours (what OpenCV's ``cv2.imread`` returns) are the class indices themselves. Both
    hold the same indices for :func:`read_label_png`.
    """
    if mode not in LABEL_PNG_MODES:
        raise ValueError(f"label PNGs are written in mode 'P' or 'L', not {mode!r}")
    image = Image.fromarray(np.asarray(label, dtype=np.uint8))  # mode "L"
    if mode == "P":
        image.putpalette(palette(class_colors).flatten().tolist())  # turns the "L" image into "P"
    atomic_write(Path(path), partial(image.save, format="PNG"))


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a palette (or grayscale) PNG as its raw indices (H, W) uint8; 255 is kept."""
    with Image.open(path) as image:
        if image.mode not in LABEL_PNG_MODES:
            raise ValueError(
                f"{path}: label PNGs must be palette ('P') or grayscale ('L') images of "
                f"class indices, got mode {image.mode!r}"
            )
        return np.array(image, dtype=np.uint8)
