"""The per-class IoU bar chart and the confusion matrix that end every evaluation: drawn
from the evaluation's own numbers, in the run directory and in TensorBoard."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_pipeline import TINY, compose_config

from emanet.engine import figures
from emanet.engine.evaluate import evaluate_checkpoint
from emanet.engine.figures import (
    BAR_COLOUR,
    MISSING,
    colour_scale,
    confusion_matrix_figure,
    per_class_iou_figure,
    row_normalized,
)
from emanet.engine.train import train


def white_frame(image: Image.Image, width: int = 4) -> bool:
    """Whether the outermost ``width`` pixels are all white: nothing drawn runs off the canvas."""
    pixels = np.asarray(image)
    frame = np.concatenate([pixels[:width].reshape(-1, 3), pixels[-width:].reshape(-1, 3),
                            pixels[:, :width].reshape(-1, 3), pixels[:, -width:].reshape(-1, 3)])
    return bool((frame == 255).all())


def recording(monkeypatch, calls: dict) -> None:
    """Record each figure function's arguments and the (image, boxes) it returns."""
    for name in ("per_class_iou_figure", "confusion_matrix_figure"):
        original = getattr(figures, name)

        def record(*args, original=original, name=name, **kwargs):
            result = original(*args, **kwargs)
            calls[name] = (args, result)
            return result

        monkeypatch.setattr(figures, name, record)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny demo training and an evaluate.py run of its checkpoint, with the figures each drew."""
    data_root = tmp_path_factory.mktemp("data")
    run_dir, eval_dir = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("eval")
    drawn = {"train": {}, "evaluate": {}}
    with pytest.MonkeyPatch.context() as monkeypatch:
        recording(monkeypatch, drawn["train"])
        trained = train(compose_config("train", [*TINY, f"data_root={data_root}"]), run_dir)
    with pytest.MonkeyPatch.context() as monkeypatch:
        recording(monkeypatch, drawn["evaluate"])
        cfg = compose_config(
            "evaluate", [*TINY, f"data_root={data_root}", f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"]
        )
        evaluated = evaluate_checkpoint(cfg, eval_dir)
    return {"train": (run_dir, trained, drawn["train"]), "evaluate": (eval_dir, evaluated, drawn["evaluate"])}


@pytest.mark.slow
@pytest.mark.parametrize("job", ["train", "evaluate"])
def test_runs_end_with_the_figures_drawn_from_their_metrics(tiny_runs, job):
    directory, metrics, drawn = tiny_runs[job]
    (per_class_iou, title), (iou_image, bars) = drawn["per_class_iou_figure"]
    (matrix, class_names, _), (matrix_image, cells) = drawn["confusion_matrix_figure"]
    # The PNGs are those figures, and no temporary file is left beside them.
    for name, image in (("per_class_iou", iou_image), ("confusion_matrix", matrix_image)):
        assert np.array_equal(np.asarray(Image.open(directory / f"{name}.png").convert("RGB")), np.asarray(image))
    assert not [path.name for path in directory.iterdir() if path.name.startswith(".")]

    # Bar lengths are the per-class IoU (400 pixels for 100 %); a class without an IoU has no bar.
    assert per_class_iou == metrics["per_class_IoU"] and f"{metrics['mIoU']:.2f}" in title
    assert set(bars) == {name for name, value in per_class_iou.items() if value is not None}
    for name, (left, top, right, _) in bars.items():
        assert right - left == round(per_class_iou[name] / 100 * 400)
        if right - left > 1:
            assert iou_image.getpixel((left + 1, top + 1)) == BAR_COLOUR

    # Matrix cells are the row-normalised confusion: rows sum to 1, the diagonal is each class's
    # accuracy, and each cell is coloured by its value on the 0-1 scale.
    assert list(class_names) == list(per_class_iou)
    accuracy = np.array([np.nan if value is None else value / 100 for value in metrics["per_class_Acc"].values()])
    np.testing.assert_allclose(np.diag(matrix), accuracy)
    labelled = ~np.isnan(accuracy)
    np.testing.assert_allclose(matrix[labelled].sum(axis=1), 1.0)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            left, top, _, _ = cells[row, column]
            value = matrix[row, column]
            expected = MISSING if np.isnan(value) else colour_scale(value)
            assert matrix_image.getpixel((int(left) + 2, int(top) + 2)) == expected
    assert white_frame(iou_image) and white_frame(matrix_image)


def test_training_logs_the_figures_to_tensorboard(tiny_runs):
    run_dir, _, drawn = tiny_runs["train"]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = {"val/per_class_iou": "per_class_iou_figure", "val/confusion_matrix": "confusion_matrix_figure"}
    for tag, name in tags.items():
        logged = events.Images(tag)
        assert [event.step for event in logged] == [6]
        image = Image.open(io.BytesIO(logged[-1].encoded_image_string)).convert("RGB")
        assert np.array_equal(np.asarray(image), np.asarray(drawn[name][1][0]))


def test_row_normalised_confusion():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    expected = np.array([[0.75, 0.25, 0.0], [np.nan] * 3, [0.25, 0.25, 0.5]])
    np.testing.assert_array_equal(row_normalized(confusion), expected)  # an absent class: a row of NaN


@pytest.mark.slow
def test_figures_fit_many_long_class_names():
    # COCO-Stuff's 171 classes with long names: every name and value stays on the canvas.
    names = [f"class {index} with a long name" for index in range(171)]
    iou = {name: (None if index % 7 == 0 else index * 100 / 171) for index, name in enumerate(names)}
    image, bars = per_class_iou_figure(iou, "per-class IoU (%)")
    assert white_frame(image) and len(bars) == 171 - 25
    matrix = row_normalized(np.eye(171) + np.random.default_rng(0).integers(0, 3, (171, 171)))
    image, cells = confusion_matrix_figure(matrix, names, "confusion")
    assert white_frame(image) and cells.shape == (171, 171, 4)
    assert (cells[..., 2] <= image.width).all() and (cells[..., 3] <= image.height).all()
