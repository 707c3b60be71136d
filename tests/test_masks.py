"""Mask rasterization equals pycocotools' own annToMask, composed by the documented overlap rule."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from conftest import CLASSES, square
from segflow.coco import class_index_by_category, rasterize

H, W = 48, 64


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with 0s."""
    flat = mask.ravel(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(
        np.asfortranarray(mask.astype(np.uint8))
    )  # needs Fortran order
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def reference_mask(annotations, categories, classes):
    """Independent reference: pycocotools' annToMask per annotation, largest painted first.

    Returns the mask and each annotation's own area, by annotation id."""
    dataset = {
        "images": [{"id": 1, "width": W, "height": H, "file_name": "x.png"}],
        "annotations": annotations,
        "categories": categories,
    }
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints to stdout
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    names = {c["id"]: c["name"] for c in categories}
    masks = [
        (coco.annToMask(a), a)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[1], iscrowd=None))
    ]
    out = np.zeros((H, W), np.uint8)
    for m, a in sorted(masks, key=lambda item: (-int(item[0].sum()), item[1]["id"])):
        out[m == 1] = classes.index(names[a["category_id"]])
    return out, {a["id"]: int(m.sum()) for m, a in masks}


def annotations_with_every_encoding():
    rng = np.random.default_rng(0)
    blob = np.zeros((H, W), bool)
    blob[5:40, 30:60] = rng.random((35, 30)) > 0.3  # ragged crowd region
    disk = (
        np.add.outer((np.arange(H) - 24) ** 2, (np.arange(W) - 20) ** 2) < 120
    ).astype(np.uint8)
    return [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 2,
            "segmentation": [square(0, 0, 50, 40)],
            "iscrowd": 0,
        },  # big
        {
            "id": 2,
            "image_id": 1,
            "category_id": 9,
            "segmentation": [[10.5, 10.2, 25.7, 12.1, 18.3, 30.9]],
            "iscrowd": 0,
        },  # triangle
        {
            "id": 3,
            "image_id": 1,
            "category_id": 8,
            "segmentation": [square(40, 30, 63, 47), square(2, 42, 8, 47)],
            "iscrowd": 0,
        },  # two parts
        {
            "id": 4,
            "image_id": 1,
            "category_id": 1,
            "segmentation": uncompressed_rle(blob),
            "iscrowd": 1,
        },
        {
            "id": 5,
            "image_id": 1,
            "category_id": 4,
            "segmentation": compressed_rle(disk),
            "iscrowd": 1,
        },
    ]


@pytest.mark.parametrize("shuffle_seed", [0, 1, 2])
def test_rasterize_matches_pycocotools_on_polygons_and_rle_with_overlaps(shuffle_seed):
    categories = [{"id": k, "name": n} for k, n in enumerate(CLASSES[1:], 1)]
    annotations = annotations_with_every_encoding()
    annotations = [
        annotations[i]
        for i in np.random.default_rng(shuffle_seed).permutation(len(annotations))
    ]
    mapping = class_index_by_category(categories, CLASSES, "test")
    raster = rasterize(annotations, H, W, mapping)
    expected, areas = reference_mask(annotations, categories, CLASSES)
    assert raster.mask.dtype == np.uint8
    np.testing.assert_array_equal(raster.mask, expected)
    assert (
        len(np.unique(expected)) >= 5
    )  # the overlaps really leave several classes visible
    assert raster.areas.tolist() == [areas[a["id"]] for a in annotations]
    assert raster.visible.sum() == (raster.owner >= 0).sum() == (expected > 0).sum()


@pytest.mark.parametrize("big_id,small_id", [(1, 2), (2, 1)])
def test_smaller_object_is_on_top_whatever_the_annotation_order(big_id, small_id):
    categories = [{"id": k, "name": n} for k, n in enumerate(CLASSES[1:], 1)]
    annotations = [
        {
            "id": big_id,
            "image_id": 1,
            "category_id": 8,
            "segmentation": [square(0, 0, 40, 40)],
        },
        {
            "id": small_id,
            "image_id": 1,
            "category_id": 9,
            "segmentation": [square(15, 15, 25, 25)],
        },
    ]
    mask = rasterize(
        annotations, H, W, class_index_by_category(categories, CLASSES, "t")
    ).mask
    np.testing.assert_array_equal(
        mask, reference_mask(annotations, categories, CLASSES)[0]
    )
    assert mask[20, 20] == CLASSES.index("Battery")
    assert mask[5, 5] == CLASSES.index("Plastic bag")


def test_equal_areas_higher_annotation_id_on_top():
    categories = [{"id": k, "name": n} for k, n in enumerate(CLASSES[1:], 1)]
    annotations = [
        {
            "id": 7,
            "image_id": 1,
            "category_id": 2,
            "segmentation": [square(10, 10, 20, 20)],
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": 5,
            "segmentation": [square(10, 10, 20, 20)],
        },
    ]
    mask = rasterize(
        annotations, H, W, class_index_by_category(categories, CLASSES, "t")
    ).mask
    assert mask[15, 15] == CLASSES.index("Paper")  # id 7 painted after id 3


