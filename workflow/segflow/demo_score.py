"""Score a submission against the demo's hidden test labels: the project's quality benchmark.

Reads ``truth/test.json`` (which no training or prediction step reads), rasterizes it with
the same rule as every label (segflow.coco.rasterize), resizes it to the submission size
by nearest neighbour as the competition does, and computes the competition mIoU over the
whole test set from the submission CSV as written. ``rounds`` scores each round's own
ensemble and the single-model baselines the same way (their test label maps, resized by
nearest neighbour as the submission step does), so a user sees what each stage bought.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.coco import load_coco, rasterize
from segflow.input_size import Size, as_size
from segflow.io import atomic_path, read_ids, write_json
from segflow.labels import resize_label
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.probabilities import read_probability_set
from segflow.step_cli import arg, run_step
from segflow.submission_format import (
    NATIVE,
    SubmissionError,
    parse_submission_size,
    read_submission,
    submission_sizes,
)
from segflow.viz import plt, save_figure


def truth_labels(truth_json: str, classes: list[str], size) -> dict[str, np.ndarray]:
    """The hidden test labels by image id (file_name), at the submission ``size`` (a
    side, (height, width) or native)."""
    truth = load_coco(truth_json, classes)
    sizes = submission_sizes(truth_json, size)
    return {
        image["file_name"]: resize_label(
            rasterize(
                truth.annotations[image["id"]],
                image["height"],
                image["width"],
                truth.class_of_category,
            ).mask,
            *sizes[image["file_name"]],
        )
        for image in truth.images
    }


def score_predictions(
    predictions,
    labels: dict[str, np.ndarray],
    classes: list[str],
    size,
    source: str,
) -> dict:
    """Test mIoU of (image id, label map at the submission ``size``) pairs over the whole
    set; each ``labels`` map is at that size already."""
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    scored = 0
    for image_id, prediction in predictions:
        if image_id not in labels:
            raise SubmissionError(
                f"{source}: image {image_id!r} is not a test image of the demo truth"
            )
        confusion += confusion_matrix(labels[image_id], prediction, len(classes))
        scored += 1
    return {
        "test_miou": mean_iou(confusion),
        "per_class_iou": per_class_iou(confusion, classes),
        "images": scored,
        "size": size if size == NATIVE else list(as_size(size)),
    }


def demo_score(
    *, submission: str, truth_json: str, classes: list[str], size, out: str
) -> dict:
    labels = truth_labels(truth_json, classes, size)
    # The submission step already checked completeness (debug mode writes a sample).
    score = score_predictions(
        read_submission(submission, submission_sizes(truth_json, size), len(classes)),
        labels,
        classes,
        size,
        submission,
    )
    write_json(score, out)
    return score


def label_maps(files: dict[str, str]):
    """(image id, label map) of an ensemble's test labels {"test_labels", "test_ids"}, or
    of a single model's test probabilities {"test"} (their argmax, as the model votes)."""
    if "test_labels" in files:
        maps = np.load(files["test_labels"], mmap_mode="r")
        ids = read_ids(files["test_ids"])
        return ((i, np.asarray(maps[k])) for k, i in enumerate(ids))
    stored, ids = read_probability_set(files["test"])
    return ((i, np.asarray(stored[k]).argmax(axis=0)) for k, i in enumerate(ids))


def rounds_score(
    *,
    entries: dict[str, dict[str, str]],
    truth_json: str,
    classes: list[str],
    size,
    out: str,
    figure_out: str | None,
) -> dict:
    """Demo test mIoU (and OOF mIoU where there is one) of each entry: a round's
    ensemble {"test_labels", "test_ids", "summary"} or a single model {"test"}, the
    baselines. Every map is resized by nearest neighbour to the submission ``size``, as
    the submission step does."""
    labels = truth_labels(truth_json, classes, size)
    result = {}
    for name, files in entries.items():
        pairs = (
            (i, resize_label(m, *labels[i].shape) if i in labels else m)
            for i, m in label_maps(files)
        )
        source = files.get("test_labels") or files["test"]
        score = score_predictions(pairs, labels, classes, size, source)
        oof = None
        if "summary" in files:
            oof = json.loads(Path(files["summary"]).read_text())["oof_miou"]
        result[name] = {
            "test_miou": score["test_miou"],
            "oof_miou": oof,
            "per_class_iou": score["per_class_iou"],
        }
    write_json(result, out)
    if figure_out:
        rounds_figure(result, figure_out)
    return result


def rounds_figure(result: dict, path: str) -> None:
    """Bars of test and OOF mIoU per entry, in the order given (baselines, then rounds)."""
    names = list(result)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(names), 3.6))
    test = [result[n]["test_miou"] for n in names]
    oof = [result[n]["oof_miou"] or np.nan for n in names]
    ax.bar(x - 0.2, test, 0.4, label="demo test mIoU", color="#1f77b4")
    ax.bar(x + 0.2, oof, 0.4, label="OOF mIoU", color="#ff7f0e")
    for k, value in enumerate(test):
        ax.annotate(f"{value:.3f}", (x[k] - 0.2, value), ha="center", va="bottom")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, max(1e-3, *test, *[v for v in oof if v == v]) * 1.2)
    ax.legend(loc="lower right")
    ax.set_title("What each stage bought (demo)")
    with atomic_path(path) as tmp:
        save_figure(fig, tmp)


@dataclass(frozen=True, kw_only=True)
class DemoScoreArgs:
    """What the demo's scoring reads and writes: a submission, or every round's
    ensemble and the single-model baselines (its command line: step_cli)."""

    submission: Path | None = arg("score this submission CSV", default=None)
    rounds: dict[str, dict[str, str]] | None = arg(
        'or JSON: name -> a round\'s {"test_labels", "test_ids", "summary"} files or a'
        ' single model\'s {"test"} probabilities',
        default=None,
        parse=json.loads,
    )
    truth_json: Path = arg("the demo's truth/test.json", flag="--truth")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    size: Size | str = arg(
        "the submission size: height x width, or native", parse=parse_submission_size
    )
    out: Path = arg("score.json or rounds.json")
    figure_out: Path | None = arg(
        "with --rounds: the rounds figure (PNG)", default=None
    )

    def __post_init__(self):
        if (self.submission is None) == (self.rounds is None):
            raise ValueError("give one of --submission and --rounds")


def score_demo(args: DemoScoreArgs) -> str:
    """Score what ``args`` names; the line the log ends with."""
    if args.rounds is not None:
        result = rounds_score(
            entries=args.rounds,
            truth_json=args.truth_json,
            classes=args.classes,
            size=args.size,
            out=args.out,
            figure_out=args.figure_out,
        )
        return json.dumps({r: v["test_miou"] for r, v in result.items()})
    score = demo_score(
        submission=args.submission,
        truth_json=args.truth_json,
        classes=args.classes,
        size=args.size,
        out=args.out,
    )
    return json.dumps({"test_miou": score["test_miou"]})


def main(argv=None) -> None:
    run_step(
        score_demo,
        DemoScoreArgs,
        argv,
        "Score a submission against the demo's hidden test labels.",
        (SubmissionError,),
        report=str,
    )


if __name__ == "__main__":
    main()
