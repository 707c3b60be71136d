"""Shared fixtures: the repo's class list, hand-made COCO datasets, the Snakemake CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

# No test may reach the network: smp / huggingface downloads fail at once, wandb stays off.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

DEFAULT_CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
CLASSES = DEFAULT_CONFIG["classes"]  # the class list lives in config.yaml only

# A demo small enough for a 2-core machine: every workflow test uses it.
TINY_DEMO = {
    "seed": 0,
    "train_images": 24,
    "test_images": 6,
    "size": 64,
    "batches": 4,
    "noise_rate": 0.25,
}


def deep_update(base: dict, changes: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def demo_resolved(config: dict) -> dict:
    """``config`` with its demo.overrides laid over it and emptied: the settings a demo
    run trains with, which a test's changes then replace key by key (with the overrides
    left in, they would win over the test's own values)."""
    overrides = config.get("demo", {}).get("overrides", {})
    config = deep_update(config, overrides)
    config["demo"] = {**config["demo"], "overrides": {}}
    return config


def write_config(workdir: Path, **changes) -> dict:
    """Write ``workdir/config.yaml``: the repo's config with a tiny demo and ``changes``
    (merged key by key, except ``models``, which replaces the model list)."""
    config = demo_resolved(DEFAULT_CONFIG)
    config = deep_update(config, {"demo": TINY_DEMO, "threads": {"index": 2}})
    config = deep_update(config, {k: v for k, v in changes.items() if k != "models"})
    if "models" in changes:
        config["models"] = changes["models"]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run the Snakemake CLI (which reads the workflow profile) on the repo's Snakefile."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        *args,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def square(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A rectangle as a COCO polygon."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_coco(
    root: Path,
    name: str,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
    write_images: bool = True,
) -> Path:
    """Write a COCO JSON under ``root`` and (optionally) grey images for its entries."""
    categories = (
        categories
        if categories is not None
        else [{"id": k, "name": n} for k, n in enumerate(CLASSES[1:], 1)]
    )
    root.mkdir(parents=True, exist_ok=True)
    if write_images:
        for image in images:
            path = root / image["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(path), np.full((image["height"], image["width"], 3), 100, np.uint8)
            )
    path = root / name
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}
        )
    )
    return path


@pytest.fixture()
def small_coco(tmp_path) -> dict:
    """A valid two-image train set and a one-image test set with real files."""
    root = tmp_path / "data"
    images = [
        {"id": 1, "file_name": "b1/a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b2/b.png", "width": 40, "height": 30},
    ]
    annotations = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 2,
            "segmentation": [square(2, 2, 30, 25)],
            "iscrowd": 0,
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 9,
            "segmentation": [square(10, 10, 16, 16)],
            "iscrowd": 0,
        },
        {
            "id": 12,
            "image_id": 2,
            "category_id": 8,
            "segmentation": [square(0, 0, 20, 20)],
            "iscrowd": 0,
        },
    ]
    train = write_coco(root, "train.json", images, annotations)
    test = write_coco(
        root,
        "test.json",
        [{"id": 1, "file_name": "b1/t.png", "width": 40, "height": 30}],
        [],
    )
    return {
        "root": root,
        "train": train,
        "test": test,
        "images": images,
        "annotations": annotations,
    }


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> dict:
    """A tiny demo dataset, indexed, with 2 folds: what train/predict read in the workflow."""
    from segflow.demo import make_demo
    from segflow.folds import make_folds

    root = tmp_path_factory.mktemp("tiny")
    data = root / "demo_data"
    make_demo(
        data,
        CLASSES,
        seed=0,
        train_images=24,
        test_images=5,
        size=64,
        batches=3,
        noise_rate=0.0,
    )
    paths = {
        "root": data,
        "images": root / "images.parquet",
        "masks": root / "masks",
        "folds": root / "folds.csv",
    }
    images = index_coco(data / "train_all.json", data / "test.json", data, root)
    make_folds(images, len(CLASSES), "kfold", 2, seed=0).to_csv(
        paths["folds"], index=False
    )
    return paths


