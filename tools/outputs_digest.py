"""Digest of a run's outputs, to show that a change to the code left them unchanged.

    python tools/outputs_digest.py RESULTS_DIR > before.json
    ... change the code, run the same config again ...
    python tools/outputs_digest.py RESULTS_DIR --compare before.json

Every file under RESULTS_DIR is hashed byte for byte, except what records time or the
machine, which a rerun of the same code changes too: logs, Snakemake benchmarks, wandb
runs, live progress files, resume states; in CSV files the columns, and in JSON files
the keys, that name seconds, throughput or a time.
Those files are hashed without those parts. ``--compare`` prints the files that differ
and exits 1 if any does; ``--rename OLD=NEW`` reads OLD as NEW in the earlier digest's
paths, for a change that renames outputs on purpose.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import pandas as pd

SKIPPED_DIRS = {"logs", "benchmarks", "wandb", ".snakemake"}
SKIPPED_NAMES = {"progress.json", "resume.pt", "curves.png"}
# Column and key names that hold a duration, a rate or a clock time.
TIMING_KEY_PARTS = ("seconds", "per_s", "wall", "time", "started", "updated")


def _timing(name: str) -> bool:
    return any(part in name for part in TIMING_KEY_PARTS)


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not _timing(k)}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def file_digest(path: Path) -> str:
    if path.suffix == ".csv":
        table = pd.read_csv(path)
        table = table.drop(columns=[c for c in table.columns if _timing(str(c))])
        data = table.to_csv(index=False).encode()
    elif path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = path.read_bytes()
        else:
            data = json.dumps(_without_timing(content), sort_keys=True).encode()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def digest(results: Path) -> dict[str, str]:
    found = {}
    for path in sorted(results.rglob("*")):
        relative = path.relative_to(results)
        if not path.is_file() or set(relative.parts) & SKIPPED_DIRS:
            continue
        if path.name in SKIPPED_NAMES:
            continue
        found[str(relative)] = file_digest(path)
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--compare", type=Path, help="a digest printed before")
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="a path part renamed since the earlier digest",
    )
    args = parser.parse_args(argv)
    now = digest(args.results)
    if args.compare is None:
        json.dump(now, sys.stdout, indent=1)
        return
    before = json.loads(args.compare.read_text())
    for rename in args.rename:
        old, new = rename.split("=", 1)
        before = {name.replace(old, new): digest for name, digest in before.items()}
    out = io.StringIO()
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            state = "only before" if name not in now else "only now"
            state = "differs" if name in now and name in before else state
            print(f"{state}: {name}", file=out)
    print(out.getvalue() or f"all {len(now)} files equal", end="\n")
    sys.exit(1 if out.getvalue() else 0)


if __name__ == "__main__":
    main()
