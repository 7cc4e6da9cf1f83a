"""Images/s of the VOC training pipeline (Pillow JPEG decode, label PNG decode, the release's
augmentation to a 513 crop, ImageNet normalisation, tensor conversion) on 500x375 JPEGs
written to a temporary folder, in one process and through a DataLoader with N workers."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from emanet.data.classes import VOC_CLASSES
from emanet.data.palette import save_label_png
from emanet.data.segmentation import SegmentationDataset
from emanet.data.transforms import seed_transform, train_transform

RELEASE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def write_voc_like_images(root: Path, count: int, width: int = 500, height: int = 375) -> None:
    """JPEGs with smooth gradients, edges and mild noise (closer to photos than pure noise,
    which decodes far slower), palette PNG labels, and a split list."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ys, xs = np.mgrid[0:height, 0:width]
    for index in range(count):
        base = rng.integers(0, 256, 3)
        image = (base + 0.3 * xs[..., None] + 0.2 * ys[..., None]) % 256
        cx, cy, r = rng.integers(50, 450), rng.integers(50, 325), rng.integers(30, 120)
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 < r**2
        image[inside] = rng.integers(0, 256, 3)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{index:06d}.jpg", quality=90)
        label = np.where(inside, rng.integers(1, 21), 0).astype(np.uint8)
        save_label_png(label, root / "SegmentationClass" / f"{index:06d}.png")
    ids = "".join(f"{index:06d}\n" for index in range(count))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(ids)


def time_single_process(dataset: SegmentationDataset, passes: int = 2) -> float:
    dataset[0]  # warm-up
    start = time.perf_counter()
    for _ in range(passes):
        for index in range(len(dataset)):
            dataset[index]
    return passes * len(dataset) / (time.perf_counter() - start)


def time_loader(dataset: SegmentationDataset, workers: int, batch_size: int = 16, passes: int = 2) -> float:
    loader = DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=True, num_workers=workers,
        persistent_workers=True, drop_last=True,
    )
    # One whole untimed pass starts the workers; stopping after one batch would leave
    # prefetched batches that the next pass decodes and discards inside the timing.
    for _ in loader:
        pass
    start, images = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def data_benchmark(images: int, workers: Sequence[int]) -> dict:
    """Images/s in the main process and with each worker count of ``workers``, over
    ``images`` written JPEGs: the result that ``benchmark.py data`` records."""
    torch.set_num_threads(1)  # per-core numbers: one process, one core
    cv2.setNumThreads(1)
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        write_voc_like_images(root, images)
        dataset = SegmentationDataset(
            root, "train", VOC_CLASSES, transform=train_transform(513, RELEASE_SCALES)
        )
        seed_transform(dataset.transform, 0)
        rows.append({"workers": "main process", "images_per_second": round(time_single_process(dataset), 1)})
        for count in workers:
            rows.append({"workers": count, "images_per_second": round(time_loader(dataset, count), 1)})
    for row in rows:
        print(f"{row['workers']!s:>14}: {row['images_per_second']:7.1f} images/s")
    return {"images": images, "image_size": "500x375", "crop": 513, "rows": rows}
