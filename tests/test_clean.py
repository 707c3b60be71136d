"""Label-noise cleaning: scores and flags on hand-made masks, the actions, the r1 training set."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import validated_config
from segflow.clean import CleanArgs, CleanOutputs, clean, gallery_figure_name
from segflow.demo_noise_score import annotation_detection, image_detection
from segflow.fold_data import RoundLabels, fold_data, fold_split, label_changes
from segflow.label_noise import (
    cleaned_mask,
    flag_images,
    score_image,
    self_confidence_sums,
)
from segflow.labels import IGNORE_INDEX, instance_file, mask_file
from segflow.probabilities import PredictionError
from segflow.settings import clean_settings


def clean_config(**changes):
    """The clean settings the workflow passes: schema defaults with ``changes``."""
    return clean_settings(validated_config(clean=changes))


def outputs_in(out_dir):
    """The clean step's outputs under ``out_dir``, named as the rule names them."""
    names = {"scores": "scores.csv", "flags": "flags.csv", "images": "images.csv"}
    names |= {"dropped": "dropped.txt", "masks": "masks", "summary": "summary.json"}
    names |= {"gallery": "gallery.html", "figures": "gallery"}
    return CleanOutputs(**{key: out_dir / name for key, name in names.items()})


SIZE = 32
N_CLASSES = 3  # background, A, B
# Detection on its own: the judge trusted, no limit on what cleaning changes (the
# limits have their own tests below).
SETTINGS = clean_config(
    issue_share=0.3,
    min_class_confidence=0.2,
    min_region=0.02,
    missed_region=0.02,
    min_judge_iou=0.0,
    max_images=1.0,
    max_pixels=1.0,
)
THRESHOLDS = np.array(
    [0.85, 0.85, 0.85]
)  # every class learnt: mean self-confidence 0.85


def confident_probabilities(prediction: np.ndarray, sure: float = 0.9) -> np.ndarray:
    """(C, H, W) probabilities whose argmax is ``prediction`` with probability ``sure``."""
    probabilities = np.full(
        (N_CLASSES, *prediction.shape), (1 - sure) / (N_CLASSES - 1), np.float32
    )
    for k in range(N_CLASSES):
        probabilities[k][prediction == k] = sure
    return probabilities


def box(y0, y1, x0, x1, value, base=None, dtype=np.uint8):
    out = np.zeros((SIZE, SIZE), dtype) if base is None else base.copy()
    out[y0:y1, x0:x1] = value
    return out


def annotations(*classes):
    return pd.DataFrame(
        {
            "annotation_id": [100 + k for k in range(len(classes))],
            "class_index": list(classes),
        }
    )


def judged(label, truth, classes, probabilities=None, thresholds=THRESHOLDS):
    """score_image of one image whose OOF prediction is ``truth`` (confident)."""
    probabilities = (
        confident_probabilities(truth) if probabilities is None else probabilities
    )
    scores = score_image(
        "x",
        label,
        (label > 0).astype(np.int32),
        probabilities,
        annotations(*classes),
        thresholds,
        SETTINGS,
        scale=(2.0, 3.0),  # (x, y): the image is 64 x 96 pixels
    )
    return scores, scores.annotations


def test_clean_image_gets_no_flag():
    label = box(4, 16, 4, 16, 1)
    scores, (row,) = judged(label, label, [1])
    assert scores.image["iou"] == 1.0 and not scores.regions
    assert row["agreement"] == 1.0 and not row["flagged"]


def test_swapped_class_is_flagged_as_class():
    truth = box(4, 16, 4, 16, 1)
    label = box(4, 16, 4, 16, 2)  # the annotator picked B for an A object
    scores, (row,) = judged(label, truth, [2])
    assert (
        row["flagged"]
        and row["suspected"] == "class"
        and row["issue_share"] == 1.0
        and row["agreement"] == 0.0
        and row["other_class"] == 1
    )
    assert row["own_probability"] == pytest.approx(0.05)
    assert row["other_probability"] == pytest.approx(0.9)
    assert (row["annotation_id"], row["class_index"], row["pixels"]) == (100, 2, 144)
    assert not scores.regions  # the object is labelled, only with the wrong class


