"""The data index: one row per image, one per annotation, and the cached class-index masks.

Every image is opened once here (so a missing, unreadable or wrongly sized file is caught
before any training starts) and every training image's annotations are rasterized once
(segflow.coco.rasterize) into ``masks/<coco id>.png`` (class index per pixel) and
``masks/<coco id>_instances.png`` (uint16: 1 + the position, in annotations.parquet, of
the image's annotation on top of each pixel; 0 on background), which label-noise cleaning
uses to score each annotation. Later steps read these files and never touch the COCO JSON
again.

images.parquet columns: image_id (the COCO file_name, unique across splits and what the
submission calls an image), coco_id, file_name, width, height, orientation (the EXIF
orientation every reader applies, segflow.images; 1: the pixels as stored), split
(train/test), group (first folder of file_name, e.g. the batch), brightness (mean grey
level 0-255), dhash (the grey image's difference hash, which segflow.groups compares to
find near-duplicates), n_objects, classes_present (space-separated indices of the object classes,
the background left out), ignored_pixels (void or unlabelled: IGNORE_INDEX) and
pixels_<k> for every class index k (pixel counts; empty for test images, which have no
labels).

Each split is indexed by its own job (``split --split train``, ``split --split test``) and
the two tables merged (``merge``): a new test set reruns nothing that training read.

Any failure on one image (a file PIL or OpenCV cannot read, a size that matches neither
its stored nor its EXIF frame, more annotations than the instance map holds) is a
problem naming the JSON file and the image id, which stops the run or, with
``on_error: skip``, leaves the image out.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from segflow.coco import (
    ON_ERROR,
    CocoSplit,
    DataError,
    Problem,
    ProblemLog,
    load_coco,
    rasterize,
    read_json,
)
from segflow.groups import difference_hash
from segflow.images import (
    EXIF_SETTINGS,
    orientation_to_apply,
    read_grey,
    size_mismatch,
    stored_orientation,
)
from segflow.io import atomic_dir, read_table, write_table
from segflow.labels import (
    IGNORE_INDEX,
    UNLABELLED,
    background_class,
    write_instances,
    write_label,
)
from segflow.progress import ProgressLine
from segflow.step_cli import arg, run_commands
from segflow.tables import ANNOTATION_COLUMNS, image_columns, pixel_columns

SPLITS = ("train", "test")
# Instance maps are uint16 PNGs: 0 is background, 1.. the annotations.
MAX_ANNOTATIONS = 2**16 - 1
SKIPPED_COLUMNS = ["file", "reason", "image_id", "annotation_id"]
SKIPPED_ID_TYPES = {"image_id": "Int64", "annotation_id": "Int64"}


def group_of(file_name: str) -> str:
    """The image's folder (e.g. the competition's batch), or its own name if it has none."""
    return file_name.split("/", 1)[0] if "/" in file_name else file_name


@dataclass
class SplitIndex:
    """One split's rows of the index tables."""

    images: pd.DataFrame
    annotations: pd.DataFrame
    skipped: pd.DataFrame


