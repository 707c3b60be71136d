"""Pretrained weights for offline machines: fetched into a cache with checksums, loaded
from it for named sets, declared as the training rule's input (segflow.weights)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import snakemake, validated_config, write_config
from segflow import weights
from segflow.models import create_model
from segflow.weights_cache import cache_file, resolve


def fake_download(encoder: str, name: str) -> dict:
    """What the hub would give: here, a seeded random encoder of that name."""
    torch.manual_seed(len(name))
    return create_model("Unet", encoder, 2).encoder.state_dict()


def two_model_config():
    return validated_config(
        models={
            "a": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": "imagenet"},
            "b": {"arch": "FPN", "encoder": "resnet18", "encoder_weights": "imagenet"},
            "c": {"arch": "Unet", "encoder": "mobilenet_v2", "encoder_weights": None},
        }
    )


def test_fetch_writes_each_named_set_once_with_its_checksum(tmp_path):
    config = two_model_config()
    assert weights.named_sets(config) == [("resnet18", "imagenet")]
    checksums = weights.fetch(config, tmp_path / "cache", download=fake_download)
    path = cache_file(tmp_path / "cache", "resnet18", "imagenet")
    assert checksums == {path.name: weights.sha256(path)}
    assert json.loads((tmp_path / "cache" / "checksums.json").read_text()) == checksums
    assert weights.check(tmp_path / "cache") == []
    # The cached file is what the model loads for the named set, offline.
    resolved = resolve("resnet18", "imagenet", tmp_path / "cache")
    assert resolved == str(path)
    model = create_model("Unet", "resnet18", 3, resolved)
    expected = fake_download("resnet18", "imagenet")
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_the_check_names_a_changed_a_missing_and_an_unlisted_file(tmp_path):
    cache = tmp_path / "cache"
    weights.fetch(two_model_config(), cache, download=fake_download)
    path = cache_file(cache, "resnet18", "imagenet")
    path.write_bytes(path.read_bytes()[:-10])  # truncated by a copy
    (cache / "other--imagenet.pth").write_bytes(b"x")
    problems = weights.check(cache)
    assert any(p.startswith(f"{path}: SHA-256 differs") for p in problems)
    assert any("other--imagenet.pth: not in checksums.json" in p for p in problems)
    path.unlink()
    assert any(
        p.endswith("listed in checksums.json but missing") for p in weights.check(cache)
    )


@pytest.mark.parametrize(
    "value, cached, expected",
    [
        (None, True, None),
        ("imagenet", False, "imagenet"),  # the hub's cache, as before
        ("imagenet", True, "CACHE"),
        ("/data/r18.pth", True, "/data/r18.pth"),  # a file of the user's stays
    ],
)
def test_a_named_set_resolves_to_its_cache_file_only_where_it_is(
    tmp_path, value, cached, expected
):
    if cached:
        path = cache_file(tmp_path, "resnet18", "imagenet")
        path.write_bytes(b"")
    got = resolve("resnet18", value, tmp_path)
    assert got == (
        str(cache_file(tmp_path, "resnet18", "imagenet"))
        if expected == "CACHE"
        else expected
    )


@pytest.mark.workflow
def test_the_cached_weights_are_an_input_of_every_training_job_of_their_model(tmp_path):
    """Named set cached: each of the model's training jobs lists the file as an input
    (so new weights retrain it) and passes it to the job; without the file, the jobs
    ask the hub's cache by name, as before."""
    write_config(
        tmp_path,
        models={
            "m": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": "imagenet"}
        },
    )
    before = snakemake(tmp_path, "-n", "-p", "results/r0/train/m/f0-s0/model.pt").stdout
    assert "resnet18--imagenet.pth" not in before and "imagenet" in before
    config = validated_config(models={"m": {"encoder": "resnet18"}})
    config["defaults"]["encoder_weights"] = "imagenet"
    weights.fetch(config, tmp_path / "weights", download=fake_download)
    after = snakemake(tmp_path, "-n", "-p", "results/r0/train/m/f0-s0/model.pt").stdout
    job = after[after.index("rule train:") :]
    inputs = job[job.index("input:") : job.index("output:")]
    assert "weights/resnet18--imagenet.pth" in inputs
    assert (
        "weights/resnet18--imagenet.pth" in job[job.index("python -m segflow.train") :]
    )
