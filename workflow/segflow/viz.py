"""Drawing helpers shared by every figure: one class palette, mask overlays, figure encoding."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: jobs run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from segflow.labels import IGNORE_INDEX  # noqa: E402

# Object classes' colours: tab10 with its grey swapped for gold, then tab20's light
# shades (its light grey left out). Grey is what photos of objects are made of: a grey
# class vanished in the overlays (Plastic bag). Each colour blended at the overlay's alpha
# stands out over black, mid-grey and white (tests/test_viz.py measures it in CIELAB).
_GREY_IN_TAB10 = 7
_GOLD = (1.0, 215 / 255, 0.0)
_LIGHT_GREY_IN_TAB20 = 15


def class_palette(n_classes: int) -> np.ndarray:
    """(n_classes, 3) uint8 RGB colours; background black, the rest as above (then hsv)."""
    tab10 = list(plt.get_cmap("tab10").colors)
    tab10[_GREY_IN_TAB10] = _GOLD
    light = [
        c
        for i, c in enumerate(plt.get_cmap("tab20").colors)
        if i % 2 == 1 and i != _LIGHT_GREY_IN_TAB20
    ]
    named = tab10 + light
    colors = [(0, 0, 0)]
    for k in range(1, n_classes):
        rgb = (
            named[k - 1]
            if k <= len(named)
            else plt.get_cmap("hsv")((k * 0.618034) % 1.0)[:3]
        )
        colors.append(tuple(int(round(255 * c)) for c in rgb))
    return np.array(colors, np.uint8)


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.55
) -> np.ndarray:
    """Blend a class-index mask over an RGB image; background stays as is, 255 shows white."""
    colors = np.zeros(image.shape, np.float32)
    labelled = (mask > 0) & (mask != IGNORE_INDEX)
    colors[labelled] = palette[mask[labelled]]
    colors[mask == IGNORE_INDEX] = 255
    shown = labelled | (mask == IGNORE_INDEX)
    out = image.astype(np.float32)
    out[shown] = (1 - alpha) * out[shown] + alpha * colors[shown]
    return out.round().astype(np.uint8)


def legend_handles(classes: list[str], palette: np.ndarray) -> list[Patch]:
    return [
        Patch(facecolor=palette[k] / 255, edgecolor="grey", label=f"{k} {name}")
        for k, name in enumerate(classes)
    ]


def save_figure(fig, path) -> bytes:
    """Write ``fig`` as PNG to ``path`` and return the bytes (for embedding), then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
