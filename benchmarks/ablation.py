"""Each competition technique alone on top of the demo's recipe, over seeds, on the demo.

    python benchmarks/ablation.py --work /tmp/ablation                 # every row, seeds 0 1 2
    python benchmarks/ablation.py --work /tmp/ablation --rows base ema --seeds 0

The work folder gets the repo's config.yaml and ``snakemake results/folds/folds.csv``
(demo data, index, folds). Then, per row and seed, one training job as the workflow
runs it (segflow.train.train, the first model of config.yaml over ``defaults`` with every
technique off, fold 0: two thirds of the labelled images) with the row's settings
changed, and its predictions
(segflow.predict.predict, the config's TTA) of fold 0's validation images (OOF) and of
the test images, scored against the demo's hidden test labels (segflow.demo_score).

Per row it reports, as mean +- standard deviation over the seeds: the OOF mIoU of fold
0 (the model's predictions of its held-out images, with TTA), the hidden-test mIoU, and
the training seconds (and their extra over the base row). Row ``remove_small`` trains
nothing: it post-processes the base row's predictions with the component areas tuned
on their OOF (segflow.postprocess). Results go to ``<work>/ablation.json``; a row x seed
already there is not rerun.

It measures one fold model per seed, not the whole workflow (folds, full fit,
ensemble): the question is whether a technique lifts one model of the recipe beyond the
seed-to-seed spread, within its time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from segflow.demo_score import truth_labels  # noqa: E402
from segflow.labels import read_label  # noqa: E402
from segflow.metrics import confusion_matrix, mean_iou  # noqa: E402
from segflow.postprocess import (  # noqa: E402
    min_areas_in_pixels,
    remove_small_components,
    tune_min_areas,
)
from segflow.predict import PredictArgs, predict  # noqa: E402
from segflow.probabilities import MemberProbabilities  # noqa: E402
from segflow.settings import (  # noqa: E402
    data_paths,
    model_settings,
    prediction_overlap,
    prediction_tta,
    validated,
    wandb_settings,
)
from segflow.train import TrainArgs, train  # noqa: E402

# The recipe every row starts from: config.yaml's first model with every technique off
# (class_weights became a default because of this table; its row turns it back on).
TECHNIQUES_OFF = {
    "class_weights": None,
    "oversample": None,
    "mix": "none",
    "averaging": "none",
}
# Each row: the model settings it changes from that recipe.
ROWS = {
    "base": {},
    "ema": {"averaging": "ema"},
    "swa": {"averaging": "swa"},
    "topk": {"averaging": "topk"},
    "mixup": {"mix": "mixup"},
    "cutmix": {"mix": "cutmix"},
    "copypaste": {"mix": "copypaste"},
    "class_weights": {"class_weights": "pixels"},
    "oversample": {"oversample": 0.3},
    "lookahead": {"optimizer": "lookahead_adamw"},
    "poly": {"scheduler": "poly"},
    "aux_head": {
        "model_args": {"aux_params": {"dropout": 0.2}},
        "loss": {"ce": 1.0, "dice": 1.0, "aux": 0.4},
    },
    "remove_small": None,  # post-processing of the base row's predictions
    # The rows that paid on their own, together: what the defaults now turn on.
    "class_weights+oversample": {"class_weights": "pixels", "oversample": 0.3},
}
FOLD = 0
SIZE = 96  # the demo's image side: probabilities and labels scored at it


def prepare(work: Path) -> dict:
    """The work folder's config, demo data, index and folds."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["-d", str(work), "--cores", "2", "results/folds/folds.csv"]
    command += ["results/data/images.parquet"]  # both splits: test predictions
    subprocess.run(command, check=True, capture_output=True)
    return validated(yaml.safe_load((work / "config.yaml").read_text()))


def run_job(config: dict, work: Path, row: str, seed: int) -> dict:
    """Train fold 0 with the row's settings, predict, score; the job's numbers."""
    results = work / "results"
    name = next(iter(config["models"]))
    settings = model_settings(config, name).replace(**TECHNIQUES_OFF, **ROWS[row])
    started = time.perf_counter()
    job = work / "ablation" / row / f"s{seed}"
    paths = data_paths(config)
    metrics = train(
        TrainArgs(
            settings=settings,
            images_path=results / "data/images.parquet",
            folds_path=results / "folds/folds.csv",
            masks_dir=results / "data/masks",
            image_root=work / paths.root,
            classes=config["classes"],
            fold=FOLD,
            seed=seed,
            model_out=job / "model.pt",
            history_out=job / "history.csv",
            metrics_out=job / "metrics.json",
            threads=2,
            wandb=wandb_settings(
                {**config, "wandb": {**config["wandb"], "mode": "disabled"}}, str(job)
            ),
            run_name=f"ablation/{row}/s{seed}",
        )
    )
    # The job's wall time: its epochs, and what a technique adds after them (the
    # averaged weights' BatchNorm pass and scoring).
    job_seconds = time.perf_counter() - started
    started = time.perf_counter()
    predict(
        PredictArgs(
            model_path=job / "model.pt",
            images_path=results / "data/images.parquet",
            folds_path=results / "folds/folds.csv",
            image_root=work / paths.root,
            fold=FOLD,
            size=SIZE,
            tta_mode=prediction_tta(config, name),
            batch_size=16,
            oof_out=job / "oof.npy",
            test_out=job / "test.npy",
            threads=2,
            window_overlap=prediction_overlap(config, name),
        )
    )
    scores = score(config, work, job, None)
    return {
        **scores,
        "train_seconds": metrics["seconds"],
        "job_seconds": job_seconds,
        "predict_seconds": time.perf_counter() - started,
    }


