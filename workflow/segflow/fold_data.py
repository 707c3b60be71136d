"""Which images a fold job trains and validates on, and with which labels.

Round r0 trains on the labelled images outside the fold with the labels as given. A
later round may change the training side only: ``train_masks_dir`` (the cleaned labels
it learns from), ``drop`` (images that leave training) and ``pseudo`` (pseudo-labelled
test images, masks in ``pseudo_masks_dir``). Validation always scores the ORIGINAL
labels of every labelled image of the fold, so OOF numbers compare between rounds; with
cleaned labels, they are scored beside (``val_cleaned_masks``).

The full fit (fold ``FULL_FIT``, ``None`` in Python) trains on every labelled image
and validates on none: it has no OOF, only test predictions. A job's folder and its
``--fold`` name the fold as :func:`fold_name` does: ``f3-s0``, ``full-s0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segflow.images import ImageFile, image_files
from segflow.labels import IGNORE_INDEX, mask_file, read_label

FULL_FIT = (
    "full"  # the full fit's fold: in job folders, on the command line, in metrics
)


def fold_name(fold: int | None) -> str:
    """How paths and command lines name a fold: ``f3``, or ``full`` for the full fit."""
    return FULL_FIT if fold is None else f"f{fold}"


def parse_fold(text: str) -> int | None:
    """``"f3"`` -> 3; ``"full"`` -> None (the full fit)."""
    if text == FULL_FIT:
        return None
    if re.fullmatch(r"f\d+", text):
        return int(text[1:])
    raise ValueError(f"fold {text!r}: f<number> (f0, f1, ...) or {FULL_FIT}")


@dataclass(frozen=True)
class RoundLabels:
    """What a later round changes in the training data (empty: round r0)."""

    train_masks_dir: str | Path | None
    drop: frozenset[str]
    pseudo: frozenset[str]
    pseudo_masks_dir: str | Path | None

    @classmethod
    def none(cls) -> RoundLabels:
        return cls(None, frozenset(), frozenset(), None)


@dataclass(frozen=True)
class FoldData:
    """Rows of the index and the files a fold job reads."""

    train: pd.DataFrame  # labelled training rows (after drop)
    val: pd.DataFrame
    pseudo: pd.DataFrame  # pseudo-labelled test rows
    dropped: int
    train_images: list[ImageFile]  # labelled, then pseudo-labelled
    train_masks: list[str]
    val_images: list[ImageFile]
    val_masks: list[str]
    val_cleaned_masks: list[str] | None


def fold_split(
    images: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int | None,
    drop: frozenset[str] = frozenset(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of the labelled images for ``fold``; fold None (the
    full fit) trains on every labelled image and validates on none.

    ``drop`` leaves images out of training only; validation keeps every image of the fold.
    """
    labelled = images[images["split"] == "train"].merge(
        folds, on="image_id", how="inner", validate="one_to_one"
    )
    val = labelled[labelled["fold"] == fold]  # fold None matches no row
    if val.empty and fold is not None:
        raise ValueError(
            f"fold {fold} has no validation images"
            f" (folds: {sorted(folds['fold'].unique())})"
        )
    train = labelled[(labelled["fold"] != fold) & ~labelled["image_id"].isin(drop)]
    if train.empty:
        raise ValueError(
            f"fold {fold} has no training images left"
            f" ({len(drop)} dropped by label-noise cleaning)"
        )
    return train.reset_index(drop=True), val.reset_index(drop=True)


def pseudo_rows(images: pd.DataFrame, pseudo: frozenset[str]) -> pd.DataFrame:
    """The test images named in ``pseudo`` (pseudo-labelled), as rows of the index."""
    test = images[images["split"] == "test"]
    unknown = sorted(set(pseudo) - set(test["image_id"]))
    if unknown:
        raise ValueError(
            f"pseudo labels name {len(unknown)} images that are not test images,"
            f" e.g. {unknown[:3]}"
        )
    return test[test["image_id"].isin(pseudo)].reset_index(drop=True)


def kept_pseudo_images(path: str | Path) -> frozenset[str]:
    """The test images a pseudo-label images.csv keeps."""
    table = pd.read_csv(path)
    return frozenset(table.loc[table["kept"].astype(bool), "image_id"])


def fold_data(
    images: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int | None,
    image_root: str | Path,
    masks_dir: str | Path,
    round_labels: RoundLabels,
) -> FoldData:
    """Everything a fold job of any round trains and validates on; see module doc."""
    train, val = fold_split(images, folds, fold, round_labels.drop)
    in_other_folds = (folds["fold"] != fold) & folds["image_id"].isin(round_labels.drop)
    pseudo = pseudo_rows(images, round_labels.pseudo)

    def files(rows: pd.DataFrame, labels_dir) -> tuple[list[ImageFile], list[str]]:
        masks = [str(mask_file(labels_dir, i)) for i in rows["coco_id"]]
        return image_files(rows, image_root), masks

    train_images, train_masks = files(train, round_labels.train_masks_dir or masks_dir)
    pseudo_images, pseudo_masks = (
        files(pseudo, round_labels.pseudo_masks_dir) if len(pseudo) else ([], [])
    )
    val_images, val_masks = files(val, masks_dir)
    cleaned = round_labels.train_masks_dir
    return FoldData(
        train=train,
        val=val,
        pseudo=pseudo,
        dropped=int(in_other_folds.sum()),
        train_images=train_images + pseudo_images,
        train_masks=train_masks + pseudo_masks,
        val_images=val_images,
        val_masks=val_masks,
        val_cleaned_masks=files(val, cleaned)[1] if cleaned is not None else None,
    )


def label_changes(data: FoldData, masks_dir: str | Path) -> dict[str, float]:
    """How the labels a fold job trains on differ from the index's, over its labelled
    training images: the share of pixels ``ignored`` (IGNORE_INDEX where the index has a
    class) and ``relabelled`` (another class). Both 0 in round r0; in a later round they
    show what cleaning changed, and that the job really trains on the cleaned labels."""
    pixels = ignored = relabelled = 0
    for trained, coco_id in zip(data.train_masks, data.train["coco_id"]):
        trained_dir = Path(trained).parent
        if trained_dir == Path(masks_dir):  # round r0: nothing to compare
            continue
        given = read_label(trained_dir, coco_id)
        original = read_label(masks_dir, coco_id)
        if given.shape != original.shape:
            raise ValueError(
                f"{trained}: size {given.shape}, the index's {original.shape}"
            )
        pixels += given.size
        was_labelled = original != IGNORE_INDEX
        ignored += int(((given == IGNORE_INDEX) & was_labelled).sum())
        relabelled += int(
            ((given != original) & (given != IGNORE_INDEX) & was_labelled).sum()
        )
    pixels = max(pixels, 1)
    return {"ignored": ignored / pixels, "relabelled": relabelled / pixels}
