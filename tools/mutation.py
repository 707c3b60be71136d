"""Mutation testing of the modules that compute or combine scores, with mutmut.

    python tools/mutation.py [--work /tmp/segflow-mutation] [--max-children 2]

What is mutated and which tests judge it is configured once, in pyproject.toml's
``[tool.mutmut]``: ``only_mutate`` (the modules, by their path in this repository) and
``pytest_add_cli_args_test_selection`` (the fast test files of those modules). mutmut
names a module by its path under ``./`` or ``src/`` and segflow's package lives under
``workflow/``, so this script runs mutmut in a staged copy where ``workflow/`` is
``src/`` (schemas and templates move with it; nothing else changes), then prints the
killed share per module and writes it, with the surviving mutants (``--diffs``: their
diffs), to ``<work>/mutation.json``. Each module's command line (``main``) and figures
(``*_figure``) are counted apart: argument plumbing and drawing, run by the workflow
tests, which are too slow to judge mutants. Two shares of the rest: over the mutants
the selected tests reach (a timeout is not a kill), and over every mutant run, where a
mutant in code no fast test runs counts as a survivor. The target is at least 80% per
module on the first; docs/mutation.md has the last scores and the survivors judged
harmless, with the reason.

Not in CI: a full run takes hours on 2 cores (each mutant of a function that many tests
reach runs those tests). ``--sample N`` judges a uniform random sample of N mutants per
module instead (seeded, ``--seed``; mutants outside ``main`` and the figures only): the
killed share of the sample estimates the module's, within about 4 points at N = 70.
``--keep`` goes on in an earlier ``--work`` folder: mutants already judged there count
and are not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = "workflow/"  # where the repository keeps segflow ...
STAGED_ROOT = "src/"  # ... and where mutmut looks for it
TARGET = 0.8
SAMPLE_FILE = "sample.json"  # the sampled mutants' names (--sample)


def staged(path: str) -> str:
    if not path.startswith(PACKAGE_ROOT):
        sys.exit(f"ERROR: [tool.mutmut] path {path!r} is not under {PACKAGE_ROOT}")
    return STAGED_ROOT + path[len(PACKAGE_ROOT) :]


def toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def stage(work: Path, config: dict) -> None:
    """A copy of the repository where workflow/ is src/, with mutmut's staged config."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(
        REPO / "workflow",
        work / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "rules"),
    )
    shutil.copytree(
        REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(REPO / "config.yaml", work / "config.yaml")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    mutmut = dict(config)
    mutmut["source_paths"] = ["src/"]
    mutmut["only_mutate"] = [staged(p) for p in config["only_mutate"]]
    mutmut["also_copy"] = ["config.yaml"]
    lines = ["[tool.pytest.ini_options]"]
    for key, value in pyproject["tool"]["pytest"]["ini_options"].items():
        lines.append(f"{key} = {toml_value(value)}")
    lines.append("\n[tool.mutmut]")
    lines += [f"{key} = {toml_value(value)}" for key, value in mutmut.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")


def module_of(meta_path: Path, mutants: Path) -> str:
    relative = meta_path.relative_to(mutants).as_posix()[: -len(".meta")]
    return PACKAGE_ROOT + relative[len(STAGED_ROOT) :]


def function_of(mutant: str) -> str:
    """``segflow.ensemble.x_tune_bias__mutmut_3`` -> ``tune_bias``."""
    return mutant.split("__mutmut_")[0].rsplit(".", 1)[-1].removeprefix("x_")


def set_apart(function: str) -> bool:
    return function == "main" or function.endswith("_figure")


def results(work: Path) -> dict:
    """Per module: mutant counts by status and the killed shares; survivors' names.

    The command line (``main``: argument plumbing) and the figures (``*_figure``:
    drawing) are counted apart and left out of both shares: the workflow and report
    tests run them, and they are too slow to judge mutants.
    """
    from mutmut.stats import status_by_exit_code

    mutants = work / "mutants"
    sample_path = work / SAMPLE_FILE
    sample = set(json.loads(sample_path.read_text())) if sample_path.exists() else None
    report = {}
    for meta_path in sorted(mutants.rglob("*.py.meta")):
        meta = json.loads(meta_path.read_text())
        statuses = {
            key: status_by_exit_code[code]
            for key, code in meta["exit_code_by_key"].items()
            if not set_apart(function_of(key))
        }
        every_one_judged = all(s != "not checked" for s in statuses.values())
        # A module judged in part is scored on its uniform sample only: the mutants
        # mutmut runs first are those with the fastest tests, not a fair sample.
        sampled = sample is not None and not every_one_judged
        judged = {k: s for k, s in statuses.items() if not sampled or k in sample}
        counts = Counter(judged.values())
        run = sum(n for status, n in counts.items() if status != "not checked")
        reached = run - counts["no tests"]
        report[module_of(meta_path, mutants)] = {
            "mutants": len(statuses),
            "scored_on": "sample" if sampled else "all",
            "set_apart": len(meta["exit_code_by_key"]) - len(statuses),
            "statuses": dict(counts),
            "killed_share": counts["killed"] / reached if reached else None,
            "killed_share_of_all": counts["killed"] / run if run else None,
            "survived": sorted(
                k for k, s in judged.items() if s not in ("killed", "not checked")
            ),
        }
    return report


def sample_unjudged(work: Path, size: int, seed: int) -> list[str]:
    """A seeded uniform sample of ``size`` mutants per module (``main`` and figures
    apart), less those judged already."""
    import random

    names, sample = [], []
    for meta_path in sorted((work / "mutants").rglob("*.py.meta")):
        meta = json.loads(meta_path.read_text())
        keys = sorted(
            k for k in meta["exit_code_by_key"] if not set_apart(function_of(k))
        )
        chosen = random.Random(f"{seed}:{meta_path.name}").sample(
            keys, min(size, len(keys))
        )
        sample += chosen
        names += [k for k in chosen if meta["exit_code_by_key"][k] is None]
    (work / SAMPLE_FILE).write_text(json.dumps(sample))
    return names


def diff(work: Path, name: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name],
        cwd=work,
        capture_output=True,
        text=True,
    )
    return shown.stdout


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/segflow-mutation"))
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--report-only", action="store_true", help="summarise the last run in --work"
    )
    parser.add_argument(
        "--modules",
        nargs="+",
        metavar="MODULE",
        help="only these modules of only_mutate (e.g. metrics fold_data): one module's "
        "score after a change, in minutes instead of the whole run's hour",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="judge a random sample of N mutants per module (not every mutant)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the sample")
    parser.add_argument(
        "--tests",
        nargs="+",
        metavar="FILE",
        help="judge with these test files instead of the configured selection (a"
        " module's own tests: mutants of a function that every training test reaches"
        " would otherwise each run them all)",
    )
    parser.add_argument(
        "--deselect",
        nargs="+",
        default=[],
        metavar="TEST",
        help="leave these tests out (node ids): a test that starts a training process"
        " cannot run the mutated module outside mutmut's runner",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="go on in --work: keep the mutants judged there (same code and config)",
    )
    parser.add_argument(
        "--timeout-multiplier",
        type=float,
        metavar="X",
        help="a mutant's tests may take X times their measured CPU time (plus the"
        " configured constant) before it counts as a timeout, not a kill: raise it to"
        " judge the mutants a 3x limit left undecided",
    )
    parser.add_argument(
        "--diffs",
        action="store_true",
        help="add every survivor's diff to mutation.json (one mutmut call each: slow)",
    )
    args = parser.parse_args(argv)
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    if args.modules:
        unknown = set(args.modules) - {Path(p).stem for p in config["only_mutate"]}
        if unknown:
            sys.exit(f"ERROR: not in [tool.mutmut] only_mutate: {sorted(unknown)}")
        config["only_mutate"] = [
            p for p in config["only_mutate"] if Path(p).stem in args.modules
        ]
    if args.tests:
        config["pytest_add_cli_args_test_selection"] = args.tests
    if args.timeout_multiplier:
        config["timeout_multiplier"] = args.timeout_multiplier
    config["pytest_add_cli_args"] = config["pytest_add_cli_args"] + [
        f"--deselect={test}" for test in args.deselect
    ]
    if not args.report_only:
        if not args.keep:
            stage(args.work, config)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        run = [sys.executable, "-m", "mutmut", "run"]
        run += ["--max-children", str(args.max_children)]
        names = []
        if args.sample:
            # mutmut names its mutants while it generates them: a first call with a
            # name that matches none generates them and the test map, then stops.
            subprocess.run(run + ["segflow.no_such_mutant"], cwd=args.work, env=env)
            names = sample_unjudged(args.work, args.sample, args.seed)
            if not names:
                print("every sampled mutant is judged already")
        if names or not args.sample:
            subprocess.run(run + names, cwd=args.work, env=env, check=True)
    report = results(args.work)
    if args.diffs:
        for row in report.values():
            row["diffs"] = {name: diff(args.work, name) for name in row["survived"]}
    (args.work / "mutation.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n{'module':38s} {'mutants':>7s} {'killed':>6s} {'reached':>8s} {'all':>6s}"
        "  statuses"
    )
    below = []
    for module, row in report.items():
        share, share_all = row["killed_share"], row["killed_share_of_all"]
        print(
            f"{module:38s} {row['mutants']:7d} {row['statuses'].get('killed', 0):6d}"
            f" {'-' if share is None else f'{share:.1%}':>8s}"
            f" {'-' if share_all is None else f'{share_all:.1%}':>6s}"
            f"  {row['statuses']}"
        )
        if share is not None and share < TARGET:
            below.append(module)
    print(f"\nsurvivors: {args.work / 'mutation.json'}")
    if below:
        print(f"below the {TARGET:.0%} target: {', '.join(below)}")


if __name__ == "__main__":
    main()
