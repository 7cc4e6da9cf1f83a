"""Metrics on hand-built confusion matrices with known answers."""

import math

import pytest
import torch

from emanet.engine.metrics import confusion_matrix, format_table, metrics_from_confusion

NAMES = ("background", "cat", "dog", "bird")


def test_confusion_matrix_counts_pixels_and_skips_ignore():
    target = torch.tensor([[0, 0, 1, 255], [2, 1, 255, 0]])
    prediction = torch.tensor([[0, 1, 1, 2], [2, 0, 0, 0]])
    expected = torch.tensor(
        [
            [2, 1, 0, 0],  # gt 0: predicted 0, 1, 0
            [1, 1, 0, 0],  # gt 1: predicted 1, 0
            [0, 0, 1, 0],  # gt 2: predicted 2
            [0, 0, 0, 0],
        ]
    )
    assert torch.equal(confusion_matrix(prediction, target, 4), expected)


def test_confusion_matrix_rows_are_ground_truth_and_columns_predictions():
    target, prediction = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 0, 1])
    # gt 0 predicted as 1 twice: row 0, column 1.
    assert torch.equal(confusion_matrix(prediction, target, 2), torch.tensor([[1, 2], [0, 1]]))


def test_confusion_matrix_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[7\]"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 255]), 4)


def test_metrics_with_an_absent_class_and_a_false_positive_class():
    confusion = torch.tensor(
        [
            [6, 2, 0, 0],  # background: 8 gt pixels, 6 right
            [1, 3, 0, 0],  # cat: 4 gt pixels, 3 right
            [0, 0, 0, 0],  # dog: absent from gt and predictions -> no IoU
            [0, 0, 0, 0],  # bird: absent from gt ...
        ]
    )
    confusion[0, 3] = 1  # ... but predicted once -> IoU 0, counted in the mean
    metrics = metrics_from_confusion(confusion, NAMES)
    iou_background = 6 / (9 + 7 - 6)
    iou_cat = 3 / (4 + 5 - 3)
    assert metrics["per_class_IoU"]["background"] == pytest.approx(100 * iou_background)
    assert metrics["per_class_IoU"]["cat"] == pytest.approx(100 * iou_cat)
    assert metrics["per_class_IoU"]["dog"] is None
    assert metrics["per_class_IoU"]["bird"] == 0.0
    assert metrics["mIoU"] == pytest.approx(100 * (iou_background + iou_cat + 0.0) / 3)
    assert metrics["aAcc"] == pytest.approx(100 * 9 / 13)
    # Accuracy is defined only for classes present in the ground truth.
    assert metrics["per_class_Acc"]["bird"] is None
    assert metrics["mAcc"] == pytest.approx(100 * (6 / 9 + 3 / 4) / 2)


def test_perfect_prediction_scores_100():
    confusion = torch.diag(torch.tensor([5, 3, 0, 2]))
    metrics = metrics_from_confusion(confusion, NAMES)
    assert metrics["mIoU"] == 100.0 and metrics["aAcc"] == 100.0 and metrics["mAcc"] == 100.0
    assert metrics["per_class_IoU"]["dog"] is None


def test_split_level_matrix_differs_from_averaging_per_image():
    # Image 1: small cat, missed. Image 2: large cat, found. Per-image averaging would
    # weigh both images equally; the split-level matrix weighs pixels.
    target1, pred1 = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0])
    target2, pred2 = torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 1, 0])
    confusion = confusion_matrix(pred1, target1, 2) + confusion_matrix(pred2, target2, 2)
    metrics = metrics_from_confusion(confusion, NAMES[:2])
    assert metrics["per_class_IoU"]["cat"] == pytest.approx(75.0)
    assert metrics["per_class_IoU"]["background"] == pytest.approx(80.0)
    assert metrics["mIoU"] == pytest.approx(77.5)
    # Accuracy is recall (per ground-truth row): 3 of 4 cat pixels; precision would be 3/3.
    assert metrics["per_class_Acc"]["cat"] == pytest.approx(75.0)
    assert metrics["per_class_Acc"]["background"] == pytest.approx(100.0)
    assert metrics["mAcc"] == pytest.approx(87.5)


def test_format_table_lists_every_class_and_marks_absent_ones():
    metrics = metrics_from_confusion(torch.diag(torch.tensor([1, 1, 0, 1])), NAMES)
    table = format_table(metrics, "val")
    assert table.splitlines()[0] == "val"
    dog_line = next(line for line in table.splitlines() if line.startswith("dog"))
    assert dog_line.split()[1:] == ["-", "-"]
    assert "100.00" in table and not math.isnan(metrics["mIoU"])
