"""The per-class IoU bar chart and the confusion matrix that end every evaluation: drawn
from the evaluation's own numbers, in the run directory (PNG and PDF) and in TensorBoard."""

import io

import numpy as np
import pytest
import torch
from figure_checks import texts_inside, written_png_and_pdf
from helpers import TINY, compose_config
from matplotlib.colors import to_rgba
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emanet import plots
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.engine.train import train
from emanet.plots import OURS_COLOUR, confusion_matrix_figure, evaluation_figures, per_class_iou_figure, row_normalized


def recording(monkeypatch, calls: dict) -> None:
    """Record each figure function's arguments and the figure it returns."""
    for name in ("per_class_iou_figure", "confusion_matrix_figure"):
        original = getattr(plots, name)

        def record(*args, original=original, name=name, **kwargs):
            figure = original(*args, **kwargs)
            calls[name] = (args, figure)
            return figure

        monkeypatch.setattr(plots, name, record)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny demo training and an evaluate.py run of its checkpoint, with the figures each drew."""
    data_root = tmp_path_factory.mktemp("data")
    run_dir, eval_dir = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("eval")
    drawn = {"train": {}, "evaluate": {}}
    with pytest.MonkeyPatch.context() as monkeypatch:
        recording(monkeypatch, drawn["train"])
        trained = train(compose_config([*TINY, f"data_root={data_root}"]), run_dir)
    with pytest.MonkeyPatch.context() as monkeypatch:
        recording(monkeypatch, drawn["evaluate"])
        cfg = compose_config(
            [*TINY, f"data_root={data_root}", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"], "evaluate"
        )
        evaluated = evaluate_checkpoint(cfg, eval_dir)
    return {"train": (run_dir, trained, drawn["train"]), "evaluate": (eval_dir, evaluated, drawn["evaluate"])}


def pixel_size(figure) -> tuple[int, int]:
    width, height = figure.get_size_inches() * figure.dpi
    return round(width), round(height)


def check_bars(figure, per_class_iou: dict) -> None:
    """One bar per class with an IoU, as long as it, in the class's row; none for the others."""
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == list(per_class_iou)
    present = {index: value for index, value in enumerate(per_class_iou.values()) if value is not None}
    bars = {round(bar.get_y() + bar.get_height() / 2): bar.get_width() for bar in axes.patches}
    assert bars == pytest.approx(present)
    assert {bar.get_facecolor() for bar in axes.patches} <= {to_rgba(OURS_COLOUR)}
    written = [text.get_text() for text in axes.texts]
    assert written == ["-" if value is None else f"{value:.2f}" for value in per_class_iou.values()]


@pytest.mark.slow
@pytest.mark.parametrize("job", ["train", "evaluate"])
def test_runs_end_with_the_figures_drawn_from_their_metrics(tiny_runs, job):
    directory, metrics, drawn = tiny_runs[job]
    (per_class_iou, title, colours), iou_figure = drawn["per_class_iou_figure"]
    (matrix, class_names, _, matrix_colours), matrix_figure = drawn["confusion_matrix_figure"]
    assert colours is None and matrix_colours is None  # the demo has no dataset.class_colors: one bar colour
    # Each figure is written as PNG (at its size) and PDF, and no temporary file is left beside them.
    for name, figure in (("per_class_iou", iou_figure), ("confusion_matrix", matrix_figure)):
        assert written_png_and_pdf(directory / name) == pixel_size(figure)

    assert per_class_iou == metrics["per_class_IoU"] and f"{metrics['mIoU']:.2f}" in title
    check_bars(iou_figure, per_class_iou)

    # Matrix cells are the row-normalised confusion in percent: rows sum to 100, the diagonal is
    # each class's accuracy, on one 0-100 colour scale, class names on both axes.
    assert list(class_names) == list(per_class_iou)
    accuracy = np.array([np.nan if value is None else value for value in metrics["per_class_Acc"].values()])
    shown = matrix_figure.axes[0].images[0]
    cells = shown.get_array().filled(np.nan)
    np.testing.assert_allclose(np.diag(cells), accuracy)
    np.testing.assert_allclose(cells, 100 * matrix)
    labelled = ~np.isnan(accuracy)
    np.testing.assert_allclose(cells[labelled].sum(axis=1), 100.0)
    assert (shown.norm.vmin, shown.norm.vmax) == (0, 100)
    axes = matrix_figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == list(class_names)
    assert [label.get_text() for label in axes.get_yticklabels()] == list(class_names)
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("prediction", "ground truth")
    assert texts_inside(iou_figure) and texts_inside(matrix_figure)


