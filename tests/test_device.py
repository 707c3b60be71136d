"""Each GPU job locks its own device (Snakemake counts GPUs but never assigns one)."""

import os

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
