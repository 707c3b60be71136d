"""Prediction of images larger than a model takes at once: an overlapping sliding window.

A model trained on random ``crop`` x ``crop`` crops (the ``crop`` model setting) predicts
a whole image tile by tile: tiles of that side, ``overlap`` of a tile apart from their
neighbours (the last tile of a row or column flush with the image's edge), blended with
weights that fall off toward the tile's border (a Gaussian of sigma = tile / 8 around
the centre, as nnU-Net does), since a convolutional network sees least context at a
tile's border. An image smaller than a tile is padded to one (zeros: the mean pixel
after normalization) and the padding cropped away again.

Peak memory is the model's on ``batch`` tiles plus the blended output of one image
(classes x height x width floats), whatever the image's size; benchmarks/
sliding_window.py measures it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

GAUSSIAN_SIGMA = 1 / 8  # of the tile side
MIN_WEIGHT = 1e-3  # of the centre's: border pixels still count where no tile centres


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of the tiles along one side of ``length`` >= ``tile`` pixels."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


@functools.lru_cache(maxsize=8)
def border_weights(tile: int) -> torch.Tensor:
    """(tile, tile) weights, 1 at the centre, falling off toward the border."""
    centre = (tile - 1) / 2
    distance = torch.arange(tile, dtype=torch.float32) - centre
    profile = torch.exp(-0.5 * (distance / (GAUSSIAN_SIGMA * tile)) ** 2)
    weights = profile[:, None] * profile[None, :]
    return (weights / weights.max()).clamp(min=MIN_WEIGHT)


def sliding_window(
    predict, images: torch.Tensor, tile: int, overlap: float, batch: int
) -> torch.Tensor:
    """Blend ``predict`` (tiles (B, C, t, t) -> (B, K, t, t)) over ``images``
    (N, C, H, W); returns (N, K, H, W) float32 on the images' device."""
    n, _, height, width = images.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    padded_h, padded_w = images.shape[-2:]
    boxes = [
        (top, left)
        for top in tile_starts(padded_h, tile, overlap)
        for left in tile_starts(padded_w, tile, overlap)
    ]
    weights = border_weights(tile).to(images.device)
    blended = None
    total = torch.zeros(padded_h, padded_w, device=images.device)
    for top, left in boxes:
        total[top : top + tile, left : left + tile] += weights
    for image_index in range(n):
        image = images[image_index]
        for first in range(0, len(boxes), batch):
            chunk = boxes[first : first + batch]
            tiles = torch.stack(
                [image[:, t : t + tile, s : s + tile] for t, s in chunk]
            )
            out = predict(tiles).float()
            if blended is None:
                blended = torch.zeros(
                    n, out.shape[1], padded_h, padded_w, device=images.device
                )
            for (top, left), tile_out in zip(chunk, out):
                blended[image_index, :, top : top + tile, left : left + tile] += (
                    tile_out * weights
                )
    blended /= total
    return blended[:, :, :height, :width]