def index_split(
    split: str,
    coco_json: str | Path,
    image_root: str | Path,
    classes: list[str],
    *,
    masks_dir: str | Path | None,
    on_error: str,
    sample: int | None,
    seed: int,
    threads: int,
    unlabelled: str = "background",
    void: list | tuple = (),
    exif: str = "apply",
    train_json: str | Path | None = None,
) -> SplitIndex:
    """Validate one COCO file and all its images; for the training split write the
    masks into ``masks_dir`` (atomically: all or nothing).

    Each split is its own job so that a new test set never touches what training read
    (the stale-only promise: a second-stage test set costs no retraining). The test
    split checks its file names against ``train_json``'s. ``sample`` (debug mode) keeps
    that many images, chosen with ``seed``. ``unlabelled`` and ``void``: what uncovered
    pixels and void categories are (segflow.coco); ``exif``: the EXIF frame where sizes
    cannot tell (segflow.images). Skipped items (``on_error="skip"``) come back in
    ``skipped`` for the EDA report.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    labelled = split == "train"
    if labelled != (masks_dir is not None):
        raise ValueError("masks_dir is for the training split, and it needs one")
    image_root = Path(image_root)
    coco = load_coco(coco_json, classes, on_error, unlabelled, void)
    background = background_class(unlabelled)
    log = ProblemLog(on_error)
    log.problems = list(coco.problems)
    if not labelled:
        check_test_split(coco, coco_json, train_json)
    # Debug mode keeps a sample, but every image is still opened: a bad file outside
    # the sample stops the run as it would without debug.
    kept = {image["id"] for image in coco.images}
    if sample and len(coco.images) > sample:
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        keep = np.sort(rng.choice(len(coco.images), sample, replace=False))
        kept = {coco.images[i]["id"] for i in keep}

    image_rows, annotation_rows = [], []
    with (
        atomic_dir(masks_dir) if labelled else nullcontext() as masks_tmp,
        ThreadPoolExecutor(max(1, threads)) as pool,
    ):
        jobs = [
            pool.submit(
                _index_image,
                image_root,
                coco,
                image,
                len(classes),
                masks_tmp if image["id"] in kept else None,
                exif,
                background,
            )
            for image in coco.images
        ]
        progress = ProgressLine(f"index {split}", len(jobs))
        for job in jobs:
            row, annotations, problem = job.result()
            progress.update()
            if problem is not None:
                if log.on_error == "skip" and coco.annotations.get(problem.image_id):
                    n = len(coco.annotations[problem.image_id])
                    problem = replace(
                        problem,
                        reason=f"{problem.reason} (skipped with its {n}"
                        f" annotation{'s' * (n > 1)})",
                    )
                log.report(problem)
                continue
            if row["coco_id"] not in kept:
                continue  # opened and checked, but not in the debug sample
            image_rows.append({**row, "split": split})
            annotation_rows.extend(annotations)
        for problem in log.problems:  # first: they say why no image may be left
            print(f"WARNING skipped: {problem.message()}", file=sys.stderr)
        images = _images_table(image_rows, len(classes))
        if images.empty:
            word = "training" if labelled else "test"
            raise DataError(f"{coco_json}: no usable {word} image")
    outside = linked_outside(image_root, images["file_name"])
    if outside:
        # Not an error (a folder linked to a bigger disk is common), but never silent:
        # a link can point at another dataset's images.
        print(
            f"WARNING {coco_json}: {len(outside)} image files are symbolic links out of"
            f" the image root {image_root}, e.g. {', '.join(outside[:3])}",
            file=sys.stderr,
        )
    skipped = pd.DataFrame(
        [p.__dict__ for p in log.problems], columns=SKIPPED_COLUMNS
    ).astype(SKIPPED_ID_TYPES)
    return SplitIndex(
        images, pd.DataFrame(annotation_rows, columns=ANNOTATION_COLUMNS), skipped
    )


def linked_outside(image_root: Path, file_names) -> list[str]:
    """The file names that resolve (through symbolic links) outside ``image_root``."""
    root = image_root.resolve()
    return [
        name
        for name in file_names
        if not (image_root / name).resolve().is_relative_to(root)
    ]


def merge_tables(paths, out: str | Path) -> pd.DataFrame:
    """The splits' tables (images.parquet or skipped.csv) as one, in the order given."""
    return write_merged([read_table(path) for path in paths], out)


def write_merged(tables: list[pd.DataFrame], out: str | Path) -> pd.DataFrame:
    """``tables`` (one per split) concatenated and written to ``out``."""
    merged = pd.concat(tables, ignore_index=True)
    if Path(out).suffix == ".csv":  # CSV keeps no dtypes: ids stay integers
        merged = merged.reindex(columns=SKIPPED_COLUMNS).astype(SKIPPED_ID_TYPES)
    write_table(merged, out)
    return merged


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
    **options,
) -> pd.DataFrame:
    """Both splits in one call, into the merged tables: what the workflow's index jobs
    write together (for tools and tests). ``options``: those of :func:`index_split`."""
    train = index_split(
        "train", train_json, image_root, classes, masks_dir=masks_dir, **options
    )
    test = index_split(
        "test",
        test_json,
        image_root,
        classes,
        masks_dir=None,
        train_json=train_json,
        **options,
    )
    write_table(train.annotations, annotations_out)
    write_merged([train.skipped, test.skipped], skipped_out)
    return write_merged([train.images, test.images], images_out)


