"""Checkpoints: a plain state_dict plus the settings that rebuild the model.

``torch.load(weights_only=True)`` reads them, so they hold plain types only (no numpy
scalars, no Path). The model is rebuilt from the saved settings with
``encoder_weights=None``: the weights come from the checkpoint, never from a hub.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from segflow.io import atomic_path
from segflow.models import create_model
from segflow.settings import ModelSettings


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    settings: ModelSettings,
    classes: list[str],
    fold: int | None,
    seed: int,
    epoch: int,
    val_miou: float | None,
    input_size: tuple[int, int] | None,
) -> None:
    """Write the checkpoint atomically; identical runs give identical bytes.
    ``input_size``: the (height, width) the model saw its images at (None: as they
    are), which prediction reads back instead of deriving it again."""
    checkpoint = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "config": settings.to_dict(),
        "input_size": None if input_size is None else [int(v) for v in input_size],
        "classes": list(classes),
        "fold": None if fold is None else int(fold),  # None: the full fit
        "seed": int(seed),
        "epoch": int(epoch),
        "val_miou": None if val_miou is None else float(val_miou),
    }
    # torch.save(obj, path) records the file's name inside the archive: saving to the
    # temporary name would make identical checkpoints differ. A buffer has no name.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated by a kill or a full disk...)."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path``, on the CPU.

    An unreadable file is removed before CheckpointError names it: it is a training
    job's output, and Snakemake retrains only what is missing, so a corrupt file left in
    place would fail every job that reads it, run after run.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError("no state_dict in it")
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError...
        path.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); removed it:"
            " the next run retrains it"
        ) from None
    return checkpoint


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict of a checkpoint, on the CPU (a warm start loads it)."""
    return read_checkpoint(path)["state_dict"]


def trained_input_size(checkpoint: dict) -> tuple[int, int] | None:
    """The (height, width) the checkpoint's model saw its images at, None for "as they
    are". (A checkpoint from before the side was stored has older settings too, which
    load_checkpoint already refuses: its training job reruns.)"""
    size = checkpoint["input_size"]
    return None if size is None else (int(size[0]), int(size[1]))


def load_checkpoint(
    path: str | Path, device: str = "cpu"
) -> tuple[torch.nn.Module, dict, ModelSettings]:
    """(model in eval mode on ``device``, the checkpoint dict, its model settings)."""
    checkpoint = read_checkpoint(path)
    settings = ModelSettings.from_dict(checkpoint["config"], f"{path}: config")
    model = create_model(
        settings.arch,
        settings.encoder,
        len(checkpoint["classes"]),
        None,
        settings.model_args,
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint, settings


# A training job's resumable state, beside its outputs: written after every epoch, read
# when the job is rerun after a kill, deleted once the job's outputs are written.
RESUME_FILE = "resume.pt"


def save_training_state(path: str | Path, state: dict) -> None:
    """Write ``state`` (plain types and tensors only) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_training_state(path: str | Path, fingerprint: str) -> dict | None:
    """The state saved at ``path`` if it is this job's (same ``fingerprint``: settings,
    fold, seed, images and inputs), else None: a state of other settings or other data is
    never resumed from."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a kill while it was renamed into place, a full disk...
        print(f"{path}: unreadable ({type(e).__name__}); starting over", flush=True)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        print(
            f"{path}: saved by another version of this job; starting over", flush=True
        )
        return None
    return state
