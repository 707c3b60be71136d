"""Optimizers and learning-rate schedules from the model settings.

``cosine``: linear warmup from 0 over ``warmup_epochs``, then cosine down to
``min_lr_ratio`` x lr, stepped per optimizer step. ``plateau``: halve the lr when the
val mIoU has not risen for 2 epochs, stepped per epoch. ``none``: constant.
"""

from __future__ import annotations

import math

import torch

from segflow.settings import ModelSettings


def create_optimizer(model: torch.nn.Module, settings: ModelSettings):
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=True,
        )
    return torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, min_ratio: float
) -> float:
    """Linear warmup from 0 to 1, then cosine from 1 to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return min_ratio + (1 - min_ratio) * cosine


class LrSchedule:
    """The settings' schedule: ``after_step()`` per optimizer step, ``after_epoch(miou)``."""

    def __init__(self, optimizer, settings: ModelSettings, steps_per_epoch: float):
        """``steps_per_epoch``: optimizer steps of the whole run / epochs (a run whose
        last epochs leave pseudo-labelled images out has shorter epochs at its end)."""
        self.per_step = self.per_epoch = None
        self.steps = 0  # optimizer steps taken
        if settings.scheduler == "cosine":
            total = int(round(settings.epochs * steps_per_epoch))
            warmup = int(round(settings.warmup_epochs * steps_per_epoch))
            self.per_step = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda s: lr_factor(s, total, warmup, settings.min_lr_ratio),
            )
        elif settings.scheduler == "plateau":
            self.per_epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.5, patience=2
            )

    def after_step(self) -> None:
        self.steps += 1
        if self.per_step is not None:
            self.per_step.step()

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
        if self.per_epoch is not None:
            self.per_epoch.load_state_dict(state["per_epoch"])
