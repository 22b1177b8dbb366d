"""Confusion-matrix segmentation metrics: IoU per class, mIoU, pixel accuracy (ignore index 255).

Convention (that of the Cityscapes evaluation script and mmsegmentation): the confusion matrix counts every labelled
pixel (rows = ground truth, columns = prediction; pixels labelled ``ignore_index`` are skipped). A class's IoU is
TP / (TP + FP + FN). A class with no ground-truth pixel *and* no predicted pixel has 0 / 0 = NaN and is left out of
the mean, so mIoU is over the classes present in the ground truth or the predictions; a class that is predicted
but absent from the ground truth has IoU 0 and counts. Accumulate over a whole evaluation set first, then take
IoUs: mIoU over a dataset is not the mean of per-image mIoUs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ldt.segmentation.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of (ground truth, prediction) pairs over the non-ignored pixels.

    ``prediction`` and ``target`` are integer class maps of the same shape (e.g. (N, H, W)); target values other
    than 0..num_classes-1 and ``ignore_index`` raise, as do predictions outside 0..num_classes-1.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target shape {tuple(target.shape)}")
    target, prediction = target.reshape(-1).long(), prediction.reshape(-1).long()
    valid = target != ignore_index
    target, prediction = target[valid], prediction[valid]
    bad_target = (target < 0) | (target >= num_classes)
    if bad_target.any():
        raise ValueError(f"target holds values {torch.unique(target[bad_target])[:10].tolist()} outside 0..{num_classes - 1} "
                         f"and ignore {ignore_index}")
    bad_prediction = (prediction < 0) | (prediction >= num_classes)
    if bad_prediction.any():
        raise ValueError(f"prediction holds values {torch.unique(prediction[bad_prediction])[:10].tolist()} outside "
                         f"0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """float64 IoU of each class; NaN where the class has neither ground truth nor predictions."""
    matrix = matrix.double()
    tp = matrix.diagonal()
    union = matrix.sum(0) + matrix.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(matrix: torch.Tensor) -> float:
    """Mean IoU over the classes present (non-NaN IoU); NaN if no pixel was counted."""
    iou = iou_per_class(matrix)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(matrix: torch.Tensor) -> float:
    """Correct pixels over counted pixels; NaN if none was counted."""
    total = matrix.sum()
    return float(matrix.diagonal().sum().double() / total) if total > 0 else float("nan")


class ConfusionMatrix:
    """Running confusion matrix over an evaluation set, kept on ``device`` (that of the predictions avoids copies)."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                 device: torch.device | str = "cpu") -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted class maps (e.g. ``logits.argmax(1)``) and their labels."""
        self.matrix += confusion_matrix(prediction.to(self.matrix.device), target.to(self.matrix.device),
                                        self.num_classes, self.ignore_index)

    def iou(self) -> torch.Tensor:
        return iou_per_class(self.matrix)

    def mean_iou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)

    def summary(self, class_names: Sequence[str] = CLASS_NAMES) -> dict:
        """JSON-ready percentages: mIoU, pixel accuracy and the IoU of every class (None for absent classes)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        percent = lambda value: None if value != value else round(100 * value, 4)  # noqa: E731  (NaN -> None)
        return {
            "miou": percent(self.mean_iou()),
            "pixel_accuracy": percent(self.pixel_accuracy()),
            "iou": {name: percent(float(v)) for name, v in zip(class_names, self.iou())},
        }
