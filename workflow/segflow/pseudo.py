"""Pseudo labels: the previous round's ensemble prediction of the unlabelled test images.

Per pixel, the ensemble's argmax where its probability reaches the threshold of that
class, else 255, which the loss ignores. A class's threshold is its ``confidence`` (one
number, or per class name with ``default`` for the rest), lowered where needed so that
at least ``coverage`` of the pixels the ensemble gives that class are kept: a fixed
confidence keeps almost nothing of a weak teacher's prediction (3 of 233 test images of a
real set at 0.9) and least of its rare classes, which are the least confident. An image
whose kept share of pixels is below ``min_coverage`` is left out. The probabilities are
resized to the image's own size (bilinear) before the argmax, so the masks fit the
images the next round trains on. A round that keeps fewer than ``min_images`` of the
test images is said so in the summary (and the run summary), and with
``below_min: skip`` trains on the labelled images alone.

Writes under ``out_dir``: masks/<coco id>.png (kept images only), images.csv (image_id,
coco_id, coverage, kept), summary.json (images kept, and per class the predicted pixels
and the share kept) and summary.png (that share per class, for the report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segflow.io import atomic_dir, atomic_path, write_json, write_table
from segflow.labels import IGNORE_INDEX, write_label
from segflow.probabilities import (
    SCALE,
    PredictionError,
    decode_probabilities,
    ids_path,
    read_probability_set,
)
from segflow.progress import ProgressLine
from segflow.settings import PseudoSettings
from segflow.step_cli import arg, run_step
from segflow.viz import class_palette, plt, save_figure

CHUNK = 8  # images whose maps are in memory at once


class PseudoError(ValueError):
    """Pseudo-label inputs that do not fit together."""


def confidence_thresholds(confidence: float | dict, classes: list[str]) -> np.ndarray:
    """Per-class confidence thresholds from a number or {class name: threshold, default: t}."""
    if not isinstance(confidence, dict):
        return np.full(len(classes), float(confidence))
    unknown = sorted(set(confidence) - set(classes) - {"default"})
    if unknown:
        raise PseudoError(
            f"pseudo.confidence: {unknown} are not class names (classes: {classes})"
        )
    if "default" not in confidence:
        unnamed = [name for name in classes if name not in confidence]
        if unnamed:
            raise PseudoError(
                f"pseudo.confidence: no threshold for {unnamed}; name them or give"
                " a default"
            )
    return np.array(
        [float(confidence.get(name, confidence.get("default"))) for name in classes]
    )


def coverage_thresholds(
    histograms: np.ndarray, thresholds: np.ndarray, coverage: float | None
) -> np.ndarray:
    """``thresholds`` lowered per class to keep ``coverage`` of its predicted pixels.

    ``histograms[c, v]``: pixels predicted c whose top probability, stored as uint8
    (p x 255), is v. The kept share at threshold v/255 is the tail of the histogram
    from v on, so the threshold is the largest such v whose tail reaches ``coverage``."""
    if coverage is None:
        return thresholds
    tails = np.cumsum(histograms[:, ::-1], axis=1)[:, ::-1]  # pixels with value >= v
    totals = histograms.sum(axis=1)
    out = thresholds.astype(np.float64).copy()
    for c in np.flatnonzero(totals):
        reaching = np.flatnonzero(tails[c] >= coverage * totals[c])
        out[c] = min(out[c], reaching.max() / SCALE)
    return out


def pseudo_mask(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(H, W) uint8: argmax where its probability reaches its class threshold, else 255."""
    label = probabilities.argmax(axis=0)
    confident = probabilities.max(axis=0) >= thresholds[label]
    return np.where(confident, label, IGNORE_INDEX).astype(np.uint8)


def resize_probabilities(
    probabilities: np.ndarray, height: int, width: int
) -> np.ndarray:
    """(C, h, w) -> (C, height, width), bilinear."""
    if probabilities.shape[1:] == (height, width):
        return probabilities
    return np.stack(
        [
            cv2.resize(channel, (width, height), interpolation=cv2.INTER_LINEAR)
            for channel in probabilities
        ]
    )


@dataclass(frozen=True, kw_only=True)
class PseudoArgs:
    """What the pseudo-labelling step reads, writes and is set by (its command line:
    segflow.step_cli)."""

    settings: PseudoSettings = arg(
        "JSON of the pseudo settings",
        parse=lambda text: PseudoSettings.from_json(text, "--settings"),
    )
    test_npy: Path = arg("test.npy (ids read beside)")
    images_path: Path = arg("images.parquet", flag="--images")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    images_out: Path = arg("images.csv: per test image, kept or not")
    masks_out: Path = arg("the pseudo-label masks' folder")
    summary_out: Path = arg("summary.json")
    figure_out: Path = arg("the figure of kept pixels (PNG)")


