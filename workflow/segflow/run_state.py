"""What a training run changes as it goes, in one object.

The weights and the optimizer, schedule, scaler, mixer, weight average and loaders that
move them; the finished epochs' history; the best epoch so far. ``state_dict`` is
exactly what resume.pt holds, so a job killed mid-run (kill -9, a node lost) and rerun
goes on from its last saved epoch with the same random draws, as if never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segflow.averaging import WeightAverage, cpu_state
from segflow.checkpoints import load_training_state, save_training_state
from segflow.class_balance import class_image_shares
from segflow.fold_data import FoldData
from segflow.fold_loaders import FoldLoaders
from segflow.mixing import BatchMixer, rare_class_weights
from segflow.optim import LrSchedule, create_optimizer
from segflow.runtime import global_random_state, set_global_random_state
from segflow.settings import ModelSettings
from segflow.tables import object_class_presence


@dataclass
class RunState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    scaler: torch.amp.GradScaler
    mixer: BatchMixer
    averager: WeightAverage
    loaders: FoldLoaders
    epoch: int = 0  # the last finished epoch
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    first_loss: list[float] = field(default_factory=list)  # the first batch's, once run
    best: dict = field(default_factory=lambda: {"val_miou": -1.0})  # the kept epoch
    best_state: dict | None = None  # its weights (None while averaged weights are kept)
    presentations: int = 0  # training images shown, summed over epochs

    def keep_if_best(self, epoch: int, scores: dict) -> bool:
        """Keep this epoch if it validates best so far; without validation (the full
        fit) every epoch replaces the last. Weights stay in memory and are written once
        the run is over: a killed run leaves no model.pt of an early epoch that looks
        finished. Averaged weights replace the best epoch's at the end, so they are not
        copied then."""
        if scores and not scores["val_miou"] > self.best["val_miou"]:
            return False
        self.best = {"epoch": epoch, "val_miou": None, **scores}
        self.best_state = None if self.averager.active else cpu_state(self.model)
        return True

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "first_loss": self.first_loss,
            "best": self.best,
            "best_state": self.best_state,
            "presentations": self.presentations,
            "mixer": self.mixer.state_dict(),
            "averager": self.averager.state_dict(),
            "random": global_random_state(),
            "loaders": self.loaders.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        # Lists updated in place: the live progress report shares the history.
        self.history[:] = state["history"]
        self.first_loss[:] = state["first_loss"]
        self.best, self.best_state = state["best"], state["best_state"]
        self.presentations = state["presentations"]
        self.mixer.load_state_dict(state["mixer"])
        self.averager.load_state_dict(state["averager"])
        set_global_random_state(state["random"])
        self.loaders.load_state_dict(state["loaders"])

    def save(self, path: str | Path, fingerprint: str) -> None:
        save_training_state(path, {"fingerprint": fingerprint, **self.state_dict()})

    def resume(self, path: str | Path, fingerprint: str) -> bool:
        """Load the state saved at ``path`` if this same job saved it."""
        state = load_training_state(path, fingerprint)
        if state is None:
            return False
        self.load_state_dict(state)
        return True


def new_run_state(
    model,
    settings: ModelSettings,
    n_classes: int,
    amp: str,
    data: FoldData,
    loaders: FoldLoaders,
    seed: int,
) -> RunState:
    """A fresh run of ``model``: optimizer, lr schedule over the run's optimizer steps,
    GradScaler (fp16 only), batch mixing biased toward the training images' rare
    classes, weight averaging."""
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
    steps = loaders.optimizer_steps(settings.accumulate)
    return RunState(
        model=model,
        optimizer=optimizer,
        schedule=LrSchedule(optimizer, settings, steps / settings.epochs),
        scaler=torch.amp.GradScaler("cuda", enabled=amp == "fp16"),
        mixer=mixer,
        averager=averager,
        loaders=loaders,
    )


def job_fingerprint(settings, fold, seed, data: FoldData, inputs, extra: dict) -> str:
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