def test_missing_object_is_flagged_as_missed_region_with_its_box():
    truth = box(4, 16, 4, 16, 1, base=box(20, 28, 20, 28, 2))
    label = box(20, 28, 20, 28, 2)  # the A object was never annotated
    scores, (row,) = judged(label, truth, [2])
    assert not row["flagged"]
    (region,) = scores.regions
    assert (
        region["flagged"]
        and region["suspected"] == "missing"
        and region["class_index"] == 1
    )
    assert region["bbox"] == "8 12 24 36"  # x y w h in image pixels (scale 2, 3)
    assert region["pixels"] == 144 and region["region"] == 0
    assert region["other_class"] == 1
    assert region["other_probability"] == pytest.approx(0.9)
    assert scores.missed[4:16, 4:16].all() and scores.missed.sum() == 144
    assert scores.image["pixels"] == SIZE * SIZE
    assert scores.image["issue_share"] == pytest.approx(144 / SIZE**2)
    assert not scores.image["flagged"] and scores.image["suspected"] is None


def test_missed_regions_thinner_than_three_pixels_or_smaller_than_missed_region_are_not():
    """A 2-pixel-wide streak is opened away (a mask's edge, not an object); a 4 x 4 blob
    is under missed_region (2% of 32 x 32 = 20.5 pixels); a 5 x 5 one is reported."""
    truth = box(2, 30, 2, 4, 1)  # streak
    truth = box(10, 14, 10, 14, 1, base=truth)  # 16 pixels
    truth = box(20, 25, 20, 25, 2, base=truth)  # 25 pixels
    scores, _ = judged(np.zeros((SIZE, SIZE), np.uint8), truth, [])
    (region,) = scores.regions
    assert region["class_index"] == 2 and region["pixels"] == 25
    assert region["bbox"] == "40 60 10 15"
    assert scores.missed.sum() == 25


def test_bloated_polygon_is_flagged_as_region():
    truth = box(10, 18, 10, 18, 1)  # 64 pixels
    label = box(7, 21, 7, 21, 1)  # 196 pixels: the polygon was drawn far too large
    _, (row,) = judged(label, truth, [1])
    assert (
        row["flagged"]
        and row["suspected"] == "region"
        and row["issue_share"] == pytest.approx(132 / 196)
        and row["other_class"] == 0
    )


def test_a_class_the_model_has_not_learnt_is_not_judged_nor_ever_confident():
    truth = box(4, 16, 4, 16, 1)
    label = box(4, 16, 4, 16, 2)
    scores, (row,) = judged(
        label, truth, [2], thresholds=np.array([0.85, 0.85, 0.1])
    )  # B not learnt
    assert not row["flagged"] and np.isnan(row.get("issue_share", np.nan))
    scores, (row,) = judged(
        label, truth, [2], thresholds=np.array([0.85, 0.1, 0.85])
    )  # A never confident
    assert not row["flagged"] and row["issue_share"] == 0.0 and not scores.issue.any()


def test_class_thresholds_are_the_mean_self_confidence():
    label = box(0, 16, 0, 32, 1)  # top half A, bottom half background
    probabilities = confident_probabilities(label, sure=0.9)
    probabilities[:, 0:8] = confident_probabilities(label, sure=0.5)[
        :, 0:8
    ]  # half of A less sure
    probabilities[:, 31, 31] = [0.2, 0.3, 0.5]
    label[31, 31] = IGNORE_INDEX  # not counted
    sums, counts = self_confidence_sums(label, probabilities)
    assert counts.tolist() == [511, 512, 0]
    assert (sums / np.maximum(counts, 1)).tolist() == pytest.approx([0.9, 0.7, 0.0])


def test_small_objects_are_not_judged():
    label = box(2, 4, 2, 4, 1)  # 4 pixels < 2% of 1024
    _, (row,) = judged(label, np.zeros_like(label), [1])
    assert not row["flagged"] and "issue_share" not in row


def test_image_flags_by_iou_threshold_worst_fraction_and_annotations():
    images = pd.DataFrame(
        {"image_id": ["a", "b", "c", "d"], "iou": [0.9, 0.2, 0.5, 0.8]}
    )
    flagged_annotation = pd.DataFrame({"image_id": ["d"], "flagged": [True]})
    none = pd.DataFrame({"image_id": [], "flagged": []})
    reasons = flag_images(images, flagged_annotation, none, clean_config(iou_below=0.3))
    assert reasons.to_dict() == {"a": "", "b": "low_iou", "c": "", "d": "annotation"}
    reasons = flag_images(images, none, none, clean_config(worst_fraction=0.5))
    assert reasons.to_dict() == {"a": "", "b": "low_iou", "c": "low_iou", "d": ""}


