"""A small synthetic segmentation benchmark written in the PASCAL VOC layout.

It exists so that the whole pipeline (reading VOC files, training, multi-scale evaluation)
runs end to end on a CPU in minutes. It is built to need what segmentation needs:

* every object class is drawn in colours taken from one shared pool, and so is the
  background texture, so colour alone never decides a class: shape does;
* rings and discs differ only by a hole, and the hole shows the background behind it,
  so labelling it needs context; discs and squares differ only
  at their outline;
* objects overlap (later ones occlude earlier ones), appear at sizes that differ almost
  threefold, and sit on striped, noisy backgrounds;
* labels carry a 255 band along every object boundary, as VOC's do.

The files are written once, deterministically from a seed, and read back through the
same :class:`~emanet.data.segmentation.SegmentationDataset` class as the real benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from emanet.data.palette import save_label_png
from emanet.errors import DatasetError
from emanet.io import current_umask, exclusive_lock

DEMO_CLASSES = ("background", "disc", "ring", "square", "cross")

# Saturated colours shared by objects and background stripes.
COLOR_POOL = np.array(
    [
        (220, 60, 50), (40, 160, 70), (50, 90, 210), (230, 200, 40),
        (170, 60, 190), (40, 190, 200), (240, 130, 30), (235, 235, 235),
    ],
    dtype=np.float32,
)

MARKER = "demo_dataset.json"
# The generator's version, recorded in MARKER: 2 draws the val images from a stream of their
# own, so that they do not depend on the number of training images.
VERSION = 2


def _rotated_coords(xx, yy, cx, cy, angle):
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    return u, v


def _shape_mask(kind: str, xx, yy, cx, cy, radius, angle) -> np.ndarray:
    u, v = _rotated_coords(xx, yy, cx, cy, angle)
    if kind == "disc":
        return u**2 + v**2 <= radius**2
    if kind == "ring":
        d2 = u**2 + v**2
        return (d2 <= radius**2) & (d2 >= (0.5 * radius) ** 2)
    if kind == "square":
        half = 0.8 * radius
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "cross":
        arm = 0.35 * radius
        return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | (
            (np.abs(v) <= radius) & (np.abs(u) <= arm)
        )
    raise ValueError(kind)


def _texture(rng: np.random.Generator, height: int, width: int, contrast: float) -> np.ndarray:
    """Two colours from the pool in stripes of random period and orientation, plus noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    first, second = COLOR_POOL[rng.choice(len(COLOR_POOL), size=2, replace=False)]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3, 8)
    phase = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    weight = (0.5 + 0.5 * contrast * phase)[..., None]
    texture = weight * first + (1 - weight) * second
    return texture + rng.normal(0, 12, size=texture.shape)


def render_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image (H, W, 3) uint8 and its label map (H, W) uint8 with 255 boundaries."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _texture(rng, height, width, contrast=rng.uniform(0.5, 1.0))
    label = np.zeros((height, width), dtype=np.uint8)
    short_side = min(height, width)
    for _ in range(rng.integers(1, 5)):
        class_index = int(rng.integers(1, len(DEMO_CLASSES)))
        radius = short_side * np.exp(rng.uniform(np.log(0.15), np.log(0.4)))
        # Objects stay mostly inside the image, and at most a quarter of a new object
        # lies over earlier ones, so occlusions stay partial.
        for _attempt in range(10):
            cx = rng.uniform(0.6 * radius, width - 0.6 * radius)
            cy = rng.uniform(0.6 * radius, height - 0.6 * radius)
            mask = _shape_mask(DEMO_CLASSES[class_index], xx, yy, cx, cy, radius, rng.uniform(0, 2 * np.pi))
            if (label[mask] > 0).sum() <= 0.25 * mask.sum():
                break
        else:
            continue
        # Objects are nearly flat (a colour from the pool, shaded a little), which sets
        # them apart from the striped background but not from each other.
        color = COLOR_POOL[rng.integers(len(COLOR_POOL))]
        shading = 1.0 + 0.15 * ((xx - cx) * np.cos(rng.uniform(0, 2 * np.pi))) / max(radius, 1.0)
        fill = color * shading[..., None] + rng.normal(0, 8, size=image.shape)
        image[mask] = fill[mask]
        label[mask] = class_index
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, _with_boundaries(label)


