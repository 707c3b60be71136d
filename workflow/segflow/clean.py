"""Label-noise cleaning: find suspicious labels from honest out-of-fold predictions.

Every labelled image was predicted by a model that never trained on it (OOF), so where a
confident OOF prediction and the label disagree, the label is suspect. "Confident" is
per class, as in confident learning (Northcutt et al.): the threshold of class k is its
mean self-confidence, the mean OOF probability of k over the pixels labelled k. A pixel
is a label issue when its label's probability is below that label's threshold and some
other class reaches its own threshold (the most probable such class is the suggested
label). A class the model has not learnt (threshold below ``min_class_confidence``) is
never confident and its annotations are not judged: the judge is only as good as the
OOF model. Scored at the stored probability size:

- per image: the IoU between OOF prediction and label over the classes in either
  (segflow.metrics.image_iou), and the share of issue pixels;
- per annotation (its visible pixels, from the index's instance maps): ``issue_share``,
  the share of its pixels that are issues, flagged at ``issue_share`` or more; also its
  ``agreement`` (share predicted as its class), ``own_probability`` and the suggested
  other class. A swapped class, a shifted or a bloated polygon all raise the issue share
  even when the rest of the image is right. Suspected kind: ``class`` when the suggested
  label is another object class, else ``region`` (the polygon is off: shifted, bloated);
  objects smaller than ``min_region`` of the image are not judged;
- missed objects: connected regions of issue pixels labelled background whose suggested
  label is an object class, flagged when at least ``missed_region`` of the image (after
  a small opening, so the rims where prediction and label outlines differ do not count).

An image is flagged when its IoU is below ``iou_below``, when it is among the
``worst_fraction`` lowest IoUs, or when it holds a flagged annotation or missed region.

Actions on flagged images, for the next round's training set: ``drop``: the image leaves
it; ``relabel``: in the flagged regions (flagged annotations, missed regions and, for an
image flagged by IoU, its issue pixels) issue pixels take the suggested label, pixels
whose label is confidently predicted keep it, the rest become 255; ``ignore``: the
flagged regions become 255 (ignored by the loss); ``none``: report only.

Writes under ``out_dir``: scores.csv (level image / annotation / region), flags.csv (the
flagged rows, with the suspected kind and the action), images.csv (one row per labelled
image: flagged, reasons, action, train), dropped.txt (image ids that leave training),
masks/ (the cleaned class masks of every labelled image, by coco id), summary.json (with
the class thresholds), and a gallery of the worst flagged images: gallery.html and
gallery/*.png.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segflow.ensemble import MemberProbabilities
from segflow.index import instance_file, mask_file, resize_label
from segflow.io import atomic_dir, atomic_path, write_ids, write_json, write_table
from segflow.metrics import IGNORE_INDEX, image_iou
from segflow.oof_score import OofError, load_label

ACTIONS = ("drop", "relabel", "ignore", "none")
SCORE_COLUMNS = [
    "level",
    "image_id",
    "annotation_id",
    "region",
    "class_index",
    "pixels",
    "iou",
    "issue_share",
    "agreement",
    "own_probability",
    "other_class",
    "other_probability",
    "bbox",
    "flagged",
    "suspected",
]


@dataclass(frozen=True)
class CleanSettings:
    """Thresholds of the flags and the action (the config's ``clean`` section)."""

    action: str = "ignore"
    iou_below: float | None = None
    worst_fraction: float | None = None
    issue_share: float = 0.3
    min_class_confidence: float = 0.2
    min_region: float = 0.005
    missed_region: float = 0.02

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(
                f"clean.action must be one of {ACTIONS}, got {self.action!r}"
            )
        if self.worst_fraction is not None and not 0 <= self.worst_fraction <= 1:
            raise ValueError(
                f"clean.worst_fraction must lie in [0, 1], got {self.worst_fraction}"
            )


@dataclass
class ImageScores:
    """Scores and maps of one image at the probability size (see module doc)."""

    image: dict
    annotations: list[dict]
    regions: list[dict]
    label: np.ndarray  # (h, w) the label it was scored on
    instances: np.ndarray  # (h, w) its instance map
    prediction: np.ndarray  # (h, w) uint8 OOF argmax
    issue: np.ndarray  # (h, w) bool: label issue pixels
    suggested: np.ndarray  # (h, w) uint8: the confident other class (where issue)
    supported: (
        np.ndarray
    )  # (h, w) bool: the label's own probability reaches its threshold
    missed: np.ndarray  # (h, w) bool: the flagged missed regions


def self_confidence_sums(
    label: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of p_k over the pixels labelled k, their count) per class k, for class_thresholds."""
    n_classes = probabilities.shape[0]
    labelled = label != IGNORE_INDEX
    own = np.take_along_axis(
        probabilities, np.where(labelled, label, 0)[None].astype(np.int64), axis=0
    )[0]
    return (
        np.bincount(
            label[labelled].ravel(), weights=own[labelled].ravel(), minlength=n_classes
        )[:n_classes],
        np.bincount(label[labelled].ravel(), minlength=n_classes)[:n_classes],
    )


def score_image(
    image_id: str,
    label: np.ndarray,
    instances: np.ndarray,
    probabilities: np.ndarray,
    annotations: pd.DataFrame,
    thresholds: np.ndarray,
    settings: CleanSettings,
    scale: tuple[float, float] = (1.0, 1.0),
) -> ImageScores:
    """Score one image. ``label`` and ``instances`` are at the size of ``probabilities`` (C, h, w);
    ``annotations`` are the image's rows of annotations.parquet, in order (instance value
    k + 1 is its k-th row); ``thresholds`` the classes' mean self-confidence; ``scale``
    (x, y) maps region boxes to image pixels."""
    n_classes = probabilities.shape[0]
    thresholds = np.asarray(thresholds, np.float64)
    learnt = thresholds >= settings.min_class_confidence
    prediction = probabilities.argmax(axis=0).astype(np.uint8)
    labelled = label != IGNORE_INDEX
    safe_label = np.where(labelled, label, 0).astype(np.int64)
    own = np.take_along_axis(probabilities, safe_label[None], axis=0)[0]
    above = probabilities >= np.where(learnt, thresholds, np.inf)[:, None, None]
    np.put_along_axis(
        above, safe_label[None], False, axis=0
    )  # another class than the label
    suggested = np.where(above, probabilities, -1.0).argmax(axis=0).astype(np.uint8)
    supported = own >= thresholds[safe_label]
    issue = above.any(axis=0) & ~supported & labelled
    min_pixels = max(1.0, settings.min_region * label.size)

    annotation_rows = []
    for position, (annotation_id, class_index) in enumerate(
        zip(annotations["annotation_id"], annotations["class_index"])
    ):
        region = instances == position + 1
        pixels = int(region.sum())
        row = {
            "level": "annotation",
            "image_id": image_id,
            "annotation_id": int(annotation_id),
            "class_index": int(class_index),
            "pixels": pixels,
            "flagged": False,
        }
        if pixels >= min_pixels and learnt[class_index]:
            issue_share = float(issue[region].mean())
            if issue[region].any():
                other = int(
                    np.bincount(suggested[region & issue], minlength=n_classes).argmax()
                )
            else:
                others = probabilities[:, region].mean(axis=1)
                others[class_index] = -1.0
                other = int(others.argmax())
            flagged = issue_share >= settings.issue_share
            row.update(
                issue_share=issue_share,
                agreement=float((prediction[region] == class_index).mean()),
                own_probability=float(own[region].mean()),
                other_class=other,
                other_probability=float(probabilities[other][region].mean()),
                flagged=flagged,
                suspected=("class" if other != 0 else "region") if flagged else None,
            )
        annotation_rows.append(row)

    # Missed objects: issue pixels on labelled background that a confident object class claims.
    candidate = (issue & (label == 0) & (suggested != 0)).astype(np.uint8)
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n_components, components, stats, _ = cv2.connectedComponentsWithStats(
        candidate, connectivity=8
    )
    missed = np.zeros(label.shape, bool)
    region_rows = []
    for k in range(1, n_components):
        pixels = int(stats[k, cv2.CC_STAT_AREA])
        if pixels < max(1.0, settings.missed_region * label.size):
            continue
        inside = components == k
        missed |= inside
        claimed = int(np.bincount(suggested[inside], minlength=n_classes).argmax())
        x, y, w, h = (float(v) for v in stats[k, :4])
        box = (x * scale[0], y * scale[1], w * scale[0], h * scale[1])
        region_rows.append(
            {
                "level": "region",
                "image_id": image_id,
                "region": len(region_rows),
                "class_index": claimed,
                "pixels": pixels,
                "other_class": claimed,
                "other_probability": float(probabilities[claimed][inside].mean()),
                "bbox": " ".join(f"{v:.0f}" for v in box),
                "flagged": True,
                "suspected": "missing",
            }
        )

    image_row = {
        "level": "image",
        "image_id": image_id,
        "pixels": int(label.size),
        "iou": image_iou(label, prediction, n_classes),
        "issue_share": float(issue.mean()),
        "flagged": False,
        "suspected": None,
    }
    return ImageScores(
        image_row,
        annotation_rows,
        region_rows,
        label,
        instances,
        prediction,
        issue,
        suggested,
        supported,
        missed,
    )


def flag_images(
    image_rows: pd.DataFrame,
    annotation_rows: pd.DataFrame,
    region_rows: pd.DataFrame,
    settings: CleanSettings,
) -> pd.Series:
    """Reasons (space separated, empty when clean) per image id; see module doc."""
    reasons = {image_id: [] for image_id in image_rows["image_id"]}
    iou = image_rows.set_index("image_id")["iou"].fillna(1.0)
    if settings.iou_below is not None:
        for image_id in iou.index[iou < settings.iou_below]:
            reasons[image_id].append("low_iou")
    if settings.worst_fraction:
        n_worst = int(round(settings.worst_fraction * len(iou)))
        for image_id in iou.sort_values(kind="stable").index[:n_worst]:
            if "low_iou" not in reasons[image_id]:
                reasons[image_id].append("low_iou")
    for table, reason in ((annotation_rows, "annotation"), (region_rows, "missed")):
        if len(table):
            for image_id in table.loc[
                table["flagged"].astype(bool), "image_id"
            ].unique():
                reasons[image_id].append(reason)
    return pd.Series(
        {image_id: " ".join(r) for image_id, r in reasons.items()}, name="reasons"
    )


def cleaned_mask(
    label: np.ndarray,
    instances: np.ndarray,
    scores: ImageScores,
    flagged_positions: list[int],
    low_iou: bool,
    action: str,
) -> np.ndarray:
    """The label of one flagged image after ``action`` (relabel / ignore), at the label's size."""
    if action in ("drop", "none"):
        return label
    height, width = label.shape

    def full_size(small: np.ndarray) -> np.ndarray:
        if small.shape == label.shape:
            return small
        return cv2.resize(
            small.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        )

    region = (
        scores.missed | scores.issue if low_iou else scores.missed
    )  # IoU alone blames no object: its issue pixels
    region = full_size(region).astype(bool)
    for position in flagged_positions:
        region |= instances == position + 1
    out = label.copy()
    if action == "ignore":
        out[region] = IGNORE_INDEX
    else:  # relabel: issue -> suggested label; confidently supported -> kept; the rest -> 255
        issue, supported = (
            full_size(scores.issue).astype(bool),
            full_size(scores.supported).astype(bool),
        )
        relabelled = np.where(
            issue, full_size(scores.suggested), np.where(supported, label, IGNORE_INDEX)
        ).astype(np.uint8)
        out[region] = relabelled[region]
    return out


