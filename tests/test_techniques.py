"""The competition techniques of the model settings, each on real tensors or a real
training run: batch mixing, weight averaging, rare-class weights and sampling, crops
with a sliding window, extra architectures, augmentations from the YAML."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import CLASSES, model_params, predict_fold, train_fold
from segflow.averaging import WeightAverage, mean_state
from segflow.class_balance import ce_class_weights, repeat_factors
from segflow.labels import IGNORE_INDEX
from segflow.losses import create_loss
from segflow.mixing import copy_paste_class, mix_batch, mixed_loss, rare_class_weights
from segflow.sliding_window import border_weights, sliding_window, tile_starts


def labelled_batch(n=6, side=24, classes=5, seed=0):
    """Images whose channel 0 is their label map and channel 1 their index: any pixel
    pasted without its label (or the reverse) shows as channel 0 != label."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, side, side, dtype=torch.long)
    for i in range(n):
        for _ in range(3):
            c = int(torch.randint(1, classes, (), generator=g))
            y, x = (int(v) for v in torch.randint(0, side - 8, (2,), generator=g))
            masks[i, y : y + 8, x : x + 8] = c
        masks[i, :3, :3] = IGNORE_INDEX
    images = torch.stack(
        [masks.float(), torch.arange(n).float()[:, None, None].expand(n, side, side)],
        dim=1,
    )
    return images, masks


def test_mixup_mixes_images_and_the_loss_with_the_same_lambda():
    images, masks = labelled_batch()
    mixed = mix_batch(images, masks, "mixup", 1.0, 0.4, None, np.random.default_rng(3))
    assert 0 < mixed.lam < 1 and mixed.masks_b is not None
    partner = mixed.images[:, 1] - mixed.lam * images[:, 1]  # (1 - lam) x partner index
    partner = (partner[:, 0, 0] / (1 - mixed.lam)).round().long()
    assert torch.equal(mixed.masks_b, masks[partner])
    assert torch.allclose(
        mixed.images, mixed.lam * images + (1 - mixed.lam) * images[partner]
    )
    logits = torch.randn(len(images), 5, 24, 24)
    criterion = create_loss({"ce": 1.0, "dice": 1.0})
    expected = mixed.lam * criterion(logits, masks) + (1 - mixed.lam) * criterion(
        logits, masks[partner]
    )
    assert float(mixed_loss(criterion, logits, mixed)) == pytest.approx(
        float(expected), rel=1e-6
    )


@pytest.mark.parametrize("method", ["cutmix", "copypaste"])
def test_cutmix_and_copypaste_keep_pixels_and_labels_aligned(method):
    images, masks = labelled_batch()
    weights = rare_class_weights(np.array([1.0, 0.5, 0.5, 0.2, 0.1]), 1.0)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(10):
        mixed = mix_batch(images, masks, method, 1.0, 1.0, weights, rng)
        assert torch.equal(mixed.images[:, 0], mixed.masks.float())  # aligned
        changed += int((mixed.masks != masks).sum())
        if method == "copypaste":
            # Only a class's labelled pixels are pasted: no new ignored pixel.
            new_ignored = (mixed.masks == IGNORE_INDEX) & (masks != IGNORE_INDEX)
            assert not new_ignored.any()
            pasted = mixed.images[:, 1] != images[:, 1]
            assert (mixed.masks[pasted] != IGNORE_INDEX).all()
            assert (mixed.masks[pasted] != 0).all()
    assert changed > 0
    assert torch.equal(images[:, 0], masks.float())  # the input batch is untouched


def test_copypaste_draws_rare_classes_more_often():
    mask = torch.tensor([[1, 2], [3, IGNORE_INDEX]])
    shares = np.array([1.0, 0.8, 0.4, 0.05])
    rng = np.random.default_rng(0)
    draws = [
        copy_paste_class(mask, rare_class_weights(shares, 1.0), rng)
        for _ in range(4000)
    ]
    counts = np.bincount(draws, minlength=4)
    # Weights 1/0.8 : 1/0.4 : 1/0.05 = 1.25 : 2.5 : 20.
    assert counts[3] / 4000 == pytest.approx(20 / 23.75, abs=0.03)
    assert counts[0] == 0  # background is never pasted
    uniform = [
        copy_paste_class(mask, rare_class_weights(shares, 0.0), rng)
        for _ in range(3000)
    ]
    assert np.bincount(uniform, minlength=4)[1:] / 3000 == pytest.approx(
        [1 / 3] * 3, abs=0.04
    )


