"""Score a model's out-of-fold predictions: all its folds merged, one OOF set per seed.

For each seed, the fold files together must cover every validated image exactly once,
or the step stops naming the model, seed and fold. Labels are compared at the stored
probability size (nearest-neighbour resize of the cached masks where it differs), which
is how the competition scores its 256x256 submission masks.

Writes ``<model>.json``: OOF mIoU and per-class IoU per seed (one confusion matrix over
all images, segflow.metrics), their mean over seeds; and ``<model>.csv``: one row per
image and seed (image_id, fold, seed, iou over the classes in label or prediction,
pixel_accuracy) -- the table label-noise cleaning reads. A later round trained on cleaned
labels is scored against the ORIGINAL labels, like every round; with
``cleaned_masks_dir`` its OOF mIoU against the cleaned labels is reported beside
(``miou_cleaned``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segflow.index import mask_file, resize_label
from segflow.io import read_ids, write_json, write_table
from segflow.metrics import IGNORE_INDEX, confusion_matrix, iou_per_class, mean_iou

RUN_DIR = re.compile(r"f(?P<fold>\d+)-s(?P<seed>\d+)$")


class OofError(ValueError):
    """OOF files that do not fit the index or each other."""


def load_label(masks_dir: str | Path, coco_id: int, size: int) -> np.ndarray:
    """A cached class mask at ``size`` x ``size`` (nearest neighbour, so labels stay labels)."""
    mask = cv2.imread(str(mask_file(masks_dir, coco_id)), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(f"mask of image {coco_id} missing under {masks_dir}")
    return resize_label(mask, size)


def oof_score(
    *,
    model_name: str,
    predict_dirs: list[str | Path],
    images_path: str | Path,
    folds_path: str | Path,
    masks_dir: str | Path,
    classes: list[str],
    out_json: str | Path,
    out_csv: str | Path,
    chunk: int = 32,
    cleaned_masks_dir: str | Path | None = None,
) -> dict:
    """Score the OOF probabilities under ``predict_dirs`` (``.../f<fold>-s<seed>``); see module doc."""
    n_classes = len(classes)
    images = pd.read_parquet(images_path).set_index("image_id")
    folds = pd.read_csv(folds_path).set_index("image_id")["fold"]
    validated = set(folds[folds >= 0].index)
    runs: dict[int, list[tuple[int, Path]]] = {}
    for directory in map(Path, predict_dirs):
        match = RUN_DIR.search(directory.name)
        if match is None:
            raise OofError(f"{directory}: not a predict folder named f<fold>-s<seed>")
        runs.setdefault(int(match["seed"]), []).append((int(match["fold"]), directory))

    rows, per_seed = [], {}
    for seed, fold_dirs in sorted(runs.items()):
        confusion = np.zeros((n_classes, n_classes), np.int64)
        cleaned_confusion = np.zeros((n_classes, n_classes), np.int64)
        covered: set[str] = set()
        for fold, directory in sorted(fold_dirs):
            ids = read_ids(directory / "oof_ids.txt")
            probabilities = np.load(directory / "oof.npy", mmap_mode="r")
            where = f"model {model_name}, seed {seed}, fold {fold} ({directory})"
            if (
                probabilities.shape[0] != len(ids)
                or probabilities.shape[1] != n_classes
            ):
                raise OofError(
                    f"{where}: oof.npy has shape {probabilities.shape}, expected ({len(ids)}, {n_classes}, ...)"
                )
            unknown = [i for i in ids if i not in folds.index or folds[i] != fold]
            if unknown:
                raise OofError(
                    f"{where}: {len(unknown)} image ids are not validation images of fold {fold}, e.g. {unknown[:3]}"
                )
            if covered & set(ids):
                raise OofError(
                    f"{where}: images predicted by two folds, e.g. {sorted(covered & set(ids))[:3]}"
                )
            covered |= set(ids)
            size = probabilities.shape[-1]
            for start in range(
                0, len(ids), chunk
            ):  # stream: one chunk of maps in memory
                predictions = probabilities[start : start + chunk].argmax(axis=1)
                for image_id, prediction in zip(
                    ids[start : start + chunk], predictions
                ):
                    label = load_label(masks_dir, images.at[image_id, "coco_id"], size)
                    image_confusion = confusion_matrix(label, prediction, n_classes)
                    confusion += image_confusion
                    if cleaned_masks_dir is not None:
                        cleaned_confusion += confusion_matrix(
                            load_label(
                                cleaned_masks_dir, images.at[image_id, "coco_id"], size
                            ),
                            prediction,
                            n_classes,
                        )
                    labelled = label != IGNORE_INDEX
                    rows.append(
                        {
                            "image_id": image_id,
                            "fold": fold,
                            "seed": seed,
                            "iou": mean_iou(image_confusion),
                            "pixel_accuracy": float(
                                (label == prediction)[labelled].mean()
                            ),
                        }
                    )
        missing = validated - covered
        if missing:
            raise OofError(
                f"model {model_name}, seed {seed}: {len(missing)} validation images have no OOF prediction, e.g. {sorted(missing)[:3]} (missing folds?)"
            )
        iou = iou_per_class(confusion)
        per_seed[str(seed)] = {
            "miou": mean_iou(confusion),
            "per_class_iou": {
                name: None if np.isnan(v) else float(v) for name, v in zip(classes, iou)
            },
            "images": len(covered),
        }
        if cleaned_masks_dir is not None:
            per_seed[str(seed)]["miou_cleaned"] = mean_iou(cleaned_confusion)

    summary = {
        "model": model_name,
        "miou": float(np.mean([s["miou"] for s in per_seed.values()])),
        "seeds": per_seed,
    }
    if cleaned_masks_dir is not None:
        summary["miou_cleaned"] = float(
            np.mean([s["miou_cleaned"] for s in per_seed.values()])
        )
    write_table(
        pd.DataFrame(
            rows, columns=["image_id", "fold", "seed", "iou", "pixel_accuracy"]
        ),
        out_csv,
    )
    write_json(summary, out_json)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Score a model's out-of-fold predictions."
    )
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--predict-dirs",
        nargs="+",
        required=True,
        help="predict folders f<fold>-s<seed>",
    )
    parser.add_argument("--images", required=True)
    parser.add_argument("--folds", required=True)
    parser.add_argument("--masks-dir", required=True)
    parser.add_argument("--classes", required=True, help="JSON list of class names")
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument(
        "--cleaned-masks-dir",
        default=None,
        help="also score against these (cleaned) labels",
    )
    args = parser.parse_args(argv)
    try:
        summary = oof_score(
            model_name=args.model_name,
            predict_dirs=args.predict_dirs,
            images_path=args.images,
            folds_path=args.folds,
            masks_dir=args.masks_dir,
            classes=json.loads(args.classes),
            out_json=args.out_json,
            out_csv=args.out_csv,
            cleaned_masks_dir=args.cleaned_masks_dir,
        )
    except (OofError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")
    print(json.dumps({"model": summary["model"], "miou": summary["miou"]}))


if __name__ == "__main__":
    main()
