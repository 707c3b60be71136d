"""The results report on the tiny run: the leaderboard CSV recomputed from the files each
stage wrote, the final ensemble's confusion matrix and worst images recomputed from its
OOF label maps, and every figure the report shows written."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import CLASSES
from segflow.leaderboard import final_ensemble_oof
from stage_files import label_reader, reference_class_ious, reference_miou


def read_json(path):
    return json.loads(path.read_text())


def test_the_leaderboard_ranks_every_model_seed_round_and_ensemble(tiny_run):
    workdir, config = tiny_run
    results = workdir / "results"
    table = pd.read_csv(results / "leaderboard.csv")
    models = sorted(config["models"])
    assert sorted(table["entry"]) == sorted(
        [f"r0/{m}/s0" for m in models] + ["r0/ensemble"]
    )
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["oof_miou"].is_monotonic_decreasing
    rows = table.set_index("entry")
    ensemble = read_json(results / "r0" / "ensemble" / "summary.json")
    assert rows.at["r0/ensemble", "oof_miou"] == pytest.approx(ensemble["oof_miou"])
    for model in models:
        row = rows.loc[f"r0/{model}/s0"]
        score = read_json(results / "r0" / "oof" / f"{model}.json")["seeds"]["0"]
        assert row["oof_miou"] == pytest.approx(score["miou"])
        for name in CLASSES:
            expected = score["per_class_iou"][name]
            assert (
                np.isnan(row[f"iou_{name}"])
                if expected is None
                else row[f"iou_{name}"] == pytest.approx(expected)
            ), name
        folds = [
            read_json(results / "r0" / "train" / model / f"f{f}-s0" / "metrics.json")
            for f in range(config["cv"]["folds"])
        ]
        fold_mious = [m["val_miou"] for m in folds]
        assert row["fold_miou_mean"] == pytest.approx(np.mean(fold_mious))
        assert row["fold_miou_std"] == pytest.approx(np.std(fold_mious))
        assert row["folds"] == len(fold_mious) and row["seed"] == 0
        full_fit = read_json(results / "r0/train" / model / "full-s0" / "metrics.json")
        assert row["train_seconds"] == pytest.approx(
            sum(m["seconds"] for m in folds) + full_fit["seconds"]
        )
        weight = ensemble["members"][f"r0/{model}/s0"]["weight"]
        assert row["ensemble_weight"] == pytest.approx(weight)


def test_the_final_ensembles_confusion_and_worst_images_come_from_its_oof(tiny_run):
    workdir, config = tiny_run
    results = workdir / "results"
    final = results / "r0" / "ensemble"
    summary = read_json(final / "summary.json")
    confusion, worst = final_ensemble_oof(
        final / "oof.npy",
        final / "oof_labels.npy",
        results / "data" / "images.parquet",
        results / "data" / "masks",
        results / "demo_data",
        CLASSES,
        worst_count=3,
    )
    # Its diagonal over the row and column sums is the ensemble's per-class OOF IoU.
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    for k, name in enumerate(CLASSES):
        expected = summary["per_class_iou"][name]
        assert (
            union[k] == 0
            if expected is None
            else tp[k] / union[k] == pytest.approx(expected)
        ), name
    # The worst images: the lowest image mIoU of the ensemble's OOF labels, in order.
    label_of = label_reader(
        results / "data" / "images.parquet", results / "data" / "masks"
    )
    labels = np.load(final / "oof_labels.npy")
    ids = (final / "oof_ids.txt").read_text().split()
    size = labels.shape[-1]
    image_ious = sorted(
        (reference_miou(label_of(i, size), labels[k], len(CLASSES)), i)
        for k, i in enumerate(ids)
    )
    assert [e["image_id"] for e in worst] == [i for _, i in image_ious[:3]]
    for entry, (iou, image_id) in zip(worst, image_ious):
        assert entry["iou"] == pytest.approx(iou)
        assert (entry["label"] == label_of(image_id, size)).all()
        assert (entry["prediction"] == labels[ids.index(image_id)]).all()
        assert entry["image"].shape == (size, size, 3)
    assert reference_class_ious(
        np.stack([label_of(i, size) for i in ids]), labels, len(CLASSES)
    ) == pytest.approx(
        {k: v for k, v in enumerate(summary["per_class_iou"].values()) if v is not None}
    )


def test_every_results_figure_is_written(tiny_run):
    workdir, config = tiny_run
    report = workdir / "results" / "report"
    figures = [
        report / f"{name}.png"
        for name in ("leaderboard", "ensembles", "rounds_oof", "confusion", "worst_oof")
    ] + [report / "curves" / f"r0_{m}.png" for m in sorted(config["models"])]
    assert sorted((report / "curves").glob("*.png")) == sorted(figures[5:])
    for path in figures:
        picture = cv2.imread(str(path))
        assert picture is not None and min(picture.shape[:2]) > 150, path
        # Not a blank canvas: a figure has ink.
        assert (picture < 200).mean() > 0.01, path
