"""Known answers for every score segflow reports: OOF, training validation, the demo.

Each fixture is built so that the competition's mIoU (one confusion matrix over the set)
and the mean of per-image IoU differ: a step that averages per image, or that counts
only part of the set, reports another number.
"""

import contextlib
import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_coco
from segflow.demo_score import demo_score
from segflow.epoch import evaluate
from segflow.labels import mask_file
from segflow.oof_score import OofScoreArgs, oof_score
from segflow.submission_format import HEADER, encode_mask

CLASSES = ["bg", "a", "b"]

# Two 4x4 images. A: label all bg, predicted all bg. B: left half a, right half b,
# predicted all a. Per image: A 1.0; B (a: 8/16, b: 0) 0.25: their mean is 0.625.
# Over the set: bg 16/16, a 8/16, b 0/8: mIoU 0.5.
LABEL_A = np.zeros((4, 4), np.uint8)
LABEL_B = np.array([[1, 1, 2, 2]] * 4, np.uint8)
PREDICTED_A = np.zeros((4, 4), np.uint8)
PREDICTED_B = np.ones((4, 4), np.uint8)
SET_MIOU, PER_CLASS = 0.5, {"bg": 1.0, "a": 0.5, "b": 0.0}


def one_hot(prediction, sure=0.8):
    p = np.full((len(CLASSES), *prediction.shape), (1 - sure) / 2, np.float32)
    np.put_along_axis(p, prediction[None].astype(np.int64), sure, axis=0)
    return p


def test_oof_miou_is_one_confusion_matrix_over_the_folds(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    ids = ["a.png", "b.png", "c.png"]
    # Image c (fold 1) repeats A, so each fold holds a different share of the set.
    labels, predictions = (
        [LABEL_A, LABEL_B, LABEL_A],
        [PREDICTED_A, PREDICTED_B, PREDICTED_A],
    )
    for coco_id, label in enumerate(labels):
        cv2.imwrite(str(mask_file(masks, coco_id)), label)
    pd.DataFrame({"image_id": ids, "coco_id": [0, 1, 2]}).to_parquet(
        tmp_path / "images.parquet"
    )
    pd.DataFrame({"image_id": ids, "fold": [0, 0, 1]}).to_csv(
        tmp_path / "folds.csv", index=False
    )
    runs = []
    for fold, rows in ((0, [0, 1]), (1, [2])):
        d = tmp_path / f"f{fold}"
        d.mkdir()
        stored = np.stack([one_hot(predictions[k]) for k in rows]) * 255
        np.save(d / "oof.npy", stored.round().astype(np.uint8))
        (d / "oof_ids.txt").write_text("".join(f"{ids[k]}\n" for k in rows))
        runs.append({"fold": fold, "seed": 0, "oof": str(d / "oof.npy")})
    summary = oof_score(
        OofScoreArgs(
            model_name="m",
            runs=runs,
            images_path=tmp_path / "images.parquet",
            folds_path=tmp_path / "folds.csv",
            masks_dir=masks,
            classes=CLASSES,
            out_json=tmp_path / "m.json",
            out_csv=tmp_path / "m.csv",
            cleaned_masks_dir=None,
        )
    )
    # Set: bg 32/32, a 8/16, b 0/8. Per image mean: (1 + 0.25 + 1) / 3 = 0.75.
    assert summary["miou"] == pytest.approx(SET_MIOU)
    assert summary["seeds"]["0"]["per_class_iou"] == pytest.approx(PER_CLASS)
    assert summary["seeds"]["0"]["images"] == 3
    assert json.loads((tmp_path / "m.json").read_text()) == summary
    table = pd.read_csv(tmp_path / "m.csv").set_index("image_id")
    assert table["iou"].to_dict() == pytest.approx(
        {"a.png": 1.0, "b.png": 0.25, "c.png": 1.0}
    )
    assert table["fold"].to_dict() == {"a.png": 0, "b.png": 0, "c.png": 1}
    assert table["pixel_accuracy"].to_dict() == pytest.approx(
        {"a.png": 1.0, "b.png": 0.5, "c.png": 1.0}
    )


class LookupModel(torch.nn.Module):
    """A "model" whose logits say the class stored in the image's first channel."""

    def forward(self, images):
        classes = images[:, 0].long()
        return (
            torch.nn.functional.one_hot(classes, len(CLASSES))
            .permute(0, 3, 1, 2)
            .float()
            * 5
        )


def test_training_validation_scores_every_batch_as_one_set():
    # Batches: [A], [B], [A, A]. Only the last batch would score 1.0; per-batch mean 0.75.
    batches = [
        ([PREDICTED_A], [LABEL_A]),
        ([PREDICTED_B], [LABEL_B]),
        ([PREDICTED_A, PREDICTED_A], [LABEL_A, LABEL_A]),
    ]
    loader = [
        (
            torch.tensor(np.stack(p)[:, None].astype(np.float32)).repeat(1, 3, 1, 1),
            torch.tensor(np.stack(label).astype(np.int64)),
        )
        for p, label in batches
    ]
    criterion = torch.nn.CrossEntropyLoss()
    loss, confusion = evaluate(
        LookupModel(), loader, criterion, len(CLASSES), "cpu", contextlib.nullcontext
    )
    # bg 64/64, a 8/16, b 0/8
    expected = np.array([[48, 0, 0], [0, 8, 0], [0, 8, 0]])
    np.testing.assert_array_equal(confusion, expected)
    per_image = [float(criterion(LookupModel()(x), y)) for x, y in loader]
    # The loss is the mean over images, each batch weighted by its size.
    assert loss == pytest.approx((per_image[0] + per_image[1] + 2 * per_image[2]) / 4)
    # One image alone (a fold of one validation image): its own loss, not a share.
    alone, _ = evaluate(
        LookupModel(),
        loader[:1],
        criterion,
        len(CLASSES),
        "cpu",
        contextlib.nullcontext,
    )
    assert alone == pytest.approx(per_image[0])


def polygon_coco(tmp_path):
    """A COCO file of two 8x8 test images: A wholly class a, B background."""
    images = [
        {"id": 1, "file_name": "A.png", "height": 8, "width": 8},
        {"id": 2, "file_name": "B.png", "height": 8, "width": 8},
    ]
    whole = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0}
    whole["segmentation"] = [[0, 0, 8, 0, 8, 8, 0, 8]]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return write_coco(
        tmp_path, "truth.json", images, [whole], categories, write_images=False
    )


