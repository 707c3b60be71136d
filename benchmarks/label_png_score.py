"""Score predictions of a converted label-PNG dataset against its held-out label PNGs.

The held-out labels are the dataset's own (tools/ccp.py keeps CCP's under
``holdout/labels``), scored at each image's full size, as the dataset's papers do:
pixel accuracy (CCP's "segmentation accuracy", background included) and segflow's
mIoU (one confusion matrix over the set; a class absent from both truth and prediction
left out), with the per-class IoU. Void label values (``--void``) count nowhere.

What it scores, each resized by nearest neighbour to the image's own size:
- ``--submission``: a submission CSV (any submission.size);
- ``--probabilities``: a stored test set (test.npy of a model's predict folder, or an
  ensemble's), its argmax, as segflow.submission writes it;
- ``--labels``: an ensemble's test_labels.npy with its ids.

    python benchmarks/label_png_score.py --data data/ccp --config my.yaml \\
        --submission results/submission/submission.csv --out score.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from segflow.convert import read_class_list
from segflow.io import read_ids
from segflow.labels import IGNORE_INDEX, resize_label
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.probabilities import read_probability_set
from segflow.submission_format import (
    parse_submission_size,
    read_submission,
    submission_sizes,
)


def truth(data: Path, test_json: Path, classes: list[str], void: list[int]):
    """image id -> the held-out label in class indices of ``classes`` (255: void)."""
    names = read_class_list(str(data / "classes.txt"))
    lookup = np.full(256, IGNORE_INDEX, np.uint8)
    for value, name in enumerate(names):
        if value not in void:
            lookup[value] = classes.index(name)
    labels = {}
    for image in json.loads(test_json.read_text())["images"]:
        stem = Path(image["file_name"]).stem
        label = cv2.imread(str(data / "holdout" / "labels" / f"{stem}.png"), -1)
        labels[image["file_name"]] = lookup[label]
    return labels


def predictions(args, test_json: Path, n_classes: int):
    if args.submission:
        sizes = submission_sizes(test_json, args.submission_size)
        return read_submission(args.submission, sizes, n_classes)
    if args.probabilities:
        stored, ids = read_probability_set(args.probabilities)
        return ((i, np.asarray(stored[k]).argmax(axis=0)) for k, i in enumerate(ids))
    maps = np.load(args.labels, mmap_mode="r")
    ids = read_ids(Path(args.labels).with_name("test_ids.txt"))
    return ((i, np.asarray(maps[k])) for k, i in enumerate(ids))


def score(pairs, labels: dict, classes: list[str]) -> dict:
    n = len(classes)
    confusion = np.zeros((n, n), np.int64)
    scored = 0
    for image_id, prediction in pairs:
        label = labels[image_id]
        prediction = resize_label(np.asarray(prediction, np.uint8), *label.shape)
        confusion += confusion_matrix(label, prediction, n)
        scored += 1
    if scored != len(labels):
        raise SystemExit(f"{scored} predictions for {len(labels)} test images")
    return {
        "images": scored,
        "pixel_accuracy": float(np.trace(confusion) / confusion.sum()),
        "miou": mean_iou(confusion),
        "per_class_iou": per_class_iou(confusion, classes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder tools/ccp.py wrote")
    parser.add_argument("--config", required=True, help="the run's config (classes)")
    parser.add_argument("--void", type=int, nargs="*", default=[])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--submission")
    what.add_argument("--probabilities")
    what.add_argument("--labels")
    parser.add_argument(
        "--submission-size",
        type=parse_submission_size,
        default="native",
        help="the submission's mask size: native (default) or height x width",
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    data = Path(args.data)
    classes = yaml.safe_load(Path(args.config).read_text())["classes"]
    test_json = data / "test.json"
    labels = truth(data, test_json, classes, args.void)
    result = score(predictions(args, test_json, len(classes)), labels, classes)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(
        f"{result['images']} images: pixel accuracy {result['pixel_accuracy']:.4f},"
        f" mIoU {result['miou']:.4f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
