"""Every kind of bad input stops with a message naming the file and the id, or is skipped and
listed when data.on_error is skip; a failed index leaves no file that looks complete."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import CLASSES, index_coco, square, write_coco
from segflow.coco import DataError, load_coco


def index(coco, tmp_path, on_error="stop"):
    out = tmp_path / "out"
    return index_coco(
        coco["train"], coco["test"], coco["root"], out, on_error=on_error
    ), out


def rewrite(coco, change):
    """Apply ``change`` to the train JSON dict of the small_coco fixture and save it."""
    data = json.loads(coco["train"].read_text())
    change(data)
    coco["train"].write_text(json.dumps(data))


def test_valid_input_indexes_cleanly(small_coco, tmp_path):
    images, out = index(small_coco, tmp_path)
    assert sorted(images["image_id"]) == ["b1/a.png", "b1/t.png", "b2/b.png"]
    assert pd.read_csv(out / "skipped.csv").empty
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "1.png",
        "1_instances.png",
        "2.png",
        "2_instances.png",
    ]  # train only


def test_malformed_json_names_the_file_and_position(small_coco, tmp_path):
    small_coco["train"].write_text('{"images": [ {"id": 1,, } ]')
    with pytest.raises(
        DataError, match=r"train\.json: malformed JSON at line 1 column \d+"
    ):
        load_coco(small_coco["train"], CLASSES)


# (change to the train JSON, words the message must hold) -- one case per bad input.
BAD_JSON = {
    "polygon_with_two_points": (
        lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]),
        ["annotation id 10", "image id 1", "2 points"],
    ),
    "polygon_odd_coordinates": (
        lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5, 9]]),
        ["annotation id 10", "odd number"],
    ),
    "annotation_of_unknown_image": (
        lambda d: d["annotations"][1].update(image_id=99),
        ["annotation id 11", "image id 99", "does not exist"],
    ),
    "annotation_of_unknown_category": (
        lambda d: d["annotations"][2].update(category_id=77),
        ["annotation id 12", "unknown category_id 77"],
    ),
    "duplicate_image_id": (
        lambda d: d["images"][1].update(id=1),
        ["image id 1", "duplicate image id"],
    ),
    "duplicate_annotation_id": (
        lambda d: d["annotations"][2].update(id=10),
        ["annotation id 10", "duplicate annotation id"],
    ),
    "file_name_escapes_root": (
        lambda d: d["images"][1].update(file_name="../../etc/b.png"),
        ["image id 2", "escapes the image root"],
    ),
    "absolute_file_name": (
        lambda d: d["images"][1].update(file_name="/etc/b.png"),
        ["image id 2", "escapes the image root"],
    ),
    "rle_of_wrong_size": (
        lambda d: d["annotations"][2].update(
            segmentation={"size": [10, 10], "counts": [0, 100]}
        ),
        ["annotation id 12", "RLE size [10, 10] differs"],
    ),
    "empty_segmentation": (
        lambda d: d["annotations"][0].update(segmentation=[]),
        ["annotation id 10", "empty segmentation"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_json_entry_stops_naming_file_and_id(small_coco, tmp_path, case):
    change, words = BAD_JSON[case]
    rewrite(small_coco, change)
    with pytest.raises(DataError) as error:
        index(small_coco, tmp_path)
    message = str(error.value)
    assert str(small_coco["train"]) in message
    for word in words:
        assert word in message
    assert not (tmp_path / "out").exists() or not any(
        (tmp_path / "out").iterdir()
    )  # nothing half-written


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_bad_json_entry_is_skipped_and_listed_when_asked(small_coco, tmp_path, case):
    change, words = BAD_JSON[case]
    rewrite(small_coco, change)
    images, out = index(small_coco, tmp_path, on_error="skip")
    skipped = pd.read_csv(out / "skipped.csv")
    kind, _, number = words[
        0
    ].split()  # "annotation id 10" / "image id 2": that id is listed
    assert int(number) in skipped[f"{kind}_id"].dropna().astype(int).tolist()
    assert (images["split"] == "train").any()


def test_missing_image_file_names_file_and_id(small_coco, tmp_path):
    (small_coco["root"] / "b2" / "b.png").unlink()
    with pytest.raises(
        DataError, match=r"image id 2: image file .*b2/b\.png is missing or unreadable"
    ):
        index(small_coco, tmp_path)
    assert not (tmp_path / "out" / "images.parquet").exists()
    assert not (tmp_path / "out" / "masks").exists()
    assert not list(
        (tmp_path / "out").glob(".*partial*")
    )  # temporaries are cleaned up too


def test_unreadable_image_file_names_file_and_id(small_coco, tmp_path):
    (small_coco["root"] / "b1" / "a.png").write_bytes(b"this is not a picture")
    with pytest.raises(
        DataError, match=r"image id 1: image file .*b1/a\.png is missing or unreadable"
    ):
        index(small_coco, tmp_path)


def test_image_size_differing_from_json_names_file_and_id(small_coco, tmp_path):
    cv2.imwrite(
        str(small_coco["root"] / "b2" / "b.png"), np.zeros((31, 40, 3), np.uint8)
    )
    with pytest.raises(
        DataError,
        match=r"image id 2: image file .*b2/b\.png is 40x31 but the JSON says 40x30",
    ):
        index(small_coco, tmp_path)


def test_missing_image_in_test_set_is_caught_too(small_coco, tmp_path):
    (small_coco["root"] / "b1" / "t.png").unlink()
    with pytest.raises(
        DataError, match=r"test\.json: image id 1: image file .*t\.png is missing"
    ):
        index(small_coco, tmp_path)


def test_skip_mode_drops_bad_images_and_their_annotations(small_coco, tmp_path):
    (small_coco["root"] / "b2" / "b.png").unlink()
    rewrite(
        small_coco, lambda d: d["annotations"][1].update(segmentation=[[1, 1, 2, 2]])
    )
    images, out = index(small_coco, tmp_path, on_error="skip")
    assert sorted(images.loc[images["split"] == "train", "image_id"]) == ["b1/a.png"]
    annotations = pd.read_parquet(out / "annotations.parquet")
    assert annotations["annotation_id"].tolist() == [
        10
    ]  # 11 had a bad polygon, 12 a missing image
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["annotation_id"].dropna().astype(int)) == [11]
    assert sorted(skipped["image_id"].dropna().astype(int)) == [1, 2]


def test_categories_not_matching_classes_name_both_sides(small_coco, tmp_path):
    rewrite(small_coco, lambda d: d["categories"][0].update(name="Rubbish"))
    with pytest.raises(
        DataError,
        match=r"categories not in classes: \['Rubbish'\];"
        r" classes not among categories: \['General trash'\]",
    ):
        index(small_coco, tmp_path)


def test_not_a_coco_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match=r"x\.json: not a COCO file"):
        load_coco(path, CLASSES)


def test_no_usable_training_image_is_an_error(tmp_path):
    root = tmp_path / "data"
    train = write_coco(
        root,
        "train.json",
        [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        [],
        write_images=False,
    )
    test_image = {"id": 1, "file_name": "t.png", "width": 8, "height": 8}
    test = write_coco(root, "test.json", [test_image], [])
    with pytest.raises(DataError, match="no usable training image"):
        index_coco(train, test, root, tmp_path / "out", on_error="skip")


def test_polygon_outside_the_image_is_clipped_not_an_error(small_coco, tmp_path):
    rewrite(
        small_coco,
        lambda d: d["annotations"][2].update(segmentation=[square(-5, -5, 100, 100)]),
    )
    images, _ = index(small_coco, tmp_path)
    row = images.set_index("image_id").loc["b2/b.png"]
    assert row["pixels_8"] == 40 * 30  # Plastic bag covers the whole image


def test_data_root_expands_the_home_folder(tmp_path, monkeypatch):
    """data.root: ~/data is the user's home folder's data, as a shell reads it."""
    from conftest import validated_config
    from segflow.settings import data_paths

    monkeypatch.setenv("HOME", str(tmp_path))
    config = validated_config(
        data={"demo": False, "root": "~/data", "train": "t.json", "test": "s.json"}
    )
    paths = data_paths(config)
    assert Path(paths.root) == tmp_path / "data"
    assert Path(paths.train) == tmp_path / "data" / "t.json"
