"""The competition submission CSV: write it from the ensemble's test labels, or check one.

Rows follow ``test.json`` (or the sample submission's order when it lists ids); the
format is segflow.submission_format's. Masks are resized from the prediction size by
nearest neighbour on the label map (the argmax is taken first, at the prediction size)
to ``submission.size``: one (height, width) for every image, or ``native``, each test
image's own size as test.json gives it.

The file is checked before it is renamed into place; ``check`` runs the same check on
any CSV, with the mask size and class count of ``--config`` (default: config.yaml) unless
given:

    python -m segflow.submission check submission.csv --test-json test.json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from segflow.coco import DataError, read_json
from segflow.input_size import Size, as_size
from segflow.io import atomic_path, read_ids
from segflow.labels import resize_label
from segflow.settings import ConfigError, validated
from segflow.step_cli import arg, run_commands
from segflow.submission_format import (
    HEADER,
    NATIVE,
    SubmissionError,
    check_submission,
    encode_mask,
    parse_submission_size,
    submission_sizes,
)


def submission_order(
    test_json: str | Path, sample_submission: str | Path | None
) -> list[str]:
    """Test image ids in the competition's order: the sample's if it lists ids, else
    test.json's."""
    ids = [image["file_name"] for image in read_json(test_json)["images"]]
    if sample_submission:
        listed = (
            pd.read_csv(sample_submission, usecols=["image_id"])["image_id"]
            .astype(str)
            .tolist()
        )
        if listed:
            if sorted(listed) != sorted(ids):
                raise SubmissionError(
                    f"{sample_submission}: its image ids differ from those of {test_json}"
                )
            return listed
    return ids


def write_submission(
    *,
    labels_path: str | Path,
    ids_path: str | Path,
    test_json: str | Path,
    out: str | Path,
    size,
    n_classes: int,
    sample_submission: str | Path | None,
    debug_subset: bool,
) -> int:
    """Write the CSV from the ensemble's test label maps; check it; rename it into place.

    ``debug_subset`` (debug mode, which predicts a sample of the test images) writes the
    predicted images only; otherwise every test image must have a prediction.
    """
    labels = np.load(labels_path, mmap_mode="r")
    row_of = {image_id: row for row, image_id in enumerate(read_ids(ids_path))}
    order = submission_order(test_json, sample_submission)
    if debug_subset:
        order = [i for i in order if i in row_of]
        every = len(submission_order(test_json, sample_submission))
        print(
            f"debug: {len(order)} predicted test images of {every};"
            " not a complete submission"
        )
    missing = [i for i in order if i not in row_of]
    if missing:
        raise SubmissionError(
            f"{ids_path}: no prediction for {len(missing)} test images, e.g. {missing[:3]}"
        )
    sizes = submission_sizes(test_json, size)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(HEADER + b"\n")
            for image_id in order:
                mask = resize_label(
                    np.asarray(labels[row_of[image_id]]), *sizes[image_id]
                )
                f.write(image_id.encode() + b"," + encode_mask(mask) + b"\n")
        rows = check_submission(tmp, sizes, n_classes, order)
    return rows


@dataclass(frozen=True, kw_only=True)
class CheckArgs:
    """``check``: any submission CSV against the test images and the format."""

    file: Path = arg("the submission CSV", positional=True)
    test_json: Path | None = arg(
        "COCO test file: ids must be exactly its images", default=None
    )
    size: Size | str | None = arg(
        "mask height x width (96x128, 96 for 96x96, or native: each test image's own"
        " size, from --test-json; default: from --config)",
        default=None,
        parse=parse_submission_size,
    )
    n_classes: int | None = arg("classes (default: from --config)", default=None)
    config: Path = arg(
        "segflow config for size and classes", default=Path("config.yaml")
    )


@dataclass(frozen=True, kw_only=True)
class WriteArgs:
    """``write``: the CSV from an ensemble's test label maps."""

    labels_path: Path = arg("test_labels.npy (N, H, W) uint8", flag="--labels")
    ids_path: Path = arg("test_ids.txt", flag="--ids")
    test_json: Path = arg("the COCO test file")
    sample_submission: Path | None = arg(
        "the competition's sample submission, or empty",
        parse=lambda text: Path(text) if text else None,
    )
    size: Size | str = arg(
        "mask height x width, or native", parse=parse_submission_size
    )
    n_classes: int = arg("number of classes")
    out: Path = arg("submission.csv")
    debug_subset: bool = arg(
        "debug mode: write the predicted sample of the test images only", default=False
    )


def check(args: CheckArgs) -> str:
    """The check's one line (an error raises)."""
    expected = (
        [image["file_name"] for image in read_json(args.test_json)["images"]]
        if args.test_json
        else None
    )
    size, n_classes = args.size, args.n_classes
    if size is None or n_classes is None:
        config = validated(yaml.safe_load(Path(args.config).read_text()))
        size = size or config["submission"]["size"]
        n_classes = n_classes or len(config["classes"])
    if size == NATIVE:
        if not args.test_json:
            raise SubmissionError("--size native needs --test-json (the sizes)")
        size = submission_sizes(args.test_json, NATIVE)
        shown = "native-size"
    else:
        size = as_size(size)
        shown = f"{size[0]}x{size[1]} (height x width)"
    rows = check_submission(args.file, size, n_classes, expected)
    return f"OK: {args.file}: {rows} rows, {shown} masks, classes 0..{n_classes - 1}"


def write(args: WriteArgs) -> str:
    rows = write_submission(
        labels_path=args.labels_path,
        ids_path=args.ids_path,
        test_json=args.test_json,
        out=args.out,
        size=args.size,
        n_classes=args.n_classes,
        sample_submission=args.sample_submission,
        debug_subset=args.debug_subset,
    )
    return f"wrote {args.out}: {rows} rows"


def main(argv=None) -> None:
    try:
        run_commands(
            {
                "check": (check, CheckArgs, "check any submission CSV"),
                "write": (write, WriteArgs, "write the CSV from ensemble label maps"),
            },
            argv,
            "Write or check a competition submission CSV.",
            (SubmissionError, DataError, ConfigError),
            report=str,
        )
    except OSError as e:  # a missing or unreadable file: its name, not a traceback
        sys.exit(f"ERROR: {e.filename}: {e.strerror}")


if __name__ == "__main__":
    main()
