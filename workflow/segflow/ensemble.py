"""Ensemble several members' probabilities; weights and class biases tuned on OOF.

A member is one model x seed (x round): its OOF probabilities are those of the fold that
validated each image; its test probabilities are the mean over its fold models, mixed
with its full fit (trained on every labelled image, so without OOF) at
``full_weight`` when there is one. The weights and the bias tuned on OOF then apply to
those test probabilities as they are.

- ``soft`` voting: weighted mean of probabilities, then argmax of log p + class bias.
- ``hard`` voting: per pixel, the class with the most (weighted) member votes; ties are
  broken by the weighted mean probability.
- ``weights: oof``: coordinate ascent over member weights maximising OOF mIoU;
  ``class_bias``: coordinate ascent over a per-class log-probability bias (soft only;
  kept only where it also gains out of sample: tuned on half the OOF images, scored on
  the other half, both ways),
  the competition seeds' "per-class threshold" tip.

Both are tuned on a pixel sample of the OOF set (a regular grid, capped at
``tune_pixels``), collected in one streaming pass. The choices are then checked on the
full OOF set in one more pass: the tuned weights compete with every single member and
with equal weights, and the bias is kept only if it raises full OOF mIoU. So the
ensemble never scores below its best member on OOF. Every pass streams chunks of images
from the memory-mapped files: peak memory is one chunk of every member, whatever the
number of images.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segflow.io import atomic_path, write_json
from segflow.labels import IGNORE_INDEX, read_label
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.postprocess import (
    min_areas_in_pixels,
    remove_small_components,
    tune_min_areas,
)
from segflow.probabilities import (
    MemberProbabilities,
    PredictionError,
    encode_probabilities,
    probability_writer,
)
from segflow.progress import ProgressLine
from segflow.settings import EnsembleSettings
from segflow.step_cli import arg, run_step

METHODS = ("soft", "hard")
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
BIAS_GRID = tuple(np.round(np.arange(-1.5, 1.51, 0.25), 2))
EPS = 1e-4


def combine(
    probabilities: list[np.ndarray],
    weights: np.ndarray,
    method: str,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n, ...) uint8, weighted mean probability (n, C, ...)) of the members.

    Works on maps (n, C, H, W) and on pixel samples (n, C).
    """
    weights = np.asarray(weights, np.float64)
    mean = sum(w * p for w, p in zip(weights, probabilities) if w) / weights.sum()
    if method == "soft":
        scores = np.log(mean + EPS)
        if bias is not None:
            scores = scores + bias.reshape((1, -1) + (1,) * (mean.ndim - 2))
        return scores.argmax(axis=1).astype(np.uint8), mean
    n_classes = mean.shape[1]
    votes = np.zeros_like(mean)
    for w, p in zip(weights, probabilities):
        if w:
            votes += w * (
                np.arange(n_classes).reshape((1, -1) + (1,) * (mean.ndim - 2))
                == p.argmax(axis=1)[:, None]
            )
    tied = votes >= votes.max(axis=1, keepdims=True) - 1e-9
    return np.where(tied, mean, -1.0).argmax(axis=1).astype(np.uint8), mean


def tuning_sample(
    members: list[MemberProbabilities],
    image_ids: list[str],
    labels_of,
    tune_pixels: int,
    chunk: int,
):
    """Per member (P, C) probabilities and (P,) labels at a regular pixel grid of every image."""
    height, width = members[0].shape[1:]
    stride = max(1, math.ceil(math.sqrt(len(image_ids) * height * width / tune_pixels)))
    member_samples, label_samples = [[] for _ in members], []
    for start in range(0, len(image_ids), chunk):
        ids = image_ids[start : start + chunk]
        labels = np.stack([labels_of(i) for i in ids])[:, ::stride, ::stride]
        keep = labels != IGNORE_INDEX
        label_samples.append(labels[keep])
        for k, member in enumerate(members):
            grid = member.get(ids)[:, :, ::stride, ::stride]
            member_samples[k].append(np.moveaxis(grid, 1, -1)[keep].astype(np.float16))
    return (
        [np.concatenate(s).astype(np.float32) for s in member_samples],
        np.concatenate(label_samples),
        stride,
    )


def sample_miou(samples, labels, weights, method, bias, n_classes) -> float:
    predicted, _ = combine(samples, weights, method, bias)
    return mean_iou(confusion_matrix(labels, predicted, n_classes))


