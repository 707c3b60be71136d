"""What a training job's live progress and resumable state cost per save, on this machine.

    python benchmarks/progress_cost.py [--repeats 5] [--threads 2]

The demo's model (DeepLabV3+/ResNet-18, 11 classes) after one AdamW step, as
segflow.train saves it: resume.pt (weights, optimizer moments, the kept epoch's weights),
progress.json of a 12-epoch history, curves.png of 12 epochs. Prints mean, min and max
seconds over the repeats, and the resume file's size. segflow.train's RESUME_EVERY_S and
CURVES_EVERY_S are chosen from these numbers against the demo's epoch time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import torch  # noqa: E402

from segflow.checkpoints import save_training_state  # noqa: E402
from segflow.models import create_model  # noqa: E402
from segflow.progress import Progress, write_curves, write_progress  # noqa: E402


def timed(action, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model("DeepLabV3Plus", "resnet18", 11, None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 96, 96)).mean().backward()
    optimizer.step()
    history = [
        {
            "epoch": e,
            "lr": 1e-3,
            "train_loss": 1 / e,
            "val_loss": 1 / e,
            "val_miou": 0.03 * e,
            "seconds": 4.6,
            "images_per_s": 33.0,
        }
        for e in range(1, 13)
    ]
    progress = Progress(run="r0/deeplab_r18/f0-s0", epochs=12, history=history)
    with tempfile.TemporaryDirectory() as folder:
        resume = Path(folder) / "resume.pt"
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_state": {k: v.clone() for k, v in model.state_dict().items()},
            "history": history,
        }
        results = {
            "resume.pt": timed(
                lambda: save_training_state(resume, state), args.repeats
            ),
            "progress.json": timed(
                lambda: write_progress(folder, progress), args.repeats
            ),
            "curves.png": timed(lambda: write_curves(folder, progress), args.repeats),
        }
        size_mb = resume.stat().st_size / 1e6
    print(
        f"{args.threads} torch threads, {args.repeats} repeats; resume.pt {size_mb:.0f} MB"
    )
    for name, seconds in results.items():
        print(
            f"{name:14s} mean {statistics.mean(seconds):.3f} s"
            f"  min {min(seconds):.3f}  max {max(seconds):.3f}"
        )


if __name__ == "__main__":
    main()
