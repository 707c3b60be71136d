"""A synthetic COCO dataset in the recycling-trash competition layout, with known label noise.

The demo has to exercise everything a real competition does, so it is learnable but not
trivial: each class has its own shape family, colour and texture; look-alike classes share
colours (Plastic vs Plastic bag, Paper vs Styrofoam); objects overlap and cast shadows;
backgrounds are cluttered with unlabelled things; each batch folder has its own lighting
(so grouping by folder matters); class frequencies are imbalanced like the real set.

A fixed fraction of training images gets one injected label error (class swapped, object
missing, polygon shifted, polygon bloated). The truth -- the noise manifest, the clean
training labels and the test annotations -- goes to ``truth/``, which no training or
prediction step reads.

Layout written under ``out``::

    batch_01/0000.jpg ...        images (train and test share the batch folders)
    train_all.json train.json val.json test.json sample_submission.csv
    truth/noise.csv truth/train_all_clean.json truth/test.json truth/summary.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from segflow.coco import annotation_rle
from segflow.io import write_json, write_table
from segflow.settings import DEMO_NOISE_KINDS, DemoSettings
from segflow.step_cli import arg, run_step


@dataclass(frozen=True)
class Look:
    """How one class looks: shape family, RGB colour, texture, frequency, size, opacity."""

    shape: str
    color: tuple[int, int, int]
    texture: str
    frequency: float  # relative share of object instances
    size: tuple[float, float]  # object diameter as a fraction of the image side
    alpha: float = 1.0
    lookalike: int = 0  # 1-based class this one is most often confused with


# One look per foreground class, in the order of the competition's class list. A dataset
# with more classes reuses them with shifted colours.
LOOKS = (
    Look(
        "blob", (118, 104, 88), "mottled", 0.14, (0.18, 0.34), lookalike=3
    ),  # General trash
    Look("sheet", (232, 229, 216), "lines", 0.27, (0.22, 0.40), lookalike=7),  # Paper
    Look("box", (196, 166, 118), "band", 0.06, (0.18, 0.32), lookalike=1),  # Paper pack
    Look("can", (168, 174, 186), "specular", 0.06, (0.14, 0.26), lookalike=1),  # Metal
    Look(
        "bottle", (62, 138, 84), "glossy", 0.06, (0.20, 0.36), alpha=0.7, lookalike=6
    ),  # Glass
    Look(
        "bottle", (176, 206, 228), "glossy", 0.12, (0.20, 0.36), alpha=0.8, lookalike=8
    ),  # Plastic
    Look(
        "tray", (244, 244, 240), "speckle", 0.07, (0.18, 0.34), lookalike=2
    ),  # Styrofoam
    Look(
        "blob", (196, 212, 226), "wrinkles", 0.18, (0.30, 0.52), alpha=0.9, lookalike=6
    ),  # Plastic bag
    Look(
        "capsule", (38, 38, 44), "battery", 0.02, (0.09, 0.14), lookalike=4
    ),  # Battery
    Look("cloth", (170, 40, 60), "plaid", 0.02, (0.32, 0.50), lookalike=8),  # Clothing
)


def make_demo(
    out: str | Path,
    classes: list[str],
    *,
    seed: int,
    train_images: int,
    test_images: int,
    size: int,
    batches: int,
    noise_rate: float,
    val_fraction: float = 0.2,
) -> dict:
    """Write the demo dataset under ``out`` and return its summary (counts, noise)."""
    out = Path(out)
    looks = [_look_for(k) for k in range(len(classes) - 1)]
    categories = [
        {"id": k, "name": name, "supercategory": name}
        for k, name in enumerate(classes[1:], start=1)
    ]
    batch_names = [f"batch_{b + 1:02d}" for b in range(batches)]
    batch_styles = [
        _batch_style(np.random.default_rng([seed, 7, b])) for b in range(batches)
    ]
    per_batch_count = [0] * batches

    def render_split(split_code: int, n: int) -> tuple[list[dict], list[dict]]:
        images, annotations = [], []
        for i in range(n):
            rng = np.random.default_rng([seed, split_code, i])
            b = int(rng.integers(batches))
            file_name = f"{batch_names[b]}/{per_batch_count[b]:04d}.jpg"
            per_batch_count[b] += 1
            picture, objects = _render_image(rng, size, looks, batch_styles[b])
            path = out / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(
                str(path),
                cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 92],
            ):
                raise OSError(f"could not write {path}")
            images.append(
                {"id": i, "file_name": file_name, "width": size, "height": size}
            )
            for polygon, category_id in objects:
                annotations.append(
                    _annotation(len(annotations), i, category_id, polygon, size)
                )
        return images, annotations

    train_imgs, train_anns = render_split(0, train_images)
    test_imgs, test_anns = render_split(1, test_images)

    noisy_anns, manifest = _inject_noise(
        np.random.default_rng([seed, 3]),
        train_imgs,
        train_anns,
        looks,
        noise_rate,
        size,
    )

    def coco(images, annotations):
        return {
            "info": {"description": "segflow demo dataset", "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }

    split_rng = np.random.default_rng([seed, 5])
    val_ids = set(
        split_rng.permutation(train_images)[
            : int(round(val_fraction * train_images))
        ].tolist()
    )
    in_val = lambda image_id: image_id in val_ids  # noqa: E731

    write_json(coco(train_imgs, train_anns), out / "truth" / "train_all_clean.json")
    write_json(coco(test_imgs, test_anns), out / "truth" / "test.json")
    write_table(manifest, out / "truth" / "noise.csv")
    summary = _summary(
        classes,
        train_imgs,
        noisy_anns,
        test_imgs,
        test_anns,
        manifest,
        seed,
        size,
        batches,
    )
    write_json(summary, out / "truth" / "summary.json")
    # The published files last: their presence means the dataset is complete.
    write_json(
        coco(
            [im for im in train_imgs if not in_val(im["id"])],
            [a for a in noisy_anns if not in_val(a["image_id"])],
        ),
        out / "train.json",
    )
    write_json(
        coco(
            [im for im in train_imgs if in_val(im["id"])],
            [a for a in noisy_anns if in_val(a["image_id"])],
        ),
        out / "val.json",
    )
    write_json(coco(test_imgs, []), out / "test.json")
    write_table(
        pd.DataFrame(columns=["image_id", "PredictionString"]),
        out / "sample_submission.csv",
    )
    write_json(coco(train_imgs, noisy_anns), out / "train_all.json")
    return summary


def _look_for(k: int) -> Look:
    look = LOOKS[k % len(LOOKS)]
    if k < len(LOOKS):
        return look
    shift = 37 * (k // len(LOOKS))  # extra classes: same families, other colours
    color = tuple(int((c + shift * (j + 1)) % 256) for j, c in enumerate(look.color))
    return Look(
        look.shape,
        color,
        look.texture,
        look.frequency,
        look.size,
        look.alpha,
        look.lookalike,
    )


def _batch_style(rng) -> dict:
    """Lighting and background palette shared by one batch folder (the group effect)."""
    return {
        "floor": rng.uniform(60, 200, 3),
        "wall": rng.uniform(60, 200, 3),
        "gain": rng.uniform(0.8, 1.15),
        "cast": rng.uniform(-12, 12, 3),
    }


def _render_image(
    rng, size: int, looks: list[Look], style: dict
) -> tuple[np.ndarray, list]:
    """One RGB uint8 picture and its objects as (polygon, category_id), painted in mask order."""
    canvas = _background(rng, size, style)
    frequencies = np.array([look.frequency for look in looks])
    n_objects = int(min(1 + rng.poisson(2.2), 7))
    objects = []
    for _ in range(n_objects):
        k = int(rng.choice(len(looks), p=frequencies / frequencies.sum()))
        look = looks[k]
        diameter = rng.uniform(*look.size) * size
        center = rng.uniform(0.12, 0.88, 2) * size
        angle = rng.uniform(0, np.pi)
        polygon = _clip(
            _shape(look.shape, rng, diameter) @ _rotation(angle).T + center, size
        )
        objects.append((polygon, k + 1, angle, diameter))

    regions = [
        mask_utils.decode(annotation_rle([p.ravel().tolist()], size, size)).astype(bool)
        for p, *_ in objects
    ]
    # Paint larger objects first so smaller ones end up on top: the same overlap rule as the
    # masks (segflow.coco), so the picture and the rasterized label agree.
    order = sorted(range(len(objects)), key=lambda i: -regions[i].sum())
    for i in order:
        polygon, category_id, angle, diameter = objects[i]
        look = looks[category_id - 1]
        shadow = np.roll(regions[i], (2, 2), axis=(0, 1))
        canvas[shadow] *= 0.72
        texture = _texture(look, rng, size, angle, diameter, polygon.mean(axis=0))
        canvas[regions[i]] = (
            look.alpha * texture[regions[i]] + (1 - look.alpha) * canvas[regions[i]]
        )
    canvas = canvas * style["gain"] + style["cast"] + rng.normal(0, 4, canvas.shape)
    picture = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        picture = cv2.GaussianBlur(picture, (3, 3), 0)
    return picture, [(objects[i][0], objects[i][1]) for i in order]


def _background(rng, size: int, style: dict) -> np.ndarray:
    """Floor-to-wall gradient, blotchy low-frequency noise and unlabelled clutter."""
    t = np.linspace(0, 1, size)[:, None, None]
    canvas = (1 - t) * style["wall"] + t * style["floor"] + np.zeros((size, size, 3))
    blotches = cv2.resize(
        rng.normal(0, 18, (6, 6, 3)), (size, size), interpolation=cv2.INTER_CUBIC
    )
    canvas = canvas + blotches
    for _ in range(int(rng.integers(5, 14))):
        # Clutter: sometimes in a class's colour, so colour alone never decides the class.
        if rng.random() < 0.3:
            color = np.array(
                LOOKS[int(rng.integers(len(LOOKS)))].color, float
            ) * rng.uniform(0.7, 1.0)
        else:
            color = rng.uniform(30, 220, 3)
        p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(
                canvas,
                tuple(map(int, p)),
                tuple(map(int, q)),
                color.tolist(),
                int(rng.integers(1, 3)),
            )
        elif kind == 1:
            cv2.circle(
                canvas,
                tuple(map(int, p)),
                int(rng.integers(2, max(3, size // 16))),
                color.tolist(),
                -1,
            )
        else:
            cv2.rectangle(
                canvas,
                tuple(map(int, p)),
                tuple(map(int, p + rng.integers(2, max(3, size // 10), 2))),
                color.tolist(),
                -1,
            )
    return canvas


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _ellipse(n: int, rx: float, ry: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _rounded_rect(w: float, h: float, r: float, per_corner: int = 4) -> np.ndarray:
    points = []
    for cx, cy, start in (
        (w / 2 - r, h / 2 - r, 0),
        (-w / 2 + r, h / 2 - r, 90),
        (-w / 2 + r, -h / 2 + r, 180),
        (w / 2 - r, -h / 2 + r, 270),
    ):
        for a in np.deg2rad(np.linspace(start, start + 90, per_corner)):
            points.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return np.array(points)


def _shape(family: str, rng, d: float) -> np.ndarray:
    """A polygon (K, 2) centred on the origin, about ``d`` across, of the given family."""
    r = d / 2
    if family == "blob":  # irregular lump: smoothed random radius per angle
        n = 16
        noise = np.convolve(np.tile(rng.normal(0, 1, n), 3), np.ones(3) / 3, "same")[
            n : 2 * n
        ]
        radii = r * (1 + 0.22 * noise)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    if family == "sheet":  # a sheet of paper, slightly out of square
        h = r * rng.uniform(0.6, 0.8)
        return np.array([[-r, -h], [r, -h], [r, h], [-r, h]]) + rng.normal(
            0, 0.05 * r, (4, 2)
        )
    if family == "box":  # a carton seen at an angle: a squashed hexagon
        return _ellipse(6, r, 0.8 * r)
    if family == "can":
        return _rounded_rect(d, d * rng.uniform(0.5, 0.65), 0.12 * d)
    if family == "bottle":  # body, shoulders, neck
        bw, nw, body, neck = 0.38 * r, 0.14 * r, 0.55 * r, r
        return np.array(
            [
                [-body, -bw],
                [0.45 * r, -bw],
                [0.7 * r, -nw],
                [neck, -nw],
                [neck, nw],
                [0.7 * r, nw],
                [0.45 * r, bw],
                [-body, bw],
            ]
        ) - [0.1 * r, 0]
    if family == "tray":
        return _rounded_rect(d, d * rng.uniform(0.7, 0.95), 0.15 * d)
    if family == "capsule":
        return _rounded_rect(d, 0.4 * d, 0.15 * d)
    if family == "cloth":  # folds: alternating radii
        n = 14
        t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.normal(0, 0.08, n)
        radii = r * np.where(
            np.arange(n) % 2 == 0, rng.uniform(0.85, 1.0, n), rng.uniform(0.55, 0.75, n)
        )
        return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    raise ValueError(f"unknown shape family {family!r}")


def _clip(polygon: np.ndarray, size: int) -> np.ndarray:
    return np.clip(polygon, 0, size - 1).round(1)


def _texture(
    look: Look, rng, size: int, angle: float, diameter: float, center: np.ndarray
) -> np.ndarray:
    """A full-frame (H, W, 3) float texture for one object, aligned with its rotation."""
    y, x = np.mgrid[0:size, 0:size].astype(float)
    u = (x - center[0]) * np.cos(angle) + (y - center[1]) * np.sin(
        angle
    )  # along the object
    v = -(x - center[0]) * np.sin(angle) + (y - center[1]) * np.cos(angle)  # across it
    color = np.array(look.color, float) * rng.uniform(0.88, 1.08) + rng.normal(0, 6, 3)
    tex = np.broadcast_to(color, (size, size, 3)).copy()
    shade = np.zeros((size, size))
    if look.texture == "mottled":
        shade = cv2.resize(
            rng.normal(0, 28, (8, 8)), (size, size), interpolation=cv2.INTER_CUBIC
        ) + rng.normal(0, 8, (size, size))
    elif look.texture == "lines":  # printed text lines
        shade = np.where((v % 5) < 1.2, -80.0, 0.0) * (np.abs(u) < diameter * 0.38)
    elif look.texture == "band":
        tex[np.abs(v) < diameter * 0.12] = rng.uniform(40, 200, 3)
    elif look.texture == "specular":
        shade = 70 * np.exp(-(((v - 0.1 * diameter) / (0.08 * diameter)) ** 2)) - 25
    elif look.texture == "glossy":
        shade = 90 * np.exp(-(((v + 0.08 * diameter) / (0.04 * diameter + 0.5)) ** 2))
    elif look.texture == "speckle":
        shade = np.where(rng.random((size, size)) < 0.08, -45.0, 0.0)
    elif look.texture == "wrinkles":
        phase = rng.uniform(0, 2 * np.pi, 2)
        shade = 22 * np.sin(u / 2.3 + phase[0]) * np.sin(v / 3.1 + phase[1]) - 10 * (
            np.abs(np.sin(u / 4.0 + v / 6.0)) < 0.12
        )
    elif look.texture == "battery":
        tex[u > diameter * 0.28] = (205, 170, 60)
    elif look.texture == "plaid":
        tex = np.broadcast_to(rng.uniform(30, 230, 3), (size, size, 3)).copy()
        shade = 45 * ((np.floor(u / 4) % 2) + (np.floor(v / 4) % 2)) - 45
    return tex + shade[..., None]


def _annotation(
    ann_id: int, image_id: int, category_id: int, polygon: np.ndarray, size: int
) -> dict:
    segmentation = [polygon.ravel().tolist()]
    rle = annotation_rle(segmentation, size, size)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(category_id),
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [round(float(v), 1) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def _inject_noise(rng, images, annotations, looks, noise_rate: float, size: int):
    """Give ``noise_rate`` of the images one label error each; return the noisy list
    and the manifest."""
    by_image: dict[int, list[int]] = {}
    for index, ann in enumerate(annotations):
        # Only objects big enough to matter: an error on a 3-pixel sliver is not detectable.
        if ann["area"] >= 0.01 * size * size:
            by_image.setdefault(ann["image_id"], []).append(index)
    candidates = sorted(by_image)
    n_noisy = min(int(round(noise_rate * len(images))), len(candidates))
    chosen = rng.permutation(candidates)[:n_noisy]
    kinds = [
        DEMO_NOISE_KINDS[i % len(DEMO_NOISE_KINDS)] for i in range(n_noisy)
    ]  # balanced kinds
    noisy = [dict(a) for a in annotations]
    removed, rows = set(), []
    file_names = {im["id"]: im["file_name"] for im in images}
    n_classes = len(looks)
    for image_id, kind in zip(chosen.tolist(), rng.permutation(kinds).tolist()):
        index = int(rng.choice(by_image[image_id]))
        ann = noisy[index]
        before = ann["category_id"]
        polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
        if kind == "class_swap":
            lookalike = looks[before - 1].lookalike
            if (
                rng.random() < 0.6
                and lookalike != before
                and 1 <= lookalike <= n_classes
            ):
                ann["category_id"] = lookalike
            else:
                ann["category_id"] = int(
                    rng.choice([c for c in range(1, n_classes + 1) if c != before])
                )
        elif kind == "missing":
            removed.add(index)
        else:
            center = polygon.mean(axis=0)
            extent = polygon.max(axis=0) - polygon.min(axis=0)
            if kind == "shifted":
                direction = _rotation(rng.uniform(0, 2 * np.pi)) @ np.array([1.0, 0.0])
                polygon = polygon + direction * rng.uniform(0.35, 0.55) * extent.mean()
            else:
                polygon = center + (polygon - center) * rng.uniform(1.45, 1.75)
            rebuilt = _annotation(
                ann["id"], image_id, before, _clip(polygon, size), size
            )
            ann.update(
                segmentation=rebuilt["segmentation"],
                area=rebuilt["area"],
                bbox=rebuilt["bbox"],
            )
        rows.append(
            {
                "image_id": file_names[image_id],
                "coco_image_id": image_id,
                "annotation_id": ann["id"],
                "kind": kind,
                "category_before": before,
                "category_after": ann["category_id"] if kind != "missing" else None,
            }
        )
    manifest = pd.DataFrame(
        rows,
        columns=[
            "image_id",
            "coco_image_id",
            "annotation_id",
            "kind",
            "category_before",
            "category_after",
        ],
    )
    manifest["category_after"] = manifest["category_after"].astype(
        "Int64"
    )  # empty for "missing"
    return [a for i, a in enumerate(noisy) if i not in removed], manifest.sort_values(
        "coco_image_id", ignore_index=True
    )


def _summary(
    classes, train_imgs, train_anns, test_imgs, test_anns, manifest, seed, size, batches
) -> dict:
    def per_class(anns):
        counts = np.bincount([a["category_id"] for a in anns], minlength=len(classes))
        return {classes[k]: int(counts[k]) for k in range(1, len(classes))}

    return {
        "seed": seed,
        "size": size,
        "batches": batches,
        "train_images": len(train_imgs),
        "test_images": len(test_imgs),
        "train_objects_per_class": per_class(train_anns),
        "test_objects_per_class": per_class(test_anns),
        "noisy_images": int(len(manifest)),
        "noise_rate": round(len(manifest) / max(1, len(train_imgs)), 4),
        "noise_kinds": {
            k: int((manifest["kind"] == k).sum()) for k in DEMO_NOISE_KINDS
        },
    }


@dataclass(frozen=True, kw_only=True)
class DemoArgs:
    """What the demo step writes and is set by (its command line: step_cli)."""

    out: Path = arg("dataset root to write")
    classes: list[str] = arg(
        "JSON list of class names, background first", parse=json.loads
    )
    settings: DemoSettings = arg(
        "JSON of the demo settings",
        parse=lambda text: DemoSettings.from_json(text, "--settings"),
    )


def write_demo(args: DemoArgs) -> dict:
    return make_demo(args.out, args.classes, **args.settings.to_dict())


def main(argv=None) -> None:
    run_step(
        write_demo,
        DemoArgs,
        argv,
        __doc__.split("\n")[0],
        (ValueError,),
        report=lambda summary: json.dumps(summary, indent=2),
    )


if __name__ == "__main__":
    main()
