"""The competition submission format: encode masks, parse and check any such CSV.

Header ``image_id,PredictionString``; one row per test image; image_id is the COCO
file_name; PredictionString is the class-index mask at the submission size (height x
width; or each image's own size for ``submission.size: native``), flattened row-major,
space separated.

Masks are encoded by placing ASCII digits into a byte array (numpy), not by joining
65,536 Python strings per image (about 5x slower).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segflow.input_size import as_size, parse_size

HEADER = b"image_id,PredictionString"
NATIVE = "native"  # submission.size: each test image's own size


class SubmissionError(ValueError):
    """A submission file that the competition would reject; names the row and image id."""


def submission_sizes(test_json: str | Path, size) -> dict[str, tuple[int, int]]:
    """Image id -> (height, width) of its submitted mask: ``size`` (a side, or (height,
    width)) for every image, or each image's own size for ``"native"``."""
    images = json.loads(Path(test_json).read_text())["images"]
    if size == NATIVE:
        return {i["file_name"]: (int(i["height"]), int(i["width"])) for i in images}
    fixed = as_size(size)
    return {i["file_name"]: fixed for i in images}


def parse_submission_size(text: str):
    """``native``, or a size as segflow.input_size.parse_size reads it."""
    return NATIVE if text == NATIVE else parse_size(text)


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


def mask_size(size, image_id: str, where: str) -> tuple[int, int]:
    """(height, width) of ``image_id``'s mask: ``size`` is a side n (n x n), (height,
    width), or a mapping image id -> (height, width) (native sizes)."""
    if isinstance(size, dict):
        if image_id not in size:
            raise SubmissionError(f"{where}: not a test image")
        return tuple(size[image_id])
    if isinstance(size, int):
        return (size, size)
    return tuple(size)


def read_submission(
    path: str | Path, size, n_classes: int, expected_ids: list[str] | None = None
):
    """Yield (image_id, mask) of each row after checking it; see :func:`check_submission`.
    ``size``: see :func:`mask_size`."""
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
            height, width = mask_size(size, image_id, where)
            yield (
                image_id,
                decode_prediction(text, height * width, n_classes, where).reshape(
                    height, width
                ),
            )
    if expected_ids is not None and len(seen) != len(expected_ids):
        missing = [i for i in expected_ids if i not in seen]
        raise SubmissionError(
            f"{path}: {len(seen)} rows for {len(expected_ids)} test images;"
            f" missing e.g. {missing[:3]}"
        )


def check_submission(
    path: str | Path, size, n_classes: int, expected_ids: list[str] | None = None
) -> int:
    """Check header, ids (unique; all and only the test images), lengths, value range.
    Returns the number of rows."""
    expected = set(expected_ids) if expected_ids is not None else None
    rows = sum(1 for _ in read_submission(path, size, n_classes, expected))
    if rows == 0:
        raise SubmissionError(f"{path}: no rows: a submission predicts the test images")
    return rows
