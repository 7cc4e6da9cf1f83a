"""Segmenting image files with a trained checkpoint: ``scripts/predict.py``'s job."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from emanet.data import dataset_class_names
from emanet.data.palette import colorize, save_label_png
from emanet.data.segmentation import read_image
from emanet.data.transforms import eval_transform
from emanet.engine.amp import AmpSettings
from emanet.engine.checkpoint import checkpoint_file
from emanet.engine.evaluate import (
    eval_inference,
    evaluation_settings,
    load_trained_model,
    prediction_writer,
    protocol_record,
)
from emanet.engine.evaluator import is_multi_scale, predict, predict_classes
from emanet.engine.runtime import configure_runtime, loader_workers, size_grouped_batches
from emanet.errors import ConfigError
from emanet.io import atomic_write, write_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Elements of the float32 class probabilities resized to an image's full resolution that
# exist at once (64 MiB): the rows of a strip, whatever the image's size.
STRIP_ELEMENTS = 2**24


def find_images(inputs: Sequence[str]) -> dict[str, Path]:
    """The image files that ``inputs`` name, by the id their outputs are written under.

    An input is an image file (id: its name without suffix) or a folder, searched
    recursively for files ending in one of IMAGE_SUFFIXES (id: the path inside the
    folder without suffix, so sub-folders are kept in the output).
    """
    found: dict[str, Path] = {}
    for entry in inputs:
        path = Path(entry).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise ConfigError(f"input={entry}: {path} holds no image files ({' '.join(IMAGE_SUFFIXES)})")
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
        image = read_image(self.files[index], upright=True)
        height, width = working_size(*image.shape[:2], self.max_side)
        if (height, width) == image.shape[:2]:
            return {"image": self.transform(image=image)["image"], "id": self.ids[index]}
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return {
            "image": self.transform(image=resized)["image"], "pixels": torch.from_numpy(image), "id": self.ids[index]
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
        save_label_png(classes, path)
    if cfg.eval.save_overlays:
        overlay = np.empty_like(pixels)
        rows_per_strip = max(1, STRIP_ELEMENTS // (3 * pixels.shape[1]))
        for top in range(0, pixels.shape[0], rows_per_strip):
            rows = slice(top, top + rows_per_strip)
            overlay[rows] = (0.5 * pixels[rows] + 0.5 * colorize(classes[rows])).astype(np.uint8)
        path = run_dir / "overlays" / f"{sample_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, partial(Image.fromarray(overlay).save, format="JPEG"))


def input_list(cfg: DictConfig) -> list[str]:
    """``input`` as a list: one path, or a list of them."""
    return [str(entry) for entry in cfg.input] if OmegaConf.is_list(cfg.input) else [str(cfg.input)]


def predict_files(cfg: DictConfig, run_dir: Path) -> dict:
    """``scripts/predict.py``: segment the images of ``input`` with ``checkpoint``.

    Uses the ``eval`` protocol (scales, flip, whole or sliding-window inference,
    precision, EM iterations). Writes ``predictions/<id>.png`` (class-index palette PNGs)
    and ``overlays/<id>.jpg`` into ``run_dir``, as ``eval.save_predictions`` /
    ``eval.save_overlays`` say, with ``config.yaml`` and ``predictions.json`` (settings,
    the file each id came from and the size it was segmented at); returns the contents of
    the latter.

    An image whose long side is over ``max_side`` runs the protocol at a working size
    with that long side; its class probabilities are resized back to the full resolution
    a strip at a time (:func:`full_resolution_classes`), which bounds the memory of any
    photo. Images within ``max_side`` are segmented at their own size, as evaluation does.
    """
    if not (cfg.eval.save_predictions or cfg.eval.save_overlays):
        raise ConfigError("eval.save_predictions and eval.save_overlays are both false: nothing would be written")
    if cfg.max_side is not None and not (isinstance(cfg.max_side, int) and cfg.max_side >= 1):
        raise ConfigError(f"max_side must be a number of pixels (at least 1) or null, got {cfg.max_side!r}")
    files = find_images(input_list(cfg))
    device = configure_runtime(cfg)
    amp = AmpSettings.from_config(cfg.eval, device, key="eval")
    model, checkpoint = load_trained_model(cfg, device, amp)
    model.eval()
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    dataset = ImageFiles(files, cfg.dataset.mean, cfg.dataset.std, cfg.max_side)
    loader = DataLoader(
        dataset, batch_sampler=size_grouped_batches(dataset, range(len(dataset)), cfg.eval.batch_size),
        num_workers=loader_workers(cfg.runtime.num_workers), pin_memory=device.type == "cuda",
    )
    write = prediction_writer(cfg, run_dir)
    inference = eval_inference(cfg)
    working_sizes = {}
    with evaluation_settings(model, cfg) as output_stride:
        for batch in tqdm(loader, desc="predict", disable=not cfg.runtime.progress, dynamic_ncols=True):
            working_sizes.update({sample_id: list(batch["image"].shape[-2:]) for sample_id in batch["id"]})
            if "pixels" not in batch:
                prediction, _ = predict_classes(
                    model, batch["image"], device, cfg.eval.scales, cfg.eval.flip, inference, amp
                )
                write(batch, prediction)
                continue
            # Over max_side: the probabilities at the working size, taken to the full resolution strip by strip.
            images = amp.memory_format(batch["image"].to(device, non_blocking=True))
            with amp.autocast(device):
                probabilities, _ = predict(model, images, cfg.eval.scales, cfg.eval.flip, inference)
            for sample_id, pixels, image_probabilities in zip(batch["id"], batch["pixels"], probabilities, strict=True):
                classes = full_resolution_classes(image_probabilities, *pixels.shape[:2])
                write_full_resolution(cfg, run_dir, sample_id, pixels.numpy(), classes.numpy())
    summary = {
        "experiment": cfg.name,
        "checkpoint": str(checkpoint_file(cfg.checkpoint)),
        "iteration": checkpoint.get("iteration"),
        "eval": protocol_record(cfg, amp, output_stride),
        "classes": list(dataset_class_names(cfg.dataset)),
        "images": {sample_id: str(path.resolve()) for sample_id, path in files.items()},
        "max_side": cfg.max_side,
        "working_sizes": working_sizes,  # [height, width] each image was segmented at: its own, or less over max_side
    }
    write_json(summary, run_dir / "predictions.json")
    protocol = "MS+flip" if is_multi_scale(cfg.eval.scales, cfg.eval.flip) else "single scale"
    log.info("segmented %d images (%s); results in %s", len(files), protocol, run_dir)
    return summary
