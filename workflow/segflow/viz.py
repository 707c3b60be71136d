"""Drawing helpers shared by every figure: one class palette, mask overlays, figure encoding."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: jobs run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from segflow.io import atomic_path  # noqa: E402
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


def class_legend(
    fig, classes: list[str], palette: np.ndarray, fontsize: int = 8, below: float = 0.02
) -> None:
    """The class colours as a legend under the figure's panels (``below``: how far under
    the figure's bottom edge, as a share of its height)."""
    fig.legend(
        handles=legend_handles(classes, palette),
        loc="lower center",
        ncol=min(6, len(classes)),
        fontsize=fontsize,
        bbox_to_anchor=(0.5, -below),
    )


def annotate_cells(ax, values: np.ndarray, text, white_above: bool) -> None:
    """Write ``text(value)`` in each cell of a heatmap with values in [0, 1] (NaN and
    ``text`` None: no text), white where the colour map is dark: above 0.6 when
    ``white_above``, else below it."""
    for (i, j), value in np.ndenumerate(values):
        label = None if np.isnan(value) else text(value)
        if label is not None:
            dark = value > 0.6 if white_above else value <= 0.6
            ax.text(
                j,
                i,
                label,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )


def save_figure(fig, path) -> bytes:
    """Write ``fig`` as PNG to ``path`` (atomically) and return the bytes (for
    embedding), then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return data


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def training_curves_figure(histories: dict[str, list[dict]], title: str):
    """Loss, val mIoU and lr over the epochs, one colour per run (label -> history.csv's
    rows): train loss solid, val loss dashed. A full fit has no validation curves."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_ax, miou_ax, lr_ax = axes
    colors = plt.get_cmap("tab10").colors
    for k, (label, rows) in enumerate(histories.items()):
        color = colors[k % len(colors)]
        epochs = [row["epoch"] for row in rows]

        def values(key, rows=rows):
            return np.array([row.get(key) for row in rows], dtype=float)  # None: NaN

        loss_ax.plot(epochs, values("train_loss"), "-o", ms=3, color=color, label=label)
        if not np.isnan(values("val_loss")).all():  # a full fit has no validation
            loss_ax.plot(epochs, values("val_loss"), "--", color=color)
            miou_ax.plot(
                epochs, values("val_miou"), "-o", ms=3, color=color, label=label
            )
        lr_ax.plot(epochs, values("lr"), "-", color=color, label=label)
    loss_ax.set(title="loss (train solid, val dashed)", xlabel="epoch", ylabel="loss")
    miou_ax.set(title="validation mIoU", xlabel="epoch", ylabel="mIoU")
    lr_ax.set(title="learning rate", xlabel="epoch", ylabel="lr")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if not miou_ax.lines:
        miou_ax.text(
            0.5,
            0.5,
            "no validation (full fit)",
            ha="center",
            va="center",
            transform=miou_ax.transAxes,
            color="grey",
        )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
