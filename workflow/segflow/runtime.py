"""What every torch job sets up: seeds, threads, mixed precision, batches on the device.

Import :mod:`segflow.device` and call ``select_device`` before this module's torch
work: it may narrow CUDA_VISIBLE_DEVICES, which must happen before CUDA starts.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every generator. ``deterministic``: the same seed gives the same weights on
    the same machine (deterministic kernels, no cuDNN autotuning); off, cuDNN picks the
    fastest kernels for the shapes it meets (faster on a GPU, slightly different runs;
    the CPU's results do not change)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    # Bilinear-interpolate backward and histc have no deterministic CUDA kernel.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def global_random_state() -> dict:
    """The process's global random states (torch, CUDA, numpy, python), plain types."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "python": random.getstate(),
    }


def set_global_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or taskset limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Never more torch threads than the job has cores: Snakemake's ``threads`` (capped
    by --cores), and never more than the cores the process may run on, whoever started
    it: more threads than cores only contend for them and train slower.
    Returns the number set."""
    threads = max(1, min(threads, available_cores()))
    torch.set_num_threads(threads)
    return threads


def loader_workers(workers: int | None, threads: int, device: str) -> int:
    """DataLoader workers: as configured, else the job's other cores on a GPU, and none
    on the CPU, where the workers would take cores from the model."""
    if workers is not None:
        return workers
    return max(1, threads - 1) if device == "cuda" else 0


def bf16_supported() -> bool:
    """Native bf16 (Ampere and later): V100 and T4 only emulate it, slower than fp16."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no emulation to leave out
        return torch.cuda.is_bf16_supported()


def resolve_amp(amp: str, device: str) -> str:
    """The precision a job runs at: ``none`` on the CPU (fp16/bf16 there are slower than
    fp32); on CUDA ``auto`` is bf16 where the GPU has it natively, else fp16 (which
    training pairs with a GradScaler); an explicit choice stays."""
    if device != "cuda":
        return "none"
    if amp == "auto":
        return "bf16" if bf16_supported() else "fp16"
    return amp


def amp_autocast(device: str, amp: str):
    """A factory of autocast contexts: bf16/fp16 on CUDA; off on the CPU (fp16 is slow)."""
    dtype = (
        {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        if device == "cuda"
        else None
    )
    if dtype is None:
        return lambda: torch.autocast(device, enabled=False)
    return lambda: torch.autocast("cuda", dtype=dtype)


def to_device(images: torch.Tensor, device: str) -> torch.Tensor:
    """A batch of images on ``device``; channels_last on CUDA (faster convolutions)."""
    images = images.to(device, non_blocking=True)
    if device == "cuda":
        return images.contiguous(memory_format=torch.channels_last)
    return images