def label_maps(path: Path) -> tuple[list[str], np.ndarray]:
    stored = MemberProbabilities(path.stem, [path], "oof")
    ids = sorted(stored.rows)
    return ids, stored.get(ids).argmax(axis=1).astype(np.uint8)


def score(config: dict, work: Path, job: Path, min_area) -> dict:
    """OOF (fold 0) and hidden-test mIoU of a job's predictions, post-processed with
    ``min_area`` (class -> pixels) when given."""
    results = work / "results"
    classes = config["classes"]
    images = pd.read_parquet(results / "data/images.parquet").set_index("image_id")
    oof_ids, oof = label_maps(job / "oof.npy")
    oof_truth = [
        read_label(results / "data/masks", images.coco_id[i], SIZE) for i in oof_ids
    ]
    test_ids, test = label_maps(job / "test.npy")
    hidden = truth_labels(
        str(work / data_paths(config).root / "truth/test.json"), classes, SIZE
    )
    test_truth = [hidden[images.file_name[i]] for i in test_ids]
    if min_area:
        oof = [remove_small_components(m, min_area) for m in oof]
        test = [remove_small_components(m, min_area) for m in test]

    def miou(truth, predicted):
        return mean_iou(
            sum(confusion_matrix(t, p, len(classes)) for t, p in zip(truth, predicted))
        )

    return {"oof_miou": miou(oof_truth, oof), "test_miou": miou(test_truth, test)}


def post_processed(config: dict, work: Path, seed: int) -> dict:
    """Row remove_small: the base job's predictions with areas tuned on its OOF."""
    results = work / "results"
    job = work / "ablation" / "base" / f"s{seed}"
    images = pd.read_parquet(results / "data/images.parquet").set_index("image_id")
    oof_ids, oof = label_maps(job / "oof.npy")
    truth = [
        read_label(results / "data/masks", images.coco_id[i], SIZE) for i in oof_ids
    ]
    started = time.perf_counter()
    shares, _, _ = tune_min_areas(oof, truth, len(config["classes"]))
    seconds = time.perf_counter() - started
    areas = min_areas_in_pixels(shares, (SIZE, SIZE))
    return {
        **score(config, work, job, areas),
        "train_seconds": 0.0,
        "job_seconds": seconds,
        "min_area_pixels": {config["classes"][c]: a for c, a in areas.items()},
    }


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    config = prepare(work)
    out = work / "ablation.json"
    table = json.loads(out.read_text()) if out.exists() else {}
    rows = args.rows if "remove_small" not in args.rows else ["base", *args.rows]
    for row in dict.fromkeys(rows):
        for seed in args.seeds:
            if str(seed) in table.get(row, {}):
                continue
            if row == "remove_small":
                result = post_processed(config, work, seed)
            else:
                result = run_job(config, work, row, seed)
            table.setdefault(row, {})[str(seed)] = result
            out.write_text(json.dumps(table, indent=2) + "\n")
            print(f"{row} s{seed}: {json.dumps(result)}", flush=True)

    print_table(table)


def paired(runs: dict, base: dict, key: str) -> str:
    """Mean +- std over seeds of (row - base) on the same seed: same data order and
    initialisation, so the difference is the technique's, not the seed's."""
    seeds = sorted(set(runs) & set(base))
    return spread([runs[s][key] - base[s][key] for s in seeds]) if seeds else ""


def print_table(table: dict) -> None:
    base = table.get("base", {})
    print(
        f"\n| row | OOF mIoU (fold {FOLD}) | test mIoU | test - base (paired)"
        " | job s | extra s | seeds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base_seconds = statistics.mean(r["job_seconds"] for r in base.values())
    for row, runs in table.items():
        values = [runs[s] for s in sorted(runs)]
        seconds = statistics.mean(r["job_seconds"] for r in values)
        extra = seconds if row == "remove_small" else seconds - base_seconds
        print(
            f"| {row} | {spread([r['oof_miou'] for r in values])}"
            f" | {spread([r['test_miou'] for r in values])}"
            f" | {'' if row == 'base' else paired(runs, base, 'test_miou')}"
            f" | {seconds:.0f} | {'' if row == 'base' else f'{extra:+.1f}'}"
            f" | {len(values)} |"
        )


if __name__ == "__main__":
    main()