def tune_weights(
    samples, labels, method: str, n_classes: int, sweeps: int = 2
) -> np.ndarray:
    """Coordinate ascent over member weights on the OOF sample (from equal weights)."""
    weights = np.ones(len(samples))
    best = sample_miou(samples, labels, weights, method, None, n_classes)
    for _ in range(sweeps):
        improved = False
        for m in range(len(samples)):
            for value in WEIGHT_GRID:
                trial = weights.copy()
                trial[m] = value
                if trial.sum() == 0 or value == weights[m]:
                    continue
                score = sample_miou(samples, labels, trial, method, None, n_classes)
                if score > best + 1e-6:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights / weights.sum()


def cross_validated_bias_gain(samples, labels, weights, n_classes: int) -> float:
    """The class bias's gain out of sample: tuned on one half of the OOF sample (the
    sample runs image by image, so a half is a set of images), scored on the other,
    both ways, averaged. A bias that only fits the pixels it was tuned on gains
    nothing here, and loses on the test set."""
    half = len(labels) // 2
    gains = []
    for fit, held in (
        (slice(0, half), slice(half, None)),
        (slice(half, None), slice(0, half)),
    ):
        fit_samples = [p[fit] for p in samples]
        held_samples = [p[held] for p in samples]
        bias = tune_bias(fit_samples, labels[fit], weights, n_classes)
        gains.append(
            sample_miou(held_samples, labels[held], weights, "soft", bias, n_classes)
            - sample_miou(held_samples, labels[held], weights, "soft", None, n_classes)
        )
    return float(np.mean(gains))


def tune_bias(samples, labels, weights, n_classes: int, sweeps: int = 2) -> np.ndarray:
    """Coordinate ascent over a per-class log-probability bias (soft voting)."""
    mean = sum(w * p for w, p in zip(weights, samples) if w) / np.sum(weights)
    scores = np.log(mean + EPS)
    bias = np.zeros(n_classes)

    def miou(b):
        return mean_iou(
            confusion_matrix(labels, (scores + b).argmax(axis=1), n_classes)
        )

    best = miou(bias)
    for _ in range(sweeps):
        improved = False
        for c in range(n_classes):
            for value in BIAS_GRID:
                trial = bias.copy()
                trial[c] = value
                if value == bias[c]:
                    continue
                score = miou(trial)
                if score > best + 1e-6:
                    best, bias, improved = score, trial, True
        if not improved:
            break
    return bias


def member_test(
    name: str, files: dict[str, list[str]], full_weight: float
) -> MemberProbabilities:
    """A member's test probabilities: the mean of its fold models, or, with a full fit
    (``files["full"]``), ``full_weight`` x the full fit + the rest x that mean."""
    folds, full = files["test"], files.get("full", [])
    if not full:
        return MemberProbabilities(name, folds, "test")
    weights = [(1 - full_weight) / len(folds)] * len(folds)
    weights += [full_weight / len(full)] * len(full)
    return MemberProbabilities(name, folds + full, "test", weights)


@dataclass(frozen=True, kw_only=True)
class EnsembleArgs:
    """What one ensemble job reads, writes and is set by (its command line:
    segflow.step_cli)."""

    settings: EnsembleSettings = arg(
        "JSON of the ensemble settings",
        parse=lambda text: EnsembleSettings.from_json(text, "--settings"),
    )
    members: dict[str, dict[str, list[str]]] = arg(
        'JSON: name -> {"oof": [...], "test": [...]}', parse=json.loads
    )
    images_path: Path = arg("images.parquet", flag="--images")
    masks_dir: Path = arg("the index's masks")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    summary_out: Path = arg("summary.json")
    oof_out: Path = arg("oof.npy (ids written beside)")
    test_out: Path = arg("test.npy (ids written beside)")
    test_labels_out: Path = arg("the test label maps (uint8 .npy)")
    oof_labels_out: Path = arg("the OOF label maps (uint8 .npy)")


