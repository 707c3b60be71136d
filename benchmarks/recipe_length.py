"""segflow's single-model recipe at length: which of its parts cost points in long runs.

    python benchmarks/recipe_length.py --work /tmp/length --epochs 12 68 --seeds 0
    python benchmarks/recipe_length.py --work /tmp/length --rows recipe onecycle --seeds 0 1 2

Each row trains one model on all the demo's labelled images (the full fit, as baseline
(a) and the compute-matched baseline (b) do), for each of ``--epochs`` and ``--seeds``,
and scores its test predictions (config TTA) against the demo's hidden test labels.
Rows change the demo recipe (config.yaml's first model, its demo.overrides applied):

- ``recipe``: as configured (cosine after a 1-epoch warmup to 1% of the lr, ce class
  weights, flips and brightness/contrast);
- ``onecycle``: the schedule of a one-cycle loop: warmup over 30% of the run, cosine to 0;
- ``no_class_weights``, ``flips_only`` (no brightness/contrast), ``min_lr_0``;
- ``plain``: all three, the recipe of a plain one-cycle torch loop (CE + Dice, flips).

Results go to ``<work>/length.json`` (a row x epochs x seed already there is not rerun)
and a table of mean +- sd over the seeds is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from ablation import prepare  # noqa: E402  (the same work folder: demo data, folds)

from segflow.demo_score import truth_labels  # noqa: E402
from segflow.metrics import confusion_matrix, mean_iou  # noqa: E402
from segflow.predict import PredictArgs, predict  # noqa: E402
from segflow.probabilities import MemberProbabilities  # noqa: E402
from segflow.settings import (  # noqa: E402
    data_paths,
    model_settings,
    prediction_size,
    prediction_tta,
    wandb_settings,
)
from segflow.train import TrainArgs, train  # noqa: E402

FLIPS = [{"HorizontalFlip": {"p": 0.5}}, {"VerticalFlip": {"p": 0.5}}]


def rows(epochs: int) -> dict[str, dict]:
    onecycle = {"warmup_epochs": 0.3 * epochs, "min_lr_ratio": 0.0}
    return {
        "recipe": {},
        "onecycle": onecycle,
        "min_lr_0": {"min_lr_ratio": 0.0},
        "no_class_weights": {"class_weights": None},
        "flips_only": {"augment": FLIPS},
        "plain": {**onecycle, "class_weights": None, "augment": FLIPS},
    }


def run_job(config: dict, work: Path, row: str, epochs: int, seed: int) -> dict:
    results = work / "results"
    name = next(iter(config["models"]))
    settings = model_settings(config, name).replace(epochs=epochs, **rows(epochs)[row])
    job = work / "length" / row / f"e{epochs}-s{seed}"
    root = work / data_paths(config).root
    started = time.perf_counter()
    train(
        TrainArgs(
            settings=settings,
            images_path=results / "data/images.parquet",
            folds_path=results / "folds/folds.csv",
            masks_dir=results / "data/masks",
            image_root=root,
            classes=config["classes"],
            fold=None,
            seed=seed,
            model_out=job / "model.pt",
            history_out=job / "history.csv",
            metrics_out=job / "metrics.json",
            threads=2,
            wandb=wandb_settings(
                {**config, "wandb": {**config["wandb"], "mode": "disabled"}}, str(job)
            ),
            run_name=f"length/{row}/e{epochs}-s{seed}",
        )
    )
    seconds = time.perf_counter() - started
    size = prediction_size(config)
    predict(
        PredictArgs(
            model_path=job / "model.pt",
            images_path=results / "data/images.parquet",
            folds_path=results / "folds/folds.csv",
            image_root=root,
            fold=None,
            size=size,
            tta_mode=prediction_tta(config, name),
            batch_size=16,
            oof_out=job / "oof.npy",
            test_out=job / "test.npy",
            threads=2,
            window_overlap=0.5,
        )
    )
    stored = MemberProbabilities("test", [job / "test.npy"], "test")
    ids = sorted(stored.rows)
    predicted = stored.get(ids).argmax(axis=1).astype(np.uint8)
    images = pd.read_parquet(results / "data/images.parquet").set_index("image_id")
    hidden = truth_labels(str(root / "truth/test.json"), config["classes"], list(size))
    n = len(config["classes"])
    confusion = sum(
        confusion_matrix(hidden[images.file_name[i]], p, n)
        for i, p in zip(ids, predicted)
    )
    return {"test_miou": mean_iou(confusion), "train_seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--rows", nargs="*", default=list(rows(1)))
    parser.add_argument("--epochs", nargs="*", type=int, default=[12, 68])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args(argv)
    work = Path(args.work)
    config = prepare(work)
    out = work / "length.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    for epochs in args.epochs:
        for row in args.rows:
            for seed in args.seeds:
                key = f"{row}/e{epochs}/s{seed}"
                if key not in done:
                    done[key] = run_job(config, work, row, epochs, seed)
                    out.write_text(json.dumps(done, indent=1))
                print(key, f"{done[key]['test_miou']:.4f}", flush=True)
    print("\nrow / epochs: demo test mIoU, mean +- sd over seeds")
    for epochs in args.epochs:
        for row in args.rows:
            values = [
                done[f"{row}/e{epochs}/s{s}"]["test_miou"]
                for s in args.seeds
                if f"{row}/e{epochs}/s{s}" in done
            ]
            sd = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            print(f"{row:18s} {epochs:3d}  {statistics.mean(values):.4f}{sd}")


if __name__ == "__main__":
    main()
