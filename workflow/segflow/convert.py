"""Label-PNG datasets in: images + label PNGs + a class list -> the COCO file segflow reads.

Many public segmentation sets ship each image with a label image whose pixel values are
class indices (CamVid, Pascal VOC, ADE20K, medical sets). ``convert`` writes one COCO
file for a folder of images, losslessly: every connected region (8-connectivity) of
one class becomes one annotation, stored as a compressed RLE (a polygon would move
pixels), with its area and box from the region itself, so segflow's index rasterizes
exactly the label image back. Dense images (hundreds of regions) come out as they are.

- ``classes``: class names in label-value order (value k is ``classes[k]``);
- ``background``: the class whose pixels get no annotation: segflow paints it where no
  annotation is (``data.unlabelled: background``, with this class first in the
  config's list). Without one, every class is a category and the dataset is
  ``data.unlabelled: ignore``;
- ``void``: label values that are no class (e.g. 255, or a value whose class the
  competition does not score): with a background they become
  annotations of a category ``void`` (``data.void: [void]``); without one they are
  left uncovered, which ``data.unlabelled: ignore`` already ignores.

A label value that is neither a class nor void, a label image whose size is neither
the image's stored nor its EXIF-rotated size, an image without a label image: each is
an error naming the file. Without ``--labels`` it writes an image-only COCO file (a
test set), with the same categories when given the same ``--classes``, ``--background``
and ``--void``. The command prints the config lines that read the result.

    python -m segflow.convert --images data/train/images --labels data/train/labels \\
        --classes classes.txt --background road --void 255 --root data --out data/train.json
    python -m segflow.convert --images data/test/images \\
        --classes classes.txt --background road --void 255 --root data --out data/test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from segflow.coco import DataError
from segflow.images import shown_size, stored_orientation
from segflow.io import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOID_CATEGORY = "void"


def read_class_list(text: str) -> list[str]:
    """A JSON list, a file of one name per line (line k: value k), or comma-separated names."""
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines()]
        while names and not names[-1]:
            names.pop()
        return names
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [name.strip() for name in text.split(",")]


def region_annotations(
    label: np.ndarray, values: dict[int, int], first_id: int, image_id: int
) -> list[dict]:
    """One annotation per connected region of each value in ``values`` (label value ->
    category id), as compressed RLE, in value order then region order."""
    annotations = []
    for value, category in sorted(values.items()):
        binary = (label == value).astype(np.uint8)
        if not binary.any():
            continue
        count, regions = cv2.connectedComponents(binary, connectivity=8)
        for region in range(1, count):
            rle = mask_utils.encode(
                np.asfortranarray((regions == region).astype(np.uint8))
            )
            annotations.append(
                {
                    "id": first_id + len(annotations),
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": {
                        "size": [int(v) for v in rle["size"]],
                        "counts": rle["counts"].decode("ascii"),
                    },
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return annotations


def find_label(labels_dir: Path, stem: str, suffix: str) -> Path | None:
    for extension in (".png", ".bmp", ".tif", ".tiff"):
        candidate = labels_dir / f"{stem}{suffix}{extension}"
        if candidate.is_file():
            return candidate
    return None


def convert(
    *,
    images_dir: str | Path,
    out: str | Path,
    root: str | Path | None = None,
    labels_dir: str | Path | None = None,
    classes: list[str] | None = None,
    background: str | None = None,
    void: list[int] = (),
    label_suffix: str = "",
) -> dict:
    """Write the COCO file of the images in ``images_dir`` (see module doc); returns
    counts and the config lines that read it."""
    images_dir = Path(images_dir)
    root = Path(root) if root is not None else images_dir.parent
    pictures = sorted(
        p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not pictures:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = list(classes or [])
    if labels_dir is not None and not classes:
        raise DataError("--classes: the class names in label-value order are needed")
    if background is not None and background not in classes:
        raise DataError(f"--background: {background!r} is not one of --classes")
    void = sorted(set(int(v) for v in void))
    # A void value is no class, whatever name the list gives it.
    named = {v: name for v, name in enumerate(classes) if v not in void}
    if background is not None and background not in named.values():
        raise DataError(f"--background: {background!r} is a --void value")
    # Category ids: 1.. in class order, the background left out; void last.
    objects = [v for v, name in named.items() if name != background]
    category_of_value = {value: k + 1 for k, value in enumerate(objects)}
    categories = [{"id": category_of_value[v], "name": named[v]} for v in objects]
    if void and background is not None:
        void_id = len(categories) + 1
        categories.append({"id": void_id, "name": VOID_CATEGORY})
        category_of_value.update({v: void_id for v in void})
    known = set(named) | set(void)

    coco = {"images": [], "annotations": [], "categories": categories}
    for image_id, picture in enumerate(pictures, start=1):
        file_name = picture.relative_to(root).as_posix()
        stored, orientation = stored_orientation(picture)
        entry = {"id": image_id, "file_name": file_name}
        if labels_dir is None:
            entry["height"], entry["width"] = shown_size(stored, orientation)
            coco["images"].append(entry)
            continue
        stem = picture.relative_to(images_dir).with_suffix("").as_posix()
        label_path = find_label(Path(labels_dir), stem, label_suffix)
        if label_path is None:
            raise DataError(
                f"{picture}: no label image {stem}{label_suffix}.png under {labels_dir}"
            )
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        if label is None or label.ndim != 2:
            raise DataError(
                f"{label_path}: not a single-channel label image (values = classes)"
            )
        if label.shape not in (stored, shown_size(stored, orientation)):
            raise DataError(
                f"{label_path}: {label.shape[1]}x{label.shape[0]} label for the"
                f" {stored[1]}x{stored[0]} image {picture}"
                + (f" (EXIF orientation {orientation})" if orientation != 1 else "")
            )
        values = np.unique(label)
        unknown = sorted(int(v) for v in values if int(v) not in known)
        if unknown:
            raise DataError(
                f"{label_path}: label values {unknown} are neither classes (0.."
                f"{len(classes) - 1}) nor --void"
            )
        entry["height"], entry["width"] = (int(v) for v in label.shape)
        coco["images"].append(entry)
        coco["annotations"] += region_annotations(
            label, category_of_value, len(coco["annotations"]) + 1, image_id
        )

    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(coco), encoding="utf-8")
    config_classes = ([background] if background else []) + [named[v] for v in objects]
    config = {
        "classes": config_classes,
        "data": {
            "root": str(root),
            "unlabelled": "background" if background else "ignore",
            "void": [VOID_CATEGORY] if void and background else [],
        },
    }
    return {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": len(categories),
        "config": config,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Images + label PNGs -> a COCO file segflow reads (lossless)."
    )
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument(
        "--labels", help="folder of label images (same names); none: a test set"
    )
    parser.add_argument(
        "--classes",
        help="class names in label-value order: a file (one per line), a JSON list,"
        " or comma-separated",
    )
    parser.add_argument(
        "--background", help="the class no annotation is written for (e.g. background)"
    )
    parser.add_argument(
        "--void", type=int, nargs="*", default=[], help="label values that are no class"
    )
    parser.add_argument(
        "--label-suffix", default="", help="label name = image stem + this (e.g. _L)"
    )
    parser.add_argument(
        "--root", help="folder file_name is relative to (default: the images' parent)"
    )
    parser.add_argument("--out", required=True, help="the COCO JSON to write")
    args = parser.parse_args(argv)
    try:
        result = convert(
            images_dir=args.images,
            out=args.out,
            root=args.root,
            labels_dir=args.labels,
            classes=read_class_list(args.classes) if args.classes else None,
            background=args.background,
            void=args.void,
            label_suffix=args.label_suffix,
        )
    except (DataError, OSError) as e:
        sys.exit(f"ERROR: {e}")
    print(
        f"wrote {args.out}: {result['images']} images, {result['annotations']}"
        f" annotations, {result['categories']} categories"
    )
    if args.labels:
        print("config.yaml lines that read it:")
        print(json.dumps(result["config"], indent=2))


if __name__ == "__main__":
    main()
