"""The data index: one row per image, one per annotation, and the cached class-index masks.

Every image is opened once here (so a missing, unreadable or wrongly sized file is caught
before any training starts) and every training image's annotations are rasterized once
(segflow.coco.rasterize) into ``masks/<coco id>.png`` (class index per pixel) and
``masks/<coco id>_instances.png`` (uint16: 1 + the position, in annotations.parquet, of
the image's annotation on top of each pixel; 0 on background), which label-noise cleaning
uses to score each annotation. Later steps read these files and never touch the COCO JSON
again.

images.parquet columns: image_id (the COCO file_name, unique across splits and what the
submission calls an image), coco_id, file_name, width, height, split (train/test), group
(first folder of file_name, e.g. the batch), brightness (mean grey level 0-255),
n_objects, classes_present (space-separated class indices) and pixels_<k> for every class
index k (pixel counts; empty for test images, which have no labels).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from segflow.coco import CocoSplit, DataError, Problem, ProblemLog, load_coco, rasterize
from segflow.io import atomic_dir, write_table
from segflow.labels import write_instances, write_label
from segflow.tables import ANNOTATION_COLUMNS, image_columns, pixel_columns

SPLITS = ("train", "test")


def group_of(file_name: str) -> str:
    """The image's folder (e.g. the competition's batch), or its own name if it has none."""
    return file_name.split("/", 1)[0] if "/" in file_name else file_name


def build_index(
    train_json: str | Path,
    test_json: str | Path,
    image_root: str | Path,
    classes: list[str],
    *,
    images_out: str | Path,
    annotations_out: str | Path,
    skipped_out: str | Path,
    masks_dir: str | Path,
    on_error: str,
    sample: int | None,
    seed: int,
    threads: int,
) -> pd.DataFrame:
    """Validate both COCO files and all images, write the index tables and the masks.

    ``sample`` (debug mode) keeps that many images of each split, chosen with ``seed``.
    Skipped items (``on_error="skip"``) are listed in ``skipped_out`` for the EDA report.
    """
    image_root = Path(image_root)
    splits = {
        "train": load_coco(train_json, classes, on_error),
        "test": load_coco(test_json, classes, on_error),
    }
    log = ProblemLog(on_error)
    log.problems = splits["train"].problems + splits["test"].problems
    check_splits(splits, train_json, test_json)
    # Debug mode keeps a sample of each split, but every image is still opened: a bad
    # file outside the sample stops the run as it would without debug.
    kept = {
        split: {image["id"] for image in coco.images} for split, coco in splits.items()
    }
    if sample:
        rng = np.random.default_rng(seed)
        for split, coco in splits.items():
            if len(coco.images) > sample:
                keep = np.sort(rng.choice(len(coco.images), sample, replace=False))
                kept[split] = {coco.images[i]["id"] for i in keep}

    image_rows, annotation_rows = [], []
    with (
        atomic_dir(masks_dir) as masks_tmp,
        ThreadPoolExecutor(max(1, threads)) as pool,
    ):
        for split, coco in splits.items():
            labeled = split == "train"
            jobs = [
                pool.submit(
                    _index_image,
                    image_root,
                    coco,
                    image,
                    len(classes),
                    masks_tmp if labeled and image["id"] in kept[split] else None,
                )
                for image in coco.images
            ]
            for job in jobs:
                row, annotations, problem = job.result()
                if problem is not None:
                    if log.on_error == "skip" and coco.annotations.get(
                        problem.image_id
                    ):
                        n = len(coco.annotations[problem.image_id])
                        problem = replace(
                            problem,
                            reason=f"{problem.reason} (skipped with its {n}"
                            f" annotation{'s' * (n > 1)})",
                        )
                    log.report(problem)
                    continue
                if row["coco_id"] not in kept[split]:
                    continue  # opened and checked, but not in the debug sample
                image_rows.append({**row, "split": split})
                annotation_rows.extend(annotations)
        images = _images_table(image_rows, len(classes))
        for split, path, word in (
            ("train", train_json, "training"),
            ("test", test_json, "test"),
        ):
            if not (images["split"] == split).any():
                raise DataError(f"{path}: no usable {word} image")
        write_table(images, images_out)
        write_table(
            pd.DataFrame(annotation_rows, columns=ANNOTATION_COLUMNS), annotations_out
        )
        skipped = pd.DataFrame(
            [p.__dict__ for p in log.problems],
            columns=["file", "reason", "image_id", "annotation_id"],
        )
        write_table(
            skipped.astype({"image_id": "Int64", "annotation_id": "Int64"}), skipped_out
        )
    for problem in log.problems:
        print(f"WARNING skipped: {problem.message()}", file=sys.stderr)
    return images


def check_splits(splits: dict, train_json, test_json) -> None:
    """Stop on an empty test set and on a test image that is also a training image
    (image ids are file names: the two would be confused in every later step)."""
    if not splits["test"].images:
        raise DataError(f"{test_json}: no test images: nothing to predict or submit")
    train_names = {image["file_name"] for image in splits["train"].images}
    shared = sorted(
        (image["file_name"], image["id"])
        for image in splits["test"].images
        if image["file_name"] in train_names
    )
    if shared:
        examples = ", ".join(f"{name!r} (id {i})" for name, i in shared[:3])
        raise DataError(
            f"{test_json}: {len(shared)} test images have the file_name of a training"
            f" image of {train_json}, e.g. {examples}"
        )


def jpeg_problem(path: Path) -> str | None:
    """Why a JPEG file is broken, or None. libjpeg pads a truncated JPEG and cv2 reads
    it with only a warning; PIL's full decode raises."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, SyntaxError) as e:
        return f"image file {path} is a broken JPEG ({e})"
    return None