def swapped_and_missing():
    """An image with a swapped object (A labelled B) and a missing A object."""
    truth = box(2, 12, 2, 12, 1, base=box(18, 30, 18, 30, 1))
    label = box(2, 12, 2, 12, 2)
    probabilities = confident_probabilities(truth)
    probabilities[:, 2:4, 2:12] = (
        1 / N_CLASSES
    )  # an unconfident strip inside the swapped object
    scores, (row,) = judged(label, truth, [2], probabilities)
    assert row["flagged"] and row["issue_share"] == pytest.approx(0.8)
    return truth, label, (label > 0).astype(np.int32), scores


def test_relabel_gives_flagged_regions_the_confident_prediction_and_255_elsewhere():
    truth, label, instances, scores = swapped_and_missing()
    out = cleaned_mask(label, instances, scores, [0], low_iou=False, action="relabel")
    assert (out[4:12, 2:12] == 1).all()  # swapped class fixed
    assert (
        out[2:4, 2:12] == IGNORE_INDEX
    ).all()  # nothing confident: ignored, not guessed
    assert (out[18:30, 18:30] == 1).all()  # missed object added
    assert (out[(truth == 0) & (out != IGNORE_INDEX)] == 0).all()


def test_ignore_blanks_flagged_regions_and_drop_or_none_keep_the_label():
    truth, label, instances, scores = swapped_and_missing()
    out = cleaned_mask(label, instances, scores, [0], low_iou=False, action="ignore")
    assert (out[2:12, 2:12] == IGNORE_INDEX).all() and (
        out[20:30, 18:30] == IGNORE_INDEX
    ).all()
    assert (out[(out != IGNORE_INDEX)] == 0).all()
    for action in ("drop", "none"):
        assert np.array_equal(
            cleaned_mask(label, instances, scores, [0], low_iou=False, action=action),
            label,
        )


def test_relabel_at_a_larger_label_size_upsamples_the_prediction():
    truth, label, instances, scores = swapped_and_missing()
    big_label = cv2.resize(label, (64, 64), interpolation=cv2.INTER_NEAREST)
    big_instances = cv2.resize(
        instances.astype(np.uint16), (64, 64), interpolation=cv2.INTER_NEAREST
    )
    out = cleaned_mask(
        big_label, big_instances, scores, [0], low_iou=False, action="relabel"
    )
    assert (
        out.shape == (64, 64)
        and (out[8:24, 4:24] == 1).all()
        and (out[36:60, 36:60] == 1).all()
    )


# --- clean() on files laid out as the index writes them ---------------------------------