def _with_boundaries(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Mark object pixels that touch another class as ignore, like VOC's boundary band."""
    padded = np.pad(label, 1, mode="edge")
    height, width = label.shape
    boundary = np.zeros_like(label, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            boundary |= padded[dy : dy + height, dx : dx + width] != label
    out = label.copy()
    out[boundary] = ignore_index
    return out


def generate_demo_dataset(
    root: str | Path,
    num_train: int = 1000,
    num_val: int = 60,
    min_size: int = 64,
    max_size: int = 80,
    seed: int = 0,
) -> Path:
    """Write the demo dataset under ``root`` (a VOC2012-style folder) unless already there.

    The folder is built in a temporary sibling and renamed into place, so an interrupted
    run never leaves a half-written dataset; a finished one is reused when its recorded
    settings match. Processes that ask for it at once (the ranks of a torchrun job,
    parallel sweeps) take turns: the first writes it, the others find it written. ``root``
    must be missing, empty or a demo of the same settings: a demo of other settings is
    never rebuilt (another job may be reading it, and runs trained or evaluated on it
    would no longer match their data), nor is any other folder; both are refused with a
    DatasetError naming what differs.

    The training images are drawn from ``seed``, the val images from a stream of their own
    derived from it: the val split of one seed is the same whatever ``num_train``.
    """
    root = Path(root)
    settings = {
        "num_train": num_train, "num_val": num_val,
        "min_size": min_size, "max_size": max_size, "seed": seed, "version": VERSION,
    }
    marker = root / MARKER
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.parent):
        if marker.is_file():
            built = json.loads(marker.read_text())
            if built != settings:
                raise DatasetError(rebuild_refusal(root, built, settings))
            return root
        if root.exists() and root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DatasetError(
                f"{root} is neither empty nor a demo dataset (no {MARKER}), and the demo replaces its folder: "
                "choose another dataset.root, or empty that folder"
            )
        write_demo_dataset(root, settings)
    return root


def rebuild_refusal(root: Path, built: dict, asked: dict) -> str:
    """Why the demo in ``root``, written with the settings ``built``, is not rebuilt with ``asked``."""
    if built.get("version") != asked["version"]:
        return (
            f"{root} holds the demo dataset of an earlier version of emanet (version {built.get('version')}; "
            f"this one writes version {asked['version']}, with other images): delete that folder to rebuild it, "
            "or pass another dataset.root"
        )
    differences = [key for key in asked if key != "version" and built.get(key) != asked[key]]
    theirs = " ".join(f"dataset.generate.{key}={built.get(key)}" for key in differences)
    ours = ", ".join(f"{key}={asked[key]}" for key in differences)
    return (
        f"{root} holds the demo dataset built with {theirs}, and this run asks for {ours}: it is not rebuilt, "
        f"as other runs read it; pass {theirs} to use it, or another dataset.root for a demo of these settings"
    )


def write_demo_dataset(root: Path, settings: dict) -> None:
    num_train, num_val = settings["num_train"], settings["num_val"]
    min_size, max_size = settings["min_size"], settings["max_size"]
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    # mkdtemp makes the folder its owner's alone; the dataset gets a plain mkdir's mode.
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (staging / sub).mkdir(parents=True)
        # The val split's own stream (spawn key 1) keeps it independent of the training count.
        streams = {"train": np.random.default_rng(settings["seed"]),
                   "val": np.random.default_rng(np.random.SeedSequence(settings["seed"], spawn_key=(1,)))}
        for split, count in (("train", num_train), ("val", num_val)):
            rng = streams[split]
            ids = []
            for index in range(count):
                image_id = f"demo_{split}_{index:05d}"
                height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
                image, label = render_sample(rng, height, width)
                Image.fromarray(image).save(staging / "JPEGImages" / f"{image_id}.jpg", quality=95)
                save_label_png(label, staging / "SegmentationClass" / f"{image_id}.png")
                ids.append(image_id)
            (staging / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (staging / MARKER).write_text(json.dumps(settings))
        if root.exists():
            root.rmdir()  # an empty folder; anything else is never removed
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
