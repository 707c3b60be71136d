"""Real datasets in: dense COCO files, void and unlabelled pixels, any aspect ratio,
EXIF-rotated photos, label-PNG datasets, file-name sequences.

Every expected value is computed here by hand (numpy), never with the function under
test, on non-square fixtures so a transpose or a flip changes the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from conftest import CLASSES, index_coco
from segflow.coco import DataError, class_index_by_category, load_coco
from segflow.labels import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]
CCP = REPO / "tests" / "data" / "ccp"


def write_coco(path: Path, images, annotations, categories) -> Path:
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}
        )
    )
    return path


def write_picture(path: Path, height: int, width: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


TRASH = [{"id": k, "name": name} for k, name in enumerate(CLASSES[1:], start=1)]


def box(x: int, y: int, w: int, h: int) -> list[list[float]]:
    """A polygon covering pixels x..x+w-1, y..y+h-1 exactly (pycocotools' rule)."""
    x, y, w, h = int(x), int(y), int(w), int(h)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


# --- any number of annotations ---------------------------------------------------------


def test_a_thousand_annotations_on_one_non_square_image(tmp_path):
    """1,000 annotations (pycocotools' area of 256+ RLEs at once overflows under numpy
    2): the mask, areas, visible pixels and boxes equal a hand-painted reference."""
    height, width = 60, 110
    rng = np.random.default_rng(1)
    annotations, expected = [], np.zeros((height, width), np.uint8)
    owner = np.full((height, width), -1)
    specs = []
    for k in range(1000):
        w, h = int(rng.integers(1, 9)), int(rng.integers(1, 7))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        category = int(rng.integers(1, len(CLASSES)))
        specs.append((k + 1, x, y, w, h, category))
        annotations.append(
            {
                "id": k + 1,
                "image_id": 7,
                "category_id": category,
                "segmentation": box(x, y, w, h),
                "bbox": [0, 0, 1, 1],  # wrong on purpose: the index recomputes it
            }
        )
    # Overlap rule: larger first, ties by id, so the smaller (later) one ends on top.
    for ann_id, x, y, w, h, category in sorted(
        specs, key=lambda s: (-s[3] * s[4], s[0])
    ):
        expected[y : y + h, x : x + w] = category
        owner[y : y + h, x : x + w] = ann_id
    write_picture(tmp_path / "a.png", height, width)
    write_picture(tmp_path / "t.png", height, width, 1)
    train = write_coco(
        tmp_path / "train.json",
        [{"id": 7, "file_name": "a.png", "width": width, "height": height}],
        annotations,
        TRASH,
    )
    test = write_coco(
        tmp_path / "test.json",
        [{"id": 8, "file_name": "t.png", "width": width, "height": height}],
        [],
        TRASH,
    )
    images = index_coco(train, test, tmp_path, tmp_path / "out")
    mask = cv2.imread(str(tmp_path / "out" / "masks" / "7.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, expected)
    table = pd.read_parquet(tmp_path / "out" / "annotations.parquet")
    assert len(table) == 1000
    by_id = {s[0]: s for s in specs}
    for row in table.itertuples():
        _, x, y, w, h, _ = by_id[row.annotation_id]
        assert row.area == w * h
        assert (row.bbox_width, row.bbox_height) == (w, h)
        assert row.visible == int((owner == row.annotation_id).sum())
    row = images[images["split"] == "train"].iloc[0]
    assert row["n_objects"] == 1000
    for k in range(len(CLASSES)):
        assert row[f"pixels_{k}"] == int((expected == k).sum())


def test_an_image_the_index_cannot_read_names_file_and_id_under_both_settings(
    tmp_path,
):
    write_picture(tmp_path / "a.png", 20, 30)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    images = [
        {"id": 1, "file_name": "a.png", "width": 30, "height": 20},
        {"id": 2, "file_name": "b.png", "width": 30, "height": 20},
    ]
    train = write_coco(tmp_path / "train.json", images, [], TRASH)
    test = write_coco(
        tmp_path / "test.json",
        [{"id": 3, "file_name": "a2.png", "width": 30, "height": 20}],
        [],
        TRASH,
    )
    write_picture(tmp_path / "a2.png", 20, 30)
    with pytest.raises(DataError, match=r"train\.json: image id 2: .*b\.png"):
        index_coco(train, test, tmp_path, tmp_path / "stop")
    index_coco(train, test, tmp_path, tmp_path / "skip", on_error="skip")
    skipped = pd.read_csv(tmp_path / "skip" / "skipped.csv")
    assert skipped["image_id"].tolist() == [2] and "b.png" in skipped["reason"][0]


def test_a_polygon_outside_its_image_is_bad_input_not_an_empty_object(tmp_path):
    write_picture(tmp_path / "a.png", 20, 30)
    train = write_coco(
        tmp_path / "train.json",
        [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": box(40, 30, 5, 5)}],
        TRASH,
    )
    with pytest.raises(DataError, match="annotation id 5, image id 1: .*no pixel"):
        load_coco(train, CLASSES)
    coco = load_coco(train, CLASSES, on_error="skip")
    assert coco.annotations[1] == [] and coco.problems[0].annotation_id == 5


# --- void and unlabelled pixels ------------------------------------------------------


def test_category_mapping_background_void_and_unlabelled():
    categories = [
        {"id": 3, "name": "cat"},
        {"id": 9, "name": "void"},
        {"id": 4, "name": "dog"},
        {"id": 0, "name": "Background"},
    ]
    # Background mode: a category of the background's name paints class 0.
    assert class_index_by_category(
        categories, ["Background", "cat", "dog"], "f.json", "background", ["void"]
    ) == {3: 1, 9: IGNORE_INDEX, 4: 2, 0: 0}
    # By id; ignore mode: every class is a category.
    assert class_index_by_category(
        categories[:3], ["dog", "cat"], "f.json", "ignore", [9]
    ) == {3: 1, 9: IGNORE_INDEX, 4: 0}
    with pytest.raises(
        DataError, match=r"categories not in classes: \['void'\].*data\.void"
    ):
        class_index_by_category(categories[:3], ["bg", "cat", "dog"], "f.json")
    with pytest.raises(DataError, match="data.void: 'sky' is neither the name nor"):
        class_index_by_category(
            categories, ["bg", "cat", "dog"], "f.json", void=["sky"]
        )
    with pytest.raises(DataError, match=r"classes not among categories: \['dog'\]"):
        class_index_by_category(categories[:2], ["cat", "dog"], "f.json", "ignore", [9])


def test_void_and_uncovered_pixels_become_255_in_the_masks(tmp_path):
    height, width = 24, 40
    write_picture(tmp_path / "a.png", height, width)
    write_picture(tmp_path / "t.png", height, width, 1)
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "void"}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": box(2, 3, 10, 8)},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": box(20, 0, 6, 24)},
    ]
    train = write_coco(
        tmp_path / "train.json",
        [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
        annotations,
        categories,
    )
    test = write_coco(
        tmp_path / "test.json",
        [{"id": 2, "file_name": "t.png", "width": width, "height": height}],
        [],
        categories,
    )
    from segflow.index import build_index

    for unlabelled, classes, rest, cat in (
        ("background", ["bg", "cat"], 0, 1),
        ("ignore", ["cat"], IGNORE_INDEX, 0),
    ):
        out = tmp_path / unlabelled
        images = build_index(
            train,
            test,
            tmp_path,
            classes,
            images_out=out / "images.parquet",
            annotations_out=out / "annotations.parquet",
            skipped_out=out / "skipped.csv",
            masks_dir=out / "masks",
            on_error="stop",
            sample=None,
            seed=0,
            threads=1,
            unlabelled=unlabelled,
            void=["void"],
        )
        expected = np.full((height, width), rest, np.uint8)
        expected[3:11, 2:12] = cat
        expected[:, 20:26] = IGNORE_INDEX
        mask = cv2.imread(str(out / "masks" / "1.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, expected)
        row = images[images["split"] == "train"].iloc[0]
        assert row["ignored_pixels"] == int((expected == IGNORE_INDEX).sum())
        assert row[f"pixels_{cat}"] == 80
        # The background is never an object class; in ignore mode class 0 is one.
        assert row["classes_present"] == str(cat)


# --- EXIF orientation -------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_equals_pil_exif_transpose(tmp_path, orientation):
    from segflow.images import orient

    picture = np.random.default_rng(orientation).integers(0, 255, (5, 8, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(picture).save(tmp_path / "p.png", exif=exif)
    with Image.open(tmp_path / "p.png") as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored))
    np.testing.assert_array_equal(orient(picture, orientation), expected)


def exif_photo(path: Path, stored: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=100, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("shape", [(32, 48), (40, 40)])
def test_exif_rotated_photos_align_image_and_mask(tmp_path, orientation, shape):
    """A bright patch drawn as a browser shows the photo (EXIF applied), its
    annotation in that frame: the mask lies on the patch of the image every step
    reads, for all eight orientations, square and not."""
    from segflow.images import ORIENTATION_TAG, image_file, orient, read_rgb

    stored = np.zeros((*shape, 3), np.uint8)
    stored[2:12, 3:20] = 255  # an asymmetric patch, in stored pixels
    exif_photo(tmp_path / "a.jpg", stored, orientation)
    with Image.open(tmp_path / "a.jpg") as check:
        assert check.getexif().get(ORIENTATION_TAG) == orientation
    shown = orient(stored[..., 0], orientation)
    ys, xs = np.nonzero(shown > 127)
    height, width = shown.shape
    train = write_coco(
        tmp_path / "train.json",
        [{"id": 1, "file_name": "a.jpg", "width": width, "height": height}],
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": box(
                    xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
                ),
            }
        ],
        TRASH,
    )
    write_picture(tmp_path / "t.png", 8, 8)
    test = write_coco(
        tmp_path / "test.json",
        [{"id": 2, "file_name": "t.png", "width": 8, "height": 8}],
        [],
        TRASH,
    )
    images = index_coco(train, test, tmp_path, tmp_path / "out")
    row = images[images["split"] == "train"].iloc[0]
    picture = read_rgb(image_file(row, tmp_path))[..., 0]
    mask = cv2.imread(str(tmp_path / "out" / "masks" / "1.png"), cv2.IMREAD_UNCHANGED)
    assert picture.shape == mask.shape == (height, width)
    # JPEG rings at the patch's edges: means, which a misaligned mask fails by far.
    assert picture[mask == 1].mean() > 200 and picture[mask == 0].mean() < 30


def test_a_photo_annotated_on_its_stored_pixels_is_read_as_stored(tmp_path):
    """Orientation 6 on a non-square photo whose JSON gives the stored size: the
    annotations were drawn on the stored pixels, so the tag is not applied; the
    setting decides where sizes cannot tell; a size of neither frame names EXIF."""
    from segflow.images import orientation_to_apply, size_mismatch

    assert orientation_to_apply((32, 48), (32, 48), 6, "apply") == 1
    assert orientation_to_apply((48, 32), (32, 48), 6, "ignore") == 6
    assert orientation_to_apply((40, 40), (40, 40), 6, "apply") == 6
    assert orientation_to_apply((40, 40), (40, 40), 3, "ignore") == 1
    assert orientation_to_apply((30, 48), (32, 48), 6, "apply") is None
    message = size_mismatch("a.jpg", (30, 48), (32, 48), 6)
    assert "48x32 as stored (32x48 with its EXIF orientation 6 applied)" in message
    assert "the JSON says 48x30" in message


# --- label PNGs in: the converter -------------------------------------------------------


def test_the_converter_round_trips_real_label_pngs_losslessly(tmp_path):
    """CCP photos and labels -> COCO -> segflow's index: every mask equals its label
    PNG (through the class names), with one annotation per connected region."""
    from segflow.convert import convert, read_class_list

    names = read_class_list(str(CCP / "classes.txt"))
    result = convert(
        images_dir=CCP / "images",
        labels_dir=CCP / "labels",
        classes=names,
        background="null",
        void=[],
        root=CCP,
        out=tmp_path / "train.json",
    )
    convert(
        images_dir=CCP / "images",
        classes=names,
        background="null",
        root=CCP,
        out=tmp_path / "test.json",
    )
    coco = json.loads((tmp_path / "train.json").read_text())
    # Regions counted by hand: 8-connected components of every non-null value.
    regions = 0
    for label_path in sorted((CCP / "labels").glob("*.png")):
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        for value in np.unique(label):
            if value:
                regions += (
                    cv2.connectedComponents((label == value).astype(np.uint8))[0] - 1
                )
    assert result["annotations"] == len(coco["annotations"]) == regions
    classes = result["config"]["classes"]
    assert classes[0] == "null" and sorted(classes) == sorted(names)
    # The test set is its own file: rename its images so the index accepts both.
    test = json.loads((tmp_path / "test.json").read_text())
    for image in test["images"]:
        image["file_name"] = "test/" + image["file_name"].split("/")[-1]
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "images").symlink_to(CCP / "images")
    (tmp_path / "root" / "test").symlink_to(CCP / "images")
    (tmp_path / "test.json").write_text(json.dumps(test))
    from segflow.index import build_index

    build_index(
        tmp_path / "train.json",
        tmp_path / "test.json",
        tmp_path / "root",
        classes,
        images_out=tmp_path / "out" / "images.parquet",
        annotations_out=tmp_path / "out" / "annotations.parquet",
        skipped_out=tmp_path / "out" / "skipped.csv",
        masks_dir=tmp_path / "out" / "masks",
        on_error="stop",
        sample=None,
        seed=0,
        threads=1,
    )
    to_value = np.array([names.index(c) for c in classes])
    for image in coco["images"]:
        label = cv2.imread(
            str(CCP / "labels" / (Path(image["file_name"]).stem + ".png")),
            cv2.IMREAD_UNCHANGED,
        )
        mask = cv2.imread(
            str(tmp_path / "out" / "masks" / f"{image['id']}.png"),
            cv2.IMREAD_UNCHANGED,
        )
        assert label.shape[0] != label.shape[1]
        np.testing.assert_array_equal(to_value[mask], label, err_msg=image["file_name"])


def test_the_converter_names_the_file_of_a_value_no_class_has(tmp_path):
    from segflow.convert import convert

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_picture(tmp_path / "images" / "x.png", 6, 9)
    label = np.zeros((6, 9), np.uint8)
    label[0, 0] = 7
    cv2.imwrite(str(tmp_path / "labels" / "x.png"), label)
    with pytest.raises(DataError, match=r"labels/x\.png: label values \[7\]"):
        convert(
            images_dir=tmp_path / "images",
            labels_dir=tmp_path / "labels",
            classes=["a", "b"],
            out=tmp_path / "x.json",
        )
    # Declared void: with a background it is a void category, and the mask reads 255.
    result = convert(
        images_dir=tmp_path / "images",
        labels_dir=tmp_path / "labels",
        classes=["a", "b"],
        background="a",
        void=[7],
        out=tmp_path / "x.json",
    )
    assert result["config"]["data"]["void"] == ["void"]
    coco = json.loads((tmp_path / "x.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["b", "void"]
    assert len(coco["annotations"]) == 1 and coco["annotations"][0]["area"] == 1


# --- groups: sequences and near-duplicates -----------------------------------------------


def test_file_name_sequences_are_found_and_a_group_by_keeps_runs_together():
    from segflow.groups import fold_leaks, related_images

    rng = np.random.default_rng(0)

    def drifting(n: int) -> list[str]:
        """Hashes of video frames: each differs from the last in one bit."""
        value, out = int(rng.integers(0, 2**63)), []
        for _ in range(n):
            value ^= 1 << int(rng.integers(64))
            out.append(f"{value:016x}")
        return out

    def unrelated(n: int) -> list[str]:
        return [f"{int(v):016x}" for v in rng.integers(0, 2**63, n)]

    names = [f"0016E5_{n:05d}.png" for n in range(7950, 9450, 30)]
    names += [f"Seq05VD_f{n:05d}.png" for n in range(0, 3000, 30)]
    names += ["lonely.png", "another_1.png", "another_900.png"]
    names += [f"photos/{n:04d}.jpg" for n in range(1, 60)]  # numbered, unrelated
    hashes = drifting(50) + drifting(100) + unrelated(3 + 59)
    images = pd.DataFrame({"file_name": names, "dhash": hashes})
    related = related_images(images, min_groups=6)
    # The numbered photo collection has a sequence's names, not its likeness.
    assert related.sequences == 2 and related.in_sequences == 150
    assert related.stems[150:].isna().all()
    assert related.stems[len(names) - 1] is None  # two files are no sequence
    groups = images["file_name"].str.extract(related.suggestion)[0]
    assert groups[:150].nunique() >= 6
    # Runs of consecutive frames share a group: neighbours mostly agree.
    same = (groups[:149].to_numpy() == groups[1:150].to_numpy()).mean()
    assert same > 0.8
    random_folds = np.arange(len(names)) % 3
    leaks = fold_leaks(related, random_folds)
    assert leaks["related_pairs"] >= 148 and leaks["split_pairs"] >= 148
    grouped = pd.factorize(groups.fillna(images["file_name"]))[0] % 3
    # Only pairs across a run's boundary still leak: a small share of random folds'.
    kept = fold_leaks(related, grouped)
    assert kept["related_pairs"] == leaks["related_pairs"]
    assert kept["split_share"] < 0.25 * leaks["split_share"]


def test_near_duplicates_are_found_by_their_difference_hash(tmp_path):
    from segflow.groups import difference_hash, near_duplicate_pairs

    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 255, (60, 90), np.uint8), (15, 15), 5)
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)  # a re-saved copy
    c = a[:, ::-1].copy()  # another picture
    hashes = [difference_hash(x) for x in (a, b, c)]
    pairs = near_duplicate_pairs(["x_a.png", "x_b.png", "x_c.png"], hashes)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


