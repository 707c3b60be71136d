"""The workflow's training loop against a plain loop over the same images in memory.

    snakemake results/folds/folds.csv            # the index and folds it reads
    python benchmarks/throughput.py              # config.yaml's first model, fold 0

Both loops train the same model (same initial weights), loss, optimizer and batch size on
fold 0's training images for ``--epochs`` epochs, with the job's threads:

- workflow: segflow.train's own ``fold_loaders`` and ``train_epoch``: images and masks
  read from disk every epoch, the configured augmentations, the lr schedule;
- in memory: the same images decoded once into tensors before timing, shuffled batches
  with no augmentation, forward + loss + backward + optimizer step.

The first epoch of each is a warm-up and not timed. It prints both images/s and their
ratio (target: at least 0.9, i.e. data loading and augmentation cost at most a tenth of
the training time), then a training job's fixed start-up cost: the wall time of
``python -m segflow.train`` for one epoch minus that epoch's own time (imports, reading
the index, building the model, writing the outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

PACKAGE = Path(__file__).resolve().parents[1] / "workflow"
sys.path.insert(0, str(PACKAGE))

from segflow.data import (  # noqa: E402
    SegmentationDataset,
    eval_transform,
    image_sizes,
)
from segflow.epoch import train_epoch  # noqa: E402
from segflow.fold_data import RoundLabels, fold_data  # noqa: E402
from segflow.fold_loaders import fold_loaders  # noqa: E402
from segflow.input_size import model_input_size  # noqa: E402
from segflow.losses import create_loss  # noqa: E402
from segflow.models import create_model  # noqa: E402
from segflow.optim import LrSchedule, create_optimizer  # noqa: E402
from segflow.runtime import amp_autocast, seed_everything, set_threads  # noqa: E402
from segflow.settings import (  # noqa: E402
    WandbSettings,
    data_paths,
    model_settings,
    validated,
)


def workflow_loop(settings, data, n_classes, side, model, epochs: int) -> float:
    """Images/s of segflow.train's loop over ``epochs`` epochs after one warm-up."""
    train_loader = fold_loaders(data, settings, n_classes, side, 0, 0, "cpu").train
    criterion = create_loss(
        settings.loss, settings.label_smoothing, settings.focal_gamma
    )
    optimizer = create_optimizer(model, settings)
    schedule = LrSchedule(optimizer, settings, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    autocast = amp_autocast("cpu", "none")
    seen, seconds, first_loss = 0, 0.0, []
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        _, images = train_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            scaler,
            schedule,
            settings,
            "cpu",
            autocast,
            epoch,
            first_loss,
        )
        if epoch:  # epoch 0 warms up
            seconds += time.perf_counter() - started
            seen += images
    return seen / seconds


def in_memory_loop(settings, data, side, model, epochs: int) -> float:
    """Images/s of a plain loop over the same images held as tensors."""
    dataset = SegmentationDataset(
        data.train_images, data.train_masks, eval_transform(side)
    )
    images = torch.stack([dataset[k][0] for k in range(len(dataset))])
    masks = torch.stack([dataset[k][1] for k in range(len(dataset))])
    criterion = create_loss(
        settings.loss, settings.label_smoothing, settings.focal_gamma
    )
    optimizer = create_optimizer(model, settings)
    batch = settings.batch_size
    seen, seconds = 0, 0.0
    model.train()
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(images))
        for start in range(0, len(images) - batch + 1, batch):  # drop_last, as training
            index = order[start : start + batch]
            loss = criterion(model(images[index]), masks[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if epoch:
                seen += len(index)
        if epoch:
            seconds += time.perf_counter() - started
    return seen / seconds


def start_up_seconds(config, model_name, results: Path, threads: int) -> dict:
    """Wall time of one `python -m segflow.train` job of one epoch, minus its epoch."""
    settings = model_settings(config, model_name).replace(epochs=1)
    with tempfile.TemporaryDirectory() as out:
        out = Path(out)
        command = [
            sys.executable,
            "-m",
            "segflow.train",
            "--settings",
            settings.to_json(),
            "--images",
            str(results / "data/train/images.parquet"),
            "--folds",
            str(results / "folds/folds.csv"),
            "--masks-dir",
            str(results / "data/masks"),
            "--image-root",
            data_paths(config).root,
            "--classes",
            json.dumps(config["classes"]),
            "--fold",
            "f0",
            "--seed",
            "0",
            "--model-out",
            str(out / "model.pt"),
            "--history-out",
            str(out / "history.csv"),
            "--metrics-out",
            str(out / "metrics.json"),
            "--threads",
            str(threads),
            "--wandb",
            WandbSettings(mode="disabled", project="start-up", dir=str(out)).to_json(),
            "--name",
            "start-up",
        ]
        started = time.perf_counter()
        subprocess.run(
            command,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(PACKAGE)},
        )
        wall = time.perf_counter() - started
        epoch = float(pd.read_csv(out / "history.csv")["seconds"].sum())
    return {"job_wall_s": wall, "epoch_s": epoch, "start_up_s": wall - epoch}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--results", default="results", help="holds data/ and folds/")
    parser.add_argument("--model", help="a key of models (default: the first)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs of each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    config = validated(yaml.safe_load(Path(args.config).read_text()))
    name = args.model or next(iter(config["models"]))
    settings = model_settings(config, name)
    threads = set_threads(args.threads)
    results = Path(args.results)
    images = pd.read_parquet(results / "data/train/images.parquet")
    data = fold_data(
        images,
        pd.read_csv(results / "folds/folds.csv"),
        0,
        data_paths(config).root,
        results / "data/masks",
        RoundLabels.none(),
    )
    side = model_input_size(image_sizes(images), settings.arch, settings.input_size)

    def fresh_model():
        seed_everything(0)
        return create_model(
            settings.arch, settings.encoder, len(config["classes"]), None
        )

    workflow = workflow_loop(
        settings, data, len(config["classes"]), side, fresh_model(), args.epochs
    )
    memory = in_memory_loop(settings, data, side, fresh_model(), args.epochs)
    start_up = start_up_seconds(config, name, results, threads)
    result = {
        "model": name,
        "arch": settings.arch,
        "encoder": settings.encoder,
        "threads": threads,
        "batch_size": settings.batch_size,
        "train_images": len(data.train_images),
        "timed_epochs": args.epochs,
        "workflow_images_per_s": workflow,
        "in_memory_images_per_s": memory,
        "ratio": workflow / memory,
        **start_up,
    }
    print(
        f"{name} ({settings.arch}/{settings.encoder}, batch {settings.batch_size},"
        f" {threads} threads, {len(data.train_images)} images x {args.epochs} epochs)\n"
        f"  workflow loop   {workflow:7.1f} img/s\n"
        f"  in-memory loop  {memory:7.1f} img/s\n"
        f"  ratio           {workflow / memory:7.3f}  (target >= 0.9)\n"
        f"  start-up cost   {start_up['start_up_s']:7.1f} s of a"
        f" {start_up['job_wall_s']:.1f} s one-epoch job"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
