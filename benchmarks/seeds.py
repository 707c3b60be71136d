"""Does the pipeline pay for itself? The default run against both baselines, per seed.

    python benchmarks/seeds.py --work /tmp/seeds                # seeds 0 1 2, config.yaml
    python benchmarks/seeds.py --work /tmp/seeds --seeds 0 --cores 2

For each seed, a work folder gets ``--config`` with ``cv.seeds: [seed]`` (the demo data
stay the same: ``demo.seed`` is not touched) and runs, one after the other:

1. ``snakemake`` (the default target, timed: the wall time of the README's main job),
2. ``snakemake baselines``: baseline (a), the first model's recipe on all labelled
   images (round r0's full fit, already trained by step 1), and baseline (b), the same
   compute-matched to every training job of step 1.

It prints, per seed and as mean +- standard deviation over the seeds, the demo test mIoU
of (a), (b), every round's ensemble and the submission, the wall time of the default
run and the per-rule seconds from its benchmark files, and writes them to ``--out``
(default: <work>/seeds.json).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, cores: int, *targets: str) -> float:
    """Run Snakemake on the repo's Snakefile in ``workdir``; wall seconds."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["-d", str(workdir), "--cores", str(cores), *targets]
    started = time.perf_counter()
    with open(workdir / "snakemake.log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def rule_seconds(results: Path) -> dict[str, float]:
    """Seconds per rule, summed over its jobs' benchmark files (results/benchmarks)."""
    seconds: dict[str, float] = defaultdict(float)
    for path in (results / "benchmarks").rglob("*.tsv"):
        parts = path.relative_to(results / "benchmarks").parts
        rule = next((p for p in parts[:-1] if not re.fullmatch(r"r\d+", p)), None)
        rule = rule or path.stem  # results/benchmarks/<rule>.tsv or r<n>/<rule>.tsv
        if parts[0] == "matched":
            continue  # baseline (b), not part of the default run
        seconds[rule] += float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def run_seed(config: dict, seed: int, work: Path, cores: int) -> dict:
    workdir = work / f"seed{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(config))
    config["cv"]["seeds"] = [seed]
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    wall = snakemake(workdir, cores)
    snakemake(workdir, cores, "baselines")
    results = workdir / "results"
    rounds = json.loads((results / "demo" / "rounds.json").read_text())
    baselines = json.loads((results / "demo" / "baselines.json").read_text())
    score = json.loads((results / "demo" / "score.json").read_text())
    row = {
        "seed": seed,
        "baseline (a)": baselines[f"recipe/s{seed}"]["test_miou"],
        "baseline (b)": baselines[f"matched/s{seed}"]["test_miou"],
    }
    row |= {f"{r} ensemble": v["test_miou"] for r, v in rounds.items() if r[0] == "r"}
    row["submission"] = score["test_miou"]
    row["wall_s"] = wall
    return {
        "row": row,
        "per_class_iou": score["per_class_iou"],
        "oof": {r: v["oof_miou"] for r, v in rounds.items() if r[0] == "r"},
        "rule_seconds": rule_seconds(results),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--work", required=True, help="one folder per seed goes here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--out", help="JSON of the results (default: <work>/seeds.json)"
    )
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    work = Path(args.work)
    runs = [run_seed(config, seed, work, args.cores) for seed in args.seeds]

    table = pd.DataFrame([run["row"] for run in runs]).set_index("seed")
    summary = table.agg(["mean", "std"]) if len(table) > 1 else table.agg(["mean"])
    print(pd.concat([table, summary]).round(4).to_string())
    gain = table["submission"] - table["baseline (a)"]
    print(
        f"\nsubmission - (a): {gain.mean():+.4f} mean,"
        f" {statistics.stdev(gain) if len(gain) > 1 else 0:.4f} sd, worst {gain.min():+.4f}"
    )
    for run in runs:
        seconds = ", ".join(f"{k} {v:.0f}" for k, v in run["rule_seconds"].items())
        print(
            f"seed {run['row']['seed']}: wall {run['row']['wall_s']:.0f} s; {seconds}"
        )
    out = Path(args.out or work / "seeds.json")
    out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
