"""Segmentation metrics from a confusion matrix accumulated over a whole split.

``confusion[i, j]`` counts pixels of ground-truth class ``i`` predicted as class ``j``.
Pixels labelled ``ignore_index`` never enter the matrix. A class that appears neither in
the ground truth nor in the predictions has no IoU (NaN) and is left out of the mean, as
in the VOC evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def confusion_matrix(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts for predictions and targets of any equal shape."""
    valid = target != ignore_index
    target = target[valid].long()
    prediction = prediction[valid].long()
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or equal {ignore_index}, "
            f"found {sorted(set(target.unique().tolist()) - set(range(num_classes)))}"
        )
    counts = torch.bincount(target * num_classes + prediction, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(
    confusion: torch.Tensor, class_names: Sequence[str]
) -> dict[str, float | dict[str, float | None]]:
    """mIoU, aAcc, mAcc and per-class IoU/accuracy, all in percent.

    Classes without an IoU are ``None`` in the per-class tables (JSON has no NaN).
    """
    confusion = confusion.double()
    true_positive = confusion.diag()
    gt_pixels = confusion.sum(dim=1)
    predicted_pixels = confusion.sum(dim=0)
    union = gt_pixels + predicted_pixels - true_positive
    iou = true_positive / union  # NaN where the class is absent from both
    accuracy = true_positive / gt_pixels  # NaN where the class is absent from the ground truth
    total = confusion.sum()

    def per_class(values: torch.Tensor) -> dict[str, float | None]:
        return {
            name: None if torch.isnan(value) else 100.0 * float(value)
            for name, value in zip(class_names, values, strict=True)
        }

    return {
        "mIoU": 100.0 * float(iou.nanmean()),
        "aAcc": 100.0 * float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mAcc": 100.0 * float(accuracy.nanmean()),
        "per_class_IoU": per_class(iou),
        "per_class_Acc": per_class(accuracy),
    }


def format_table(metrics: dict, title: str = "") -> str:
    """A plain-text per-class IoU table with the summary numbers underneath."""
    names = list(metrics["per_class_IoU"])
    width = max(12, *(len(name) for name in names))
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}")
    for name in names:
        iou, acc = metrics["per_class_IoU"][name], metrics["per_class_Acc"][name]
        lines.append(f"{name:<{width}}  {_pct(iou):>6}  {_pct(acc):>6}")
    lines.append(
        f"{'mIoU':<{width}}  {metrics['mIoU']:6.2f}   aAcc {metrics['aAcc']:.2f}  "
        f"mAcc {metrics['mAcc']:.2f}"
    )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
