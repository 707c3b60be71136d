"""Ensemble math on hand-made probabilities; streaming equals in-memory; OOF tuning never hurts."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import validated_config
from segflow.ensemble import EnsembleArgs, combine, ensemble, tune_bias
from segflow.io import read_ids
from segflow.probabilities import PredictionError, ids_path
from segflow.settings import ensemble_settings
from stage_files import (
    check_ensemble,
    label_reader,
    probabilities_by_id,
    reference_miou,
)

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
        EnsembleArgs(
            settings=ensemble_settings(validated_config(ensemble=changes)),
            members=members,
            images_path=root / "images.parquet",
            masks_dir=root / "masks",
            classes=["bg", "a", "b"],
            summary_out=out / "summary.json",
            oof_out=out / "oof.npy",
            test_out=out / "test.npy",
            test_labels_out=out / "test_labels.npy",
            oof_labels_out=out / "oof_labels.npy",
        )
    )


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_oof_weighted_ensemble_never_below_the_best_member(three_members, method):
    root, members, _, _ = three_members
    summary = run_ensemble(
        root, members, method=method, weights="oof", class_bias=False
    )
    # Each member's OOF mIoU from its own files, not from the summary.
    label_of = labels_from(root)
    best = 0.0
    for files in members.values():
        oof = probabilities_by_id(files["oof"])
        ids = sorted(oof)
        best = max(
            best,
            reference_miou(
                np.stack([label_of(i, H) for i in ids]),
                np.stack([oof[i].argmax(axis=0) for i in ids]),
                C,
            ),
        )
    assert summary["best_member_oof_miou"] == pytest.approx(best)
    # The written OOF set scores what the summary says, at least the best member.
    written = probabilities_by_id([root / "out" / "oof.npy"])
    if method == "soft":
        ids = sorted(written)
        written_miou = reference_miou(
            np.stack([label_of(i, H) for i in ids]),
            np.stack([np.log(written[i] + 1e-4).argmax(axis=0) for i in ids]),
            C,
        )
        assert written_miou == pytest.approx(summary["oof_miou"], abs=0.01)
    assert summary["oof_miou"] >= best - 1e-12
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


def labels_from(root):
    """label_of(image_id, size) as the ensemble reads it: the masks the fixture wrote."""
    return label_reader(root / "images.parquet", root / "masks")


def test_reported_scores_weights_and_bias_are_recomputed_from_the_files(three_members):
    root, members, _, _ = three_members
    summary = run_ensemble(root, members, method="soft", weights="oof", class_bias=True)
    # The fixture exercises what the report must carry: tuned unequal weights and a bias.
    weights = [m["weight"] for m in summary["members"].values()]
    assert summary["weights_chosen_from"] == "tuned" and len(set(weights)) == 3
    assert summary["class_bias"] is not None and any(summary["class_bias"].values())
    check_ensemble(summary, members, ["bg", "a", "b"], labels_from(root), root / "out")


def test_a_full_fit_enters_the_test_probabilities_at_its_documented_share(
    three_members,
):
    root, members, _, _ = three_members
    with_full = {}
    for name, files in members.items():
        # The full fit of each member: its second fold model's test set, stored again.
        full = root / "predict" / name / "full-s0"
        full.mkdir()
        stored = np.load(files["test"][1])
        np.save(full / "test.npy", 255 - stored)  # far from the folds' mean
        (full / "test_ids.txt").write_text(Path(ids_path(files["test"][1])).read_text())
        with_full[name] = {**files, "full": [str(full / "test.npy")]}
    summary = run_ensemble(
        root, with_full, method="soft", weights="oof", class_bias=True, full_weight=0.6
    )
    assert summary["full_fit_weight"] == 0.6
    check_ensemble(
        summary, with_full, ["bg", "a", "b"], labels_from(root), root / "out"
    )


def grid_trap(tmp_path, n_images=4, size=16, stride=2):
    """Two members and labels where tuning on the pixel grid misleads: "grid" is right,
    and sure, only at the tuning grid's pixels (every ``stride``-th row and column) and
    confidently wrong elsewhere; "steady" is right, less sure, everywhere else and wrong
    on the grid. Tuned on the grid, the ensemble leans on "grid"; on every pixel
    "steady" alone is best."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, (n_images, size, size)).astype(np.uint8)
    on_grid = np.zeros((size, size), bool)
    on_grid[::stride, ::stride] = True
    wrong = (labels + 1) % C

    def member(class_map, sure):
        p = np.full((n_images, C, size, size), (1 - sure) / (C - 1), np.float32)
        np.put_along_axis(p, class_map[:, None].astype(np.int64), sure, axis=1)
        return p

    grid = member(np.where(on_grid, labels, wrong), 0.9)
    steady = member(np.where(on_grid, wrong, labels), 0.5)
    ids = [f"b/{i}.png" for i in range(n_images)]
    (tmp_path / "masks").mkdir()
    for i in range(n_images):
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), labels[i])
    pd.DataFrame(
        {"image_id": ids, "coco_id": range(n_images), "split": "train"}
    ).to_parquet(tmp_path / "images.parquet")
    half = n_images // 2
    members = {
        name: write_member(
            tmp_path / "predict",
            name,
            [p[:half], p[half:]],
            [p[:2], p[2:4]],
            [ids[:half], ids[half:]],
            ["t/0.png", "t/1.png"],
        )
        for name, p in (("grid", grid), ("steady", steady))
    }
    return members


