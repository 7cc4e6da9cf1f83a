"""The PASCAL VOC colour map and palette PNG reading/writing."""

from __future__ import annotations

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


def colorize(label: np.ndarray) -> np.ndarray:
    """Class-index map (H, W) -> RGB (H, W, 3) in VOC colours."""
    return color_map()[label]


def save_label_png(label: np.ndarray, path: str | Path) -> None:
    """Write a class-index map as a VOC palette PNG, atomically (temp file + rename)."""
    path = Path(path)
    image = Image.fromarray(np.asarray(label, dtype=np.uint8))
    image.putpalette(color_map().flatten().tolist())  # turns the "L" image into "P"
    atomic_write(path, partial(image.save, format="PNG"))


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a palette (or grayscale) PNG as its raw indices (H, W) uint8; 255 is kept."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: label PNGs must be palette ('P') or grayscale ('L') images of "
                f"class indices, got mode {image.mode!r}"
            )
        return np.array(image, dtype=np.uint8)
