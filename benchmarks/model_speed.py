"""Training and prediction throughput (images/s) of the models in a config.

    python benchmarks/model_speed.py                      # config.yaml's models, this machine
    python benchmarks/model_speed.py --device cuda        # on a GPU: fp32 vs AMP + channels_last

Each model is built as the workflow builds it (segflow.settings.model_settings,
segflow.models.create_model, segflow.losses.create_loss, segflow.predict.tta_model) and
timed on random batches of the configured size: a training step is forward + loss +
backward + optimizer step; prediction is the TTA'd softmax of the model's ``tta``. Data
loading is left out: it is measured by the workflow's own benchmark files
(results/benchmarks/) and the per-epoch images/s in the training logs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from segflow.losses import create_loss  # noqa: E402
from segflow.models import create_model  # noqa: E402
from segflow.predict import tta_model  # noqa: E402
from segflow.runtime import amp_autocast  # noqa: E402
from segflow.settings import (  # noqa: E402
    model_settings,
    prediction_tta,
    validated,
)


def timed(step, n_steps: int, warmup: int, device: str) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / n_steps


def measure(
    settings,
    tta: str,
    n_classes: int,
    size: int,
    device: str,
    amp: str,
    channels_last: bool,
    steps: int,
    warmup: int,
) -> dict:
    torch.manual_seed(0)
    model = create_model(settings.arch, settings.encoder, n_classes, None).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    batch = settings.batch_size
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=memory_format
    )
    y = torch.randint(0, n_classes, (batch, size, size), device=device)
    criterion = create_loss(
        settings.loss, settings.label_smoothing, settings.focal_gamma
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16" and device == "cuda")
    autocast = amp_autocast(device, amp)

    def train_step():
        with autocast():
            logits = model(x)
        scaler.scale(criterion(logits, y)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    train_s = timed(train_step, steps, warmup, device)
    predictor = tta_model(model.eval(), tta, (size, size), 1)

    def predict_step():
        with torch.no_grad(), autocast():
            predictor(x)

    predict_s = timed(predict_step, steps, warmup, device)
    return {
        "train_images_per_s": batch / train_s,
        "predict_images_per_s": batch / predict_s,
        "batch_size": batch,
        "tta": tta,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument(
        "--size", type=int, default=None, help="image side (default: demo.size)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--out", default=None, help="also write the results as JSON here"
    )
    args = parser.parse_args(argv)
    config = validated(yaml.safe_load(Path(args.config).read_text()))
    size = args.size or config["demo"]["size"]
    if args.threads:
        torch.set_num_threads(args.threads)
    # On CUDA compare plain fp32 with what training uses (AMP + channels_last); the CPU runs fp32.
    variants = (
        [("fp32", "none", False), ("amp+channels_last", None, True)]
        if args.device == "cuda"
        else [("fp32", "none", False)]
    )
    rows = []
    for name in config["models"]:
        settings = model_settings(config, name)
        for label, amp, channels_last in variants:
            result = measure(
                settings,
                prediction_tta(config, name),
                len(config["classes"]),
                size,
                args.device,
                amp or settings.amp,
                channels_last,
                args.steps,
                args.warmup,
            )
            rows.append(
                {
                    "model": name,
                    "arch": settings.arch,
                    "encoder": settings.encoder,
                    "size": size,
                    "device": args.device,
                    "variant": label,
                    **result,
                }
            )
            print(
                f"{name:14s} {settings.arch}/{settings.encoder:14s} {size}px"
                f" {args.device} {label:18s}"
                f" train {result['train_images_per_s']:8.1f} img/s"
                f"   predict (tta {result['tta']})"
                f" {result['predict_images_per_s']:8.1f} img/s",
                flush=True,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
