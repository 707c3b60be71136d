"""Settings: the validated config as typed objects, and the checks a schema cannot make.

The schema (workflow/schemas/config.schema.yaml) is the one place where a setting's
default and its documentation live. The Snakefile validates the config against it
(filling the defaults); :func:`validated` does the same for tests and benchmarks. The
dataclasses below carry no defaults of their own: each is built from one section of the
validated config by ``from_dict``, which names a missing or unknown key, and a step
receives exactly the settings it needs as one JSON argument.

:func:`check_config` checks the config against the world (do the data files exist, do
the COCO categories match the class list, does the group pattern compile) at parse time,
so a wrong path or class list stops the run before any job, naming the key or file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from segflow.coco import class_index_by_category, read_json
from segflow.input_size import (
    as_size,
    model_input_size,
    nearest_fit,
    size_arg,
    size_text,
)
from segflow.submission_format import NATIVE
from segflow.weights_cache import resolve as resolve_weights

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
DEMO_ROOT = "results/demo_data"
# What the demo generator writes under DEMO_ROOT, in the competition's layout.
DEMO_FILES = {
    "train": "train_all.json",
    "val": "val.json",
    "test": "test.json",
    "sample_submission": "sample_submission.csv",
}
# Keys of a model entry that change its predictions, not its training: a change to them
# must not rerun training, so training never sees them.
PREDICT_ONLY = ("tta", "window_overlap")


class ConfigError(ValueError):
    """A config value that is well-typed but wrong (missing file, mismatched classes...)."""


class Settings:
    """Base of the typed settings: built from a mapping with exactly the fields' keys."""

    @classmethod
    def from_dict(cls, mapping: dict, section: str = ""):
        names = [f.name for f in dataclasses.fields(cls)]
        where = section or cls.__name__
        missing = [n for n in names if n not in mapping]
        unknown = sorted(set(mapping) - set(names))
        if missing or unknown:
            raise ConfigError(
                f"{where}: missing keys {missing}, unknown keys {unknown}"
                f" (expected exactly {names})"
            )
        return cls(**{n: mapping[n] for n in names})

    @classmethod
    def from_json(cls, text: str, section: str = ""):
        return cls.from_dict(json.loads(text), section)

    def replace(self, **changes):
        """A copy with ``changes`` (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Keys sorted at every depth: the text Snakemake compares to decide reruns."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class ModelSettings(Settings):
    """How one model is built and trained (a ``models`` entry over ``defaults``)."""

    arch: str
    encoder: str
    encoder_weights: str | None
    model_args: dict
    input_size: int | None
    crop: int | None
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    scheduler: str
    warmup_epochs: float
    min_lr_ratio: float
    restart_epochs: float
    poly_power: float
    accumulate: int
    grad_clip: float | None
    amp: str
    loss: dict
    label_smoothing: float
    focal_gamma: float
    class_weights: str | list | None
    oversample: float | None
    augment: list
    mix: str
    mix_p: float
    mix_alpha: float
    rare_bias: float
    averaging: str
    ema_decay: float
    swa_start: float
    top_k: int
    workers: int | None
    device: str
    deterministic: bool


@dataclass(frozen=True)
class EnsembleSettings(Settings):
    """How members are combined (``ensemble`` without ``members``, which is wiring)."""

    method: str
    weights: str
    class_bias: bool
    tune_pixels: int
    chunk: int
    full_weight: float
    remove_small: bool


@dataclass(frozen=True)
class CleanSettings(Settings):
    """Flag thresholds and the action (``clean`` without ``enabled`` and ``source``)."""

    action: str
    iou_below: float | None
    worst_fraction: float | None
    issue_share: float
    min_class_confidence: float
    min_region: float
    missed_region: float
    min_judge_iou: float
    max_images: float
    max_pixels: float
    over_limit: str
    gallery: int


@dataclass(frozen=True)
class PseudoSettings(Settings):
    """Which pixels and images of the teacher's prediction become labels."""

    confidence: float | dict
    coverage: float | None
    min_coverage: float
    min_images: float
    below_min: str


@dataclass(frozen=True)
class WandbSettings(Settings):
    mode: str
    project: str
    dir: str


