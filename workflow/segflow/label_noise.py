"""Label-noise scoring: suspicious labels from honest out-of-fold predictions.

Every labelled image was predicted by a model that never trained on it (OOF), so where a
confident OOF prediction and the label disagree, the label is suspect. "Confident" is
per class, as in confident learning (Northcutt et al.): the threshold of class k is its
mean self-confidence, the mean OOF probability of k over the pixels labelled k. A pixel
is a label issue when its label's probability is below that label's threshold and some
other class reaches its own threshold (the most probable such class is the suggested
label). A class the model has not learnt (threshold below ``min_class_confidence``) is
never confident and its annotations are not judged: the judge is only as good as the
OOF model. Scored at the stored probability size:

- per image: the IoU between OOF prediction and label over the classes in either
  (segflow.metrics.image_iou), and the share of issue pixels;
- per annotation (its visible pixels, from the index's instance maps): ``issue_share``,
  the share of its pixels that are issues, flagged at ``issue_share`` or more; also its
  ``agreement`` (share predicted as its class), ``own_probability`` and the suggested
  other class. A swapped class, a shifted or a bloated polygon all raise the issue share
  even when the rest of the image is right. Suspected kind: ``class`` when the suggested
  label is another object class, else ``region`` (the polygon is off: shifted, bloated);
  objects smaller than ``min_region`` of the image, and void annotations, are not
  judged;
- missed objects: connected regions of issue pixels labelled background whose suggested
  label is an object class, flagged when at least ``missed_region`` of the image (after
  a small opening, so the rims where prediction and label outlines differ do not count).
  A dataset without a background class (``data.unlabelled: ignore``) has no missed
  objects to find: its unlabelled pixels are ignored, never judged.

An image is flagged when its IoU is below ``iou_below``, when it is among the
``worst_fraction`` lowest IoUs, or when it holds a flagged annotation or missed region.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from segflow.labels import IGNORE_INDEX, resize_label
from segflow.metrics import image_iou
from segflow.settings import CleanSettings

ACTIONS = ("drop", "relabel", "ignore", "none")
SCORE_COLUMNS = [
    "level",
    "image_id",
    "annotation_id",
    "region",
    "class_index",
    "pixels",
    "iou",
    "issue_share",
    "agreement",
    "own_probability",
    "other_class",
    "other_probability",
    "bbox",
    "flagged",
    "suspected",
]


@dataclass
class ImageScores:
    """Scores and maps of one image at the probability size (see module doc)."""

    image: dict
    annotations: list[dict]
    regions: list[dict]
    label: np.ndarray  # (h, w) the label it was scored on
    instances: np.ndarray  # (h, w) its instance map
    prediction: np.ndarray  # (h, w) uint8 OOF argmax
    issue: np.ndarray  # (h, w) bool: label issue pixels
    suggested: np.ndarray  # (h, w) uint8: the confident other class (where issue)
    supported: (
        np.ndarray
    )  # (h, w) bool: the label's own probability reaches its threshold
    missed: np.ndarray  # (h, w) bool: the flagged missed regions


def self_confidence_sums(
    label: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of p_k over the pixels labelled k, their count) per class k (for clean's
    self_confidence_thresholds)."""
    n_classes = probabilities.shape[0]
    labelled = label != IGNORE_INDEX
    own = np.take_along_axis(
        probabilities, np.where(labelled, label, 0)[None].astype(np.int64), axis=0
    )[0]
    return (
        np.bincount(
            label[labelled].ravel(), weights=own[labelled].ravel(), minlength=n_classes
        )[:n_classes],
        np.bincount(label[labelled].ravel(), minlength=n_classes)[:n_classes],
    )


