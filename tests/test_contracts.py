"""The hand-offs between stages, checked from the files each stage of a real run writes.

Every number a stage reports is recomputed here from the files it read (tests/stage_files
has the independent recomputation), and every later stage is shown to read what the
stage before it wrote: the index's masks and its annotation table, each round's members
and its ensemble, the ensemble and the submission, round r0 and round r1.
"""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import TINY_MODELS, TINY_PSEUDO
from stage_files import (
    check_ensemble,
    ids_of,
    oof_miou,
    probabilities_by_id,
    read_mask,
    reference_miou,
)
from stage_files import label_reader as stage_label_reader

pytestmark = pytest.mark.workflow


def label_reader(results):
    return stage_label_reader(
        results / "data" / "images.parquet", results / "data" / "masks"
    )


def member_files(results, member):
    """The files of member "r1/fpn/s0" as the workflow lays them out."""
    round_, model, seed = member.split("/")
    predict = results / round_ / "predict" / model
    return {
        "oof": [str(predict / f"f{fold}-{seed}" / "oof.npy") for fold in (0, 1)],
        "test": [str(predict / f"f{fold}-{seed}" / "test.npy") for fold in (0, 1)],
        "full": [str(predict / f"full-{seed}" / "test.npy")],
    }


@pytest.mark.parametrize("round_", ["r0", "r1"])
def test_each_rounds_ensemble_report_is_recomputed_from_its_members_files(
    tiny_clean_run, round_
):
    workdir, config = tiny_clean_run
    results = workdir / "results"
    summary = json.loads((results / round_ / "ensemble" / "summary.json").read_text())
    members = {name: member_files(results, name) for name in summary["members"]}
    assert set(members) == {f"{round_}/{model}/s0" for model in TINY_MODELS}
    check_ensemble(
        summary,
        members,
        config["classes"],
        label_reader(results),
        results / round_ / "ensemble",
    )


def test_each_models_oof_score_is_recomputed_from_its_fold_files(tiny_clean_run):
    workdir, config = tiny_clean_run
    results = workdir / "results"
    label_of = label_reader(results)
    for round_ in ("r0", "r1"):
        for model in TINY_MODELS:
            summary = json.loads(
                (results / round_ / "oof" / f"{model}.json").read_text()
            )
            files = member_files(results, f"{round_}/{model}/s0")["oof"]
            expected = oof_miou(files, label_of, len(config["classes"]))
            assert summary["miou"] == pytest.approx(expected, abs=1e-9)
            assert summary["seeds"]["0"]["images"] == 16


def test_the_submission_is_the_final_ensembles_test_labels_resized(tiny_clean_run):
    workdir, config = tiny_clean_run
    results = workdir / "results"
    final = (
        results / "r1" / "ensemble"
    )  # the last round's ensemble makes the submission
    labels = np.load(final / "test_labels.npy")
    ids = ids_of(final / "test.npy")
    size = config["submission"]["size"]
    lines = (results / "submission" / "submission.csv").read_text().splitlines()
    assert lines[0] == "image_id,PredictionString"
    rows = dict(line.split(",", 1) for line in lines[1:])
    assert sorted(rows) == sorted(ids)
    for k, image_id in enumerate(ids):
        # Documented: nearest-neighbour resize of the label map to the submission size.
        expected = cv2.resize(labels[k], (size, size), interpolation=cv2.INTER_NEAREST)
        written = np.array(rows[image_id].split(), np.uint8).reshape(size, size)
        np.testing.assert_array_equal(written, expected, err_msg=image_id)


