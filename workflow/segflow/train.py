"""Train one model on one fold with one seed; keep the checkpoint with the best val mIoU.

One straight loop (nanoGPT style): AdamW or SGD, linear warmup then cosine per optimizer
step (or ReduceLROnPlateau on val mIoU per epoch), gradient accumulation, AMP on CUDA
(bf16, or fp16 with GradScaler) with channels_last, plain fp32 on CPU. Validation mIoU
comes from one confusion matrix over the whole fold (segflow.metrics).

Later rounds train on other labels: ``train_masks_dir`` holds the cleaned masks they learn
from, ``drop`` the images they leave out, and ``pseudo`` the pseudo-labelled test images
(masks in ``pseudo_masks_dir``) they add, while validation still scores the ORIGINAL labels
of ``masks_dir`` on the fold's labelled images only (the checkpoint is chosen by them), so
rounds compare on the same ground truth; with cleaned labels, their val mIoU is logged
beside it (``val_miou_cleaned``).

Writes into ``out_dir``: model.pt ({"state_dict", "config", ...}, plain types only, so
``torch.load(weights_only=True)`` reads it), history.csv (one row per epoch) and
metrics.json (the best epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from segflow.data import SegmentationDataset, build_transform, make_loader  # noqa: E402
from segflow.device import (
    select_device,
)  # before torch: it may set CUDA_VISIBLE_DEVICES
from segflow.index import mask_file  # noqa: E402
from segflow.io import atomic_path, read_ids, write_json, write_table  # noqa: E402
from segflow.losses import create_loss  # noqa: E402
from segflow.metrics import confusion_matrix, iou_per_class, mean_iou  # noqa: E402
from segflow.models import create_model, size_multiple  # noqa: E402


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    # Bilinear-interpolate backward and histc have no deterministic CUDA kernel: warn, don't raise.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def fold_split(
    images: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    drop: set[str] | frozenset[str] = frozenset(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of the labelled images for ``fold``.

    ``drop`` (label-noise cleaning) leaves images out of training only: validation scores
    every labelled image of the fold, so OOF numbers compare between rounds.
    """
    labelled = images[images["split"] == "train"].merge(
        folds, on="image_id", how="inner", validate="one_to_one"
    )
    val = labelled[labelled["fold"] == fold]
    if val.empty:
        raise ValueError(
            f"fold {fold} has no validation images (folds: {sorted(folds['fold'].unique())})"
        )
    train = labelled[(labelled["fold"] != fold) & ~labelled["image_id"].isin(drop)]
    if train.empty:
        raise ValueError(
            f"fold {fold} has no training images left ({len(drop)} dropped by label-noise cleaning)"
        )
    return train.reset_index(drop=True), val.reset_index(drop=True)


