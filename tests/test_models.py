"""Model factory: offline-safe pretrained weights, local weights files, size rules."""

import time

import pytest
import torch

from segflow.input_size import size_multiple
from segflow.models import ModelError, create_model


def test_random_init_needs_no_network():
    model = create_model("FPN", "mobilenet_v2", 11)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 11, 64, 64)


def test_named_pretrained_weights_offline_fail_fast_and_clearly():
    started = time.perf_counter()
    with pytest.raises(ModelError) as error:
        create_model("Unet", "resnet18", 3, "imagenet")
    assert time.perf_counter() - started < 10  # not ~23 s of retries
    message = str(error.value)
    assert (
        "imagenet" in message
        and "HF_HUB_OFFLINE" in message
        and "local weights file" in message
    )


def test_local_encoder_weights_file_loads(tmp_path):
    source = create_model("Unet", "resnet18", 3)
    torch.save(source.encoder.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("Unet", "resnet18", 3, str(tmp_path / "resnet18.pth"))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)


def test_full_model_checkpoint_gives_its_encoder(tmp_path):
    source = create_model("Unet", "resnet18", 3)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "whole.pt")
    model = create_model("FPN", "resnet18", 5, str(tmp_path / "whole.pt"))
    key = next(iter(source.encoder.state_dict()))
    assert torch.equal(
        model.encoder.state_dict()[key], source.encoder.state_dict()[key]
    )


def test_weights_for_another_encoder_are_an_error(tmp_path):
    torch.save(
        create_model("Unet", "mobilenet_v2", 3).encoder.state_dict(),
        tmp_path / "mnv2.pth",
    )
    with pytest.raises(ModelError, match="does not fit the encoder"):
        create_model("Unet", "resnet18", 3, str(tmp_path / "mnv2.pth"))
    with pytest.raises(ModelError, match="does not exist"):
        create_model("Unet", "resnet18", 3, str(tmp_path / "missing.pth"))


def test_unknown_arch_is_an_error():
    with pytest.raises(ModelError, match="NoSuchNet"):
        create_model("NoSuchNet", "resnet18", 3)


def test_size_multiples():
    assert (
        size_multiple("Unet") == 1
        and size_multiple("DeepLabV3Plus") == 16
        and size_multiple("FPN") == 32
    )


def test_the_configs_arch_list_is_the_one_smp_builds():
    """The schema names the architectures so that a typo stops at start; the list must
    follow smp's (a newer smp with a new arch fails here, not in a user's run)."""
    import segmentation_models_pytorch as smp
    import yaml

    from segflow.settings import SCHEMA

    schema = yaml.safe_load(SCHEMA.read_text())
    listed = schema["$defs"]["model"]["properties"]["arch"]["enum"]
    built = [c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values()]
    assert sorted(listed) == sorted(built)
    for arch in listed:
        assert smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()].__name__ == arch


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_a_timm_weights_file_loads_into_its_tu_encoder(tmp_path, name):
    """A timm model's own state_dict (what timm's hub files hold: no ``model.`` prefix,
    the classifier and, for EfficientNet, the layers after the last feature stage)
    loads into smp's ``tu-`` encoder; every encoder weight comes from the file."""
    import timm

    torch.manual_seed(0)
    source = timm.create_model(name, pretrained=False)
    torch.save(source.state_dict(), tmp_path / f"{name}.pth")
    model = create_model("Unet", f"tu-{name}", 3, str(tmp_path / f"{name}.pth"))
    loaded = model.encoder.state_dict()
    expected = source.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, expected[key.removeprefix("model.")]), key
    with pytest.raises(ModelError, match="does not fit the encoder"):
        other = "resnet18" if name != "resnet18" else "efficientnet_b0"
        create_model("Unet", f"tu-{other}", 3, str(tmp_path / f"{name}.pth"))