def load_instances(masks_dir: str | Path, coco_id: int) -> np.ndarray:
    instances = cv2.imread(str(instance_file(masks_dir, coco_id)), cv2.IMREAD_UNCHANGED)
    if instances is None:
        raise FileNotFoundError(
            f"instance map of image {coco_id} missing under {masks_dir} (rebuild results/data with this segflow)"
        )
    return instances


def open_oof(sources: dict[str, list[str | Path]]) -> list[MemberProbabilities]:
    """OOF readers of the source: one per member (e.g. a model's seeds), averaged equally."""
    return [
        MemberProbabilities(name, dirs, "oof") for name, dirs in sorted(sources.items())
    ]


def clean(
    *,
    sources: dict[str, list[str | Path]],
    images_path: str | Path,
    annotations_path: str | Path,
    masks_dir: str | Path,
    image_root: str | Path,
    classes: list[str],
    out_dir: str | Path,
    settings: CleanSettings,
    gallery: int = 12,
    chunk: int = 16,
) -> dict:
    """Score, flag and clean every labelled image; see module doc for what is written."""
    out_dir = Path(out_dir)
    images = pd.read_parquet(images_path)
    labelled = images[images["split"] == "train"].set_index("image_id")
    annotations = pd.read_parquet(annotations_path)
    by_image = {
        image_id: rows for image_id, rows in annotations.groupby("image_id", sort=False)
    }
    readers = open_oof(sources)
    for reader in readers:
        oof_ids = set(reader.rows)
        unknown = sorted(oof_ids - set(labelled.index))
        missing = sorted(set(labelled.index) - oof_ids)
        if unknown or missing:
            raise OofError(
                f"OOF source {reader.name}: its image ids do not match the index"
                f" ({len(unknown)} unknown, e.g. {unknown[:3]}; {len(missing)} labelled images without OOF, e.g. {missing[:3]})"
            )
    size = readers[0].shape[-1]
    empty_annotations = annotations.iloc[:0]

    def probabilities_of(ids: list[str]) -> np.ndarray:
        return sum(reader.get(ids) for reader in readers) / len(readers)

    image_ids = list(labelled.index)

    def labels_of(image_id):
        coco_id = labelled.at[image_id, "coco_id"]
        return load_label(masks_dir, coco_id, size), resize_label(
            load_instances(masks_dir, coco_id), size
        )

    # 1. The class thresholds: mean self-confidence over every labelled pixel (one streamed pass).
    sums, counts = np.zeros(len(classes)), np.zeros(len(classes))
    for start in range(0, len(image_ids), chunk):
        ids = image_ids[start : start + chunk]
        for image_id, probabilities in zip(ids, probabilities_of(ids)):
            image_sums, image_counts = self_confidence_sums(
                labels_of(image_id)[0], probabilities
            )
            sums, counts = sums + image_sums, counts + image_counts
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)

    # 2. Score every labelled image (another streamed pass).
    image_rows, annotation_rows, region_rows = [], [], []
    for start in range(0, len(image_ids), chunk):
        ids = image_ids[start : start + chunk]
        for image_id, probabilities in zip(ids, probabilities_of(ids)):
            label, instances = labels_of(image_id)
            scale = (
                labelled.at[image_id, "width"] / size,
                labelled.at[image_id, "height"] / size,
            )
            scores = score_image(
                image_id,
                label,
                instances,
                probabilities,
                by_image.get(image_id, empty_annotations),
                thresholds,
                settings,
                scale,
            )
            image_rows.append(scores.image)
            annotation_rows += scores.annotations
            region_rows += scores.regions  # only the table rows are kept, not the maps

    image_table = pd.DataFrame(image_rows)
    annotation_table = pd.DataFrame(annotation_rows, columns=SCORE_COLUMNS)
    region_table = pd.DataFrame(region_rows, columns=SCORE_COLUMNS)
    reasons = flag_images(image_table, annotation_table, region_table, settings)
    image_table["flagged"] = image_table["image_id"].map(reasons).ne("")
    image_table.loc[image_table["flagged"], "suspected"] = image_table["image_id"].map(
        reasons
    )
    scores_table = pd.concat(
        [image_table.reindex(columns=SCORE_COLUMNS), annotation_table, region_table],
        ignore_index=True,
    )
    scores_table = scores_table.astype(
        {
            "annotation_id": "Int64",
            "region": "Int64",
            "class_index": "Int64",
            "other_class": "Int64",
            "flagged": bool,
        }
    )

    def rescore(image_id: str) -> ImageScores:
        """The maps of one image again (cheap; the passes above keep only the tables)."""
        return score_image(
            image_id,
            *labels_of(image_id),
            probabilities_of([image_id])[0],
            by_image.get(image_id, empty_annotations),
            thresholds,
            settings,
        )

    # 3. The next round's labels: cleaned masks of every labelled image, and who is dropped.
    flagged_ids = [i for i in image_ids if reasons[i]]
    flagged_set = set(flagged_ids)
    annotation_table["flagged"] = annotation_table["flagged"].astype(bool)
    positions = annotation_table.groupby(
        "image_id", sort=False
    ).cumcount()  # k: instance value k + 1
    flagged_positions = (
        positions[annotation_table["flagged"]]
        .groupby(annotation_table["image_id"])
        .agg(list)
        .to_dict()
    )
    action = settings.action
    changed = {}
    with atomic_dir(out_dir / "masks") as masks_tmp:
        for image_id in image_ids:
            coco_id = labelled.at[image_id, "coco_id"]
            source = mask_file(masks_dir, coco_id)
            if image_id not in flagged_set or action in ("drop", "none"):
                shutil.copyfile(source, mask_file(masks_tmp, coco_id))
                continue
            scores = rescore(image_id)
            label = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
            new = cleaned_mask(
                label,
                load_instances(masks_dir, coco_id),
                scores,
                flagged_positions.get(image_id, []),
                "low_iou" in reasons[image_id],
                action,
            )
            changed[image_id] = int((new != label).sum())
            if not cv2.imwrite(str(mask_file(masks_tmp, coco_id)), new):
                raise OSError(
                    f"could not write the cleaned mask of image id {coco_id} under {masks_tmp}"
                )

        dropped = flagged_ids if action == "drop" else []
        images_table = pd.DataFrame(
            {
                "image_id": image_ids,
                "coco_id": labelled.loc[image_ids, "coco_id"].to_numpy(),
                "flagged": [bool(reasons[i]) for i in image_ids],
                "reasons": [reasons[i] for i in image_ids],
                "action": [action if reasons[i] else "" for i in image_ids],
                "changed_pixels": [changed.get(i, 0) for i in image_ids],
                "train": [i not in dropped for i in image_ids],
            }
        )
        flags = scores_table[scores_table["flagged"]].assign(
            action=lambda t: np.where(t["level"] == "image", action, "")
        )
        write_table(scores_table, out_dir / "scores.csv")
        write_table(flags, out_dir / "flags.csv")
        write_table(images_table, out_dir / "images.csv")
        write_ids(dropped, out_dir / "dropped.txt")
        worst = (
            image_table[image_table["flagged"]]
            .sort_values("iou", kind="stable")["image_id"]
            .tolist()[:gallery]
        )
        write_gallery(
            worst,
            labelled,
            scores_table,
            flagged_positions,
            rescore,
            out_dir,
            image_root,
            classes,
            size,
            settings.action,
        )
        summary = {
            "sources": sorted(sources),
            "settings": asdict(settings),
            "class_thresholds": {
                name: float(t) for name, t in zip(classes, thresholds)
            },
            "judged_classes": [
                name
                for name, t in zip(classes, thresholds)
                if t >= settings.min_class_confidence
            ],
            "labelled_images": len(image_ids),
            "flagged_images": len(flagged_ids),
            "flagged_share": len(flagged_ids) / max(1, len(image_ids)),
            "flagged_by": {
                reason: int(reasons.str.contains(reason).sum())
                for reason in ("low_iou", "annotation", "missed")
            },
            "flagged_annotations": int(annotation_table["flagged"].sum()),
            "annotations_judged": int(annotation_table["issue_share"].notna().sum()),
            "annotations": len(annotation_table),
            "missed_regions": len(region_table),
            "dropped_images": len(dropped),
            "changed_pixels": int(sum(changed.values())),
            "mean_oof_image_iou": float(image_table["iou"].mean()),
        }
        write_json(summary, out_dir / "summary.json")
    if not flagged_ids:
        print("no image was flagged: the next round trains on the labels as they are")
    return summary