@pytest.fixture()
def indexed(tmp_path):
    """Labelled images clean, swapped, missing, bloated, clean, clean; one test image;
    OOF from the truth."""
    truths, labels = [], []
    truths.append(box(4, 16, 4, 16, 1))
    labels.append(box(4, 16, 4, 16, 1))  # noqa: E702
    truths.append(box(4, 16, 4, 16, 1))
    labels.append(box(4, 16, 4, 16, 2))  # noqa: E702
    truths.append(box(4, 16, 4, 16, 1, base=box(20, 28, 20, 28, 2)))
    labels.append(box(20, 28, 20, 28, 2))  # noqa: E702
    truths.append(box(10, 18, 10, 18, 1))
    labels.append(box(7, 21, 7, 21, 1))  # noqa: E702
    for _ in range(2):  # more clean A objects: what class A's agreement normally is
        truths.append(box(4, 16, 4, 16, 1))
        labels.append(box(4, 16, 4, 16, 1))  # noqa: E702
    masks = tmp_path / "masks"
    masks.mkdir()
    ids = [f"b/{k}.png" for k in range(len(labels))]
    (tmp_path / "b").mkdir()
    rows, annotation_rows = [], []
    for k, (image_id, label) in enumerate(zip(ids, labels)):
        cv2.imwrite(str(tmp_path / image_id), np.full((SIZE, SIZE, 3), 90, np.uint8))
        cv2.imwrite(str(mask_file(masks, k)), label)
        cv2.imwrite(str(instance_file(masks, k)), (label > 0).astype(np.uint16))
        rows.append(
            {
                "image_id": image_id,
                "coco_id": k,
                "file_name": image_id,
                "width": SIZE,
                "height": SIZE,
                "orientation": 1,
                "split": "train",
                **{f"pixels_{c}": int((label == c).sum()) for c in range(N_CLASSES)},
            }
        )
        annotation_rows.append(
            {
                "image_id": image_id,
                "annotation_id": 10 + k,
                "class_index": int(label.max()),
            }
        )
    rows.append(
        {
            "image_id": "t.png",
            "coco_id": 9,
            "file_name": "t.png",
            "width": SIZE,
            "height": SIZE,
            "orientation": 1,
            "split": "test",
        }
    )
    pd.DataFrame(rows).to_parquet(tmp_path / "images.parquet")
    pd.DataFrame(annotation_rows).to_parquet(tmp_path / "annotations.parquet")
    oof = tmp_path / "oof"
    oof.mkdir()
    np.save(
        oof / "oof.npy",
        np.stack(
            [
                (confident_probabilities(t) * 255).round().astype(np.uint8)
                for t in truths
            ]
        ),
    )
    (oof / "oof_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    return tmp_path, ids


def run_clean(root, action, **settings):
    """The step on the fixture; the judge trusted and no limit unless ``settings`` say."""
    settings = {"min_judge_iou": 0.0, "max_images": 1.0, "max_pixels": 1.0, **settings}
    return clean(
        CleanArgs(
            sources={"oof": [str(root / "oof" / "oof.npy")]},
            images_path=root / "images.parquet",
            annotations_path=root / "annotations.parquet",
            masks_dir=root / "masks",
            image_root=root,
            classes=["bg", "A", "B"],
            unlabelled="background",
            outputs=outputs_in(root / f"clean_{action}"),
            settings=clean_config(
                action=action,
                min_region=0.02,
                missed_region=0.02,
                gallery=4,
                **settings,
            ),
        )
    )


def test_clean_flags_the_three_noisy_images_and_drops_them(indexed):
    root, ids = indexed
    summary = run_clean(root, "drop")
    out = root / "clean_drop"
    images = pd.read_csv(out / "images.csv")
    assert images.set_index("image_id")["reasons"].fillna("").to_dict() == {
        ids[0]: "",
        ids[1]: "annotation",
        ids[2]: "missed",
        ids[3]: "annotation",
        ids[4]: "",
        ids[5]: "",
    }
    assert (out / "dropped.txt").read_text().split() == ids[1:4]
    assert images.set_index("image_id")["train"].tolist() == [
        True,
        False,
        False,
        False,
        True,
        True,
    ]
    assert summary["flagged_images"] == 3 and summary["dropped_images"] == 3
    for k in range(6):  # drop keeps every label as it is
        assert np.array_equal(
            cv2.imread(str(mask_file(out / "masks", k)), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(mask_file(root / "masks", k)), cv2.IMREAD_UNCHANGED),
        )
    scores = pd.read_csv(out / "scores.csv")
    assert (
        set(scores["level"]) == {"image", "annotation", "region"}
        and len(scores[scores["level"] == "annotation"]) == 6
    )
    flags = pd.read_csv(out / "flags.csv")
    assert sorted(flags.loc[flags["level"] == "annotation", "suspected"]) == [
        "class",
        "region",
    ]
    assert sorted(p.name for p in (out / "gallery").iterdir()) == [
        f"0{r}_b_{k}.png" for r, k in ((1, 1), (2, 3), (3, 2))
    ]  # by OOF IoU, worst first
    assert '<img src="data:image/png;base64,' in (out / "gallery.html").read_text()


def test_clean_relabel_writes_corrected_masks_and_drops_nothing(indexed):
    root, ids = indexed
    run_clean(root, "relabel")
    out = root / "clean_relabel"
    assert (out / "dropped.txt").read_text() == ""
    swapped = cv2.imread(str(mask_file(out / "masks", 1)), cv2.IMREAD_UNCHANGED)
    assert (swapped[4:16, 4:16] == 1).all()
    missing = cv2.imread(str(mask_file(out / "masks", 2)), cv2.IMREAD_UNCHANGED)
    assert (missing[4:16, 4:16] == 1).all() and (missing[20:28, 20:28] == 2).all()
    bloated = cv2.imread(str(mask_file(out / "masks", 3)), cv2.IMREAD_UNCHANGED)
    assert (
        bloated.sum() == 64 and (bloated[10:18, 10:18] == 1).all()
    )  # back to the true object
    assert pd.read_csv(out / "images.csv")["changed_pixels"].tolist()[0] == 0


def test_no_flag_is_fine_and_reported(indexed):
    root, _ = indexed
    summary = run_clean(root, "none", iou_below=None)
    summary_none = json.loads((root / "clean_none" / "summary.json").read_text())
    assert (
        summary == summary_none
        and summary["flagged_images"] == 3
        and summary["dropped_images"] == 0
    )
    clean(
        CleanArgs(
            sources={"oof": [str(root / "oof" / "oof.npy")]},
            images_path=root / "images.parquet",
            annotations_path=root / "annotations.parquet",
            masks_dir=root / "masks",
            image_root=root,
            classes=["bg", "A", "B"],
            unlabelled="background",
            outputs=outputs_in(root / "quiet"),
            # above any share: no annotation can be flagged (the schema stops at 1)
            settings=replace(
                clean_config(missed_region=1.0, gallery=4), issue_share=1.01
            ),
        )
    )
    assert (
        json.loads((root / "quiet" / "summary.json").read_text())["flagged_images"] == 0
    )
    assert (root / "quiet" / "dropped.txt").read_text() == "" and not list(
        (root / "quiet" / "gallery").iterdir()
    )


def test_oof_ids_that_do_not_match_the_index_are_an_error(indexed):
    root, ids = indexed
    (root / "oof" / "oof_ids.txt").write_text(
        "".join(f"{i}\n" for i in [*ids[:-1], "b/unknown.png"])
    )
    with pytest.raises(
        PredictionError,
        match=r"OOF source oof: .*1 unknown.*b/unknown.png.*1 labelled images without OOF",
    ):
        run_clean(root, "drop")
    assert not (root / "clean_drop").exists()


# --- the next round's training set ---------------------------------------------------------


def test_dropped_images_never_train_and_validation_keeps_every_labelled_image():
    images = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(8)] + ["t0", "t1"],
            "split": ["train"] * 8 + ["test"] * 2,
        }
    )
    folds = pd.DataFrame({"image_id": [f"i{k}" for k in range(8)], "fold": [0, 1] * 4})
    dropped = frozenset({"i0", "i1", "i2"})
    for fold in (0, 1):
        train, val = fold_split(images, folds, fold, drop=dropped)
        assert not set(train["image_id"]) & dropped
        assert not set(train["image_id"]) & set(val["image_id"])
        assert set(val["image_id"]) == {
            f"i{k}" for k in range(fold, 8, 2)
        }  # scored on every image of the fold
        assert not {"t0", "t1"} & (set(train["image_id"]) | set(val["image_id"]))