def test_the_demo_score_is_one_confusion_matrix_over_the_submission(tmp_path):
    truth = polygon_coco(tmp_path)
    # At the 4 px submission size: A truth all a, predicted left half a; B all bg, right.
    # Set: a 8/16, bg 16/24: mIoU 0.5833. Per image: A (a 0.5, bg 0) 0.25, B 1.0.
    predicted_a = np.array([[1, 1, 0, 0]] * 4, np.uint8)
    predicted_b = np.zeros((4, 4), np.uint8)
    submission = tmp_path / "submission.csv"
    submission.write_bytes(
        HEADER
        + b"\nA.png,"
        + encode_mask(predicted_a)
        + b"\nB.png,"
        + encode_mask(predicted_b)
        + b"\n"
    )
    score = demo_score(
        submission=str(submission),
        truth_json=str(truth),
        classes=CLASSES,
        size=4,
        out=str(tmp_path / "score.json"),
    )
    assert score["test_miou"] == pytest.approx((0.5 + 16 / 24) / 2)
    assert score["per_class_iou"] == pytest.approx({"bg": 16 / 24, "a": 0.5, "b": None})
    assert score["images"] == 2 and score["size"] == [4, 4]
    assert json.loads((tmp_path / "score.json").read_text()) == score


@pytest.mark.parametrize("size,scale", [("native", 1), ([4, 6], 2)])
def test_the_demo_score_keeps_height_and_width_apart(tmp_path, size, scale):
    """A 12 x 8 (width x height) truth whose class a fills the top-left 6 x 4 corner;
    the prediction's a is 2 columns wider. At the native size and at a [4, 6]
    (height, width) submission: a 24/32, bg 64/72. A transposed, flipped or squared
    truth scores otherwise or stops."""
    images = [{"id": 1, "file_name": "W.png", "height": 8, "width": 12}]
    corner = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0}
    corner["segmentation"] = [[0, 0, 6, 0, 6, 4, 0, 4]]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    truth = write_coco(
        tmp_path, "truth.json", images, [corner], categories, write_images=False
    )
    predicted = np.zeros((8 // scale, 12 // scale), np.uint8)
    predicted[: 4 // scale, : 8 // scale] = 1
    submission = tmp_path / "submission.csv"
    submission.write_bytes(HEADER + b"\nW.png," + encode_mask(predicted) + b"\n")
    score = demo_score(
        submission=str(submission),
        truth_json=str(truth),
        classes=CLASSES,
        size=size,
        out=str(tmp_path / "score.json"),
    )
    assert score["per_class_iou"] == pytest.approx(
        {"bg": 64 / 72, "a": 0.75, "b": None}
    )
    assert score["test_miou"] == pytest.approx((64 / 72 + 0.75) / 2)
