"""Images for TensorBoard: input, ground truth and prediction side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emanet.data.palette import colorize


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (3, H, W) float tensor -> (H, W, 3) uint8."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    pixels = (image.detach().cpu().float() * std_t + mean_t).clamp(0, 1) * 255
    return pixels.round().byte().permute(1, 2, 0).numpy()


def prediction_panel(
    image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor,
    mean: Sequence[float], std: Sequence[float], class_colors: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """(H, 3W, 3) uint8: the image, its ground truth and the prediction in the classes'
    colours (VOC's unless ``class_colors``)."""
    return np.concatenate(
        [
            denormalize(image, mean, std),
            colorize(label.cpu().numpy().astype(np.uint8), class_colors),
            colorize(prediction.cpu().numpy().astype(np.uint8), class_colors),
        ],
        axis=1,
    )
