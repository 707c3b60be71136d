"""Score a submission against the demo's hidden test labels: the project's quality benchmark.

Reads ``truth/test.json`` (which no training or prediction step reads), rasterizes it with
the same rule as every label (segflow.coco.rasterize), resizes it to the submission size
by nearest neighbour as the competition does, and computes the competition mIoU over the
whole test set from the submission CSV as written.
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np

from segflow.coco import load_coco, rasterize
from segflow.io import write_json
from segflow.metrics import confusion_matrix, iou_per_class, mean_iou
from segflow.submission import SubmissionError, read_submission


def demo_score(*, submission: str, truth_json: str, classes: list[str], size: int, out: str) -> dict:
    truth = load_coco(truth_json, classes)
    labels = {}
    for image in truth.images:
        mask = rasterize(truth.annotations[image["id"]], image["height"], image["width"], truth.class_of_category).mask
        labels[image["file_name"]] = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) if mask.shape != (size, size) else mask
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    scored = 0
    # The submission step already checked completeness (debug mode writes a sample).
    for image_id, prediction in read_submission(submission, size, len(classes)):
        if image_id not in labels:
            raise SubmissionError(f"{submission}: image {image_id!r} is not a test image of {truth_json}")
        confusion += confusion_matrix(labels[image_id], prediction, len(classes))
        scored += 1
    score = {
        "test_miou": mean_iou(confusion),
        "per_class_iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou_per_class(confusion))},
        "images": scored,
        "size": size,
    }
    write_json(score, out)
    return score


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Score a submission against the demo's hidden test labels.")
    parser.add_argument("--submission", required=True)
    parser.add_argument("--truth", required=True, help="the demo's truth/test.json")
    parser.add_argument("--classes", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        score = demo_score(submission=args.submission, truth_json=args.truth, classes=json.loads(args.classes), size=args.size, out=args.out)
    except SubmissionError as e:
        sys.exit(f"ERROR: {e}")
    print(json.dumps({"test_miou": score["test_miou"]}))


if __name__ == "__main__":
    main()
