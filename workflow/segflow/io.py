"""Atomic output: everything segflow writes appears under its final name only when complete.

A killed job must never leave a file that looks finished, so each writer works on a
temporary sibling (same directory, same file system) and renames it into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the suffix so writers that dispatch on it (pandas, cv2,
    matplotlib) still pick the right format.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".partial{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(
        0o666 & ~_umask()
    )  # mkstemp makes 0600; a finished output gets the usual mode
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``path`` (which may exist) if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    )
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700: teammates could not read it
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
        )


def write_table(df, path: str | os.PathLike) -> None:
    """Write a pandas table as parquet or CSV, by the file's suffix."""
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def read_table(path: str | os.PathLike):
    """A table written by :func:`write_table`, by the file's suffix."""
    import pandas as pd

    if Path(path).suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def read_ids(path: str | os.PathLike) -> list[str]:
    """An image-id sidecar file (one id per line), as written by :func:`write_ids`."""
    return Path(path).read_text().splitlines()


def write_ids(image_ids, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in image_ids))
