"""Train one model on one fold with one seed; keep the checkpoint of the best val mIoU.

One straight loop (nanoGPT style): the optimizer and lr schedule of the settings
(segflow.optim), gradient accumulation, AMP on CUDA (bf16, or fp16 with GradScaler)
with channels_last, plain fp32 on the CPU. Validation mIoU comes from one confusion
matrix over the whole fold (segflow.metrics). Which images and labels a fold job of a
round sees is segflow.splits' business; wandb tracking is segflow.tracking's.

Writes model.pt (segflow.checkpoints), history.csv (one row per epoch) and metrics.json
(the best epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segflow.checkpoints import save_checkpoint
from segflow.data import (
    SegmentationDataset,
    eval_transform,
    image_sizes,
    make_loader,
    train_transform,
)
from segflow.device import select_device
from segflow.input_size import model_side
from segflow.io import read_ids, write_json, write_table
from segflow.losses import create_loss
from segflow.metrics import confusion_matrix, iou_per_class, mean_iou, per_class_iou
from segflow.models import create_model
from segflow.optim import LrSchedule, create_optimizer
from segflow.runtime import (
    amp_autocast,
    loader_workers,
    seed_everything,
    set_threads,
    to_device,
)
from segflow.settings import ModelSettings, WandbSettings
from segflow.splits import RoundLabels, fold_data, kept_pseudo_images
from segflow.tracking import (
    finish_tracking,
    log_epoch,
    log_images,
    start_tracking,
)


def evaluate(model, loader, criterion, n_classes: int, device: str, autocast):
    """(mean loss, confusion matrix over the whole set)."""
    model.eval()
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for images, masks in loader:
            images = to_device(images, device)
            masks = masks.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            loss_sum += float(criterion(logits, masks)) * len(images)
            count += len(images)
            confusion += confusion_matrix(masks, logits.argmax(dim=1), n_classes)
    return loss_sum / max(1, count), confusion.cpu().numpy()


class TrainingDiverged(ValueError):
    """The loss became non-finite or exploded: the run is stopped, nothing is saved."""


# A loss this many times the first batch's is a divergence, not noise: a healthy run
# starts at its highest loss (CE + Dice from random weights is about ln(classes) + 1).
EXPLODED = 1000.0


def check_loss(value: float, first: float, where: str) -> None:
    if not math.isfinite(value) or value > EXPLODED * first:
        raise TrainingDiverged(
            f"{where}: loss {value:.4g} (first batch {first:.4g}); the run diverged."
            " Lower lr, set grad_clip, or use amp: none"
        )


def train_epoch(
    model,
    loader,
    criterion,
    optimizer,
    scaler,
    schedule,
    settings,
    device,
    autocast,
    epoch: int,
    first_loss: list[float],
) -> tuple[float, int]:
    """One pass over ``loader``; (mean training loss, images seen). ``first_loss`` holds
    the run's first batch loss once there is one: the divergence check compares to it."""
    model.train()
    seen, loss_sum = 0, 0.0
    accumulate = settings.accumulate
    optimizer.zero_grad(set_to_none=True)
    for step, (batch, masks) in enumerate(loader):
        batch = to_device(batch, device)
        masks = masks.to(device, non_blocking=True)
        with autocast():
            logits = model(batch)
        loss = criterion(logits, masks)
        value = float(loss.detach())
        if not first_loss:
            first_loss.append(value)
        check_loss(value, first_loss[0], f"epoch {epoch}, step {step + 1}")
        scaler.scale(loss / accumulate).backward()
        if (step + 1) % accumulate == 0 or step + 1 == len(loader):
            if settings.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_step()
        loss_sum += value * len(batch)
        seen += len(batch)
    return loss_sum / max(1, seen), seen


def fold_loaders(data, side, augment, batch_size, seed, workers, device):
    """(training, validation, validation on cleaned labels or None) loaders of a fold."""
    pin = device == "cuda"
    train_set = SegmentationDataset(
        data.train_images, data.train_masks, train_transform(augment, side, seed)
    )
    # drop_last: BatchNorm (DeepLabV3/V3+) fails on a last batch of one image.
    train_loader = make_loader(
        train_set,
        batch_size,
        shuffle=True,
        seed=seed,
        workers=workers,
        drop_last=len(train_set) > batch_size,
        pin_memory=pin,
    )

    def validation(masks: list[str] | None):
        if masks is None:
            return None
        dataset = SegmentationDataset(data.val_images, masks, eval_transform(side))
        return make_loader(
            dataset,
            batch_size,
            shuffle=False,
            seed=seed,
            workers=workers,
            pin_memory=pin,
        )

    return train_loader, validation(data.val_masks), validation(data.val_cleaned_masks)


