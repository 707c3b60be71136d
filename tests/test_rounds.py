"""What later rounds and the baselines rest on: the full fit, warm starts, the pseudo-label
schemes, presentation counting for the compute-matched baseline, the full fit's weight."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CLASSES, model_params, predict_fold, train_fold, validated_config
from segflow.fold_data import RoundLabels, fold_split
from segflow.probabilities import (
    MemberProbabilities,
    decode_probabilities,
    encode_probabilities,
    probability_writer,
    read_probability_set,
)
from segflow.settings import round_model_settings
from segflow.train import matched_epochs


def labelled_count(tiny_dataset) -> int:
    images = pd.read_parquet(tiny_dataset["images"])
    return int((images["split"] == "train").sum())


def test_the_full_fit_trains_on_every_labelled_image_and_predicts_no_oof(
    tiny_dataset, tmp_path
):
    metrics = train_fold(tiny_dataset, tmp_path / "train", fold=None)
    labelled = labelled_count(tiny_dataset)
    assert metrics["fold"] == "full" and metrics["val_images"] == 0
    assert metrics["train_images"] == labelled and metrics["val_miou"] is None
    assert metrics["best_epoch"] == metrics["epochs"]  # the last epoch is kept
    out = predict_fold(
        tiny_dataset, tmp_path / "train" / "model.pt", tmp_path, fold=None
    )
    oof, oof_ids = read_probability_set(out / "oof.npy")
    test, test_ids = read_probability_set(out / "test.npy")
    images = pd.read_parquet(tiny_dataset["images"])
    assert oof.shape[0] == 0 and oof_ids == []
    assert test_ids == images.loc[images["split"] == "test", "image_id"].tolist()
    assert test.shape[1:] == (len(CLASSES), 48, 48)


def test_fold_split_of_the_full_fit_leaves_no_validation(tiny_dataset):
    images = pd.read_parquet(tiny_dataset["images"])
    folds = pd.read_csv(tiny_dataset["folds"])
    train, val = fold_split(
        images, folds, None, drop=frozenset({images["image_id"][0]})
    )
    assert val.empty and len(train) == labelled_count(tiny_dataset) - 1


def test_warm_start_begins_from_the_previous_rounds_weights(tiny_dataset, tmp_path):
    """With a vanishing lr the weights of a warm-started run stay those it started from;
    a scratch run with the same seed starts elsewhere."""
    train_fold(tiny_dataset, tmp_path / "r0", settings=model_params(epochs=2))
    start = torch.load(tmp_path / "r0" / "model.pt", weights_only=True)["state_dict"]
    still = model_params(epochs=1, lr=1e-12, weight_decay=0.0, warmup_epochs=0)
    metrics = train_fold(
        tiny_dataset, tmp_path / "r1", settings=still, init=tmp_path / "r0" / "model.pt"
    )
    warm = torch.load(tmp_path / "r1" / "model.pt", weights_only=True)["state_dict"]
    train_fold(tiny_dataset, tmp_path / "scratch", settings=still)
    scratch = torch.load(tmp_path / "scratch" / "model.pt", weights_only=True)
    weights = [
        k for k, v in start.items() if v.dtype.is_floating_point and "running" not in k
    ]
    assert metrics["warm_start"] == str(tmp_path / "r0" / "model.pt")
    assert all(torch.allclose(warm[k], start[k], atol=1e-6) for k in weights)
    assert not all(
        torch.allclose(scratch["state_dict"][k], start[k], atol=1e-3) for k in weights
    )


def test_a_warm_round_fine_tunes_with_retrains_epochs_and_lr():
    config = validated_config(
        retrain={"init": "warm", "epochs": 3, "lr": 0.0005, "warmup_epochs": 0.5}
    )
    model = next(iter(config["models"]))
    r0 = round_model_settings(config, model, "r0")
    r1 = round_model_settings(config, model, "r1")
    assert (r1.epochs, r1.lr, r1.warmup_epochs) == (3, 0.0005, 0.5)
    assert r1.replace(epochs=r0.epochs, lr=r0.lr, warmup_epochs=r0.warmup_epochs) == r0
    scratch = validated_config(retrain={"init": "scratch"})
    assert round_model_settings(scratch, model, "r1") == round_model_settings(
        scratch, model, "r0"
    )


@pytest.mark.parametrize("warmup,first", [(0, 1.0), (0.5, 1 / 2)])
def test_a_warm_rounds_first_step_runs_at_the_documented_lr(
    tiny_dataset, tmp_path, monkeypatch, warmup, first
):
    """docs/stages.md: a warm round peaks at retrain.lr after retrain.warmup_epochs of linear
    warmup (none by default). Its first optimizer step runs at retrain.lr, or, with half
    an epoch of warmup over 12 images in batches of 4 (2 warmup steps), at half of it."""
    import segflow.run_state

    train_fold(tiny_dataset, tmp_path / "r0", settings=model_params(epochs=1))
    config = validated_config(
        retrain={"init": "warm", "epochs": 2, "lr": 0.0005, "warmup_epochs": warmup},
        defaults={"batch_size": 4},
    )
    model = next(iter(config["models"]))
    r1 = round_model_settings(config, model, "r1")
    small = r1.replace(arch="FPN", encoder="mobilenet_v2")
    lrs = []

    def recording(model, settings):
        optimizer = create(model, settings)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"])
        )
        return optimizer

    create = segflow.run_state.create_optimizer
    monkeypatch.setattr(segflow.run_state, "create_optimizer", recording)
    train_fold(
        tiny_dataset, tmp_path / "r1", settings=small, init=tmp_path / "r0" / "model.pt"
    )
    assert len(lrs) == 2 * 3  # 2 epochs of 12 images in batches of 4
    assert lrs[0] == pytest.approx(0.0005 * first, rel=1e-6)
    assert max(lrs) == pytest.approx(0.0005, rel=1e-6)


def pseudo_labels(tiny_dataset, tmp_path) -> RoundLabels:
    """Every test image pseudo-labelled with its own (all-background) mask."""
    images = pd.read_parquet(tiny_dataset["images"])
    test = images[images["split"] == "test"]
    masks = tmp_path / "pseudo_masks"
    masks.mkdir()
    from segflow.labels import write_label

    for coco_id in test["coco_id"]:
        write_label(np.zeros((64, 64), np.uint8), masks, coco_id)
    return RoundLabels(None, frozenset(), frozenset(test["image_id"]), masks)


@pytest.mark.parametrize("labelled_epochs", [0, 1])
def test_pseudo_schemes_count_the_presentations_of_each_epoch(
    tiny_dataset, tmp_path, labelled_epochs
):
    """Labelled + pseudo every epoch, or the last epoch on the labelled images only."""
    labels = pseudo_labels(tiny_dataset, tmp_path)
    metrics = train_fold(
        tiny_dataset,
        tmp_path / "run",
        settings=model_params(epochs=2),
        round_labels=labels,
        labelled_epochs=labelled_epochs,
    )
    labelled, pseudo = metrics["train_images"], metrics["pseudo_images"]
    assert pseudo == len(labels.pseudo) > 0
    expected = 2 * (labelled + pseudo) - labelled_epochs * pseudo
    assert metrics["presentations"] == expected
    assert metrics["labelled_epochs"] == labelled_epochs


def test_the_compute_matched_baseline_counts_presentations_as_the_pipeline(
    tiny_dataset, tmp_path
):
    """The matched run trains as many epochs over all labelled images as the pipeline's
    jobs presented images: each job's epochs x its training images, pseudo included."""
    labels = pseudo_labels(tiny_dataset, tmp_path)
    jobs = [
        train_fold(
            tiny_dataset, tmp_path / "f0", fold=0, settings=model_params(epochs=2)
        ),
        train_fold(
            tiny_dataset, tmp_path / "f1", fold=1, settings=model_params(epochs=1)
        ),
        train_fold(
            tiny_dataset,
            tmp_path / "r1f0",
            fold=0,
            settings=model_params(epochs=1),
            round_labels=labels,
        ),
    ]
    pipeline = sum(j["epochs"] * (j["train_images"] + j["pseudo_images"]) for j in jobs)
    assert pipeline == sum(j["presentations"] for j in jobs)
    metrics_files = [tmp_path / run / "metrics.json" for run in ("f0", "f1", "r1f0")]
    labelled = labelled_count(tiny_dataset)
    matched = train_fold(
        tiny_dataset,
        tmp_path / "matched",
        fold=None,
        settings=model_params(epochs=1),
        match_presentations=metrics_files,
    )
    assert (
        matched["epochs"]
        == round(pipeline / labelled)
        == matched_epochs(metrics_files, labelled)
    )
    assert abs(matched["presentations"] - pipeline) <= labelled / 2


