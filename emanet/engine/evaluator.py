"""Single-scale and multi-scale + flip inference, and evaluation over a split."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from emanet.data.transforms import height_width
from emanet.engine.amp import AmpSettings
from emanet.engine.distributed import all_reduce_sum
from emanet.engine.metrics import confusion_matrix, metrics_from_confusion
from emanet.errors import out_of_memory_explained


@dataclass(frozen=True)
class Inference:
    """How one (rescaled) image becomes logits.

    * ``whole``: the network sees the whole image.
    * ``slide``: ``crop_size`` windows every ``stride`` pixels (each one number, or
      (height, width) for windows that are not square), logits averaged where windows
      overlap; the network sees ``crops_per_pass`` window crops at a time (at least one
      window of every image in the batch), which bounds the memory whatever the image
      size. An image smaller than a window is padded up to one (``pad_to_window``), or,
      as mmsegmentation's ``slide_inference`` does, run as a window of its own size.
    * ``release``: the authors' single-scale convention: the image padded on the
      bottom/right to H, W = 1 (mod 8), so that the output-stride-8 grid and the
      align_corners=True upsampling line up with the pixels, and the logits cropped back.
    Padding is 0, the mean colour after normalisation.

    ``align_corners`` is how :func:`logits_at_scale` rescales an image for another scale:
    False, half-pixel centres and sizes rounded (cv2, PIL and this project's training
    rescale); True, corners aligned and sizes floored, as the release's training rescale
    (``F.interpolate(scale_factor=s, align_corners=True)``). ``logits_align_corners`` is how
    the logits go back to the image's size (None: as ``align_corners``); mmsegmentation
    resizes its images with cv2 and the logits with its heads' ``align_corners``.
    """

    mode: str = "whole"
    crop_size: int | tuple[int, int] = 513
    stride: int | tuple[int, int] = 341
    crops_per_pass: int = 12
    align_corners: bool = False
    logits_align_corners: bool | None = None
    pad_to_window: bool = True

    @property
    def logits_back_align_corners(self) -> bool:
        """The convention the logits go back to the image's size with."""
        return self.align_corners if self.logits_align_corners is None else self.logits_align_corners

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "whole":
            return model(images)
        if self.mode == "release":
            height, width = images.shape[-2:]
            padded = F.pad(images, (0, (1 - width) % 8, 0, (1 - height) % 8))
            return model(padded)[..., :height, :width]
        return self.sliding_window(model, images)

    def sliding_window(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        crop_height, crop_width = height_width(self.crop_size)
        stride_height, stride_width = height_width(self.stride)
        if not self.pad_to_window:
            crop_height, crop_width = min(crop_height, height), min(crop_width, width)
        padded = F.pad(images, (0, max(crop_width - width, 0), 0, max(crop_height - height, 0)))
        padded_height, padded_width = padded.shape[-2:]
        corners = [
            (top, left)
            for top in window_starts(padded_height, crop_height, stride_height)
            for left in window_starts(padded_width, crop_width, stride_width)
        ]
        # Many windows per forward pass: far faster than one at a time, and the same result,
        # since at evaluation the images of a batch do not interact.
        batch = images.shape[0]
        per_pass = max(self.crops_per_pass // batch, 1)
        summed = counts = None
        for first in range(0, len(corners), per_pass):
            group = corners[first : first + per_pass]
            windows = torch.cat(
                [padded[..., top : top + crop_height, left : left + crop_width] for top, left in group]
            )
            logits = model(windows).float().unflatten(0, (len(group), batch))  # (windows, B, classes, crop H, W)
            if summed is None:
                summed = logits.new_zeros((*logits.shape[1:3], padded_height, padded_width))
                counts = logits.new_zeros((1, 1, padded_height, padded_width))
            for (top, left), window_logits in zip(group, logits, strict=True):
                summed[..., top : top + crop_height, left : left + crop_width] += window_logits
                counts[..., top : top + crop_height, left : left + crop_width] += 1
        return (summed / counts)[..., :height, :width]


def eval_inference(cfg: DictConfig) -> Inference:
    """The :class:`Inference` of the ``eval`` section of ``cfg``."""
    return Inference(
        cfg.eval.mode, height_width(cfg.eval.crop_size), height_width(cfg.eval.stride), cfg.eval.crops_per_pass,
        cfg.eval.align_corners, cfg.eval.logits_align_corners, cfg.eval.pad_to_window,
    )


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets every ``stride`` pixels, the last window flush with the end."""
    starts = list(range(0, max(length - crop, 0) + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


def logits_at_scale(
    model: nn.Module, images: torch.Tensor, scale: float, flip: bool, inference: Inference = Inference()
) -> torch.Tensor:
    """Logits for images (B, 3, H, W) rescaled by ``scale``: (B, classes, H, W), followed
    with ``flip`` by those of the mirrored images, mirrored back: (2B, classes, H, W).

    The image is resized bilinearly with ``inference.align_corners``'s convention and the
    logits are resized back to the original size with ``inference.logits_align_corners``'s
    (the same unless set), in float32 whatever precision the network ran in.
    """
    height, width = images.shape[-2:]
    inputs = images
    if scale != 1.0:
        size = scaled_size(height, width, scale, inference.align_corners)
        inputs = F.interpolate(images, size=size, mode="bilinear", align_corners=inference.align_corners)
    if flip:
        # The images and their mirrors in one pass: half the passes (and kernel launches)
        # for the same result, since at evaluation the images of a batch do not interact.
        inputs = torch.cat([inputs, inputs.flip(-1)])
    logits = inference(model, inputs).float()
    if flip:
        unflipped, mirrored = logits.chunk(2)
        logits = torch.cat([unflipped, mirrored.flip(-1)])
    if logits.shape[-2:] != (height, width):
        logits = F.interpolate(
            logits, size=(height, width), mode="bilinear", align_corners=inference.logits_back_align_corners
        )
    return logits


def scaled_size(height: int, width: int, scale: float, align_corners: bool) -> tuple[int, int]:
    """The size of an image rescaled by ``scale``: floored (at least 1) under the release's
    align_corners=True convention, as its ``F.interpolate(scale_factor=)`` gives; rounded
    otherwise, as cv2 and PIL resizes are usually asked for."""
    if align_corners:
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float], flip: bool, inference: Inference = Inference(),
    ids: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Average of softmax probabilities over scales (and flips) at the original resolution.

    Running out of memory ends in an :class:`~emanet.errors.OutOfMemoryError` naming the
    scale, the images (their ``ids`` if given) and the ``eval.*`` settings that bound it.

    Returns:
        probabilities (B, classes, H, W), and the single-scale logits (scale 1.0, no flip)
        when that pass is part of the average (so single-scale results come for free).
    """
    batch = images.shape[0]
    probabilities = None
    single_scale_logits = None
    for scale in scales:
        with out_of_memory_explained(segmenting(images, scale, inference, ids), memory_fix(images, scale, inference)):
            logits = logits_at_scale(model, images, scale, flip, inference)  # (views x B, classes, H, W)
            if scale == 1.0:
                single_scale_logits = logits[:batch]
            probs = logits.softmax(dim=1).unflatten(0, (-1, batch)).sum(dim=0)  # (B, classes, H, W)
            probabilities = probs if probabilities is None else probabilities + probs
    return probabilities / (len(scales) * (2 if flip else 1)), single_scale_logits


# Ids named in an out-of-memory message; a batch of more is cut to these and a count.
ID_EXAMPLES = 3


def segmenting(images: torch.Tensor, scale: float, inference: Inference, ids: Sequence[str] | None) -> str:
    """What a pass of :func:`predict` does, for an out-of-memory message: "segmenting
    2007_000033 at scale 4.0 (a whole image of 1024x2048, 4096x8192 at that scale)"."""
    batch, (height, width) = images.shape[0], images.shape[-2:]
    named = ""
    if ids:
        ids = list(ids)
        named = " " + ", ".join(map(str, ids[:ID_EXAMPLES])) + (
            f" and {len(ids) - ID_EXAMPLES} more" if len(ids) > ID_EXAMPLES else ""
        )
    whole = "whole " if inference.mode != "slide" else ""
    what = f"a {whole}image" if batch == 1 else f"{batch} {whole}images"
    scaled = ""
    if scale != 1.0:
        scaled_height, scaled_width = scaled_size(height, width, scale, inference.align_corners)
        scaled = f", {scaled_height}x{scaled_width} at that scale"
    windows = ""
    if inference.mode == "slide":
        crop_height, crop_width = height_width(inference.crop_size)
        windows = f", in windows of {crop_height}x{crop_width}, {inference.crops_per_pass} per pass"
    return f"segmenting{named} at scale {float(scale)} ({what} of {height}x{width}{scaled}{windows})"


def memory_fix(images: torch.Tensor, scale: float, inference: Inference) -> str:
    """The ``eval.*`` settings that bound the memory of a pass of :func:`predict`: windows
    for whole images (the network's activations grow with the image), fewer or smaller
    windows for sliding windows; the scale and the batch where they add to it."""
    lower = []
    if inference.mode == "slide":
        if inference.crops_per_pass > 1:
            lower.append(f"eval.crops_per_pass (now {inference.crops_per_pass})")
        lower.append("eval.crop_size")
    if scale > 1.0:
        lower.append("eval.scales")
    if images.shape[0] > 1:
        lower.append("eval.batch_size")
    if inference.mode == "slide":
        return "lower " + " / ".join(lower)
    return "pass eval.mode=slide (windows of eval.crop_size)" + (" or lower " + " / ".join(lower) if lower else "")


@torch.no_grad()
def predict_on_device(
    model: nn.Module, images: torch.Tensor, device: torch.device, scales: Sequence[float], flip: bool,
    inference: Inference = Inference(), amp: AmpSettings | None = None, ids: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`predict` for normalised images (B, 3, H, W) moved to ``device``, with the
    network under ``amp``'s autocast and memory format: the probabilities on the device."""
    amp = amp or AmpSettings()
    images = amp.memory_format(images.to(device, non_blocking=True))
    with amp.autocast(device):
        return predict(model, images, scales, flip, inference, ids)


@torch.no_grad()
def predict_classes(
    model: nn.Module, images: torch.Tensor, device: torch.device, scales: Sequence[float], flip: bool,
    inference: Inference = Inference(), amp: AmpSettings | None = None, ids: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Predicted classes (B, H, W) on the CPU for normalised images (B, 3, H, W), with the
    network under ``amp``'s autocast and memory format; and the single-scale classes
    (scale 1.0, unflipped) when the protocol includes that pass but is more than it.
    ``ids`` name the images if memory runs out."""
    probabilities, single_logits = predict_on_device(model, images, device, scales, flip, inference, amp, ids)
    single_scale = None
    if single_logits is not None and is_multi_scale(scales, flip):
        single_scale = single_logits.argmax(1).cpu()
    return probabilities.argmax(1).cpu(), single_scale


def is_multi_scale(scales: Sequence[float], flip: bool) -> bool:
    """Whether a protocol is more than the single unflipped pass at scale 1.0."""
    return bool(flip) or list(scales) != [1.0]


@dataclass
class EvaluationResult:
    confusion: torch.Tensor
    single_scale_confusion: torch.Tensor | None
    num_images: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict],
    num_classes: int,
    scales: Sequence[float],
    flip: bool,
    device: torch.device,
    ignore_index: int = 255,
    progress: bool = True,
    total: int | None = None,
    inference: Inference = Inference(),
    on_prediction: Callable[[dict, torch.Tensor], None] | None = None,
    amp: AmpSettings | None = None,
) -> EvaluationResult:
    """Accumulate confusion matrices over ``batches`` of ``{"image", "label", "id"}``.

    The single-scale confusion matrix is filled as well whenever the protocol includes
    the unflipped scale-1.0 pass but is more than that pass alone. ``on_prediction`` is
    called with each batch and its predicted classes (B, H, W). The network runs under
    ``amp``'s autocast and memory format (float32 without); probabilities are averaged in
    float32.
    """
    model.eval()
    report_single_scale = is_multi_scale(scales, flip)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    single_confusion = torch.zeros_like(confusion) if report_single_scale else None
    num_images = 0
    for batch in tqdm(batches, total=total, desc="eval", disable=not progress, leave=False):
        if batch is None:  # its image was left out (dataset.skip_bad)
            continue
        labels = batch["label"]
        prediction, single_scale = predict_classes(
            model, batch["image"], device, scales, flip, inference, amp, batch.get("id")
        )
        confusion += confusion_matrix(prediction, labels, num_classes, ignore_index)
        if on_prediction is not None:
            on_prediction(batch, prediction)
        if single_confusion is not None and single_scale is not None:
            single_confusion += confusion_matrix(single_scale, labels, num_classes, ignore_index)
        num_images += prediction.shape[0]
    # Each process evaluated its own shard of the split.
    all_reduce_sum(confusion)
    if single_confusion is not None:
        all_reduce_sum(single_confusion)
    num_images = int(all_reduce_sum(torch.tensor(num_images)))
    if single_confusion is not None and 1.0 not in scales:
        single_confusion = None
    return EvaluationResult(confusion, single_confusion, num_images)


def summarize(result: EvaluationResult, class_names: Sequence[str], protocol: dict) -> dict:
    """The metrics.json payload for one evaluation; ``protocol`` (how it ran) goes under
    ``eval`` with the number of images."""
    summary = metrics_from_confusion(result.confusion, class_names)
    summary["eval"] = {**protocol, "num_images": result.num_images}
    if result.single_scale_confusion is not None:
        summary["single_scale"] = metrics_from_confusion(result.single_scale_confusion, class_names)
    return summary