def train(
    *,
    settings: ModelSettings,
    images_path: str | Path,
    folds_path: str | Path,
    masks_dir: str | Path,
    image_root: str | Path,
    classes: list[str],
    fold: int,
    seed: int,
    model_out: str | Path,
    history_out: str | Path,
    metrics_out: str | Path,
    threads: int,
    round_labels: RoundLabels,
    wandb: WandbSettings | None,
    run_name: str,
) -> dict:
    """Train per ``settings`` and save the best epoch; returns metrics.json's content."""
    n_classes = len(classes)
    device = select_device(settings.device)
    seed_everything(seed)
    set_threads(threads)
    workers = loader_workers(settings.workers, threads, device)

    # The data of this fold and round, at the side the model sees (segflow.input_size).
    images = pd.read_parquet(images_path)
    data = fold_data(
        images, pd.read_csv(folds_path), fold, image_root, masks_dir, round_labels
    )
    side = model_side(image_sizes(images), settings.arch, settings.input_size)
    train_loader, val_loader, cleaned_val_loader = fold_loaders(
        data, side, settings.augment, settings.batch_size, seed, workers, device
    )

    # The model, its loss, optimizer and schedule.
    model = create_model(
        settings.arch, settings.encoder, n_classes, settings.encoder_weights
    ).to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    criterion = create_loss(
        settings.loss, settings.label_smoothing, settings.focal_gamma
    )
    optimizer = create_optimizer(model, settings)
    epochs = settings.epochs
    steps_per_epoch = max(1, len(train_loader) // settings.accumulate)
    schedule = LrSchedule(optimizer, settings, steps_per_epoch)
    amp = settings.amp if device == "cuda" else "none"
    autocast = amp_autocast(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    tracker = start_tracking(wandb, run_name, settings.to_dict())
    history, best, first_loss = [], {"val_miou": -1.0}, []
    print(
        f"{run_name}: {len(data.train)} train (+{len(data.pseudo)} pseudo-labelled)"
        f" / {len(data.val)} val images, device {device}, amp {amp}, {epochs} epochs",
        flush=True,
    )
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        train_loss, seen = train_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            scaler,
            schedule,
            settings,
            device,
            autocast,
            epoch,
            first_loss,
        )
        train_seconds = time.perf_counter() - started

        val_loss, confusion = evaluate(
            model, val_loader, criterion, n_classes, device, autocast
        )
        where = f"epoch {epoch}, validation after step {epoch * len(train_loader)}"
        check_loss(val_loss, first_loss[0], where)
        val_miou, iou = mean_iou(confusion), iou_per_class(confusion)
        extra = {}
        if cleaned_val_loader is not None:
            cleaned = evaluate(
                model, cleaned_val_loader, criterion, n_classes, device, autocast
            )
            extra["val_miou_cleaned"] = mean_iou(cleaned[1])
        schedule.after_epoch(val_miou)
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_miou": val_miou,
            **extra,
            **{f"iou_{name}": float(v) for name, v in zip(classes, iou)},
            "seconds": time.perf_counter() - started,
            "images_per_s": seen / train_seconds,
        }
        history.append(row)
        print(
            f"epoch {epoch}/{epochs} train_loss {row['train_loss']:.4f}"
            f" val_loss {val_loss:.4f} val_miou {val_miou:.4f} lr {row['lr']:.2e}"
            f" {row['images_per_s']:.1f} img/s {row['seconds']:.1f}s",
            flush=True,
        )
        if val_miou > best["val_miou"]:
            best = {
                "epoch": epoch,
                "val_miou": val_miou,
                **extra,
                "per_class_iou": per_class_iou(confusion, classes),
            }
            # Kept in memory and written once the run is over: a killed run leaves no
            # model.pt of an early epoch that looks finished.
            best_state = {
                k: v.detach().to("cpu", copy=True)
                for k, v in model.state_dict().items()
            }
            log_images(tracker, model, val_loader, classes, device, autocast)
        log_epoch(tracker, row)

    metrics = {
        "model": run_name,
        "fold": fold,
        "seed": seed,
        "best_epoch": best["epoch"],
        "val_miou": best["val_miou"],
        **({"val_miou_cleaned": best["val_miou_cleaned"]} if extra else {}),
        "per_class_iou": best["per_class_iou"],
        "epochs": epochs,
        "train_images": len(data.train),
        "dropped_images": data.dropped,
        "pseudo_images": len(data.pseudo),
        "val_images": len(data.val),
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "seconds": float(sum(h["seconds"] for h in history)),
        "device": device,
        "amp": amp,
    }
    write_table(pd.DataFrame(history), history_out)
    write_json(metrics, metrics_out)
    save_checkpoint(
        model_out,
        best_state,
        settings,
        classes,
        fold,
        seed,
        best["epoch"],
        best["val_miou"],
    )
    finish_tracking(tracker, best)
    return metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Train one model on one fold and seed."
    )
    parser.add_argument("--settings", required=True, help="JSON of the model settings")
    parser.add_argument("--images", required=True, help="images.parquet")
    parser.add_argument("--folds", required=True, help="folds.csv")
    parser.add_argument("--masks-dir", required=True, help="the index's masks")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--classes", required=True, help="JSON list of class names")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--model-out", required=True)
    parser.add_argument("--history-out", required=True)
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--wandb", required=True, help="JSON of the wandb settings")
    parser.add_argument("--name", required=True, help="run name for logs and wandb")
    later = parser.add_argument_group("later rounds")
    later.add_argument("--train-masks-dir", help="cleaned masks to train on")
    later.add_argument("--drop", help="file of image ids left out of training")
    later.add_argument("--pseudo", help="pseudo-label images.csv (image_id, kept)")
    later.add_argument("--pseudo-masks-dir")
    args = parser.parse_args(argv)
    try:
        train(
            settings=ModelSettings.from_json(args.settings, "--settings"),
            images_path=args.images,
            folds_path=args.folds,
            masks_dir=args.masks_dir,
            image_root=args.image_root,
            classes=json.loads(args.classes),
            fold=args.fold,
            seed=args.seed,
            model_out=args.model_out,
            history_out=args.history_out,
            metrics_out=args.metrics_out,
            threads=args.threads,
            round_labels=RoundLabels(
                train_masks_dir=args.train_masks_dir,
                drop=frozenset(read_ids(args.drop)) if args.drop else frozenset(),
                pseudo=kept_pseudo_images(args.pseudo) if args.pseudo else frozenset(),
                pseudo_masks_dir=args.pseudo_masks_dir,
            ),
            wandb=WandbSettings.from_json(args.wandb, "--wandb"),
            run_name=args.name,
        )
    except (ValueError, FileNotFoundError) as e:  # TrainingDiverged among them
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
