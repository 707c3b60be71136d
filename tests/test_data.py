"""Augmentations from YAML (strict, explicit p) and DataLoader seeding (TRAPS: albumentations)."""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from segflow.data import SegmentationDataset, build_transform, make_loader
from segflow.models import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize(
    "spec,words",
    [
        (
            [{"CoarseDropout": {"max_holes": 8}}],
            ["augment[0]", "max_holes"],
        ),  # 1.x name
        (
            [{"RandomResizedCrop": {"height": 64, "width": 64}}],
            ["augment[0]", "RandomResizedCrop", "size"],
        ),  # 2.x wants size
        ([{"GaussNoise": {"var_limit": [10, 50]}}], ["augment[0]", "var_limit"]),
        ([{"HorizontalFlip": {"always_apply": True}}], ["augment[0]", "always_apply"]),
        (
            [{"HorizontalFlip": {}}, {"NoSuchTransform": {}}],
            ["augment[1]", "'NoSuchTransform' is not an albumentations transform"],
        ),
        (
            [
                {
                    "OneOf": {
                        "transforms": [
                            {"Blur": {"blur_limit": 3}},
                            {"GaussNoise": {"var_limit": 1}},
                        ]
                    }
                }
            ],
            ["augment[0].OneOf[1]", "var_limit"],
        ),
        (["HorizontalFlip"], ["augment[0]", "expected one mapping"]),
    ],
)
def test_bad_augment_is_an_error_not_a_warning(spec, words):
    with pytest.raises(ValueError) as error:
        build_transform(spec)
    for word in words:
        assert word in str(error.value)


def test_valid_augment_builds_and_normalize_always_runs():
    transform = build_transform(
        [
            {"HorizontalFlip": {"p": 0.5}},
            {
                "OneOf": {
                    "p": 0.3,
                    "transforms": [{"Blur": {"blur_limit": 3}}, {"GaussNoise": {}}],
                }
            },
        ]
    )
    assert [type(t).__name__ for t in transform.transforms][-2:] == [
        "Normalize",
        "ToTensorV2",
    ]
    assert all(
        t.p == 1.0 for t in transform.transforms[-2:]
    )  # never the from_dict p=0.5
    image = np.full((8, 8, 3), 200, np.uint8)
    flip_only = build_transform([{"HorizontalFlip": {"p": 0.5}}])
    for _ in range(10):
        out = flip_only(image=image)["image"]
        expected = (200 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-5)


def test_mask_stays_a_label_map_and_becomes_long(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :10] = 7
    mask[0, 0] = 255
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    dataset = SegmentationDataset(
        [str(tmp_path / "i.png")],
        [str(tmp_path / "m.png")],
        build_transform([{"Rotate": {"limit": 30, "p": 1.0}}]),
    )
    _, out = dataset[0]
    assert out.dtype == torch.int64
    assert set(out.unique().tolist()) <= {0, 7, 255}


class FlipProbe(torch.utils.data.Dataset):
    """Reports, per sample, whether the pipeline flipped an asymmetric image."""

    def __init__(self, n):
        self.n = n
        self.transform = build_transform([{"HorizontalFlip": {"p": 0.5}}], seed=0)
        self.image = np.zeros((4, 4, 3), np.uint8)
        self.image[:, 0] = 255

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        flipped = self.transform(image=self.image)["image"][0, 0, -1] > 0
        return torch.tensor([int(flipped), torch.utils.data.get_worker_info().id])


def flips(loader):
    batches = torch.cat(list(loader))
    return {w: batches[batches[:, 1] == w, 0].tolist() for w in (0, 1)}


def test_workers_and_epochs_get_their_own_augmentations():
    loader = make_loader(FlipProbe(64), batch_size=4, shuffle=False, seed=0, workers=2)
    epoch1, epoch2 = flips(loader), flips(loader)
    assert epoch1[0] != epoch1[1]  # without reseeding both workers draw the same flips
    assert epoch1[0] != epoch2[0]  # ... and again the same every epoch
    again = make_loader(FlipProbe(64), batch_size=4, shuffle=False, seed=0, workers=2)
    assert flips(again) == epoch1  # the seed fixes it all


def test_same_seed_same_augmentation_in_process():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    spec = [{"RandomBrightnessContrast": {"p": 1.0}}, {"HorizontalFlip": {"p": 0.5}}]
    a, b = build_transform(spec, seed=3), build_transform(spec, seed=3)
    for _ in range(3):
        assert torch.equal(a(image=image)["image"], b(image=image)["image"])
    assert isinstance(a, A.Compose)