def pseudo_rows(
    images: pd.DataFrame, pseudo: set[str] | frozenset[str]
) -> pd.DataFrame:
    """The test images named in ``pseudo`` (pseudo-labelled), as rows of the index."""
    test = images[images["split"] == "test"]
    unknown = sorted(set(pseudo) - set(test["image_id"]))
    if unknown:
        raise ValueError(
            f"pseudo labels name {len(unknown)} images that are not test images, e.g. {unknown[:3]}"
        )
    return test[test["image_id"].isin(pseudo)].reset_index(drop=True)


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, min_ratio: float
) -> float:
    """Linear warmup from 0 to 1, then cosine from 1 to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, progress))
    )


def evaluate(
    model, loader, criterion, n_classes: int, device: str, autocast
) -> tuple[float, np.ndarray]:
    """(mean loss, confusion matrix over the whole set)."""
    model.eval()
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for images, masks in loader:
            images, masks = (
                to_device(images, device),
                masks.to(device, non_blocking=True),
            )
            with autocast():
                logits = model(images)
            loss_sum += float(criterion(logits, masks)) * len(images)
            count += len(images)
            confusion += confusion_matrix(masks, logits.argmax(dim=1), n_classes)
    return loss_sum / max(1, count), confusion.cpu().numpy()


def check_input_size(rows: pd.DataFrame, params: dict) -> None:
    """Images of one size (to batch them) that fits the arch (smp: e.g. DeepLabV3+ needs multiples of 16)."""
    multiple = size_multiple(params["arch"])
    if params.get("input_size"):
        sizes = {(params["input_size"], params["input_size"])}
    else:
        sizes = set(zip(rows["height"], rows["width"]))
        if len(sizes) > 1:
            raise ValueError(
                f"images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}); set input_size to train on one size"
            )
    height, width = next(iter(sizes))
    if height % multiple or width % multiple:
        raise ValueError(
            f"{params['arch']} needs sides that are multiples of {multiple}, images are {width}x{height}; set input_size (e.g. {-(-max(height, width) // multiple) * multiple})"
        )


def amp_autocast(device: str, amp: str):
    """A factory of autocast contexts: bf16/fp16 on CUDA, none on the CPU (fp16 there is very slow)."""
    dtype = (
        {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        if device == "cuda"
        else None
    )
    return (
        (lambda: torch.autocast("cuda", dtype=dtype))
        if dtype
        else (lambda: torch.autocast(device, enabled=False))
    )


def resize_steps(params: dict) -> list[dict]:
    """The augment-style step that resizes to ``input_size``, if the model has one."""
    side = params.get("input_size")
    return [{"Resize": {"height": side, "width": side}}] if side else []


def to_device(images: torch.Tensor, device: str) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return (
        images.contiguous(memory_format=torch.channels_last)
        if device == "cuda"
        else images
    )


def train(
    *,
    images_path: str | Path,
    folds_path: str | Path,
    masks_dir: str | Path,
    image_root: str | Path,
    params: dict,
    classes: list[str],
    fold: int,
    seed: int,
    out_dir: str | Path,
    threads: int = 1,
    wandb_settings: dict | None = None,
    run_name: str = "",
    train_masks_dir: str | Path | None = None,
    drop: set[str] | frozenset[str] = frozenset(),
    pseudo: set[str] | frozenset[str] = frozenset(),
    pseudo_masks_dir: str | Path | None = None,
) -> dict:
    """Train per ``params`` (the resolved model config; see the config schema) and save the best."""
    out_dir = Path(out_dir)
    n_classes = len(classes)
    device = select_device(params.get("device", "auto"))
    seed_everything(seed)
    torch.set_num_threads(max(1, threads))
    workers = (
        params["workers"]
        if params.get("workers") is not None
        else (max(1, threads - 1) if device == "cuda" else 0)
    )

    images = pd.read_parquet(images_path)
    folds = pd.read_csv(folds_path)
    train_rows, val_rows = fold_split(images, folds, fold, drop)
    n_dropped = int(((folds["fold"] != fold) & folds["image_id"].isin(drop)).sum())
    extra_rows = pseudo_rows(images, pseudo)
    train_transform = build_transform(
        list(params.get("augment") or []) + resize_steps(params), seed=seed
    )
    val_transform = build_transform(resize_steps(params), seed=seed)

    def paths(rows, labels_dir):
        return [str(Path(image_root) / f) for f in rows["file_name"]], [
            str(mask_file(labels_dir, i)) for i in rows["coco_id"]
        ]

    check_input_size(pd.concat([train_rows, val_rows, extra_rows]), params)
    batch_size = int(params["batch_size"])
    # drop_last: BatchNorm (DeepLabV3/V3+) fails on a last batch of one image in train mode.
    train_images, train_masks = paths(train_rows, train_masks_dir or masks_dir)
    pseudo_images, pseudo_masks = (
        paths(extra_rows, pseudo_masks_dir) if len(extra_rows) else ([], [])
    )
    train_set = SegmentationDataset(
        train_images + pseudo_images, train_masks + pseudo_masks, train_transform
    )
    train_loader = make_loader(
        train_set,
        batch_size,
        shuffle=True,
        seed=seed,
        workers=workers,
        drop_last=len(train_set) > batch_size,
        pin_memory=device == "cuda",
    )
    val_loader = make_loader(
        SegmentationDataset(*paths(val_rows, masks_dir), val_transform),
        batch_size,
        shuffle=False,
        seed=seed,
        workers=workers,
        pin_memory=device == "cuda",
    )
    cleaned_val_loader = None
    if train_masks_dir is not None:
        cleaned_val_loader = make_loader(
            SegmentationDataset(*paths(val_rows, train_masks_dir), val_transform),
            batch_size,
            shuffle=False,
            seed=seed,
            workers=workers,
            pin_memory=device == "cuda",
        )

    model = create_model(
        params["arch"], params["encoder"], n_classes, params.get("encoder_weights")
    ).to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    criterion = create_loss(
        params["loss"],
        params.get("label_smoothing", 0.0),
        params.get("focal_gamma", 2.0),
    )
    if params["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=params["lr"],
            momentum=params.get("momentum", 0.9),
            weight_decay=params["weight_decay"],
            nesterov=True,
        )
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"]
        )

    epochs, accumulate = int(params["epochs"]), int(params.get("accumulate", 1))
    steps_per_epoch = max(1, len(train_loader) // accumulate)
    if params["scheduler"] == "cosine":
        warmup = int(round(params.get("warmup_epochs", 0) * steps_per_epoch))
        step_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(
                s, epochs * steps_per_epoch, warmup, params.get("min_lr_ratio", 0.01)
            ),
        )
    else:
        step_scheduler = None
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2
        )
        if params["scheduler"] == "plateau"
        else None
    )

    amp = params.get("amp", "bf16") if device == "cuda" else "none"
    autocast = amp_autocast(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    tracker = start_tracking(wandb_settings, run_name, params, out_dir)
    history, best = [], {"val_miou": -1.0}
    print(
        f"{run_name}: {len(train_rows)} train (+{len(extra_rows)} pseudo-labelled) / {len(val_rows)} val images, device {device}, amp {amp}, {epochs} epochs",
        flush=True,
    )
    for epoch in range(1, epochs + 1):
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        optimizer.zero_grad(set_to_none=True)
        for step, (batch, masks) in enumerate(train_loader):
            batch, masks = to_device(batch, device), masks.to(device, non_blocking=True)
            with autocast():
                logits = model(batch)
            loss = criterion(logits, masks)
            scaler.scale(loss / accumulate).backward()
            if (step + 1) % accumulate == 0 or step + 1 == len(train_loader):
                if params.get("grad_clip"):
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        model.parameters(), params["grad_clip"]
                    )
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if step_scheduler is not None:
                    step_scheduler.step()
            loss_sum += float(loss.detach()) * len(batch)
            seen += len(batch)
        train_seconds = time.perf_counter() - started
        val_loss, confusion = evaluate(
            model, val_loader, criterion, n_classes, device, autocast
        )
        val_miou, iou = mean_iou(confusion), iou_per_class(confusion)
        extra = {}
        if cleaned_val_loader is not None:
            extra["val_miou_cleaned"] = mean_iou(
                evaluate(
                    model, cleaned_val_loader, criterion, n_classes, device, autocast
                )[1]
            )
        if plateau is not None:
            plateau.step(val_miou)
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(1, seen),
            "val_loss": val_loss,
            "val_miou": val_miou,
            **extra,
            **{f"iou_{name}": float(v) for name, v in zip(classes, iou)},
            "seconds": time.perf_counter() - started,
            "images_per_s": seen / train_seconds,
        }
        history.append(row)
        print(
            f"epoch {epoch}/{epochs} train_loss {row['train_loss']:.4f} val_loss {val_loss:.4f} val_miou {val_miou:.4f} "
            f"lr {row['lr']:.2e} {row['images_per_s']:.1f} img/s {row['seconds']:.1f}s",
            flush=True,
        )
        if val_miou > best["val_miou"]:
            best = {
                "epoch": epoch,
                "val_miou": val_miou,
                **extra,
                "per_class_iou": {
                    n: (None if np.isnan(v) else float(v)) for n, v in zip(classes, iou)
                },
            }
            save_checkpoint(
                out_dir / "model.pt", model, params, classes, fold, seed, best
            )
            log_images(tracker, model, val_loader, classes, device, autocast)
        if tracker is not None:
            tracker.log(
                {
                    k: v
                    for k, v in row.items()
                    if isinstance(v, float) and not math.isnan(v)
                }
                | {"epoch": epoch}
            )

    metrics = {
        "model": run_name,
        "fold": fold,
        "seed": seed,
        "best_epoch": best["epoch"],
        "val_miou": best["val_miou"],
        **(
            {"val_miou_cleaned": best["val_miou_cleaned"]}
            if "val_miou_cleaned" in best
            else {}
        ),
        "per_class_iou": best["per_class_iou"],
        "epochs": epochs,
        "train_images": len(train_rows),
        "dropped_images": n_dropped,
        "pseudo_images": len(extra_rows),
        "val_images": len(val_rows),
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "seconds": float(sum(h["seconds"] for h in history)),
        "device": device,
        "amp": amp,
    }
    write_table(pd.DataFrame(history), out_dir / "history.csv")
    write_json(metrics, out_dir / "metrics.json")
    if tracker is not None:
        tracker.summary.update(
            {"best_val_miou": best["val_miou"], "best_epoch": best["epoch"]}
        )
        tracker.finish()
    return metrics


def kept_pseudo_images(path: str | Path) -> list[str]:
    table = pd.read_csv(path)
    return table.loc[table["kept"].astype(bool), "image_id"].tolist()


def save_checkpoint(
    path: Path,
    model,
    params: dict,
    classes: list[str],
    fold: int,
    seed: int,
    best: dict,
) -> None:
    """state_dict + the resolved config, plain types only (torch.load(weights_only=True))."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoint = {
        "state_dict": state,
        "config": json.loads(json.dumps(params)),
        "classes": list(classes),
        "fold": int(fold),
        "seed": int(seed),
        "epoch": int(best["epoch"]),
        "val_miou": float(best["val_miou"]),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """(model in eval mode, checkpoint dict) from a model.pt written by :func:`save_checkpoint`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    params = checkpoint["config"]
    model = create_model(
        params["arch"], params["encoder"], len(checkpoint["classes"]), None
    )  # weights come from the checkpoint
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def start_tracking(settings: dict | None, run_name: str, params: dict, out_dir: Path):
    """A wandb run, or None when wandb is disabled (then wandb is not even imported)."""
    if not settings or settings.get("mode", "disabled") == "disabled":
        return None
    import wandb

    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=settings.get("project", "segflow"),
        mode=settings["mode"],
        name=run_name,
        group=run_name.split("/")[0] if run_name else None,
        config=params,
        dir=settings["dir"],
        reinit="finish_previous",
    )


def log_images(
    tracker, model, loader, classes: list[str], device: str, autocast, count: int = 4
) -> None:
    """A few validation images with ground truth and prediction overlays (wandb masks)."""
    if tracker is None:
        return
    import wandb

    batch, masks = next(iter(loader))
    with torch.no_grad(), autocast():
        prediction = model(to_device(batch[:count], device)).argmax(dim=1).cpu().numpy()
    mean, std = np.array(A.Normalize().mean), np.array(A.Normalize().std)
    labels = dict(enumerate(classes))
    pictures = []
    for i in range(min(count, len(batch))):
        picture = (
            ((batch[i].permute(1, 2, 0).numpy() * std + mean) * 255)
            .clip(0, 255)
            .astype(np.uint8)
        )
        pictures.append(
            wandb.Image(
                picture,
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Train one model on one fold with one seed."
    )
    parser.add_argument("--images", required=True, help="images.parquet")
    parser.add_argument("--folds", required=True, help="folds.csv")
    parser.add_argument("--masks-dir", required=True)
    parser.add_argument("--image-root", required=True)
    parser.add_argument(
        "--params", required=True, help="JSON of the resolved model config"
    )
    parser.add_argument("--classes", required=True, help="JSON list of class names")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wandb", default="{}", help="JSON: mode, project, dir")
    parser.add_argument("--name", default="")
    parser.add_argument(
        "--train-masks-dir",
        default=None,
        help="masks to train on (later rounds: cleaned labels); validation keeps --masks-dir",
    )
    parser.add_argument(
        "--drop",
        default=None,
        help="file of image ids left out of training, one per line",
    )
    parser.add_argument(
        "--pseudo",
        default=None,
        help="pseudo-label images.csv (image_id, kept): test images added to training",
    )
    parser.add_argument("--pseudo-masks-dir", default=None)
    args = parser.parse_args(argv)
    try:
        train(
            images_path=args.images,
            folds_path=args.folds,
            masks_dir=args.masks_dir,
            image_root=args.image_root,
            params=json.loads(args.params),
            classes=json.loads(args.classes),
            fold=args.fold,
            seed=args.seed,
            out_dir=args.out_dir,
            threads=args.threads,
            wandb_settings=json.loads(args.wandb),
            run_name=args.name,
            train_masks_dir=args.train_masks_dir,
            drop=frozenset(read_ids(args.drop)) if args.drop else frozenset(),
            pseudo=frozenset(kept_pseudo_images(args.pseudo))
            if args.pseudo
            else frozenset(),
            pseudo_masks_dir=args.pseudo_masks_dir,
        )
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