# --- real data through the real workflow ------------------------------------------------


def ccp_competition(root: Path, *, background: str | None, void: list[int]) -> dict:
    """The CCP slice as a competition: 7 labelled photos, 3 test photos whose labels
    are held out, converted by segflow.convert. Returns the converter's config lines."""
    from segflow.convert import convert, read_class_list

    names = read_class_list(str(CCP / "classes.txt"))
    photos = sorted((CCP / "images").glob("*.jpg"))
    for k, photo in enumerate(photos):
        split = "test" if k % 3 == 2 else "train"
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "images" / photo.name).symlink_to(photo)
        if split == "train":
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{photo.stem}.png").symlink_to(
                CCP / "labels" / f"{photo.stem}.png"
            )
    result = convert(
        images_dir=root / "train" / "images",
        labels_dir=root / "labels",
        classes=names,
        background=background,
        void=void,
        root=root,
        out=root / "train.json",
    )
    convert(
        images_dir=root / "test" / "images",
        classes=names,
        background=background,
        void=void,
        root=root,
        out=root / "test.json",
    )
    return result["config"]


REAL_RUN = {
    "cv": {"method": "kfold", "folds": 2, "full_fit": False},
    "clean": {"enabled": False},
    "pseudo": {"enabled": False},
    "defaults": {"batch_size": 4, "epochs": 1, "input_size": [48, 32]},
    "predict": {"size": [40, 24]},
    "submission": {"size": "native"},
    "wandb": {"mode": "disabled"},
    "threads": {"train": 2, "predict": 2},
}
REAL_MODELS = {"unet": {"arch": "Unet", "encoder": "mobilenet_v2"}}


