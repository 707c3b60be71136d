"""Live progress: a training job's, kept in its own folder while it runs; other long
steps', as lines in their logs (:class:`ProgressLine`).

After each epoch the job rewrites ``progress.json`` (its epochs so far, the planned
total, who runs it) and ``curves.png`` (loss, val mIoU and lr over the epochs so far),
as nnU-Net keeps progress.png: ``segflow.status`` reads the first for the whole run, a
user opens the second. Both are rewritten whole under a temporary name, so a reader never
sees half a file. Neither is a rule output: a rerun starts them over.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from segflow.io import write_json

PROGRESS_FILE = "progress.json"
CURVES_FILE = "curves.png"


def progress_path(job_dir: str | os.PathLike) -> Path:
    return Path(job_dir) / PROGRESS_FILE


def curves_path(job_dir: str | os.PathLike) -> Path:
    return Path(job_dir) / CURVES_FILE


@dataclass
class Progress:
    """What a training job has done so far; ``history`` holds history.csv's rows."""

    run: str
    epochs: int
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    finished: bool = False
    history: list[dict] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def latest(self) -> dict:
        return self.history[-1] if self.history else {}

    def epoch_seconds(self) -> float | None:
        """Mean seconds per finished epoch (validation included), None before the first."""
        seconds = [row["seconds"] for row in self.history]
        return sum(seconds) / len(seconds) if seconds else None

    def alive(self) -> bool | None:
        """Whether the job's process still runs: None where it cannot be told (another
        host, as on a cluster)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True


def write_progress(job_dir: str | os.PathLike, progress: Progress) -> None:
    progress.updated = time.time()
    rows = [
        {k: (None if _nan(v) else v) for k, v in row.items()}
        for row in progress.history
    ]
    write_json({**progress.__dict__, "history": rows}, progress_path(job_dir))


def read_progress(job_dir: str | os.PathLike) -> Progress | None:
    """The job's progress, or None if it never started (or wrote nothing readable)."""
    path = progress_path(job_dir)
    try:
        return Progress(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: not a segflow progress file ({e})") from e


def write_curves(job_dir: str | os.PathLike, progress: Progress) -> None:
    """curves.png: this job's curves so far (segflow.viz.training_curves_figure)."""
    from segflow.viz import save_figure, training_curves_figure

    fig = training_curves_figure({progress.run: progress.history}, progress.run)
    save_figure(fig, curves_path(job_dir))


# How often (seconds) curves.png is redrawn during a run: the figure costs about 0.2 s
# (benchmarks/progress_cost.py), a lot beside a short CPU epoch.
CURVES_EVERY_S = 20.0


class TrainingProgress:
    """A training job's live report: progress.json at the start and after every epoch,
    curves.png at most every CURVES_EVERY_S seconds and after the last epoch.
    ``history`` is the run's own list of rows, read as it grows."""

    def __init__(self, job_dir, run: str, epochs: int, history: list[dict]) -> None:
        self.job_dir = Path(job_dir)
        self.progress = Progress(run=run, epochs=epochs, history=history)
        self.curves_written = 0.0
        write_progress(self.job_dir, self.progress)

    def epoch_done(self, epoch: int) -> None:
        write_progress(self.job_dir, self.progress)
        last = epoch == self.progress.epochs
        if last or time.time() - self.curves_written > CURVES_EVERY_S:
            write_curves(self.job_dir, self.progress)
            self.curves_written = time.time()

    def finish(self) -> None:
        self.progress.finished = True
        write_progress(self.job_dir, self.progress)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


class ProgressLine:
    """A long step's progress in its log: a line at most every ``every_s`` seconds,
    and one at the end, with the count done, the rate and the time left, e.g.
    ``predict test: 240/819 images, 12.1/s, 48 s left``. Steps other than training
    wrote nothing until they ended, minutes at the reference size."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "images",
        every_s: float = 30.0,
        clock=time.monotonic,
        out=None,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.clock = clock
        self.out = out or (lambda line: print(line, flush=True))
        self.started = self.last = clock()
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        line = f"{self.what}: {self.done}/{self.total} {self.unit}, {rate:.1f}/s"
        if self.done < self.total:
            line += f", {duration((self.total - self.done) / rate)} left"
        else:
            line += f", {duration(elapsed)} in all"
        self.out(line)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