def validated_config(**changes) -> dict:
    """The repo's config.yaml with ``changes`` (merged key by key), validated and with
    every schema default filled in, as the workflow sees it."""
    from segflow.settings import validated

    return validated(deep_update(demo_resolved(DEFAULT_CONFIG), changes))


def index_coco(train, test, root, out, *, on_error="stop", sample=None):
    """segflow.index.build_index of ``train``/``test`` into ``out`` (seed 0, 1 thread)."""
    from segflow.index import build_index

    out = Path(out)
    return build_index(
        train,
        test,
        root,
        CLASSES,
        images_out=out / "images.parquet",
        annotations_out=out / "annotations.parquet",
        skipped_out=out / "skipped.csv",
        masks_dir=out / "masks",
        on_error=on_error,
        sample=sample,
        seed=0,
        threads=1,
    )


def model_params(**changes):
    """Training settings as the workflow resolves them (schema defaults and the repo's
    config), small for the CPU: FPN/MobileNetV2, 2 epochs, and ``changes``."""
    from segflow.settings import ModelSettings, model_settings

    config = validated_config()
    small = {"arch": "FPN", "encoder": "mobilenet_v2", "epochs": 2, "batch_size": 4}
    small |= {"warmup_epochs": 0.5, "augment": [{"HorizontalFlip": {"p": 0.5}}]}
    small |= {"device": "cpu"}
    base = model_settings(config, sorted(config["models"])[0]).to_dict()
    return ModelSettings.from_dict(base | small | changes)


def train_fold(tiny_dataset, out_dir, *, fold=0, seed=0, settings=None, **options):
    """segflow.train.train on the tiny dataset as the workflow lays out a run folder:
    model.pt, history.csv and metrics.json under ``out_dir``. ``round_labels``: a
    segflow.fold_data.RoundLabels of a later round."""
    from segflow.train import TrainArgs, train

    out_dir = Path(out_dir)
    labels = options.pop("round_labels", None)
    if labels is not None:
        options |= {
            "train_masks_dir": labels.train_masks_dir,
            "drop": labels.drop,
            "pseudo": labels.pseudo,
            "pseudo_masks_dir": labels.pseudo_masks_dir,
        }
    return train(
        TrainArgs(
            settings=settings if settings is not None else model_params(epochs=1),
            images_path=tiny_dataset["images"],
            folds_path=tiny_dataset["folds"],
            masks_dir=tiny_dataset["masks"],
            image_root=tiny_dataset["root"],
            classes=CLASSES,
            fold=fold,
            seed=seed,
            model_out=out_dir / "model.pt",
            history_out=out_dir / "history.csv",
            metrics_out=out_dir / "metrics.json",
            threads=2,
            wandb=options.pop("wandb", None),
            run_name=options.pop("run_name", f"fpn/f{fold}-s{seed}"),
            **options,
        )
    )


def predict_fold(
    tiny_dataset, model_path, out_dir, *, fold=0, size=48, tta="hflip", overlap=0.5
):
    """segflow.predict.predict into ``out_dir``: oof.npy and test.npy with their ids."""
    from segflow.predict import PredictArgs, predict

    out_dir = Path(out_dir)
    predict(
        PredictArgs(
            model_path=model_path,
            images_path=tiny_dataset["images"],
            folds_path=tiny_dataset["folds"],
            image_root=tiny_dataset["root"],
            fold=fold,
            size=size,
            tta_mode=tta,
            batch_size=4,
            oof_out=out_dir / "oof.npy",
            test_out=out_dir / "test.npy",
            threads=2,
            window_overlap=overlap,
        )
    )
    return out_dir


# --- tiny real runs, shared by the workflow and the stage-contract tests -----------------

