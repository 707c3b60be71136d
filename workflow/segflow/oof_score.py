"""Score a model's out-of-fold predictions: all its folds merged, one OOF set per seed.

For each seed, the fold sets together must cover every validated image exactly once,
or the step stops naming the model, seed and fold. Labels are compared at the stored
probability size (nearest-neighbour resize of the cached masks where it differs), which
is how the competition scores its 256x256 submission masks.

Writes ``<model>.json``: OOF mIoU and per-class IoU per seed (one confusion matrix over
all images, segflow.metrics), their mean over seeds; and ``<model>.csv``: one row per
image and seed (image_id, fold, seed, iou over the classes in label or prediction,
pixel_accuracy). A later round trained on cleaned labels is scored against the ORIGINAL
labels, like every round; with ``cleaned_masks_dir`` its OOF mIoU against the cleaned
labels is reported beside (``miou_cleaned``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segflow.io import write_json, write_table
from segflow.labels import IGNORE_INDEX, read_label
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.probabilities import PredictionError, read_probability_set
from segflow.step_cli import arg, run_step

CHUNK = 32  # images whose maps are in memory at once


@dataclass(frozen=True, kw_only=True)
class OofScoreArgs:
    """What one model's OOF scoring reads and writes (its command line: step_cli)."""

    model_name: str = arg("the model's name in the summary")
    runs: list[dict] = arg(
        'JSON list of {"fold", "seed", "oof": oof.npy}', parse=json.loads
    )
    images_path: Path = arg("images.parquet", flag="--images")
    folds_path: Path = arg("folds.csv", flag="--folds")
    masks_dir: Path = arg("the index's masks")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    out_json: Path = arg("the summary (JSON)")
    out_csv: Path = arg("per-image IoU (CSV)")
    cleaned_masks_dir: Path | None = arg(
        "also score against these (cleaned) labels", default=None
    )


def oof_score(args: OofScoreArgs) -> dict:
    """Score the OOF sets of ``runs`` (each {"fold", "seed", "oof": path}); see module doc."""
    model_name, runs, classes = args.model_name, args.runs, args.classes
    masks_dir, cleaned_masks_dir = args.masks_dir, args.cleaned_masks_dir
    n_classes = len(classes)
    coco_ids = pd.read_parquet(args.images_path).set_index("image_id")["coco_id"]
    folds = pd.read_csv(args.folds_path).set_index("image_id")["fold"]
    validated = set(folds[folds >= 0].index)
    by_seed: dict[int, list[dict]] = {}
    for run in runs:
        by_seed.setdefault(int(run["seed"]), []).append(run)

    rows, per_seed = [], {}
    for seed, seed_runs in sorted(by_seed.items()):
        confusion = np.zeros((n_classes, n_classes), np.int64)
        cleaned_confusion = np.zeros((n_classes, n_classes), np.int64)
        covered: set[str] = set()
        for run in sorted(seed_runs, key=lambda r: r["fold"]):
            fold = int(run["fold"])
            where = f"model {model_name}, seed {seed}, fold {fold} ({run['oof']})"
            try:
                probabilities, ids = read_probability_set(run["oof"])
            except PredictionError as e:
                raise PredictionError(f"{where}: {e}") from None
            if probabilities.shape[1] != n_classes:
                raise PredictionError(
                    f"{where}: {probabilities.shape[1]} classes, expected {n_classes}"
                )
            unknown = [i for i in ids if i not in folds.index or folds[i] != fold]
            if unknown:
                raise PredictionError(
                    f"{where}: {len(unknown)} image ids are not validation images of"
                    f" fold {fold}, e.g. {unknown[:3]}"
                )
            if covered & set(ids):
                twice = sorted(covered & set(ids))[:3]
                raise PredictionError(
                    f"{where}: images predicted by two folds, e.g. {twice}"
                )
            covered |= set(ids)
            size = tuple(probabilities.shape[-2:])
            for start in range(0, len(ids), CHUNK):
                chunk_ids = ids[start : start + CHUNK]
                predictions = probabilities[start : start + CHUNK].argmax(axis=1)
                for image_id, prediction in zip(chunk_ids, predictions):
                    label = read_label(masks_dir, coco_ids[image_id], size)
                    image_confusion = confusion_matrix(label, prediction, n_classes)
                    confusion += image_confusion
                    if cleaned_masks_dir is not None:
                        cleaned = read_label(
                            cleaned_masks_dir, coco_ids[image_id], size
                        )
                        cleaned_confusion += confusion_matrix(
                            cleaned, prediction, n_classes
                        )
                    labelled = label != IGNORE_INDEX
                    accuracy = (label == prediction)[labelled].mean()
                    rows.append(
                        {
                            "image_id": image_id,
                            "fold": fold,
                            "seed": seed,
                            "iou": mean_iou(image_confusion),
                            "pixel_accuracy": float(accuracy),
                        }
                    )
        missing = validated - covered
        if missing:
            raise PredictionError(
                f"model {model_name}, seed {seed}: {len(missing)} validation images have"
                f" no OOF prediction, e.g. {sorted(missing)[:3]} (missing folds?)"
            )
        per_seed[str(seed)] = {
            "miou": mean_iou(confusion),
            "per_class_iou": per_class_iou(confusion, classes),
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
    columns = ["image_id", "fold", "seed", "iou", "pixel_accuracy"]
    write_table(pd.DataFrame(rows, columns=columns), args.out_csv)
    write_json(summary, args.out_json)
    return summary


def main(argv=None) -> None:
    run_step(
        oof_score,
        OofScoreArgs,
        argv,
        "Score a model's OOF predictions.",
        (PredictionError, FileNotFoundError),
        report=lambda summary: json.dumps(
            {"model": summary["model"], "miou": summary["miou"]}
        ),
    )


if __name__ == "__main__":
    main()
