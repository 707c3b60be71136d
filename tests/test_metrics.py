"""The competition mIoU against an independent reference (sklearn's confusion matrix)."""

import numpy as np
import pytest
import torch

from segflow.metrics import (
    IGNORE_INDEX,
    confusion_matrix,
    image_iou,
    iou_per_class,
    mean_iou,
)
from stage_files import reference_miou


@pytest.mark.parametrize("seed", range(5))
def test_random_masks_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 6, (4, 32, 32))
    prediction = np.where(
        rng.random(target.shape) < 0.7, target, rng.integers(0, 6, target.shape)
    )
    assert mean_iou(confusion_matrix(target, prediction, 6)) == pytest.approx(
        reference_miou(target, prediction, 6)
    )


def test_class_never_present_is_left_out_not_scored_one():
    target = np.array([[0, 0, 1, 1]])
    prediction = np.array([[0, 0, 1, 0]])
    iou = iou_per_class(confusion_matrix(target, prediction, 4))
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert (
        mean_iou(confusion_matrix(target, prediction, 4))
        == pytest.approx((2 / 3 + 1 / 2) / 2)
        == pytest.approx(reference_miou(target, prediction, 4))
    )


def test_class_predicted_but_absent_scores_zero():
    target = np.zeros((1, 4), int)
    prediction = np.array([[0, 0, 0, 3]])
    iou = iou_per_class(confusion_matrix(target, prediction, 4))
    assert iou[3] == 0 and iou[0] == pytest.approx(0.75)
    assert mean_iou(confusion_matrix(target, prediction, 4)) == pytest.approx(0.375)


def test_all_background_perfect_prediction_is_one():
    target = np.zeros((8, 8), int)
    assert mean_iou(confusion_matrix(target, target, 11)) == 1.0


def test_ignored_pixels_do_not_count():
    target = np.array([[1, 1, IGNORE_INDEX, IGNORE_INDEX]])
    prediction = np.array([[1, 1, 0, 2]])
    confusion = confusion_matrix(target, prediction, 3)
    assert confusion.sum() == 2 and mean_iou(confusion) == 1.0
    assert mean_iou(confusion) == reference_miou(target, prediction, 3)


def test_one_matrix_over_the_set_is_not_the_mean_of_per_image_scores():
    # Two images: per-image mIoU averaged differs from the set's mIoU (the competition's).
    a_t, a_p = np.array([[1, 1, 1, 0]]), np.array([[1, 1, 1, 0]])
    b_t, b_p = np.array([[2, 0, 0, 0]]), np.array([[0, 0, 0, 0]])
    set_miou = mean_iou(confusion_matrix(a_t, a_p, 3) + confusion_matrix(b_t, b_p, 3))
    per_image = np.mean([image_iou(a_t, a_p, 3), image_iou(b_t, b_p, 3)])
    target, prediction = np.concatenate([a_t, b_t]), np.concatenate([a_p, b_p])
    assert set_miou == pytest.approx(reference_miou(target, prediction, 3))
    assert abs(set_miou - per_image) > 0.05


def test_torch_tensors_give_the_same_matrix():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (2, 16, 16))
    target[0, :3] = IGNORE_INDEX
    prediction = rng.integers(0, 5, (2, 16, 16))
    expected = confusion_matrix(target, prediction, 5)
    got = confusion_matrix(torch.from_numpy(target), torch.from_numpy(prediction), 5)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("n_classes", [11, 59, 255])
def test_uint8_labels_as_read_from_disk_with_many_classes(n_classes):
    """Labels are uint8 on disk: label x n_classes must not wrap around in uint8
    (it did from 5 x 59 on, silently, until a 59-class real dataset showed it)."""
    from sklearn.metrics import confusion_matrix as sklearn_confusion

    rng = np.random.default_rng(n_classes)
    target = rng.integers(0, n_classes, (3, 20, 30)).astype(np.uint8)
    target[0, :4] = IGNORE_INDEX
    prediction = rng.integers(0, n_classes, target.shape).astype(np.uint8)
    keep = target != IGNORE_INDEX
    expected = sklearn_confusion(
        target[keep], prediction[keep], labels=np.arange(n_classes)
    )
    np.testing.assert_array_equal(
        confusion_matrix(target, prediction, n_classes), expected
    )
    got = confusion_matrix(
        torch.from_numpy(target), torch.from_numpy(prediction), n_classes
    )
    np.testing.assert_array_equal(got.numpy(), expected)
