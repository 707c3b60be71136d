"""The size a model sees its images at, decided once from the sizes of all images.

Sizes are (height, width) everywhere. A size setting is a side n (n x n) or
[height, width] (:func:`as_size`), so images of any aspect keep it.

smp architectures need input sides that are multiples of a number (DeepLabV3+ and PAN
16, PSPNet and DeepLabV3 8, Unet any, most others 32). Images are batched, so a model
sees one size:

- ``input_size`` set: every image is resized to that size;
- not set, one image size: images are used as they are (it must fit the arch);
- not set, several sizes: every image is resized to the most common size (the larger
  on a tie), each side rounded to the nearest multiple of the arch's: the aspect of
  most images is kept.

A model trained on random crops (``crop``) sees its images at their own size, or resized
to ``input_size`` when that is set, tile by tile through a sliding window: only the crop
must fit the arch.

Training derives the size from the images it reads (in round r0 the training split
alone, so a new test set retrains nothing) and stores it in model.pt; prediction reads
it from there and never derives it again. The workflow checks the configured models
against the COCO files' sizes before any job starts.
"""

from __future__ import annotations

from collections import Counter

Size = tuple[int, int]  # (height, width)

# Input sides must be multiples of these (smp 0.6); anything else: 32.
SIZE_MULTIPLE = {
    "unet": 1,
    "unetplusplus": 32,
    "deeplabv3plus": 16,
    "pan": 16,
    "pspnet": 8,
    "deeplabv3": 8,
}


def as_size(value) -> Size | None:
    """(height, width) of a size setting: n is n x n, [height, width] as it is."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def parse_size(text: str) -> Size:
    """A size on a command line: "96" (96 x 96) or "96x128" (height x width)."""
    height, _, width = str(text).partition("x")
    return (int(height), int(width or height))


def size_arg(size: Size) -> str:
    """``size`` as :func:`parse_size` reads it (height x width)."""
    return f"{size[0]}x{size[1]}"


def size_text(size: Size) -> str:
    """A size as a config value: n for n x n, else [height, width]."""
    height, width = size
    return str(height) if height == width else f"[{height}, {width}]"


def size_multiple(arch: str) -> int:
    return SIZE_MULTIPLE.get(arch.lower(), 32)


def round_up(side: int, multiple: int) -> int:
    return -(-side // multiple) * multiple


def nearest_fit(size: Size, multiple: int) -> Size:
    """Each side rounded to the nearest multiple of ``multiple`` (ties up, at least one
    multiple): the size closest to ``size``, and to its aspect, that the arch takes."""
    return tuple(
        max(multiple, (side + multiple // 2) // multiple * multiple) for side in size
    )


def fits(size: Size, multiple: int) -> bool:
    return all(side % multiple == 0 for side in size)


def model_input_size(
    sizes: list[Size],
    arch: str,
    input_size: int | list | None,
    crop: int | list | None = None,
) -> Size | None:
    """The (height, width) images are resized to, or None to use them as they are.

    ``sizes``: (height, width) of every image. Raises ValueError naming the sizes when
    the images' one size, or ``input_size``, or ``crop``, does not fit ``arch``.
    """
    multiple = size_multiple(arch)
    input_size, crop = as_size(input_size), as_size(crop)
    for key, size in (("crop", crop), ("input_size", input_size)):
        if size and not fits(size, multiple):
            raise ValueError(
                f"{key} {size_text(size)} does not fit {arch}, which needs sides that"
                f" are multiples of {multiple} (e.g. {size_text(nearest_fit(size, multiple))})"
            )
    if crop:
        return input_size
    if input_size:
        return input_size
    distinct = Counter(tuple(size) for size in sizes)
    if len(distinct) == 1:
        (size,) = distinct
        if not fits(size, multiple):
            raise ValueError(
                f"{arch} needs sides that are multiples of {multiple}, images are"
                f" {size[1]}x{size[0]} (width x height); set input_size, e.g."
                f" {size_text(nearest_fit(size, multiple))} (height, width: the nearest"
                " that keeps their aspect)"
            )
        return None
    most_common = max(distinct, key=lambda size: (distinct[size], size))
    return nearest_fit(most_common, multiple)
