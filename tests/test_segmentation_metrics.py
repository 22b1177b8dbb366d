"""mIoU, IoU per class and pixel accuracy against a confusion matrix written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ldt.segmentation.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

I = 255  # ignore
# 4 classes. Class 3 never occurs (no ground truth, no prediction); class 2 is predicted but never in the ground truth.
TARGET = torch.tensor([[0, 0, 0, 1, 1],
                       [0, 1, 1, 1, I],
                       [I, I, 0, 1, 0]])
PREDICTION = torch.tensor([[0, 0, 1, 1, 2],
                           [0, 1, 1, 0, 3],   # the 3 sits on an ignored pixel: never counted
                           [2, 0, 0, 1, 2]])  # so do this 2 and this 0
# Counted by hand (rows = ground truth, columns = prediction), 12 labelled pixels:
#   gt 0 (6 px): predicted 0, 0, 1, 0, 0, 2  -> [4, 1, 1, 0]
#   gt 1 (6 px): predicted 1, 2, 1, 1, 0, 1  -> [1, 4, 1, 0]
HAND_MATRIX = torch.tensor([[4, 1, 1, 0],
                            [1, 4, 1, 0],
                            [0, 0, 0, 0],
                            [0, 0, 0, 0]])
# IoU = TP / (TP + FP + FN): class 0: 4 / (4 + 1 + 2) = 4/7; class 1: 4 / (4 + 1 + 2) = 4/7;
# class 2: 0 / (0 + 2 + 0) = 0 (predicted, absent); class 3: 0 / 0 -> NaN (excluded from the mean).
HAND_IOU = [4 / 7, 4 / 7, 0.0, math.nan]
HAND_MIOU = (4 / 7 + 4 / 7 + 0.0) / 3
HAND_ACCURACY = 8 / 12


def test_confusion_matrix_matches_hand_count():
    assert torch.equal(confusion_matrix(PREDICTION, TARGET, num_classes=4), HAND_MATRIX)


def test_iou_miou_and_accuracy_match_hand_values():
    iou = iou_per_class(HAND_MATRIX)
    assert iou[:3].tolist() == pytest.approx(HAND_IOU[:3])
    assert math.isnan(iou[3])
    assert mean_iou(HAND_MATRIX) == pytest.approx(HAND_MIOU)
    assert pixel_accuracy(HAND_MATRIX) == pytest.approx(HAND_ACCURACY)


def test_ignored_pixels_never_count():
    other = PREDICTION.clone()
    other[TARGET == I] = 1  # change every prediction on an ignored pixel
    assert torch.equal(confusion_matrix(other, TARGET, num_classes=4), HAND_MATRIX)
    assert confusion_matrix(PREDICTION, torch.full_like(TARGET, I), num_classes=4).sum() == 0
    assert math.isnan(mean_iou(torch.zeros(4, 4, dtype=torch.long)))


def test_running_matrix_accumulates_batches_and_summarises():
    running = ConfusionMatrix(num_classes=4)
    for row in range(3):  # one row per update: same as one call on everything
        running.update(PREDICTION[row:row + 1], TARGET[row:row + 1])
    assert torch.equal(running.matrix, HAND_MATRIX)
    summary = running.summary(["a", "b", "c", "d"])
    assert summary["miou"] == pytest.approx(100 * HAND_MIOU, abs=1e-3)
    assert summary["pixel_accuracy"] == pytest.approx(100 * HAND_ACCURACY, abs=1e-3)
    assert summary["iou"]["c"] == 0.0 and summary["iou"]["d"] is None


def test_bad_values_and_shapes_raise():
    with pytest.raises(ValueError, match=r"target holds values \[7\]"):
        confusion_matrix(PREDICTION, torch.where(TARGET == 1, 7, TARGET), num_classes=4)
    with pytest.raises(ValueError, match=r"prediction holds values \[4\]"):
        confusion_matrix(torch.full_like(TARGET, 4), TARGET, num_classes=4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PREDICTION[:2], TARGET, num_classes=4)
