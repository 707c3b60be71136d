"""Pseudo labels from hand-made probabilities, and the fold safety of the next round."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from segflow.fold_data import fold_split, pseudo_rows
from segflow.labels import IGNORE_INDEX, mask_file
from segflow.pseudo import (
    PseudoArgs,
    PseudoError,
    confidence_thresholds,
    pseudo_labels,
    pseudo_mask,
)
from segflow.settings import PseudoSettings

CLASSES = ["bg", "A", "B"]


def probabilities_of(label: np.ndarray, sure: np.ndarray | float) -> np.ndarray:
    """(3, H, W): ``sure`` on the labelled class, the rest shared by the others."""
    sure = np.broadcast_to(np.asarray(sure, np.float32), label.shape)
    out = np.repeat(((1 - sure) / 2)[None], 3, axis=0).copy()
    for k in range(3):
        out[k][label == k] = sure[label == k]
    return out


def test_confident_pixels_keep_the_argmax_and_the_rest_is_ignored():
    label = np.array([[0, 1, 2], [1, 1, 2]])
    sure = np.array([[0.95, 0.95, 0.5], [0.89, 0.91, 0.99]])
    mask = pseudo_mask(probabilities_of(label, sure), np.full(3, 0.9))
    assert mask.tolist() == [[0, 1, IGNORE_INDEX], [IGNORE_INDEX, 1, 2]]


def test_per_class_thresholds_with_a_default():
    thresholds = confidence_thresholds({"B": 0.6, "default": 0.95}, CLASSES)
    assert thresholds.tolist() == [0.95, 0.95, 0.6]
    label = np.array([[0, 1, 2]])
    mask = pseudo_mask(
        probabilities_of(label, np.array([[0.96, 0.9, 0.7]])), thresholds
    )
    assert mask.tolist() == [
        [0, IGNORE_INDEX, 2]
    ]  # B, a rare class, is kept at a lower confidence
    assert confidence_thresholds(0.8, CLASSES).tolist() == [0.8, 0.8, 0.8]
    with pytest.raises(PseudoError, match=r"\['C'\] are not class names"):
        confidence_thresholds({"C": 0.5}, CLASSES)
    with pytest.raises(PseudoError, match=r"no threshold for \['bg', 'A'\]"):
        confidence_thresholds({"B": 0.5}, CLASSES)  # neither named nor a default


@pytest.fixture()
def test_set(tmp_path):
    """Three 16x16 test images predicted at 8x8: confident, half confident, unsure."""
    images = pd.DataFrame(
        {
            "image_id": ["l0.png", "t0.png", "t1.png", "t2.png"],
            "coco_id": [5, 10, 11, 12],
            "split": ["train", "test", "test", "test"],
            "width": [16] * 4,
            "height": [16] * 4,
            "file_name": ["l0.png", "t0.png", "t1.png", "t2.png"],
        }
    )
    images.to_parquet(tmp_path / "images.parquet")
    label = np.zeros((8, 8), int)
    label[2:6, 2:6] = 1
    sure = [
        np.full((8, 8), 0.97),
        np.where(np.arange(8)[:, None] < 4, 0.97, 0.5) * np.ones((8, 8)),
        np.full((8, 8), 0.5),
    ]
    maps = np.stack(
        [(probabilities_of(label, s) * 255).round().astype(np.uint8) for s in sure]
    )
    np.save(tmp_path / "test.npy", maps)
    (tmp_path / "test_ids.txt").write_text("t0.png\nt1.png\nt2.png\n")
    return tmp_path


def run_pseudo(test_set, **settings):
    """The step with ``settings``: the fixed confidence alone unless they say more."""
    settings = {"coverage": None, "min_images": 0.0, "below_min": "warn", **settings}
    out = test_set / "pseudo"
    return pseudo_labels(
        PseudoArgs(
            settings=PseudoSettings(**settings),
            test_npy=test_set / "test.npy",
            images_path=test_set / "images.parquet",
            classes=CLASSES,
            images_out=out / "images.csv",
            masks_out=out / "masks",
            summary_out=out / "summary.json",
            figure_out=out / "summary.png",
        )
    )


def test_pseudo_labels_keep_covered_images_at_their_own_size(test_set):
    summary = run_pseudo(test_set, confidence=0.9, min_coverage=0.3)
    table = pd.read_csv(test_set / "pseudo" / "images.csv")
    assert table["image_id"].tolist() == ["t0.png", "t1.png", "t2.png"]
    assert table["coco_id"].tolist() == [10, 11, 12]
    assert table["kept"].tolist() == [True, True, False] and table[
        "coverage"
    ].tolist() == pytest.approx([196 / 256, 86 / 256, 0.0])
    assert sorted(p.name for p in (test_set / "pseudo" / "masks").iterdir()) == [
        "10.png",
        "11.png",
    ]
    mask = cv2.imread(
        str(mask_file(test_set / "pseudo" / "masks", 10)), cv2.IMREAD_UNCHANGED
    )
    # Bilinear upsampling: the object's rim, where the classes blend, is not confident.
    assert (
        mask.shape == (16, 16)
        and (mask[5:11, 5:11] == 1).all()
        and (mask[:3] == 0).all()
        and (mask[4, 3:13] == IGNORE_INDEX).all()
    )
    half = cv2.imread(
        str(mask_file(test_set / "pseudo" / "masks", 11)), cv2.IMREAD_UNCHANGED
    )
    assert (
        (half[:3] == 0).all()
        and (half[5:7, 5:11] == 1).all()
        and (half[7:] == IGNORE_INDEX).all()
    )
    assert summary["kept_images"] == 2 and summary["test_images"] == 3
    # Per class: the pixels kept are those of the written masks; every pixel of the
    # three 16x16 test images is predicted once.
    per_class = summary["per_class"]
    for k, name in enumerate(CLASSES):
        assert per_class[name]["kept_pixels"] == (mask == k).sum() + (half == k).sum()
    assert sum(c["predicted_pixels"] for c in per_class.values()) == 3 * 256
    assert per_class["bg"]["predicted_pixels"] > per_class["A"]["predicted_pixels"] > 0
    assert per_class["B"] == {
        "predicted_pixels": 0,
        "kept_pixels": 0,
        "kept_share": None,
    }
    assert per_class["A"]["kept_share"] == pytest.approx(
        ((mask == 1).sum() + (half == 1).sum()) / per_class["A"]["predicted_pixels"]
    )
    assert (test_set / "pseudo" / "summary.png").stat().st_size > 0
    assert json.loads((test_set / "pseudo" / "summary.json").read_text()) == summary


def test_pseudo_labels_refuse_ids_that_are_not_the_test_images(test_set):
    (test_set / "test_ids.txt").write_text("t0.png\nt1.png\nl0.png\n")
    with pytest.raises(PseudoError, match="1 unknown.*l0.png"):
        run_pseudo(test_set, confidence=0.9, min_coverage=0.5)
    assert not (test_set / "pseudo").exists()


def test_folds_stay_safe_with_pseudo_labels_and_dropped_images():
    images = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(9)] + ["t0", "t1", "t2"],
            "split": ["train"] * 9 + ["test"] * 3,
        }
    )
    folds = pd.DataFrame(
        {"image_id": [f"i{k}" for k in range(9)], "fold": [0, 1, 2] * 3}
    )
    pseudo = pseudo_rows(images, {"t0", "t2"})
    assert pseudo["image_id"].tolist() == ["t0", "t2"]
    for fold in range(3):
        train, val = fold_split(images, folds, fold, drop={"i0"})
        trained = set(train["image_id"]) | set(pseudo["image_id"])
        assert not trained & set(val["image_id"])  # train and val disjoint
        assert set(val["image_id"]) <= {
            f"i{k}" for k in range(9)
        }  # no test image is ever validated on
        assert {"t0", "t2"} <= trained and "i0" not in trained
    with pytest.raises(ValueError, match="not test images.*i1"):
        pseudo_rows(images, {"t0", "i1"})  # a validation image is never pseudo-labelled


def spread_test_set(tmp_path, n_images=4):
    """Test images predicted A on the left half with top probabilities spread evenly
    over 0.40 .. 0.99, bg elsewhere at 0.95: a known share of A above any threshold."""
    ids = [f"t{k}.png" for k in range(n_images)]
    pd.DataFrame(
        {
            "image_id": ids,
            "coco_id": range(n_images),
            "split": "test",
            "width": 8,
            "height": 10,
            "file_name": ids,
        }
    ).to_parquet(tmp_path / "images.parquet")
    label = np.zeros((10, 8), int)
    label[:, :4] = 1
    sure = np.full((10, 8), 0.95)
    sure[:, :4] = np.linspace(0.40, 0.99, 40).reshape(10, 4)
    stored = (probabilities_of(label, sure) * 255).round().astype(np.uint8)
    np.save(tmp_path / "test.npy", np.stack([stored] * n_images))
    (tmp_path / "test_ids.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, sure


def test_the_coverage_policy_keeps_the_target_share_of_each_class(tmp_path):
    root, sure = spread_test_set(tmp_path)
    fixed = run_pseudo(root, confidence=0.9, min_coverage=0.0)
    share_fixed = fixed["per_class"]["A"]["kept_share"]
    assert share_fixed == pytest.approx((sure[:, :4] >= 0.9).mean(), abs=0.03)
    covered = run_pseudo(root, confidence=0.9, coverage=0.5, min_coverage=0.0)
    share = covered["per_class"]["A"]["kept_share"]
    assert 0.5 <= share <= 0.5 + 1 / 40 + 1e-9  # the target, to one pixel's share
    assert covered["thresholds"]["A"] < 0.9 == covered["thresholds"]["bg"]
    mask = cv2.imread(str(mask_file(root / "pseudo" / "masks", 0)), -1)
    assert ((mask[:, :4] == 1).mean()) == pytest.approx(share)
    assert (mask[:, 4:] == 0).all()  # a confident class keeps its own threshold


def test_a_round_with_too_few_pseudo_labels_warns_or_trains_without_them(tmp_path):
    root, _ = spread_test_set(tmp_path)
    warned = run_pseudo(root, confidence=0.999, min_coverage=0.9, min_images=0.5)
    assert warned["kept_images"] == 0 and warned["message"].startswith("WARNING")
    assert "0 of 4 test images" in warned["message"]
    kept = run_pseudo(
        root, confidence=0.9, min_coverage=0.3, min_images=1.0, below_min="skip"
    )
    assert "WARNING" not in kept["message"] and kept["kept_images"] == 4