def ensemble(args: EnsembleArgs) -> dict:
    """Tune on OOF; write the summary, the ensemble's OOF and test sets, test labels
    and OOF label maps (what the results report scores).

    ``members``: name -> {"oof": [oof.npy of each fold], "test": [test.npy of each fold],
    optionally "full": [test.npy of its full fit]}.
    """
    settings, members, classes = args.settings, args.members, args.classes
    method, weights, class_bias = settings.method, settings.weights, settings.class_bias
    tune_pixels, chunk = settings.tune_pixels, settings.chunk
    if method not in METHODS:
        raise ValueError(f"ensemble.method must be one of {METHODS}, got {method!r}")
    n_classes = len(classes)
    names = sorted(members)
    oof = [MemberProbabilities(name, members[name]["oof"], "oof") for name in names]
    test = [member_test(name, members[name], settings.full_weight) for name in names]
    oof_ids = sorted(oof[0].rows)
    for member in oof[1:]:
        if sorted(member.rows) != oof_ids:
            raise PredictionError(
                f"members {names[0]} and {member.name} have OOF predictions for different images"
            )
    size = [int(side) for side in oof[0].shape[-2:]]  # (height, width)
    coco_ids = pd.read_parquet(args.images_path).set_index("image_id")["coco_id"]

    def labels_of(image_id):
        return read_label(args.masks_dir, coco_ids[image_id], size)

    # 1. Tune on a pixel sample (one pass).
    equal = np.full(len(names), 1.0 / len(names))
    if weights == "oof" and len(names) > 1 or class_bias and method == "soft":
        samples, sample_labels, stride = tuning_sample(
            oof, oof_ids, labels_of, tune_pixels, chunk
        )
    tuned = (
        tune_weights(samples, sample_labels, method, n_classes)
        if weights == "oof" and len(names) > 1
        else equal
    )
    bias = (
        tune_bias(samples, sample_labels, tuned, n_classes)
        if class_bias and method == "soft"
        else None
    )
    bias_cv_gain = (
        cross_validated_bias_gain(samples, sample_labels, tuned, n_classes)
        if bias is not None
        else None
    )

    # 2. Check on the full OOF set (one pass): every single member, equal, tuned, tuned + bias.
    candidates = {
        f"member:{name}": np.eye(len(names))[k] for k, name in enumerate(names)
    }
    candidates["equal"] = equal
    candidates["tuned"] = tuned
    confusions = {
        key: np.zeros((n_classes, n_classes), np.int64)
        for key in [*candidates, "tuned+bias"]
    }
    for start in range(0, len(oof_ids), chunk):
        ids = oof_ids[start : start + chunk]
        probabilities = [member.get(ids) for member in oof]
        labels = np.stack([labels_of(i) for i in ids])
        for key, w in candidates.items():
            confusions[key] += confusion_matrix(
                labels, combine(probabilities, w, method)[0], n_classes
            )
        if bias is not None:
            confusions["tuned+bias"] += confusion_matrix(
                labels, combine(probabilities, tuned, method, bias)[0], n_classes
            )
    scores = {key: mean_iou(c) for key, c in confusions.items() if c.any()}
    # "oof": the best of tuned, equal and each single member on the full OOF (tuned wins ties).
    weight_choice = (
        "equal"
        if weights == "equal"
        else max(candidates, key=lambda k: (scores[k], k == "tuned"))
    )
    final_weights = candidates[weight_choice]
    bias_gain = None
    if bias is not None and weight_choice == "tuned":
        bias_gain = scores["tuned+bias"] - scores["tuned"]
    # Kept only where it also gains out of sample (tuned on half the images, scored
    # on the others): an in-sample gain alone was lost again on a real test set.
    use_bias = (
        bias is not None
        and weight_choice == "tuned"
        and bias_gain > 0
        and bias_cv_gain > 0
    )
    final_key = "tuned+bias" if use_bias else weight_choice
    final_bias = bias if use_bias else None

    # 3. Write the ensemble's OOF and test probabilities (and the test labels) in chunks.
    test_ids = list(test[0].rows)
    for member in test[1:]:
        if list(member.rows) != test_ids:
            raise PredictionError(
                f"members {names[0]} and {member.name} predicted different test images"
            )
    combined = functools.partial(
        write_combined,
        weights=final_weights,
        method=method,
        bias=final_bias,
        chunk=chunk,
    )
    combined(oof, oof_ids, args.oof_out, labels_out=args.oof_labels_out)

    # 4. Post-processing tuned on the OOF labels just written (segflow.postprocess):
    # small components become background where that raises OOF mIoU.
    postprocess, min_area = None, None
    if settings.remove_small:
        written = np.load(args.oof_labels_out, mmap_mode="r")
        shares, before, after = tune_min_areas(
            written, (labels_of(i) for i in oof_ids), n_classes
        )
        min_area = min_areas_in_pixels(shares, written.shape[1:])
        del written
        postprocess = {
            "min_area_share": {classes[c]: s for c, s in shares.items()},
            "min_area_pixels": {classes[c]: a for c, a in min_area.items()},
            "oof_miou_before": before,
            "oof_miou": after,
        }
        if min_area:
            rewrite_labels(args.oof_labels_out, min_area)
        print(f"small components removed: OOF mIoU {before:.4f} -> {after:.4f}")
    combined(
        test,
        test_ids,
        args.test_out,
        labels_out=args.test_labels_out,
        min_area=min_area,
    )

    summary = {
        "method": method,
        "weights_mode": weights,
        "members": {
            name: {
                "oof_miou": scores[f"member:{name}"],
                "weight": float(final_weights[k]),
            }
            for k, name in enumerate(names)
        },
        "weights_chosen_from": weight_choice,
        "class_bias": {c: float(b) for c, b in zip(classes, final_bias)}
        if final_bias is not None
        else None,
        "class_bias_oof_gain": bias_gain,
        "class_bias_cross_validated_gain": bias_cv_gain,
        "oof_miou": scores[final_key],
        "postprocess": postprocess,
        "oof_miou_equal_weights": scores["equal"],
        "oof_miou_tuned_weights": scores["tuned"] if weights == "oof" else None,
        "best_member_oof_miou": max(scores[f"member:{n}"] for n in names),
        "per_class_iou": per_class_iou(confusions[final_key], classes),
        "oof_images": len(oof_ids),
        "test_images": len(test_ids),
        "full_fit_weight": settings.full_weight
        if any(members[n].get("full") for n in names)
        else None,
        "size": size,
    }
    write_json(summary, args.summary_out)
    return summary


