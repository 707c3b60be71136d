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
import subprocess
import tempfile
import time
from pathlib import Path

LOCK_DIR = Path(
    os.environ.get(
        "SEGFLOW_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "segflow-gpu-locks"
    )
)
_held = []  # open lock files of this process: keep them open until exit


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
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for device_id in device_ids:
            handle = open(lock_dir / f"gpu{device_id}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _held.append(handle)
            return device_id
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no free GPU among {device_ids} after {wait_s:.0f} s (locks in {lock_dir})"
            )
        time.sleep(2.0)


def select_device(prefer: str = "auto") -> str:
    """ "cuda" (one locked GPU, made the only visible one) or "cpu". Call before any CUDA use.

    The candidates are CUDA_VISIBLE_DEVICES when set (by SLURM or the user), else every GPU
    of the machine; with more than one, the job locks one and narrows the variable to it.
    """
    if prefer == "cpu":
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    candidates = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible is not None
        else [str(i) for i in range(count_gpus())]
    )
    if not candidates:
        return "cpu"
    if len(candidates) > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = acquire_gpu(candidates)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