@pytest.mark.parametrize("class_bias", [False, True])
def test_tuned_weights_that_lose_on_the_full_oof_give_way_to_the_best_member(
    tmp_path, class_bias
):
    members = grid_trap(tmp_path)
    # 4 images x 256 pixels, at most 1000 tuning pixels: a stride-2 grid.
    summary = run_ensemble(
        tmp_path,
        members,
        method="soft",
        weights="oof",
        class_bias=class_bias,
        tune_pixels=1000,
    )
    # A bias is tuned on top of the tuned weights: with those weights gone, so is it.
    assert summary["class_bias"] is None
    assert summary["weights_mode"] == "oof"
    # On the grid the tuned weights are perfect; on every pixel they lose to "steady".
    assert summary["oof_miou_tuned_weights"] < summary["best_member_oof_miou"]
    assert summary["weights_chosen_from"] == "member:steady"
    assert summary["members"]["steady"]["weight"] == 1.0
    assert summary["members"]["grid"]["weight"] == 0.0
    check_ensemble(
        summary, members, ["bg", "a", "b"], labels_from(tmp_path), tmp_path / "out"
    )
    steady = probabilities_by_id(members["steady"]["oof"])
    labels = [labels_from(tmp_path)(i, 16) for i in sorted(steady)]
    assert summary["oof_miou"] == pytest.approx(
        reference_miou(
            np.stack(labels), np.stack([steady[i].argmax(0) for i in sorted(steady)]), C
        )
    )


def test_an_image_in_the_oof_of_two_folds_is_an_error(three_members):
    root, members, _, ids = three_members
    oof_1 = Path(members["good"]["oof"][1])
    listed = ids_path(oof_1).read_text().splitlines()
    listed[0] = ids[0]  # fold 0 validated this image already
    ids_path(oof_1).write_text("".join(f"{i}\n" for i in listed))
    with pytest.raises(
        PredictionError, match=rf"good: image {ids[0]} is in the OOF of two folds"
    ):
        run_ensemble(root, members)


def speckled(rng, n=12, side=32, classes=4):
    """(truth, prediction) label maps: objects found, plus small false speckles of
    class 1 and 3, and true small objects of class 2 that a removal would lose."""
    truth = np.zeros((n, side, side), np.uint8)
    predicted = np.zeros_like(truth)
    for i in range(n):
        truth[i, 4:14, 4:14] = 1
        truth[i, 20:30, 18:28] = 3
        truth[i, 28:30, 2:4] = 2  # small and real
        truth[i, 0, :] = IGNORE  # ignored pixels count for nothing
        predicted[i] = truth[i]
        predicted[i, 0, :] = 0
        for _ in range(4):  # false speckles
            y, x = rng.integers(16, 30), rng.integers(2, 14)
            predicted[i, y : y + 2, x : x + 1] = rng.choice([1, 3])
    return truth, predicted


