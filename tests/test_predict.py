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


class Asymmetric(torch.nn.Module):
    """Logits that change under every flip, rotation and rescale: a fixed 3x3 conv
    plus a ramp along the width (class c's ramp scaled by c)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.randn(self.conv.weight.shape, generator=generator)
            )
            self.conv.bias.zero_()

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1]).view(1, 1, 1, -1)
        scale = torch.arange(self.conv.out_channels).view(1, -1, 1, 1).float()
        return self.conv(x) + ramp * scale


def probabilities(model, x):
    return torch.softmax(model(x), dim=1)


def test_each_tta_mode_is_the_mean_of_its_views_brought_back():
    """none, hflip, d4 and multiscale against views computed by hand on a non-square
    input: every view's probabilities mapped back to the input's frame, then averaged."""
    from segflow.predict import MULTISCALE

    model = Asymmetric().eval()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    square = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    flip = [lambda t: t, lambda t: t.flip(-1)]
    hflip = sum(f(probabilities(model, f(x))) for f in flip) / 2
    d4 = (
        sum(
            f(
                torch.rot90(
                    probabilities(model, torch.rot90(f(square), k, (2, 3))), -k, (2, 3)
                )
            )
            for k in range(4)
            for f in flip
        )
        / 8
    )

    def rescaled(t, scale, size=None):
        kw = {"size": size} if size else {"scale_factor": scale}
        return torch.nn.functional.interpolate(
            t, mode="bilinear", align_corners=False, **kw
        )

    multiscale = sum(
        f(rescaled(probabilities(model, rescaled(f(x), s)), 1 / s, size=(32, 48)))
        for s in MULTISCALE
        for f in flip
    ) / (2 * len(MULTISCALE))
    with torch.no_grad():
        got = {
            "none": tta_model(model, "none", (32, 48), 1)(x),
            "hflip": tta_model(model, "hflip", (32, 48), 1)(x),
            "d4": tta_model(model, "d4", (32, 32), 1)(square),
            "multiscale": tta_model(model, "multiscale", (32, 48), 4)(x),
        }
    expected = {
        "none": probabilities(model, x),
        "hflip": hflip,
        "d4": d4,
        "multiscale": multiscale,
    }
    for mode in expected:
        torch.testing.assert_close(got[mode], expected[mode], rtol=1e-4, atol=1e-5)
    # The modes differ from each other on this model: none of them is another's.
    assert not torch.allclose(got["none"], got["hflip"], atol=1e-3)
    assert not torch.allclose(got["hflip"], got["multiscale"], atol=1e-3)
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_model(model, "vflip", (32, 48), 1)


def test_predict_logs_how_many_images_each_set_got(
    predicted, tiny_dataset, tmp_path, capsys
):
    """The job's log names each written set and its image count (what a user reads
    when a fold's OOF set looks short)."""
    root, _ = predicted
    folds = pd.read_csv(tiny_dataset["folds"])
    out = predict_fold(tiny_dataset, root / "train/f0-s0/model.pt", tmp_path / "p")
    printed = capsys.readouterr().out
    assert f"{int((folds['fold'] == 0).sum())} images -> {out / 'oof.npy'}" in printed
    assert f"5 images -> {out / 'test.npy'}" in printed
