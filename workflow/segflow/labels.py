"""Label maps on disk and in memory: where masks live, how they are read and resized.

A label map is a uint8 class-index image; pixels labelled ``IGNORE_INDEX`` count
nowhere (neither in the loss nor in any score): void categories and, with
``data.unlabelled: ignore``, every pixel no annotation covers; pseudo labels where the
teacher is not confident; regions that label-noise cleaning set aside.

The index writes one class mask and one uint16 instance map per labelled image under a
masks folder, named by the image's COCO id; cleaning and pseudo labelling write class
masks with the same names in their own folders, so a round can swap one folder for
another.

Labels are resized by nearest neighbour only, so a label stays a label.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IGNORE_INDEX = 255
# What a pixel that no annotation covers is (data.unlabelled): the background class,
# or unknown (IGNORE_INDEX), where every class is an object class.
UNLABELLED = ("background", "ignore")


def background_class(unlabelled: str) -> int | None:
    """The class index of the background (pixels no annotation covers), or None where
    those pixels are ignored and every class is an object class."""
    if unlabelled not in UNLABELLED:
        raise ValueError(f"unlabelled must be one of {UNLABELLED}, got {unlabelled!r}")
    return 0 if unlabelled == "background" else None


def mask_file(masks_dir: str | Path, coco_id: int) -> Path:
    """Where the class mask of image ``coco_id`` lives under ``masks_dir``."""
    return Path(masks_dir) / f"{int(coco_id)}.png"


def instance_file(masks_dir: str | Path, coco_id: int) -> Path:
    """Where the instance map of image ``coco_id`` lives (1 + annotation position; 0 off)."""
    return Path(masks_dir) / f"{int(coco_id)}_instances.png"


def resize_label(mask: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """A label (class or instance map) at ``height`` x ``width`` (square if no width)."""
    width = height if width is None else width
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(
        np.ascontiguousarray(mask), (width, height), interpolation=cv2.INTER_NEAREST
    )


def read_label(
    masks_dir: str | Path, coco_id: int, size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """The class mask of ``coco_id``, at ``size`` (height, width; n: n x n) when given."""
    return _read(mask_file(masks_dir, coco_id), "mask", coco_id, masks_dir, size)


def read_instances(
    masks_dir: str | Path, coco_id: int, size: int | tuple[int, int] | None = None
) -> np.ndarray:
    """The instance map of ``coco_id``, at ``size`` (height, width; n: n x n) when given."""
    return _read(
        instance_file(masks_dir, coco_id), "instance map", coco_id, masks_dir, size
    )


def write_label(mask: np.ndarray, masks_dir: str | Path, coco_id: int) -> None:
    """Write the class mask of ``coco_id`` (uint8 PNG, lossless)."""
    path = mask_file(masks_dir, coco_id)
    if not cv2.imwrite(str(path), np.asarray(mask, np.uint8)):
        raise OSError(f"could not write the mask of image id {coco_id} to {path}")


def write_instances(instances: np.ndarray, masks_dir: str | Path, coco_id: int) -> None:
    """Write the instance map of ``coco_id`` (uint16 PNG)."""
    path = instance_file(masks_dir, coco_id)
    if not cv2.imwrite(str(path), np.asarray(instances, np.uint16)):
        raise OSError(
            f"could not write the instance map of image id {coco_id} to {path}"
        )


def _read(path: Path, what: str, coco_id: int, masks_dir, size) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise FileNotFoundError(f"{what} of image {coco_id} missing under {masks_dir}")
    if size is None:
        return label
    height, width = (size, size) if isinstance(size, int) else size
    return resize_label(label, height, width)
