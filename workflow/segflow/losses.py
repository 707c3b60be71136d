"""Losses: a weighted sum of named terms from config, every term ignoring label 255.

``create_loss({"ce": 1.0, "dice": 1.0}, label_smoothing=0.05)``. Terms:

- ``ce``: nn.CrossEntropyLoss(ignore_index=255, label_smoothing=...). (smp's
  SoftCrossEntropyLoss crashes with its default smooth_factor and averages over ignored
  pixels.)
- ``dice``, ``jaccard``, ``lovasz``: smp.losses in multiclass mode with ignore_index.
- ``focal``: softmax focal loss (below). smp's FocalLoss in multiclass mode is a
  one-vs-all sigmoid loss, not the softmax focal loss people expect.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from segflow.labels import IGNORE_INDEX

LOSS_NAMES = ("ce", "dice", "focal", "lovasz", "jaccard")


class SoftmaxFocalLoss(nn.Module):
    """Focal loss on the softmax: mean over labelled pixels of -(1 - p_t)^gamma * log p_t."""

    def __init__(self, gamma: float = 2.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        keep = target != self.ignore_index
        safe_target = torch.where(keep, target, torch.zeros_like(target))
        log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        return (loss * keep).sum() / keep.sum().clamp(min=1)


class CompoundLoss(nn.Module):
    """Weighted sum of loss terms; ``parts`` holds the last value of each term for logging."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.parts: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for name, term in self.terms.items():
            value = term(logits.float(), target)
            self.parts[name] = float(value.detach())
            total = total + self.weights[name] * value
        return total


def create_loss(
    weights: dict[str, float], label_smoothing: float = 0.0, focal_gamma: float = 2.0
) -> CompoundLoss:
    """The compound loss of ``weights`` (term name -> weight; zero weights are left out)."""
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"loss: unknown terms {unknown}; choose from {LOSS_NAMES}")
    factories = {
        "ce": lambda: nn.CrossEntropyLoss(
            ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
        ),
        "dice": lambda: smp.losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX),
        "jaccard": lambda: smp.losses.JaccardLoss(
            "multiclass", ignore_index=IGNORE_INDEX
        ),
        "lovasz": lambda: smp.losses.LovaszLoss(
            "multiclass", ignore_index=IGNORE_INDEX
        ),
        "focal": lambda: SoftmaxFocalLoss(focal_gamma, IGNORE_INDEX),
    }
    active = {name: w for name, w in weights.items() if w}
    if not active:
        raise ValueError("loss: every weight is zero")
    return CompoundLoss({name: factories[name]() for name in active}, active)