def index_rows(pixels: list[list[int]]) -> pd.DataFrame:
    return pd.DataFrame(pixels, columns=[f"pixels_{k}" for k in range(len(pixels[0]))])


def test_class_weights_and_repeat_factors_from_the_index_pixel_counts():
    rows = index_rows([[900, 100, 0], [800, 0, 0], [700, 0, 300], [1000, 0, 0]])
    # Pixel shares 3400/4400 .. : 1/sqrt(share), scaled to mean 1.
    shares = np.array([3400, 100, 300]) / 3800
    expected = 1 / np.sqrt(shares)
    assert ce_class_weights("pixels", rows, 3) == pytest.approx(
        (expected / expected.mean()).tolist()
    )
    assert ce_class_weights([1, 2, 3], rows, 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="3 weights for 2 classes"):
        ce_class_weights([1, 2, 3], rows.iloc[:, :2], 2)
    # Classes 1 and 2 are in 1 of 4 images (f = 0.25): with t = 0.5 their images repeat
    # sqrt(0.5 / 0.25) = 1.41 times; background (f = 1) never raises a factor.
    assert repeat_factors(rows, 3, 0.5) == pytest.approx([2**0.5, 1, 2**0.5, 1])
    assert repeat_factors(rows, 3, 0.1) == pytest.approx([1, 1, 1, 1])


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x))


def bn_loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 2, 5, 5, generator=g) * 3 + 1, None) for _ in range(3)]


def test_topk_and_swa_average_the_right_epochs_and_recompute_batchnorm():
    settings = model_params(top_k=2, swa_start=0.5, ema_decay=0.9)
    states = []
    nets = {m: TinyNet() for m in ("topk", "swa")}
    averages = {m: WeightAverage(nets[m], m, 4, settings) for m in nets}
    scores = [0.3, 0.6, 0.5, 0.4]  # epochs 2 and 3 are the top 2
    for epoch, score in enumerate(scores, start=1):
        torch.manual_seed(epoch)
        step_net = TinyNet()
        states.append({k: v.clone() for k, v in step_net.state_dict().items()})
        for m, average in averages.items():
            nets[m].load_state_dict(step_net.state_dict())
            average.after_epoch(nets[m], epoch, score)
    assert averages["topk"].averaged_epochs() == [2, 3]
    assert averages["swa"].averaged_epochs() == [2, 3, 4]
    loader = bn_loader()
    features = torch.cat([x for x, _ in loader])
    for m, chosen in (("topk", [1, 2]), ("swa", [1, 2, 3])):
        averaged = averages[m].averaged_state(nets[m], loader, "cpu")
        expected = mean_state([states[i] for i in chosen])
        for key in ("conv.weight", "conv.bias", "bn.weight"):
            assert torch.allclose(averaged[key], expected[key], atol=1e-6), (m, key)
        # BatchNorm statistics: those of the averaged conv over the loader's images.
        conv = torch.nn.Conv2d(2, 3, 1)
        conv.load_state_dict(
            {"weight": expected["conv.weight"], "bias": expected["conv.bias"]}
        )
        with torch.no_grad():
            out = conv(features)
        assert torch.allclose(
            averaged["bn.running_mean"], out.mean((0, 2, 3)), atol=1e-4
        )
        assert not torch.allclose(
            averaged["bn.running_mean"], expected["bn.running_mean"]
        )