# The kinds of label error the demo injects (segflow.demo) and whose detection
# segflow.demo_noise_score scores, one kind per noisy image, in turn.
DEMO_NOISE_KINDS = ("class_swap", "missing", "shifted", "bloated")


@dataclass(frozen=True)
class DemoSettings(Settings):
    seed: int
    train_images: int
    test_images: int
    size: int
    batches: int
    noise_rate: float


def validate_config(config: dict) -> None:
    """Check ``config`` against the schema and fill in every default, in place; on the
    demo (``data.demo``), lay ``demo.overrides`` over it key by key and check again.

    A violation is a ConfigError naming the key and what is wrong with it, without the
    schema that Snakemake's own message prints after it."""
    _validate_against_schema(config)
    if config["data"]["demo"] and config["demo"]["overrides"]:
        merge_over(config, config["demo"]["overrides"])
        _validate_against_schema(config)


def merge_over(config: dict, overrides: dict) -> None:
    """``overrides`` laid over ``config`` in place: mappings key by key, the rest whole."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge_over(config[key], value)
        else:
            config[key] = json.loads(json.dumps(value))


def _validate_against_schema(config: dict) -> None:
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(SCHEMA), set_default=True)
    except WorkflowError as e:
        error = e.__context__
        if not isinstance(error, jsonschema.ValidationError):
            raise
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"{where}: {error.message}") from None


def validated(config: dict) -> dict:
    """``config`` checked against the schema, with every default filled in (a copy)."""
    config = json.loads(json.dumps(config))
    validate_config(config)
    return config


def _section(config: dict, key: str, cls, wiring: tuple[str, ...] = ()):
    values = {k: v for k, v in config[key].items() if k not in wiring}
    return cls.from_dict(values, key)


def model_entry(config: dict, model: str) -> dict:
    """``model``'s entry over ``defaults`` (shallow), every key, training or not."""
    return {**config["defaults"], **config["models"][model]}


def model_settings(config: dict, model: str) -> ModelSettings:
    """The resolved training settings of ``model``: its entry over ``defaults`` (shallow:
    a model's ``loss`` or ``augment`` replaces the default one whole), debug epochs
    applied, predict-only keys left out."""
    merged = model_entry(config, model)
    merged["encoder_weights"] = resolve_weights(
        merged["encoder"], merged["encoder_weights"], config["weights_cache"]
    )
    if config["debug"]["enabled"]:
        merged["epochs"] = config["debug"]["epochs"]
    for key in PREDICT_ONLY:
        merged.pop(key)
    return ModelSettings.from_dict(merged, f"models.{model}")


def round_model_settings(config: dict, model: str, round_: str) -> ModelSettings:
    """``model``'s settings in round ``round_``: r0 and scratch rounds train as the model
    says; a warm round (retrain.init: warm) fine-tunes with retrain's epochs and lr."""
    settings = model_settings(config, model)
    retrain = config["retrain"]
    if round_ == "r0" or retrain["init"] == "scratch":
        return settings
    return settings.replace(
        epochs=config["debug"]["epochs"]
        if config["debug"]["enabled"]
        else retrain["epochs"],
        lr=retrain["lr"] or settings.lr,
        warmup_epochs=retrain["warmup_epochs"],
    )


def job_memory_mb(config: dict, rule: str) -> int:
    """Memory a job of ``rule`` asks a cluster scheduler for (``resources.mem_mb``)."""
    memory = config["resources"]["mem_mb"]
    return memory.get(rule, memory["default"])


def job_runtime_minutes(config: dict, rule: str, epochs: int | None = None) -> int:
    """Time limit of a job of ``rule`` (``resources.runtime``): a training job's grows with
    the ``epochs`` it trains, the others take their rule's value or the default."""
    runtime = config["resources"]["runtime"]
    if rule == "train":
        if epochs is None:
            raise ValueError("a training job's runtime needs its epochs")
        return math.ceil(runtime["train_start"] + runtime["train_per_epoch"] * epochs)
    return runtime.get(rule, runtime["default"])


def prediction_tta(config: dict, model: str) -> str:
    """The test-time augmentation of ``model``'s predictions."""
    return model_entry(config, model)["tta"]


