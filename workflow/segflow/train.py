"""Train one model on one fold with one seed; keep the checkpoint of the best val mIoU.

One straight loop (nanoGPT style): the optimizer and lr schedule of the settings
(segflow.optim), gradient accumulation, AMP on CUDA (bf16, or fp16 with GradScaler)
with channels_last, plain fp32 on the CPU. Validation mIoU comes from one confusion
matrix over the whole fold (segflow.metrics). Which images and labels a fold job of a
round sees is segflow.splits' business; wandb tracking is segflow.tracking's.

Fold ``None`` is the full fit: every labelled image (plus the round's pseudo-labelled
ones) is trained on and none validates, so the last epoch is kept. A later round may
start from the previous round's checkpoint (``init``: warm start) and may end with
``labelled_epochs`` epochs on the labelled images only (the pseudo-label scheme "train on
labelled + pseudo, then fine-tune on labelled").

Writes model.pt (segflow.checkpoints), history.csv (one row per epoch) and metrics.json
(the kept epoch, and the training image presentations: epochs x training images, which
the compute-matched baseline sums).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segflow.averaging import WeightAverage, cpu_state
from segflow.checkpoints import (
    RESUME_FILE,
    load_state,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from segflow.class_balance import (
    ce_class_weights,
    class_image_shares,
    repeat_factors,
)
from segflow.data import (
    SegmentationDataset,
    eval_transform,
    image_sizes,
    make_loader,
    set_transform_random_state,
    train_transform,
    transform_random_state,
)
from segflow.device import DeviceError, select_device
from segflow.input_size import as_size, model_input_size
from segflow.io import read_ids, write_json, write_table
from segflow.losses import create_loss
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.mixing import BatchMixer, MixedBatch, mixed_loss, rare_class_weights
from segflow.models import create_model
from segflow.optim import LrSchedule, create_optimizer
from segflow.progress import Progress, write_curves, write_progress
from segflow.runtime import (
    amp_autocast,
    global_random_state,
    loader_workers,
    resolve_amp,
    seed_everything,
    set_global_random_state,
    set_threads,
    to_device,
)
from segflow.settings import ModelSettings, WandbSettings
from segflow.sliding_window import sliding_window
from segflow.splits import (
    ALL_FOLDS,
    RoundLabels,
    fold_data,
    kept_pseudo_images,
    label_changes,
    parse_fold,
)
from segflow.tables import class_iou_column, object_class_presence
from segflow.tracking import (
    finish_tracking,
    log_epoch,
    log_images,
    start_tracking,
)


def evaluate(
    model,
    loader,
    criterion,
    n_classes: int,
    device: str,
    autocast,
    window: tuple[tuple[int, int], float, int] | None = None,
):
    """(mean loss, confusion matrix over the whole set). ``window``: (tile, overlap,
    tiles per batch) of a sliding window for a model trained on crops."""
    model.eval()
    criterion.eval()
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for images, masks in loader:
            images = to_device(images, device)
            masks = masks.to(device, non_blocking=True)
            with autocast():
                if window is None:
                    logits = model(images)
                else:
                    logits = sliding_window(model, images, *window)
            loss_sum += float(criterion(logits, masks)) * len(images)
            count += len(images)
            confusion += confusion_matrix(masks, logits.argmax(dim=1), n_classes)
    return loss_sum / max(1, count), confusion.cpu().numpy()


class TrainingDiverged(ValueError):
    """The loss became non-finite or exploded: the run is stopped, nothing is saved."""


# A loss this many times the first batch's is a divergence, not noise: a healthy run
# starts at its highest loss (CE + Dice from random weights is about ln(classes) + 1).
EXPLODED = 1000.0


# The sliding window's overlap in validation (models with crop): it only picks the kept
# epoch, so it is lighter than prediction's window_overlap.
VALIDATION_OVERLAP = 0.25
# How often (seconds) curves.png is redrawn during a run.
CURVES_EVERY_S = 20.0
# How often (seconds) the resumable state is saved, at the end of an epoch: a kill loses
# at most this and an epoch. Saving costs about 0.6 s on 2 CPU cores for the demo's
# DeepLabV3+/ResNet-18 (198 MB with AdamW's moments and the best epoch's weights;
# benchmarks/progress_cost.py): every epoch, an eighth of a 4.6 s demo epoch.
RESUME_EVERY_S = 60.0


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
    mixer: BatchMixer | None = None,
    averager: WeightAverage | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; (mean training loss, images seen). ``first_loss`` holds
    the run's first batch loss once there is one: the divergence check compares to it.
    ``mixer`` mixes each batch (segflow.mixing); ``averager`` follows every optimizer
    step (EMA)."""
    model.train()
    criterion.train()
    seen, loss_sum = 0, 0.0
    accumulate = settings.accumulate
    optimizer.zero_grad(set_to_none=True)
    for step, (batch, masks) in enumerate(loader):
        batch = to_device(batch, device)
        masks = masks.to(device, non_blocking=True)
        mixed = MixedBatch(batch, masks) if mixer is None else mixer(batch, masks)
        with autocast():
            output = model(mixed.images)
        loss = mixed_loss(criterion, output, mixed)
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
            if averager is not None:
                averager.after_step(model, schedule.steps)
        loss_sum += value * len(batch)
        seen += len(batch)
    return loss_sum / max(1, seen), seen


