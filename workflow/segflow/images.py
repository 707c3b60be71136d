"""Image files: the one reader of every step, and the EXIF orientation rule.

A photo's EXIF orientation says how to turn the stored pixels for display (phones store
a portrait photo as landscape pixels plus orientation 6). Readers disagree about it:
``cv2.imread`` applies it by default, PIL's ``Image.open`` does not, and pycocotools
rasterizes an annotation in whatever frame its coordinates were drawn. So segflow
decides once per image, in the index, which frame the annotations were drawn in, and
every step reads the image in that frame through :func:`read_rgb`:

- where the stored size and the displayed size differ (orientations 5-8 on a
  non-square image), the JSON's ``width`` and ``height`` tell: the frame they match;
- where they cannot tell (orientations 2-4, or a square image), ``data.exif``
  decides: ``apply`` (the frame a browser, an annotation tool in a browser and OpenCV
  show) or ``ignore`` (the stored pixels);
- a JSON size that matches neither frame is an error that names both.

The chosen orientation is stored in the index (``orientation``; 1 = the stored pixels
as they are), so images are read the same way by training, prediction and every
figure. Reading ignores the file's own tag and applies that orientation itself, which
also holds for formats whose EXIF OpenCV does not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

EXIF_SETTINGS = ("apply", "ignore")
ORIENTATION_TAG = 0x0112
# Orientations that swap height and width for display.
TRANSPOSED = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class ImageFile:
    """An image file and the EXIF orientation applied when it is read (1: none)."""

    path: str
    orientation: int = 1

    def __str__(self) -> str:
        return self.path


def image_file(row, image_root: str | Path) -> ImageFile:
    """The image of one row of the index (images.parquet)."""
    return ImageFile(str(Path(image_root) / row["file_name"]), int(row["orientation"]))


def image_files(rows, image_root: str | Path) -> list[ImageFile]:
    """The images of rows of the index (images.parquet), in row order."""
    return [
        ImageFile(str(Path(image_root) / name), int(orientation))
        for name, orientation in zip(rows["file_name"], rows["orientation"])
    ]


def stored_orientation(path: str | Path) -> tuple[tuple[int, int], int]:
    """((height, width) of the stored pixels, EXIF orientation or 1), from the header.
    Raises OSError (or PIL's DecompressionBombError) for a file PIL cannot open."""
    with Image.open(path) as picture:
        width, height = picture.size
        try:
            orientation = int(picture.getexif().get(ORIENTATION_TAG, 1))
        except (ValueError, TypeError, OSError):
            orientation = 1  # an unreadable EXIF block: the pixels as stored
    return (height, width), orientation if orientation in range(1, 9) else 1


def shown_size(stored: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(height, width) once ``orientation`` is applied."""
    return stored[::-1] if orientation in TRANSPOSED else stored


def orientation_to_apply(
    json_size: tuple[int, int],
    stored: tuple[int, int],
    orientation: int,
    exif: str,
) -> int | None:
    """The orientation to apply when reading an image whose JSON says ``json_size``
    (height, width), or None when neither frame has that size (see module doc)."""
    if exif not in EXIF_SETTINGS:
        raise ValueError(f"exif must be one of {EXIF_SETTINGS}, got {exif!r}")
    as_stored = tuple(json_size) == tuple(stored)
    as_shown = tuple(json_size) == shown_size(stored, orientation)
    if as_stored and as_shown:
        return orientation if exif == "apply" else 1
    if as_shown:
        return orientation
    if as_stored:
        return 1
    return None


def size_mismatch(
    path, json_size: tuple[int, int], stored: tuple[int, int], orientation: int
) -> str:
    """Why an image's size disagrees with its JSON entry, naming the EXIF frame too."""
    height, width = stored
    text = f"image file {path} is {width}x{height}"
    if orientation != 1:
        shown = shown_size(stored, orientation)
        text += (
            f" as stored ({shown[1]}x{shown[0]} with its EXIF orientation {orientation}"
            " applied)"
        )
    return text + f" but the JSON says {json_size[1]}x{json_size[0]} (width x height)"


def orient(picture: np.ndarray, orientation: int) -> np.ndarray:
    """``picture`` (H, W[, C]) turned as EXIF ``orientation`` says (PIL's exif_transpose)."""
    if orientation in (1, None):
        return picture
    swapped = picture.swapaxes(0, 1)
    turned = {
        2: picture[:, ::-1],
        3: picture[::-1, ::-1],
        4: picture[::-1],
        5: swapped,
        6: swapped[:, ::-1],
        7: swapped[::-1, ::-1],
        8: swapped[::-1],
    }[orientation]
    return np.ascontiguousarray(turned)


def read_rgb(image: ImageFile | str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, in the frame the index chose for the image."""
    if not isinstance(image, ImageFile):
        image = ImageFile(str(image))
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    picture = cv2.imread(str(image.path), flags)
    if picture is None:
        raise FileNotFoundError(f"image file {image.path} is missing or unreadable")
    return orient(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), image.orientation)


def read_grey(path: str | Path, orientation: int = 1) -> np.ndarray | None:
    """(H, W) uint8 grey levels in the given frame, or None if unreadable."""
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    picture = cv2.imread(str(path), flags)
    return None if picture is None else orient(picture, orientation)
