"""Every figure the project draws: an evaluation's per-class IoU and confusion matrix, the
tables' comparison charts, the iteration heatmap and the EMA bases' responsibilities.

Drawn with matplotlib's object API (a ``Figure`` on an Agg canvas, no pyplot), so no global
backend or figure registry is touched, and each is written as PNG and PDF side by side.
Every figure uses the constrained layout and is sized from its content (class count,
labels), so that no label is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

from emanet.io import atomic_write

OURS_COLOUR = "tab:blue"
REFERENCE_COLOUR = "0.72"  # grey: the paper's or others' published numbers
COLOUR_MAP = "viridis"  # perceptually uniform, readable in grey print
MISSING_TEXT = "-"  # the tables' mark for a value that is not there
DPI = 100
FORMATS = ("png", "pdf")
# The PDF's creation date would make every write of the same figure differ.
SAVE_METADATA = {"png": {}, "pdf": {"CreationDate": None}}
MAX_ANNOTATED_CLASSES = 30  # above this, a confusion cell is too small for its number


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def laid_out(figure: Figure) -> Figure:
    """``figure`` with its constrained layout computed once and then kept: the layout moves
    a little from one drawing to the next, and every rendering (TensorBoard's, the PNG's)
    should be the same picture."""
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    return figure


def text_colour(fraction: float) -> str:
    return "white" if fraction < 0.6 else "black"  # readable on viridis' dark and bright ends


def write_figure(figure: Figure, path: Path) -> list[Path]:
    """``path`` with the suffixes .png and .pdf, each written atomically."""
    paths = []
    for suffix in FORMATS:
        target = Path(path).with_suffix(f".{suffix}")
        atomic_write(target, lambda temp, suffix=suffix: figure.savefig(
            temp, format=suffix, dpi=DPI, metadata=SAVE_METADATA[suffix]))
        paths.append(target)
    return paths


def write_figures(figures: dict[str, Figure], directory: Path) -> list[Path]:
    """Each figure as ``<name>.png`` and ``<name>.pdf`` in ``directory``."""
    return [path for name, figure in figures.items() for path in write_figure(figure, Path(directory) / name)]


# --------------------------------------------------------------------------- evaluation


def per_class_iou_figure(
    per_class_iou: dict[str, float | None], title: str, colours: Sequence[Sequence[int]] | None = None
) -> Figure:
    """Horizontal bars of per-class IoU (%), one row per class with its value written
    beside it, in each class's colour (outlined) when ``colours`` are given; a class without
    an IoU (in neither ground truth nor prediction) has no bar."""
    names = list(per_class_iou)
    figure = new_figure(7.0, 1.2 + 0.22 * len(names))
    axes = figure.add_subplot()
    present = [index for index, name in enumerate(names) if per_class_iou[name] is not None]
    fill = bar_colours(colours, len(names))
    axes.barh(present, [per_class_iou[names[index]] for index in present], color=[fill[index] for index in present],
              edgecolor="0.2" if colours else "none", linewidth=0.5)
    for index, name in enumerate(names):
        value = per_class_iou[name]
        text = MISSING_TEXT if value is None else f"{value:.2f}"
        axes.text((value or 0.0) + 1.0, index, text, va="center", fontsize=8)
    axes.set_yticks(range(len(names)), names)
    axes.set_ylim(len(names) - 0.5, -0.5)  # the first class on top
    axes.set_xlim(0, 112)  # room for a value written beside a 100 % bar
    axes.set_xticks([0, 25, 50, 75, 100])
    axes.set_xlabel("IoU (%)")
    axes.set_title(title)
    return laid_out(figure)


def bar_colours(colours: Sequence[Sequence[int]] | None, count: int) -> list:
    """Each class's colour as matplotlib takes it (0-1 RGB), or the one colour of our bars."""
    return [tuple(value / 255 for value in colour) for colour in colours] if colours else [OURS_COLOUR] * count


def class_pixels_figure(
    counts: dict[str, Sequence[int]], class_names: Sequence[str], colours: Sequence[Sequence[int]], title: str
) -> Figure:
    """One panel per split: each class's share (%) of the split's labelled pixels, a bar in
    the class's colour (outlined, so white and black classes show) with its pixel count."""
    figure = new_figure(4.0 + 3.0 * len(counts), 1.4 + 0.24 * len(class_names))
    panels = figure.subplots(1, len(counts), sharey=True, squeeze=False)[0]
    for axes, (split, values) in zip(panels, counts.items(), strict=True):
        total = sum(values) or 1
        shares = [100 * value / total for value in values]
        axes.barh(range(len(values)), shares, color=bar_colours(colours, len(values)), edgecolor="0.2", linewidth=0.5)
        for index, value in enumerate(values):
            axes.text(shares[index] + 1.0, index, f"{value:,}", va="center", fontsize=7)
        axes.set_xlim(0, max(shares) * 1.35 + 1)
        axes.set_xlabel(f"% of {split} pixels")
        axes.set_title(split)
    panels[0].set_yticks(range(len(class_names)), class_names)
    panels[0].set_ylim(len(class_names) - 0.5, -0.5)  # the first class on top
    figure.suptitle(title)
    return laid_out(figure)


