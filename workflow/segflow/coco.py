"""COCO segmentation annotations: strict loading, and the one rasterization to class masks.

Class indices come from the config's class list; COCO category ids are mapped to them
by *name*, so ids need not be contiguous or ordered. What a pixel that no annotation
covers is, is the dataset's choice (``data.unlabelled``): ``background``, the class at
index 0, which needs no COCO category (a category of that name, as some exporters write,
paints class 0 too); or ``ignore``, IGNORE_INDEX (255), for datasets whose labels cover
every object and leave the rest unknown, where every class is a COCO category. Void
categories (``data.void``, by name or id) paint IGNORE_INDEX: their pixels count nowhere,
in no loss and no score.

Overlap rule (the only place it lives): an image's annotations are painted in order of
decreasing pixel area (ties: increasing annotation id), so where objects overlap the
smaller one ends up on top. Large objects such as bags and clothing are often drawn
around small ones (a battery on a bag), and "smaller on top" keeps the small object
instead of burying it. Crowd (RLE) annotations are painted like any other region.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segflow.labels import IGNORE_INDEX, background_class

ON_ERROR = ("stop", "skip")


class DataError(ValueError):
    """Bad input data. The message names the file and the offending image/annotation id."""


@dataclass(frozen=True)
class Problem:
    """One bad item found in the input: what, where, and which id."""

    file: str
    reason: str
    image_id: int | None = None
    annotation_id: int | None = None

    def message(self) -> str:
        where = []
        if self.annotation_id is not None:
            where.append(f"annotation id {self.annotation_id}")
        if self.image_id is not None:
            where.append(f"image id {self.image_id}")
        return f"{self.file}: {', '.join(where) + ': ' if where else ''}{self.reason}"


class ProblemLog:
    """Collects problems; raises on the first one unless ``on_error == "skip"``."""

    def __init__(self, on_error: str = "stop"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.problems: list[Problem] = []

    def report(self, problem: Problem) -> None:
        if self.on_error == "stop":
            raise DataError(
                problem.message() + "  (set data.on_error: skip to skip such items)"
            )
        self.problems.append(problem)


def read_json(path: str | Path) -> dict:
    """Load a COCO JSON file; a malformed file is a DataError naming the file and position."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO file (no 'images' list at the top level)")
    if not isinstance(data.get("categories"), list):
        raise DataError(
            f"{path}: not a COCO file (no 'categories' list at the top level)"
        )
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return data


def class_index_by_category(
    categories: list[dict],
    classes: list[str],
    source: str,
    unlabelled: str = "background",
    void: list | tuple = (),
) -> dict[int, int]:
    """Map COCO category id -> class index (IGNORE_INDEX for a void category), by name,
    through the config's class list.

    Every category must be a class or void, and every class but the background a
    category, or the mapping would silently drop or mislabel objects.
    """
    names = {}
    for cat in categories:
        if (
            not isinstance(cat, dict)
            or not _is_int(cat.get("id"))
            or not isinstance(cat.get("name"), str)
        ):
            raise DataError(
                f"{source}: category {cat!r} needs an integer 'id' and a string 'name'"
            )
        if cat["id"] in names:
            raise DataError(f"{source}: duplicate category id {cat['id']}")
        names[cat["id"]] = cat["name"]
    if len(set(classes)) != len(classes):
        raise DataError(f"config classes: duplicate names in {classes}")
    if len(set(names.values())) != len(names):
        raise DataError(f"{source}: two category ids share one name: {names}")
    void_ids = set()
    for entry in void:
        found = [i for i, name in names.items() if entry in (i, name)]
        if not found:
            raise DataError(
                f"data.void: {entry!r} is neither the name nor the id of a category of"
                f" {source} (categories: {sorted(names.values())})"
            )
        void_ids.update(found)
    background = background_class(unlabelled)
    # The background needs no category; one of its name is accepted and paints it.
    required = [c for k, c in enumerate(classes) if k != background]
    void_names = {names[i] for i in void_ids}
    clash = sorted(void_names & set(classes))
    if clash:
        raise DataError(
            f"data.void: {clash} are also in classes; a category is a class or void"
        )
    labelled = {i: name for i, name in names.items() if i not in void_ids}
    unknown = sorted(set(labelled.values()) - set(classes))
    unused = [c for c in required if c not in set(labelled.values())]
    if unknown or unused:
        where = (
            f"index 0, {classes[0]!r}, is the background, painted where no annotation is"
            if background is not None
            else "data.unlabelled: ignore, so every class is a category"
        )
        hint = (
            " Add the categories to classes, or name them in data.void to ignore their"
            " pixels."
            if unknown
            else ""
        )
        raise DataError(
            f"{source}: categories do not match config 'classes' ({where}): "
            f"categories not in classes: {unknown}; classes not among categories:"
            f" {unused}.{hint}"
        )
    mapping = {i: classes.index(name) for i, name in labelled.items()}
    mapping.update({i: IGNORE_INDEX for i in void_ids})
    return mapping


