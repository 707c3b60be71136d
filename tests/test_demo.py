"""The demo dataset: competition layout, deterministic, imbalanced, with a truthful
noise manifest."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from conftest import CLASSES
from segflow.coco import load_coco, rasterize
from segflow.demo import make_demo
from segflow.settings import DEMO_NOISE_KINDS

SMALL = {
    "train_images": 40,
    "test_images": 8,
    "size": 64,
    "batches": 4,
    "noise_rate": 0.2,
}


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    summary = make_demo(root, CLASSES, seed=0, **SMALL)
    return root, summary


def test_layout_matches_the_competition(demo):
    root, _ = demo
    for name in [
        "train_all.json",
        "train.json",
        "val.json",
        "test.json",
        "sample_submission.csv",
    ]:
        assert (root / name).is_file()
    train_all = json.loads((root / "train_all.json").read_text())
    assert [c["name"] for c in train_all["categories"]] == CLASSES[1:]
    assert [c["id"] for c in train_all["categories"]] == list(range(1, len(CLASSES)))
    assert all(
        isinstance(a["segmentation"], list) and len(a["segmentation"][0]) >= 6
        for a in train_all["annotations"]
    )
    folders = {im["file_name"].split("/")[0] for im in train_all["images"]}
    assert len(folders) == SMALL["batches"]
    test = json.loads((root / "test.json").read_text())
    assert len(test["images"]) == SMALL["test_images"] and test["annotations"] == []
    train, val = (
        json.loads((root / f).read_text()) for f in ("train.json", "val.json")
    )
    assert {i["id"] for i in train["images"]} | {i["id"] for i in val["images"]} == {
        i["id"] for i in train_all["images"]
    }
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    assert pd.read_csv(root / "sample_submission.csv").columns.tolist() == [
        "image_id",
        "PredictionString",
    ]


def test_same_seed_same_bytes_other_seed_other_bytes(demo, tmp_path):
    root, _ = demo
    make_demo(tmp_path / "again", CLASSES, seed=0, **SMALL)
    make_demo(tmp_path / "other", CLASSES, seed=1, **SMALL)
    assert digest(tmp_path / "again") == digest(root)
    assert digest(tmp_path / "other") != digest(root)


def test_noise_manifest_is_the_truth(demo):
    root, summary = demo
    manifest = pd.read_csv(root / "truth" / "noise.csv")
    assert (
        len(manifest)
        == round(SMALL["noise_rate"] * SMALL["train_images"])
        == summary["noisy_images"]
    )
    assert manifest["coco_image_id"].is_unique  # one error per noisy image
    assert set(manifest["kind"]) == set(DEMO_NOISE_KINDS)
    noisy = {
        a["id"]: a
        for a in json.loads((root / "train_all.json").read_text())["annotations"]
    }
    clean = {
        a["id"]: a
        for a in json.loads((root / "truth" / "train_all_clean.json").read_text())[
            "annotations"
        ]
    }
    listed = set(manifest["annotation_id"])
    for row in manifest.itertuples():
        original = clean[row.annotation_id]
        assert original["category_id"] == row.category_before
        if row.kind == "missing":
            assert row.annotation_id not in noisy
        elif row.kind == "class_swap":
            assert (
                noisy[row.annotation_id]["category_id"]
                == row.category_after
                != row.category_before
            )
            assert noisy[row.annotation_id]["segmentation"] == original["segmentation"]
        elif row.kind == "shifted":
            a, b = (
                np.array(x["segmentation"][0]).reshape(-1, 2)
                for x in (noisy[row.annotation_id], original)
            )
            assert np.abs(a.mean(0) - b.mean(0)).max() > 2
        else:  # bloated
            assert noisy[row.annotation_id]["area"] > 1.2 * original["area"]
    # Every other annotation is untouched.
    assert all(noisy[i] == clean[i] for i in noisy if i not in listed)


def test_rare_and_common_classes_like_the_real_set(tmp_path):
    summary = make_demo(
        tmp_path,
        CLASSES,
        seed=0,
        train_images=200,
        test_images=4,
        size=48,
        batches=6,
        noise_rate=0.1,
    )
    objects = summary["train_objects_per_class"]
    for rare in ("Battery", "Clothing"):
        for common in ("Paper", "Plastic bag"):
            assert objects[rare] * 4 < objects[common]
    assert all(n > 0 for n in objects.values())  # every class is learnable


def test_picture_agrees_with_the_labels(demo):
    """Labelled pixels differ from the background: the painted objects are where the masks say."""
    import cv2

    root, _ = demo
    coco = load_coco(root / "truth" / "train_all_clean.json", CLASSES)
    inside, outside = [], []
    for image in coco.images[:10]:
        picture = cv2.imread(str(root / image["file_name"])).astype(float)
        mask = rasterize(
            coco.annotations[image["id"]],
            image["height"],
            image["width"],
            coco.class_of_category,
        ).mask
        edges = np.abs(
            cv2.Laplacian(
                cv2.cvtColor(picture.astype(np.uint8), cv2.COLOR_BGR2GRAY), cv2.CV_64F
            )
        )
        boundary = (
            cv2.morphologyEx(
                (mask > 0).astype(np.uint8),
                cv2.MORPH_GRADIENT,
                np.ones((3, 3), np.uint8),
            )
            > 0
        )
        inside.append(edges[boundary].mean())
        outside.append(edges[~boundary].mean())
    assert np.mean(inside) > 1.5 * np.mean(
        outside
    )  # object outlines are where the polygons are


def test_other_class_lists_get_a_demo_too(tmp_path):
    classes = ["bg"] + [f"c{k}" for k in range(13)]  # more classes than looks
    summary = make_demo(
        tmp_path,
        classes,
        seed=0,
        train_images=30,
        test_images=2,
        size=48,
        batches=6,
        noise_rate=0,
    )
    assert set(summary["train_objects_per_class"]) == set(classes[1:])
    assert summary["noisy_images"] == 0