def row_normalized(confusion) -> np.ndarray:
    """Each ground-truth row divided by its pixel count (NaN for a class absent from the
    ground truth), so the diagonal is each class's accuracy."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, confusion / totals, np.nan)


def confusion_matrix_figure(
    matrix: np.ndarray, class_names: Sequence[str], title: str, colours: Sequence[Sequence[int]] | None = None
) -> Figure:
    """The row-normalised confusion ``matrix`` (rows: ground truth, columns: prediction) in
    percent on one 0-100 colour scale with a colour bar, class names on both axes (each
    beside a square of the class's colour when ``colours`` are given), each cell's value
    written in where the cells are large enough; a row of a class absent from the ground
    truth is left blank."""
    count = len(class_names)
    side = max(5.0, 2.0 + 0.22 * count)
    figure = new_figure(side + 1.5, side)
    axes = figure.add_subplot()
    colour_map = matplotlib.colormaps[COLOUR_MAP].with_extremes(bad="none")
    percent = 100 * np.asarray(matrix, dtype=np.float64)
    image = axes.imshow(np.ma.masked_invalid(percent), cmap=colour_map, vmin=0, vmax=100, interpolation="nearest")
    figure.colorbar(image, ax=axes, label="% of the ground-truth row", shrink=0.8)
    label_size = 10 if count <= 40 else 7
    axes.set_xticks(range(count), class_names, rotation=90, fontsize=label_size)
    axes.set_yticks(range(count), class_names, fontsize=label_size)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title)
    if colours:
        # A square per class 8 points outside the matrix, left of its row and below its
        # column; the tick labels move out past it.
        swatch = {"marker": "s", "s": 30, "c": bar_colours(colours, count), "edgecolors": "0.2", "linewidths": 0.5,
                  "clip_on": False}
        left = offset_copy(axes.transData, figure, x=-8, units="points")
        below = offset_copy(axes.transData, figure, y=-8, units="points")
        axes.scatter([-0.5] * count, range(count), transform=left, **swatch)
        axes.scatter(range(count), [count - 0.5] * count, transform=below, **swatch)
        axes.tick_params(axis="both", pad=16)
        axes.set_xlim(-0.5, count - 0.5)
        axes.set_ylim(count - 0.5, -0.5)
    if count <= MAX_ANNOTATED_CLASSES:
        for row, column in zip(*np.nonzero(~np.isnan(percent)), strict=True):
            value = percent[row, column]
            axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=8,
                      color=text_colour(value / 100))
    return laid_out(figure)


def evaluation_figures(
    metrics: dict, confusion, class_names: Sequence[str], colours: Sequence[Sequence[int]] | None = None
) -> dict[str, Figure]:
    """``per_class_iou`` and ``confusion_matrix`` figures of one evaluation, drawn with the
    classes' ``colours`` (each [r, g, b] 0-255) where given."""
    return {
        "per_class_iou": per_class_iou_figure(
            metrics["per_class_IoU"], f"per-class IoU (%), mIoU {metrics['mIoU']:.2f}", colours),
        "confusion_matrix": confusion_matrix_figure(
            row_normalized(confusion), class_names, "confusion matrix, each ground-truth row normalised (%)", colours),
    }


# ------------------------------------------------------------------------------ tables


def comparison_chart(title: str, groups: list[tuple[str, list[tuple[str, float | None, bool]]]]) -> Figure:
    """Horizontal bars, one group per method, one bar per (label, mIoU, is a reference)
    with its value written beside it: ours blue, references grey, "-" where there is none.
    The axis starts below the lowest value, so that differences of a point stay visible."""
    values = [value for _, bars in groups for _, value, _ in bars if value is not None]
    low = max(10 * int(min(values) // 10) - 10, 0) if values else 0
    high = max(10 * -int(-max(values) // 10) if values else 100, low + 10)
    labels, positions, position = [], [], 0.0
    for method, bars in groups:
        for label, _, _ in bars:
            labels.append(f"{method}, {label}")
            positions.append(position)
            position += 1.0
        position += 0.6  # a gap between methods
    longest = max((len(label) for label in labels), default=10)
    figure = new_figure(5.0 + 0.065 * longest, 1.4 + 0.24 * position)
    axes = figure.add_subplot()
    bars = [bar for _, group in groups for bar in group]
    for y, (_, value, is_reference) in zip(positions, bars, strict=True):
        if value is None:
            axes.text(low + 0.3, y, MISSING_TEXT, va="center", fontsize=8, color="grey")
            continue
        axes.barh(y, value - low, left=low, height=0.8, color=REFERENCE_COLOUR if is_reference else OURS_COLOUR)
        axes.text(value + 0.3, y, f"{value:.2f}", va="center", fontsize=8)
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set_ylim(position - 0.4, -0.8)
    axes.set_xlim(low, high + 0.12 * (high - low))  # room for the value beside the longest bar
    axes.set_xticks(range(low, high + 1, 10))
    axes.set_xlabel("mIoU (%)")
    axes.set_title(title, wrap=True)
    return laid_out(figure)


def shared_value_range(rows: list[dict]) -> tuple[float, float]:
    """The lowest and highest value of both tables: one colour scale for the two panels, so
    that a colour means the same mIoU in ours and the paper's."""
    values = [row[key] for row in rows for key in ("mIoU", "paper_mIoU") if row[key] is not None]
    return (min(values), max(values)) if values else (0.0, 1.0)


def iteration_heatmap(rows: list[dict], max_stages: int, title: str) -> Figure:
    """Ours (left) and the paper's (right) iteration tables, rows ``train_stages`` (T),
    columns ``eval_stages`` (T), as coloured grids with the values written in, on one colour
    scale shown by one colour bar; a cell not run is white with "-"."""
    low, high = shared_value_range(rows)
    norm = Normalize(low, high if high > low else low + 1.0)
    side = 0.6 * max_stages + 1.2
    figure = new_figure(max(7.0, 2 * side + 2.0), side + 1.6)
    panels = figure.subplots(1, 2)
    colour_map = matplotlib.colormaps[COLOUR_MAP].with_extremes(bad="none")
    image = None
    for axes, key, caption in zip(panels, ("mIoU", "paper_mIoU"), ("ours", "paper (ResNet-50, PASCAL VOC val)"),
                                  strict=True):
        grid = np.full((max_stages, max_stages), np.nan)
        for row in rows:
            value = row[key]
            cell = (row["train_stages"] - 1, row["eval_stages"] - 1)
            if value is not None:
                grid[cell] = value
            text = MISSING_TEXT if value is None else f"{value:.2f}"
            colour = "black" if value is None else text_colour(float(norm(value)))
            axes.text(cell[1], cell[0], text, ha="center", va="center", fontsize=8, color=colour)
        image = axes.imshow(np.ma.masked_invalid(grid), cmap=colour_map, norm=norm, interpolation="nearest")
        ticks = range(max_stages)
        axes.set_xticks(ticks, [str(t + 1) for t in ticks])
        axes.set_yticks(ticks, [str(t + 1) for t in ticks])
        axes.set_xlabel("eval_stages (T)")
        axes.set_ylabel("train_stages (T)")
        axes.set_title(caption, fontsize=10)
    figure.colorbar(image, ax=list(panels), label="mIoU (%)", shrink=0.8)
    figure.suptitle(title, wrap=True)
    return laid_out(figure)


# ------------------------------------------------------------------------------- bases


def bases_figure(image: np.ndarray, maps: dict[str, np.ndarray]) -> Figure:
    """The image and one panel per named responsibility map (each the image's height and
    width), all maps on one colour scale from 0 to the largest value shown, given by one
    colour bar, so that the bases can be compared."""
    high = max((float(values.max()) for values in maps.values()), default=1.0)
    norm = Normalize(0.0, high if high > 0 else 1.0)
    height, width = image.shape[:2]
    panel_width = 2.6
    panel_height = panel_width * height / width
    figure = new_figure(panel_width * (1 + len(maps)) + 1.4, panel_height + 0.9)
    panels = np.atleast_1d(figure.subplots(1, 1 + len(maps)))
    panels[0].imshow(image)
    panels[0].set_title("image", fontsize=10)
    shown = None
    for axes, (name, values) in zip(panels[1:], maps.items(), strict=True):
        shown = axes.imshow(values, cmap=COLOUR_MAP, norm=norm, interpolation="nearest")
        axes.set_title(name, fontsize=10)
    for axes in panels:
        axes.set_axis_off()
    if shown is not None:
        figure.colorbar(shown, ax=list(panels), label="responsibility z", shrink=0.9)
    return laid_out(figure)