def test_category_ids_map_by_name_not_by_id():
    # Ids out of order and not contiguous; names decide the class index.
    categories = [{"id": 42, "name": "Paper"}, {"id": 7, "name": "General trash"}] + [
        {"id": 100 + k, "name": n} for k, n in enumerate(CLASSES[3:])
    ]
    mapping = class_index_by_category(categories, CLASSES, "t")
    assert mapping[42] == CLASSES.index("Paper") == 2
    assert mapping[7] == CLASSES.index("General trash") == 1
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 42,
            "segmentation": [square(0, 0, 10, 10)],
        }
    ]
    assert rasterize(annotations, H, W, mapping).mask[5, 5] == 2


def test_image_without_annotations_is_all_background():
    raster = rasterize([], H, W, {})
    assert raster.mask.shape == (H, W) and not raster.mask.any()


def test_a_missing_mask_or_instance_map_names_what_which_image_and_where(tmp_path):
    from segflow.labels import read_instances, read_label

    with pytest.raises(
        FileNotFoundError, match=rf"^mask of image 7 missing under {tmp_path}$"
    ):
        read_label(tmp_path, 7)
    with pytest.raises(
        FileNotFoundError, match=rf"^instance map of image 8 missing under {tmp_path}$"
    ):
        read_instances(tmp_path, 8, size=(4, 6))


def test_label_maps_round_trip_and_resize_by_nearest_on_non_square_maps(tmp_path):
    """What is written is read back (uint8 masks, 16-bit instance maps); a size reads
    back each side by nearest neighbour, height first; n means n x n."""
    from segflow.labels import (
        read_instances,
        read_label,
        resize_label,
        write_instances,
        write_label,
    )

    mask = (np.arange(24).reshape(4, 6) % 11).astype(np.int64)  # classes 0..10
    write_label(mask, tmp_path, 3)
    back = read_label(tmp_path, 3)
    assert back.dtype == np.uint8 and np.array_equal(back, mask)
    assert np.array_equal(read_label(tmp_path, 3, size=(2, 3)), mask[::2, ::2])
    assert read_label(tmp_path, 3, size=2).shape == (2, 2)
    assert np.array_equal(resize_label(mask, 4, 6), mask)  # its own size: unchanged
    assert resize_label(mask, 3).shape == (3, 3)  # no width: square
    tall = resize_label(mask[:, :2], 8, 2)  # height doubles, width kept
    assert np.array_equal(tall, np.repeat(mask[:, :2], 2, axis=0))
    instances = np.arange(24, dtype=np.uint16).reshape(4, 6) * 300  # over 255
    write_instances(instances, tmp_path, 3)
    assert np.array_equal(read_instances(tmp_path, 3), instances)
    assert np.array_equal(read_instances(tmp_path, 3, (2, 3)), instances[::2, ::2])
    with pytest.raises(OSError, match=r"could not write the mask of image id 4 to .*4"):
        write_label(mask, tmp_path / "no" / "such" / "folder", 4)


def test_a_test_image_with_a_training_images_file_name_is_named(tmp_path):
    from segflow.coco import DataError
    from segflow.index import check_test_split

    class Split:
        images = [{"id": 5, "file_name": "a.png"}, {"id": 6, "file_name": "t.png"}]

    train = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "glass"}],
    }
    with pytest.raises(
        DataError,
        match=r"1 test images have the file_name of a training image .*'a.png' \(id 5\)",
    ):
        check_test_split(Split, "test.json", _json(train, tmp_path))
    Split.images = Split.images[1:]
    check_test_split(Split, "test.json", _json(train, tmp_path))
    Split.images = []
    with pytest.raises(DataError, match="no test images"):
        check_test_split(Split, "test.json", None)


def _json(content, folder) -> str:
    import json

    path = folder / "train.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_only_a_file_that_starts_like_a_jpeg_is_checked_as_one(tmp_path):
    import cv2

    from segflow.index import jpeg_problem

    picture = np.full((8, 8, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "good.jpg"), picture)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(tmp_path / "png.png"), picture)
    assert jpeg_problem(tmp_path / "good.jpg") is None
    assert "is a broken JPEG" in jpeg_problem(tmp_path / "cut.jpg")
    assert jpeg_problem(tmp_path / "png.png") is None  # not a JPEG: not its business


def test_the_index_tables_carry_every_field_of_the_json_and_the_pixels(
    small_coco, tmp_path
):
    """Sizes, brightness (the grey test images are 100 everywhere), crowd flags and
    class presence reach the tables under their documented names."""
    import json

    import pandas as pd

    from conftest import index_coco
    from segflow.tables import ANNOTATION_COLUMNS, image_columns

    coco = json.loads(small_coco["train"].read_text())
    coco["annotations"][1]["iscrowd"] = 1
    small_coco["train"].write_text(json.dumps(coco))
    images = index_coco(
        small_coco["train"], small_coco["test"], small_coco["root"], tmp_path
    )
    assert list(images.columns) == image_columns(len(CLASSES))
    assert images["height"].tolist() == [30, 30, 30]
    assert images["width"].tolist() == [40, 40, 40]
    assert images["brightness"].tolist() == pytest.approx([100.0] * 3)
    assert str(images["classes_present"].dtype) == "string"
    train = images[images["split"] == "train"]
    assert train["classes_present"].tolist() == ["2 9", "8"]
    annotations = pd.read_parquet(tmp_path / "annotations.parquet")
    assert list(annotations.columns) == ANNOTATION_COLUMNS
    assert annotations["iscrowd"].tolist() == [0, 1, 0]