def test_the_demo_scores_are_recomputed_from_the_submission_and_the_truth(
    tiny_clean_run,
):
    from segflow.demo_score import truth_labels

    workdir, config = tiny_clean_run
    results = workdir / "results"
    size = config["submission"]["size"]
    truth = truth_labels(
        str(results / "demo_data" / "truth" / "test.json"), config["classes"], size
    )
    lines = (results / "submission" / "submission.csv").read_text().splitlines()[1:]
    rows = dict(line.split(",", 1) for line in lines)
    ids = sorted(rows)
    expected = reference_miou(
        np.stack([truth[i] for i in ids]),
        np.stack(
            [np.array(rows[i].split(), np.uint8).reshape(size, size) for i in ids]
        ),
        len(config["classes"]),
    )
    score = json.loads((results / "demo" / "score.json").read_text())
    assert score["test_miou"] == pytest.approx(expected, abs=1e-9)
    rounds = json.loads((results / "demo" / "rounds.json").read_text())
    assert rounds["r1"]["test_miou"] == pytest.approx(expected, abs=1e-9)
    # Baseline (a): round r0's full fit of the first model, its argmax resized as the
    # submission is.
    model = next(iter(config["models"]))
    full_fit = probabilities_by_id(
        [results / "r0" / "predict" / model / "full-s0" / "test.npy"]
    )
    baseline = reference_miou(
        np.stack([truth[i] for i in ids]),
        np.stack(
            [
                cv2.resize(
                    full_fit[i].argmax(axis=0).astype(np.uint8),
                    (size, size),
                    interpolation=cv2.INTER_NEAREST,
                )
                for i in ids
            ]
        ),
        len(config["classes"]),
    )
    assert rounds["baseline recipe/s0"]["test_miou"] == pytest.approx(
        baseline, abs=1e-9
    )


def test_round_r1_is_built_from_round_r0(tiny_clean_run):
    """Pseudo labels from r0's ensemble, cleaning judged by r0's ensemble OOF, and every
    r1 job warm-started from its r0 twin."""
    workdir, config = tiny_clean_run
    results = workdir / "results"
    r0 = results / "r0" / "ensemble"
    # Pseudo labels, documented: r0's ensemble test probabilities resized (bilinear) to
    # the image, argmax where it reaches the confidence, else 255; kept at min_coverage.
    images = pd.read_parquet(results / "data" / "images.parquet").set_index("image_id")
    pseudo = pd.read_csv(results / "pseudo" / "r1" / "images.csv").set_index("image_id")
    test = probabilities_by_id([r0 / "test.npy"])
    assert sorted(test) == sorted(pseudo.index)
    for image_id, probabilities in test.items():
        height, width = images.loc[image_id, ["height", "width"]]
        full = np.stack(
            [
                cv2.resize(
                    channel.astype(np.float32),
                    (int(width), int(height)),
                    interpolation=cv2.INTER_LINEAR,
                )
                for channel in probabilities
            ]
        )
        confident = full.max(axis=0) >= TINY_PSEUDO["confidence"]
        expected = np.where(confident, full.argmax(axis=0), 255)
        coverage = confident.mean()
        assert pseudo.loc[image_id, "coverage"] == pytest.approx(coverage, abs=0.01)
        kept = bool(pseudo.loc[image_id, "kept"])
        assert kept == (coverage >= TINY_PSEUDO["min_coverage"])
        if kept:
            written = read_mask(
                results
                / "pseudo"
                / "r1"
                / "masks"
                / f"{images.loc[image_id, 'coco_id']}.png"
            )
            assert (written == expected).mean() > 0.99, image_id
    clean = json.loads((results / "clean" / "summary.json").read_text())
    assert clean["sources"] == ["r0/ensemble"]
    for model in TINY_MODELS:
        for fold in ("f0", "f1", "full"):
            run = f"{model}/{fold}-s0"
            metrics = json.loads(
                (results / "r1" / "train" / run / "metrics.json").read_text()
            )
            assert metrics["warm_start"] == f"results/r0/train/{run}/model.pt"


def test_the_index_instance_maps_match_the_annotation_table_row_by_row(tiny_run):
    workdir, config = tiny_run
    results = workdir / "results" / "data"
    images = pd.read_parquet(results / "images.parquet")
    annotations = pd.read_parquet(results / "annotations.parquet")
    labelled = images[images["split"] == "train"]
    assert len(labelled) == 16 and len(annotations) > len(labelled)
    for image_id, coco_id in zip(labelled["image_id"], labelled["coco_id"]):
        mask = read_mask(results / "masks" / f"{coco_id}.png")
        instances = read_mask(results / "masks" / f"{coco_id}_instances.png")
        rows = annotations[annotations["image_id"] == image_id].reset_index(drop=True)
        assert instances.dtype == np.uint16 and instances.max() <= len(rows)
        assert (mask[instances == 0] == 0).all()  # no class outside every annotation
        for position, row in rows.iterrows():
            region = instances == position + 1
            assert region.sum() == row["visible"] <= row["area"], (image_id, position)
            assert (mask[region] == row["class_index"]).all(), (image_id, position)
        present = {int(k) for k in np.unique(mask)} - {0}
        assert present == set(rows.loc[rows["visible"] > 0, "class_index"])