def fold_loaders(
    data,
    side,
    augment,
    batch_size,
    seed,
    workers,
    device,
    crop: tuple[int, int] | None = None,
    sample_weights=None,
):
    """Loaders of a fold: (training on labelled + pseudo-labelled images, training on the
    labelled images only, validation or None, validation on cleaned labels or None).
    ``crop``: train on random crops, validate whole images one at a time (they may differ
    in size; the sliding window batches their tiles); ``sample_weights``: per training
    image (labelled, then pseudo-labelled), oversampling instead of shuffling."""
    pin = device == "cuda"

    def training(count: int):
        train_set = SegmentationDataset(
            data.train_images[:count],
            data.train_masks[:count],
            train_transform(augment, side, seed, crop),
        )
        # drop_last: BatchNorm (DeepLabV3/V3+) fails on a last batch of one image.
        return make_loader(
            train_set,
            batch_size,
            shuffle=True,
            seed=seed,
            workers=workers,
            drop_last=len(train_set) > batch_size,
            pin_memory=pin,
            sample_weights=None if sample_weights is None else sample_weights[:count],
        )

    def validation(masks: list[str] | None):
        if not masks:
            return None
        dataset = SegmentationDataset(data.val_images, masks, eval_transform(side))
        return make_loader(
            dataset,
            1 if crop else batch_size,
            shuffle=False,
            seed=seed,
            workers=workers,
            pin_memory=pin,
        )

    return (
        training(len(data.train_images)),
        training(len(data.train)),  # labelled first in train_images, pseudo after
        validation(data.val_masks),
        validation(data.val_cleaned_masks),
    )


