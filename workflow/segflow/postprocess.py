"""Post-processing tuned on OOF, as nnU-Net does: remove small connected components.

For each class, connected components (8-connectivity) of the predicted label map smaller
than a minimum area become background (class 0). The area is chosen per class from
:data:`AREA_GRID` (shares of the image) on the OOF predictions and their labels, by
coordinate ascent on OOF mIoU, and a class keeps a non-zero area only where it raises
OOF mIoU: the post-processing never lowers OOF mIoU.

Tuning is exact and cheap: every component is labelled once, with its area and the
histogram of its pixels' true labels; removing it moves that histogram from its class's
column of the confusion matrix to background's, so each candidate area is scored from
the components alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segflow.labels import IGNORE_INDEX
from segflow.metrics import confusion_matrix, mean_iou

BACKGROUND = 0
# Minimum component areas tried, as shares of the image (0: keep every component).
AREA_GRID = (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032)


def components(label_map: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """(component index per pixel (0 = not ``cls``), area of each component 1..)."""
    _, component, stats, _ = cv2.connectedComponentsWithStats(
        (label_map == cls).astype(np.uint8), connectivity=8
    )
    return component, stats[:, cv2.CC_STAT_AREA]


def remove_small_components(
    label_map: np.ndarray, min_area: dict[int, int]
) -> np.ndarray:
    """A copy of ``label_map`` whose components of class c smaller than ``min_area[c]``
    pixels are background."""
    out = label_map.copy()
    for cls, area in min_area.items():
        if area <= 0:
            continue
        component, areas = components(label_map, cls)
        small = np.flatnonzero(areas < area)
        small = small[small > 0]  # component 0 is "not this class"
        if len(small):
            out[np.isin(component, small)] = BACKGROUND
    return out


@dataclass
class ClassComponents:
    """Every predicted component of one class over the OOF set: area share and the
    histogram of its pixels' true labels (ignored pixels left out)."""

    shares: list[float]
    truth: list[np.ndarray]


def collect_components(
    predicted, truth, n_classes: int
) -> tuple[dict[int, ClassComponents], np.ndarray]:
    """(components of every object class, the confusion matrix) of the (predicted,
    truth) label map pairs, streamed one pair at a time."""
    found = {c: ClassComponents([], []) for c in range(1, n_classes)}
    confusion = np.zeros((n_classes, n_classes), np.int64)
    for label_map, true_map in zip(predicted, truth, strict=True):
        label_map, true_map = np.asarray(label_map), np.asarray(true_map)
        confusion += confusion_matrix(true_map, label_map, n_classes)
        size = label_map.size
        labelled = true_map != IGNORE_INDEX
        truth_of_labelled = true_map[labelled].astype(np.int64)
        for cls in np.unique(label_map):
            if cls == BACKGROUND or cls >= n_classes:
                continue
            component, areas = components(label_map, cls)
            # Row k: the true labels of component k's pixels.
            histogram = np.bincount(
                component[labelled].astype(np.int64) * n_classes + truth_of_labelled,
                minlength=len(areas) * n_classes,
            ).reshape(len(areas), n_classes)
            for k in range(1, len(areas)):
                found[int(cls)].shares.append(areas[k] / size)
                found[int(cls)].truth.append(histogram[k])
    return found, confusion


def moved_counts(parts: ClassComponents, share: float) -> np.ndarray:
    """True-label histogram of the components below ``share``: what their removal moves."""
    # Only classes with components are tuned, so parts.truth is never empty.
    n = len(parts.truth[0])
    return sum((h for s, h in zip(parts.shares, parts.truth) if s < share), np.zeros(n))


def with_removal(confusion: np.ndarray, cls: int, moved: np.ndarray) -> np.ndarray:
    """``confusion`` after pixels of true labels ``moved``, predicted ``cls``, are
    predicted background instead (a negative ``moved`` undoes a removal)."""
    out = confusion.copy()
    out[:, cls] -= moved.astype(np.int64)
    out[:, BACKGROUND] += moved.astype(np.int64)
    return out


def tune_min_areas(
    predicted, truth, n_classes: int, sweeps: int = 2
) -> tuple[dict[int, float], float, float]:
    """(area share per class (0: off), OOF mIoU before, after) on label map pairs (two
    iterables, streamed); coordinate ascent over the classes, each step keeping the
    best area of :data:`AREA_GRID` for one class given the others (its current area
    among the candidates, so OOF mIoU never falls; ties keep the smaller area)."""
    parts, confusion = collect_components(predicted, truth, n_classes)
    before = mean_iou(confusion)
    chosen = {c: 0.0 for c in parts if parts[c].shares}
    for _ in range(sweeps):
        for cls in chosen:
            # The confusion with every class's removal but this one's.
            base = with_removal(confusion, cls, -moved_counts(parts[cls], chosen[cls]))
            scores = {
                share: mean_iou(
                    with_removal(base, cls, moved_counts(parts[cls], share))
                )
                for share in AREA_GRID
            }
            top = max(scores.values())
            chosen[cls] = min(s for s in AREA_GRID if scores[s] >= top - 1e-12)
            confusion = with_removal(base, cls, moved_counts(parts[cls], chosen[cls]))
    return chosen, before, mean_iou(confusion)


def min_areas_in_pixels(
    shares: dict[int, float], side: tuple[int, int]
) -> dict[int, int]:
    """The tuned shares as pixel areas of label maps of ``side``: an integer area is
    below s x pixels exactly when it is below its ceiling, as tuning compared."""
    pixels = side[0] * side[1]
    return {c: math.ceil(s * pixels) for c, s in shares.items() if s > 0}
