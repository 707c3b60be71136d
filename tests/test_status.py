"""Live progress: each training job rewrites progress.json and curves.png as it goes, and
``python -m segflow.status`` reads the whole run from Snakemake's plan and those files."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import pandas as pd
import pytest

import segflow.progress
from conftest import REPO, model_params, train_fold
from segflow.progress import Progress, curves_path, read_progress, write_progress
from segflow.status import format_status, run_status, snakemake_text


def test_progress_is_rewritten_after_every_epoch(tiny_dataset, tmp_path, monkeypatch):
    """Read back from disk at every write: started (epoch 0), after each epoch, finished;
    the last holds history.csv's rows, and curves.png is a real figure."""
    snapshots = []

    def spy(job_dir, progress):
        write_progress(job_dir, progress)
        snapshots.append(read_progress(job_dir))

    monkeypatch.setattr(segflow.progress, "write_progress", spy)
    train_fold(
        tiny_dataset, tmp_path, settings=model_params(epochs=2), run_name="r0/m/f0-s0"
    )
    assert [(p.epoch, p.epochs, p.finished) for p in snapshots] == [
        (0, 2, False),
        (1, 2, False),
        (2, 2, False),
        (2, 2, True),
    ]
    assert snapshots[-1].run == "r0/m/f0-s0" and snapshots[-1].pid == os.getpid()
    history = pd.read_csv(tmp_path / "history.csv")
    final = pd.DataFrame(snapshots[-1].history)
    for column in ("epoch", "train_loss", "val_miou", "lr", "images_per_s"):
        assert final[column].tolist() == pytest.approx(history[column].tolist())
    assert snapshots[1].history[0]["val_miou"] == pytest.approx(history["val_miou"][0])
    curves = cv2.imread(str(curves_path(tmp_path)))
    assert curves is not None and curves.shape[0] > 200 and curves.shape[1] > 600


def finished_process_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def unfinish(job_dir):
    """The job's outputs gone, as while it runs or before it starts."""
    for name in (
        "model.pt",
        "history.csv",
        "metrics.json",
        "progress.json",
        "curves.png",
    ):
        (job_dir / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def mid_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run as it would stand mid-way: of model ``fpn``'s jobs, fold 0
    done, fold 1 running at epoch 2 of 3 (this process), the full fit stopped (its
    process gone) and every job of model ``unet`` waiting."""
    source, config = tiny_run
    workdir = tmp_path_factory.mktemp("status") / "run"
    shutil.copytree(source, workdir, symlinks=True)
    # Mid-way nothing after training exists yet (else Snakemake would not retrain).
    results = workdir / "results"
    for path in results.iterdir():
        if path.name not in ("data", "demo_data", "folds", "eda", "r0"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in (results / "r0").iterdir():
        if path.name != "train":
            shutil.rmtree(path)
    train_dir = workdir / "results" / "r0" / "train"
    models = sorted(p.name for p in train_dir.iterdir())
    running, stopped = (
        train_dir / models[0] / "f1-s0",
        train_dir / models[0] / "full-s0",
    )
    for job_dir in [running, stopped, *(train_dir / models[1]).iterdir()]:
        unfinish(job_dir)
    rows = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_miou": 0.1 * e,
            "lr": 1e-3,
            "images_per_s": 20.0 + e,
            "seconds": 3.0,
        }
        for e in (1, 2)
    ]
    write_progress(running, Progress(run="r0/a/f1-s0", epochs=3, history=rows))
    write_progress(
        stopped,
        Progress(run="r0/a/full-s0", epochs=1, history=[], pid=finished_process_pid()),
    )
    return workdir, models


def test_status_reads_each_jobs_state_from_the_plan_and_its_files(mid_run):
    workdir, models = mid_run
    summary, dry_run = snakemake_text(
        ["-s", str(REPO / "Snakefile"), "submission"], workdir
    )
    jobs = {job.name: job for job in run_status(summary, dry_run, workdir)}
    first, second = models
    assert set(jobs) == {f"r0/{m}/{f}-s0" for m in models for f in ("f0", "f1", "full")}
    done = jobs[f"r0/{first}/f0-s0"]
    metrics = json.loads(
        (workdir / f"results/r0/train/{first}/f0-s0/metrics.json").read_text()
    )
    assert (done.state, done.epoch, done.epochs) == ("done", 1, 1)
    assert done.val_miou == metrics["val_miou"]
    assert done.epoch_seconds == pytest.approx(metrics["seconds"])
    running = jobs[f"r0/{first}/f1-s0"]
    assert (running.state, running.epoch, running.epochs) == ("running", 2, 3)
    assert (running.val_miou, running.images_per_s) == (pytest.approx(0.2), 22.0)
    assert jobs[f"r0/{first}/full-s0"].state == "stopped"
    waiting = [jobs[f"r0/{second}/{f}-s0"] for f in ("f0", "f1", "full")]
    # The tiny run's debug sample trains 1 epoch: the dry run's commands say so.
    assert [(j.state, j.epoch, j.epochs) for j in waiting] == [("waiting", 0, 1)] * 3


def test_the_status_command_prints_progress_counts_and_time_left(mid_run):
    workdir, models = mid_run
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segflow.status",
            "--directory",
            str(workdir),
            "--",
            "-s",
            str(REPO / "Snakefile"),
            "submission",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line}
    first, second = models
    assert lines[f"r0/{first}/f1-s0"][1:] == ["running", "2/3", "0.2000", "22.0", "3s"]
    assert lines[f"r0/{first}/full-s0"][1:3] == ["stopped", "0/1"]
    assert lines[f"r0/{second}/f0-s0"][1:3] == ["waiting", "0/1"]
    assert "training jobs: 6; 1 done, 1 running, 3 waiting, 1 stopped" in done.stdout
    assert f"stopped (process gone, outputs missing): r0/{first}/full-s0" in done.stdout


def test_time_left_uses_each_jobs_own_pace_then_its_models():
    from segflow.status import TrainingJob, seconds_left

    def job(name, state, epoch, epochs, seconds, model):
        return TrainingJob(None, name, state, epoch, epochs, None, None, seconds, model)

    jobs = [
        job("a", "done", 4, 4, 10.0, "m"),
        job("b", "running", 1, 4, 6.0, "m"),
        job("c", "waiting", 0, 4, None, "m"),
        job("d", "waiting", 0, 2, None, "n"),
        job("e", "waiting", 0, None, None, "n"),
    ]
    assert [seconds_left(j, jobs) for j in jobs] == [0.0, 18.0, 32.0, 16.0, None]
    text = format_status(jobs)
    # (18 + 32 + 16) s with one job at once; the one of unknown epochs is said so.
    assert (
        "training time left: about 1m06s (1 job at once; 1 job not estimated;" in text
    )


def test_a_long_steps_log_gets_a_progress_line_at_most_every_interval_and_at_the_end():
    from segflow.progress import ProgressLine

    now, lines = [0.0], []
    progress = ProgressLine(
        "predict test.npy", 10, every_s=30, clock=lambda: now[0], out=lines.append
    )
    for t in (10, 20, 40, 50, 60, 75, 80, 85, 90, 100):
        now[0] = float(t)
        progress.update()
    # Lines at 40 s (4 done, 30 s after the start) and 75 s; the last at the end.
    assert lines == [
        "predict test.npy: 3/10 images, 0.1/s, 93 s left",
        "predict test.npy: 6/10 images, 0.1/s, 50 s left",
        "predict test.npy: 10/10 images, 0.1/s, 100 s in all",
    ]
