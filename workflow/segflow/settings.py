"""Config checks that a JSON schema cannot express, run before any job starts.

The schema (workflow/schemas/config.schema.yaml) checks keys, types and ranges and fills
defaults. This module checks the config against the world: do the data files exist, do
the COCO categories match the class list, does the group pattern compile. The Snakefile
calls :func:`check_config` at parse time, so a wrong path or class list stops the run
before any job with a message naming the key or file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segflow.coco import DataError, class_index_by_category, read_json

DEMO_ROOT = "results/demo_data"
# What the demo generator writes under DEMO_ROOT, in the competition's layout.
DEMO_FILES = {
    "train": "train_all.json",
    "val": "val.json",
    "test": "test.json",
    "sample_submission": "sample_submission.csv",
}


class ConfigError(ValueError):
    """A config value that is well-typed but wrong (missing file, mismatched classes...)."""


@dataclass(frozen=True)
class DataPaths:
    """Where the dataset is: the image root and the COCO files, resolved from ``config["data"]``."""

    root: str
    train: str
    test: str
    val: str | None
    sample_submission: str | None


def data_paths(config: dict) -> DataPaths:
    """Resolve ``data.*``: the demo's own files when ``data.demo`` is on, else the user's.

    File entries are relative to ``data.root`` unless absolute.
    """
    data = config["data"]
    if data["demo"]:
        files = {key: f"{DEMO_ROOT}/{name}" for key, name in DEMO_FILES.items()}
        return DataPaths(
            DEMO_ROOT,
            files["train"],
            files["test"],
            files["val"] if data.get("val") else None,
            files["sample_submission"],
        )
    if not data.get("root"):
        raise ConfigError(
            "data.root: required when data.demo is false (the folder that file_name entries are relative to)"
        )
    root = Path(data["root"])

    def under_root(key: str) -> str | None:
        value = data.get(key)
        return (
            None if value is None else str(root / value)
        )  # an absolute value replaces root

    return DataPaths(
        str(root),
        under_root("train"),
        under_root("test"),
        under_root("val"),
        under_root("sample_submission"),
    )


def model_settings(config: dict, model: str) -> dict:
    """The resolved settings of ``model``: its entry over ``defaults`` (shallow: a model's
    ``loss`` or ``augment`` replaces the default one whole), debug epochs applied."""
    settings = {**config["defaults"], **config["models"][model]}
    if config["debug"]["enabled"]:
        settings["epochs"] = config["debug"]["epochs"]
    return settings


def check_config(config: dict) -> None:
    """Raise ConfigError/DataError for a config that cannot work; see the module doc."""
    classes = config["classes"]
    paths = data_paths(config)
    if not config["data"]["demo"]:
        if not Path(paths.root).is_dir():
            raise ConfigError(f"data.root: folder {paths.root} does not exist")
        for key in ("train", "test", "val", "sample_submission"):
            path = getattr(paths, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"data.{key}: file {path} does not exist")
        for key in ("train", "test", "val"):
            path = getattr(paths, key)
            if path is not None:
                class_index_by_category(read_json(path)["categories"], classes, path)
    source = config.get("clean", {}).get("source", "ensemble")
    if source != "ensemble" and source not in config["models"]:
        raise ConfigError(
            f"clean.source: {source!r} is neither 'ensemble' nor a model of models ({sorted(config['models'])})"
        )
    group_by = config["cv"].get("group_by")
    if group_by not in (None, "folder"):
        try:
            pattern = re.compile(group_by)
        except re.error as e:
            raise ConfigError(
                f"cv.group_by: {group_by!r} is neither 'folder' nor a valid regex ({e})"
            ) from None
        if pattern.groups > 1:
            raise ConfigError(
                f"cv.group_by: {group_by!r} has {pattern.groups} capture groups; use at most one"
            )


__all__ = [
    "ConfigError",
    "DataError",
    "DataPaths",
    "DEMO_FILES",
    "DEMO_ROOT",
    "check_config",
    "data_paths",
    "model_settings",
]
