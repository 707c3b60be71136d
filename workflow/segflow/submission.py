"""The competition submission CSV: write it fast, and check any such file.

Format: header ``image_id,PredictionString``; one row per test image in ``test.json``
order (or the sample submission's order when it lists ids); image_id is the COCO
file_name; PredictionString is the class-index mask at ``size`` x ``size``, flattened
row-major, space separated. Masks are resized from the prediction size by nearest
neighbour on the label map (the argmax is taken first, at the prediction size).

Masks are encoded by placing ASCII digits into a byte array (numpy), not by joining
65,536 Python strings per image (about 5x slower). The file is checked by :func:`check_submission` before
it is renamed into place; ``python -m segflow.submission check FILE`` runs the same check
on any CSV.

    python -m segflow.submission check submission.csv --test-json test.json --size 256 --n-classes 11
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segflow.coco import read_json
from segflow.io import atomic_path, read_ids

HEADER = b"image_id,PredictionString"


class SubmissionError(ValueError):
    """A submission file that the competition would reject; names the row and image id."""


def encode_mask(mask: np.ndarray) -> bytes:
    """A uint8 class mask as the space-separated row-major string (bytes)."""
    values = np.asarray(mask, np.uint8).ravel()
    if values.max(initial=0) < 10:  # the common case: every value one digit
        out = np.full(2 * values.size - 1, ord(" "), np.uint8)
        out[0::2] = values + ord("0")
        return out.tobytes()
    # Each value takes 1-3 digits and a space: place the digits by the running length.
    widths = 1 + (values >= 10) + (values >= 100)
    ends = np.cumsum(widths + 1) - 1  # where each value's space goes
    out = np.full(int(ends[-1]), ord(" "), np.uint8)
    out[ends - 1] = values % 10 + ord("0")
    for k, threshold in ((2, 10), (3, 100)):
        has = values >= threshold
        out[ends[has] - k] = (values[has] // threshold) % 10 + ord("0")
    return out.tobytes()


def decode_prediction(
    text: bytes, length: int, n_classes: int, where: str
) -> np.ndarray:
    """Parse a PredictionString into ``length`` class indices, or raise naming ``where``."""
    buffer = np.frombuffer(text, np.uint8)
    if buffer.size == 2 * length - 1 and np.all(buffer[1::2] == ord(" ")):
        digits = buffer[0::2] - ord("0")  # one-digit values: read them off directly
        if np.all(digits <= 9):  # uint8: a byte below "0" wraps above 9
            values = digits
        else:
            raise SubmissionError(
                f"{where}: PredictionString must be integers separated by single spaces"
            )
    else:
        is_space = buffer == ord(" ")
        is_digit = (buffer >= ord("0")) & (buffer <= ord("9"))
        if buffer.size == 0 or not np.all(is_space | is_digit):
            raise SubmissionError(
                f"{where}: PredictionString must be integers separated by single spaces"
            )
        if is_space[0] or is_space[-1] or np.any(is_space[:-1] & is_space[1:]):
            raise SubmissionError(
                f"{where}: empty value (double, leading or trailing space)"
            )
        count = int(is_space.sum()) + 1
        if count != length:
            raise SubmissionError(f"{where}: {count} values, expected {length}")
        values = np.fromstring(
            text, dtype=np.int64, sep=" "
        )  # format checked above: C parsing
    if values.size != length:
        raise SubmissionError(f"{where}: {values.size} values, expected {length}")
    if values.max() >= n_classes:
        raise SubmissionError(
            f"{where}: class {values.max()} out of range 0..{n_classes - 1}"
        )
    return values.astype(np.uint8)


def read_submission(
    path: str | Path, size: int, n_classes: int, expected_ids: list[str] | None = None
):
    """Yield (image_id, mask) of each row after checking it; see :func:`check_submission`."""
    with open(path, "rb") as f:
        header = f.readline().rstrip(b"\r\n")
        if header != HEADER:
            raise SubmissionError(
                f"{path}: header is {header[:60]!r}, expected {HEADER.decode()!r}"
            )
        seen: set[str] = set()
        for number, line in enumerate(f, start=2):
            image_id, comma, text = line.rstrip(b"\r\n").partition(b",")
            image_id = image_id.decode("utf-8", "replace")
            where = f"{path}: row {number} (image_id {image_id!r})"
            if not comma:
                raise SubmissionError(f"{where}: no comma")
            if image_id in seen:
                raise SubmissionError(f"{where}: duplicate image_id")
            if expected_ids is not None and image_id not in expected_ids:
                raise SubmissionError(f"{where}: not a test image")
            seen.add(image_id)
            yield (
                image_id,
                decode_prediction(text, size * size, n_classes, where).reshape(
                    size, size
                ),
            )
    if expected_ids is not None and len(seen) != len(expected_ids):
        missing = [i for i in expected_ids if i not in seen]
        raise SubmissionError(
            f"{path}: {len(seen)} rows for {len(expected_ids)} test images; missing e.g. {missing[:3]}"
        )


def check_submission(
    path: str | Path, size: int, n_classes: int, expected_ids: list[str] | None = None
) -> int:
    """Check header, ids (unique; all and only the test images), lengths, value range. Returns rows."""
    expected = set(expected_ids) if expected_ids is not None else None
    return sum(1 for _ in read_submission(path, size, n_classes, expected))


def submission_order(
    test_json: str | Path, sample_submission: str | Path | None
) -> list[str]:
    """Test image ids in the order the competition wants: the sample's if it lists ids, else test.json's."""
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
    size: int,
    n_classes: int,
    sample_submission: str | Path | None = None,
    debug_subset: bool = False,
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
        print(
            f"debug: {len(order)} predicted test images of {len(submission_order(test_json, sample_submission))}; not a complete submission"
        )
    missing = [i for i in order if i not in row_of]
    if missing:
        raise SubmissionError(
            f"{ids_path}: no prediction for {len(missing)} test images, e.g. {missing[:3]}"
        )
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(HEADER + b"\n")
            for image_id in order:
                mask = labels[row_of[image_id]]
                if mask.shape != (size, size):
                    mask = cv2.resize(
                        np.ascontiguousarray(mask),
                        (size, size),
                        interpolation=cv2.INTER_NEAREST,
                    )
                f.write(image_id.encode() + b"," + encode_mask(mask) + b"\n")
        rows = check_submission(tmp, size, n_classes, order)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Write or check a competition submission CSV."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check any submission CSV")
    check.add_argument("file")
    check.add_argument(
        "--test-json", help="COCO test file: ids must be exactly its images"
    )
    check.add_argument("--size", type=int, default=256)
    check.add_argument("--n-classes", type=int, default=11)
    write = commands.add_parser("write", help="write the CSV from ensemble label maps")
    write.add_argument(
        "--labels", required=True, help="test_labels.npy (N, H, W) uint8"
    )
    write.add_argument("--ids", required=True, help="test_ids.txt")
    write.add_argument("--test-json", required=True)
    write.add_argument("--sample-submission", default="")
    write.add_argument("--size", type=int, default=256)
    write.add_argument("--n-classes", type=int, required=True)
    write.add_argument("--out", required=True)
    write.add_argument(
        "--debug-subset",
        action="store_true",
        help="debug mode: write the predicted sample of the test images only",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            expected = (
                [image["file_name"] for image in read_json(args.test_json)["images"]]
                if args.test_json
                else None
            )
            rows = check_submission(args.file, args.size, args.n_classes, expected)
            print(
                f"OK: {args.file}: {rows} rows, {args.size}x{args.size} masks, classes 0..{args.n_classes - 1}"
            )
        else:
            rows = write_submission(
                labels_path=args.labels,
                ids_path=args.ids,
                test_json=args.test_json,
                out=args.out,
                size=args.size,
                n_classes=args.n_classes,
                sample_submission=args.sample_submission or None,
                debug_subset=args.debug_subset,
            )
            print(f"wrote {args.out}: {rows} rows")
    except SubmissionError as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
