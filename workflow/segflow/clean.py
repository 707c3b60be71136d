"""Label-noise cleaning: score every label against out-of-fold predictions (see
segflow.label_noise), flag images, and write the next round's labels.

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

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import jinja2
import numpy as np
import pandas as pd

from segflow.images import image_file, read_rgb
from segflow.io import atomic_dir, atomic_path, write_ids, write_json, write_table
from segflow.label_noise import (
    SCORE_COLUMNS,
    ImageScores,
    cleaned_mask,
    flag_images,
    score_image,
    self_confidence_sums,
)
from segflow.labels import (
    UNLABELLED,
    background_class,
    mask_file,
    read_instances,
    read_label,
    write_label,
)
from segflow.metrics import confusion_matrix, iou_per_class, mean_iou, per_class_iou
from segflow.probabilities import MemberProbabilities, PredictionError
from segflow.progress import ProgressLine
from segflow.settings import CleanSettings
from segflow.step_cli import arg, run_step
from segflow.tables import pixel_columns
from segflow.viz import (
    class_legend,
    class_palette,
    data_uri,
    overlay,
    plt,
    save_figure,
)

CHUNK = 16  # images whose maps are in memory at once
GALLERY_COLUMNS = [
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


@dataclass(frozen=True)
class CleanOutputs:
    """The files the clean step writes (see module doc)."""

    scores: Path
    flags: Path
    images: Path
    dropped: Path
    masks: Path
    summary: Path
    gallery: Path
    figures: Path


class Judge:
    """The OOF probabilities that judge the labels (sources averaged with equal weights),
    the labels at their size, and the per-class thresholds once they are known."""

    def __init__(
        self, sources: dict[str, list[str]], labelled: pd.DataFrame, masks_dir
    ):
        self.readers = [
            MemberProbabilities(name, files, "oof")
            for name, files in sorted(sources.items())
        ]
        for reader in self.readers:
            oof_ids = set(reader.rows)
            unknown = sorted(oof_ids - set(labelled.index))
            missing = sorted(set(labelled.index) - oof_ids)
            if unknown or missing:
                raise PredictionError(
                    f"OOF source {reader.name}: its image ids do not match the index"
                    f" ({len(unknown)} unknown, e.g. {unknown[:3]}; {len(missing)}"
                    f" labelled images without OOF, e.g. {missing[:3]})"
                )
        self.labelled, self.masks_dir = labelled, masks_dir
        self.size = tuple(self.readers[0].shape[-2:])  # (height, width)
        self.thresholds = None
        self.trusted = None

    def probabilities(self, ids: list[str]) -> np.ndarray:
        return sum(reader.get(ids) for reader in self.readers) / len(self.readers)

    def labels(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(class label, instance map) at the probability size."""
        coco_id = self.labelled.at[image_id, "coco_id"]
        return (
            read_label(self.masks_dir, coco_id, self.size),
            read_instances(self.masks_dir, coco_id, self.size),
        )

    def chunks(self):
        """(image id, its probabilities) of every labelled image, a chunk in memory."""
        image_ids = list(self.labelled.index)
        for start in range(0, len(image_ids), CHUNK):
            ids = image_ids[start : start + CHUNK]
            yield from zip(ids, self.probabilities(ids))


