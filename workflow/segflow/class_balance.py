"""Rare classes: class weights for the cross-entropy and image repeat factors, from the
index's per-image pixel counts (images.parquet's ``pixels_<k>``) of a job's training
images.

- :func:`ce_class_weights`: ``class_weights: pixels`` weighs class c by
  1 / sqrt(share of training pixels in c), scaled to mean 1 over the classes; a list
  gives the weights as they are.
- :func:`repeat_factors`: repeat-factor sampling (LVIS, Gupta et al. 2019): an image
  is drawn r = max(1, max over its classes c of sqrt(t / f_c)) times as often as an image
  of common classes, f_c the share of training images that hold class c and t the
  ``oversample`` threshold. Classes in fewer than a share t of the images are
  oversampled, the rarest most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from segflow.tables import pixel_columns


def class_pixel_counts(rows: pd.DataFrame, n_classes: int) -> np.ndarray:
    return rows[pixel_columns(n_classes)].to_numpy(np.float64).sum(axis=0)


def class_image_shares(rows: pd.DataFrame, n_classes: int) -> np.ndarray:
    """The share of ``rows`` (training images) that hold each class."""
    if not len(rows):
        return np.zeros(n_classes)
    return (rows[pixel_columns(n_classes)].to_numpy() > 0).mean(axis=0)


def ce_class_weights(
    spec: str | list | None, rows: pd.DataFrame, n_classes: int
) -> list[float] | None:
    """The cross-entropy weights of ``spec`` (null, "pixels" or a list); see module doc."""
    if spec is None:
        return None
    if isinstance(spec, list):
        if len(spec) != n_classes:
            raise ValueError(
                f"class_weights: {len(spec)} weights for {n_classes} classes"
            )
        return [float(w) for w in spec]
    if spec != "pixels":
        raise ValueError(f"class_weights: {spec!r} is neither null, pixels nor a list")
    counts = class_pixel_counts(rows, n_classes)
    shares = counts / max(1.0, counts.sum())
    # A class without training pixels gets the weight of the rarest class that has some.
    floor = shares[shares > 0].min() if (shares > 0).any() else 1.0
    weights = 1.0 / np.sqrt(np.where(shares > 0, shares, floor))
    return (weights / weights.mean()).tolist()


def repeat_factors(rows: pd.DataFrame, n_classes: int, threshold: float) -> np.ndarray:
    """Each training image's repeat factor (see module doc), in the order of ``rows``."""
    present = rows[pixel_columns(n_classes)].to_numpy() > 0
    shares = present.mean(axis=0) if len(rows) else np.ones(n_classes)
    per_class = np.sqrt(threshold / np.where(shares > 0, shares, 1.0))
    per_class = np.maximum(1.0, per_class)
    return np.where(present, per_class, 1.0).max(axis=1, initial=1.0)
