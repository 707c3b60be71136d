"""Time of writing (and checking) an 819-image 256x256 submission, against naive joining.

    python benchmarks/submission_speed.py

819 is the recycling-trash competition's test set. The written file is checked by
segflow.submission.check_submission before it is renamed, so "write" includes the check.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from segflow.submission import encode_mask, write_submission  # noqa: E402

N_IMAGES, SIZE, N_CLASSES = 819, 256, 11


def realistic_masks(rng) -> np.ndarray:
    """Mostly background with a few rectangles; class 10 (Clothing, rare) in ~5% of images."""
    labels = np.zeros((N_IMAGES, SIZE, SIZE), np.uint8)
    for mask in labels:
        for _ in range(rng.integers(1, 8)):
            y, x = rng.integers(0, SIZE - 32, 2)
            h, w = rng.integers(16, 128, 2)
            mask[y : y + h, x : x + w] = rng.integers(1, 10)
        if rng.random() < 0.05:
            mask[:64, :64] = 10
    return labels


def main() -> None:
    rng = np.random.default_rng(0)
    for case, labels in (
        ("realistic", realistic_masks(rng)),
        (
            "worst case: uniform random 0..10",
            rng.integers(0, N_CLASSES, (N_IMAGES, SIZE, SIZE), dtype=np.uint8),
        ),
    ):
        run(case, labels)


def run(case: str, labels: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = [f"batch_{i % 3 + 1:02d}/{i:04d}.jpg" for i in range(N_IMAGES)]
        np.save(tmp / "labels.npy", labels)
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
        (tmp / "test.json").write_text(
            json.dumps(
                {
                    "images": [
                        {"id": k, "file_name": i, "width": 512, "height": 512}
                        for k, i in enumerate(ids)
                    ],
                    "categories": [],
                }
            )
        )

        started = time.perf_counter()
        write_submission(
            labels_path=tmp / "labels.npy",
            ids_path=tmp / "ids.txt",
            test_json=tmp / "test.json",
            out=tmp / "submission.csv",
            size=SIZE,
            n_classes=N_CLASSES,
        )
        segflow_s = time.perf_counter() - started

        started = time.perf_counter()
        encoded = [encode_mask(mask) for mask in labels]
        encode_s = time.perf_counter() - started

        started = time.perf_counter()
        naive = [" ".join(str(v) for v in mask.ravel().tolist()) for mask in labels]
        naive_s = time.perf_counter() - started
        assert naive[0].encode() == encoded[0]

        size_mb = (tmp / "submission.csv").stat().st_size / 1e6
    print(f"{case}: {N_IMAGES} images {SIZE}x{SIZE}, {size_mb:.0f} MB")
    print(
        f"segflow write + check: {segflow_s:.2f} s   (encoding alone {encode_s:.2f} s)"
    )
    print(f"naive ' '.join(str(v)) encoding alone: {naive_s:.2f} s")


if __name__ == "__main__":
    main()