def test_detection_scores_against_the_manifest():
    manifest = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "annotation_id": [1, 2, 3, 4],
            "kind": ["class_swap", "missing", "shifted", "bloated"],
        }
    )
    labelled = {"a", "b", "c", "d", "e", "f", "g", "h"}
    result = image_detection({"a", "b", "e"}, manifest, labelled)
    assert (
        result["all"]["precision"] == pytest.approx(2 / 3)
        and result["all"]["recall"] == 0.5
    )
    assert result["class_swap"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "true_positives": 1,
        "flagged": 2,
        "positives": 1,
    }
    assert result["shifted"]["recall"] == 0.0 and result["shifted"]["precision"] == 0.0
    flags = pd.DataFrame(
        {
            "level": ["annotation", "annotation", "region", "region"],
            "image_id": ["a", "e", "b", "f"],
            "annotation_id": [1, 99, None, None],
            "bbox": [None, None, "10 10 5 5", "0 0 3 3"],
        }
    )
    result = annotation_detection(
        flags,
        manifest,
        {1: [0, 0, 4, 4], 2: [11, 11, 4, 4], 3: [0, 0, 1, 1], 4: [0, 0, 1, 1]},
    )
    assert (
        result["all"]["true_positives"] == 2
        and result["all"]["flagged"] == 4
        and result["missing"]["recall"] == 1.0
    )


