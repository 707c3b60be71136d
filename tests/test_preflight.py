"""Pre-flight: each problem that would fail a run late is one line with its fix, before
any job (segflow.preflight, the workflow's onstart)."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from conftest import snakemake, write_config
from segflow import preflight
from segflow.preflight import StoragePlan

BROKEN_TORCHVISION = """#!/bin/sh
echo 'Traceback (most recent call last):' >&2
echo 'RuntimeError: operator torchvision::nms does not exist' >&2
exit 1
"""


def fake_python(folder, script: str):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_libraries_that_do_not_import_together_are_one_line_with_the_fix(tmp_path):
    python = fake_python(tmp_path / "env" / "bin", BROKEN_TORCHVISION)
    problem = preflight.import_problem(python)
    assert "operator torchvision::nms does not exist" in problem
    assert "install torchvision from the same index as torch" in problem
    assert "\n" not in problem
    missing = preflight.import_problem(str(tmp_path / "nowhere" / "python"))
    assert "activate the environment" in missing


def test_this_environment_imports_and_passes_once_per_installed_state(tmp_path):
    """The real environment imports every library; the stamp then skips the imports
    until a package is installed (the site-packages folder changes)."""
    cache = tmp_path / "stamp.json"
    assert preflight.cached_import_problem(sys.executable, cache) is None
    assert cache.is_file()
    env = tmp_path / "env"
    python = fake_python(env / "bin", BROKEN_TORCHVISION)
    packages = env / "lib" / "python3.11" / "site-packages"
    packages.mkdir(parents=True)
    cache.write_text(preflight.environment_stamp(python))  # as if it had passed
    assert preflight.cached_import_problem(python, cache) is None
    (packages / "torchvision-0.0.dist-info").mkdir()  # a new install
    os.utime(packages, ns=(0, 10**18))
    assert "torchvision::nms" in preflight.cached_import_problem(python, cache)


@pytest.mark.parametrize(
    "devices, gpus, local, fails",
    [
        ({"a": "auto", "b": "cuda"}, 0, True, True),
        ({"a": "auto", "b": "cuda"}, 1, True, False),
        ({"a": "auto", "b": "cuda"}, 0, False, False),  # SLURM: jobs run on GPU nodes
        ({"a": "auto", "b": "cpu"}, 0, True, False),
    ],
)
def test_device_cuda_needs_a_gpu_where_the_jobs_run(devices, gpus, local, fails):
    problem = preflight.gpu_problem(devices, gpus, local)
    assert (problem is not None) == fails
    if fails:
        assert problem.startswith("models ['b'] set device: cuda")
        assert "device: auto" in problem


def test_the_disk_must_hold_the_probability_maps_the_run_stores(tmp_path):
    plan = StoragePlan(
        members=2, fold_jobs=3, train_images=10, test_images=4, classes=3, size=(8, 6)
    )
    # Per member: 10 OOF maps (one per labelled image, over the folds) and 3 x 4 test
    # maps; each map 3 x 8 x 6 bytes.
    assert plan.bytes == 2 * (10 + 3 * 4) * 3 * 8 * 6
    assert preflight.disk_problem(tmp_path, plan, free_bytes=10**9) is None
    problem = preflight.disk_problem(tmp_path, plan, free_bytes=1000)
    assert "2 members x 3 prediction jobs" in problem and "8x6 x 3 classes" in problem
    assert "lower predict.size" in problem


@pytest.mark.workflow
def test_a_run_that_cannot_work_stops_before_any_job(tmp_path):
    """device: cuda on this GPU-less machine: the real run stops at once (the dry run
    is not a run and says nothing), with no job started and no results folder."""
    write_config(tmp_path, defaults={"device": "cuda"})
    assert snakemake(tmp_path, "-n").returncode == 0
    run = snakemake(tmp_path, "--cores", "1", check=False)
    assert run.returncode != 0
    assert "ERROR pre-flight: models ['deeplab_r18'] set device: cuda" in run.stderr
    assert not (tmp_path / "results").exists()