def pseudo_labels(args: PseudoArgs) -> dict:
    """Write the pseudo-label masks of the test images; see module doc."""
    settings, classes = args.settings, args.classes
    confidence = confidence_thresholds(settings.confidence, classes)
    min_coverage = settings.min_coverage
    try:
        probabilities, ids = read_probability_set(args.test_npy)
    except PredictionError as e:
        raise PseudoError(str(e)) from None
    # One pass over the stored probabilities: per class, how confident its pixels are.
    histograms = np.zeros((len(classes), SCALE + 1), np.int64)
    for start in range(0, len(ids), CHUNK):
        stored = np.asarray(probabilities[start : start + CHUNK])
        top, label = stored.max(axis=1).ravel(), stored.argmax(axis=1).ravel()
        histograms += np.bincount(
            label.astype(np.int64) * (SCALE + 1) + top,
            minlength=len(classes) * (SCALE + 1),
        )[: len(classes) * (SCALE + 1)].reshape(len(classes), SCALE + 1)
    thresholds = coverage_thresholds(histograms, confidence, settings.coverage)
    images = pd.read_parquet(args.images_path).set_index("image_id")
    test = images[images["split"] == "test"]
    if probabilities.shape[1] != len(classes):
        raise PseudoError(
            f"{args.test_npy}: {probabilities.shape[1]} classes, expected {len(classes)}"
        )
    if sorted(ids) != sorted(test.index):
        unknown = sorted(set(ids) - set(test.index))
        missing = len(set(test.index) - set(ids))
        raise PseudoError(
            f"{ids_path(args.test_npy)}: ids differ from the index's test images"
            f" ({len(unknown)} unknown, e.g. {unknown[:3]}; {missing} missing)"
        )

    predicted = np.zeros(len(classes), np.int64)
    kept_pixels = np.zeros(len(classes), np.int64)
    rows = []
    progress = ProgressLine("pseudo labels", len(ids))
    with atomic_dir(args.masks_out) as masks_tmp:
        for start in range(0, len(ids), CHUNK):  # stream: one chunk of maps in memory
            block = decode_probabilities(probabilities[start : start + CHUNK])
            progress.update(len(block))
            for image_id, image_probabilities in zip(ids[start : start + CHUNK], block):
                row = test.loc[image_id]
                full = resize_probabilities(
                    image_probabilities, int(row["height"]), int(row["width"])
                )
                mask = pseudo_mask(full, thresholds)
                coverage = float((mask != IGNORE_INDEX).mean())
                kept = coverage >= min_coverage
                rows.append(
                    {
                        "image_id": image_id,
                        "coco_id": int(row["coco_id"]),
                        "coverage": coverage,
                        "kept": kept,
                    }
                )
                argmax = full.argmax(axis=0)
                predicted += np.bincount(argmax.ravel(), minlength=len(classes))
                if kept:
                    kept_pixels += np.bincount(
                        mask[mask != IGNORE_INDEX].ravel(), minlength=len(classes)
                    )[: len(classes)]
                    write_label(mask, masks_tmp, row["coco_id"])
        table = pd.DataFrame(rows, columns=["image_id", "coco_id", "coverage", "kept"])
        kept_images = int(table["kept"].sum())
        message = (
            f"pseudo labels: {kept_images} of {len(ids)} test images kept,"
            f" {kept_pixels.sum() / max(1, predicted.sum()):.0%} of their pixels"
        )
        too_few = kept_images < settings.min_images * len(ids)
        if too_few:
            message = (
                f"WARNING {message}: fewer than pseudo.min_images"
                f" ({settings.min_images:.0%});"
                + (
                    " the round trains on the labelled images alone (below_min: skip)"
                    if settings.below_min == "skip"
                    else " the round gains little from them (below_min: warn)"
                )
            )
            if settings.below_min == "skip":
                table["kept"] = False
                for path in Path(masks_tmp).glob("*.png"):
                    path.unlink()
        print(message)
        summary = {
            "test_images": len(ids),
            "kept_images": int(table["kept"].sum()),
            "message": message,
            "confidence": {name: float(t) for name, t in zip(classes, confidence)},
            "thresholds": {name: float(t) for name, t in zip(classes, thresholds)},
            "coverage": settings.coverage,
            "min_coverage": min_coverage,
            "mean_coverage": float(table["coverage"].mean()) if len(table) else None,
            "per_class": {
                name: {
                    "predicted_pixels": int(predicted[k]),
                    "kept_pixels": int(kept_pixels[k]),
                    "kept_share": float(kept_pixels[k] / predicted[k])
                    if predicted[k]
                    else None,
                }
                for k, name in enumerate(classes)
            },
        }
        write_table(table, args.images_out)
        write_json(summary, args.summary_out)
        write_summary_figure(summary, args.figure_out)
    return summary


def write_summary_figure(summary: dict, path: Path) -> None:
    names = list(summary["per_class"])
    shares = [summary["per_class"][n]["kept_share"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(
        range(len(names)),
        shares,
        color=class_palette(len(names)) / 255,
        edgecolor="grey",
    )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("predicted pixels kept")
    ax.set_title(
        f"pseudo labels: {summary['kept_images']} of {summary['test_images']} test images kept",
        fontsize=9,
    )
    with atomic_path(path) as tmp:
        save_figure(fig, tmp)


def main(argv=None) -> None:
    run_step(
        pseudo_labels,
        PseudoArgs,
        argv,
        "Pseudo-label the test images from an ensemble's test probabilities.",
        (PseudoError, FileNotFoundError),
        report=lambda summary: json.dumps(
            {k: summary[k] for k in ("test_images", "kept_images", "mean_coverage")}
        ),
    )


if __name__ == "__main__":
    main()
