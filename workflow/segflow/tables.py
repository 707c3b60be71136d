"""Column names of the tables the steps write, for every step that reads them."""

from __future__ import annotations

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


def image_columns(n_classes: int) -> list[str]:
    """The columns of images.parquet, in order."""
    return [
        "image_id",
        "coco_id",
        "file_name",
        "width",
        "height",
        "split",
        "group",
        "brightness",
        "n_objects",
        "classes_present",
        *pixel_columns(n_classes),
    ]


def class_iou_column(class_name: str) -> str:
    """The per-class IoU column of history.csv and leaderboard.csv."""
    return f"iou_{class_name}"