def stored_set(path, ids, probabilities) -> None:
    with probability_writer(path, ids, probabilities.shape[1:]) as out:
        out[:] = encode_probabilities(probabilities)


def test_a_members_test_mixes_its_full_fit_at_full_weight(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["a", "b"]

    def random_set(name):
        p = rng.random((2, 3, 4, 4)).astype(np.float32)
        p /= p.sum(axis=1, keepdims=True)
        stored_set(tmp_path / f"{name}.npy", ids, p)
        return decode_probabilities(encode_probabilities(p))

    folds = [random_set("f0"), random_set("f1")]
    full = random_set("full")
    paths = [tmp_path / f"{n}.npy" for n in ("f0", "f1", "full")]
    member = MemberProbabilities("m", paths, "test", [0.25, 0.25, 0.5])
    expected = 0.5 * (folds[0] + folds[1]) / 2 + 0.5 * full
    np.testing.assert_allclose(member.get(ids), expected, atol=1e-6)
    with pytest.raises(ValueError, match="summing to 1"):
        MemberProbabilities("m", paths, "test", [0.5, 0.5, 0.5])


def test_the_ensemble_gives_the_full_fit_its_configured_share(tmp_path):
    from segflow.ensemble import member_test

    ids = ["a"]
    ones = np.zeros((1, 2, 2, 2), np.float32)
    ones[:, 1] = 1.0
    zeros = 1.0 - ones
    stored_set(tmp_path / "f0.npy", ids, ones)
    stored_set(tmp_path / "f1.npy", ids, ones)
    stored_set(tmp_path / "full.npy", ids, zeros)
    files = {"test": [str(tmp_path / "f0.npy"), str(tmp_path / "f1.npy")]}
    with_full = {**files, "full": [str(tmp_path / "full.npy")]}
    assert member_test("m", files, 0.7).get(ids)[0, 1, 0, 0] == pytest.approx(1.0)
    assert member_test("m", with_full, 0.7).get(ids)[0, 1, 0, 0] == pytest.approx(0.3)


def test_rounds_score_scores_single_models_and_round_ensembles_on_known_maps(tmp_path):
    """Two 16 x 16 test images, each with a Paper square of 8 x 8 (a quarter): a single
    model that predicts it exactly scores 1; an ensemble that predicts background
    everywhere scores (background IoU 3/4 + Paper IoU 0) / 2."""
    from conftest import square, write_coco
    from segflow.demo_score import rounds_score

    images = [
        {"id": k, "file_name": f"t{k}.png", "width": 16, "height": 16} for k in (1, 2)
    ]
    annotations = [
        {
            "id": k,
            "image_id": k,
            "category_id": 2,  # Paper, class index 2
            "segmentation": [square(0, 0, 8, 8)],
            "area": 64,
            "bbox": [0, 0, 8, 8],
            "iscrowd": 0,
        }
        for k in (1, 2)
    ]
    truth = write_coco(tmp_path, "truth.json", images, annotations, write_images=False)
    ids = ["t1.png", "t2.png"]
    exact = np.zeros((2, len(CLASSES), 16, 16), np.float32)
    exact[:, 0] = 1.0
    exact[:, 0, :8, :8], exact[:, 2, :8, :8] = 0.0, 1.0
    stored_set(tmp_path / "single.npy", ids, exact)
    np.save(tmp_path / "labels.npy", np.zeros((2, 16, 16), np.uint8))
    (tmp_path / "labels_ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "summary.json").write_text('{"oof_miou": 0.4}')
    result = rounds_score(
        entries={
            "baseline": {"test": str(tmp_path / "single.npy")},
            "r0": {
                "test_labels": str(tmp_path / "labels.npy"),
                "test_ids": str(tmp_path / "labels_ids.txt"),
                "summary": str(tmp_path / "summary.json"),
            },
        },
        truth_json=str(truth),
        classes=CLASSES,
        size=(32, 32),  # resized by nearest neighbour, as the submission
        out=str(tmp_path / "rounds.json"),
        figure_out=str(tmp_path / "rounds.png"),
    )
    assert list(result) == ["baseline", "r0"]
    assert result["baseline"]["test_miou"] == pytest.approx(1.0)
    assert result["baseline"]["oof_miou"] is None
    assert result["r0"]["test_miou"] == pytest.approx((0.75 + 0.0) / 2)
    assert result["r0"]["oof_miou"] == 0.4
    assert (tmp_path / "rounds.png").stat().st_size > 0