def check_file_name(file_name: str) -> str | None:
    """Why ``file_name`` is not a safe path under the image root, or None if it is."""
    if not file_name or file_name != file_name.strip():
        return f"file_name {file_name!r} is empty or has surrounding whitespace"
    normalized = posixpath.normpath(file_name.replace("\\", "/"))
    if (
        normalized.startswith("/")
        or normalized == ".."
        or normalized.startswith("../")
        or ":" in normalized.split("/")[0]
    ):
        return f"file_name {file_name!r} escapes the image root"
    return None


@dataclass
class CocoSplit:
    """A validated COCO file: images in file order, their annotations, the class mapping."""

    path: Path
    images: list[dict]
    annotations: dict[int, list[dict]]
    class_of_category: dict[int, int]
    unlabelled: int  # what a pixel no annotation covers is: 0 (background) or 255
    problems: list[Problem] = field(default_factory=list)


def load_coco(
    path: str | Path,
    classes: list[str],
    on_error: str = "stop",
    unlabelled: str = "background",
    void: list | tuple = (),
) -> CocoSplit:
    """Read and validate a COCO segmentation file.

    Checks every image (id, file_name inside the root, positive size, no duplicates) and
    every annotation (known image and category, polygons of >= 3 points, RLE of the image
    size). With ``on_error="stop"`` the first problem raises a DataError naming the file
    and id; with ``"skip"`` the bad item is left out and recorded in ``problems``.
    """
    path = Path(path)
    source = str(path)
    data = read_json(path)
    class_of_category = class_index_by_category(
        data["categories"], classes, source, unlabelled, void
    )
    background = background_class(unlabelled)
    log = ProblemLog(on_error)

    images: list[dict] = []
    by_id: dict[int, dict] = {}
    seen_names: dict[str, int] = {}
    for image in data["images"]:
        image_id = image.get("id") if isinstance(image, dict) else None
        if not _is_int(image_id):
            log.report(
                Problem(source, f"image entry {image!r:.80} has no integer 'id'")
            )
            continue
        if image_id in by_id:
            log.report(Problem(source, "duplicate image id", image_id=image_id))
            continue
        file_name = image.get("file_name")
        reason = (
            "missing 'file_name'"
            if not isinstance(file_name, str)
            else check_file_name(file_name)
        )
        if reason is None and not (
            _is_int(image.get("width")) and _is_int(image.get("height"))
        ):
            reason = "width and height must be integers"
        if reason is None and (image["width"] <= 0 or image["height"] <= 0):
            reason = f"non-positive size {image['width']}x{image['height']}"
        if reason is None and file_name in seen_names:
            reason = f"file_name {file_name!r} is also used by image id {seen_names[file_name]}"
        if reason is not None:
            log.report(Problem(source, reason, image_id=image_id))
            continue
        by_id[image_id] = image
        seen_names[file_name] = image_id
        images.append(image)

    annotations: dict[int, list[dict]] = {image["id"]: [] for image in images}
    seen_annotations: set[int] = set()
    for ann in data.get("annotations", []):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if not _is_int(ann_id):
            log.report(
                Problem(source, f"annotation entry {ann!r:.80} has no integer 'id'")
            )
            continue
        image_id = ann.get("image_id")
        reason = None
        if ann_id in seen_annotations:
            reason = "duplicate annotation id"
        elif image_id not in by_id:
            reason = "refers to an image that does not exist (or was skipped)"
        elif ann.get("category_id") not in class_of_category:
            reason = f"unknown category_id {ann.get('category_id')!r}"
        else:
            image = by_id[image_id]
            reason = check_segmentation(
                ann.get("segmentation"), image["height"], image["width"]
            ) or check_covers_pixels(
                ann["segmentation"], image["height"], image["width"]
            )
        if reason is not None:
            log.report(
                Problem(
                    source,
                    reason,
                    image_id=image_id if _is_int(image_id) else None,
                    annotation_id=ann_id,
                )
            )
            continue
        seen_annotations.add(ann_id)
        annotations[image_id].append(ann)

    return CocoSplit(
        path,
        images,
        annotations,
        class_of_category,
        IGNORE_INDEX if background is None else background,
        log.problems,
    )