def test_ema_follows_the_steps():
    settings = model_params(ema_decay=0.5)
    net = TinyNet()
    average = WeightAverage(net, "ema", 2, settings)
    before = net.conv.weight.detach().clone()
    with torch.no_grad():
        net.conv.weight.add_(1.0)
    for step in range(1, 200):
        average.after_step(net, step)
    # Decay capped at 0.5: after many steps the average has reached the new weights.
    assert torch.allclose(average.ema.module.conv.weight, before + 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [
        {"averaging": "ema", "mix": "mixup", "mix_p": 1.0},
        {
            "averaging": "swa",
            "mix": "cutmix",
            "oversample": 0.5,
            "optimizer": "lookahead_adamw",
            "scheduler": "cosine_restarts",
            "restart_epochs": 1,
        },
        {
            "averaging": "topk",
            "top_k": 2,
            "mix": "copypaste",
            "class_weights": "pixels",
            "scheduler": "poly",
            "arch": "Unet",
            "encoder": "resnet18",
            "model_args": {
                "aux_params": {"dropout": 0.1},
                "decoder_channels": [32, 16, 8, 8, 8],
            },
            "loss": {"ce": 1.0, "dice": 1.0, "aux": 0.4},
        },
    ],
    ids=["ema-mixup", "swa-cutmix-oversample-lookahead", "topk-copypaste-aux"],
)
def test_training_with_the_techniques(tiny_dataset, tmp_path, changes):
    """A real fold job: it saves the averaged weights (not the last epoch's), scored on
    validation, and its checkpoint predicts."""
    from segflow.checkpoints import load_checkpoint

    settings = model_params(epochs=3, **changes)
    metrics = train_fold(tiny_dataset, tmp_path, settings=settings)
    assert metrics["averaging"] == changes["averaging"]
    assert 0.0 <= metrics["val_miou"] <= 1.0 and metrics["best_epoch"] == 3
    if changes["averaging"] == "topk":
        assert len(metrics["averaged_epochs"]) == 2
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == 3
    model, _, _ = load_checkpoint(tmp_path / "model.pt", "cpu")
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, len(CLASSES), 64, 64)  # eval mode: masks only, aux or not
    predict_fold(tiny_dataset, tmp_path / "model.pt", tmp_path / "predict", tta="hflip")
    assert np.load(tmp_path / "predict" / "test.npy").shape[1:] == (
        len(CLASSES),
        48,
        48,
    )


def test_tile_starts_cover_the_side_and_end_flush():
    assert tile_starts(64, 64, 0.5) == [0]
    assert tile_starts(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    for length in (33, 100, 257):
        starts = tile_starts(length, 32, 0.25)
        assert starts[0] == 0 and starts[-1] == length - 32
        assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))
    weights = border_weights((32, 32))
    assert weights.max() == 1 and weights[0, 0] < 0.01 and weights.min() > 0
    # A tile of 24 x 40 falls off along each axis by its own side.
    weights = border_weights((24, 40))
    assert weights.shape == (24, 40) and weights.max() == 1
    assert torch.allclose(weights[12, 0], weights[0, 20], atol=0.02)
    # A Gaussian of sigma = side / 8 about the tile's centre, written out: symmetric,
    # and at the border of a 9-pixel side 4 pixels from the centre.
    weights = border_weights((9, 9))
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.T)
    sigma = 9 / 8
    expected_edge = float(np.exp(-0.5 * (4 / sigma) ** 2))  # the centre row's end
    assert float(weights[4, 0]) == pytest.approx(expected_edge, rel=1e-5)
    assert float(weights[4, 3]) == pytest.approx(np.exp(-0.5 / sigma**2), rel=1e-5)


def test_sliding_window_equals_the_whole_image_where_it_fits_in_a_tile():
    from segflow.models import create_model
    from segflow.predict import tta_model

    model = tta_model(create_model("Unet", "resnet18", 4).eval(), "hflip", (64, 64), 32)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            sliding_window(model, image, (64, 64), 0.5, 4), model(image), atol=1e-6
        )


def test_sliding_window_runs_the_model_on_tiles_only_and_blends_exactly():
    """A per-pixel model gives the same output whatever the tiling: the blend's weights
    are normalised everywhere, the padding is cropped away; and the model only ever sees
    tile-sized batches, so its memory does not grow with the image."""
    conv = torch.nn.Conv2d(3, 5, 1)
    seen = []

    def model(tiles):
        seen.append(tuple(tiles.shape))
        return conv(tiles)

    with torch.no_grad():
        for tile in ((32, 32), (24, 40)):
            for shape in ((1, 3, 100, 70), (1, 3, 20, 30), (2, 3, 130, 130)):
                image = torch.randn(*shape)
                seen.clear()
                blended = sliding_window(model, image, tile, 0.5, 3)
                assert blended.shape == (shape[0], 5, *shape[2:])
                assert torch.allclose(blended, conv(image), atol=1e-5)
                assert {s[1:] for s in seen} == {(3, *tile)}
                assert max(s[0] for s in seen) <= 3


