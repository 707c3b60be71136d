"""Losses: a weighted sum of named terms from config, every term ignoring label 255.

``create_loss({"ce": 1.0, "dice": 1.0}, label_smoothing=0.05)``. Terms:

- ``ce``: nn.CrossEntropyLoss(ignore_index=255, label_smoothing=...). (smp's
  SoftCrossEntropyLoss crashes with its default smooth_factor and averages over ignored
  pixels.)
- ``dice``, ``jaccard``, ``lovasz``: smp.losses in multiclass mode with ignore_index.
- ``focal``: softmax focal loss (below). smp's FocalLoss in multiclass mode is a
  one-vs-all sigmoid loss, not the softmax focal loss people expect.
- ``aux``: for a model with an auxiliary classification head (``model_args.aux_params``):
  binary cross-entropy of its class logits against the classes present in the label map.

``class_weights`` (segflow.class_balance) weigh the ``ce`` term's classes.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from segflow.labels import IGNORE_INDEX

LOSS_NAMES = ("ce", "dice", "focal", "lovasz", "jaccard", "aux")


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


def classes_present(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N, C) float: 1 where class c has a pixel in image n's label map (255 left out)."""
    labelled = torch.where(target == IGNORE_INDEX, n_classes, target).flatten(1)
    one_hot = torch.zeros(len(target), n_classes + 1, device=target.device)
    return one_hot.scatter_(1, labelled, 1.0)[:, :n_classes]


class CompoundLoss(nn.Module):
    """Weighted sum of loss terms; ``parts`` holds the last value of each term for logging.

    ``output`` is the logits, or (logits, class logits) from a model with an auxiliary
    head (segflow.models.AuxiliaryHeadModel while training). In eval mode the aux term
    is left out: a model in eval mode returns no class logits (the validation loss is
    the pixels' loss)."""

    def __init__(self, terms: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.parts: dict[str, float] = {}

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        logits, class_logits = output if isinstance(output, tuple) else (output, None)
        total = 0.0
        for name, term in self.terms.items():
            if name == "aux":
                if class_logits is None and not self.training:
                    continue
                if class_logits is None:
                    raise ValueError(
                        "loss aux: the model has no auxiliary head"
                        " (set model_args: {aux_params: {}})"
                    )
                present = classes_present(target, class_logits.shape[1])
                value = term(class_logits.float(), present)
            else:
                value = term(logits.float(), target)
            self.parts[name] = float(value.detach())
            total = total + self.weights[name] * value
        return total


def create_loss(
    weights: dict[str, float],
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    class_weights: list[float] | None = None,
) -> CompoundLoss:
    """The compound loss of ``weights`` (term name -> weight; zero weights are left out);
    ``class_weights`` weigh the ce term's classes."""
    unknown = sorted(set(weights) - set(LOSS_NAMES))
    if unknown:
        raise ValueError(f"loss: unknown terms {unknown}; choose from {LOSS_NAMES}")
    factories = {
        "ce": lambda: nn.CrossEntropyLoss(
            weight=None if class_weights is None else torch.tensor(class_weights),
            ignore_index=IGNORE_INDEX,
            label_smoothing=label_smoothing,
        ),
        "dice": lambda: smp.losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX),
        "jaccard": lambda: smp.losses.JaccardLoss(
            "multiclass", ignore_index=IGNORE_INDEX
        ),
        "lovasz": lambda: smp.losses.LovaszLoss(
            "multiclass", ignore_index=IGNORE_INDEX
        ),
        "focal": lambda: SoftmaxFocalLoss(focal_gamma, IGNORE_INDEX),
        "aux": nn.BCEWithLogitsLoss,
    }
    active = {name: w for name, w in weights.items() if w}
    if not active:
        raise ValueError("loss: every weight is zero")
    return CompoundLoss({name: factories[name]() for name in active}, active)
