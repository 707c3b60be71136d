"""Cross-validation folds over the labelled images: ``folds.csv`` with image_id, fold.

Methods (``cv.method``):

- ``kfold``: shuffled K-fold.
- ``stratified``: by each image's dominant non-background class (most pixels).
- ``multilabel_stratified``: iterative stratification over class presence (iterstrat), so
  rare classes that share images with common ones still spread over every fold.
- ``group``: whole groups per fold (``cv.group_by``, default the batch folder); the same
  as ``kfold`` with ``cv.group_by`` set.
- ``holdout``: one validation fold; images that are never validated get fold -1. The
  validation images are those of the competition's ``val.json`` when ``data.val`` is set,
  otherwise the first fold of a multilabel-stratified split.

With ``cv.group_by`` set, no group is ever split between folds: ``stratified`` becomes
StratifiedGroupKFold and ``multilabel_stratified`` assigns whole groups greedily so that
each fold gets its share of every class (see ``_multilabel_group_splits``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)

from segflow.coco import DataError, read_json
from segflow.groups import fold_leaks, related_images
from segflow.io import write_json, write_table
from segflow.step_cli import arg, run_step
from segflow.tables import object_class_presence, pixel_columns

METHODS = ("holdout", "kfold", "stratified", "multilabel_stratified", "group")


def groups_of(images: pd.DataFrame, group_by: str) -> np.ndarray:
    """Group label per image: ``folder`` (the index's group column) or a regex's first capture."""
    if group_by == "folder":
        return images["group"].to_numpy()
    pattern = re.compile(group_by)
    groups = []
    for file_name in images["file_name"]:
        match = pattern.search(file_name)
        if match is None:
            raise DataError(
                f"cv.group_by: pattern '{group_by}' does not match image '{file_name}'"
            )
        groups.append(match.group(1) if pattern.groups else match.group(0))
    return np.asarray(groups)


def object_pixels(images: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(N, n_classes) pixel counts of the object classes each image contains (the
    index's classes_present: the background, in every image, stratifies nothing)."""
    pixels = images[pixel_columns(n_classes)].to_numpy(dtype=np.int64)
    return np.where(object_class_presence(images, n_classes), pixels, 0)


def class_presence(images: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(N, n_classes) 0/1 matrix: which object classes each image contains."""
    return (object_pixels(images, n_classes) > 0).astype(np.int64)


def dominant_class(images: pd.DataFrame, n_classes: int) -> np.ndarray:
    """Each image's object class with the most pixels (-1 for images with none)."""
    pixels = object_pixels(images, n_classes)
    return np.where(pixels.max(axis=1) > 0, pixels.argmax(axis=1), -1)


def make_folds(
    images: pd.DataFrame,
    n_classes: int,
    method: str,
    n_folds: int,
    seed: int,
    group_by: str | None = None,
    holdout_ids: set[str] | None = None,
) -> pd.DataFrame:
    """Assign each labelled image of the index a validation fold (see module doc)."""
    if method not in METHODS:
        raise ValueError(f"cv.method must be one of {METHODS}, got {method!r}")
    train = images[images["split"] == "train"].reset_index(drop=True)
    if method == "group" and group_by is None:
        group_by = "folder"
    groups = groups_of(train, group_by) if group_by else None
    if method == "holdout" and holdout_ids is not None:
        fold = np.where(train["image_id"].isin(holdout_ids), 0, -1)
        if not (fold == 0).any():
            raise DataError("data.val: none of its images is among the training images")
        if groups is not None and not _groups_intact(groups, fold):
            raise DataError(
                "data.val splits a cv.group_by group between training and validation"
            )
        return pd.DataFrame({"image_id": train["image_id"], "fold": fold})

    n_units = len(np.unique(groups)) if groups is not None else len(train)
    if n_units < n_folds:
        unit = "groups" if groups is not None else "images"
        raise DataError(
            f"cv.folds={n_folds} but only {n_units} {unit} to split;"
            " lower cv.folds or change cv.group_by"
        )

    index = np.arange(len(train))
    if method == "kfold" and groups is None:
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(index)
    elif method == "stratified":
        labels = dominant_class(train, n_classes)
        if groups is None:
            splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(
                index, labels
            )
        else:
            splits = StratifiedGroupKFold(
                n_folds, shuffle=True, random_state=seed
            ).split(index, labels, groups)
    elif method in ("multilabel_stratified", "holdout"):
        presence = class_presence(train, n_classes)
        presence = presence[:, presence.any(axis=0)]  # a class in no image: no stratum
        if groups is None:
            splits = MultilabelStratifiedKFold(
                n_folds, shuffle=True, random_state=seed
            ).split(index, presence)
        else:
            splits = _multilabel_group_splits(presence, groups, n_folds, seed)
    else:  # group, or kfold with groups
        splits = GroupKFold(n_folds, shuffle=True, random_state=seed).split(
            index, groups=groups
        )

    fold = np.full(len(train), -1)
    for k, (_, val_index) in enumerate(splits):
        fold[val_index] = k
        if method == "holdout":
            break
    return pd.DataFrame({"image_id": train["image_id"], "fold": fold})


def _multilabel_group_splits(
    presence: np.ndarray, groups: np.ndarray, n_folds: int, seed: int
):
    """Greedy multilabel stratification of whole groups.

    Groups go, largest first (ties in seeded random order), to the fold where they bring
    every class's image count and the fold size closest to 1/n_folds of the total,
    measured relative to that target so rare classes weigh as much as common ones.
    """
    names, inverse = np.unique(groups, return_inverse=True)
    features = np.zeros((len(names), presence.shape[1] + 1))
    np.add.at(features, inverse, np.column_stack([presence, np.ones(len(presence))]))
    target = features.sum(axis=0) / n_folds
    scale = 1.0 / np.maximum(target, 1.0)
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-(features[order] * scale).sum(axis=1), kind="stable")]
    totals = np.zeros((n_folds, features.shape[1]))
    assignment = np.empty(len(names), np.int64)
    for g in order:
        before = (((totals - target) * scale) ** 2).sum(axis=1)
        after = (((totals + features[g] - target) * scale) ** 2).sum(axis=1)
        k = int(np.argmin(after - before))
        assignment[g] = k
        totals[k] += features[g]
    for k in range(n_folds):
        yield None, np.flatnonzero(assignment[inverse] == k)


