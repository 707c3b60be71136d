"""Peak memory and speed of the sliding window (segflow.sliding_window) as images grow.

    python benchmarks/sliding_window.py                       # 512, 1024, 2048 px
    python benchmarks/sliding_window.py --sides 512 1024 --tile 256 --device cuda

For each image side, a fresh process builds the demo's model (DeepLabV3+/ResNet-18,
11 classes, random weights) and predicts one random image of that side twice after a
warm-up: through the sliding window (tiles of ``--tile``, ``--overlap``, ``--batch``
tiles at a time, as segflow.predict does for a model trained on crops) and, for
comparison, whole (one forward pass of the full image). It reports, per mode: the
process's peak resident memory (CPU, ru_maxrss) or peak CUDA memory allocated, and
images per second. The whole-image pass is skipped where it would not fit
(``--whole-max``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {workflow!r})
import torch
from segflow.models import create_model
from segflow.predict import tta_model
from segflow.runtime import set_threads
from segflow.sliding_window import sliding_window

side, tile, overlap, batch, mode, device = {args!r}
set_threads(2)
model = create_model("DeepLabV3Plus", "resnet18", 11).to(device).eval()
probabilities = tta_model(model, "none", (tile, tile), 16)
image = torch.randn(1, 3, side, side, device=device)

def run():
    with torch.no_grad():
        if mode == "window":
            return sliding_window(probabilities, image, tile, overlap, batch)
        return probabilities(image)

run()  # warm-up
if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
repeats = 2
for _ in range(repeats):
    out = run()
if device == "cuda":
    torch.cuda.synchronize()
seconds = (time.perf_counter() - started) / repeats
peak = (
    torch.cuda.max_memory_allocated() / 2**20
    if device == "cuda"
    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
)
print(json.dumps({{"peak_mb": peak, "images_per_s": 1 / seconds, "shape": list(out.shape)}}))
"""


def measure(side, tile, overlap, batch, mode, device) -> dict:
    code = CHILD.format(
        workflow=str(REPO / "workflow"), args=(side, tile, overlap, batch, mode, device)
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", nargs="*", type=int, default=[512, 1024, 2048])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--whole-max", type=int, default=2048, help="largest side run whole"
    )
    parser.add_argument("--out", default=None, help="JSON of the table")
    args = parser.parse_args(argv)
    rows = []
    for side in args.sides:
        for mode in ("window", "whole"):
            if mode == "whole" and side > args.whole_max:
                continue
            started = time.perf_counter()
            result = measure(
                side, args.tile, args.overlap, args.batch, mode, args.device
            )
            rows.append({"side": side, "mode": mode, **result})
            print(json.dumps(rows[-1]), f"({time.perf_counter() - started:.0f} s)")
    print(
        f"\ntile {args.tile}, overlap {args.overlap}, {args.batch} tiles per batch,"
        f" device {args.device}"
    )
    print("| image side | mode | peak memory (MB) | images/s |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['side']} | {row['mode']} | {row['error']} | |")
            continue
        print(
            f"| {row['side']} | {row['mode']} | {row['peak_mb']:.0f}"
            f" | {row['images_per_s']:.3f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
