"""Independent recomputation of what a stage reports, from the files the stages write.

Written from the documented file formats (README, segflow.probabilities' docstring) with
numpy, OpenCV and sklearn, never with the segflow function under test: a bug in a stage
then shows as a difference between its report and these numbers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

IGNORE = 255
EPS = 1e-4  # the log-probability floor of soft voting (documented in segflow.ensemble)


def reference_class_ious(labels, predictions, n_classes: int) -> dict[int, float]:
    """Each class's IoU from sklearn's confusion matrix over every pixel given (255 not
    counted); a class absent from both label and prediction has none."""
    labels, predictions = np.asarray(labels).ravel(), np.asarray(predictions).ravel()
    keep = labels != IGNORE
    cm = sk_confusion_matrix(
        labels[keep], predictions[keep], labels=list(range(n_classes))
    )
    ious = {}
    for k in range(n_classes):
        tp, fp, fn = cm[k, k], cm[:, k].sum() - cm[k, k], cm[k, :].sum() - cm[k, k]
        if tp + fp + fn:
            ious[k] = float(tp / (tp + fp + fn))
    return ious


def reference_miou(labels, predictions, n_classes: int) -> float:
    """The competition mIoU: the mean of the classes' IoU over the set."""
    return float(
        np.mean(list(reference_class_ious(labels, predictions, n_classes).values()))
    )


def read_mask(path) -> np.ndarray:
    """A label file as written (class or instance map)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None, path
    return mask


def label_reader(images_path, masks_dir):
    """label_of(image_id, size): the index's label of an image, resized (nearest) to
    the stored probability size (height, width), as the scoring steps read it."""
    coco_ids = pd.read_parquet(images_path).set_index("image_id")["coco_id"]

    def label_of(image_id, size):
        label = read_mask(Path(masks_dir) / f"{coco_ids[image_id]}.png")
        height, width = (size, size) if isinstance(size, int) else size
        return cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)

    return label_of


def oof_miou(oof_paths, label_of, n_classes: int) -> float:
    """A model's OOF mIoU over its folds' stored sets against ``label_of``'s labels."""
    oof = probabilities_by_id(oof_paths)
    ids = sorted(oof)
    size = oof[ids[0]].shape[-2:]
    return reference_miou(
        np.stack([label_of(i, size) for i in ids]),
        np.stack([oof[i].argmax(axis=0) for i in ids]),
        n_classes,
    )


def ids_of(npy_path) -> list[str]:
    return open(str(npy_path)[: -len(".npy")] + "_ids.txt").read().split()


def probabilities_by_id(npy_paths) -> dict[str, np.ndarray]:
    """Image id -> float64 probabilities (C, H, W) over the stored sets given."""
    out = {}
    for path in npy_paths:
        stored = np.load(path)
        for row, image_id in enumerate(ids_of(path)):
            assert image_id not in out, f"{image_id} in two sets"
            out[image_id] = stored[row].astype(np.float64) / 255
    return out


def member_test(files: dict, full_weight: float | None) -> dict[str, np.ndarray]:
    """A member's test probabilities as documented: the mean of its fold models, mixed
    with its full fit at ``full_weight`` where it has one."""
    folds = [probabilities_by_id([path]) for path in files["test"]]
    ids = list(folds[0])
    mean = {i: sum(f[i] for f in folds) / len(folds) for i in ids}
    if not files.get("full"):
        return mean
    full = [probabilities_by_id([path]) for path in files["full"]]
    return {
        i: (1 - full_weight) * mean[i]
        + full_weight * sum(f[i] for f in full) / len(full)
        for i in ids
    }


def soft_vote(probabilities: list[np.ndarray], weights, bias=None):
    """(labels, weighted mean) of soft voting: argmax of log(mean + EPS) + bias."""
    weights = np.asarray(weights, np.float64)
    mean = sum(w * p for w, p in zip(weights, probabilities)) / weights.sum()
    scores = np.log(mean + EPS)
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64).reshape(-1, 1, 1)
    return scores.argmax(axis=0), mean