def score_image(
    image_id: str,
    label: np.ndarray,
    instances: np.ndarray,
    probabilities: np.ndarray,
    annotations: pd.DataFrame,
    thresholds: np.ndarray,
    settings: CleanSettings,
    scale: tuple[float, float] = (1.0, 1.0),
    background: int | None = 0,
    trusted: np.ndarray | None = None,
) -> ImageScores:
    """Score one image. ``label`` and ``instances`` are at the size of ``probabilities`` (C, h, w);
    ``annotations`` are the image's rows of annotations.parquet, in order (instance value
    k + 1 is its k-th row); ``thresholds`` the classes' mean self-confidence; ``scale``
    (x, y) maps region boxes to image pixels; ``background`` the background class (None:
    the dataset has none); ``trusted``: the classes the judge segments well enough to
    judge or be suggested (default: all)."""
    n_classes = probabilities.shape[0]
    thresholds = np.asarray(thresholds, np.float64)
    learnt = thresholds >= settings.min_class_confidence
    if trusted is not None:
        learnt &= np.asarray(trusted, bool)
    prediction = probabilities.argmax(axis=0).astype(np.uint8)
    labelled = label != IGNORE_INDEX
    safe_label = np.where(labelled, label, 0).astype(np.int64)
    own = np.take_along_axis(probabilities, safe_label[None], axis=0)[0]
    above = probabilities >= np.where(learnt, thresholds, np.inf)[:, None, None]
    np.put_along_axis(
        above, safe_label[None], False, axis=0
    )  # another class than the label
    suggested = np.where(above, probabilities, -1.0).argmax(axis=0).astype(np.uint8)
    supported = own >= thresholds[safe_label]
    issue = above.any(axis=0) & ~supported & labelled
    min_pixels = max(1.0, settings.min_region * label.size)

    annotation_rows = []
    for position, (annotation_id, class_index) in enumerate(
        zip(annotations["annotation_id"], annotations["class_index"])
    ):
        region = instances == position + 1
        pixels = int(region.sum())
        row = {
            "level": "annotation",
            "image_id": image_id,
            "annotation_id": int(annotation_id),
            "class_index": int(class_index),
            "pixels": pixels,
            "flagged": False,
        }
        # A void annotation (IGNORE_INDEX) is no class: its pixels are never judged.
        judged = class_index != IGNORE_INDEX and learnt[class_index]
        if pixels >= min_pixels and judged:
            issue_share = float(issue[region].mean())
            if issue[region].any():
                other = int(
                    np.bincount(suggested[region & issue], minlength=n_classes).argmax()
                )
            else:
                others = probabilities[:, region].mean(axis=1)
                others[class_index] = -1.0
                other = int(others.argmax())
            flagged = issue_share >= settings.issue_share
            row.update(
                issue_share=issue_share,
                agreement=float((prediction[region] == class_index).mean()),
                own_probability=float(own[region].mean()),
                other_class=other,
                other_probability=float(probabilities[other][region].mean()),
                flagged=flagged,
                suspected=("class" if other != background else "region")
                if flagged
                else None,
            )
        annotation_rows.append(row)

    # Missed objects: issue pixels on labelled background that a confident object class claims.
    if background is None:
        candidate = np.zeros(label.shape, np.uint8)
    else:
        candidate = (issue & (label == background) & (suggested != background)).astype(
            np.uint8
        )
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n_components, components, stats, _ = cv2.connectedComponentsWithStats(
        candidate, connectivity=8
    )
    missed = np.zeros(label.shape, bool)
    region_rows = []
    for k in range(1, n_components):
        pixels = int(stats[k, cv2.CC_STAT_AREA])
        if pixels < max(1.0, settings.missed_region * label.size):
            continue
        inside = components == k
        missed |= inside
        claimed = int(np.bincount(suggested[inside], minlength=n_classes).argmax())
        x, y, w, h = (float(v) for v in stats[k, :4])
        box = (x * scale[0], y * scale[1], w * scale[0], h * scale[1])
        region_rows.append(
            {
                "level": "region",
                "image_id": image_id,
                "region": len(region_rows),
                "class_index": claimed,
                "pixels": pixels,
                "other_class": claimed,
                "other_probability": float(probabilities[claimed][inside].mean()),
                "bbox": " ".join(f"{v:.0f}" for v in box),
                "flagged": True,
                "suspected": "missing",
            }
        )

    image_row = {
        "level": "image",
        "image_id": image_id,
        "pixels": int(label.size),
        "iou": image_iou(label, prediction, n_classes),
        "issue_share": float(issue.mean()),
        "flagged": False,
        "suspected": None,
    }
    return ImageScores(
        image_row,
        annotation_rows,
        region_rows,
        label,
        instances,
        prediction,
        issue,
        suggested,
        supported,
        missed,
    )


def flag_images(
    image_rows: pd.DataFrame,
    annotation_rows: pd.DataFrame,
    region_rows: pd.DataFrame,
    settings: CleanSettings,
) -> pd.Series:
    """Reasons (space separated, empty when clean) per image id; see module doc."""
    reasons = {image_id: [] for image_id in image_rows["image_id"]}
    iou = image_rows.set_index("image_id")["iou"].fillna(1.0)
    if settings.iou_below is not None:
        for image_id in iou.index[iou < settings.iou_below]:
            reasons[image_id].append("low_iou")
    if settings.worst_fraction:
        n_worst = int(round(settings.worst_fraction * len(iou)))
        for image_id in iou.sort_values(kind="stable").index[:n_worst]:
            if "low_iou" not in reasons[image_id]:
                reasons[image_id].append("low_iou")
    for table, reason in ((annotation_rows, "annotation"), (region_rows, "missed")):
        if len(table):
            for image_id in table.loc[
                table["flagged"].astype(bool), "image_id"
            ].unique():
                reasons[image_id].append(reason)
    return pd.Series(
        {image_id: " ".join(r) for image_id, r in reasons.items()}, name="reasons"
    )


def cleaned_mask(
    label: np.ndarray,
    instances: np.ndarray,
    scores: ImageScores,
    flagged_positions: list[int],
    low_iou: bool,
    action: str,
) -> np.ndarray:
    """The label of one flagged image after ``action`` (relabel / ignore), at the label's size."""
    if action in ("drop", "none"):
        return label
    if action not in ACTIONS:
        raise ValueError(f"clean.action must be one of {ACTIONS}, got {action!r}")
    height, width = label.shape

    def full_size(small: np.ndarray) -> np.ndarray:
        return resize_label(np.asarray(small, np.uint8), height, width)

    region = (
        scores.missed | scores.issue if low_iou else scores.missed
    )  # IoU alone blames no object: its issue pixels
    region = full_size(region).astype(bool)
    for position in flagged_positions:
        region |= instances == position + 1
    out = label.copy()
    if action == "ignore":
        out[region] = IGNORE_INDEX
    else:  # relabel: issue -> suggested label; confidently supported -> kept; the rest -> 255
        issue, supported = (
            full_size(scores.issue).astype(bool),
            full_size(scores.supported).astype(bool),
        )
        relabelled = np.where(
            issue, full_size(scores.suggested), np.where(supported, label, IGNORE_INDEX)
        ).astype(np.uint8)
        out[region] = relabelled[region]
    return out
