"""The side a model sees its images at, decided once from the sizes of all images.

smp architectures need input sides that are multiples of a number (DeepLabV3+ and PAN
16, PSPNet and DeepLabV3 8, Unet any, most others 32). Images are batched, so a model
sees one size:

- ``input_size`` set: every image is resized to that square side;
- not set, one image size: images are used as they are (it must fit the arch);
- not set, several sizes: every image is resized to a square side derived from the
  data, the most common longer side (the larger on a tie) rounded up to the arch's
  multiple.

A model trained on random crops (``crop``) sees its images at their own size, or resized
to ``input_size`` when that is set, tile by tile through a sliding window: only the crop
must fit the arch.

Training and prediction derive the side from the whole index (labelled and test
images), so both see the same size; the workflow checks the configured models against
the COCO files' sizes before any job starts.
"""

from __future__ import annotations

from collections import Counter

# Input sides must be multiples of these (smp 0.6); anything else: 32.
SIZE_MULTIPLE = {
    "unet": 1,
    "unetplusplus": 32,
    "deeplabv3plus": 16,
    "pan": 16,
    "pspnet": 8,
    "deeplabv3": 8,
}


def size_multiple(arch: str) -> int:
    return SIZE_MULTIPLE.get(arch.lower(), 32)


def round_up(side: int, multiple: int) -> int:
    return -(-side // multiple) * multiple


def model_side(
    sizes: list[tuple[int, int]],
    arch: str,
    input_size: int | None,
    crop: int | None = None,
) -> int | None:
    """The square side images are resized to, or None to use them as they are.

    ``sizes``: (height, width) of every image. Raises ValueError naming the sizes when
    the images' one size, or ``input_size``, or ``crop``, does not fit ``arch``.
    """
    multiple = size_multiple(arch)
    if crop:
        if crop % multiple:
            raise ValueError(
                f"crop {crop} does not fit {arch}, which needs multiples of"
                f" {multiple} (e.g. {round_up(crop, multiple)})"
            )
        return input_size or None
    if input_size:
        if input_size % multiple:
            raise ValueError(
                f"input_size {input_size} does not fit {arch}, which needs multiples of"
                f" {multiple} (e.g. {round_up(input_size, multiple)})"
            )
        return input_size
    distinct = set(sizes)
    if len(distinct) == 1:
        height, width = next(iter(distinct))
        if height % multiple or width % multiple:
            raise ValueError(
                f"{arch} needs sides that are multiples of {multiple}, images are"
                f" {width}x{height}; set input_size"
                f" (e.g. {round_up(max(height, width), multiple)})"
            )
        return None
    longer = Counter(max(size) for size in sizes)
    most_common = max(longer, key=lambda side: (longer[side], side))
    return round_up(most_common, multiple)