def test_training_on_crops_predicts_with_the_sliding_window(tiny_dataset, tmp_path):
    settings = model_params(epochs=1, crop=32, arch="Unet", encoder="resnet18")
    metrics = train_fold(tiny_dataset, tmp_path, settings=settings)
    assert 0.0 <= metrics["val_miou"] <= 1.0
    predict_fold(tiny_dataset, tmp_path / "model.pt", tmp_path / "p", overlap=0.5)
    probabilities = np.load(tmp_path / "p" / "oof.npy")
    assert probabilities.shape[1:] == (len(CLASSES), 48, 48)
    # Class probabilities of a pixel sum to 1 (up to the uint8 encoding).
    assert np.abs(probabilities.astype(int).sum(axis=1) - 255).max() <= len(CLASSES)
    # The window really runs: its tile overlap changes the maps (a whole-image pass
    # would ignore it).
    predict_fold(tiny_dataset, tmp_path / "model.pt", tmp_path / "p0", overlap=0.0)
    assert not np.array_equal(np.load(tmp_path / "p0" / "oof.npy"), probabilities)


@pytest.mark.parametrize(
    "arch, encoder, args",
    [
        ("Segformer", "resnet18", {}),
        ("UPerNet", "resnet18", {}),
        ("Unet", "tu-convnext_atto", {}),
        ("FPN", "tu-hrnet_w18_small", {}),
        ("Unet", "resnet18", {"decoder_attention_type": "scse"}),
    ],
)
def test_architectures_from_the_config_build_offline(arch, encoder, args):
    from segflow.models import create_model

    model = create_model(arch, encoder, 3, None, args).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    if args:
        assert any("attention" in name.lower() for name, _ in model.named_modules())


def test_an_auxiliary_head_model_works_with_tta():
    from segflow.models import AuxiliaryHeadModel, ModelError, create_model
    from segflow.predict import tta_model

    model = create_model("Unet", "resnet18", 3, None, {"aux_params": {}})
    assert isinstance(model, AuxiliaryHeadModel)
    masks, labels = model.train()(torch.zeros(2, 3, 64, 64))
    assert masks.shape == (2, 3, 64, 64) and labels.shape == (2, 3)
    wrapped = tta_model(model.eval(), "d4", (64, 64), 32)
    with torch.no_grad():
        probabilities = wrapped(torch.randn(1, 3, 64, 64))
    assert probabilities.shape == (1, 3, 64, 64)
    assert torch.allclose(probabilities.sum(1), torch.ones(1, 64, 64), atol=1e-5)
    with pytest.raises(ModelError, match="model_args"):
        create_model("Unet", "resnet18", 3, None, {"no_such_argument": 1})


