"""The competition metric, in one place: mIoU from ONE confusion matrix over the whole set.

Per class IoU = TP / (TP + FP + FN) over every pixel of the set; a class absent from both
ground truth and prediction has no IoU (NaN) and is left out of the mean, as the
competition does. (smp.metrics.iou_score(reduction="macro") scores such a class as 1.0
and averages per image: on real data the two differ a lot.) Pixels labelled
IGNORE_INDEX are not counted.
"""

from __future__ import annotations

import numpy as np

from segflow.labels import IGNORE_INDEX


def confusion_matrix(target, prediction, n_classes: int):
    """(n_classes, n_classes) counts, rows = ground truth, columns = prediction.

    Works on numpy arrays and on torch tensors (on their own device, so validation on a
    GPU never copies whole masks to the host).
    """
    keep = target != IGNORE_INDEX
    truth, predicted = target[keep].reshape(-1), prediction[keep].reshape(-1)
    # Widen before the product: uint8 labels times 59 classes wrap around in uint8.
    if isinstance(truth, np.ndarray):
        index = truth.astype(np.int64) * n_classes + predicted.astype(np.int64)
        return np.bincount(index, minlength=n_classes * n_classes).reshape(
            n_classes, n_classes
        )
    import torch

    index = truth.long() * n_classes + predicted.long()
    return torch.bincount(index, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def iou_per_class(confusion) -> np.ndarray:
    """IoU of each class; NaN where the class is absent from ground truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion) -> float:
    """The competition mIoU: nanmean of the per-class IoU of one confusion matrix."""
    iou = iou_per_class(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def image_iou(target: np.ndarray, prediction: np.ndarray, n_classes: int) -> float:
    """One image's mIoU over the classes present in its label or its prediction."""
    return mean_iou(confusion_matrix(target, prediction, n_classes))


def per_class_iou(confusion, classes: list[str]) -> dict[str, float | None]:
    """Class name -> IoU, None where the class is absent (JSON has no NaN)."""
    iou = iou_per_class(confusion)
    return {name: None if np.isnan(v) else float(v) for name, v in zip(classes, iou)}