@pytest.mark.slow
def test_training_logs_the_figures_to_tensorboard(tiny_runs):
    run_dir, _, drawn = tiny_runs["train"]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = {"val/per_class_iou": "per_class_iou_figure", "val/confusion_matrix": "confusion_matrix_figure"}
    for tag, name in tags.items():
        logged = events.Images(tag)
        assert [event.step for event in logged] == [6]
        image = Image.open(io.BytesIO(logged[-1].encoded_image_string)).convert("RGB")
        assert image.size == pixel_size(drawn[name][1])
        # The same rendering as the PNG in the run directory.
        on_disk = Image.open(run_dir / f"{name.removesuffix('_figure')}.png").convert("RGB")
        assert np.array_equal(np.asarray(image), np.asarray(on_disk))


def test_evaluation_figures_hold_the_numbers_given():
    metrics = {"mIoU": 45.0, "per_class_IoU": {"background": 90.0, "disc": None, "ring": 0.0}}
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    figures = evaluation_figures(metrics, confusion, ["background", "disc", "ring"])
    assert figures["per_class_iou"].axes[0].get_title() == "per-class IoU (%), mIoU 45.00"
    check_bars(figures["per_class_iou"], metrics["per_class_IoU"])
    matrix_axes = figures["confusion_matrix"].axes[0]
    np.testing.assert_array_equal(matrix_axes.images[0].get_array().filled(np.nan),
                                  [[75.0, 25.0, 0.0], [np.nan] * 3, [25.0, 25.0, 50.0]])
    # Each labelled cell's percentage written in it; the absent class's row left blank.
    assert {(t.get_position(), t.get_text()) for t in matrix_axes.texts} == {
        ((0, 0), "75"), ((1, 0), "25"), ((2, 0), "0"), ((0, 2), "25"), ((1, 2), "25"), ((2, 2), "50")}


def test_row_normalised_confusion():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    expected = np.array([[0.75, 0.25, 0.0], [np.nan] * 3, [0.25, 0.25, 0.5]])
    np.testing.assert_array_equal(row_normalized(confusion), expected)  # an absent class: a row of NaN


@pytest.mark.slow
def test_figures_fit_many_long_class_names(tmp_path):
    # COCO-Stuff's 171 classes with long names: every name and value stays on the canvas.
    names = [f"class {index} with a long name" for index in range(171)]
    iou = {name: (None if index % 7 == 0 else index * 100 / 171) for index, name in enumerate(names)}
    bars = per_class_iou_figure(iou, "per-class IoU (%)")
    assert texts_inside(bars) and len(bars.axes[0].patches) == 171 - 25
    matrix = row_normalized(np.eye(171) + np.random.default_rng(0).integers(0, 3, (171, 171)))
    grid = confusion_matrix_figure(matrix, names, "confusion")
    assert texts_inside(grid) and grid.axes[0].images[0].get_array().shape == (171, 171)
    assert len(grid.axes[0].texts) == 0  # too small a cell for its number: the colour says it
    stem = tmp_path / "confusion_matrix"
    width, height = written_png_and_pdf(stem, plots.write_figure(grid, stem))
    assert 3000 < width < 6000 and 3000 < height < 6000