def test_each_class_is_judged_against_its_own_threshold():
    """Class A is learnt but never sure (threshold 0.5), the others sure (0.9). An object
    labelled B where the model says A at 0.6 is a swap by A's own threshold; any single
    threshold for all classes that keeps background and B (0.9) misses it."""
    label = box(4, 16, 4, 16, 2)
    probabilities = confident_probabilities(np.zeros_like(label))
    probabilities[:, 4:16, 4:16] = np.array([0.1, 0.6, 0.3])[:, None, None]
    per_class = np.array([0.9, 0.5, 0.9])
    _, (row,) = judged(label, None, [2], probabilities, thresholds=per_class)
    assert row["flagged"] and row["suspected"] == "class" and row["other_class"] == 1
    _, (row,) = judged(label, None, [2], probabilities, thresholds=np.full(3, 0.9))
    assert not row["flagged"] and row["issue_share"] == 0.0


def test_a_label_its_own_class_confidently_supports_is_no_issue():
    """Where the label's own class reaches its threshold, another confident class does
    not make the pixel an issue (both are plausible: the label stands)."""
    label = box(4, 16, 4, 16, 1)
    probabilities = confident_probabilities(label)
    probabilities[:, 4:16, 4:16] = np.array([0.1, 0.45, 0.45])[:, None, None]
    thresholds = np.array([0.9, 0.4, 0.4])
    scores, (row,) = judged(label, None, [1], probabilities, thresholds=thresholds)
    assert scores.supported[4:16, 4:16].all() and not scores.issue.any()
    assert not row["flagged"] and row["issue_share"] == 0.0
    # B alone confident: now the label is an issue, with B suggested.
    probabilities[:, 4:16, 4:16] = np.array([0.1, 0.35, 0.55])[:, None, None]
    scores, (row,) = judged(label, None, [1], probabilities, thresholds=thresholds)
    assert scores.issue[4:16, 4:16].all() and (scores.suggested[4:16, 4:16] == 2).all()
    assert row["flagged"] and row["other_class"] == 2


def test_reported_class_thresholds_are_each_classs_mean_self_confidence(indexed):
    root, ids = indexed
    summary = run_clean(root, "drop")
    stored = np.load(root / "oof" / "oof.npy").astype(np.float64) / 255
    sums, counts = np.zeros(N_CLASSES), np.zeros(N_CLASSES)
    for k, probabilities in enumerate(stored):
        label = cv2.imread(str(mask_file(root / "masks", k)), cv2.IMREAD_UNCHANGED)
        for c in range(N_CLASSES):
            sums[c] += probabilities[c][label == c].sum()
            counts[c] += (label == c).sum()
    expected = sums / counts
    # The fixture's classes differ (the missing object lowers background's), so one
    # pooled threshold could not pass.
    assert np.ptp(expected) > 0.01
    assert list(summary["class_thresholds"].values()) == pytest.approx(
        expected.tolist()
    )


def test_a_later_round_trains_on_the_cleaned_labels_and_says_how_they_differ(tmp_path):
    """fold_data hands the cleaned masks to training, validation keeps the originals,
    and label_changes counts what cleaning ignored and relabelled (known answer)."""
    images = pd.DataFrame(
        {
            "image_id": ["i0", "i1", "i2", "i3"],
            "coco_id": [0, 1, 2, 3],
            "file_name": ["i0", "i1", "i2", "i3"],
            "orientation": [1] * 4,
            "split": ["train"] * 4,
        }
    )
    folds = pd.DataFrame({"image_id": ["i0", "i1", "i2", "i3"], "fold": [0, 0, 1, 1]})
    original, cleaned = tmp_path / "masks", tmp_path / "cleaned"
    original.mkdir()
    cleaned.mkdir()
    for k in range(4):
        label = np.ones((4, 4), np.uint8)
        cv2.imwrite(str(mask_file(original, k)), label)
        if k == 2:  # fold 0 trains on it: 4 pixels ignored, 2 relabelled
            label = label.copy()
            label[0] = IGNORE_INDEX
            label[1, :2] = 2
        cv2.imwrite(str(mask_file(cleaned, k)), label)
    labels = RoundLabels(cleaned, frozenset(), frozenset(), None)
    data = fold_data(images, folds, 0, tmp_path, original, labels)
    assert data.train_masks == [str(mask_file(cleaned, k)) for k in (2, 3)]
    assert data.val_masks == [str(mask_file(original, k)) for k in (0, 1)]
    assert label_changes(data, original) == {"ignored": 4 / 32, "relabelled": 2 / 32}
    data = fold_data(images, folds, 1, tmp_path, original, labels)
    assert label_changes(data, original) == {"ignored": 0.0, "relabelled": 0.0}
    r0 = fold_data(images, folds, 0, tmp_path, original, RoundLabels.none())
    assert r0.train_masks == [str(mask_file(original, k)) for k in (2, 3)]
    assert label_changes(r0, original) == {"ignored": 0.0, "relabelled": 0.0}


