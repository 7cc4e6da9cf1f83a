"""Figures drawn with Pillow: the colour scale, a colour bar, and an evaluation's per-class
IoU bar chart and row-normalised confusion matrix.

Pillow rather than a plotting library because it is already a dependency. Every canvas is
sized from the measured text, so nothing is cut off whatever the class names or table size.
Each figure function returns the image and where each value was drawn, so that tests (and
anyone reading the figure back) can check the drawing against the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from emanet.io import atomic_write

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in pixels
PAD = 12  # white margin around every figure
MISSING = (211, 211, 211)  # light grey: no value
BAR_COLOUR = (70, 130, 180)


def font(size: int = 12) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def text_size(text: str, typeface: ImageFont.FreeTypeFont) -> tuple[int, int]:
    left, top, right, bottom = typeface.getbbox(text)
    return right, bottom  # from the drawing origin, which is where the text is placed


def colour_scale(fraction: float) -> tuple[int, int, int]:
    """Dark blue -> teal -> yellow, linearly between three stops."""
    stops = np.array([[40, 30, 110], [30, 150, 140], [250, 230, 40]], dtype=float)
    position = min(max(fraction, 0.0), 1.0) * (len(stops) - 1)
    index = min(int(position), len(stops) - 2)
    mix = stops[index] + (stops[index + 1] - stops[index]) * (position - index)
    return tuple(int(round(v)) for v in mix)


def text_colour(fraction: float) -> str:
    return "white" if fraction < 0.6 else "black"  # readable on the dark and the bright end


def colour_bar_width(low: float, high: float, label: Callable[[float], str], typeface) -> int:
    return 16 + 4 + max(text_size(label(value), typeface)[0] for value in colour_bar_ticks(low, high))


def colour_bar_ticks(low: float, high: float) -> list[float]:
    return [high, (low + high) / 2, low] if high > low else [low]


def draw_colour_bar(
    draw: ImageDraw.ImageDraw, left: int, top: int, height: int, low: float, high: float,
    label: Callable[[float], str], typeface,
) -> None:
    """A vertical bar, ``high`` at the top, with its values beside it; ``colour_bar_width``
    pixels wide."""
    for row in range(height):
        fraction = 1.0 - row / max(height - 1, 1)
        draw.line([(left, top + row), (left + 15, top + row)], fill=colour_scale(fraction))
    draw.rectangle([left, top, left + 15, top + height - 1], outline="black")
    for value in colour_bar_ticks(low, high):
        fraction = 0.5 if high == low else (value - low) / (high - low)
        y = top + round((1.0 - fraction) * (height - 1))
        draw.line([(left + 16, y), (left + 19, y)], fill="black")
        _, text_height = text_size(label(value), typeface)
        y = min(max(y - text_height // 2, top), top + height - text_height)  # the end labels stay beside the bar
        draw.text((left + 20, y), label(value), fill="black", font=typeface)


def per_class_iou_figure(
    per_class_iou: dict[str, float | None], title: str, bar_length: int = 400
) -> tuple[Image.Image, dict[str, Box]]:
    """Horizontal bars of per-class IoU (%), one row per class with its name and value.

    Returns the image and each class's bar box (absent for a class without an IoU: the
    class is in neither the ground truth nor the predictions).
    """
    typeface = font(12)
    names = list(per_class_iou)
    row_height = 18
    name_width = max(text_size(name, typeface)[0] for name in names)
    value_width = text_size("100.00", typeface)[0]
    title_width, title_height = text_size(title, typeface)
    left = PAD + name_width + 8
    top = PAD + title_height + 10
    axis_height = 22
    width = max(left + bar_length + 6 + value_width, PAD + title_width) + PAD
    height = top + row_height * len(names) + axis_height + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=typeface)
    boxes = {}
    for index, name in enumerate(names):
        y = top + index * row_height
        draw.text((left - 8 - text_size(name, typeface)[0], y + 3), name, fill="black", font=typeface)
        value = per_class_iou[name]
        if value is None:
            draw.text((left + 4, y + 3), "-", fill="gray", font=typeface)
            continue
        length = round(value / 100 * bar_length)
        boxes[name] = (left, y + 2, left + length, y + row_height - 2)
        if length > 0:
            draw.rectangle([left, y + 2, left + length - 1, y + row_height - 3], fill=BAR_COLOUR)
        draw.text((left + length + 6, y + 3), f"{value:.2f}", fill="black", font=typeface)
    axis_y = top + row_height * len(names)
    draw.line([(left, top), (left, axis_y)], fill="black")
    draw.line([(left, axis_y), (left + bar_length, axis_y)], fill="black")
    for percent in (0, 25, 50, 75, 100):
        x = left + round(percent / 100 * bar_length)
        draw.line([(x, axis_y), (x, axis_y + 3)], fill="black")
        label_width = text_size(str(percent), typeface)[0]
        draw.text((x - label_width // 2, axis_y + 5), str(percent), fill="black", font=typeface)
    return image, boxes


def row_normalized(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """Each ground-truth row divided by its pixel count (NaN for a class absent from the
    ground truth), so the diagonal is each class's accuracy."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, confusion / totals, np.nan)


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], title: str, cell_size: int = 24
) -> tuple[Image.Image, np.ndarray]:
    """The row-normalised confusion ``matrix`` (rows: ground truth, columns: prediction) as a
    grid on a 0-1 colour scale with a colour bar, each cell's value written in percent.

    Returns the image and the cells' boxes, an (n, n, 4) array.
    """
    typeface, cell_font = font(12), font(max(8, min(12, cell_size // 2)))
    count = len(class_names)
    name_width = max(text_size(name, typeface)[0] for name in class_names)
    name_height = max(text_size(name, typeface)[1] for name in class_names)
    title_width, title_height = text_size(title, typeface)
    axis_label_height = text_size("prediction", typeface)[1]
    grid = cell_size * count

    def bar_label(value: float) -> str:
        return f"{100 * value:.0f}"  # in percent, as the cells

    left = PAD + axis_label_height + 8 + name_width + 6
    top = PAD + title_height + 10 + axis_label_height + 8 + name_width + 6
    bar_left = left + grid + 12
    width = max(bar_left + colour_bar_width(0.0, 1.0, bar_label, typeface), PAD + title_width) + PAD
    height = top + grid + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=typeface)
    # Column names (the predicted class) read bottom to top above their columns, drawn
    # upright on a strip that is then turned.
    for column, name in enumerate(class_names):
        strip = Image.new("RGB", (name_width, name_height), "white")
        ImageDraw.Draw(strip).text((name_width - text_size(name, typeface)[0], 0), name, fill="black", font=typeface)
        turned = strip.rotate(90, expand=True)
        image.paste(turned, (left + column * cell_size + (cell_size - name_height) // 2, top - 6 - name_width))
    axis = Image.new("RGB", text_size("ground truth", typeface), "white")
    ImageDraw.Draw(axis).text((0, 0), "ground truth", fill="black", font=typeface)
    turned = axis.rotate(90, expand=True)
    image.paste(turned, (PAD, top + max((grid - turned.height) // 2, 0)))
    prediction_width = text_size("prediction", typeface)[0]
    draw.text((left + max((grid - prediction_width) // 2, 0), PAD + title_height + 10), "prediction",
              fill="black", font=typeface)
    boxes = np.zeros((count, count, 4), dtype=int)
    for row, name in enumerate(class_names):
        y = top + row * cell_size
        draw.text((left - 6 - text_size(name, typeface)[0], y + (cell_size - name_height) // 2), name,
                  fill="black", font=typeface)
        for column in range(count):
            x = left + column * cell_size
            boxes[row, column] = (x, y, x + cell_size, y + cell_size)
            value = matrix[row, column]
            if np.isnan(value):
                draw.rectangle([x, y, x + cell_size - 1, y + cell_size - 1], fill=MISSING, outline="white")
                continue
            draw.rectangle([x, y, x + cell_size - 1, y + cell_size - 1], fill=colour_scale(value), outline="white")
            text = f"{100 * value:.0f}"
            text_width, text_height = text_size(text, cell_font)
            if text_width <= cell_size - 2:  # a value that does not fit is left to the colour
                draw.text((x + (cell_size - text_width) // 2, y + (cell_size - text_height) // 2), text,
                          fill=text_colour(value), font=cell_font)
    draw_colour_bar(draw, bar_left, top, grid, 0.0, 1.0, bar_label, typeface)
    return image, boxes


def evaluation_figures(metrics: dict, confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, Image.Image]:
    """``per_class_iou`` and ``confusion_matrix`` images of one evaluation."""
    iou_image, _ = per_class_iou_figure(metrics["per_class_IoU"], f"per-class IoU (%), mIoU {metrics['mIoU']:.2f}")
    matrix_image, _ = confusion_matrix_figure(
        row_normalized(confusion), class_names, "confusion matrix, each ground-truth row normalised (%)"
    )
    return {"per_class_iou": iou_image, "confusion_matrix": matrix_image}


def write_figures(figures: dict[str, Image.Image], directory: Path) -> list[Path]:
    """Each figure as ``<name>.png`` in ``directory``, written atomically."""
    paths = []
    for name, image in figures.items():
        path = Path(directory) / f"{name}.png"
        atomic_write(path, lambda temp, image=image: image.save(temp, format="PNG"))
        paths.append(path)
    return paths
