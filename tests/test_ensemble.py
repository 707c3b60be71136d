"""Ensemble math on hand-made probabilities; streaming equals in-memory; OOF tuning never hurts."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import validated_config
from segflow.ensemble import combine, ensemble, tune_bias
from segflow.io import read_ids
from segflow.probabilities import PredictionError, ids_path
from segflow.settings import ensemble_settings

C, H, W = 3, 8, 8


def probs(*per_class):
    """(1, C, 1, 1)-shaped probabilities from per-class values."""
    return np.array(per_class, np.float32).reshape(1, -1, 1, 1)


def test_soft_voting_is_the_weighted_mean():
    a, b = probs(0.6, 0.4, 0.0), probs(0.0, 0.3, 0.7)
    labels, mean = combine([a, b], np.array([1.0, 1.0]), "soft")
    np.testing.assert_allclose(mean.ravel(), [0.3, 0.35, 0.35])
    assert labels.ravel()[0] in (1, 2)
    labels, mean = combine([a, b], np.array([3.0, 1.0]), "soft")
    np.testing.assert_allclose(mean.ravel(), [0.45, 0.375, 0.175])
    assert labels.ravel()[0] == 0


def test_hard_voting_counts_votes_and_breaks_ties_by_mean_probability():
    a, b, c = probs(0.5, 0.4, 0.1), probs(0.45, 0.1, 0.45), probs(0.2, 0.7, 0.1)
    # Votes: class 0 (a), 0 (b: tie 0/2 -> argmax picks 0), 1 (c) -> class 0 wins 2:1.
    assert combine([a, b, c], np.ones(3), "hard")[0].ravel()[0] == 0
    # Two voters, one vote each for 0 and 1: the tie goes to the higher mean probability.
    x, y = probs(0.5, 0.45, 0.05), probs(0.1, 0.85, 0.05)
    assert combine([x, y], np.ones(2), "hard")[0].ravel()[0] == 1  # mean: 0.3 vs 0.65
    # Weights are votes: a heavier voter wins.
    assert combine([x, y], np.array([2.0, 1.0]), "hard")[0].ravel()[0] == 0


def test_class_bias_moves_the_argmax():
    p = probs(0.5, 0.4, 0.1)
    assert combine([p], np.ones(1), "soft")[0].ravel()[0] == 0
    bias = np.array([0.0, np.log(0.5 / 0.4) + 0.01, 0.0])
    assert combine([p], np.ones(1), "soft", bias)[0].ravel()[0] == 1


def test_bias_tuning_recovers_a_shifted_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, 3000)
    logits = np.eye(C)[labels] * 2.0 + rng.normal(0, 1, (3000, C))
    logits[:, 2] -= 1.5  # the model under-predicts class 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    bias = tune_bias([p.astype(np.float32)], labels, np.ones(1), C)
    assert bias[2] - bias[[0, 1]].mean() > 0.5


def write_member(root, name, oof_by_fold, test_by_fold, ids_by_fold, test_ids):
    """A member's predict folders as the workflow lays them out; returns its files
    ({"oof": [...], "test": [...]}, one per fold), as the ensemble rule passes them."""
    files = {"oof": [], "test": []}
    for fold, (oof, ids) in enumerate(zip(oof_by_fold, ids_by_fold)):
        d = root / name / f"f{fold}-s0"
        d.mkdir(parents=True)
        np.save(d / "oof.npy", np.round(oof * 255).astype(np.uint8))
        (d / "oof_ids.txt").write_text("".join(f"{i}\n" for i in ids))
        np.save(d / "test.npy", np.round(test_by_fold[fold] * 255).astype(np.uint8))
        (d / "test_ids.txt").write_text("".join(f"{i}\n" for i in test_ids))
        files["oof"].append(str(d / "oof.npy"))
        files["test"].append(str(d / "test.npy"))
    return files


@pytest.fixture()
def three_members(tmp_path):
    """20 labelled images in 2 folds; members: good, noisy, and one biased against class 2."""
    rng = np.random.default_rng(1)
    n = 20
    ids = [f"b/{i}.png" for i in range(n)]
    labels = np.zeros((n, H, W), np.uint8)
    for i in range(n):
        labels[i, 2:6, 1:4] = 1
        labels[i, rng.integers(0, 4) : rng.integers(5, 8), 5:8] = 2
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(n):
        cv2.imwrite(str(masks / f"{i}.png"), labels[i])
    pd.DataFrame({"image_id": ids, "coco_id": range(n), "split": "train"}).to_parquet(
        tmp_path / "images.parquet"
    )

    def member(noise, class2_shift):
        logits = np.moveaxis(np.eye(C)[labels], -1, 1) * 3.0 + rng.normal(
            0, noise, (n, C, H, W)
        )
        logits[:, 2] -= class2_shift
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return p.astype(np.float32)

    test_ids = ["t/0.png", "t/1.png", "t/2.png"]
    members = {}
    for name, noise, shift in (
        ("good", 1.5, 0.0),
        ("noisy", 4.0, 0.0),
        ("shy", 1.5, 2.5),
    ):
        p = member(noise, shift)
        test = [p[:3], p[3:6]]
        members[name] = write_member(
            tmp_path / "predict",
            name,
            [p[:10], p[10:]],
            test,
            [ids[:10], ids[10:]],
            test_ids,
        )
    return tmp_path, members, labels, ids


def run_ensemble(root, members, **changes):
    out = root / "out"
    return ensemble(
        settings=ensemble_settings(validated_config(ensemble=changes)),
        members=members,
        images_path=root / "images.parquet",
        masks_dir=root / "masks",
        classes=["bg", "a", "b"],
        summary_out=out / "summary.json",
        oof_out=out / "oof.npy",
        test_out=out / "test.npy",
        test_labels_out=out / "test_labels.npy",
    )


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_oof_weighted_ensemble_never_below_the_best_member(three_members, method):
    root, members, _, _ = three_members
    summary = run_ensemble(
        root, members, method=method, weights="oof", class_bias=False
    )
    assert summary["oof_miou"] >= summary["best_member_oof_miou"] - 1e-12
    assert summary["oof_miou"] >= summary["oof_miou_equal_weights"] - 1e-12
    assert sum(m["weight"] for m in summary["members"].values()) == pytest.approx(1.0)


def test_class_bias_is_kept_only_when_it_helps_and_reported(three_members):
    root, members, _, _ = three_members
    summary = run_ensemble(
        root, {"shy": members["shy"]}, method="soft", weights="oof", class_bias=True
    )
    assert summary["class_bias_oof_gain"] is not None
    if summary["class_bias_oof_gain"] > 0:
        assert (
            summary["class_bias"]["b"] > summary["class_bias"]["bg"]
        )  # the shy class is pushed up
        assert summary["oof_miou"] > summary["best_member_oof_miou"]
    else:
        assert summary["class_bias"] is None


def test_streamed_outputs_equal_the_in_memory_computation(three_members):
    root, members, labels, ids = three_members
    summary = run_ensemble(
        root, members, method="soft", weights="equal", class_bias=False, chunk=3
    )
    out = root / "out"
    names = sorted(members)
    oof_ids = (out / "oof_ids.txt").read_text().splitlines()
    assert oof_ids == sorted(ids)
    # In memory: every member's whole OOF, then the weighted mean.
    full = {}
    for name in names:
        arrays = [np.load(f) for f in members[name]["oof"]]
        member_ids = sum((read_ids(ids_path(f)) for f in members[name]["oof"]), [])
        stacked = np.concatenate(arrays).astype(np.float32) / 255
        full[name] = stacked[[member_ids.index(i) for i in oof_ids]]
    mean = sum(full.values()) / len(names)
    np.testing.assert_array_equal(
        np.load(out / "oof.npy"), np.clip(np.round(mean * 255), 0, 255).astype(np.uint8)
    )
    test_mean = sum(
        sum(np.load(f).astype(np.float32) / 255 for f in members[n]["test"]) / 2
        for n in names
    ) / len(names)
    np.testing.assert_array_equal(
        np.load(out / "test_labels.npy"), np.log(test_mean + 1e-4).argmax(axis=1)
    )
    saved = json.loads((out / "summary.json").read_text())
    assert saved["weights_chosen_from"] == "equal" and saved == summary


def test_members_with_different_images_are_an_error(three_members, tmp_path):
    root, members, _, _ = three_members
    broken = dict(members)
    broken["good"] = {k: v[:1] for k, v in members["good"].items()}  # one fold only
    with pytest.raises(PredictionError, match="different images"):
        run_ensemble(root, broken)
