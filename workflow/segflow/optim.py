"""Optimizers and learning-rate schedules from the model settings, through timm.

Optimizers come from timm's factory (``timm.optim.create_optimizer_v2``): the names the
schema's ``optimizer`` enum offers (``adamw``, ``sgd`` with Nesterov momentum,
``lookahead_adamw``...; timm names that need no extra package); the factory also keeps
weight decay off biases and normalization weights.

Schedules, stepped per optimizer step (timm schedulers with ``t_in_epochs=False``), each
after a linear warmup over ``warmup_epochs``:

- ``cosine``: cosine from lr down to ``min_lr_ratio`` x lr over the run;
- ``cosine_restarts``: the same cosine over cycles of ``restart_epochs``, each cycle
  starting again at lr (SGDR; the cycles' ends are natural snapshot/SWA points);
- ``poly``: polynomial decay (1 - t/T)^``poly_power`` to ``min_lr_ratio`` x lr;
- ``plateau``: halve the lr when the val mIoU has not risen for 2 epochs, per epoch;
- ``none``: constant.
"""

from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, PolyLRScheduler

from segflow.settings import ModelSettings


def create_optimizer(model: torch.nn.Module, settings: ModelSettings):
    return create_optimizer_v2(
        model,
        opt=settings.optimizer,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
    )


def per_step_scheduler(optimizer, settings: ModelSettings, steps_per_epoch: float):
    """The timm scheduler of ``settings.scheduler`` in optimizer steps, or None."""
    total = max(1, int(round(settings.epochs * steps_per_epoch)))
    warmup = int(round(settings.warmup_epochs * steps_per_epoch))
    common = {
        "lr_min": settings.lr * settings.min_lr_ratio,
        "warmup_t": warmup,
        # The first step already trains at lr / warmup steps, not at 0.
        "warmup_lr_init": settings.lr / max(1, warmup),
        "warmup_prefix": True,  # the decay starts after the warmup, over what is left
        "t_in_epochs": False,
    }
    if settings.scheduler == "cosine":
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), **common)
    if settings.scheduler == "cosine_restarts":
        cycle = max(1, int(round(settings.restart_epochs * steps_per_epoch)))
        return CosineLRScheduler(
            optimizer,
            t_initial=cycle,
            cycle_limit=math.ceil(max(1, total - warmup) / cycle),
            **common,
        )
    if settings.scheduler == "poly":
        return PolyLRScheduler(
            optimizer,
            t_initial=max(1, total - warmup),
            power=settings.poly_power,
            **common,
        )
    if settings.scheduler in ("plateau", "none"):
        return None
    raise ValueError(f"scheduler {settings.scheduler!r} is not one the schema offers")


class LrSchedule:
    """The settings' schedule: ``after_step()`` per optimizer step, ``after_epoch(miou)``."""

    def __init__(self, optimizer, settings: ModelSettings, steps_per_epoch: float):
        """``steps_per_epoch``: optimizer steps of the whole run / epochs (a run whose
        last epochs leave pseudo-labelled images out has shorter epochs at its end)."""
        self.steps = 0  # optimizer steps taken
        self.per_step = per_step_scheduler(optimizer, settings, steps_per_epoch)
        self.per_epoch = None
        if settings.scheduler == "plateau":
            self.per_epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=2
            )

    def after_step(self) -> None:
        self.steps += 1
        if self.per_step is not None:
            self.per_step.step_update(self.steps)

    def after_epoch(self, val_miou: float) -> None:
        if self.per_epoch is not None:
            self.per_epoch.step(val_miou)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "per_step": self.per_step.state_dict() if self.per_step else None,
            "per_epoch": self.per_epoch.state_dict() if self.per_epoch else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
            self.per_step.step_update(self.steps)  # the lr of the step reached
        if self.per_epoch is not None:
            self.per_epoch.load_state_dict(state["per_epoch"])
