"""Probability export (TTA, uint8 memmaps) and OOF scoring on tiny real data."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CLASSES, predict_fold, train_fold
from segflow.checkpoints import load_checkpoint
from segflow.io import read_ids
from segflow.oof_score import oof_score
from segflow.predict import Softmax, tta_model
from segflow.probabilities import PredictionError


@pytest.fixture(scope="module")
def predicted(tiny_dataset, tmp_path_factory):
    """Both folds trained (1 epoch) and predicted, as the workflow lays them out."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for fold in (0, 1):
        train_fold(tiny_dataset, root / f"train/f{fold}-s0", fold=fold)
        model = root / f"train/f{fold}-s0/model.pt"
        dirs.append(
            predict_fold(tiny_dataset, model, root / f"predict/f{fold}-s0", fold=fold)
        )
    return root, dirs


def runs_of(dirs, folds=(0, 1)):
    """oof_score's runs: fold, seed and OOF file of each predict folder."""
    return [
        {"fold": f, "seed": 0, "oof": str(d / "oof.npy")} for f, d in zip(folds, dirs)
    ]


def score(tiny_dataset, tmp_path, runs, name="x"):
    return oof_score(
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


def test_probabilities_are_uint8_memmaps_with_ids(predicted, tiny_dataset):
    _, dirs = predicted
    images = pd.read_parquet(tiny_dataset["images"])
    folds = pd.read_csv(tiny_dataset["folds"])
    for fold, directory in enumerate(dirs):
        oof = np.load(directory / "oof.npy", mmap_mode="r")
        ids = read_ids(directory / "oof_ids.txt")
        assert (
            isinstance(oof, np.memmap)
            and oof.dtype == np.uint8
            and oof.shape == (len(ids), len(CLASSES), 48, 48)
        )
        assert ids == folds.loc[folds["fold"] == fold, "image_id"].tolist()
        sums = oof.astype(int).sum(axis=1)
        assert np.all(np.abs(sums - 255) <= len(CLASSES))  # probabilities, quantized
        test = np.load(directory / "test.npy", mmap_mode="r")
        assert (
            read_ids(directory / "test_ids.txt")
            == images.loc[images["split"] == "test", "image_id"].tolist()
        )
        assert test.shape[0] == 5


def test_hflip_tta_averages_probabilities_of_both_views(predicted):
    root, _ = predicted
    model, _, _ = load_checkpoint(root / "train/f0-s0/model.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = (Softmax(model)(x) + Softmax(model)(x.flip(-1)).flip(-1)) / 2
        got = tta_model(model, "hflip", (64, 64), 32)(x)
        d4 = tta_model(model, "d4", (64, 64), 32)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        d4.sum(dim=1), torch.ones(2, 64, 64), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="multiscale"):
        tta_model(model, "multiscale", (72, 72), 32)


def test_oof_score_merges_folds_and_writes_per_image_table(
    predicted, tiny_dataset, tmp_path
):
    _, dirs = predicted
    summary = score(tiny_dataset, tmp_path, runs_of(dirs), name="fpn")
    assert json.loads((tmp_path / "fpn.json").read_text()) == summary
    assert 0 <= summary["miou"] <= 1 and summary["seeds"]["0"]["images"] == 24
    table = pd.read_csv(tmp_path / "fpn.csv")
    assert (
        len(table) == 24
        and table["image_id"].is_unique
        and table["iou"].between(0, 1).all()
    )
    assert set(table["fold"]) == {0, 1}


def test_a_missing_fold_is_an_error_naming_model_and_seed(
    predicted, tiny_dataset, tmp_path
):
    _, dirs = predicted
    with pytest.raises(
        PredictionError,
        match=r"model fpn, seed 0: 12 validation images have no OOF prediction",
    ):
        score(tiny_dataset, tmp_path, runs_of(dirs[:1]))
    assert not (tmp_path / "x.json").exists()


def test_ids_of_another_fold_are_an_error_naming_the_fold(
    predicted, tiny_dataset, tmp_path
):
    _, dirs = predicted
    swapped = tmp_path / "f1-s0"
    swapped.mkdir()
    (swapped / "oof.npy").symlink_to(dirs[0] / "oof.npy")
    (swapped / "oof_ids.txt").write_text(
        (dirs[0] / "oof_ids.txt").read_text()
    )  # fold 0's images, named fold 1
    with pytest.raises(
        PredictionError,
        match=r"model fpn, seed 0, fold 1 .*not validation images of fold 1",
    ):
        score(tiny_dataset, tmp_path, runs_of([dirs[0], swapped]))


def test_an_image_listed_twice_in_one_fold_is_an_error(
    predicted, tiny_dataset, tmp_path
):
    """An id sidecar that lists an image twice cannot be scored: one row would be lost."""
    _, dirs = predicted
    copy = tmp_path / "f0-s0"
    copy.mkdir()
    (copy / "oof.npy").symlink_to(dirs[0] / "oof.npy")
    ids = (dirs[0] / "oof_ids.txt").read_text().splitlines()
    (copy / "oof_ids.txt").write_text("".join(f"{i}\n" for i in [ids[1], *ids[1:]]))
    with pytest.raises(PredictionError, match=r"fold 0 .*an image id is listed twice"):
        score(tiny_dataset, tmp_path, runs_of([copy, dirs[1]]))