# --- a weak judge must not rewrite the labels -------------------------------------------


def test_past_the_limits_cleaning_changes_nothing_and_says_so(indexed):
    """The fixture's judge flags 3 of 6 images; at the default limits (10% of the
    images, 2% of the pixels) nothing is changed, the summary says how much would have
    been, and over_limit: stop fails with the numbers instead."""
    root, ids = indexed
    summary = run_clean(root, "ignore", max_images=0.1, max_pixels=0.02)
    out = root / "clean_ignore"
    assert summary["flagged_images"] == 3 and summary["action_applied"] == "none"
    limits = summary["limits"]
    assert limits["exceeded"] and not limits["applied"]
    assert limits["changed_images"] == 3 and limits["changed_images_share"] == 0.5
    assert "over the limit" in limits["message"] and "3 of 6" in limits["message"]
    for k in range(len(ids)):  # every label as it was
        np.testing.assert_array_equal(
            cv2.imread(str(mask_file(out / "masks", k)), -1),
            cv2.imread(str(mask_file(root / "masks", k)), -1),
        )
    images = pd.read_csv(out / "images.csv")
    assert images["train"].all() and (images["changed_pixels"] == 0).all()
    assert "over the limit" in (out / "gallery.html").read_text()
    # What would have changed: the pixels the run without limits changes.
    relaxed = run_clean(root, "ignore")
    assert limits["changed_pixels"] == relaxed["changed_pixels"] > 0
    with pytest.raises(ValueError, match=r"3 of 6 labelled images \(50\.0%"):
        run_clean(root, "drop", max_images=0.1, over_limit="stop")


def test_within_the_limits_cleaning_acts_and_reports_the_share(indexed):
    root, ids = indexed
    summary = run_clean(root, "drop", max_images=0.5, max_pixels=1.0)
    assert summary["action_applied"] == "drop" and summary["dropped_images"] == 3
    pixels = SIZE * SIZE  # dropped images: all their labelled pixels change
    assert summary["limits"]["changed_pixels"] == 3 * pixels
    assert summary["limits"]["changed_pixels_share"] == pytest.approx(0.5)


def test_classes_the_judge_segments_badly_are_not_judged(indexed):
    """The judge's per-class OOF IoU, recomputed by hand from its probabilities and the
    labels, decides which classes judge: above min_judge_iou only."""
    root, ids = indexed
    oof = np.load(root / "oof" / "oof.npy").astype(np.float32) / 255
    confusion = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for k in range(len(ids)):
        label = cv2.imread(str(mask_file(root / "masks", k)), -1)
        np.add.at(confusion, (label.ravel(), oof[k].argmax(0).ravel()), 1)
    tp = np.diag(confusion)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    # A threshold between the classes' IoUs leaves the weaker classes out.
    threshold = float(np.sort(iou)[-1] + np.sort(iou)[-2]) / 2
    summary = run_clean(root, "none", min_judge_iou=threshold)
    judge = summary["judge"]
    assert [judge["per_class_iou"][c] for c in ["bg", "A", "B"]] == pytest.approx(iou)
    trusted = [c for c, v in zip(["bg", "A", "B"], iou) if v >= threshold]
    assert judge["trusted_classes"] == trusted and len(trusted) == 1
    flags = pd.read_csv(root / "clean_none" / "flags.csv")
    judged = flags[flags["level"] == "annotation"]
    assert set(judged["class_index"]) <= {["bg", "A", "B"].index(c) for c in trusted}


@pytest.mark.parametrize(
    "image_id, expected",
    [
        ("b1/0001.jpg", "03_b1_0001.png"),
        ('<script>alert("x")</script>.png', "03__script_alert_x_script_.png"),
        ("a b/é&c.d.png", "03_a_b_c_d.png"),
        (17, "03_17.png"),
    ],
)
def test_gallery_figure_names_carry_no_markup_into_the_report(image_id, expected):
    """The figure's name is its label in snakemake --report's script block: only
    letters, digits and _ get there, whatever the COCO file names the image."""
    assert gallery_figure_name(3, image_id) == expected
