"""Related images that random folds would split: file-name sequences and near-duplicates.

Consecutive video frames, bursts and re-saved copies look alike, so a fold that
validates on one and trains on its neighbour scores the model on images it has as good
as seen: the OOF mIoU is optimistic and every choice tuned on it (ensemble weights,
class bias, cleaning) is tuned on a flattering number. Two signals, both from the index:

- **sequences**: file names that differ only in their last number (``seq01_0042.png``,
  ``0016E5_07959.png``), at least :data:`MIN_SEQUENCE` of them with a stem in common,
  a median step between consecutive numbers of at most :data:`MAX_MEDIAN_STEP`, and
  neighbours that look alike: the median Hamming distance between the difference
  hashes of consecutive members is at most :data:`SEQUENCE_LIKENESS` of that between
  members half the group apart. A numbered photo collection (``0001.jpg`` ...
  ``1004.jpg``, unrelated photos) has the names of a sequence but not its likeness;
- **near-duplicates**: images whose 64-bit difference hashes (dHash of the grey image
  at 9 x 8, computed by the index) differ in at most :data:`DUPLICATE_BITS` bits, among
  each image's :data:`NEIGHBOURS` neighbours in file-name order (and identical hashes
  anywhere).

:func:`suggest_group_by` proposes a ``cv.group_by`` regex that keeps runs of
consecutive frames in one group (the file name without its last digits), and
:func:`fold_leaks` counts the related pairs that given folds split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

MIN_SEQUENCE = 3
MAX_MEDIAN_STEP = 50
SEQUENCE_LIKENESS = 0.6
DUPLICATE_BITS = 6
NEIGHBOURS = 8
_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def difference_hash(grey: np.ndarray) -> str:
    """dHash: 64 bits, each whether a pixel of the 9 x 8 grey thumbnail is brighter than
    its right neighbour; as 16 hex digits. Near-identical images differ in few bits."""
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits of two arrays of 64-bit hashes, pairwise."""
    xor = np.bitwise_xor(a, b)
    return np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def hash_values(hashes) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def sequence_stems(file_names, hashes) -> pd.Series:
    """Each file's sequence stem (its name with the last number replaced by ``#``) where
    it belongs to a sequence (see module doc), else None."""
    names = pd.Series(list(file_names), dtype=object)
    values = hash_values(hashes)
    parts = names.str.extract(_LAST_NUMBER)
    stems = parts[0] + "#" + parts[2]
    numbers = pd.to_numeric(parts[1], errors="coerce")
    result = pd.Series([None] * len(names), dtype=object)
    for stem, members in numbers.groupby(stems):
        if len(members) < MIN_SEQUENCE:
            continue
        members = members.sort_values(kind="stable")
        if np.median(np.diff(members.to_numpy())) > MAX_MEDIAN_STEP:
            continue
        ordered = values[members.index.to_numpy()]
        consecutive = np.median(hamming(ordered[:-1], ordered[1:]))
        apart = np.median(hamming(ordered, np.roll(ordered, len(ordered) // 2)))
        if consecutive <= SEQUENCE_LIKENESS * apart:
            result[members.index] = stem
    return result


def near_duplicate_pairs(file_names, hashes) -> list[tuple[int, int, int]]:
    """(i, j, differing bits) of near-duplicate images (positions in the inputs): each
    image against its neighbours in file-name order, and equal hashes anywhere."""
    names = list(file_names)
    values = hash_values(hashes)
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    pairs = {}
    for offset in range(1, NEIGHBOURS + 1):
        a, b = order[:-offset], order[offset:]
        if not len(a):
            break
        bits = hamming(values[a], values[b])
        for i, j, d in zip(
            a[bits <= DUPLICATE_BITS],
            b[bits <= DUPLICATE_BITS],
            bits[bits <= DUPLICATE_BITS],
        ):
            pairs[(min(i, j), max(i, j))] = int(d)
    for _, same in pd.Series(range(len(values))).groupby(values):
        members = same.tolist()
        for i, j in zip(members, members[1:]):
            pairs[(min(i, j), max(i, j))] = 0
    return [(int(i), int(j), d) for (i, j), d in sorted(pairs.items())]


def suggest_group_by(file_names, stems: pd.Series, min_groups: int) -> str | None:
    """A cv.group_by regex whose groups keep runs of consecutive frames together: the
    file name without its last k digits (runs of 10^k numbers), the largest k that
    still cuts the sequences into ``min_groups`` groups; None where there is none."""
    names = pd.Series(list(file_names), dtype=object)
    in_sequence = stems.notna()
    if not in_sequence.any():
        return None
    frames = names[in_sequence]
    digits = frames.str.extract(_LAST_NUMBER)[1].str.len().min()
    for k in range(int(digits), 0, -1):
        pattern = rf"^(.*?)\d{{{k}}}\D*$"
        if frames.str.extract(pattern)[0].nunique() >= min_groups:
            return pattern
    return r"^(.*?)\d\D*$"


@dataclass
class RelatedImages:
    """What :func:`related_images` found."""

    stems: pd.Series  # sequence stem per image, or None
    duplicates: list[tuple[int, int, int]]  # near-duplicate pairs (positions, bits)
    suggestion: str | None  # a cv.group_by regex, or None

    @property
    def sequences(self) -> int:
        return int(self.stems.nunique())

    @property
    def in_sequences(self) -> int:
        return int(self.stems.notna().sum())

    def pairs(self) -> list[tuple[int, int]]:
        """Related pairs (positions): consecutive members of each sequence in file-name
        order, and the near-duplicates."""
        found = {(i, j) for i, j, _ in self.duplicates}
        for _, members in self.stems.dropna().groupby(self.stems.dropna()):
            positions = sorted(members.index)
            found.update(zip(positions, positions[1:]))
        return sorted(found)


def related_images(images: pd.DataFrame, min_groups: int) -> RelatedImages:
    """Sequences, near-duplicates and a group_by suggestion among ``images`` (rows of
    images.parquet, in their order; the ``dhash`` column from the index)."""
    images = images.reset_index(drop=True)
    names = images["file_name"].tolist()
    stems = sequence_stems(names, images["dhash"].tolist())
    duplicates = near_duplicate_pairs(names, images["dhash"].tolist())
    return RelatedImages(stems, duplicates, suggest_group_by(names, stems, min_groups))


def fold_leaks(related: RelatedImages, fold: np.ndarray) -> dict:
    """How many related pairs given folds split (``fold`` per image, in the same
    order; -1 is never validated and counts as training)."""
    pairs = related.pairs()
    split = sum(1 for i, j in pairs if fold[i] != fold[j])
    return {
        "related_pairs": len(pairs),
        "split_pairs": split,
        "split_share": split / len(pairs) if pairs else 0.0,
    }