TINY_MODELS = {
    "fpn": {"arch": "FPN", "encoder": "mobilenet_v2"},
    "unet": {"arch": "Unet", "encoder": "mobilenet_v2"},
}
# Cleaning on the tiny run flags exactly the worst quarter of the images by OOF IoU (no
# object or missed region is judged on its own), and cleans their label issue pixels.
# A 1-epoch model is unsure of every class: every class counts as learnt (the default
# min_class_confidence, 0.2, would judge none) and a pseudo label is confident at 0.2.
TINY_CLEAN = {
    "enabled": True,
    "worst_fraction": 0.25,
    "min_region": 1.0,
    "missed_region": 1.0,
    "min_class_confidence": 0.0,
    "min_judge_iou": 0.0,  # a 1-epoch judge: judged anyway, to exercise the stage
    "max_images": 1.0,
    "max_pixels": 1.0,
    "gallery": 3,
}
TINY_PSEUDO = {"enabled": True, "confidence": 0.2, "min_coverage": 0.3}


# Round r0 only, on 16 + 6 images of 64 px: 2 folds + the full fit, 1 epoch.
TINY_R0 = {
    "debug": {"enabled": True, "images": 16, "epochs": 1},
    "cv": {"folds": 2},
    "clean": {"enabled": False},
    "pseudo": {"enabled": False},
    "defaults": {"batch_size": 4},
    "predict": {"size": 32},
    "wandb": {"mode": "disabled"},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """TINY_R0 with the 2 tiny models."""
    workdir = tmp_path_factory.mktemp("run")
    config = write_config(workdir, **TINY_R0, models=TINY_MODELS)
    snakemake(workdir, "--cores", "2")
    return workdir, config


def cleaning_run(tiny_run, tmp_path_factory, action: str, targets=()):
    """The tiny run with cleaning (``action``) and pseudo labels on, to the submission
    (or to ``targets``): r0 is reused as it is; r1 trains on the cleaned labels and the
    pseudo-labelled test images. The run's output is kept in snakemake.out."""
    source, config = tiny_run
    workdir = tmp_path_factory.mktemp(f"clean_{action}") / "run"
    shutil.copytree(source, workdir, symlinks=True)  # copy2 keeps mtimes: r0 stays done
    kept = {
        k: v
        for k, v in config.items()
        if k not in ("demo", "threads", "clean", "pseudo")
    }
    config = write_config(
        workdir, **kept, clean={**TINY_CLEAN, "action": action}, pseudo=TINY_PSEUDO
    )
    counts = job_counts(snakemake(workdir, "-n").stdout)
    assert counts == {
        "clean": 1,
        "demo_noise": 1,
        "pseudo_labels": 1,
        "train": 6,
        "predict": 6,
        "oof_score": 2,
        "ensemble": 1,  # r1's: r0's is the copied run's final ensemble, up to date
        "submission": 1,
        "demo_score": 1,
        "demo_rounds": 1,
        "leaderboard": 1,
        "all": 1,
    }
    run = snakemake(workdir, "--cores", "2", *targets)
    (workdir / "snakemake.out").write_text(run.stdout + run.stderr)
    return workdir, config


@pytest.fixture(scope="session")
def tiny_clean_run(tiny_run, tmp_path_factory):
    """Cleaning with the default action, ``ignore``: flagged regions become 255."""
    return cleaning_run(tiny_run, tmp_path_factory, "ignore")


@pytest.fixture(scope="session")
def tiny_relabel_run(tiny_run, tmp_path_factory):
    """Cleaning with ``relabel``: flagged regions take the confident OOF class. Only
    fpn's round-r1 models are trained: they are what the relabel test reads (the run to
    the submission is the ``ignore`` run's, and costs as much again)."""
    targets = [
        f"results/r1/train/fpn/{fold}-s0/model.pt" for fold in ("f0", "f1", "full")
    ]
    return cleaning_run(tiny_run, tmp_path_factory, "relabel", targets)
