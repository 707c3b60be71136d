"""Pretrained encoder weights for machines without network: a local cache with checksums.

``encoder_weights`` is null, a local file, or a named set (``imagenet``...). Where there is
network, ``python -m segflow.weights fetch`` builds each configured encoder with its named
set (smp and timm download it into the Hugging Face cache), writes the encoder's
state_dict to ``<weights_cache>/<encoder>--<set>.pth`` and records its SHA-256 in
``checksums.json`` there. Copy that folder to an offline node beside the config.

The workflow resolves a named set to its cache file when the file is there
(``segflow.weights_cache.resolve``, in the model settings): the training job then loads
the file like any local one, never the hub, and the file is an input of the training
rule, so new weights retrain. ``python -m segflow.weights check`` verifies the cache
against its checksums.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from segflow.weights_cache import CHECKSUMS, cache_file, is_local


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrained_encoder_state(encoder: str, name: str) -> dict:
    """The encoder's state_dict with the named weights, downloaded if needed."""
    import segmentation_models_pytorch as smp

    model = smp.create_model("Unet", encoder_name=encoder, encoder_weights=name)
    return model.encoder.state_dict()


def named_sets(config: dict) -> list[tuple[str, str]]:
    """(encoder, named set) of every model, without repeats, in model order."""
    from segflow.settings import model_entry

    found = []
    for model in config["models"]:
        entry = model_entry(config, model)
        pair = (entry["encoder"], entry["encoder_weights"])
        if pair[1] is not None and not is_local(pair[1]) and pair not in found:
            found.append(pair)
    return found


def fetch(config: dict, cache: str | Path, download=pretrained_encoder_state) -> dict:
    """Write every named set of the config to the cache; returns {file: sha256} of the
    cache as recorded in its checksums.json."""
    import torch

    from segflow.io import atomic_path

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    checksums = read_checksums(cache)
    os.environ["HF_HUB_OFFLINE"] = "0"  # segflow turns downloads off everywhere else
    for encoder, name in named_sets(config):
        path = cache_file(cache, encoder, name)
        print(f"{encoder} {name} -> {path}", flush=True)
        state = {
            k: v.detach().cpu().contiguous() for k, v in download(encoder, name).items()
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        checksums[path.name] = sha256(path)
    with atomic_path(cache / CHECKSUMS) as tmp:
        tmp.write_text(json.dumps(checksums, indent=2, sort_keys=True) + "\n")
    return checksums


def read_checksums(cache: Path) -> dict:
    path = Path(cache) / CHECKSUMS
    return json.loads(path.read_text()) if path.is_file() else {}


def check(cache: str | Path) -> list[str]:
    """Problems of the cache: a listed file missing or not matching its checksum, a
    weights file not listed."""
    cache = Path(cache)
    checksums = read_checksums(cache)
    problems = []
    for name, expected in sorted(checksums.items()):
        path = cache / name
        if not path.is_file():
            problems.append(f"{path}: listed in {CHECKSUMS} but missing")
        elif sha256(path) != expected:
            problems.append(
                f"{path}: SHA-256 differs from {CHECKSUMS} (changed or truncated)"
            )
    for path in sorted(cache.glob("*.pth")):
        if path.name not in checksums:
            problems.append(f"{path}: not in {CHECKSUMS}")
    return problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["fetch", "check"])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--cache", help="the cache folder (default: weights_cache)")
    args = parser.parse_args(argv)
    import yaml

    from segflow.settings import ConfigError, validate_config

    config = yaml.safe_load(Path(args.config).read_text())
    try:
        validate_config(config)
    except ConfigError as e:
        sys.exit(f"ERROR: {args.config}: {e}")
    cache = Path(args.cache or config["weights_cache"])
    if args.action == "fetch":
        checksums = fetch(config, cache)
        print(
            f"{len(checksums)} weights files in {cache}, checksums in {cache / CHECKSUMS}"
        )
        return
    problems = check(cache)
    if problems:
        sys.exit("\n".join(f"ERROR: {p}" for p in problems))
    print(f"{cache}: every weights file matches {CHECKSUMS}")


if __name__ == "__main__":
    main()