def write_combined(
    members,
    image_ids,
    out,
    *,
    weights,
    method,
    bias,
    chunk,
    labels_out=None,
    min_area=None,
) -> None:
    """The members' combined probabilities of ``image_ids`` as a stored set at ``out``;
    with ``labels_out``, their label maps too (uint8 (N, H, W) .npy), with ``min_area``
    (class -> pixels) small components removed from them."""
    shape = members[0].shape
    with contextlib.ExitStack() as stack:
        stored = stack.enter_context(probability_writer(out, image_ids, shape))
        labels = None
        if labels_out is not None:
            labels_tmp = stack.enter_context(atomic_path(labels_out))
            labels = np.lib.format.open_memmap(
                labels_tmp,
                mode="w+",
                dtype=np.uint8,
                shape=(len(image_ids), *shape[1:]),
            )
        progress = ProgressLine(f"ensemble {Path(out).name}", len(image_ids))
        for start in range(0, len(image_ids), chunk):
            ids = image_ids[start : start + chunk]
            chunk_labels, mean = combine(
                [m.get(ids) for m in members], weights, method, bias
            )
            stored[start : start + len(ids)] = encode_probabilities(mean)
            if labels is not None:
                if min_area:
                    chunk_labels = np.stack(
                        [remove_small_components(m, min_area) for m in chunk_labels]
                    )
                labels[start : start + len(ids)] = chunk_labels
            progress.update(len(ids))
        if labels is not None:
            labels.flush()
            del labels


def rewrite_labels(path, min_area: dict[int, int]) -> None:
    """The label maps at ``path`` with small components removed, renamed into place."""
    source = np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=source.shape
        )
        for i in range(len(source)):
            out[i] = remove_small_components(np.asarray(source[i]), min_area)
        out.flush()
        del out
    del source


def main(argv=None) -> None:
    keys = (
        "oof_miou",
        "oof_miou_equal_weights",
        "best_member_oof_miou",
        "weights_chosen_from",
        "class_bias_oof_gain",
    )
    run_step(
        ensemble,
        EnsembleArgs,
        argv,
        "Ensemble members' OOF/test probabilities with OOF-tuned weights.",
        (PredictionError, ValueError),
        report=lambda summary: json.dumps({k: summary[k] for k in keys}),
    )


if __name__ == "__main__":
    main()
