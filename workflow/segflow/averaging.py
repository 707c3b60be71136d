"""Weight averaging of a training run: EMA, SWA, or the mean of the top-k epochs.

``averaging`` (a model setting):

- ``ema``: an exponential moving average of the weights, updated after every optimizer
  step (timm's ModelEmaV3 with its warmup: the decay grows as 1 - (1 + step)^(-2/3) up
  to ``ema_decay``, so a short run is not dominated by its random start);
- ``swa``: the equal mean of the weights at the end of each epoch from the share
  ``swa_start`` of the run on (torch.optim.swa_utils.AveragedModel), along the
  schedule's tail;
- ``topk``: the equal mean of the ``top_k`` epochs of best val mIoU (the last
  ``top_k`` epochs without validation, in the full fit), as a SIIM winner averaged
  his 3 best checkpoints;
- ``none``: the best epoch is kept (the last without validation).

An averaged network's BatchNorm running statistics belong to none of the averaged
weights, so they are recomputed by a pass over the training images
(torch.optim.swa_utils.update_bn) before the averaged weights are scored and saved.
"""

from __future__ import annotations

import heapq
import math

import torch
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, update_bn

METHODS = ("none", "ema", "swa", "topk")


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of floating tensors; other tensors (num_batches_tracked) of the first."""
    return {
        key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        if value.is_floating_point()
        else value.clone()
        for key, value in states[0].items()
    }


class WeightAverage:
    """The run's averaged weights; see the module doc. Call ``after_step`` after every
    optimizer step and ``after_epoch`` after every epoch; ``averaged_state`` at the end."""

    def __init__(self, model, method: str, epochs: int, settings) -> None:
        if method not in METHODS:
            raise ValueError(f"averaging {method!r}: choose from {list(METHODS)}")
        self.method = method
        self.ema = self.swa = None
        self.top: list[tuple[float, int, dict]] = []  # (score, epoch, state), a heap
        self.top_k = settings.top_k
        # SWA averages the epochs from this one on (at least the last).
        self.swa_first_epoch = min(
            epochs, max(1, math.ceil(settings.swa_start * epochs))
        )
        if method == "ema":
            self.ema = ModelEmaV3(model, decay=settings.ema_decay, use_warmup=True)
            self.ema.requires_grad_(False)
        elif method == "swa":
            self.swa = AveragedModel(model, use_buffers=False)

    @property
    def active(self) -> bool:
        return self.method != "none"

    def after_step(self, model, step: int) -> None:
        if self.ema is not None:
            self.ema.update(model, step=step)

    def after_epoch(self, model, epoch: int, val_miou: float | None) -> None:
        if self.swa is not None and epoch >= self.swa_first_epoch:
            self.swa.update_parameters(model)
        if self.method == "topk":
            score = epoch if val_miou is None else val_miou  # no validation: the latest
            entry = (score, epoch, cpu_state(model))
            if len(self.top) < self.top_k:
                heapq.heappush(self.top, entry)
            elif score > self.top[0][0]:
                heapq.heapreplace(self.top, entry)

    def averaged_epochs(self) -> list[int]:
        """The epochs whose end-of-epoch weights are in the average (none for EMA, which
        follows every step)."""
        if self.method == "topk":
            return sorted(epoch for _, epoch, _ in self.top)
        if self.method == "swa":
            return list(
                range(self.swa_first_epoch, self.swa_first_epoch + self.swa_count)
            )
        return []

    @property
    def swa_count(self) -> int:
        return int(self.swa.n_averaged) if self.swa is not None else 0

    def describe(self) -> str:
        epochs = self.averaged_epochs()
        return f" of epochs {epochs}" if epochs else ""

    def averaged_state(self, model, bn_loader, device) -> dict[str, torch.Tensor]:
        """The averaged weights with BatchNorm statistics recomputed over ``bn_loader``,
        loaded into ``model`` and returned as a CPU state_dict."""
        if self.method == "ema":
            state = self.ema.module.state_dict()
        elif self.method == "swa":
            state = self.swa.module.state_dict()
        elif self.method == "topk":
            state = mean_state([s for _, _, s in self.top])
        else:
            raise ValueError("averaging none has no averaged weights")
        model.load_state_dict(state)
        update_bn(_images_only(bn_loader), model, device=torch.device(device))
        return cpu_state(model)

    def state_dict(self) -> dict:
        return {
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "top": self.top,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.swa is not None:
            self.swa.load_state_dict(state["swa"])
        self.top = list(state["top"])
        heapq.heapify(self.top)


def _images_only(loader):
    """update_bn feeds the batch's first element; a generator keeps it from the masks."""
    for images, _ in loader:
        yield images
