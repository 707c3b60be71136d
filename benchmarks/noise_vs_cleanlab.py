"""segflow's label-noise flags vs cleanlab's segmentation label-issue finder, on the demo.

    pip install -e ".[bench]"                 # cleanlab: AGPL-3.0, this benchmark only
    snakemake --configfile config.yaml clean_on.yaml -- results/clean/summary.json
    python benchmarks/noise_vs_cleanlab.py    # reads results/, prints both side by side

Both methods judge the same labels (the cached masks at the stored probability size) with
the same OOF probabilities (``--oof``, default r0's OOF ensemble, what ``clean`` read).
cleanlab ranks images by ``cleanlab.segmentation.rank.get_label_quality_scores`` (softmin
of per-pixel self-confidence); it has no threshold of its own for images, so it is shown
twice: flagging as many images as segflow flagged (the same budget), and with
``issues_from_scores``' default threshold (0.1). Its pixel-level finder
(``cleanlab.segmentation.filter.find_label_issues``, confident learning) is turned into
image flags as "at least ``--min-issue-share`` of the image's pixels are issues".
Scores are segflow.demo_noise_score's (image level, per noise kind): the injected-noise
manifest is the truth.

cleanlab is never imported by the segflow package or needed by the workflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from segflow.demo_noise_score import image_detection  # noqa: E402
from segflow.labels import read_label  # noqa: E402
from segflow.probabilities import MemberProbabilities  # noqa: E402
from segflow.settings import DEMO_NOISE_KINDS as KINDS  # noqa: E402


def load_oof(results: Path, oof_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image ids, labels (N, H, W) uint8, probabilities (N, K, H, W) float32) of every
    labelled image."""
    images = pd.read_parquet(results / "data" / "images.parquet")
    labelled = images[images["split"] == "train"].set_index("image_id")
    reader = MemberProbabilities("oof", [oof_dir / "oof.npy"], "oof")
    ids = [i for i in labelled.index if i in reader.rows]
    probabilities = reader.get(ids)
    size = probabilities.shape[-1]
    labels = np.stack(
        [
            read_label(results / "data" / "masks", labelled.at[i, "coco_id"], size)
            for i in ids
        ]
    )
    return ids, labels, probabilities


def cleanlab_flags(
    ids, labels, probabilities, budget: int, min_issue_share: float
) -> dict[str, set[str]]:
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores, issues_from_scores

    probabilities = probabilities / probabilities.sum(
        axis=1, keepdims=True
    )  # uint8 storage: renormalise
    image_scores, _ = get_label_quality_scores(
        labels, probabilities, method="softmin", verbose=False
    )
    order = np.argsort(image_scores, kind="stable")
    default = issues_from_scores(image_scores, threshold=0.1)
    pixel_issues = find_label_issues(labels, probabilities, n_jobs=1, verbose=False)
    issue_share = pixel_issues.reshape(len(ids), -1).mean(axis=1)
    return {
        "cleanlab softmin, same budget": {ids[i] for i in order[:budget]},
        "cleanlab softmin, threshold 0.1": {ids[i] for i in default},
        f"cleanlab find_label_issues, >= {min_issue_share:.0%} pixels": {
            ids[i] for i, share in enumerate(issue_share) if share >= min_issue_share
        },
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument(
        "--oof",
        default=None,
        help="folder with oof.npy + oof_ids.txt (default: results/r0/ensemble)",
    )
    parser.add_argument("--min-issue-share", type=float, default=0.05)
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    results = Path(args.results)
    ids, labels, probabilities = load_oof(
        results, Path(args.oof) if args.oof else results / "r0" / "ensemble"
    )
    manifest = pd.read_csv(results / "demo_data" / "truth" / "noise.csv")
    ours = pd.read_csv(results / "clean" / "images.csv")
    methods = {"segflow clean": set(ours.loc[ours["flagged"], "image_id"])}
    methods.update(
        cleanlab_flags(
            ids,
            labels,
            probabilities,
            len(methods["segflow clean"]),
            args.min_issue_share,
        )
    )
    table = {
        name: image_detection(flagged, manifest, set(ids))
        for name, flagged in methods.items()
    }

    print(
        f"{len(ids)} labelled images, {len(manifest)} with injected noise;"
        " image-level precision / recall / F1"
    )
    print(
        f"{'method':44s} {'flagged':>7s}  "
        + "  ".join(f"{k:>17s}" for k in ("all", *KINDS))
    )
    for name, result in table.items():
        cells = []
        for kind in ("all", *KINDS):
            r = result[kind]
            cells.append(
                " / ".join(
                    "  - " if r[m] is None else f"{r[m]:.2f}"
                    for m in ("precision", "recall", "f1")
                )
            )
        print(
            f"{name:44s} {len(methods[name]):7d}  "
            + "  ".join(f"{c:>17s}" for c in cells)
        )
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
