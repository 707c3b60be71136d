"""OOF scoring: a model's folds merged into one set per seed, from the files predict writes.

The OOF sets are written as predict writes them (uint8 probabilities with an id sidecar)
for the tiny dataset's real folds and masks, without training a model: the scores are
recomputed from those files by tests/stage_files.py.
"""

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import CLASSES
from segflow.io import read_ids
from segflow.labels import IGNORE_INDEX
from segflow.oof_score import OofScoreArgs, oof_score
from segflow.probabilities import PredictionError
from stage_files import label_reader, oof_miou, reference_miou

SIZE = 48


@pytest.fixture(scope="module")
def oof_sets(tiny_dataset, tmp_path_factory):
    """Per fold, an OOF set as predict lays it out: near the label where the seeded noise
    says so, elsewhere sure of a wrong class, so the score is neither 0 nor 1."""
    root = tmp_path_factory.mktemp("oof")
    folds = pd.read_csv(tiny_dataset["folds"])
    label_of = label_reader(tiny_dataset["images"], tiny_dataset["masks"])
    rng = np.random.default_rng(0)
    dirs = []
    for fold in (0, 1):
        ids = folds.loc[folds["fold"] == fold, "image_id"].tolist()
        stored = np.empty((len(ids), len(CLASSES), SIZE, SIZE), np.uint8)
        for k, image_id in enumerate(ids):
            label = label_of(image_id, SIZE).astype(np.int64)
            wrong = rng.random(label.shape) < 0.3
            predicted = np.where(wrong, (label + 1) % len(CLASSES), label)
            p = rng.random((len(CLASSES), SIZE, SIZE)) * 0.2
            np.put_along_axis(p, predicted[None], 1.0, axis=0)
            stored[k] = np.round(p / p.sum(axis=0) * 255)
        d = root / f"f{fold}-s0"
        d.mkdir()
        np.save(d / "oof.npy", stored)
        (d / "oof_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        dirs.append(d)
    return dirs


def runs_of(dirs, folds=(0, 1)):
    """oof_score's runs: fold, seed and OOF file of each predict folder."""
    return [
        {"fold": f, "seed": 0, "oof": str(d / "oof.npy")} for f, d in zip(folds, dirs)
    ]


def score(tiny_dataset, tmp_path, runs, name="x"):
    return oof_score(
        OofScoreArgs(
            model_name="fpn",
            runs=runs,
            images_path=tiny_dataset["images"],
            folds_path=tiny_dataset["folds"],
            masks_dir=tiny_dataset["masks"],
            classes=CLASSES,
            out_json=tmp_path / f"{name}.json",
            out_csv=tmp_path / f"{name}.csv",
            cleaned_masks_dir=None,
        )
    )


def test_oof_score_merges_folds_and_writes_per_image_table(
    oof_sets, tiny_dataset, tmp_path
):
    summary = score(tiny_dataset, tmp_path, runs_of(oof_sets), name="fpn")
    assert json.loads((tmp_path / "fpn.json").read_text()) == summary
    label_of = label_reader(tiny_dataset["images"], tiny_dataset["masks"])
    expected = oof_miou([d / "oof.npy" for d in oof_sets], label_of, len(CLASSES))
    assert 0.2 < expected < 0.9  # the fixture is neither perfect nor hopeless
    assert summary["miou"] == pytest.approx(expected, abs=1e-9)
    assert summary["seeds"]["0"]["miou"] == pytest.approx(expected, abs=1e-9)
    assert summary["seeds"]["0"]["images"] == 24
    table = pd.read_csv(tmp_path / "fpn.csv")
    folds = pd.read_csv(tiny_dataset["folds"]).set_index("image_id")["fold"]
    assert len(table) == 24 and table["image_id"].is_unique
    assert (table["fold"].to_numpy() == folds[table["image_id"]].to_numpy()).all()
    # Each image's IoU is its own confusion matrix: recomputed from its stored row.
    for d in oof_sets:
        stored = np.load(d / "oof.npy")
        for row, image_id in zip(stored, read_ids(d / "oof_ids.txt")):
            alone = oof_miou_of_one(row, label_of(image_id, SIZE))
            got = table.loc[table["image_id"] == image_id, "iou"].item()
            assert got == pytest.approx(alone, abs=1e-9), image_id


def oof_miou_of_one(stored_row, label):
    return reference_miou(label, stored_row.argmax(axis=0), len(CLASSES))


def test_a_missing_fold_is_an_error_naming_model_and_seed(
    oof_sets, tiny_dataset, tmp_path
):
    with pytest.raises(
        PredictionError,
        match=r"model fpn, seed 0: 12 validation images have no OOF prediction",
    ):
        score(tiny_dataset, tmp_path, runs_of(oof_sets[:1]))
    assert not (tmp_path / "x.json").exists()


def test_ids_of_another_fold_are_an_error_naming_the_fold(
    oof_sets, tiny_dataset, tmp_path
):
    swapped = tmp_path / "f1-s0"
    swapped.mkdir()
    (swapped / "oof.npy").symlink_to(oof_sets[0] / "oof.npy")
    (swapped / "oof_ids.txt").write_text(
        (oof_sets[0] / "oof_ids.txt").read_text()
    )  # fold 0's images, named fold 1
    with pytest.raises(
        PredictionError,
        match=r"model fpn, seed 0, fold 1 .*not validation images of fold 1",
    ):
        score(tiny_dataset, tmp_path, runs_of([oof_sets[0], swapped]))


def test_an_image_listed_twice_in_one_fold_is_an_error(
    oof_sets, tiny_dataset, tmp_path
):
    """An id sidecar that lists an image twice cannot be scored: one row would be lost."""
    copy = tmp_path / "f0-s0"
    copy.mkdir()
    (copy / "oof.npy").symlink_to(oof_sets[0] / "oof.npy")
    ids = (oof_sets[0] / "oof_ids.txt").read_text().splitlines()
    (copy / "oof_ids.txt").write_text("".join(f"{i}\n" for i in [ids[1], *ids[1:]]))
    with pytest.raises(PredictionError, match=r"fold 0 .*an image id is listed twice"):
        score(tiny_dataset, tmp_path, runs_of([copy, oof_sets[1]]))


def test_each_images_row_names_its_seed_and_pixel_accuracy(
    oof_sets, tiny_dataset, tmp_path
):
    summary = score(tiny_dataset, tmp_path, runs_of(oof_sets), name="fpn")
    assert summary["model"] == "fpn" and "miou_cleaned" not in summary
    table = pd.read_csv(tmp_path / "fpn.csv")
    assert list(table.columns) == ["image_id", "fold", "seed", "iou", "pixel_accuracy"]
    assert (table["seed"] == 0).all()
    label_of = label_reader(tiny_dataset["images"], tiny_dataset["masks"])
    for d in oof_sets:
        for row, image_id in zip(np.load(d / "oof.npy"), read_ids(d / "oof_ids.txt")):
            label = label_of(image_id, SIZE)
            expected = (row.argmax(axis=0) == label).mean()
            got = table.loc[table["image_id"] == image_id, "pixel_accuracy"].item()
            assert got == pytest.approx(expected), image_id


def test_a_later_round_is_also_scored_against_its_cleaned_labels(
    oof_sets, tiny_dataset, tmp_path
):
    """With cleaned masks, ``miou_cleaned`` is the OOF mIoU against them (ignored pixels
    left out), beside ``miou`` against the original labels."""
    cleaned = tmp_path / "cleaned"
    shutil.copytree(tiny_dataset["masks"], cleaned)
    for k, path in enumerate(sorted(cleaned.glob("*.png"))):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if k % 3 == 0:
            mask[: mask.shape[0] // 2] = IGNORE_INDEX  # the ignore action
        elif k % 3 == 1:
            mask[mask > 0] = 1  # the relabel action
        cv2.imwrite(str(path), mask)
    summary = oof_score(
        OofScoreArgs(
            model_name="fpn",
            runs=runs_of(oof_sets),
            images_path=tiny_dataset["images"],
            folds_path=tiny_dataset["folds"],
            masks_dir=tiny_dataset["masks"],
            classes=CLASSES,
            out_json=tmp_path / "c.json",
            out_csv=tmp_path / "c.csv",
            cleaned_masks_dir=cleaned,
        )
    )
    paths = [d / "oof.npy" for d in oof_sets]
    original = oof_miou(
        paths, label_reader(tiny_dataset["images"], tiny_dataset["masks"]), len(CLASSES)
    )
    against_cleaned = oof_miou(
        paths, label_reader(tiny_dataset["images"], cleaned), len(CLASSES)
    )
    assert abs(against_cleaned - original) > 0.01  # the cleaning changed the answer
    assert summary["miou"] == pytest.approx(original, abs=1e-9)
    assert summary["miou_cleaned"] == pytest.approx(against_cleaned, abs=1e-9)
    assert summary["seeds"]["0"]["miou_cleaned"] == pytest.approx(
        against_cleaned, abs=1e-9
    )


@pytest.mark.parametrize("present", [0, 1])
def test_either_fold_missing_is_an_error(present, oof_sets, tiny_dataset, tmp_path):
    with pytest.raises(PredictionError, match=r"12 validation images have no OOF"):
        score(tiny_dataset, tmp_path, runs_of([oof_sets[present]], folds=(present,)))


def test_one_fold_listed_twice_is_an_error(oof_sets, tiny_dataset, tmp_path):
    """Two runs of one fold and seed predict the same images twice: which one counts?"""
    runs = runs_of([oof_sets[0], oof_sets[0], oof_sets[1]], folds=(0, 0, 1))
    with pytest.raises(
        PredictionError,
        match=r"model fpn, seed 0, fold 0 .*: images predicted by two folds, e\.g\. \['",
    ):
        score(tiny_dataset, tmp_path, runs)


def test_a_set_with_another_class_count_is_an_error(oof_sets, tiny_dataset, tmp_path):
    other = tmp_path / "f0-s0"
    other.mkdir()
    np.save(other / "oof.npy", np.load(oof_sets[0] / "oof.npy")[:, :-1])
    (other / "oof_ids.txt").write_text((oof_sets[0] / "oof_ids.txt").read_text())
    with pytest.raises(
        PredictionError, match=rf"{len(CLASSES) - 1} classes, expected {len(CLASSES)}"
    ):
        score(tiny_dataset, tmp_path, runs_of([other, oof_sets[1]]))