def reference_confusion(labels, predictions, n_classes):
    """One confusion matrix over pairs, pixels labelled 255 left out (by hand)."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    for label, prediction in zip(labels, predictions):
        keep = label != IGNORE_INDEX
        np.add.at(confusion, (label[keep], prediction[keep]), 1)
    return confusion


def reference_miou(confusion) -> float:
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def check_real_run(workdir: Path, config: dict, ignored_values: dict) -> None:
    """What every real run must hold: 255 where the labels say so, no ignored class in
    any label map or the CSV, native-size masks, scores that ignore 255."""
    results = workdir / "results"
    classes = config["classes"]
    n = len(classes)
    names = [line.strip() for line in (CCP / "classes.txt").read_text().splitlines()]
    images = pd.read_parquet(results / "data" / "images.parquet")
    train = images[images["split"] == "train"]
    labels = {}
    for row in train.itertuples():
        png = cv2.imread(
            str(CCP / "labels" / Path(row.file_name).name.replace(".jpg", ".png")), -1
        )
        to_class = np.full(256, IGNORE_INDEX, np.uint8)
        for value, name in enumerate(names):
            if value not in ignored_values:
                to_class[value] = classes.index(name)
        labels[row.image_id] = to_class[png]
        mask = cv2.imread(str(results / "data" / "masks" / f"{row.coco_id}.png"), -1)
        np.testing.assert_array_equal(mask, labels[row.image_id])
    ignored = sum(int((m == IGNORE_INDEX).sum()) for m in labels.values())
    assert ignored > 0
    stats = json.loads((results / "eda" / "stats.json").read_text())
    assert stats["ignored"]["pixels"] == ignored
    # OOF: the model's stored OOF probabilities against labels resized as documented.
    oof_ids, oof_maps = [], []
    for fold in (0, 1):
        folder = results / "r0" / "predict" / "unet" / f"f{fold}-s0"
        stored = np.load(folder / "oof.npy")
        assert stored.shape[-2:] == (40, 24)
        oof_ids += (folder / "oof_ids.txt").read_text().split()
        oof_maps += list(stored.argmax(axis=1))
    truth = [
        cv2.resize(labels[i], (24, 40), interpolation=cv2.INTER_NEAREST)
        for i in oof_ids
    ]
    confusion = reference_confusion(truth, oof_maps, n)
    score = json.loads((results / "r0" / "oof" / "unet.json").read_text())
    assert score["miou"] == pytest.approx(reference_miou(confusion))
    # The submission: native sizes, classes only.
    test = json.loads((workdir / "data" / "test.json").read_text())["images"]
    rows = dict(
        line.split(",", 1)
        for line in (results / "submission" / "submission.csv")
        .read_text()
        .splitlines()[1:]
    )
    assert sorted(rows) == sorted(i["file_name"] for i in test)
    for image in test:
        values = np.array(rows[image["file_name"]].split(), np.int64)
        assert values.size == image["height"] * image["width"]
        assert values.max() < n


@pytest.mark.workflow
def test_real_photos_with_void_and_unlabelled_pixels_run_to_a_native_size_submission(
    tmp_path,
):
    """CCP photos of mixed portrait sizes through the whole chain (r0, cleaning, r1,
    a native-size CSV), with both kinds of ignored pixels: null left unannotated under
    data.unlabelled: ignore (every class an object class), and hair made a void
    category of the COCO file (data.void). Cleaning finds no "missed object" in the
    ignored pixels and never turns one into a class."""
    from conftest import snakemake, write_config

    data = tmp_path / "run" / "data"
    lines = ccp_competition(data, background=None, void=[0])
    assert lines["data"]["unlabelled"] == "ignore" and "null" not in lines["classes"]
    for name in (
        "train.json",
        "test.json",
    ):  # hair: a void category, as exporters write
        coco = json.loads((data / name).read_text())
        for category in coco["categories"]:
            if category["name"] == "hair":
                category["name"] = "void"
        (data / name).write_text(json.dumps(coco))
    lines["classes"].remove("hair")
    lines["data"]["void"] = ["void"]
    config = write_config(
        tmp_path / "run",
        **{
            **REAL_RUN,
            "clean": {"enabled": True, "action": "ignore", "min_class_confidence": 0.0},
            "retrain": {"epochs": 1},
        },
        classes=lines["classes"],
        data={"demo": False, **lines["data"], "root": "data", "train": "train.json"},
        models=REAL_MODELS,
    )
    result = snakemake(tmp_path / "run", "--cores", "2")
    assert "train from random encoder weights" in result.stderr
    # The run summary says what cleaning changed, or would have past its limits.
    assert "cleaning (ignore) would change" in result.stdout + result.stderr
    check_real_run(tmp_path / "run", config, ignored_values={0, 19})
    results = tmp_path / "run" / "results"
    flags = pd.read_csv(results / "clean" / "flags.csv")
    assert "missing" not in set(flags["suspected"].dropna())
    # Cleaning never turns an ignored pixel into a class.
    images = pd.read_parquet(results / "data" / "images.parquet")
    for coco_id in images.loc[images["split"] == "train", "coco_id"]:
        before = cv2.imread(str(results / "data" / "masks" / f"{coco_id}.png"), -1)
        after = cv2.imread(str(results / "clean" / "masks" / f"{coco_id}.png"), -1)
        assert (after[before == IGNORE_INDEX] == IGNORE_INDEX).all()


def test_the_demo_budget_lives_with_the_demo():
    """config.yaml holds real-data settings; demo.overrides applies only to the demo."""
    import yaml

    from segflow.settings import start_warnings, validated

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    demo = validated(config)
    real = validated(
        {**config, "data": {**config["data"], "demo": False, "root": "/data"}}
    )
    for key in ("epochs", "lr", "augment"):
        assert demo["defaults"][key] != real["defaults"][key]
    assert (demo["cv"]["folds"], real["cv"]["folds"]) == (3, 5)
    assert (demo["predict"]["size"], real["predict"]["size"]) == (96, None)
    assert not any("VerticalFlip" in step for step in real["defaults"]["augment"])
    assert start_warnings(demo) == []
    (warning,) = start_warnings(real)
    assert "random encoder weights" in warning and "deeplab_r18" in warning


def test_a_test_file_name_the_submission_cannot_carry_stops_at_start():
    from segflow.settings import ConfigError, DataPaths, check_test_images

    paths = DataPaths("root", "train.json", "test.json", None, None)
    test = [{"id": 4, "file_name": "a.png"}, {"id": 5, "file_name": "b,c.png"}]
    with pytest.raises(
        ConfigError, match=r"test\.json: image id 5: file_name 'b,c\.png'"
    ):
        check_test_images([], test, paths)


def test_the_index_merge_keeps_split_order_and_integer_ids(tmp_path):
    """The merge job's tables: train rows then test rows, whatever the file order on
    disk; skipped.csv keeps its columns and integer ids when one split skipped nothing
    (an all-empty CSV would otherwise read back as floats or lose its header)."""
    from segflow.index import SKIPPED_COLUMNS, merge_tables

    train = pd.DataFrame({"image_id": [3, 1], "split": ["train", "train"]})
    test = pd.DataFrame({"image_id": [7], "split": ["test"]})
    train.to_parquet(tmp_path / "train.parquet")
    test.to_parquet(tmp_path / "test.parquet")
    merged = merge_tables(
        [tmp_path / "train.parquet", tmp_path / "test.parquet"],
        tmp_path / "all.parquet",
    )
    back = pd.read_parquet(tmp_path / "all.parquet")
    assert back["image_id"].tolist() == [3, 1, 7] == merged["image_id"].tolist()
    assert back["split"].tolist() == ["train", "train", "test"]
    pd.DataFrame(columns=SKIPPED_COLUMNS).to_csv(tmp_path / "none.csv", index=False)
    one = {
        "file": ["x.png"],
        "reason": ["bad"],
        "image_id": [5],
        "annotation_id": [None],
    }
    pd.DataFrame(one).to_csv(tmp_path / "one.csv", index=False)
    merge_tables([tmp_path / "none.csv", tmp_path / "one.csv"], tmp_path / "all.csv")
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert lines == ["file,reason,image_id,annotation_id", "x.png,bad,5,"]