def job_fingerprint(settings, fold, seed, data, inputs, extra) -> str:
    """What a resumed job must share with the run that saved its state: the settings,
    fold and seed, its images, and the modification times of the files it reads (a rerun
    upstream rewrites them)."""
    stamps = {
        str(path): os.stat(path).st_mtime_ns
        for path in inputs
        if path is not None and os.path.exists(path)
    }
    described = {
        "settings": settings.to_dict(),
        "fold": fold,
        "seed": seed,
        "train": [str(p) for p in data.train_images],
        "val": [str(p) for p in data.val_images],
        "inputs": stamps,
        **extra,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def loaders_random_state(loaders) -> list:
    """Each loader's shuffling generator and its dataset's augmentation generators."""
    return [
        [loader.generator.get_state(), transform_random_state(loader.dataset.transform)]
        for loader in loaders
    ]


def set_loaders_random_state(loaders, states) -> None:
    for loader, (generator, transform) in zip(loaders, states, strict=True):
        loader.generator.set_state(generator)
        set_transform_random_state(loader.dataset.transform, transform)


def matched_epochs(metrics_paths: list[str | Path], train_images: int) -> int:
    """Epochs over ``train_images`` images that present as many training images as the
    runs of ``metrics_paths`` together (each run's epochs x its training images)."""
    total = sum(
        json.loads(Path(path).read_text())["presentations"] for path in metrics_paths
    )
    return max(1, round(total / train_images))


def train(
    *,
    settings: ModelSettings,
    images_path: str | Path,
    folds_path: str | Path,
    masks_dir: str | Path,
    image_root: str | Path,
    classes: list[str],
    fold: int | None,
    seed: int,
    model_out: str | Path,
    history_out: str | Path,
    metrics_out: str | Path,
    threads: int,
    round_labels: RoundLabels,
    wandb: WandbSettings | None,
    run_name: str,
    init: str | Path | None = None,
    labelled_epochs: int = 0,
    match_presentations: list[str | Path] | None = None,
    resume_every_s: float = RESUME_EVERY_S,
) -> dict:
    """Train per ``settings`` and save the best epoch (the last without validation);
    returns metrics.json's content. ``init``: a checkpoint to start from (warm start);
    ``labelled_epochs``: the last epochs train on the labelled images only;
    ``match_presentations``: metrics.json files whose presentations this run matches
    (the epochs are chosen to match, the compute-matched baseline); ``resume_every_s``:
    the least seconds between two saves of the resumable state."""
    n_classes = len(classes)
    device = select_device(settings.device)
    seed_everything(seed, settings.deterministic)
    threads = set_threads(threads)
    workers = loader_workers(settings.workers, threads, device)

    # The data of this fold and round, at the side the model sees (segflow.input_size).
    images = pd.read_parquet(images_path)
    data = fold_data(
        images, pd.read_csv(folds_path), fold, image_root, masks_dir, round_labels
    )
    side = model_input_size(
        image_sizes(images), settings.arch, settings.input_size, settings.crop
    )
    crop = as_size(settings.crop)
    window = None
    if crop:
        window = (crop, VALIDATION_OVERLAP, settings.batch_size)
    # Rare classes (segflow.class_balance): oversampled images (pseudo-labelled ones at
    # weight 1: the index has no classes for them), ce class weights.
    sample_weights = None
    if settings.oversample:
        factors = repeat_factors(data.train, n_classes, settings.oversample)
        sample_weights = np.concatenate([factors, np.ones(len(data.pseudo))])
    train_loader, labelled_loader, val_loader, cleaned_val_loader = fold_loaders(
        data,
        side,
        settings.augment,
        settings.batch_size,
        seed,
        workers,
        device,
        crop,
        sample_weights,
    )
    if match_presentations:
        matched = matched_epochs(match_presentations, len(data.train_images))
        settings = settings.replace(epochs=matched)
        print(f"{run_name}: {matched} epochs match {match_presentations}", flush=True)

    # The model (from the previous round's weights on a warm start), loss, optimizer.
    model = create_model(
        settings.arch,
        settings.encoder,
        n_classes,
        settings.encoder_weights,
        settings.model_args,
    )
    if init is not None:
        model.load_state_dict(load_state(init))
    model = model.to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    class_weights = ce_class_weights(settings.class_weights, data.train, n_classes)
    criterion = create_loss(
        settings.loss, settings.label_smoothing, settings.focal_gamma, class_weights
    ).to(device)
    optimizer = create_optimizer(model, settings)
    mixer = BatchMixer(
        settings.mix,
        settings.mix_p,
        settings.mix_alpha,
        rare_class_weights(
            class_image_shares(data.train, n_classes),
            settings.rare_bias,
            object_class_presence(data.train, n_classes).any(axis=0),
        ),
        seed,
    )
    averager = WeightAverage(model, settings.averaging, settings.epochs, settings)
    epochs = settings.epochs
    labelled_epochs = min(labelled_epochs, epochs) if len(data.pseudo) else 0

    def loader_of(epoch: int):
        """The last ``labelled_epochs`` epochs leave the pseudo-labelled images out."""
        return labelled_loader if epoch > epochs - labelled_epochs else train_loader

    total_steps = sum(
        max(1, len(loader_of(e)) // settings.accumulate) for e in range(1, epochs + 1)
    )
    schedule = LrSchedule(optimizer, settings, total_steps / epochs)
    amp = resolve_amp(settings.amp, device)
    autocast = amp_autocast(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    tracker = start_tracking(wandb, run_name, settings.to_dict())
    history, best, first_loss = [], {"val_miou": -1.0}, []
    print(
        f"{run_name}: {len(data.train)} train (+{len(data.pseudo)} pseudo-labelled,"
        f" left out of the last {labelled_epochs} epochs) / {len(data.val)} val images,"
        f" device {device}, amp {amp}, {epochs} epochs"
        + (f", warm start from {init}" if init is not None else ""),
        flush=True,
    )
    # A job killed mid-run (kill -9, a node lost) and rerun goes on from its last
    # finished epoch: the state of every epoch is kept in resume.pt beside the outputs.
    job_dir = Path(model_out).parent
    resume_path = job_dir / RESUME_FILE
    loaders = [
        loader
        for loader in (train_loader, labelled_loader, val_loader, cleaned_val_loader)
        if loader is not None
    ]
    fingerprint = job_fingerprint(
        settings,
        fold,
        seed,
        data,
        [
            images_path,
            folds_path,
            masks_dir,
            round_labels.train_masks_dir,
            round_labels.pseudo_masks_dir,
            init,
        ],
        {"labelled_epochs": labelled_epochs, "pseudo": [str(p) for p in data.pseudo]},
    )
    presentations, start_epoch = 0, 1
    resumed = load_training_state(resume_path, fingerprint)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        scaler.load_state_dict(resumed["scaler"])
        history[:] = resumed["history"]
        first_loss[:] = resumed["first_loss"]
        best, best_state = resumed["best"], resumed["best_state"]
        presentations = resumed["presentations"]
        mixer.load_state_dict(resumed["mixer"])
        averager.load_state_dict(resumed["averager"])
        set_global_random_state(resumed["random"])
        set_loaders_random_state(loaders, resumed["loaders"])
        start_epoch = resumed["epoch"] + 1
        print(f"{run_name}: resumed after epoch {resumed['epoch']}", flush=True)

    # Live progress for segflow.status and a curves.png a user can open mid-run.
    progress = Progress(run=run_name, epochs=epochs, history=history)
    write_progress(job_dir, progress)
    curves_written, state_saved = 0.0, time.time()
    for epoch in range(start_epoch, epochs + 1):
        started = time.perf_counter()
        loader = loader_of(epoch)
        train_loss, seen = train_epoch(
            model,
            loader,
            criterion,
            optimizer,
            scaler,
            schedule,
            settings,
            device,
            autocast,
            epoch,
            first_loss,
            mixer,
            averager,
        )
        train_seconds = time.perf_counter() - started
        presentations += len(loader.dataset)

        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row["train_loss"] = train_loss
        scores = {}
        if val_loader is not None:
            val_loss, confusion = evaluate(
                model, val_loader, criterion, n_classes, device, autocast, window
            )
            where = f"epoch {epoch}, validation after step {schedule.steps}"
            check_loss(val_loss, first_loss[0], where)
            scores = {
                "val_loss": val_loss,
                "val_miou": mean_iou(confusion),
                "per_class_iou": per_class_iou(confusion, classes),
            }
            schedule.after_epoch(scores["val_miou"])
        averager.after_epoch(model, epoch, scores.get("val_miou"))
        row.update({k: v for k, v in scores.items() if k != "per_class_iou"})
        for name, value in scores.get("per_class_iou", {}).items():
            row[class_iou_column(name)] = value
        row["seconds"] = time.perf_counter() - started
        row["images_per_s"] = seen / train_seconds
        history.append(row)
        validated = (
            f" val_loss {row['val_loss']:.4f} val_miou {row['val_miou']:.4f}"
            if scores
            else ""
        )
        print(
            f"epoch {epoch}/{epochs} train_loss {train_loss:.4f}{validated}"
            f" lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s"
            f" {row['seconds']:.1f}s",
            flush=True,
        )
        # Without validation (the full fit) the last epoch is kept.
        if not scores or scores["val_miou"] > best["val_miou"]:
            best = {"epoch": epoch, "val_miou": None, **scores}
            # Kept in memory and written once the run is over: a killed run leaves no
            # model.pt of an early epoch that looks finished. Averaged weights replace
            # the best epoch's at the end, so they are not copied then.
            best_state = None if averager.active else cpu_state(model)
            if val_loader is not None:
                log_images(tracker, model, val_loader, classes, device, autocast)
        log_epoch(tracker, row)
        write_progress(job_dir, progress)
        # The figure costs about 0.2 s (benchmarks/progress_cost.py): on short CPU epochs
        # it is redrawn at most every CURVES_EVERY_S seconds, and after the last epoch.
        if epoch == epochs or time.time() - curves_written > CURVES_EVERY_S:
            write_curves(job_dir, progress)
            curves_written = time.time()
        if epoch < epochs and time.time() - state_saved >= resume_every_s:
            state_saved = time.time()
            save_training_state(
                resume_path,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": history,
                    "first_loss": first_loss,
                    "best": best,
                    "best_state": best_state,
                    "presentations": presentations,
                    "mixer": mixer.state_dict(),
                    "averager": averager.state_dict(),
                    "random": global_random_state(),
                    "loaders": loaders_random_state(loaders),
                },
            )

    if averager.active:
        # The averaged weights are kept, not the best epoch's: scored once, after their
        # BatchNorm statistics are recomputed on the labelled training images.
        best_state = averager.averaged_state(model, labelled_loader, device)
        best = {"epoch": epochs, "val_miou": None}
        if val_loader is not None:
            val_loss, confusion = evaluate(
                model, val_loader, criterion, n_classes, device, autocast, window
            )
            best.update(
                val_loss=val_loss,
                val_miou=mean_iou(confusion),
                per_class_iou=per_class_iou(confusion, classes),
            )
            print(
                f"{settings.averaging} weights{averager.describe()}:"
                f" val_miou {best['val_miou']:.4f}",
                flush=True,
            )
    if cleaned_val_loader is not None:
        # The kept epoch scored on the cleaned labels too, once: an extra validation
        # pass every epoch would cost a later round about a tenth of its time.
        model.load_state_dict(best_state)
        cleaned = evaluate(
            model, cleaned_val_loader, criterion, n_classes, device, autocast, window
        )
        best["val_miou_cleaned"] = mean_iou(cleaned[1])

    metrics = {
        "model": run_name,
        "fold": ALL_FOLDS if fold is None else fold,
        "seed": seed,
        "best_epoch": best["epoch"],
        "averaging": settings.averaging,
        "averaged_epochs": averager.averaged_epochs(),
        "val_miou": best["val_miou"],
        **{k: best[k] for k in ("val_miou_cleaned",) if k in best},
        "per_class_iou": best.get("per_class_iou"),
        "epochs": epochs,
        "warm_start": str(init) if init is not None else None,
        "labelled_epochs": labelled_epochs,
        "train_images": len(data.train),
        "dropped_images": data.dropped,
        "pseudo_images": len(data.pseudo),
        "train_label_changes": label_changes(data, masks_dir),
        "val_images": len(data.val),
        "presentations": presentations,
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
        side,
    )
    finish_tracking(tracker, best)
    resume_path.unlink(missing_ok=True)  # the outputs are complete: nothing to resume
    progress.finished = True
    write_progress(job_dir, progress)
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
    parser.add_argument(
        "--fold", type=parse_fold, required=True, help=f"a fold, or {ALL_FOLDS}"
    )
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
    later.add_argument("--init", help="warm start: the previous round's model.pt")
    later.add_argument(
        "--labelled-epochs",
        type=int,
        help="the last epochs on labelled images only (with --pseudo; none if unset)",
    )
    parser.add_argument(
        "--match-presentations",
        nargs="+",
        help="metrics.json files: train as many image presentations as they did",
    )
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
            init=args.init,
            labelled_epochs=args.labelled_epochs or 0,
            match_presentations=args.match_presentations,
        )
    except (
        ValueError,
        FileNotFoundError,
        DeviceError,
    ) as e:  # TrainingDiverged among them
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
