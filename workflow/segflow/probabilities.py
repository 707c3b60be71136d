"""Stored class probabilities: uint8 memory maps with an id sidecar, written and read here.

A set of probability maps is ``<name>.npy``, uint8 (N, classes, H, W) holding
round(p * 255), which ``numpy.load(mmap_mode="r")`` streams, plus ``<name>_ids.txt``,
the image id of each row (one per line, same order). Writers fill the map batch by batch
and readers take a chunk of images at a time, so no step holds a whole set in memory.

A member (one model x seed of a round) has one such set per fold model: for OOF each
image is in the set of the one fold that validated it; for test every fold model
predicted every image, and the member's probability is their mean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from segflow.io import atomic_path, read_ids, write_ids

SCALE = 255  # stored value = round(p * SCALE)


class PredictionError(ValueError):
    """Stored predictions that do not fit the index, each other or their ids."""


def ids_path(npy_path: str | Path) -> Path:
    """The id sidecar of a stored set: ``oof.npy`` -> ``oof_ids.txt``."""
    npy_path = Path(npy_path)
    return npy_path.with_name(f"{npy_path.stem}_ids.txt")


def encode_probabilities(probabilities):
    """Probabilities in [0, 1] -> uint8 as stored. Takes a numpy array or a torch tensor
    (encoded where it lies: a GPU batch crosses to the host as uint8, 4x smaller)."""
    scaled = (probabilities * SCALE).round().clip(0, SCALE)
    if isinstance(scaled, np.ndarray):
        return scaled.astype(np.uint8)
    return scaled.byte()  # torch: no torch import here, the steps that use it have it


def decode_probabilities(stored: np.ndarray) -> np.ndarray:
    """Stored uint8 maps (or a weighted mean of them, as float32) -> float32
    probabilities."""
    return np.asarray(stored, np.float32) / float(SCALE)


@contextlib.contextmanager
def probability_writer(
    npy_path: str | Path, image_ids: list[str], map_shape: tuple[int, ...]
) -> Iterator[np.memmap]:
    """A uint8 memmap (len(image_ids), *map_shape) to fill with encoded probabilities;
    renamed into place with its id sidecar when the block succeeds."""
    with atomic_path(npy_path) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(image_ids), *map_shape)
        )
        yield out
        out.flush()
        del out
    write_ids(image_ids, ids_path(npy_path))


def read_probability_set(npy_path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(memory-mapped uint8 maps, image ids) of a stored set, checked against each other."""
    array = np.load(npy_path, mmap_mode="r")
    ids = read_ids(ids_path(npy_path))
    if array.shape[0] != len(ids):
        raise PredictionError(
            f"{npy_path} holds {array.shape[0]} maps for {len(ids)} ids in"
            f" {ids_path(npy_path)}"
        )
    if len(set(ids)) != len(ids):
        raise PredictionError(f"{ids_path(npy_path)}: an image id is listed twice")
    return array, ids


class MemberProbabilities:
    """One member's probabilities by image id, read lazily from its fold models' sets.

    ``kind`` "oof": each image in exactly one set (the fold that validated it);
    "test": every set holds the same images, and the member's map is their mean, or
    their weighted mean with ``weights`` (one per set, summing to 1).
    """

    def __init__(
        self,
        name: str,
        npy_paths: list[str | Path],
        kind: str,
        weights: list[float] | None = None,
    ):
        if kind not in ("oof", "test"):
            raise ValueError(f"kind must be oof or test, got {kind!r}")
        if weights is not None and (
            kind != "test"
            or len(weights) != len(npy_paths)
            or abs(sum(weights) - 1) > 1e-6
        ):
            raise ValueError(
                f"member {name}: weights {weights} must be one per test set, summing to 1"
            )
        self.name, self.kind = name, kind
        self.weights = weights or [1.0 / len(npy_paths)] * len(npy_paths)
        self.rows: dict[str, tuple[int, int]] = {}  # image id -> (set, row)
        self.arrays = []
        for k, path in enumerate(npy_paths):
            array, ids = read_probability_set(path)
            self.arrays.append(array)
            if kind == "oof":
                for row, image_id in enumerate(ids):
                    if image_id in self.rows:
                        raise PredictionError(
                            f"member {name}: image {image_id} is in the OOF of two folds"
                        )
                    self.rows[image_id] = (k, row)
            elif k == 0:
                self.rows = {image_id: (0, row) for row, image_id in enumerate(ids)}
            elif ids != list(self.rows):
                raise PredictionError(
                    f"member {name}: the test ids of {path} differ from those of"
                    f" {npy_paths[0]}"
                )
        self.shape = self.arrays[0].shape[1:]

    def get(self, image_ids: list[str]) -> np.ndarray:
        """float32 (n, C, H, W) probabilities of ``image_ids``."""
        missing = [i for i in image_ids if i not in self.rows]
        if missing:
            raise PredictionError(
                f"member {self.name}: no {self.kind} probabilities for {len(missing)}"
                f" images, e.g. {missing[:3]}"
            )
        if self.kind == "test":
            rows = [self.rows[i][1] for i in image_ids]
            weighted = sum(
                np.float32(w) * a[rows].astype(np.float32)
                for w, a in zip(self.weights, self.arrays)
            )
            return decode_probabilities(weighted)
        out = np.empty((len(image_ids), *self.shape), np.float32)
        for position, image_id in enumerate(image_ids):
            k, row = self.rows[image_id]
            out[position] = self.arrays[k][row]
        return decode_probabilities(out)
