"""Batch mixing augmentations for segmentation: MixUp, CutMix, Copy-Paste.

Each mixes a training batch with a permutation of itself, with probability ``mix_p``
per batch, on the device, after the per-image albumentations transforms:

- ``mixup``: image = lam x + (1 - lam) x', lam ~ Beta(alpha, alpha); the loss is
  lam L(y) + (1 - lam) L(y') with the same lam (:func:`mixed_loss`);
- ``cutmix``: a box covering 1 - lam of the image, lam ~ Beta(alpha, alpha), is cut
  from x' and pasted into x, pixels and labels alike;
- ``copypaste``: the pixels of one class of the partner image are pasted into x, pixels
  and labels alike. The class is drawn among the partner's classes (not background)
  with weights (1 / f_c)^``rare_bias``, f_c the share of training images that contain
  class c: rare classes are pasted more often (the trash competition's winner pasted
  its rarest classes).

Labels stay aligned with pixels: the same box or region is copied in both. Ignored
pixels (255) are never pasted as a class: CutMix copies them as 255 (unknown stays
unknown), Copy-Paste copies only the drawn class's labelled pixels.

All randomness comes from one numpy Generator the caller owns (its state is saved with
the resumable training state; torch's Beta distribution takes no generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segflow.labels import IGNORE_INDEX

METHODS = ("none", "mixup", "cutmix", "copypaste")


@dataclass
class MixedBatch:
    """A batch after mixing: ``masks_b``/``lam`` are set for MixUp only."""

    images: torch.Tensor
    masks: torch.Tensor
    masks_b: torch.Tensor | None = None
    lam: float = 1.0


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about 1 - lam of the image, clipped."""
    cut = (1 - lam) ** 0.5
    box_h, box_w = int(round(height * cut)), int(round(width * cut))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(0, cy - box_h // 2), min(height, cy + (box_h + 1) // 2)
    left, right = max(0, cx - box_w // 2), min(width, cx + (box_w + 1) // 2)
    return top, bottom, left, right


def copy_paste_class(
    partner_mask: torch.Tensor, class_weights: np.ndarray, rng: np.random.Generator
) -> int | None:
    """The class of ``partner_mask`` to paste (weights ``class_weights``; the background,
    weight 0, is never pasted), or None when it has no labelled object pixel."""
    present = torch.unique(partner_mask).cpu().numpy()
    present = present[present != IGNORE_INDEX]
    present = present[class_weights[present] > 0]
    if not len(present):
        return None
    weights = class_weights[present]
    return int(rng.choice(present, p=weights / weights.sum()))


def rare_class_weights(
    image_shares: np.ndarray, rare_bias: float, objects: np.ndarray | None = None
) -> np.ndarray:
    """(1 / f_c)^rare_bias from the share f_c of training images holding class c; a class
    no training image holds gets the rarest class's weight. ``objects``: which classes
    are object classes (default: all but class 0, the background); the others get 0."""
    image_shares = np.asarray(image_shares, dtype=np.float64)
    if objects is None:
        objects = np.arange(len(image_shares)) != 0
    seen = image_shares > 0
    floor = image_shares[seen].min() if seen.any() else 1.0
    weights = (1.0 / np.where(seen, image_shares, floor)) ** rare_bias
    return np.where(objects, weights, 0.0)


def mix_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    method: str,
    p: float,
    alpha: float,
    class_weights: np.ndarray | None,
    rng: np.random.Generator,
) -> MixedBatch:
    """``images`` (N, C, H, W) and ``masks`` (N, H, W) mixed per the module doc."""
    if method not in METHODS:
        raise ValueError(f"mix {method!r}: choose from {list(METHODS)}")
    if method == "none":
        return MixedBatch(images, masks)
    if rng.random() >= p or len(images) < 2:
        return MixedBatch(images, masks)
    partner = torch.as_tensor(rng.permutation(len(images)), device=images.device)
    if method == "mixup":
        lam = float(rng.beta(alpha, alpha))
        mixed = lam * images + (1 - lam) * images[partner]
        return MixedBatch(mixed, masks, masks[partner], lam)
    images, masks = images.clone(), masks.clone()
    if method == "cutmix":
        lam = float(rng.beta(alpha, alpha))
        top, bottom, left, right = cutmix_box(*images.shape[-2:], lam, rng)
        images[:, :, top:bottom, left:right] = images[partner][
            :, :, top:bottom, left:right
        ]
        masks[:, top:bottom, left:right] = masks[partner][:, top:bottom, left:right]
        return MixedBatch(images, masks)
    source_images, source_masks = images[partner].clone(), masks[partner].clone()
    for i in range(len(images)):
        chosen = copy_paste_class(source_masks[i], class_weights, rng)
        if chosen is None:
            continue
        region = source_masks[i] == chosen
        images[i][:, region] = source_images[i][:, region]
        masks[i][region] = chosen
    return MixedBatch(images, masks)


def mixed_loss(criterion, logits: torch.Tensor, batch: MixedBatch) -> torch.Tensor:
    """The loss of a mixed batch: MixUp's lam-mix of the two labels' losses."""
    loss = criterion(logits, batch.masks)
    if batch.masks_b is None:
        return loss
    return batch.lam * loss + (1 - batch.lam) * criterion(logits, batch.masks_b)


class BatchMixer:
    """The run's mixing: ``mixer(images, masks)`` -> MixedBatch, with its own random
    stream (``seed``) whose state the resumable training state keeps."""

    def __init__(
        self,
        method: str,
        p: float,
        alpha: float,
        class_weights: np.ndarray | None,
        seed: int,
    ):
        self.method, self.p, self.alpha = method, p, alpha
        self.class_weights = class_weights
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> MixedBatch:
        return mix_batch(
            images, masks, self.method, self.p, self.alpha, self.class_weights, self.rng
        )

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state
