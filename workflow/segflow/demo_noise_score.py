"""How well label-noise cleaning finds the demo's injected noise (the truth never feeds training).

The demo gives each noisy image exactly one error (truth/noise.csv: image, annotation, kind).

- Image level: an image is a true positive when it is flagged and in the manifest.
  Overall precision, recall and F1 over all kinds; per kind, recall over that kind's
  images and precision against the clean images only (TP_kind / (TP_kind + flagged clean
  images)), i.e. the precision were that the only kind of noise: it does not punish a
  method for flagging an image whose error is of another kind.
- Annotation level: a flagged annotation is true when the manifest names it
  (class_swap, shifted, bloated); a flagged missed region is true when its box overlaps
  the true box of a missing or shifted object of its image (intersection over the smaller
  box >= 0.3). Precision and recall per kind as above; a shifted object counts as found
  when its annotation or its true location is flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segflow.coco import read_json
from segflow.io import write_json
from segflow.settings import DEMO_NOISE_KINDS
from segflow.step_cli import arg, run_step

BOX_OVERLAP = 0.3


def precision_recall_f1(tp: int, flagged: int, positives: int) -> dict:
    precision = tp / flagged if flagged else None
    recall = tp / positives if positives else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision and recall
        else (0.0 if precision is not None and recall is not None else None)
    )
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": int(tp),
        "flagged": int(flagged),
        "positives": int(positives),
    }


def image_detection(
    flagged: set[str], manifest: pd.DataFrame, labelled: set[str]
) -> dict:
    """Image-level scores of a flagged image set (see module doc)."""
    noisy = dict(zip(manifest["image_id"], manifest["kind"]))
    flagged = set(flagged) & set(labelled)
    false_positives = len(flagged - set(noisy))
    result = {
        "all": precision_recall_f1(len(flagged & set(noisy)), len(flagged), len(noisy))
    }
    for kind in DEMO_NOISE_KINDS:
        positives = {i for i, k in noisy.items() if k == kind}
        tp = len(flagged & positives)
        result[kind] = precision_recall_f1(tp, tp + false_positives, len(positives))
    return result


def _overlap(box_a, box_b) -> float:
    ax, ay, aw, ah = box_a
    bx, by, bw, bh = box_b
    width = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    height = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    smaller = min(aw * ah, bw * bh)
    return width * height / smaller if smaller > 0 else 0.0


def annotation_detection(
    flags: pd.DataFrame, manifest: pd.DataFrame, true_boxes: dict[int, list[float]]
) -> dict:
    """Annotation-level scores of flags.csv rows (levels annotation and region)."""
    annotation_flags = set(
        flags.loc[flags["level"] == "annotation", "annotation_id"].dropna().astype(int)
    )
    regions = flags[flags["level"] == "region"]
    found: dict[int, bool] = {}  # manifest annotation id -> found
    true_flags = 0
    by_id = manifest.set_index("annotation_id")
    for annotation_id in annotation_flags:
        if (
            annotation_id in by_id.index
            and by_id.at[annotation_id, "kind"] != "missing"
        ):
            found[annotation_id] = True
            true_flags += 1
    for region in regions.itertuples():
        box = [float(v) for v in str(region.bbox).split()]
        hits = manifest[
            (manifest["image_id"] == region.image_id)
            & manifest["kind"].isin(["missing", "shifted"])
        ]
        matched = [
            a
            for a in hits["annotation_id"]
            if _overlap(box, true_boxes[int(a)]) >= BOX_OVERLAP
        ]
        for annotation_id in matched:
            found[int(annotation_id)] = True
        true_flags += bool(matched)
    n_flags = len(annotation_flags) + len(regions)
    false_positives = n_flags - true_flags
    result = {
        "all": precision_recall_f1(
            sum(found.values()), sum(found.values()) + false_positives, len(manifest)
        )
    }
    for kind in DEMO_NOISE_KINDS:
        ids = manifest.loc[manifest["kind"] == kind, "annotation_id"].astype(int)
        tp = sum(found.get(int(a), False) for a in ids)
        result[kind] = precision_recall_f1(tp, tp + false_positives, len(ids))
    return result


@dataclass(frozen=True, kw_only=True)
class NoiseScoreArgs:
    """What the demo's noise scoring reads and writes (its command line: step_cli)."""

    flags_path: Path = arg("results/clean/flags.csv", flag="--flags")
    images_path: Path = arg("results/clean/images.csv", flag="--images")
    noise_path: Path = arg("the demo's truth/noise.csv", flag="--noise")
    clean_truth_path: Path = arg(
        "the demo's truth/train_all_clean.json", flag="--clean-truth"
    )
    out: Path = arg("noise_detection.json")


def demo_noise_score(args: NoiseScoreArgs) -> dict:
    flags_path, images_path = args.flags_path, args.images_path
    flags = pd.read_csv(flags_path)
    images = pd.read_csv(images_path)
    manifest = pd.read_csv(args.noise_path)
    labelled = set(images["image_id"])
    manifest = manifest[manifest["image_id"].isin(labelled)]  # debug runs keep a sample
    true_boxes = {
        a["id"]: a["bbox"] for a in read_json(args.clean_truth_path)["annotations"]
    }
    flagged_images = set(images.loc[images["flagged"], "image_id"])
    result = {
        "labelled_images": len(labelled),
        "noisy_images": int(len(manifest)),
        "flagged_images": len(flagged_images),
        "images": image_detection(flagged_images, manifest, labelled),
        "annotations": annotation_detection(flags, manifest, true_boxes),
    }
    write_json(result, args.out)
    return result


def main(argv=None) -> None:
    run_step(
        demo_noise_score,
        NoiseScoreArgs,
        argv,
        "Score label-noise flags against the demo's injected-noise manifest.",
        (KeyError, ValueError, FileNotFoundError),
        report=lambda result: json.dumps(
            {level: result[level]["all"] for level in ("images", "annotations")}
        ),
    )


if __name__ == "__main__":
    main()
