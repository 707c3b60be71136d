"""Score a submission against the demo's hidden test labels: the project's quality benchmark.

Reads ``truth/test.json`` (which no training or prediction step reads), rasterizes it with
the same rule as every label (segflow.coco.rasterize), resizes it to the submission size
by nearest neighbour as the competition does, and computes the competition mIoU over the
whole test set from the submission CSV as written. ``rounds`` scores each round's own
ensemble the same way (its test label maps, resized by nearest neighbour as the
submission step does), so a user sees what each round bought.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segflow.coco import load_coco, rasterize
from segflow.io import read_ids, write_json
from segflow.labels import resize_label
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.submission_format import SubmissionError, read_submission


def truth_labels(
    truth_json: str, classes: list[str], size: int
) -> dict[str, np.ndarray]:
    """The hidden test labels by image id (file_name), at ``size`` x ``size``."""
    truth = load_coco(truth_json, classes)
    return {
        image["file_name"]: resize_label(
            rasterize(
                truth.annotations[image["id"]],
                image["height"],
                image["width"],
                truth.class_of_category,
            ).mask,
            size,
        )
        for image in truth.images
    }


def score_predictions(
    predictions,
    labels: dict[str, np.ndarray],
    classes: list[str],
    size: int,
    source: str,
) -> dict:
    """Test mIoU of (image id, label map at ``size``) pairs over the whole set."""
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    scored = 0
    for image_id, prediction in predictions:
        if image_id not in labels:
            raise SubmissionError(
                f"{source}: image {image_id!r} is not a test image of the demo truth"
            )
        confusion += confusion_matrix(labels[image_id], prediction, len(classes))
        scored += 1
    return {
        "test_miou": mean_iou(confusion),
        "per_class_iou": per_class_iou(confusion, classes),
        "images": scored,
        "size": size,
    }


def demo_score(
    *, submission: str, truth_json: str, classes: list[str], size: int, out: str
) -> dict:
    labels = truth_labels(truth_json, classes, size)
    # The submission step already checked completeness (debug mode writes a sample).
    score = score_predictions(
        read_submission(submission, size, len(classes)),
        labels,
        classes,
        size,
        submission,
    )
    write_json(score, out)
    return score


def rounds_score(
    *,
    round_files: dict[str, dict[str, str]],
    truth_json: str,
    classes: list[str],
    size: int,
    out: str,
) -> dict:
    """Test mIoU of each round's ensemble. ``round_files``: round -> its ensemble's
    {"test_labels": .npy, "test_ids": .txt, "summary": .json}."""
    labels = truth_labels(truth_json, classes, size)
    result = {}
    for round_, files in sorted(round_files.items()):
        maps = np.load(files["test_labels"], mmap_mode="r")
        pairs = (
            (image_id, resize_label(np.asarray(maps[k]), size))
            for k, image_id in enumerate(read_ids(files["test_ids"]))
        )
        score = score_predictions(pairs, labels, classes, size, files["test_labels"])
        summary = json.loads(Path(files["summary"]).read_text())
        result[round_] = {
            "test_miou": score["test_miou"],
            "oof_miou": summary["oof_miou"],
            "per_class_iou": score["per_class_iou"],
        }
    write_json(result, out)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Score a submission against the demo's hidden test labels."
    )
    scored = parser.add_mutually_exclusive_group(required=True)
    scored.add_argument("--submission", help="score this submission CSV")
    scored.add_argument(
        "--rounds",
        help='or JSON: round -> {"test_labels", "test_ids", "summary"} files',
    )
    parser.add_argument("--truth", required=True, help="the demo's truth/test.json")
    parser.add_argument("--classes", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.rounds:
            result = rounds_score(
                round_files=json.loads(args.rounds),
                truth_json=args.truth,
                classes=json.loads(args.classes),
                size=args.size,
                out=args.out,
            )
            print(json.dumps({r: v["test_miou"] for r, v in result.items()}))
        else:
            score = demo_score(
                submission=args.submission,
                truth_json=args.truth,
                classes=json.loads(args.classes),
                size=args.size,
                out=args.out,
            )
            print(json.dumps({"test_miou": score["test_miou"]}))
    except SubmissionError as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
