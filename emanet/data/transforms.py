"""Training and evaluation transforms, built with albumentations.

The training pipeline is the release's: random scale from a discrete set (image bilinear,
label nearest; or uniform in a range, the other common choice), ImageNet normalisation,
padding on the bottom/right to the crop size (image 0 after normalisation, label 255),
random crop and random horizontal flip.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScaleFactor(A.DualTransform):
    """Resize by a factor drawn uniformly from ``scales`` (or from their range).

    albumentations' RandomScale only draws from a continuous range; the release draws from
    a fixed set. The output is floor(h * s) x floor(w * s) (at least 1 x 1), the size of
    the release's ``F.interpolate(scale_factor=s)``; ``cv2.resize(fx=s, fy=s)`` would round
    to nearest instead (101 * 0.75 -> 76, not 75). The sizes match; the pixels do not
    exactly: the release resizes the image with ``align_corners=True`` bilinear on the
    normalised tensor, this resize uses cv2's half-pixel centres on the uint8 image
    (image bilinear, label nearest), a sub-pixel resampling difference.
    """

    def __init__(self, scales: Sequence[float], continuous: bool = False, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scales = tuple(float(s) for s in scales)
        self.continuous = continuous

    def get_params(self) -> dict[str, Any]:
        if self.continuous:
            return {"scale": self.py_random.uniform(min(self.scales), max(self.scales))}
        return {"scale": self.py_random.choice(self.scales)}

    @staticmethod
    def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
        """(height, width) after scaling: floored, as torch's ``F.interpolate(scale_factor=)``."""
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))

    def apply(self, img: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        height, width = self.output_size(*img.shape[:2], scale)
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        height, width = self.output_size(*mask.shape[:2], scale)
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scales", "continuous")


def height_width(size: int | Sequence[int]) -> tuple[int, int]:
    """A crop or window size as (height, width): one number is a square."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def train_transform(
    crop_size: int | Sequence[int],
    scales: Sequence[float],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
    scale_sampling: str = "discrete",
) -> A.Compose:
    crop_height, crop_width = height_width(crop_size)
    return A.Compose(
        [
            RandomScaleFactor(scales, continuous=scale_sampling == "continuous"),
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            A.PadIfNeeded(
                min_height=crop_height, min_width=crop_width, position="top_left",
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index,
            ),
            A.RandomCrop(height=crop_height, width=crop_width),
            A.HorizontalFlip(p=0.5),
            ToTensorV2(),
        ]
    )


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed every random draw of ``transform`` from ``seed``, through one NumPy and one Python
    generator that all its transforms share (as a Compose constructs them).

    Not ``Compose.set_random_seed``: albumentations gives each transform its own generator
    started from that same seed, so their first draws coincide: the flip then follows the
    crop position and the scale (crops of scales 1.5-2.0 were never flipped).
    """
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def eval_transform(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> A.Compose:
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])