def prediction_overlap(config: dict, model: str) -> float:
    """The sliding window's tile overlap of ``model``'s predictions (models with crop)."""
    return model_entry(config, model)["window_overlap"]


def prediction_size(config: dict) -> tuple[int, int]:
    """(height, width) of the stored probability maps: ``predict.size``, else the
    submission's (check_config asks for predict.size where the submission is native)."""
    size = config["predict"]["size"] or config["submission"]["size"]
    if size == NATIVE:
        raise ConfigError(
            "predict.size: required with submission.size: native (the size the"
            " probabilities are stored and ensembled at, e.g. [height, width])"
        )
    return as_size(size)


def prediction_size_arg(config: dict) -> str:
    """:func:`prediction_size` as the steps' --size reads it (height x width)."""
    return size_arg(prediction_size(config))


def submission_size_arg(config: dict) -> str:
    """``submission.size`` as the steps' --size reads it: native, or height x width."""
    size = config["submission"]["size"]
    return size if size == NATIVE else size_arg(as_size(size))


def ensemble_settings(config: dict) -> EnsembleSettings:
    return _section(config, "ensemble", EnsembleSettings, wiring=("members",))


def clean_settings(config: dict) -> CleanSettings:
    return _section(config, "clean", CleanSettings, wiring=("enabled", "source"))


def pseudo_settings(config: dict) -> PseudoSettings:
    return _section(
        config,
        "pseudo",
        PseudoSettings,
        wiring=("enabled", "rounds", "labelled_epochs"),
    )


def wandb_settings(config: dict, directory: str) -> WandbSettings:
    return WandbSettings.from_dict({**config["wandb"], "dir": directory}, "wandb")


def demo_settings(config: dict) -> DemoSettings:
    # The overrides are the demo run's settings, not the generator's.
    return _section(config, "demo", DemoSettings, wiring=("overrides",))


