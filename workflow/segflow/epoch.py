"""One epoch of a training job: a training pass, a validation pass, the history row.

``run_epoch`` is what the training loop (segflow.train) runs per epoch on the run state
(segflow.run_state) and the job's fixed parts (:class:`Job`: loss, device, AMP,
validation window). A training pass runs gradient accumulation, AMP
(segflow.runtime's autocast; fp16 with GradScaler), gradient clipping, the per-step lr
schedule, batch mixing (segflow.mixing) and the per-step weight average (EMA,
segflow.averaging). A validation pass scores one
confusion matrix over the whole set (segflow.metrics), whole images or, for a model
trained on crops, through the sliding window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from segflow.class_balance import ce_class_weights
from segflow.fold_data import FoldData
from segflow.input_size import Size, as_size
from segflow.losses import create_loss
from segflow.metrics import confusion_matrix, mean_iou, per_class_iou
from segflow.mixing import BatchMixer, MixedBatch, mixed_loss
from segflow.run_state import RunState
from segflow.runtime import amp_autocast, resolve_amp, to_device
from segflow.settings import ModelSettings
from segflow.sliding_window import sliding_window
from segflow.tables import class_iou_column

# A loss this many times the first batch's is a divergence, not noise: a healthy run
# starts at its highest loss (CE + Dice from random weights is about ln(classes) + 1).
EXPLODED = 1000.0


# The sliding window's overlap in validation (models with crop): it only picks the kept
# epoch, so it is lighter than prediction's window_overlap.
VALIDATION_OVERLAP = 0.25


class TrainingDiverged(ValueError):
    """The loss became non-finite or exploded: the run is stopped, nothing is saved."""


def check_loss(value: float, first: float, where: str) -> None:
    if not math.isfinite(value) or value > EXPLODED * first:
        raise TrainingDiverged(
            f"{where}: loss {value:.4g} (first batch {first:.4g}); the run diverged."
            " Lower lr, set grad_clip, or use amp: none"
        )


@dataclass(frozen=True)
class Job:
    """What stays fixed while a job trains."""

    settings: ModelSettings
    classes: list[str]
    device: str
    amp: str  # resolved: none, bf16 or fp16
    criterion: torch.nn.Module
    window: tuple[Size, float, int] | None  # validation's sliding window (crop models)

    @property
    def autocast(self):
        return amp_autocast(self.device, self.amp)

    def validate(self, model, loader) -> dict:
        return validation_scores(
            model,
            loader,
            self.criterion,
            self.classes,
            self.device,
            self.autocast,
            self.window,
        )


def new_job(settings, classes: list[str], device: str, data: FoldData) -> Job:
    """The loss (ce class weights from the training images' classes,
    segflow.class_balance), AMP and validation's sliding window."""
    class_weights = ce_class_weights(settings.class_weights, data.train, len(classes))
    criterion = create_loss(
        settings.loss, settings.label_smoothing, settings.focal_gamma, class_weights
    ).to(device)
    crop = as_size(settings.crop)
    return Job(
        settings=settings,
        classes=classes,
        device=device,
        amp=resolve_amp(settings.amp, device),
        criterion=criterion,
        window=(crop, VALIDATION_OVERLAP, settings.batch_size) if crop else None,
    )


def run_epoch(state: RunState, job: Job, epoch: int) -> tuple[dict, dict]:
    """Train one epoch, then validate (when the fold has validation images): (the
    history row, the validation scores or {})."""
    started = time.perf_counter()
    loader = state.loaders.for_epoch(epoch)
    train_loss, seen = train_epoch(
        state.model,
        loader,
        job.criterion,
        state.optimizer,
        state.scaler,
        state.schedule,
        job.settings,
        job.device,
        job.autocast,
        epoch,
        state.first_loss,
        state.mixer,
        state.averager,
    )
    train_seconds = time.perf_counter() - started
    state.presentations += len(loader.dataset)
    row = {"epoch": epoch, "lr": state.optimizer.param_groups[0]["lr"]}
    row["train_loss"] = train_loss
    scores = {}
    if state.loaders.val is not None:
        scores = job.validate(state.model, state.loaders.val)
        where = f"epoch {epoch}, validation after step {state.schedule.steps}"
        check_loss(scores["val_loss"], state.first_loss[0], where)
        state.schedule.after_epoch(scores["val_miou"])
    state.averager.after_epoch(state.model, epoch, scores.get("val_miou"))
    row.update({k: v for k, v in scores.items() if k != "per_class_iou"})
    for name, value in scores.get("per_class_iou", {}).items():
        row[class_iou_column(name)] = value
    row["seconds"] = time.perf_counter() - started
    row["images_per_s"] = seen / train_seconds
    state.history.append(row)
    state.epoch = epoch
    validated = (
        f" val_loss {row['val_loss']:.4f} val_miou {row['val_miou']:.4f}"
        if scores
        else ""
    )
    print(
        f"epoch {epoch}/{job.settings.epochs} train_loss {train_loss:.4f}{validated}"
        f" lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s {row['seconds']:.1f}s",
        flush=True,
    )
    return row, scores


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
    averager=None,
) -> tuple[float, int]:
    """One pass over ``loader``; (mean training loss, images seen). ``first_loss`` holds
    the run's first batch loss once there is one: the divergence check compares to it.
    ``mixer`` mixes each batch; ``averager`` follows every optimizer step."""
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


def validation_scores(
    model, loader, criterion, classes: list[str], device: str, autocast, window=None
) -> dict:
    """val_loss, val_miou and per_class_iou of one validation pass."""
    loss, confusion = evaluate(
        model, loader, criterion, len(classes), device, autocast, window
    )
    return {
        "val_loss": loss,
        "val_miou": mean_iou(confusion),
        "per_class_iou": per_class_iou(confusion, classes),
    }
