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

import argparse
import json
import sys

import pandas as pd

from segflow.coco import read_json
from segflow.io import write_json
from segflow.settings import DEMO_NOISE_KINDS

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


def noise_detection(
    *,
    flags_path: str,
    images_path: str,
    noise_path: str,
    clean_truth_path: str,
    out: str,
) -> dict:
    flags = pd.read_csv(flags_path)
    images = pd.read_csv(images_path)
    manifest = pd.read_csv(noise_path)
    labelled = set(images["image_id"])
    manifest = manifest[manifest["image_id"].isin(labelled)]  # debug runs keep a sample
    true_boxes = {
        a["id"]: a["bbox"] for a in read_json(clean_truth_path)["annotations"]
    }
    flagged_images = set(images.loc[images["flagged"], "image_id"])
    result = {
        "labelled_images": len(labelled),
        "noisy_images": int(len(manifest)),
        "flagged_images": len(flagged_images),
        "images": image_detection(flagged_images, manifest, labelled),
        "annotations": annotation_detection(flags, manifest, true_boxes),
    }
    write_json(result, out)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Score label-noise flags against the demo's injected-noise manifest."
    )
    parser.add_argument("--flags", required=True, help="results/clean/flags.csv")
    parser.add_argument("--images", required=True, help="results/clean/images.csv")
    parser.add_argument("--noise", required=True, help="demo truth/noise.csv")
    parser.add_argument(
        "--clean-truth", required=True, help="demo truth/train_all_clean.json"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        result = noise_detection(
            flags_path=args.flags,
            images_path=args.images,
            noise_path=args.noise,
            clean_truth_path=args.clean_truth,
            out=args.out,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")
    print(
        json.dumps({level: result[level]["all"] for level in ("images", "annotations")})
    )


if __name__ == "__main__":
    main()