def self_confidence_thresholds(
    judge: Judge, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(each class's mean self-confidence over every pixel labelled with it, the judge's
    OOF confusion matrix: how good it is, class by class), in one streamed pass."""
    sums, counts = np.zeros(n_classes), np.zeros(n_classes)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    for image_id, probabilities in judge.chunks():
        label = judge.labels(image_id)[0]
        image_sums, image_counts = self_confidence_sums(label, probabilities)
        sums, counts = sums + image_sums, counts + image_counts
        confusion += confusion_matrix(label, probabilities.argmax(axis=0), n_classes)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0), confusion


def change_limits(
    changed_images: int,
    changed_pixels: int,
    labelled_images: int,
    labelled_pixels: int,
    settings: CleanSettings,
) -> dict:
    """Whether the labels cleaning would change stay within clean.max_images and
    clean.max_pixels, and what happens if not (clean.over_limit), in words."""
    images_share = changed_images / max(1, labelled_images)
    pixels_share = changed_pixels / max(1, labelled_pixels)
    exceeded = images_share > settings.max_images or pixels_share > settings.max_pixels
    message = (
        f"cleaning ({settings.action}) would change {changed_images} of"
        f" {labelled_images} labelled images ({images_share:.1%}; limit"
        f" clean.max_images {settings.max_images:.0%}) and {pixels_share:.2%} of the"
        f" labelled pixels (limit clean.max_pixels {settings.max_pixels:.0%})"
    )
    if exceeded:
        message += (
            ": over the limit, so the next round trains on the labels as they are"
            " (clean.over_limit: report). A judge that flags this much is more likely"
            " weak than the labels bad: see its OOF quality in results/clean/summary.json"
        )
    return {
        "changed_images": changed_images,
        "changed_images_share": images_share,
        "changed_pixels": changed_pixels,
        "changed_pixels_share": pixels_share,
        "max_images": settings.max_images,
        "max_pixels": settings.max_pixels,
        "exceeded": bool(exceeded),
        "applied": not exceeded,
        "message": message,
    }


def score_images(
    judge: Judge, annotations, settings: CleanSettings, background: int | None
):
    """(image, annotation, region) score tables of every labelled image; the maps of
    each image are dropped as soon as it is scored."""
    image_rows, annotation_rows, region_rows = [], [], []
    progress = ProgressLine("clean: scoring labels", len(judge.labelled))
    for image_id, probabilities in judge.chunks():
        progress.update()
        row = judge.labelled.loc[image_id]
        scale = (row["width"] / judge.size[1], row["height"] / judge.size[0])
        scores = score_image(
            image_id,
            *judge.labels(image_id),
            probabilities,
            annotations(image_id),
            judge.thresholds,
            settings,
            scale,
            background,
            judge.trusted,
        )
        image_rows.append(scores.image)
        annotation_rows += scores.annotations
        region_rows += scores.regions
    return (
        pd.DataFrame(image_rows),
        pd.DataFrame(annotation_rows, columns=SCORE_COLUMNS),
        pd.DataFrame(region_rows, columns=SCORE_COLUMNS),
    )


@dataclass(frozen=True, kw_only=True)
class CleanArgs:
    """What the cleaning step reads, writes and is set by (its command line:
    segflow.step_cli)."""

    settings: CleanSettings = arg(
        "JSON of the clean settings",
        parse=lambda text: CleanSettings.from_json(text, "--settings"),
    )
    sources: dict[str, list[str]] = arg(
        "JSON: source name -> its oof.npy files", parse=json.loads
    )
    images_path: Path = arg("images.parquet", flag="--images")
    annotations_path: Path = arg("annotations.parquet", flag="--annotations")
    masks_dir: Path = arg("the index's masks")
    image_root: Path = arg("the folder image file names are relative to")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    outputs: CleanOutputs = arg("what the step writes", outputs=True)
    unlabelled: str = arg("data.unlabelled", choices=UNLABELLED)


def clean(args: CleanArgs) -> dict:
    """Score, flag and clean every labelled image; see module doc for what is written.
    ``args.unlabelled``: data.unlabelled (without background, no missed objects)."""
    settings, classes, outputs = args.settings, args.classes, args.outputs
    background = background_class(args.unlabelled)
    images = pd.read_parquet(args.images_path)
    labelled = images[images["split"] == "train"].set_index("image_id")
    image_ids = list(labelled.index)
    annotation_rows = pd.read_parquet(args.annotations_path)
    by_image = dict(list(annotation_rows.groupby("image_id", sort=False)))

    def annotations(image_id: str) -> pd.DataFrame:
        return by_image.get(image_id, annotation_rows.iloc[:0])

    # 1. The judge and its per-class thresholds (one streamed pass), 2. the scores (another).
    judge = Judge(args.sources, labelled, args.masks_dir)
    thresholds, judge_confusion = self_confidence_thresholds(judge, len(classes))
    judge_iou = iou_per_class(judge_confusion)
    # A class the judge itself gets wrong is judged by nobody (clean.min_judge_iou).
    trusted = np.nan_to_num(judge_iou, nan=0.0) >= settings.min_judge_iou
    judge.thresholds, judge.trusted = thresholds, trusted
    image_table, annotation_table, region_table = score_images(
        judge, annotations, settings, background
    )
    reasons = flag_images(image_table, annotation_table, region_table, settings)
    image_table["flagged"] = image_table["image_id"].map(reasons).ne("")
    image_table.loc[image_table["flagged"], "suspected"] = image_table["image_id"].map(
        reasons
    )
    scores_table = pd.concat(
        [image_table.reindex(columns=SCORE_COLUMNS), annotation_table, region_table],
        ignore_index=True,
    ).astype(
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
            *judge.labels(image_id),
            judge.probabilities([image_id])[0],
            annotations(image_id),
            thresholds,
            settings,
            background=background,
            trusted=trusted,
        )

    # 3. The next round's labels: cleaned masks of every labelled image, who is dropped.
    flagged_ids = [i for i in image_ids if reasons[i]]
    annotation_table["flagged"] = annotation_table["flagged"].astype(bool)
    positions = annotation_table.groupby("image_id", sort=False).cumcount()
    flagged_positions = (  # instance value k + 1 is the image's k-th annotation
        positions[annotation_table["flagged"]]
        .groupby(annotation_table["image_id"])
        .agg(list)
        .to_dict()
    )
    action = settings.action
    changed = {}
    with atomic_dir(outputs.masks) as masks_tmp:
        for image_id in image_ids:
            coco_id = labelled.at[image_id, "coco_id"]
            if not reasons[image_id] or action in ("drop", "none"):
                shutil.copyfile(
                    mask_file(args.masks_dir, coco_id), mask_file(masks_tmp, coco_id)
                )
                continue
            label = read_label(args.masks_dir, coco_id)
            new = cleaned_mask(
                label,
                read_instances(args.masks_dir, coco_id),
                rescore(image_id),
                flagged_positions.get(image_id, []),
                "low_iou" in reasons[image_id],
                action,
            )
            changed[image_id] = int((new != label).sum())
            write_label(new, masks_tmp, coco_id)
        labelled_pixels = int(
            labelled[pixel_columns(len(classes))].to_numpy(np.int64).sum()
        )
        dropping = action == "drop"
        limits = change_limits(
            len(flagged_ids) if dropping else sum(1 for v in changed.values() if v),
            int(
                labelled.loc[flagged_ids, pixel_columns(len(classes))]
                .to_numpy(np.int64)
                .sum()
            )
            if dropping
            else sum(changed.values()),
            len(image_ids),
            labelled_pixels,
            settings,
        )
        print(("WARNING " if limits["exceeded"] else "") + limits["message"])
        if limits["exceeded"]:
            if settings.over_limit == "stop":
                raise ValueError(
                    limits["message"].split(": over")[0]
                    + ": over the limit (clean.over_limit: stop)"
                )
            action, changed = "none", {}
            for image_id in flagged_ids:  # the labels as they are
                coco_id = labelled.at[image_id, "coco_id"]
                shutil.copyfile(
                    mask_file(args.masks_dir, coco_id), mask_file(masks_tmp, coco_id)
                )

        # 4. The tables, the gallery and the summary.
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
        write_table(scores_table, outputs.scores)
        write_table(flags, outputs.flags)
        write_table(images_table, outputs.images)
        write_ids(dropped, outputs.dropped)
        worst = (
            image_table[image_table["flagged"]]
            .sort_values("iou", kind="stable")["image_id"]
            .tolist()[: settings.gallery]
        )
        judge_quality = {
            "oof_miou": mean_iou(judge_confusion),
            "per_class_iou": per_class_iou(judge_confusion, classes),
            "trusted_classes": [c for c, t in zip(classes, trusted) if t],
            "min_judge_iou": settings.min_judge_iou,
        }
        write_gallery(
            worst,
            labelled,
            scores_table,
            flagged_positions,
            rescore,
            outputs,
            args.image_root,
            classes,
            judge.size,
            action,
            judge_quality,
            limits,
        )
        summary = {
            "sources": sorted(args.sources),
            "settings": settings.to_dict(),
            "class_thresholds": dict(zip(classes, map(float, thresholds))),
            "judged_classes": [
                name
                for name, t, ok in zip(classes, thresholds, trusted)
                if t >= settings.min_class_confidence and ok
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
            "action_applied": action,
            "limits": limits,
            "judge": judge_quality,
        }
        write_json(summary, outputs.summary)
    if not flagged_ids:
        print("no image was flagged: the next round trains on the labels as they are")
    return summary


def gallery_figure_name(rank: int, image_id) -> str:
    """``NN_<file name>.png`` with every run of characters outside [A-Za-z0-9] one
    ``_``: the name becomes the figure's label in ``snakemake --report``, which puts it
    in a script block unescaped. The batch folder stays in the name: file names repeat
    across batches."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", str(Path(str(image_id)).with_suffix("")))
    return f"{rank:02d}_{stem}.png"


