"""Each GPU job locks its own device (Snakemake counts GPUs but never assigns one), in a
folder of its user's own; the device and precision settings decide as documented."""

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


def test_the_lock_folder_is_each_users_own_and_private(tmp_path, monkeypatch):
    """Per user by default; made mode 700; one another user owns, one others may write
    to, or a link in its place is refused with what to do."""
    assert str(os.getuid()) in device.default_lock_dir().name
    made = device.private_lock_dir(tmp_path / "locks")
    assert (made.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(device.LockDirError, match=r"writable by others.*chmod 700"):
        device.private_lock_dir(shared)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(device.LockDirError, match="not a folder"):
        device.private_lock_dir(link)
    me = os.getuid()
    monkeypatch.setattr(device.os, "getuid", lambda: me + 1)
    with pytest.raises(device.LockDirError, match="SEGFLOW_GPU_LOCK_DIR"):
        device.private_lock_dir(made)


def test_a_lock_file_planted_as_a_link_is_not_followed(tmp_path):
    """A link named like a lock file would make the job write its pid into the file it
    points to: it is refused, and the target stays as it was."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    locks = device.private_lock_dir(tmp_path / "locks")
    (locks / "gpu0.lock").symlink_to(victim)
    with pytest.raises(OSError):
        device.acquire_gpu(["0"], lock_dir=locks, wait_s=0)
    assert victim.read_text() == "precious\n"


def test_a_waiting_job_leaves_the_holders_pid_in_the_lock_file(tmp_path):
    locks = tmp_path / "locks"
    device.acquire_gpu(["0"], lock_dir=locks)
    with pytest.raises(TimeoutError):
        device.acquire_gpu(["0"], lock_dir=locks, wait_s=0)
    assert (locks / "gpu0.lock").read_text() == f"{os.getpid()}\n"
    while device._held:
        device._held.pop().close()


def test_device_cuda_without_a_gpu_fails_with_the_fix(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device, "count_gpus", lambda: 0)
    with pytest.raises(device.NoGpuError, match=r"sees no GPU.*device: auto"):
        device.select_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # visible, but torch finds none
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    with pytest.raises(device.NoGpuError, match="CUDA_VISIBLE_DEVICES='0'"):
        device.select_device("cuda")
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    assert device.select_device("cuda") == "cuda"
    assert device.select_device("auto") == "cuda"
    assert device.select_device("cpu") == "cpu"


@pytest.mark.parametrize(
    "amp, device_name, native_bf16, expected",
    [
        ("auto", "cuda", True, "bf16"),  # A100, H100
        ("auto", "cuda", False, "fp16"),  # V100, T4: bf16 only emulated
        ("bf16", "cuda", False, "bf16"),  # an explicit choice stays
        ("fp16", "cuda", True, "fp16"),
        ("none", "cuda", True, "none"),
        ("auto", "cpu", True, "none"),  # the CPU runs fp32
        ("bf16", "cpu", True, "none"),
    ],
)
def test_amp_auto_takes_bf16_only_where_the_gpu_has_it(
    monkeypatch, amp, device_name, native_bf16, expected
):
    from segflow import runtime

    monkeypatch.setattr(runtime, "bf16_supported", lambda: native_bf16)
    assert runtime.resolve_amp(amp, device_name) == expected


def test_the_deterministic_setting_switches_kernels_and_cudnn_autotuning():
    import torch

    from segflow.runtime import seed_everything

    try:
        seed_everything(0, deterministic=False)
        assert torch.backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
        seed_everything(0)
        assert not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        seed_everything(0)


def test_a_training_job_with_device_cuda_and_no_gpu_stops_in_one_line(
    tiny_dataset, tmp_path, monkeypatch
):
    import json

    from conftest import CLASSES, model_params
    from segflow import train

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device, "count_gpus", lambda: 0)
    out = tmp_path / "job"
    argv = ["--settings", json.dumps(model_params(device="cuda").to_dict())]
    argv += ["--images", str(tiny_dataset["images"])]
    argv += ["--folds", str(tiny_dataset["folds"])]
    argv += ["--masks-dir", str(tiny_dataset["masks"])]
    argv += [
        "--image-root",
        str(tiny_dataset["root"]),
        "--classes",
        json.dumps(CLASSES),
    ]
    argv += ["--fold", "f0", "--seed", "0", "--threads", "1", "--name", "fpn/f0-s0"]
    argv += ["--wandb", json.dumps({"mode": "disabled", "project": "p", "dir": "w"})]
    for name in ("model.pt", "history.csv", "metrics.json"):
        argv += [f"--{name.split('.')[0]}-out", str(out / name)]
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert str(stop.value).startswith("ERROR: device: cuda, but this job sees no GPU")
    assert "\n" not in str(stop.value)
    assert not out.exists()
