"""The data loaders of one training job, which epoch uses which, and their random state.

A fold job of a round trains on its labelled images plus the round's pseudo-labelled
ones, and its last ``labelled_epochs`` epochs on the labelled images only (the
pseudo-label scheme "train on labelled + pseudo, then fine-tune on labelled"). It
validates on its fold's labels and, in a round that cleans labels, once more on their
cleaned version. The loaders' shuffling and augmentation generators are part of what a
resumed job restores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader

from segflow.class_balance import repeat_factors
from segflow.data import (
    SegmentationDataset,
    eval_transform,
    make_loader,
    set_transform_random_state,
    train_transform,
    transform_random_state,
)
from segflow.fold_data import FoldData
from segflow.input_size import Size, as_size
from segflow.settings import ModelSettings


@dataclass
class FoldLoaders:
    train: DataLoader  # labelled + pseudo-labelled images
    labelled: DataLoader  # the labelled images only
    val: DataLoader | None  # None: the full fit validates on nothing
    cleaned_val: DataLoader | None  # the validation images with their cleaned labels
    epochs: int
    labelled_epochs: int  # the last epochs train on ``labelled``

    def for_epoch(self, epoch: int) -> DataLoader:
        """Epochs count from 1."""
        if epoch > self.epochs - self.labelled_epochs:
            return self.labelled
        return self.train

    def optimizer_steps(self, accumulate: int) -> int:
        """Optimizer steps over the whole run (at least one per epoch)."""
        return sum(
            max(1, len(self.for_epoch(epoch)) // accumulate)
            for epoch in range(1, self.epochs + 1)
        )

    def _all(self) -> list[DataLoader]:
        loaders = (self.train, self.labelled, self.val, self.cleaned_val)
        return [loader for loader in loaders if loader is not None]

    def state_dict(self) -> list:
        """Each loader's shuffling generator and its dataset's augmentation generators."""
        return [
            [
                loader.generator.get_state(),
                transform_random_state(loader.dataset.transform),
            ]
            for loader in self._all()
        ]

    def load_state_dict(self, states: list) -> None:
        for loader, (generator, transform) in zip(self._all(), states, strict=True):
            loader.generator.set_state(generator)
            set_transform_random_state(loader.dataset.transform, transform)


def fold_loaders(
    data: FoldData,
    settings: ModelSettings,
    n_classes: int,
    side: Size | None,
    seed: int,
    workers: int,
    device: str,
    labelled_epochs: int = 0,
) -> FoldLoaders:
    """The loaders of a fold job. With ``settings.crop`` it trains on random crops and
    validates whole images one at a time (they may differ in size; the sliding window
    batches their tiles). With ``settings.oversample`` images of rare classes are drawn
    more often instead of shuffling (segflow.class_balance; pseudo-labelled images at
    weight 1: the index has no classes for them). ``labelled_epochs`` only counts when
    the round has pseudo-labelled images."""
    crop = as_size(settings.crop)
    pin = device == "cuda"
    sample_weights = None
    if settings.oversample:
        factors = repeat_factors(data.train, n_classes, settings.oversample)
        sample_weights = np.concatenate([factors, np.ones(len(data.pseudo))])

    def training(count: int) -> DataLoader:
        dataset = SegmentationDataset(
            data.train_images[:count],
            data.train_masks[:count],
            train_transform(settings.augment, side, seed, crop),
        )
        # drop_last: BatchNorm (DeepLabV3/V3+) fails on a last batch of one image.
        return make_loader(
            dataset,
            settings.batch_size,
            shuffle=True,
            seed=seed,
            workers=workers,
            drop_last=len(dataset) > settings.batch_size,
            pin_memory=pin,
            sample_weights=None if sample_weights is None else sample_weights[:count],
        )

    def validation(masks: list[str] | None) -> DataLoader | None:
        if not masks:
            return None
        dataset = SegmentationDataset(data.val_images, masks, eval_transform(side))
        return make_loader(
            dataset,
            1 if crop else settings.batch_size,
            shuffle=False,
            seed=seed,
            workers=workers,
            pin_memory=pin,
        )

    return FoldLoaders(
        train=training(len(data.train_images)),
        # The labelled images come first in train_images, the pseudo-labelled after.
        labelled=training(len(data.train)),
        val=validation(data.val_masks),
        cleaned_val=validation(data.val_cleaned_masks),
        epochs=settings.epochs,
        labelled_epochs=min(labelled_epochs, settings.epochs)
        if len(data.pseudo)
        else 0,
    )
