"""Column names of the tables the steps write, for every step that reads them."""

from __future__ import annotations

import numpy as np

ANNOTATION_COLUMNS = [
    "image_id",
    "annotation_id",
    "class_index",
    "area",
    "visible",
    "bbox_width",
    "bbox_height",
    "iscrowd",
]


def pixel_columns(n_classes: int) -> list[str]:
    """Names of the per-class pixel-count columns of images.parquet."""
    return [f"pixels_{k}" for k in range(n_classes)]


def object_class_presence(rows, n_classes: int) -> np.ndarray:
    """(N, n_classes) bool: the object classes each row of images.parquet holds (its
    classes_present; the background, where the dataset has one, is never among them)."""
    presence = np.zeros((len(rows), n_classes), bool)
    for row, present in enumerate(rows["classes_present"].fillna("")):
        presence[row, [int(k) for k in str(present).split()]] = True
    return presence


def image_columns(n_classes: int) -> list[str]:
    """The columns of images.parquet, in order."""
    return [
        "image_id",
        "coco_id",
        "file_name",
        "width",
        "height",
        "orientation",
        "split",
        "group",
        "brightness",
        "dhash",
        "n_objects",
        "classes_present",
        "ignored_pixels",
        *pixel_columns(n_classes),
    ]


def class_iou_column(class_name: str) -> str:
    """The per-class IoU column of history.csv and leaderboard.csv."""
    return f"iou_{class_name}"
