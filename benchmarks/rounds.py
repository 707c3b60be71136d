"""What each later-round stage buys on the demo: r0 only, cleaning only, pseudo only, both.

    snakemake                                      # the default run in the base folder first
    python benchmarks/rounds.py --base . --work /tmp/rounds

Each variant is a copy of ``--base`` (file times kept, so Snakemake reuses r0 as it is)
run with ``clean.enabled`` / ``pseudo.enabled`` switched, every other setting as in the
base config. Each run writes results/demo/rounds.json (the demo test mIoU of every
round's own ensemble against the hidden test labels); this script collects them into
``--out`` (default: <base>/results/demo/rounds_variants.json) and prints a table with the
wall time of each variant. Runs one variant after another: on a 2-core CPU each takes
about as long as the base run's round r1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from math import nan
from pathlib import Path

import yaml

VARIANTS = {
    "r0 only": {"clean": {"enabled": False}, "pseudo": {"enabled": False}},
    "clean only": {"clean": {"enabled": True}, "pseudo": {"enabled": False}},
    "pseudo only": {"clean": {"enabled": False}, "pseudo": {"enabled": True}},
    "clean + pseudo": {"clean": {"enabled": True}, "pseudo": {"enabled": True}},
}


# What follows round r0: removed from each variant's copy, so it is made again.
LATER_OUTPUTS = [
    "clean",
    "pseudo",
    "r1",
    "r2",
    "submission",
    "demo/rounds.json",
    "demo/rounds.png",
    "demo/score.json",
    "demo/noise_detection.json",
]


def run_variant(base: Path, work: Path, name: str, switches: dict, cores: int) -> dict:
    workdir = work / name.replace(" ", "_").replace("+", "and")
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(
        base, workdir, symlinks=True, ignore=shutil.ignore_patterns(".venv", ".git")
    )
    # Round r0 is kept as the base run made it; everything after it is made again by
    # this variant's settings. Only file times decide what reruns (--rerun-triggers
    # mtime), so a base run made by an older segflow, whose settings record fewer keys,
    # is still reused as it is.
    for later in LATER_OUTPUTS:
        path = workdir / "results" / later
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for section, values in switches.items():
        config[section] = {**config.get(section, {}), **values}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakefile = Path(__file__).resolve().parents[1] / "Snakefile"
    started = time.perf_counter()
    targets = ["results/demo/rounds.json", "results/demo/score.json"] + (
        ["results/demo/noise_detection.json"] if config["clean"]["enabled"] else []
    )
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--cores",
        str(cores),
        "--resources",
        "gpu=1",
        "--rerun-triggers",
        "mtime",
        "--",
        *targets,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"variant {name!r} failed:\n{result.stderr[-3000:]}")
    rounds = json.loads((workdir / "results" / "demo" / "rounds.json").read_text())
    out = {
        "seconds": round(seconds, 1),
        "rounds": {
            r: {"test_miou": v["test_miou"], "oof_miou": v["oof_miou"]}
            for r, v in rounds.items()
        },
    }
    detection = workdir / "results" / "demo" / "noise_detection.json"
    if detection.exists():
        out["noise_detection_images"] = json.loads(detection.read_text())["images"][
            "all"
        ]
    pseudo = workdir / "results" / "pseudo" / "r1" / "summary.json"
    if pseudo.exists():
        summary = json.loads(pseudo.read_text())
        out["pseudo_kept_images"] = f"{summary['kept_images']}/{summary['test_images']}"
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", default=".", help="workflow folder whose round r0 is done"
    )
    parser.add_argument("--work", required=True, help="where the variants' copies go")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS)
    )
    args = parser.parse_args(argv)
    base = Path(args.base).resolve()
    base_rounds = json.loads((base / "results" / "demo" / "rounds.json").read_text())
    table = {"base run": {"rounds": base_rounds}}
    for name in args.variants:
        table[name] = run_variant(
            base, Path(args.work), name, VARIANTS[name], args.cores
        )
        print(f"{name:16s} {json.dumps(table[name])}", flush=True)
    out = (
        Path(args.out)
        if args.out
        else base / "results" / "demo" / "rounds_variants.json"
    )
    out.write_text(json.dumps(table, indent=2) + "\n")
    header = ("r0 test mIoU", "r1 test mIoU", "r1 OOF mIoU")
    print(f"\n{'variant':20s} " + " ".join(f"{h:>12s}" for h in header) + "  seconds")
    for name, row in table.items():
        r0, r1 = row["rounds"]["r0"], row["rounds"].get("r1", {})
        values = (r0["test_miou"], r1.get("test_miou", nan), r1.get("oof_miou", nan))
        cells = " ".join(f"{v:12.4f}" for v in values)
        print(f"{name:20s} {cells} {row.get('seconds', 0):8.0f}")


if __name__ == "__main__":
    main()