def _index_image(
    image_root: Path,
    coco: CocoSplit,
    image: dict,
    n_classes: int,
    masks_dir: Path | None,
):
    """Open one image, check it, and (for labelled images) write its mask. Returns a row."""
    path = image_root / image["file_name"]
    picture = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if picture is None:
        return (
            None,
            [],
            Problem(
                str(coco.path),
                f"image file {path} is missing or unreadable",
                image_id=image["id"],
            ),
        )
    broken = jpeg_problem(path)
    if broken:
        return None, [], Problem(str(coco.path), broken, image_id=image["id"])
    if picture.shape != (image["height"], image["width"]):
        reason = (
            f"image file {path} is {picture.shape[1]}x{picture.shape[0]}"
            f" but the JSON says {image['width']}x{image['height']}"
        )
        return None, [], Problem(str(coco.path), reason, image_id=image["id"])
    row = {
        "image_id": image["file_name"],
        "coco_id": image["id"],
        "file_name": image["file_name"],
        "width": image["width"],
        "height": image["height"],
        "group": group_of(image["file_name"]),
        "brightness": float(picture.mean()),
    }
    if masks_dir is None:
        return row, [], None
    annotations = coco.annotations[image["id"]]
    raster = rasterize(
        annotations, image["height"], image["width"], coco.class_of_category
    )
    if len(annotations) >= 2**16 - 1:
        return (
            None,
            [],
            Problem(
                str(coco.path),
                f"{len(annotations)} annotations on one image (at most 65534)",
                image_id=image["id"],
            ),
        )
    instances = (raster.owner + 1).astype(np.uint16)
    write_label(raster.mask, masks_dir, image["id"])
    write_instances(instances, masks_dir, image["id"])
    pixels = np.bincount(raster.mask.ravel(), minlength=n_classes)
    row.update({f"pixels_{k}": int(v) for k, v in enumerate(pixels)})
    row["n_objects"] = len(annotations)
    row["classes_present"] = " ".join(str(k) for k in np.flatnonzero(pixels[1:]) + 1)
    ann_rows = [
        {
            "image_id": image["file_name"],
            "annotation_id": ann["id"],
            "class_index": coco.class_of_category[ann["category_id"]],
            "area": int(raster.areas[i]),
            "visible": int(raster.visible[i]),
            "bbox_width": float(ann["bbox"][2]) if "bbox" in ann else np.nan,
            "bbox_height": float(ann["bbox"][3]) if "bbox" in ann else np.nan,
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        for i, ann in enumerate(annotations)
    ]
    return row, ann_rows, None


def _images_table(rows: list[dict], n_classes: int) -> pd.DataFrame:
    table = pd.DataFrame(rows).reindex(columns=image_columns(n_classes))
    for column in ["n_objects", *pixel_columns(n_classes)]:
        table[column] = table[column].astype(
            "Int64"
        )  # empty for unlabelled test images
    table["classes_present"] = table["classes_present"].astype("string")
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Validate a COCO dataset; write the image index and the class masks."
    )
    parser.add_argument(
        "--train", required=True, help="COCO JSON of the labelled images"
    )
    parser.add_argument("--test", required=True, help="COCO JSON of the test images")
    parser.add_argument(
        "--image-root",
        required=True,
        help="folder the file_name entries are relative to",
    )
    parser.add_argument(
        "--classes", required=True, help="JSON list of class names, background first"
    )
    parser.add_argument("--images-out", required=True)
    parser.add_argument("--annotations-out", required=True)
    parser.add_argument("--skipped-out", required=True)
    parser.add_argument("--masks-dir", required=True)
    parser.add_argument("--on-error", choices=["stop", "skip"], required=True)
    parser.add_argument(
        "--sample",
        type=int,
        required=True,
        help="debug: keep this many images per split (0: all)",
    )
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        images = build_index(
            args.train,
            args.test,
            args.image_root,
            json.loads(args.classes),
            images_out=args.images_out,
            annotations_out=args.annotations_out,
            skipped_out=args.skipped_out,
            masks_dir=args.masks_dir,
            on_error=args.on_error,
            sample=args.sample or None,
            seed=args.seed,
            threads=args.threads,
        )
    except DataError as e:
        sys.exit(f"ERROR: {e}")
    print(images.groupby("split").size().to_string())


if __name__ == "__main__":
    main()
