"""Probability export (TTA, uint8 memmaps) on tiny real data: trained, then predicted."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CLASSES, predict_fold, train_fold
from segflow.checkpoints import load_checkpoint
from segflow.io import read_ids
from segflow.predict import Softmax, tta_model


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
