"""Where the whole run stands: ``python -m segflow.status [-- snakemake arguments]``.

Run it from the project folder while ``snakemake`` works (or before, or after). Which
training jobs the run has, and which are done, come from Snakemake itself: its summary
(``--summary``, every output of the targets and whether it is up to date) and its dry run
(the planned jobs' commands, which hold their epochs). Both read the files only
(``--nolock``), so they do not disturb the running workflow. How far each job has come
comes from the progress.json each training job rewrites after every epoch
(segflow.progress); a finished job's numbers from its metrics.json.

For each training job: done, running, waiting or stopped (its process is gone), the epoch
out of its total, its latest val mIoU and images/s, and the time it has left; then the
counts and an estimate of the training time left for the whole run. The estimate takes
each job's own seconds per epoch, and for a job that has not started the mean of the same
model's jobs so far; it counts training only (prediction and ensembling come on top).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from segflow.progress import read_progress

TRAIN_RULE = "train"


@dataclass
class TrainingJob:
    """One training job of the run: its folder (round/train/model/fold-seed) and state."""

    job_dir: Path
    name: str
    state: str  # done | running | waiting | stopped
    epoch: int
    epochs: int | None
    val_miou: float | None
    images_per_s: float | None
    epoch_seconds: float | None
    model: str

    @property
    def epochs_left(self) -> int | None:
        if self.state == "done":
            return 0
        return None if self.epochs is None else self.epochs - self.epoch


def snakemake_text(args: list[str], directory: Path) -> tuple[str, str]:
    """(summary, dry run) of ``snakemake <args>`` in ``directory``, read-only."""

    def run(*extra: str) -> str:
        command = [sys.executable, "-m", "snakemake", "--nolock", *extra, *args]
        done = subprocess.run(
            command, cwd=directory, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"`{shlex.join(command)}` in {directory} failed:\n{done.stderr[-2000:]}"
            )
        return done.stdout

    return run("--summary"), run("--dry-run", "--printshellcmds")


def training_jobs_in_summary(summary: str) -> dict[Path, bool]:
    """Each training job's folder -> whether it is up to date (``--summary``'s rows)."""
    lines = summary.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("output_file\t")), None
    )
    if start is None:
        raise ValueError("snakemake --summary printed no table")
    header = lines[start].split("\t")
    column = {name: k for k, name in enumerate(header)}
    jobs: dict[Path, bool] = {}
    for line in lines[start + 1 :]:
        cells = line.split("\t")
        if len(cells) != len(header) or cells[column["rule"]] != TRAIN_RULE:
            continue
        job_dir = Path(cells[column["output_file"]]).parent
        up_to_date = cells[column["plan"]] == "no update"
        jobs[job_dir] = jobs.get(job_dir, True) and up_to_date
    return jobs


def planned_epochs(dry_run: str) -> dict[Path, int | None]:
    """Each planned training job's folder -> its epochs, from the dry run's commands
    (None where the job chooses them itself: the compute-matched baseline)."""
    epochs: dict[Path, int | None] = {}
    for line in dry_run.splitlines():
        command = line.removeprefix("Shell command:").strip()
        if not command.startswith("python -m segflow.train "):
            continue
        words = shlex.split(command.split(" > ")[0])
        option = dict(zip(words, words[1:]))
        job_dir = Path(option["--model-out"]).parent
        settings = json.loads(option["--settings"])
        matched = "--match-presentations" in words
        epochs[job_dir] = None if matched else int(settings["epochs"])
    return epochs


def read_job(job_dir: Path, up_to_date: bool, epochs: int | None) -> TrainingJob:
    """One job's state from its files (paths relative to the run's folder)."""
    round_, _, model, fold_seed = job_dir.parts[-4:]
    name = f"{round_}/{model}/{fold_seed}"
    progress = read_progress(job_dir)
    metrics_path = job_dir / "metrics.json"
    if up_to_date:  # (its files may be gone where nothing downstream needs them again)
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        trained = metrics.get("epochs", 0)
        return TrainingJob(
            job_dir,
            name,
            "done",
            trained,
            metrics.get("epochs", epochs),
            metrics.get("val_miou"),
            metrics.get("train_images_per_s"),
            metrics["seconds"] / trained if trained else None,
            model,
        )
    if progress is None or progress.finished:  # a finished one is stale: to rerun
        return TrainingJob(job_dir, name, "waiting", 0, epochs, None, None, None, model)
    latest = progress.latest
    alive = progress.alive()
    return TrainingJob(
        job_dir,
        name,
        "stopped" if alive is False else "running",
        progress.epoch,
        progress.epochs,
        latest.get("val_miou"),
        latest.get("images_per_s"),
        progress.epoch_seconds(),
        model,
    )


def run_status(summary: str, dry_run: str, directory: Path) -> list[TrainingJob]:
    planned = planned_epochs(dry_run)
    return [
        read_job(directory / job_dir, up_to_date, planned.get(job_dir))
        for job_dir, up_to_date in sorted(training_jobs_in_summary(summary).items())
    ]


def seconds_left(job: TrainingJob, jobs: list[TrainingJob]) -> float | None:
    """The job's training time left: its epochs left x its seconds per epoch (for a job
    without a finished epoch yet, the mean of the same model's jobs, then of all)."""
    if job.epochs_left is None:
        return None
    if job.epochs_left == 0:
        return 0.0
    per_epoch = job.epoch_seconds
    for peers in (
        [j for j in jobs if j.model == job.model and j.epoch_seconds],
        [j for j in jobs if j.epoch_seconds],
    ):
        if per_epoch is None and peers:
            per_epoch = sum(j.epoch_seconds for j in peers) / len(peers)
    return None if per_epoch is None else job.epochs_left * per_epoch


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_status(jobs: list[TrainingJob]) -> str:
    """The table and the totals that ``python -m segflow.status`` prints."""
    if not jobs:
        return "no training jobs in this run's targets"
    rows = [("job", "state", "epoch", "val mIoU", "img/s", "left")]
    lefts = []
    for job in jobs:
        left = seconds_left(job, jobs)
        lefts.append(left)
        rows.append(
            (
                job.name,
                job.state,
                f"{job.epoch}/{job.epochs if job.epochs is not None else '?'}",
                "-" if job.val_miou is None else f"{job.val_miou:.4f}",
                "-" if job.images_per_s is None else f"{job.images_per_s:.1f}",
                "-" if job.state == "done" else format_duration(left),
            )
        )
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    counts = {
        state: sum(job.state == state for job in jobs)
        for state in ("done", "running", "waiting", "stopped")
    }
    lines.append("")
    lines.append(
        f"training jobs: {len(jobs)}; "
        + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    )
    pending = [left for job, left in zip(jobs, lefts) if job.state != "done"]
    if pending:
        parallel = max(1, counts["running"])
        unknown = sum(left is None for left in pending)
        total = sum(left for left in pending if left is not None) / parallel
        estimate = (
            "not known before a job finishes its first epoch"
            if unknown == len(pending)
            else f"about {format_duration(total)}"
        )
        lines.append(
            f"training time left: {estimate}"
            f" ({parallel} job{'s' if parallel > 1 else ''} at once"
            + (
                f"; {unknown} job{'s' if unknown > 1 else ''} not estimated"
                if unknown
                else ""
            )
            + "; prediction and ensembling come on top)"
        )
    stopped = [job.name for job in jobs if job.state == "stopped"]
    if stopped:
        lines.append(
            "stopped (process gone, outputs missing): "
            + ", ".join(stopped)
            + "; rerun snakemake to continue"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Where the whole run stands: every training job's progress.",
        epilog="Arguments after -- go to snakemake as they would for the run "
        "(targets, --configfile ...); the default is the submission.",
    )
    parser.add_argument(
        "--directory", default=".", help="the project folder (default: here)"
    )
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="print again every SECONDS until interrupted",
    )
    parser.add_argument("snakemake_args", nargs="*", help="after --: for snakemake")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    snakemake_args = args.snakemake_args or ["submission"]
    while True:
        try:
            summary, dry_run = snakemake_text(snakemake_args, directory)
            text = format_status(run_status(summary, dry_run, directory))
        except (RuntimeError, ValueError) as e:
            sys.exit(f"ERROR: {e}")
        if args.watch is None:
            print(text)
            return
        print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + text, flush=True)
        time.sleep(args.watch)


if __name__ == "__main__":
    main()