def write_gallery(
    image_ids,
    labelled,
    scores_table,
    flagged_positions,
    rescore,
    outputs,
    image_root,
    classes,
    size,
    action,
    judge_quality,
    limits,
) -> None:
    """gallery/NN_<id>.png (image | label | OOF prediction | flagged region) and
    gallery.html, which first says how good the judge was and what cleaning changed."""
    palette = class_palette(len(classes))
    entries = []
    with atomic_dir(outputs.figures) as figures_tmp:
        for rank, image_id in enumerate(image_ids, 1):
            picture = read_rgb(image_file(labelled.loc[image_id], image_root))
            if picture.shape[:2] != tuple(size):
                picture = cv2.resize(
                    picture, (size[1], size[0]), interpolation=cv2.INTER_AREA
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
            class_legend(fig, classes, palette, fontsize=7, below=0.08)
            png = save_figure(fig, figures_tmp / gallery_figure_name(rank, image_id))
            entries.append(
                (
                    image_id,
                    image_row,
                    rows[rows["flagged"] & (rows["level"] != "image")],
                    png,
                )
            )
    rendered = []
    for image_id, image_row, flagged_rows, png in entries:
        rows = flagged_rows[GALLERY_COLUMNS].astype(object)
        rendered.append(
            {
                "image_id": image_id,
                "iou": image_row["iou"],
                "suspected": str(image_row["suspected"]),
                "src": data_uri(png),
                "rows": [
                    {column: _cell(value) for column, value in row.items()}
                    for row in rows.to_dict("records")
                ],
            }
        )
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("segflow", "templates"), autoescape=True
    )
    page = environment.get_template("clean_gallery.html.j2").render(
        entries=rendered,
        action=action,
        columns=GALLERY_COLUMNS,
        judge=judge_quality,
        limits=limits,
    )
    with atomic_path(outputs.gallery) as tmp:
        tmp.write_text(page, encoding="utf-8")


def _cell(value) -> str:
    """A table cell: blank for missing, two decimals for fractions."""
    if value is None or pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def main(argv=None) -> None:
    keys = (
        "labelled_images",
        "flagged_images",
        "flagged_annotations",
        "missed_regions",
        "dropped_images",
    )
    run_step(
        clean,
        CleanArgs,
        argv,
        "Score labels against out-of-fold predictions; flag and clean them.",
        (PredictionError, ValueError, FileNotFoundError),
        report=lambda summary: json.dumps({k: summary[k] for k in keys}),
    )


if __name__ == "__main__":
    main()