def test_griddropout_and_cropnonemptymask_from_the_yaml():
    from segflow.data import build_transform

    augment = yaml.safe_load(
        """
        - CropNonEmptyMaskIfExists: {height: 32, width: 32, p: 1.0}
        - GridDropout: {ratio: 0.5, unit_size_range: [8, 12], fill: 0, fill_mask: 255, p: 1.0}
        """
    )
    transform = build_transform(augment, seed=0)
    image = np.full((96, 96, 3), 200, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    mask[70:80, 10:20] = 3  # the only object: the crop must hold some of it
    for _ in range(5):
        out = transform(image=image, mask=mask)
        tensor, cropped = out["image"], out["mask"].numpy()
        assert tensor.shape == (3, 32, 32) and (cropped == 3).any()
        dropped = cropped == 255
        assert 0 < dropped.mean() < 1
        # The dropped cells are filled in the image (0, normalised) and ignored in the
        # label: the same pixels.
        filled = tensor[0].numpy() < -1.5
        assert np.array_equal(filled, dropped)


@pytest.mark.parametrize("method", ["ema", "swa", "topk"])
def test_an_average_saved_and_loaded_mid_run_ends_as_the_uninterrupted_one(method):
    """What resume saves of the average (state_dict) and loads into a fresh one gives,
    after the same further steps, the uninterrupted run's averaged weights: a training
    job killed mid-run keeps the epochs it had averaged."""
    settings = model_params(
        averaging=method, ema_decay=0.5, swa_start=0.25, top_k=2, epochs=4
    )

    def tiny_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1)
        )

    def train_epochs(model, average, epochs, step=0):
        for epoch in epochs:
            for _ in range(3):
                step += 1
                noise = torch.Generator().manual_seed(step)  # the step's "gradient"
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape, generator=noise) * 0.1)
                average.after_step(model, step)
            average.after_epoch(model, epoch, val_miou=[0.3, 0.9, 0.1, 0.5][epoch - 1])
        return step

    batches = [(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4))]
    whole_model = tiny_model()
    whole = WeightAverage(whole_model, method, 4, settings)
    train_epochs(whole_model, whole, range(1, 5))
    expected = whole.averaged_state(whole_model, batches, "cpu")
    epochs_expected = whole.averaged_epochs()

    first_model = tiny_model()
    first = WeightAverage(first_model, method, 4, settings)
    step = train_epochs(first_model, first, range(1, 3))
    saved_model, saved_average = first_model.state_dict(), first.state_dict()
    resumed_model = tiny_model()
    resumed_model.load_state_dict(saved_model)
    resumed = WeightAverage(resumed_model, method, 4, settings)
    resumed.load_state_dict(saved_average)
    train_epochs(resumed_model, resumed, range(3, 5), step)
    got = resumed.averaged_state(resumed_model, batches, "cpu")
    assert resumed.averaged_epochs() == epochs_expected
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    if method == "topk":
        assert epochs_expected == [2, 4]  # the two best val mIoU: 0.9 and 0.5
    if method == "swa":
        assert epochs_expected == [1, 2, 3, 4]  # swa_start 0.25 of 4 epochs


def test_ema_weights_follow_the_documented_warmup_and_decay_exactly():
    """The EMA after steps 1..4 of known weights, computed by hand from the module
    doc's rule: decay 1 - (1 + k)^(-2/3) at the k-th update after the first (the first
    copies the weights), capped at ema_decay."""
    cap = 0.55
    average = WeightAverage(TinyNet(), "ema", 2, model_params(ema_decay=cap))
    net = TinyNet()
    expected = None
    for step in range(1, 5):
        with torch.no_grad():
            net.conv.weight.fill_(float(step * step))
        average.after_step(net, step)
        weights = net.conv.weight.detach().clone()
        k = step - 1
        decay = 0.0 if k == 0 else min(1 - (1 + k) ** (-2 / 3), cap)
        expected = (
            weights if expected is None else decay * expected + (1 - decay) * weights
        )
        torch.testing.assert_close(average.ema.module.conv.weight, expected)
    assert 0 < decay == cap  # the cap was reached, so ema_decay is what acts


def test_averaged_states_keep_each_tensors_dtype_and_the_log_names_the_epochs():
    """mean_state: float tensors averaged in their own dtype (a float64 or float16
    buffer stays one), integer ones taken from the first state; describe() names the
    epochs whose weights were averaged (the training log's line)."""
    states = [
        {
            "w64": torch.tensor([1.0, 2.0], dtype=torch.float64),
            "w16": torch.tensor([1.0], dtype=torch.float16),
            "n": torch.tensor(3 + k),
        }
        for k in range(2)
    ]
    states[1]["w64"] += 1
    mean = mean_state(states)
    assert mean["w64"].dtype == torch.float64 and mean["w64"].tolist() == [1.5, 2.5]
    assert mean["w16"].dtype == torch.float16 and mean["n"].item() == 3
    average = WeightAverage(TinyNet(), "topk", 4, model_params(top_k=2))
    for epoch, score in ((1, 0.1), (2, 0.5), (3, 0.2), (4, 0.4)):
        average.after_epoch(TinyNet(), epoch, score)
    assert average.averaged_epochs() == [2, 4]
    assert average.describe() == " of epochs [2, 4]"
    assert WeightAverage(TinyNet(), "ema", 4, model_params()).describe() == ""


def test_an_unknown_averaging_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'mean': choose from \['none', 'ema', 'swa'"):
        WeightAverage(TinyNet(), "mean", 2, model_params())