@dataclass(frozen=True)
class DataPaths:
    """Where the dataset is: the image root and the COCO files, from ``config["data"]``."""

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
            "data.root: required when data.demo is false"
            " (the folder that file_name entries are relative to)"
        )
    root = Path(data["root"]).expanduser()  # ~/data, as a shell would read it

    def under_root(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else str(root / value)  # absolute replaces root

    return DataPaths(
        str(root),
        under_root("train"),
        under_root("test"),
        under_root("val"),
        under_root("sample_submission"),
    )


def check_test_images(train: list, test: list, paths: DataPaths) -> None:
    """A test set to predict, and no test image that is also a training image."""
    if not test:
        raise ConfigError(
            f"data.test: {paths.test} has no images: nothing to predict or submit"
        )
    train_names = {image.get("file_name") for image in train if isinstance(image, dict)}
    shared = sorted(
        image.get("file_name")
        for image in test
        if isinstance(image, dict) and image.get("file_name") in train_names
    )
    if shared:
        raise ConfigError(
            f"data.test: {len(shared)} images of {paths.test} have the file_name of a"
            f" training image of {paths.train}, e.g. {shared[:3]}"
        )
    # The submission's image_id is the file_name, unquoted before its comma.
    unwritable = [
        (image.get("file_name"), image.get("id"))
        for image in test
        if isinstance(image, dict)
        and isinstance(image.get("file_name"), str)
        and any(c in image["file_name"] for c in ',"\n\r')
    ]
    if unwritable:
        name, image_id = unwritable[0]
        raise ConfigError(
            f"data.test: {paths.test}: image id {image_id}: file_name {name!r} has a"
            " comma, quote or line break, which the submission's image_id column cannot"
            f" carry ({len(unwritable)} such test images); rename the files"
        )


def check_image_files(images: list, root: str, source: str) -> None:
    """Every image file is there (a stat each; the index opens them)."""
    missing = [
        (image["file_name"], image.get("id"))
        for image in images
        if isinstance(image, dict)
        and isinstance(image.get("file_name"), str)
        and not (Path(root) / image["file_name"]).is_file()
    ]
    if missing:
        examples = ", ".join(f"{name} (id {i})" for name, i in missing[:3])
        raise ConfigError(
            f"{source}: {len(missing)} image files missing under {root}, e.g. {examples}"
        )


def check_model_input_sizes(config: dict, sizes: list[tuple[int, int]]) -> None:
    """Every model can take the images at the side segflow.input_size gives it."""
    if not sizes:
        return  # no readable sizes: the index names the bad entries
    for name in sorted(config["models"]):
        settings = model_settings(config, name)
        try:
            model_input_size(sizes, settings.arch, settings.input_size, settings.crop)
        except ValueError as e:
            raise ConfigError(f"models.{name}: {e}") from None


def start_warnings(config: dict) -> list[str]:
    """What a run on real data should hear before it starts: models that train from
    random encoder weights (fine for the demo, far below pretrained ones on real data)."""
    if config["data"]["demo"]:
        return []
    random = [
        name
        for name in sorted(config["models"])
        if model_entry(config, name)["encoder_weights"] is None
    ]
    if not random:
        return []
    return [
        f"segflow: models {random} train from random encoder weights"
        " (encoder_weights: null); on real data pretrained weights score far higher:"
        " set encoder_weights to a local weights file or imagenet (docs/training.md)"
    ]


def check_sizes(config: dict, sizes: list[tuple[int, int]]) -> None:
    """predict.size is set where the submission is native-size (see prediction_size)."""
    if config["submission"]["size"] == NATIVE and not config["predict"]["size"]:
        hint = ""
        if sizes:
            common = max(set(sizes), key=sizes.count)
            half = nearest_fit((common[0] // 2, common[1] // 2), 8)
            hint = (
                f"; your most common image size is {size_text(common)}, e.g."
                f" predict.size: {size_text(half)} keeps its aspect at half the side"
            )
        raise ConfigError(
            "predict.size: required with submission.size: native (the size the"
            f" probabilities are stored and ensembled at, height x width){hint}"
        )


def non_finite_keys(value, where: str = "") -> list[str]:
    """The keys (dotted) of every NaN or infinite number in ``value``: YAML reads .nan
    and .inf, and no schema bound rejects NaN (every comparison with it is false)."""
    if isinstance(value, dict):
        return [
            key
            for name, item in value.items()
            for key in non_finite_keys(item, f"{where}.{name}" if where else str(name))
        ]
    if isinstance(value, list):
        return [
            key
            for i, item in enumerate(value)
            for key in non_finite_keys(item, f"{where}[{i}]")
        ]
    if isinstance(value, float) and not math.isfinite(value):
        return [where]
    return []


def check_config(config: dict) -> None:
    """Raise ConfigError/DataError for a config that cannot work; see the module doc."""
    bad_numbers = non_finite_keys(config)
    if bad_numbers:
        raise ConfigError(f"{bad_numbers[0]}: not a finite number")
    classes = config["classes"]
    paths = data_paths(config)
    if config["data"]["demo"]:
        side = config["demo"]["size"]
        sizes = [(side, side)]
    else:
        if not Path(paths.root).is_dir():
            raise ConfigError(f"data.root: folder {paths.root} does not exist")
        for key in ("train", "test", "val", "sample_submission"):
            path = getattr(paths, key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"data.{key}: file {path} does not exist")
        coco = {
            key: read_json(getattr(paths, key))
            for key in ("train", "test", "val")
            if getattr(paths, key) is not None
        }
        for key, data in coco.items():
            class_index_by_category(
                data["categories"],
                classes,
                getattr(paths, key),
                config["data"]["unlabelled"],
                config["data"]["void"],
            )
        check_test_images(coco["train"]["images"], coco["test"]["images"], paths)
        if config["data"]["on_error"] == "stop":
            for key in ("train", "test"):
                check_image_files(coco[key]["images"], paths.root, getattr(paths, key))
        sizes = [
            (image.get("height"), image.get("width"))
            for key in ("train", "test")
            for image in coco[key]["images"]
            if isinstance(image, dict)
        ]
    check_model_input_sizes(
        config, [s for s in sizes if all(isinstance(v, int) for v in s)]
    )
    source = config.get("clean", {}).get("source", "ensemble")
    if source != "ensemble" and source not in config["models"]:
        raise ConfigError(
            f"clean.source: {source!r} is neither 'ensemble' nor a model of models"
            f" ({sorted(config['models'])})"
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
                f"cv.group_by: {group_by!r} has {pattern.groups} capture groups;"
                " use at most one"
            )