def check_ensemble(summary, members, classes, label_of, out_dir) -> None:
    """Recompute an ensemble's report and its written sets from its members' files.

    ``members``: name -> {"oof": [...], "test": [...], optionally "full": [...]} as the
    ensemble rule passes them; ``label_of(image_id, size)``: the label map as read from
    the masks; ``out_dir`` holds oof.npy, test.npy and test_labels.npy.
    """
    assert summary["method"] == "soft"
    names = sorted(members)
    n_classes = len(classes)
    oof = {name: probabilities_by_id(members[name]["oof"]) for name in names}
    oof_ids = sorted(oof[names[0]])
    size = summary["size"]
    labels = np.stack([label_of(i, size) for i in oof_ids])
    for name in names:
        predictions = np.stack([oof[name][i].argmax(axis=0) for i in oof_ids])
        assert summary["members"][name]["oof_miou"] == _close(
            reference_miou(labels, predictions, n_classes)
        ), name
    weights = [summary["members"][name]["weight"] for name in names]
    bias = (
        None
        if summary["class_bias"] is None
        else [summary["class_bias"][c] for c in classes]
    )
    voted = [soft_vote([oof[n][i] for n in names], weights, bias) for i in oof_ids]
    predictions = np.stack([labels_ for labels_, _ in voted])
    assert summary["oof_miou"] == _close(reference_miou(labels, predictions, n_classes))
    class_ious = reference_class_ious(labels, predictions, n_classes)
    for k, iou in class_ious.items():
        assert summary["per_class_iou"][classes[k]] == _close(iou), classes[k]
    assert summary["oof_images"] == len(oof_ids)
    assert summary["best_member_oof_miou"] == _close(
        max(summary["members"][n]["oof_miou"] for n in names)
    )
    assert ids_of(out_dir / "oof.npy") == oof_ids
    # The OOF label maps (what the results report scores) are these votes, in that
    # order, with the post-processing's small components removed.
    min_area = postprocess_areas(summary, classes)
    if summary.get("postprocess"):
        assert summary["postprocess"]["oof_miou_before"] == _close(summary["oof_miou"])
        processed = np.stack([without_small(p, min_area) for p in predictions])
        assert summary["postprocess"]["oof_miou"] == _close(
            reference_miou(labels, processed, n_classes)
        )
        assert summary["postprocess"]["oof_miou"] >= summary["oof_miou"] - 1e-12
        predictions = processed
    oof_labels = np.load(out_dir / "oof_labels.npy")
    assert oof_labels.shape == predictions.shape
    assert (oof_labels == predictions).mean() > 0.999
    _assert_stored(out_dir / "oof.npy", np.stack([mean for _, mean in voted]))

    test = {
        name: member_test(members[name], summary["full_fit_weight"]) for name in names
    }
    test_ids = ids_of(out_dir / "test.npy")
    assert sorted(test_ids) == sorted(test[names[0]])
    assert summary["test_images"] == len(test_ids)
    voted = [soft_vote([test[n][i] for n in names], weights, bias) for i in test_ids]
    _assert_stored(out_dir / "test.npy", np.stack([mean for _, mean in voted]))
    test_labels = np.load(out_dir / "test_labels.npy")
    expected = np.stack([without_small(labels_, min_area) for labels_, _ in voted])
    # uint8 storage rounds each member's probability: a pixel whose two best classes
    # are within that rounding may flip; nothing else may.
    assert (test_labels == expected).mean() > 0.999


def postprocess_areas(summary, classes) -> dict[int, int]:
    """The ensemble's post-processing areas in pixels by class index ({} when off)."""
    areas = (summary.get("postprocess") or {}).get("min_area_pixels", {})
    return {classes.index(name): area for name, area in areas.items()}


def without_small(label_map: np.ndarray, min_area: dict[int, int]) -> np.ndarray:
    """Reference removal of small components (scipy's labelling, 8-connectivity): each
    component of class c below min_area[c] pixels becomes background."""
    from scipy import ndimage

    out = label_map.copy()
    for cls, area in min_area.items():
        components, count = ndimage.label(label_map == cls, structure=np.ones((3, 3)))
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        small = np.flatnonzero(sizes < area)
        out[np.isin(components, small[small > 0])] = 0
    return out


def _close(value, tol=1e-9):
    import pytest

    return pytest.approx(value, abs=tol)


def _assert_stored(path, mean) -> None:
    """A stored set equals round(mean * 255) up to one step of float rounding."""
    stored = np.load(path).astype(int)
    assert stored.shape == mean.shape
    assert np.abs(stored - np.round(mean * 255)).max() <= 1
