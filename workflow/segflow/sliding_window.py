"""Prediction of images larger than a model takes at once: an overlapping sliding window.

A model trained on random crops (the ``crop`` model setting, height x width) predicts a
whole image tile by tile: tiles of that size, ``overlap`` of a tile apart from their
neighbours (the last tile of a row or column flush with the image's edge), blended with
weights that fall off toward the tile's border (a Gaussian of sigma = tile side / 8
around the centre along each axis, as nnU-Net does), since a convolutional network sees
least context at a tile's border. An image smaller than a tile is padded to one (zeros:
the mean pixel after normalization) and the padding cropped away again.

Peak memory is the model's on ``batch`` tiles plus the blended output of one image
(classes x height x width floats), whatever the image's size; benchmarks/
sliding_window.py measures it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

GAUSSIAN_SIGMA = 1 / 8  # of the tile's side along each axis
MIN_WEIGHT = 1e-3  # of the centre's: border pixels still count where no tile centres


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of the tiles along one side of ``length`` >= ``tile`` pixels."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _profile(length: int) -> torch.Tensor:
    distance = torch.arange(length, dtype=torch.float32) - (length - 1) / 2
    return torch.exp(-0.5 * (distance / (GAUSSIAN_SIGMA * length)) ** 2)


@functools.lru_cache(maxsize=8)
def border_weights(tile: tuple[int, int]) -> torch.Tensor:
    """(tile height, tile width) weights, 1 at the centre, falling off toward the border."""
    weights = _profile(tile[0])[:, None] * _profile(tile[1])[None, :]
    return (weights / weights.max()).clamp(min=MIN_WEIGHT)


def sliding_window(
    predict, images: torch.Tensor, tile: tuple[int, int], overlap: float, batch: int
) -> torch.Tensor:
    """Blend ``predict`` (tiles (B, C, th, tw) -> (B, K, th, tw)) over ``images``
    (N, C, H, W); ``tile``: (th, tw). Returns (N, K, H, W) float32 on the images' device."""
    tile_h, tile_w = tile
    n, _, height, width = images.shape
    pad_h, pad_w = max(0, tile_h - height), max(0, tile_w - width)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    padded_h, padded_w = images.shape[-2:]
    boxes = [
        (top, left)
        for top in tile_starts(padded_h, tile_h, overlap)
        for left in tile_starts(padded_w, tile_w, overlap)
    ]
    weights = border_weights((tile_h, tile_w)).to(images.device)
    blended = None
    total = torch.zeros(padded_h, padded_w, device=images.device)
    for top, left in boxes:
        total[top : top + tile_h, left : left + tile_w] += weights
    for image_index in range(n):
        image = images[image_index]
        for first in range(0, len(boxes), batch):
            chunk = boxes[first : first + batch]
            tiles = torch.stack(
                [image[:, t : t + tile_h, s : s + tile_w] for t, s in chunk]
            )
            out = predict(tiles).float()
            if blended is None:
                blended = torch.zeros(
                    n, out.shape[1], padded_h, padded_w, device=images.device
                )
            for (top, left), tile_out in zip(chunk, out):
                blended[image_index, :, top : top + tile_h, left : left + tile_w] += (
                    tile_out * weights
                )
    blended /= total
    return blended[:, :, :height, :width]
