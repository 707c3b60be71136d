"""profiles/slurm on a real SLURM cluster: a single node on localhost (tests/slurm_cluster.py),
without accounting storage and without GPUs, like the cluster the issue was tried on."""

from __future__ import annotations

import re
import subprocess
import time

import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY_MODELS, TINY_R0, job_counts, snakemake, write_config
from segflow.settings import job_memory_mb, job_runtime_minutes, validated
from slurm_cluster import PARTITION, LocalSlurm, why_not_available

pytestmark = pytest.mark.workflow

PROFILE = REPO / "profiles" / "slurm"


def readme_cpu_only_override() -> list[str]:
    """docs/scale-out.md's --set-resources for a cluster without GPU nodes, as the test
    runs it."""
    readme = (REPO / "docs" / "scale-out.md").read_text().replace("\\\n", " ")
    found = re.search(r"profiles/slurm --set-resources (.+?) -- submission", readme)
    assert found, "docs/scale-out.md: no --set-resources override without GPUs"
    return found.group(1).split()


def slurm_jobs(env: dict[str, str]) -> pd.DataFrame:
    """Every job the cluster still remembers (finished ones for MinJobAge seconds):
    the rule (the plugin's --comment), partition, CPUs, memory, time limit, state."""
    listing = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%k|%P|%C|%m|%l|%T"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rows = [line.split("|") for line in listing.stdout.splitlines() if line.strip()]
    columns = ["comment", "partition", "cpus", "memory", "time_limit", "state"]
    jobs = pd.DataFrame(rows, columns=columns)
    jobs["rule"] = jobs["comment"].str.extract(r"^rule_([a-z_]+?)(?:_wildcards|$)")[0]
    return jobs


def minutes(time_limit: str) -> int:
    """squeue's %l (M:SS, H:MM:SS or D-HH:MM:SS) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, mins, _ = parts
    return (int(days or 0) * 24 + hours) * 60 + mins


def test_the_readme_sends_gpu_rules_to_the_cpu_partition_without_gpus():
    override = readme_cpu_only_override()
    assert sorted(override) == sorted(
        f"{rule}:{resource}"
        for rule in ("train", "predict")
        for resource in ("gpu=0", f"slurm_partition={PARTITION}")
    )


def test_the_profile_is_the_documented_one():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # squeue: the status command that works where accounting storage is off.
    assert profile["slurm-status-command"] == "squeue"
    # Threads, memory and time limits come from the rules, not from flat defaults.
    assert set(profile["default-resources"]) == {"slurm_partition"}
    # One GPU partition, named once: predict's entry is train's.
    assert profile["set-resources"]["predict"] is profile["set-resources"]["train"]
    assert profile["set-resources"]["train"]["slurm_partition"] != PARTITION


def test_tiny_pipeline_runs_to_the_submission_through_the_slurm_profile(tmp_path):
    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path / "run"
    config = write_config(
        workdir,
        **TINY_R0,
        models={"fpn": TINY_MODELS["fpn"]},
        threads={"index": 1, "train": 1, "predict": 1},
        resources={"mem_mb": {"train": 3000}, "runtime": {"train_per_epoch": 7}},
    )
    config = validated(config)
    with LocalSlurm(tmp_path / "cluster") as cluster:
        started = time.monotonic()
        run = snakemake(
            workdir,
            "--workflow-profile",
            str(PROFILE),
            "--set-resources",
            *readme_cpu_only_override(),
            # The plugin's first status check waits 40 s by default: minutes on a run
            # of many short jobs. The test's jobs take seconds.
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--",
            "submission",
            env=cluster.env,
            timeout=900,
            check=False,
        )
        wall_s = time.monotonic() - started
        jobs = slurm_jobs(cluster.env)
        logs = cluster.logs()
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{logs}"
    print(f"tiny pipeline through SLURM: {wall_s:.0f} s\n{jobs.to_string()}")
    assert (workdir / "results" / "submission" / "submission.csv").is_file()

    # Every job of the run went through sbatch and finished; each asked for what its rule
    # declares: threads as CPUs, the config's memory and time limit, the CPU partition.
    assert set(jobs["state"]) == {"COMPLETED"}, jobs
    planned = job_counts(run.stdout + run.stderr)
    assert jobs["rule"].value_counts().to_dict() == planned
    assert {"index", "folds", "train", "predict", "ensemble", "submission"} <= set(
        planned
    )
    assert (jobs["partition"] == PARTITION).all(), jobs
    for row in jobs.itertuples():
        # Both splits' index jobs and their merge take the config's index settings.
        key = "index" if row.rule.startswith("index") else row.rule
        threads = config["threads"].get(key, 1) if row.rule != "index" else 1
        assert int(row.cpus) == threads, row
        assert row.memory == f"{job_memory_mb(config, key)}M", row
        epochs = config["debug"]["epochs"] if row.rule == "train" else None
        assert minutes(row.time_limit) == job_runtime_minutes(config, key, epochs), row
    assert job_memory_mb(config, "train") == 3000
    assert job_runtime_minutes(config, "train", 1) == 15 + 7
