"""Train one model on one fold with one seed; keep the checkpoint of the best val mIoU.

``train`` reads top to bottom as one run: set up (the fold's data, loaders, model, loss,
optimizer), loop over epochs (segflow.passes: one training pass, one validation pass),
keep the best or the averaged weights, write. Everything the loop changes lives in one
segflow.run_state.RunState, which is also exactly what a killed job's rerun resumes
from. Which images and labels a fold job of a round sees is segflow.fold_data's business;
wandb tracking is segflow.tracking's; the live progress.json and curves.png are
segflow.progress's.

Fold ``None`` is the full fit: every labelled image (plus the round's pseudo-labelled
ones) is trained on and none validates, so the last epoch is kept. A later round may
start from the previous round's checkpoint (``init``: warm start) and may end with
``labelled_epochs`` epochs on the labelled images only (segflow.fold_loaders).

Writes model.pt (segflow.checkpoints, with the input side the model was trained at),
history.csv (one row per epoch) and metrics.json (the kept epoch, and the training image
presentations: epochs x training images, which the compute-matched baseline sums).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from segflow.checkpoints import RESUME_FILE, load_state, save_checkpoint
from segflow.data import image_sizes
from segflow.device import DeviceError, select_device
from segflow.epoch import Job, new_job, run_epoch
from segflow.fold_data import (
    FULL_FIT,
    FoldData,
    RoundLabels,
    fold_data,
    kept_pseudo_images,
    label_changes,
    parse_fold,
)
from segflow.fold_loaders import FoldLoaders, fold_loaders
from segflow.input_size import model_input_size
from segflow.io import read_ids, write_json, write_table
from segflow.models import create_model
from segflow.progress import TrainingProgress
from segflow.run_state import RunState, job_fingerprint, new_run_state
from segflow.runtime import (
    loader_workers,
    seed_everything,
    set_threads,
)
from segflow.settings import ModelSettings, WandbSettings
from segflow.step_cli import arg, run_step
from segflow.tracking import finish_tracking, log_epoch, log_images, start_tracking

# How often (seconds) the resumable state is saved, at the end of an epoch: a kill loses
# at most this and an epoch. Saving costs about 0.6 s on 2 CPU cores for the demo's
# DeepLabV3+/ResNet-18 (198 MB with AdamW's moments and the best epoch's weights;
# benchmarks/progress_cost.py): every epoch, an eighth of a 4.6 s demo epoch.
RESUME_EVERY_S = 60.0


def matched_epochs(metrics_paths: list[str | Path], train_images: int) -> int:
    """Epochs over ``train_images`` images that present as many training images as the
    runs of ``metrics_paths`` together (each run's epochs x its training images)."""
    total = sum(
        json.loads(Path(path).read_text())["presentations"] for path in metrics_paths
    )
    return max(1, round(total / train_images))


LATER = "later rounds"


def _model_settings(text: str) -> ModelSettings:
    return ModelSettings.from_json(text, "--settings")


def _wandb(text: str) -> WandbSettings:
    return WandbSettings.from_json(text, "--wandb")


@dataclass(frozen=True, kw_only=True)
class TrainArgs:
    """What one training job reads, writes and is set by (its command line: step_cli)."""

    settings: ModelSettings = arg("JSON of the model settings", parse=_model_settings)
    images_path: Path = arg("images.parquet", flag="--images")
    folds_path: Path = arg("folds.csv", flag="--folds")
    masks_dir: Path = arg("the index's masks")
    image_root: Path = arg("the folder image file names are relative to")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    fold: int | None = arg(f"a fold (f0, f1, ...), or {FULL_FIT}", parse=parse_fold)
    seed: int = arg("the run's seed")
    model_out: Path = arg("model.pt")
    history_out: Path = arg("history.csv")
    metrics_out: Path = arg("metrics.json")
    threads: int = arg("CPU threads of the job")
    wandb: WandbSettings | None = arg("JSON of the wandb settings", parse=_wandb)
    run_name: str = arg("run name for logs and wandb", flag="--name")
    train_masks_dir: Path | None = arg(
        "cleaned masks to train on", default=None, group=LATER
    )
    drop: frozenset[str] = arg(
        "file of image ids left out of training",
        default=frozenset(),
        parse=lambda path: frozenset(read_ids(path)),
        group=LATER,
    )
    pseudo: frozenset[str] = arg(
        "pseudo-label images.csv (image_id, kept)",
        default=frozenset(),
        parse=kept_pseudo_images,
        group=LATER,
    )
    pseudo_masks_dir: Path | None = arg(
        "the pseudo labels' masks", default=None, group=LATER
    )
    init: Path | None = arg(
        "warm start: the previous round's model.pt", default=None, group=LATER
    )
    labelled_epochs: int = arg(
        "the last epochs on labelled images only (with --pseudo)",
        default=0,
        group=LATER,
    )
    match_presentations: list[Path] | None = arg(
        "metrics.json files: train as many image presentations as they did",
        default=None,
        nargs="+",
    )
    resume_every_s: float = arg(
        "the least seconds between two saves of the resumable state",
        default=RESUME_EVERY_S,
    )

    @property
    def round_labels(self) -> RoundLabels:
        return RoundLabels(
            train_masks_dir=self.train_masks_dir,
            drop=self.drop,
            pseudo=self.pseudo,
            pseudo_masks_dir=self.pseudo_masks_dir,
        )


def train(args: TrainArgs) -> dict:
    """Train per ``args.settings`` and save the best epoch (the last without
    validation, or the averaged weights); returns metrics.json's content."""
    settings, classes, run_name = args.settings, args.classes, args.run_name
    # Set up: this fold's data at the side the model sees (segflow.input_size), its
    # loaders, then the model, loss and optimizer in one run state.
    device = select_device(settings.device)
    seed_everything(args.seed, settings.deterministic)
    workers = loader_workers(settings.workers, set_threads(args.threads), device)
    images = pd.read_parquet(args.images_path)
    folds = pd.read_csv(args.folds_path)
    data = fold_data(
        images, folds, args.fold, args.image_root, args.masks_dir, args.round_labels
    )
    side = model_input_size(
        image_sizes(images), settings.arch, settings.input_size, settings.crop
    )
    if args.match_presentations:
        matched = matched_epochs(args.match_presentations, len(data.train_images))
        settings = settings.replace(epochs=matched)
        print(f"{run_name}: {matched} epochs, compute-matched", flush=True)
    loaders = fold_loaders(
        data,
        settings,
        len(classes),
        side,
        args.seed,
        workers,
        device,
        args.labelled_epochs,
    )
    model = initial_model(settings, len(classes), args.init, device)
    job = new_job(settings, classes, device, data)
    state = new_run_state(
        model, settings, len(classes), job.amp, data, loaders, args.seed
    )
    tracker = start_tracking(args.wandb, run_name, settings.to_dict())
    print(describe_job(args, job, data, loaders), flush=True)

    # A job killed mid-run and rerun goes on from its last saved epoch (resume.pt).
    job_dir = Path(args.model_out).parent
    resume_path = job_dir / RESUME_FILE
    fingerprint = job_fingerprint_of(args, settings, data, loaders)
    if state.resume(resume_path, fingerprint):
        print(f"{run_name}: resumed after epoch {state.epoch}", flush=True)

    # The epochs; the live progress (segflow.status reads it) after each.
    report = TrainingProgress(job_dir, run_name, settings.epochs, state.history)
    saved = time.time()
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        row, scores = run_epoch(state, job, epoch)
        if state.keep_if_best(epoch, scores) and loaders.val is not None:
            log_images(tracker, state.model, loaders.val, classes, device, job.autocast)
        log_epoch(tracker, row)
        report.epoch_done(epoch)
        if epoch < settings.epochs and time.time() - saved >= args.resume_every_s:
            saved = time.time()
            state.save(resume_path, fingerprint)

    # The kept weights; model.pt last, so a model.pt means a finished job.
    best, weights = kept_weights(state, job)
    metrics = run_metrics(args, best, state, job, data)
    write_table(pd.DataFrame(state.history), args.history_out)
    write_json(metrics, args.metrics_out)
    save_checkpoint(
        args.model_out,
        weights,
        settings,
        classes,
        args.fold,
        args.seed,
        best["epoch"],
        best["val_miou"],
        side,
    )
    finish_tracking(tracker, best)
    resume_path.unlink(missing_ok=True)  # the outputs are complete: nothing to resume
    report.finish()
    return metrics


def job_fingerprint_of(args: TrainArgs, settings, data, loaders: FoldLoaders) -> str:
    """segflow.run_state.job_fingerprint over every file the job reads."""
    labels = args.round_labels
    inputs = [args.images_path, args.folds_path, args.masks_dir]
    inputs += [labels.train_masks_dir, labels.pseudo_masks_dir, args.init]
    extra = {
        "labelled_epochs": loaders.labelled_epochs,
        "pseudo": [str(p) for p in data.pseudo],
    }
    return job_fingerprint(settings, args.fold, args.seed, data, inputs, extra)


def initial_model(settings, n_classes: int, init, device: str) -> torch.nn.Module:
    """The model of ``settings``, from the previous round's weights on a warm start."""
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
    return model


def describe_job(args: TrainArgs, job: Job, data: FoldData, loaders) -> str:
    init = args.init
    return (
        f"{args.run_name}: {len(data.train)} train (+{len(data.pseudo)} pseudo-labelled,"
        f" left out of the last {loaders.labelled_epochs} epochs) / {len(data.val)} val"
        f" images, device {job.device}, amp {job.amp}, {job.settings.epochs} epochs"
        + (f", warm start from {init}" if init is not None else "")
    )


def kept_weights(state: RunState, job: Job) -> tuple[dict, dict]:
    """(the kept epoch's scores, its weights): the best epoch's, or the averaged weights
    with BatchNorm statistics recomputed on the labelled training images, scored once.
    With cleaned validation labels, the kept weights are scored on them too, once: an
    extra validation pass every epoch would cost a later round a tenth of its time."""
    best, weights = state.best, state.best_state
    loaders = state.loaders
    if state.averager.active:
        weights = state.averager.averaged_state(
            state.model, loaders.labelled, job.device
        )
        best = {"epoch": job.settings.epochs, "val_miou": None}
        if loaders.val is not None:
            best.update(job.validate(state.model, loaders.val))
            print(
                f"{job.settings.averaging} weights{state.averager.describe()}:"
                f" val_miou {best['val_miou']:.4f}",
                flush=True,
            )
    if loaders.cleaned_val is not None:
        state.model.load_state_dict(weights)
        best["val_miou_cleaned"] = job.validate(state.model, loaders.cleaned_val)[
            "val_miou"
        ]
    return best, weights


def run_metrics(args: TrainArgs, best, state: RunState, job: Job, data) -> dict:
    """metrics.json: the kept epoch and its scores, what the run trained on (and how far
    its cleaned labels differ from the index's), its cost."""
    history, init = state.history, args.init
    return {
        "model": args.run_name,
        "fold": FULL_FIT if args.fold is None else args.fold,
        "seed": args.seed,
        "best_epoch": best["epoch"],
        "averaging": job.settings.averaging,
        "averaged_epochs": state.averager.averaged_epochs(),
        "val_miou": best["val_miou"],
        **{k: best[k] for k in ("val_miou_cleaned",) if k in best},
        "per_class_iou": best.get("per_class_iou"),
        "epochs": job.settings.epochs,
        "warm_start": str(init) if init is not None else None,
        "labelled_epochs": state.loaders.labelled_epochs,
        "train_images": len(data.train),
        "dropped_images": data.dropped,
        "pseudo_images": len(data.pseudo),
        "train_label_changes": label_changes(data, args.masks_dir),
        "val_images": len(data.val),
        "presentations": state.presentations,
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "seconds": float(sum(h["seconds"] for h in history)),
        "device": job.device,
        "amp": job.amp,
    }


def main(argv=None) -> None:
    run_step(
        train,
        TrainArgs,
        argv,
        "Train one model on one fold and seed.",
        (ValueError, FileNotFoundError, DeviceError),  # TrainingDiverged among them
    )


if __name__ == "__main__":
    main()
