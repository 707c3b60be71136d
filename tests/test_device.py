"""Each GPU job locks its own device (Snakemake counts GPUs but never assigns one)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from segflow import device


def test_jobs_take_different_free_gpus_and_wait_when_all_are_busy(tmp_path):
    first = device.acquire_gpu(["0", "1"], lock_dir=tmp_path)
    second = device.acquire_gpu(["0", "1"], lock_dir=tmp_path)
    assert {first, second} == {"0", "1"}
    with pytest.raises(TimeoutError, match=r"no free GPU among \['0', '1'\]"):
        device.acquire_gpu(["0", "1"], lock_dir=tmp_path, wait_s=0)
    device._held.pop().close()  # a job ends: its lock goes with it
    assert device.acquire_gpu(["0", "1"], lock_dir=tmp_path, wait_s=0) == second
    while device._held:
        device._held.pop().close()


def test_visible_devices_narrow_to_one(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "LOCK_DIR", tmp_path)
    monkeypatch.setattr(device, "acquire_gpu", lambda ids: ids[-1])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    device.select_device()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_no_gpu_means_cpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device, "count_gpus", lambda: 0)
    assert device.select_device() == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device.select_device() == "cpu"


# A job as train and predict start one: select the device, say which, then work until
# told to stop (a file appears) or killed.
JOB = """
import os, sys, time
from pathlib import Path
from segflow.device import select_device
select_device()
Path(sys.argv[1]).write_text(os.environ["CUDA_VISIBLE_DEVICES"])
while not Path(sys.argv[2]).exists():
    time.sleep(0.05)
"""


def start_job(tmp_path, name: str, devices: str) -> tuple:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": devices,
        "SEGFLOW_GPU_LOCK_DIR": str(tmp_path / "locks"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    chosen, stop = tmp_path / f"{name}.device", tmp_path / f"{name}.stop"
    process = subprocess.Popen([sys.executable, "-c", JOB, chosen, stop], env=env)
    return process, chosen, stop


def wait_for(path, process, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"job exited with {process.returncode}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout_s} s"
        time.sleep(0.05)
    return path.read_text()


def test_concurrent_jobs_on_a_multi_gpu_node_each_take_their_own_device(tmp_path):
    """Four simulated GPUs, four jobs at once: four different devices. A fifth job waits
    until one frees: when a job ends, and when a job is killed (kill -9)."""
    devices = "0,1,2,3"
    jobs = [start_job(tmp_path, f"job{i}", devices) for i in range(4)]
    try:
        taken = [wait_for(chosen, process) for process, chosen, _ in jobs]
        assert sorted(taken) == ["0", "1", "2", "3"]

        waiting, waiting_chosen, waiting_stop = start_job(tmp_path, "job4", devices)
        jobs.append((waiting, waiting_chosen, waiting_stop))
        time.sleep(4.0)  # longer than the 2 s between its tries: it must still wait
        assert not waiting_chosen.exists()
        assert waiting.poll() is None

        ended, _, ended_stop = jobs[1]
        ended_stop.touch()  # job 1 ends normally
        ended.wait(timeout=30)
        assert wait_for(waiting_chosen, waiting) == taken[1]

        late, late_chosen, _ = start_job(tmp_path, "job5", devices)
        jobs.append((late, late_chosen, tmp_path / "job5.stop"))
        time.sleep(4.0)
        assert not late_chosen.exists()
        killed = jobs[2][0]
        killed.send_signal(signal.SIGKILL)  # job 2 dies without cleaning up
        killed.wait(timeout=30)
        assert wait_for(late_chosen, late) == taken[2]
    finally:
        for _, _, stop in jobs:
            stop.touch()
        for process, _, _ in jobs:
            try:
                process.wait(timeout=30)
            except Exception:
                process.kill()
