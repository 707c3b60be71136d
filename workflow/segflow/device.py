"""Which device a job runs on, chosen before CUDA starts.

Snakemake counts the ``gpu`` resource but never assigns a device: with --resources
gpu=2, two training jobs would both land on GPU 0. So each job takes a free GPU itself:
it holds an exclusive lock file per device (fcntl.flock, released by the OS when the
job ends, even if it is killed) and sets CUDA_VISIBLE_DEVICES to that device before
torch initialises CUDA. Where CUDA_VISIBLE_DEVICES already names devices (SLURM, the
user), the job chooses among those.
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path


def default_lock_dir() -> Path:
    """One folder per user: a shared folder under /tmp would belong to whoever made it
    first, and a second user of the node would meet a permission error. The jobs of one
    user share the node's GPUs through it; other users' jobs are the scheduler's care."""
    return Path(tempfile.gettempdir()) / f"segflow-gpu-locks-{os.getuid()}"


LOCK_DIR = Path(os.environ.get("SEGFLOW_GPU_LOCK_DIR", default_lock_dir()))
_held = []  # open lock files of this process: keep them open until exit


class DeviceError(RuntimeError):
    """The job cannot have the device its settings ask for; the message says why."""


class LockDirError(DeviceError):
    pass


def private_lock_dir(lock_dir: Path) -> Path:
    """``lock_dir`` made (mode 700) or checked: a real folder, not a link, owned by this
    user and writable by nobody else, so no other user can plant a link to a file of
    ours in it or hold our locks."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(lock_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise LockDirError(f"GPU lock folder {lock_dir} is not a folder (a link?)")
    if info.st_uid != os.getuid():
        raise LockDirError(
            f"GPU lock folder {lock_dir} belongs to user id {info.st_uid}, not to you"
            f" ({os.getuid()}): set SEGFLOW_GPU_LOCK_DIR to a folder of your own"
        )
    if info.st_mode & 0o022:
        raise LockDirError(
            f"GPU lock folder {lock_dir} is writable by others"
            f" (mode {stat.S_IMODE(info.st_mode):o}): chmod 700 it"
        )
    return lock_dir


def open_lock_file(path: Path):
    """The lock file, opened without following a link (O_NOFOLLOW) and never truncated
    before it is locked: a job that waits must not erase the holder's pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "r+")


def count_gpus() -> int:
    """GPUs on this machine, without initialising CUDA in this process."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def acquire_gpu(
    device_ids: list[str], lock_dir: Path = LOCK_DIR, wait_s: float = 3600.0
) -> str:
    """Lock and return a free device among ``device_ids``; wait while all are busy."""
    private_lock_dir(lock_dir)
    deadline = time.monotonic() + wait_s
    while True:
        for device_id in device_ids:
            handle = open_lock_file(lock_dir / f"gpu{device_id}.lock")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held.append(handle)
            return device_id
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no free GPU among {device_ids} after {wait_s:.0f} s (locks in {lock_dir})"
            )
        time.sleep(2.0)


class NoGpuError(DeviceError):
    pass


def select_device(prefer: str = "auto") -> str:
    """ "cuda" (one locked GPU, made the only visible one) or "cpu". Call before any CUDA use.

    ``prefer``: ``auto`` takes a GPU where there is one, else the CPU; ``cpu`` never
    takes one; ``cuda`` fails without one rather than train for days on the CPU of a
    node whose GPU the job cannot see. The candidates are CUDA_VISIBLE_DEVICES when set
    (by SLURM or the user), else every GPU of the machine; with more than one, the job
    locks one and narrows the variable to it.
    """
    if prefer == "cpu":
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    candidates = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible is not None
        else [str(i) for i in range(count_gpus())]
    )
    if len(candidates) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = acquire_gpu(candidates)
    found = bool(candidates) and cuda_available()
    if prefer == "cuda" and not found:
        raise NoGpuError(
            "device: cuda, but this job sees no GPU"
            f" (CUDA_VISIBLE_DEVICES={visible!r}, nvidia-smi lists {count_gpus()},"
            " torch.cuda.is_available() is False): run it where a GPU is visible"
            " (SLURM: --gres=gpu:1), or set device: auto to allow the CPU"
        )
    return "cuda" if found else "cpu"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