def _groups_intact(groups: np.ndarray, fold: np.ndarray) -> bool:
    table = pd.DataFrame({"group": groups, "fold": fold})
    return bool((table.groupby("group")["fold"].nunique() == 1).all())


def leak_summary(
    images: pd.DataFrame, folds: pd.DataFrame, group_by: str | None, n_folds: int
) -> dict:
    """Related labelled images (sequences, near-duplicates: segflow.groups) and how
    many of their pairs these folds split; a warning where the OOF is likely optimistic."""
    train = images[images["split"] == "train"].reset_index(drop=True)
    related = related_images(train, min_groups=2 * n_folds)
    fold = train[["image_id"]].merge(folds, on="image_id", how="left")["fold"]
    leaks = fold_leaks(related, fold.fillna(-1).to_numpy())
    warning = None
    if leaks["split_pairs"]:
        warning = (
            f"{leaks['split_pairs']} of {leaks['related_pairs']} pairs of related"
            " labelled images (consecutive frames of a file-name sequence, or"
            " near-duplicates) fall in different folds: the OOF mIoU is likely"
            " optimistic."
        )
        if not group_by and related.suggestion:
            warning += f" Set cv.group_by: '{related.suggestion}' (docs/own-data.md)."
    return {
        **leaks,
        "sequences": related.sequences,
        "images_in_sequences": related.in_sequences,
        "near_duplicates": len(related.duplicates),
        "group_by": group_by,
        "suggested_group_by": related.suggestion,
        "warning": warning,
    }


@dataclass(frozen=True, kw_only=True)
class FoldsArgs:
    """What the folds step reads, writes and is set by (its command line: step_cli)."""

    images_path: Path = arg("images.parquet from segflow.index", flag="--images")
    out: Path = arg("folds.csv to write")
    summary_out: Path = arg(
        "summary.json: images per fold, related images the folds split"
    )
    n_classes: int = arg("number of classes")
    method: str = arg("cv.method", choices=METHODS)
    folds: int = arg("cv.folds")
    seed: int = arg("of the split")
    group_by: str | None = arg(
        "'folder', a regex on file_name, or empty for no groups",
        parse=lambda text: text or None,
    )
    val_json: Path | None = arg(
        "holdout: COCO JSON whose images form the validation fold (empty: none)",
        parse=lambda text: Path(text) if text else None,
    )


def write_folds(args: FoldsArgs) -> dict:
    """folds.csv and its summary (images per fold, the related images the folds split,
    a warning where they do); returns the summary."""
    holdout_ids = (
        {im["file_name"] for im in read_json(args.val_json)["images"]}
        if args.val_json
        else None
    )
    images = pd.read_parquet(args.images_path)
    folds = make_folds(
        images,
        args.n_classes,
        args.method,
        args.folds,
        args.seed,
        args.group_by,
        holdout_ids,
    )
    summary = leak_summary(images, folds, args.group_by, args.folds)
    sizes = folds.groupby("fold").size()
    summary["images_per_fold"] = {str(k): int(n) for k, n in sizes.items()}
    write_table(folds, args.out)
    write_json(summary, args.summary_out)
    print(sizes.rename("images").to_string())
    return summary


def main(argv=None) -> None:
    run_step(
        write_folds,
        FoldsArgs,
        argv,
        "Split the labelled images of the index into CV folds.",
        (DataError,),
        report=lambda summary: summary["warning"] and f"WARNING: {summary['warning']}",
    )


if __name__ == "__main__":
    main()