def check_segmentation(segmentation, height: int, width: int) -> str | None:
    """Why ``segmentation`` is not a usable polygon list or RLE, or None if it is."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty segmentation"
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon
            ):
                return "polygon must be a flat list of numbers [x1, y1, x2, y2, ...]"
            if len(polygon) % 2:
                return f"polygon has an odd number of coordinates ({len(polygon)})"
            if len(polygon) < 6:
                return f"polygon has {len(polygon) // 2} points; at least 3 are needed"
            if not all(math.isfinite(v) for v in polygon):
                return "polygon has non-finite coordinates"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width]:
            return (
                f"RLE size {size} differs from the image size [{height}, {width}]"
                " (height, width)"
            )
        if not isinstance(counts, (list, str)) or not counts:
            return "RLE needs non-empty 'counts' (list or string)"
        if isinstance(counts, list) and sum(counts) != height * width:
            return (
                f"uncompressed RLE counts sum to {sum(counts)},"
                f" not height*width={height * width}"
            )
        return None
    return f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}"


def check_covers_pixels(segmentation, height: int, width: int) -> str | None:
    """Why a well-formed segmentation is still no object: it covers no pixel of the
    image (a polygon outside it, or of no area), or None."""
    if mask_utils.area(annotation_rle(segmentation, height, width)) == 0:
        return (
            f"the segmentation covers no pixel of the {width}x{height} image"
            " (outside it, or of no area)"
        )
    return None


def annotation_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE for a polygon list, an uncompressed RLE or a compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {
        "size": segmentation["size"],
        "counts": segmentation["counts"].encode("ascii"),
    }


@dataclass
class Rasterized:
    """A class-index mask with, per annotation (input order), its area and visible pixels."""

    mask: np.ndarray  # (H, W) uint8 class indices (IGNORE_INDEX: void, or unlabelled)
    areas: np.ndarray  # (N,) pixels of each annotation's own region
    boxes: np.ndarray  # (N, 4) x, y, width, height of that region (not the JSON's bbox)
    visible: np.ndarray  # (N,) pixels where that annotation is on top
    owner: np.ndarray  # (H, W) int32 index of the annotation on top, -1 on background


def rasterize(
    annotations: list[dict],
    height: int,
    width: int,
    class_of_category: dict[int, int],
    unlabelled: int = 0,
) -> Rasterized:
    """Compose an image's annotations into one class-index mask (overlap rule: see module
    doc); pixels no annotation covers take ``unlabelled`` (0, or IGNORE_INDEX).

    Any number of annotations: areas are taken one RLE at a time (pycocotools' area of a
    list of 256 or more RLEs overflows a uint8 under numpy 2), and the owner map is int32.
    """
    rles = [annotation_rle(a["segmentation"], height, width) for a in annotations]
    areas = np.array([int(mask_utils.area(rle)) for rle in rles], np.int64)
    boxes = np.array([mask_utils.toBbox(rle) for rle in rles], np.float64).reshape(
        -1, 4
    )
    owner = np.full((height, width), -1, np.int32)
    for i in sorted(
        range(len(annotations)), key=lambda i: (-areas[i], annotations[i]["id"])
    ):
        owner[mask_utils.decode(rles[i]).astype(bool)] = i
    classes = np.array(
        [unlabelled] + [class_of_category[a["category_id"]] for a in annotations],
        np.uint8,
    )
    mask = classes[owner + 1]
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(annotations)).astype(
        np.int64
    )
    return Rasterized(mask, areas, boxes, visible, owner)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
