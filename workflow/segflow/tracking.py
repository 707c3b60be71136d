"""Experiment tracking with wandb: one run per training job, off when disabled.

``offline`` (the default) needs no account and writes under the settings' ``dir``
(``wandb sync`` uploads later); ``disabled`` never imports wandb.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from segflow.models import IMAGENET_MEAN, IMAGENET_STD
from segflow.runtime import to_device
from segflow.settings import WandbSettings


def start_tracking(settings: WandbSettings | None, run_name: str, config: dict):
    """A wandb run, or None when tracking is off."""
    if settings is None or settings.mode == "disabled":
        return None
    import wandb

    Path(settings.dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=settings.project,
        mode=settings.mode,
        name=run_name,
        group=run_name.split("/")[0] if run_name else None,
        config=config,
        dir=settings.dir,
        reinit="finish_previous",
    )


def log_epoch(tracker, row: dict) -> None:
    """The epoch's numbers (NaN left out: wandb charts break on it)."""
    if tracker is not None:
        numbers = {
            k: v for k, v in row.items() if isinstance(v, float) and not math.isnan(v)
        }
        tracker.log(numbers | {"epoch": row["epoch"]})


def log_images(
    tracker, model, loader, classes: list[str], device: str, autocast, count: int = 4
) -> None:
    """A few validation images with ground truth and prediction overlays."""
    if tracker is None:
        return
    import wandb

    batch, masks = next(iter(loader))
    with torch.no_grad(), autocast():
        logits = model(to_device(batch[:count], device))
    prediction = logits.argmax(dim=1).cpu().numpy()
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    labels = dict(enumerate(classes))
    pictures = []
    for i in range(min(count, len(batch))):
        picture = (batch[i].permute(1, 2, 0).numpy() * std + mean) * 255
        pictures.append(
            wandb.Image(
                picture.clip(0, 255).astype(np.uint8),
                masks={
                    "prediction": {"mask_data": prediction[i], "class_labels": labels},
                    "ground_truth": {
                        "mask_data": masks[i].numpy().astype(np.uint8),
                        "class_labels": labels,
                    },
                },
            )
        )
    tracker.log({"validation": pictures})


def finish_tracking(tracker, best: dict) -> None:
    if tracker is not None:
        tracker.summary.update(
            {"best_val_miou": best["val_miou"], "best_epoch": best["epoch"]}
        )
        tracker.finish()