IGNORE = 255


def test_small_component_removal_is_tuned_on_oof_and_never_lowers_it():
    from segflow.postprocess import (
        min_areas_in_pixels,
        remove_small_components,
        tune_min_areas,
    )
    from stage_files import without_small

    truth, predicted = speckled(np.random.default_rng(0))
    shares, before, after = tune_min_areas(predicted, truth, 4)
    assert after > before + 0.01  # the false speckles go
    assert shares[2] == 0.0  # class 2's real small objects stay
    assert shares[1] > 0 and shares[3] > 0
    areas = min_areas_in_pixels(shares, (32, 32))
    removed = np.stack([remove_small_components(p, areas) for p in predicted])
    assert np.array_equal(
        removed, np.stack([without_small(p, areas) for p in predicted])
    )
    assert reference_miou(truth, removed, 4) == pytest.approx(after)
    # Where every small component is real, nothing is removed and nothing is lost.
    shares, before, after = tune_min_areas(truth, truth, 4)
    assert after == before and not any(shares.values())
    # Random label maps: whatever it picks, OOF mIoU does not fall.
    rng = np.random.default_rng(1)
    noisy = np.where(
        rng.random(truth.shape) < 0.1, rng.integers(0, 4, truth.shape), truth
    )
    shares, before, after = tune_min_areas(noisy.astype(np.uint8), truth, 4)
    assert after >= before


def test_the_ensemble_post_processes_its_oof_and_test_labels(three_members):
    root, members, _, _ = three_members
    summary = run_ensemble(
        root, members, method="soft", weights="oof", class_bias=True, remove_small=True
    )
    post = summary["postprocess"]
    assert post is not None and post["oof_miou"] >= post["oof_miou_before"]
    check_ensemble(summary, members, ["bg", "a", "b"], labels_from(root), root / "out")


def test_a_class_bias_that_only_fits_its_own_pixels_gains_nothing_out_of_sample():
    """First half of the OOF images: class 1 under-predicted (p=0.45 where it is
    true); second half: the same probabilities where it is false. Tuned on all pixels
    the bias gains (the first half is larger); tuned on one half and scored on the
    other it loses, so the ensemble does not keep it. Where both halves agree, it
    gains out of sample too."""
    from segflow.ensemble import cross_validated_bias_gain, sample_miou, tune_bias

    def half(hard: int, hard_true: int, easy: int):
        """``hard`` pixels at p(1) = 0.45 labelled ``hard_true``; ``easy`` pixels of
        both classes, predicted right with p = 0.95."""
        probabilities = np.tile(np.float32([0.55, 0.45]), (hard + easy, 1))
        labels = np.full(hard + easy, hard_true, np.int64)
        probabilities[hard:] = [0.95, 0.05]
        labels[hard:] = 0
        probabilities[hard : hard + easy // 2] = [0.05, 0.95]
        labels[hard : hard + easy // 2] = 1
        return probabilities, labels

    def sample(first_true: int, second_true: int):
        first, second = half(600, first_true, 400), half(400, second_true, 600)
        return [np.concatenate([first[0], second[0]])], np.concatenate(
            [first[1], second[1]]
        )

    weights = np.ones(1)
    samples, labels = sample(first_true=1, second_true=0)
    bias = tune_bias(samples, labels, weights, 2)
    in_sample = sample_miou(samples, labels, weights, "soft", bias, 2) - sample_miou(
        samples, labels, weights, "soft", None, 2
    )
    assert in_sample > 0
    assert cross_validated_bias_gain(samples, labels, weights, 2) < 0
    samples, labels = sample(first_true=1, second_true=1)
    assert cross_validated_bias_gain(samples, labels, weights, 2) > 0