def check_test_split(coco, test_json, train_json) -> None:
    """Stop on an empty test set and on a test image that is also a training image
    (image ids are file names: the two would be confused in every later step)."""
    if not coco.images:
        raise DataError(f"{test_json}: no test images: nothing to predict or submit")
    if train_json is None:
        return
    train_names = {
        image.get("file_name")
        for image in read_json(train_json)["images"]
        if isinstance(image, dict)  # a bad entry is the training index's to name
    }
    shared = sorted(
        (image["file_name"], image["id"])
        for image in coco.images
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
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        return f"image file {path} is a broken JPEG ({e})"
    return None


def _index_image(
    image_root: Path,
    coco: CocoSplit,
    image: dict,
    n_classes: int,
    masks_dir: Path | None,
    exif: str,
    background: int | None,
):
    """Index one image; any failure becomes a Problem naming the file and image id."""
    try:
        return _index_checked_image(
            image_root, coco, image, n_classes, masks_dir, exif, background
        )
    except (OSError, ValueError, MemoryError, Image.DecompressionBombError) as e:
        reason = f"{image['file_name']}: {type(e).__name__}: {e}"
        return None, [], Problem(str(coco.path), reason, image_id=image["id"])


def _index_checked_image(
    image_root: Path,
    coco: CocoSplit,
    image: dict,
    n_classes: int,
    masks_dir: Path | None,
    exif: str,
    background: int | None,
):
    """Open one image, check it, and (for labelled images) write its mask. Returns a row."""
    path = image_root / image["file_name"]

    def problem(reason: str):
        return None, [], Problem(str(coco.path), reason, image_id=image["id"])

    try:
        stored, tag = stored_orientation(path)
    except FileNotFoundError:
        return problem(f"image file {path} is missing or unreadable")
    except (OSError, SyntaxError) as e:
        return problem(f"image file {path} is missing or unreadable ({e})")
    except Image.DecompressionBombError as e:
        return problem(f"image file {path} is too large to decode safely ({e})")
    json_size = (image["height"], image["width"])
    orientation = orientation_to_apply(json_size, stored, tag, exif)
    if orientation is None:
        return problem(size_mismatch(path, json_size, stored, tag))
    broken = jpeg_problem(path)
    if broken:
        return problem(broken)
    picture = read_grey(path, orientation)
    if picture is None:
        return problem(f"image file {path} is missing or unreadable")
    row = {
        "image_id": image["file_name"],
        "coco_id": image["id"],
        "file_name": image["file_name"],
        "width": image["width"],
        "height": image["height"],
        "orientation": orientation,
        "group": group_of(image["file_name"]),
        "brightness": float(picture.mean()),
        "dhash": difference_hash(picture),
    }
    if masks_dir is None:
        return row, [], None
    annotations = coco.annotations[image["id"]]
    if len(annotations) > MAX_ANNOTATIONS:
        return problem(
            f"{len(annotations)} annotations on one image: the instance map"
            f" (uint16 PNG) holds at most {MAX_ANNOTATIONS}"
        )
    raster = rasterize(
        annotations,
        image["height"],
        image["width"],
        coco.class_of_category,
        coco.unlabelled,
    )
    instances = (raster.owner + 1).astype(np.uint16)
    write_label(raster.mask, masks_dir, image["id"])
    write_instances(instances, masks_dir, image["id"])
    counts = np.bincount(raster.mask.ravel(), minlength=IGNORE_INDEX + 1)
    pixels = counts[:n_classes]
    row.update({f"pixels_{k}": int(v) for k, v in enumerate(pixels)})
    row["ignored_pixels"] = int(counts[IGNORE_INDEX])
    row["n_objects"] = len(annotations)
    objects = [k for k in np.flatnonzero(pixels) if k != background]
    row["classes_present"] = " ".join(str(k) for k in objects)
    ann_rows = [
        {
            "image_id": image["file_name"],
            "annotation_id": ann["id"],
            "class_index": coco.class_of_category[ann["category_id"]],
            "area": int(raster.areas[i]),
            "visible": int(raster.visible[i]),
            # The box of the region as rasterized: a JSON bbox may be stale or wrong.
            "bbox_width": float(raster.boxes[i][2]),
            "bbox_height": float(raster.boxes[i][3]),
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        for i, ann in enumerate(annotations)
    ]
    return row, ann_rows, None


def _images_table(rows: list[dict], n_classes: int) -> pd.DataFrame:
    table = pd.DataFrame(rows).reindex(columns=image_columns(n_classes))
    for column in ["n_objects", "ignored_pixels", *pixel_columns(n_classes)]:
        table[column] = table[column].astype(
            "Int64"
        )  # empty for unlabelled test images
    table["classes_present"] = table["classes_present"].astype("string")
    return table


@dataclass(frozen=True, kw_only=True)
class SplitArgs:
    """``split``: validate one split's COCO file and images; index them (and, for the
    training split, rasterize the class masks)."""

    split: str = arg("the split to index", choices=SPLITS)
    coco: Path = arg("the split's COCO JSON")
    train_json: Path | None = arg(
        "test split: the training COCO JSON, whose file names it must not reuse",
        default=None,
    )
    image_root: Path = arg("folder the file_name entries are relative to")
    classes: list[str] = arg(
        "JSON list of class names, background first", parse=json.loads
    )
    images_out: Path = arg("images.parquet")
    annotations_out: Path | None = arg(
        "training split: annotations.parquet", default=None
    )
    skipped_out: Path = arg("skipped.csv")
    masks_dir: Path | None = arg("training split: the class masks", default=None)
    on_error: str = arg("data.on_error", choices=ON_ERROR)
    unlabelled: str = arg(
        "pixels no annotation covers: the background class 0, or ignored (255)",
        choices=UNLABELLED,
    )
    void: list = arg("JSON list of void category names or ids", parse=json.loads)
    exif: str = arg(
        "the EXIF frame of images whose sizes cannot tell", choices=EXIF_SETTINGS
    )
    sample: int = arg("debug: keep this many images (0: all)")
    seed: int = arg("of the debug sample")
    threads: int = arg("image reading threads")

    def __post_init__(self):
        if self.split == "train" and None in (self.masks_dir, self.annotations_out):
            raise ValueError(
                "the training split needs --masks-dir and --annotations-out"
            )


@dataclass(frozen=True, kw_only=True)
class MergeArgs:
    """``merge``: the splits' tables as one (what steps that read test images use)."""

    images: list[Path] = arg("the images tables, one per split", nargs="+")
    skipped: list[Path] = arg("the skipped tables, one per split", nargs="+")
    images_out: Path = arg("the merged images.parquet")
    skipped_out: Path = arg("the merged skipped.csv")


def index_one_split(args: SplitArgs) -> str:
    index = index_split(
        args.split,
        args.coco,
        args.image_root,
        args.classes,
        masks_dir=args.masks_dir if args.split == "train" else None,
        on_error=args.on_error,
        sample=args.sample or None,
        seed=args.seed,
        threads=args.threads,
        unlabelled=args.unlabelled,
        void=args.void,
        exif=args.exif,
        train_json=args.train_json,
    )
    write_table(index.images, args.images_out)
    if args.annotations_out:
        write_table(index.annotations, args.annotations_out)
    write_table(index.skipped, args.skipped_out)
    return f"{args.split}: {len(index.images)} images"


def merge_splits(args: MergeArgs) -> str:
    images = merge_tables(args.images, args.images_out)
    merge_tables(args.skipped, args.skipped_out)
    return images.groupby("split").size().to_string()


def main(argv=None) -> None:
    run_commands(
        {
            "split": (index_one_split, SplitArgs, SplitArgs.__doc__.split("\n")[0]),
            "merge": (merge_splits, MergeArgs, MergeArgs.__doc__.split("\n")[0]),
        },
        argv,
        "Validate and index one split of a COCO dataset, or merge the splits' tables.",
        (DataError,),
        report=str,
    )


if __name__ == "__main__":
    main()
