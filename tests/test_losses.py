"""Loss terms: the weighted sum, label smoothing, softmax focal, and ignore index 255 everywhere."""

import pytest
import torch
import torch.nn.functional as F

from segflow.losses import LOSS_NAMES, SoftmaxFocalLoss, create_loss
from segflow.metrics import IGNORE_INDEX


def batch(seed=0, classes=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 8, 8, generator=g)
    target = torch.randint(0, classes, (2, 8, 8), generator=g)
    target[0, :3] = IGNORE_INDEX
    return logits, target


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n != "aux"])
def test_every_term_ignores_label_255(name):
    logits, target = batch()
    loss = create_loss({name: 1.0})
    base = loss(logits, target)
    changed = logits.clone()
    changed[0, :, :3] = (
        torch.randn_like(changed[0, :, :3]) * 10
    )  # only ignored pixels change
    assert torch.allclose(loss(changed, target), base, atol=1e-6)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    assert torch.all(logits.grad[0, :, :3] == 0)
    assert logits.grad[0, :, 3:].abs().sum() > 0


def test_weighted_sum_and_parts():
    logits, target = batch()
    loss = create_loss({"ce": 2.0, "dice": 0.5})
    value = loss(logits, target)
    assert value == pytest.approx(
        2.0 * loss.parts["ce"] + 0.5 * loss.parts["dice"], rel=1e-5
    )


def test_ce_with_label_smoothing_is_torch_cross_entropy():
    logits, target = batch()
    expected = F.cross_entropy(
        logits, target, ignore_index=IGNORE_INDEX, label_smoothing=0.1
    )
    assert create_loss({"ce": 1.0}, label_smoothing=0.1)(
        logits, target
    ) == pytest.approx(float(expected), rel=1e-6)


def test_softmax_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_pixels():
    logits, target = batch()
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert SoftmaxFocalLoss(gamma=0.0)(logits, target) == pytest.approx(
        float(ce), rel=1e-5
    )
    assert SoftmaxFocalLoss(gamma=2.0)(logits, target) < ce


def test_unknown_or_empty_terms_are_errors():
    with pytest.raises(ValueError, match=r"unknown terms \['tversky'\]"):
        create_loss({"tversky": 1.0})
    with pytest.raises(ValueError, match="every weight is zero"):
        create_loss({"ce": 0.0})


def test_class_weighted_ce_is_torch_weighted_cross_entropy():
    logits, target = batch()
    weights = [0.5, 1.0, 2.0, 1.0, 3.0]
    value = create_loss({"ce": 1.0}, class_weights=weights)(logits, target)
    expected = F.cross_entropy(
        logits, target, weight=torch.tensor(weights), ignore_index=IGNORE_INDEX
    )
    assert value == pytest.approx(float(expected), rel=1e-6)
    assert value != pytest.approx(float(create_loss({"ce": 1.0})(logits, target)))


def test_aux_term_is_bce_on_the_classes_present():
    logits, target = batch()
    target[1] = 2
    target[1, :4] = IGNORE_INDEX  # ignored pixels are no class
    target[0][target[0] == 4] = 1  # class 4 absent from image 0
    class_logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    present = torch.tensor([[1.0, 1, 1, 1, 0], [0, 0, 1, 0, 0]])
    loss = create_loss({"ce": 1.0, "aux": 0.4})
    value = loss((logits, class_logits), target)
    expected = F.cross_entropy(
        logits, target, ignore_index=IGNORE_INDEX
    ) + 0.4 * F.binary_cross_entropy_with_logits(class_logits, present)
    assert value == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="no auxiliary head"):
        loss(logits, target)
    # Validation (eval mode, masks only): the pixels' loss.
    assert loss.eval()(logits, target) == pytest.approx(
        float(F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)), rel=1e-6
    )