def write_gallery(
    image_ids,
    labelled,
    scores_table,
    flagged_positions,
    rescore,
    out_dir,
    image_root,
    classes,
    size,
    action,
) -> None:
    """gallery/NN_<id>.png (image | label | OOF prediction | flagged region) and gallery.html."""
    from segflow.viz import (
        class_palette,
        data_uri,
        legend_handles,
        overlay,
        plt,
        save_figure,
    )

    palette = class_palette(len(classes))
    entries = []
    with atomic_dir(out_dir / "gallery") as figures_tmp:
        for rank, image_id in enumerate(image_ids, 1):
            picture = cv2.cvtColor(
                cv2.imread(
                    str(Path(image_root) / labelled.at[image_id, "file_name"]),
                    cv2.IMREAD_COLOR,
                ),
                cv2.COLOR_BGR2RGB,
            )
            picture = (
                cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA)
                if picture.shape[:2] != (size, size)
                else picture
            )
            scores = rescore(image_id)
            label, instances = scores.label, scores.instances
            rows = scores_table[scores_table["image_id"] == image_id]
            flagged_region = scores.missed.copy()
            for position in flagged_positions.get(image_id, []):
                flagged_region |= instances == position + 1
            flagged_overlay = picture.copy()
            flagged_overlay[flagged_region] = (
                0.4 * flagged_overlay[flagged_region] + 0.6 * np.array([255, 0, 0])
            ).astype(np.uint8)
            fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
            for ax, shown, title in zip(
                axes,
                [
                    picture,
                    overlay(picture, label, palette),
                    overlay(picture, scores.prediction, palette),
                    flagged_overlay,
                ],
                ["image", "label", "OOF prediction", "flagged (red)"],
            ):
                ax.imshow(shown)
                ax.set_title(title, fontsize=9)
                ax.axis("off")
            image_row = rows[rows["level"] == "image"].iloc[0]
            fig.suptitle(
                f"{image_id}  IoU {image_row['iou']:.2f}  flags: {image_row['suspected']}",
                fontsize=9,
            )
            fig.legend(
                handles=legend_handles(classes, palette),
                loc="lower center",
                ncol=min(6, len(classes)),
                fontsize=7,
                bbox_to_anchor=(0.5, -0.08),
            )
            name = f"{rank:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', str(Path(image_id).with_suffix('')))}.png"  # batch folder kept: names repeat across batches
            png = save_figure(fig, figures_tmp / name)
            entries.append(
                (
                    image_id,
                    image_row,
                    rows[rows["flagged"] & (rows["level"] != "image")],
                    png,
                )
            )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>segflow: label-noise gallery</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
        f"<h1>Worst flagged images ({len(entries)})</h1><p>Sorted by OOF image IoU. Action: <b>{html.escape(action)}</b>.</p>",
    ]
    for image_id, image_row, flagged_rows, png in entries:
        parts.append(
            f"<h3>{html.escape(image_id)}: IoU {image_row['iou']:.3f}, {html.escape(str(image_row['suspected']))}</h3><img src='{data_uri(png)}'>"
        )
        if len(flagged_rows):
            table = flagged_rows[
                [
                    "level",
                    "annotation_id",
                    "region",
                    "class_index",
                    "pixels",
                    "issue_share",
                    "agreement",
                    "other_class",
                    "other_probability",
                    "suspected",
                ]
            ]
            parts.append(
                table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.2f}")
            )
    parts.append("</body></html>")
    with atomic_path(out_dir / "gallery.html") as tmp:
        tmp.write_text("\n".join(parts))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Score labels against out-of-fold predictions; flag and clean them."
    )
    parser.add_argument(
        "--sources",
        required=True,
        help="JSON: source name -> folders holding oof.npy and oof_ids.txt",
    )
    parser.add_argument("--images", required=True)
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--masks-dir", required=True)
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--classes", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument(
        "--settings", required=True, help="JSON of the config's clean section"
    )
    parser.add_argument("--gallery", type=int, default=12)
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    try:
        summary = clean(
            sources=json.loads(args.sources),
            images_path=args.images,
            annotations_path=args.annotations,
            masks_dir=args.masks_dir,
            image_root=args.image_root,
            classes=json.loads(args.classes),
            out_dir=args.out_dir,
            settings=CleanSettings(
                **{
                    k: settings[k]
                    for k in CleanSettings.__dataclass_fields__
                    if k in settings
                }
            ),
            gallery=args.gallery,
        )
    except (OofError, ValueError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "labelled_images",
                    "flagged_images",
                    "flagged_annotations",
                    "missed_regions",
                    "dropped_images",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
