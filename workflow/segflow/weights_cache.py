"""Where an encoder's pretrained weights come from: a local file, or a named set
(``imagenet``...) that ``python -m segflow.weights fetch`` wrote into the weights cache.

Light on purpose (no torch): the workflow resolves the settings at every Snakemake call.
"""

from __future__ import annotations

from pathlib import Path

CHECKSUMS = "checksums.json"
LOCAL_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}


def is_local(value: str | None) -> bool:
    """A file name (by its suffix, or an existing path), not a named set."""
    return value is not None and (
        Path(value).suffix in LOCAL_SUFFIXES or Path(value).exists()
    )


def cache_file(cache: str | Path, encoder: str, name: str) -> Path:
    return Path(cache) / f"{encoder}--{name}.pth"


def resolve(encoder: str, value: str | None, cache: str | Path) -> str | None:
    """``value`` as the job should load it: a named set whose cache file exists becomes
    that file; null, local files and uncached sets stay as they are."""
    if value is None or is_local(value):
        return value
    cached = cache_file(cache, encoder, value)
    return str(cached) if cached.is_file() else value
