"""Pre-flight: what would fail an hour into a run, checked in seconds before any job.

Snakemake's ``onstart`` runs :func:`problems` once a run is about to start (not for a dry
run), on the machine that runs Snakemake. Each problem is one line that says what to do:

- the job environment's ``python`` cannot import torch, torchvision's compiled ops, smp,
  timm and albumentations together (a CPU torch beside PyPI's CUDA torchvision fails
  only at ``import segmentation_models_pytorch``: ``operator torchvision::nms does not
  exist``, in the first training job, after the index, the EDA and the folds ran);
- a model asks for ``device: cuda`` where jobs run on this machine and it has no GPU;
- the disk under ``results/`` has not room for the probability maps the run stores
  (uint8, classes x height x width per image, OOF and test, per member and fold).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Run by the jobs' own ``python``: the one the rules call, which may not be this one.
IMPORTS = """
import torch, torchvision
torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
import segmentation_models_pytorch, timm, albumentations
"""
DISK_MARGIN = 1.2  # room for the ensembles, masks and temporary files beside the maps


@dataclass(frozen=True)
class StoragePlan:
    """What the run's prediction jobs store."""

    members: int  # model x seed x round
    fold_jobs: int  # prediction jobs per member (folds, and the full fit)
    train_images: int  # each is an OOF map of one fold job
    test_images: int  # each is a map of every fold job
    classes: int
    size: tuple[int, int]  # (height, width) of a stored map

    @property
    def bytes(self) -> int:
        per_member = self.train_images + self.test_images * self.fold_jobs
        height, width = self.size
        return self.members * per_member * self.classes * height * width


def import_problem(python: str = "python") -> str | None:
    """None where the job environment imports every library; else the one line."""
    try:
        run = subprocess.run(
            [python, "-c", IMPORTS], capture_output=True, text=True, timeout=300
        )
    except FileNotFoundError:
        return (
            f"no {python!r} on PATH: the jobs run 'python -m segflow...'; activate"
            " the environment segflow is installed in"
        )
    if run.returncode == 0:
        return None
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {run.returncode}"
    fix = "reinstall the libraries together: pip install -e ."
    if "torchvision::" in run.stderr or "torchvision" in last:
        fix = (
            "torch and torchvision are builds that do not match (e.g. a CPU torch"
            " beside a CUDA torchvision): install torchvision from the same index as"
            " torch, e.g. pip install --force-reinstall torchvision --index-url"
            " https://download.pytorch.org/whl/cpu (or the CUDA index torch came from)"
        )
    return f"the job environment ({python}) cannot import its libraries: {last}; fix: {fix}"


def environment_stamp(python: str) -> str | None:
    """What identifies the job environment's installed libraries without starting it:
    its ``python`` and the modification times of its site-packages folders (installing
    or removing a package changes them). None where ``python`` is not on PATH."""
    found = shutil.which(python)
    if found is None:
        return None
    prefix = Path(found).absolute().parent.parent
    folders = sorted(prefix.glob("lib/python3*/*-packages"))  # site- or dist-
    return json.dumps([found, [(str(f), f.stat().st_mtime_ns) for f in folders]])


def cached_import_problem(python: str = "python", cache: Path | None = None):
    """:func:`import_problem`, run once per environment state: a stamp in ``cache``
    (default: the user's cache folder) skips the few seconds of imports when nothing
    was installed since the environment last passed."""
    cache = cache or Path.home() / ".cache" / "segflow" / "preflight-imports.json"
    stamp = environment_stamp(python)
    if stamp is not None and cache.is_file() and cache.read_text() == stamp:
        return None
    problem = import_problem(python)
    if problem is None and stamp is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(stamp)
        except OSError:  # a read-only home: check again next time
            pass
    return problem


def gpu_problem(devices: dict[str, str], gpus: int, local: bool) -> str | None:
    """``devices``: model -> its device setting; ``gpus``: GPUs this machine lists;
    ``local``: jobs run on this machine (not submitted to a cluster's nodes)."""
    wanting = sorted(model for model, device in devices.items() if device == "cuda")
    if not wanting or not local or gpus > 0:
        return None
    return (
        f"models {wanting} set device: cuda, and this machine, where the jobs run,"
        " has no GPU (nvidia-smi lists none): run on a GPU node (or submit the jobs"
        " with --workflow-profile profiles/slurm), or set device: auto"
    )


def disk_problem(results: Path, plan: StoragePlan, free_bytes: int) -> str | None:
    needed = int(plan.bytes * DISK_MARGIN)
    if free_bytes >= needed:
        return None
    return (
        f"{results}: the run stores about {gib(plan.bytes)} of probability maps"
        f" ({plan.members} members x {plan.fold_jobs} prediction jobs,"
        f" {plan.train_images} OOF + {plan.test_images} test images each time at"
        f" {plan.size[0]}x{plan.size[1]} x {plan.classes} classes), and"
        f" {gib(free_bytes)} are free: free space, run from a larger disk, or lower"
        " predict.size or the number of folds, seeds or models"
    )


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def problems(
    *,
    devices: dict[str, str],
    plan: StoragePlan,
    results: Path,
    local: bool,
    gpus: int,
    python: str = "python",
) -> list[str]:
    """Every pre-flight problem (see the module doc), one line each."""
    found = [
        cached_import_problem(python),
        gpu_problem(devices, gpus, local),
        disk_problem(results, plan, free_bytes(results)),
    ]
    return [problem for problem in found if problem]


def image_counts(config: dict) -> tuple[int, int]:
    """(labelled, test) images the run predicts: the demo's, or the COCO files' (at
    most ``debug.images`` each in debug mode)."""
    from segflow.coco import read_json
    from segflow.settings import data_paths

    if config["data"]["demo"]:
        counts = (config["demo"]["train_images"], config["demo"]["test_images"])
    else:
        paths = data_paths(config)
        counts = tuple(
            len(read_json(getattr(paths, key))["images"]) for key in ("train", "test")
        )
    if config["debug"]["enabled"]:
        counts = tuple(min(n, config["debug"]["images"]) for n in counts)
    return counts


def run_problems(config: dict, *, members: int, fold_jobs: int, local: bool) -> list:
    """:func:`problems` for a resolved config (the workflow's onstart)."""
    from segflow.device import count_gpus
    from segflow.settings import model_settings, prediction_size

    train_images, test_images = image_counts(config)
    plan = StoragePlan(
        members=members,
        fold_jobs=fold_jobs,
        train_images=train_images,
        test_images=test_images,
        classes=len(config["classes"]),
        size=prediction_size(config),
    )
    devices = {m: model_settings(config, m).device for m in config["models"]}
    wants_gpu = "cuda" in devices.values()
    return problems(
        devices=devices,
        plan=plan,
        results=Path("results"),
        local=local,
        gpus=count_gpus() if wants_gpu and local else 0,
    )
