"""Images and masks for training and prediction: dataset, augmentations, loaders.

Augmentations are declared in YAML as a list of single-key mappings, each an
albumentations transform and its arguments; OneOf/SomeOf/Sequential take a nested
``transforms`` list::

    augment:
      - HorizontalFlip: {p: 0.5}
      - RandomResizedCrop: {size: [128, 128], scale: [0.5, 1.0], p: 0.5}
      - OneOf: {p: 0.3, transforms: [{GaussNoise: {}}, {MotionBlur: {}}]}

They are built explicitly (not A.from_dict, which silently gives p=0.5 to entries
without p) inside ``A.Compose(strict=True)``, so a misspelt or 1.x-style argument
(``max_holes``, ``height``/``width``, ``var_limit``, ``always_apply``) is an error, not a
warning followed by a transform running on its defaults. Normalize and ToTensorV2 are
appended by segflow, always with p=1.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from segflow.images import ImageFile, read_rgb
from segflow.input_size import Size
from segflow.labels import IGNORE_INDEX
from segflow.models import IMAGENET_MEAN, IMAGENET_STD

COMPOSITES = {
    "OneOf",
    "SomeOf",
    "Sequential",
    "OneOrOther",
    "SelectiveChannelTransform",
}


def build_transform(
    augment: list[dict] | None = None, seed: int | None = None
) -> A.Compose:
    """The albumentations pipeline: ``augment`` (see module doc), then Normalize, ToTensorV2."""
    steps = [_build_step(spec, f"augment[{i}]") for i, spec in enumerate(augment or [])]
    steps += [
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0, p=1.0),
        ToTensorV2(p=1.0),
    ]
    try:
        return A.Compose(steps, strict=True, seed=seed)
    except ValueError as e:
        raise ValueError(f"augment: {e}") from None


def resize_steps(size: Size | None) -> list[dict]:
    """The augment-style step that resizes to ``size`` (height, width), if there is one."""
    if not size:
        return []
    height, width = size
    return [{"Resize": {"height": height, "width": width}}]


def crop_steps(crop: Size | None) -> list[dict]:
    """A random ``crop`` (height, width), padded first where the image is smaller (the
    padding's labels ignored), if there is a crop."""
    if not crop:
        return []
    height, width = crop
    pad = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": IGNORE_INDEX}
    return [
        {"RandomCrop": {"height": height, "width": width, "pad_if_needed": True, **pad}}
    ]


def train_transform(
    augment: list[dict], side: Size | None, seed: int, crop: Size | None = None
) -> A.Compose:
    """The model's augmentations, its resize (segflow.input_size), its random crop."""
    steps = list(augment) + resize_steps(side) + crop_steps(crop)
    return build_transform(steps, seed=seed)


def image_sizes(images) -> list[tuple[int, int]]:
    """(height, width) of every row of the index (images.parquet)."""
    return list(zip(images["height"].tolist(), images["width"].tolist()))


def eval_transform(side: Size | None) -> A.Compose:
    """What validation and prediction see: the resize only."""
    return build_transform(resize_steps(side))


def _build_step(spec: dict, where: str):
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(
            f"{where}: expected one mapping {{TransformName: {{arguments}}}}, got {spec!r}"
        )
    ((name, arguments),) = spec.items()
    arguments = dict(arguments or {})
    transform_class = getattr(A, name, None)
    if not (
        isinstance(transform_class, type)
        and issubclass(transform_class, A.BasicTransform | A.BaseCompose)
    ):
        raise ValueError(f"{where}: {name!r} is not an albumentations transform")
    if name in COMPOSITES:
        children = arguments.pop("transforms", [])
        arguments["transforms"] = [
            _build_step(child, f"{where}.{name}[{j}]")
            for j, child in enumerate(children)
        ]
    try:
        # strict=True: an unknown argument raises instead of a warning (albumentations 2).
        return transform_class(
            **arguments, **({} if name in COMPOSITES else {"strict": True})
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {name}: {e}") from None


class SegmentationDataset(Dataset):
    """(image tensor CHW float, mask tensor HW long) pairs; mask-less for test images.

    Masks stay uint8 through the transforms (geometric transforms turn int64 into int32)
    and become long at the end (ToTensorV2 keeps the dtype).
    """

    def __init__(
        self,
        images: list[ImageFile],
        mask_paths: list[str] | None,
        transform: A.Compose,
    ):
        self.images = list(images)
        self.mask_paths = list(mask_paths) if mask_paths is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = read_rgb(self.images[index])
        if self.mask_paths is None:
            return self.transform(image=image)["image"], index
        mask = cv2.imread(str(self.mask_paths[index]), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise FileNotFoundError(
                f"mask file {self.mask_paths[index]} is missing or unreadable"
            )
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].long()


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: give each worker, each epoch, its own random streams.

    Every worker starts as a copy of the parent's RNG state, again each epoch, so without
    this every worker applies the same "random" augmentations. torch.initial_seed() is
    already distinct per worker and per epoch (the loader's base seed + worker id).
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    cv2.setNumThreads(0)  # the workers are the parallelism; cv2's threads only contend
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "transform"):
        info.dataset.transform.set_random_seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int,
    drop_last: bool = False,
    pin_memory: bool = False,
    sample_weights=None,
) -> DataLoader:
    """A DataLoader whose order and augmentations are fixed by ``seed``.
    ``sample_weights``: draw len(dataset) images per epoch with replacement, each with
    its weight's probability (oversampling; segflow.class_balance), instead of shuffling."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if sample_weights is not None:
        sampler = WeightedRandomSampler(
            torch.as_tensor(sample_weights, dtype=torch.float64),
            num_samples=len(dataset),
            replacement=True,
            generator=generator,
        )
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def _random_transforms(transform) -> list:
    """Every transform of a pipeline that holds random generators, in a fixed order."""
    found = [transform] if hasattr(transform, "random_generator") else []
    for child in getattr(transform, "transforms", []):
        found += _random_transforms(child)
    return found


def transform_random_state(transform: A.Compose) -> list:
    """The random generators' states of every transform in ``transform`` (plain types):
    in the main process (no workers) they run on across epochs, so a resumed run must
    restore them to draw the augmentations an uninterrupted run would."""
    return [
        [t.random_generator.bit_generator.state, t.py_random.getstate()]
        for t in _random_transforms(transform)
    ]


def set_transform_random_state(transform: A.Compose, state: list) -> None:
    for t, (numpy_state, python_state) in zip(
        _random_transforms(transform), state, strict=True
    ):
        t.random_generator.bit_generator.state = numpy_state
        t.py_random.setstate(python_state)
