"""The class palette: every class stays visible in the overlays, on dark and light photos."""

import cv2
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from conftest import CLASSES
from segflow.eda import _fig_splits
from segflow.viz import class_palette, overlay


def lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32)[None] / 255, cv2.COLOR_RGB2Lab)[0]


@pytest.mark.parametrize(
    "n_classes, seen, apart", [(len(CLASSES), 15.0, 25.0), (20, 10.0, 15.0)]
)
def test_each_class_shows_over_black_grey_and_white_and_apart_from_the_others(
    n_classes, seen, apart
):
    """Overlaid (segflow.viz.overlay) on a black, a mid-grey and a white image, each
    class's colour moves the pixel by at least ``seen`` CIELAB units (the old palette's
    grey Plastic bag moved a grey pixel by 0.4); any two classes differ by ``apart``."""
    palette = class_palette(n_classes)
    assert palette.shape == (n_classes, 3) and (palette[0] == 0).all()
    mask = np.arange(1, n_classes, dtype=np.uint8)[None]  # one pixel per class
    for grey in (0, 128, 255):
        image = np.full((1, n_classes - 1, 3), grey, np.uint8)
        shown = overlay(image, mask, palette)
        moved = np.linalg.norm(lab(shown[0]) - lab(image[0]), axis=-1)
        assert moved.min() >= seen, (grey, moved.round(1))
    colors = lab(palette[1:])
    distance = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    assert distance.min() >= apart, distance.min()


def test_the_splits_figure_gives_each_split_one_colour_in_both_panels():
    """Its two panels once drew train and test in each other's colours."""
    images = pd.DataFrame(
        {"group": ["a", "a", "b", "b", "b"], "split": ["test", "train"] * 2 + ["train"]}
    )
    fig = _fig_splits(images, pd.DataFrame({"image_id": [1, 2, 3]}))
    stacked, totals = fig.axes
    legend = {
        text.get_text(): to_hex(handle.get_facecolor())
        for text, handle in zip(
            stacked.get_legend().get_texts(), stacked.get_legend().legend_handles
        )
    }
    bars = {
        tick.get_text(): to_hex(bar.get_facecolor())
        for tick, bar in zip(totals.get_xticklabels(), totals.patches)
    }
    assert legend["train"] == bars["train images"] != legend["test"]
    assert legend["test"] == bars["test images"]
