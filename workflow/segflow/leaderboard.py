"""The results a competitor checks after every run, for ``snakemake --report``.

- ``leaderboard.csv`` and its heatmap: every model x seed x round (its OOF mIoU, the mean
  and spread of its folds' val mIoU, per-class OOF IoU, its weight in its round's
  ensemble) and every ensemble (OOF mIoU, per-class IoU), best first.
- the ensembles: each member's weight and the class biases kept (a bias is kept only
  where it raised OOF mIoU; segflow.ensemble).
- the training curves of each model and round, its folds and seeds overlaid.
- the final ensemble's OOF confusion matrix, row-normalised, and its worst OOF images
  (image, label, prediction), from the ensemble's own OOF label maps.
- what each round bought on OOF: each round's ensemble and models.

Reads only what the stages wrote: oof_score's JSON, train's metrics.json and history.csv,
ensemble's summary.json and OOF label maps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segflow.images import image_file, read_rgb
from segflow.io import atomic_dir, read_ids, write_table
from segflow.labels import read_label
from segflow.metrics import confusion_matrix, mean_iou
from segflow.probabilities import ids_path
from segflow.step_cli import arg, run_step
from segflow.tables import class_iou_column
from segflow.viz import (
    annotate_cells,
    class_legend,
    class_palette,
    overlay,
    plt,
    save_figure,
    training_curves_figure,
)


def leaderboard_table(
    runs: list[dict], summaries: dict[str, dict], classes
) -> pd.DataFrame:
    """One row per model x seed x round and per ensemble, best OOF mIoU first.

    ``runs``: {"round", "model", "oof": oof_score JSON, "jobs": [{"fold", "seed",
    "metrics"}]} (the full fit among the jobs, fold "full"); ``summaries``: ensemble
    name -> its summary.json's content."""
    rows = []
    for run in runs:
        score = json.loads(Path(run["oof"]).read_text())
        metrics = [
            {**job, **json.loads(Path(job["metrics"]).read_text())}
            for job in run["jobs"]
        ]
        for seed, seed_score in score["seeds"].items():
            seed_jobs = [m for m in metrics if str(m["seed"]) == seed]
            fold_mious = [m["val_miou"] for m in seed_jobs if m["val_miou"] is not None]
            name = f"{run['round']}/{run['model']}/s{seed}"
            members = summaries.get(f"{run['round']}/ensemble", {}).get("members", {})
            rows.append(
                {
                    "entry": name,
                    "kind": "model",
                    "round": run["round"],
                    "model": run["model"],
                    "seed": int(seed),
                    "oof_miou": seed_score["miou"],
                    "oof_miou_cleaned": seed_score.get("miou_cleaned"),
                    "fold_miou_mean": float(np.mean(fold_mious))
                    if fold_mious
                    else None,
                    "fold_miou_std": float(np.std(fold_mious)) if fold_mious else None,
                    "folds": len(fold_mious),
                    "ensemble_weight": members.get(name, {}).get("weight"),
                    "train_seconds": sum(m["seconds"] for m in seed_jobs),
                    **{
                        class_iou_column(c): seed_score["per_class_iou"].get(c)
                        for c in classes
                    },
                }
            )
    for name, summary in summaries.items():
        rows.append(
            {
                "entry": name,
                "kind": "ensemble",
                "round": name.split("/")[0] if "/" in name else "final",
                "oof_miou": summary["oof_miou"],
                "ensemble_weight": None,
                **{
                    class_iou_column(c): summary["per_class_iou"].get(c)
                    for c in classes
                },
            }
        )
    table = pd.DataFrame(rows).astype({"seed": "Int64", "folds": "Int64"})
    table = table.sort_values("oof_miou", ascending=False, kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def leaderboard_figure(table: pd.DataFrame, classes: list[str]):
    """Heatmap: one row per entry (best first), OOF mIoU then each class's IoU."""
    columns = ["oof_miou"] + [class_iou_column(c) for c in classes]
    values = table[columns].astype(float).to_numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(columns), 1.2 + 0.42 * len(table)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    annotate_cells(ax, values, lambda v: f"{v:.2f}", white_above=False)
    labels = []
    for row in table.itertuples():
        spread = (
            f"  (folds {row.fold_miou_mean:.2f} ± {row.fold_miou_std:.2f})"
            if row.kind == "model" and pd.notna(row.fold_miou_mean)
            else ""
        )
        labels.append(f"{row.rank}. {row.entry}{spread}")
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    ax.set_xticks(
        range(len(columns)), ["OOF mIoU", *classes], rotation=35, ha="right", fontsize=8
    )
    ax.axvline(0.5, color="white", lw=2)
    fig.colorbar(image, ax=ax, fraction=0.03, label="IoU (blank: class absent)")
    ax.set_title("Leaderboard: OOF mIoU and per-class IoU, best first")
    fig.tight_layout()
    return fig


def ensembles_figure(summaries: dict[str, dict], classes: list[str]):
    """Per ensemble: its members' weights (left) and the class biases it kept (right)."""
    fig, (weights_ax, bias_ax) = plt.subplots(
        1,
        2,
        figsize=(13, 1.5 + 0.35 * sum(len(s["members"]) for s in summaries.values())),
    )
    labels, weights, colors = [], [], []
    palette = plt.get_cmap("tab10").colors
    for k, (name, summary) in enumerate(summaries.items()):
        total = sum(m["weight"] for m in summary["members"].values()) or 1.0
        for member, entry in summary["members"].items():
            labels.append(f"{name}: {member} (OOF {entry['oof_miou']:.3f})")
            weights.append(entry["weight"] / total)
            colors.append(palette[k % len(palette)])
    weights_ax.barh(range(len(weights)), weights, color=colors)
    weights_ax.set_yticks(range(len(weights)), labels, fontsize=8)
    weights_ax.invert_yaxis()
    weights_ax.set(
        xlim=(0, 1),
        xlabel="share of the ensemble's weight",
        title="member weights (chosen on OOF)",
    )
    width = 0.8 / max(1, len(summaries))
    kept = 0
    for k, (name, summary) in enumerate(summaries.items()):
        bias = summary.get("class_bias")
        if bias is None:
            continue
        kept += 1
        x = np.arange(len(classes)) + (k - (len(summaries) - 1) / 2) * width
        bias_ax.bar(
            x,
            [bias[c] for c in classes],
            width,
            color=palette[k % len(palette)],
            label=f"{name} (+{summary['class_bias_oof_gain']:.4f} OOF mIoU)",
        )
    bias_ax.axhline(0, color="grey", lw=0.8)
    bias_ax.set_xticks(
        range(len(classes)), classes, rotation=35, ha="right", fontsize=8
    )
    bias_ax.set(ylabel="log-probability bias", title="class biases kept")
    if kept:
        bias_ax.legend(fontsize=8)
    else:
        bias_ax.text(
            0.5,
            0.5,
            "no ensemble kept a class bias\n(none raised OOF mIoU)",
            ha="center",
            va="center",
            transform=bias_ax.transAxes,
            color="grey",
        )
    fig.tight_layout()
    return fig


def rounds_figure(table: pd.DataFrame):
    """OOF mIoU per round: each round's ensemble (bar) and its models x seeds (dots)."""
    rounds = [r for r in dict.fromkeys(table["round"]) if r != "final"]
    rounds.sort(key=lambda r: int(r[1:]) if r[1:].isdigit() else 0)
    fig, ax = plt.subplots(figsize=(2.0 + 1.4 * len(rounds), 3.6))
    for k, round_ in enumerate(rounds):
        rows = table[table["round"] == round_]
        ensemble = rows[rows["kind"] == "ensemble"]["oof_miou"]
        if len(ensemble):
            ax.bar(
                k,
                ensemble.iloc[0],
                0.6,
                color="tab:orange",
                label="round's ensemble" if k == 0 else None,
            )
            ax.text(
                k,
                ensemble.iloc[0],
                f"{ensemble.iloc[0]:.3f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        models = rows[rows["kind"] == "model"]["oof_miou"]
        ax.plot(
            [k] * len(models),
            models,
            "o",
            color="tab:blue",
            ms=5,
            label="model x seed" if k == 0 else None,
        )
    ax.set_xticks(range(len(rounds)), rounds)
    ax.set(ylabel="OOF mIoU", xlabel="round", title="What each round bought (OOF)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: np.ndarray, classes: list[str], title: str):
    """Row-normalised: each row (a true class) shares out its pixels over the predicted
    classes; the diagonal is the class's recall."""
    rows = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, confusion / rows, np.nan)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * n, 1.2 + 0.55 * n))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    # Percent, left blank under 0.5 %: a full grid of zeros hides the confusions.
    annotate_cells(
        ax, share, lambda v: f"{100 * v:.0f}" if v >= 0.005 else None, white_above=True
    )
    ax.set_xticks(range(n), classes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(
        range(n),
        [f"{c} ({int(r)} px)" for c, r in zip(classes, rows[:, 0])],
        fontsize=8,
    )
    ax.set(xlabel="predicted class", ylabel="true class (labelled pixels)", title=title)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the true class's pixels")
    fig.tight_layout()
    return fig


def worst_images_figure(worst: list[dict], classes: list[str], title: str):
    """One row per image, worst first: image | label | prediction."""
    palette = class_palette(len(classes))
    fig, axes = plt.subplots(
        len(worst), 3, figsize=(8, 2.7 * len(worst)), squeeze=False
    )
    for row, entry in zip(axes, worst):
        for ax, shown, name in zip(
            row,
            [
                entry["image"],
                overlay(entry["image"], entry["label"], palette),
                overlay(entry["image"], entry["prediction"], palette),
            ],
            ["image", "label", "OOF prediction"],
        ):
            ax.imshow(shown)
            ax.set_title(
                name
                if name != "image"
                else f"{entry['image_id']}  IoU {entry['iou']:.2f}",
                fontsize=8,
            )
            ax.axis("off")
    class_legend(fig, classes, palette, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    return fig


def final_ensemble_oof(
    oof: str,
    oof_labels: str,
    images_path: str,
    masks_dir: str,
    image_root: str,
    classes: list[str],
    worst_count: int,
):
    """(confusion matrix, the worst images with their maps) of the ensemble's OOF labels."""
    labels_set = np.load(oof_labels, mmap_mode="r")
    ids = read_ids(ids_path(oof))  # the label maps are in the order of the OOF set
    if labels_set.shape[0] != len(ids):
        raise ValueError(f"{oof_labels}: {labels_set.shape[0]} maps for {len(ids)} ids")
    images = pd.read_parquet(images_path).set_index("image_id")
    size = tuple(labels_set.shape[-2:])  # (height, width)
    n_classes = len(classes)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    scored = []  # (image mIoU, image id, position)
    for position, (image_id, prediction) in enumerate(zip(ids, labels_set)):
        label = read_label(masks_dir, images.at[image_id, "coco_id"], size)
        image_confusion = confusion_matrix(label, prediction, n_classes)
        confusion += image_confusion
        scored.append((mean_iou(image_confusion), image_id, position))
    scored.sort(key=lambda s: (-1.0 if math.isnan(s[0]) else s[0], s[1]))
    worst = []
    for iou, image_id, position in scored[:worst_count]:
        picture = read_rgb(image_file(images.loc[image_id], image_root))
        worst.append(
            {
                "image_id": image_id,
                "iou": iou,
                "image": cv2.resize(
                    picture, (size[1], size[0]), interpolation=cv2.INTER_AREA
                ),
                "label": read_label(masks_dir, images.at[image_id, "coco_id"], size),
                "prediction": np.asarray(labels_set[position]),
            }
        )
    return confusion, worst


@dataclass(frozen=True, kw_only=True)
class LeaderboardArgs:
    """What the results step reads and writes (its command line: step_cli)."""

    runs: list[dict] = arg(
        'JSON list of {"round", "model", "oof", "jobs"}', parse=json.loads
    )
    ensembles: dict[str, str] = arg(
        "JSON: ensemble name -> summary.json", parse=json.loads
    )
    final: dict[str, str] = arg('JSON {"name", "oof", "oof_labels"}', parse=json.loads)
    images_path: Path = arg("images.parquet", flag="--images")
    masks_dir: Path = arg("the index's masks")
    image_root: Path = arg("the folder image file names are relative to")
    classes: list[str] = arg("JSON list of class names", parse=json.loads)
    worst_count: int = arg("worst OOF images shown", flag="--worst")
    csv_out: Path = arg("leaderboard.csv")
    leaderboard_out: Path = arg("the leaderboard heatmap (PNG)")
    ensembles_out: Path = arg("the ensembles' weights and biases (PNG)")
    rounds_out: Path = arg("what each round bought on OOF (PNG)")
    confusion_out: Path = arg("the final ensemble's OOF confusion matrix (PNG)")
    worst_out: Path = arg("the final ensemble's worst OOF images (PNG)")
    curves_out: Path = arg("the training curves' folder")


def leaderboard(args: LeaderboardArgs) -> pd.DataFrame:
    """Write the leaderboard CSV and every results figure."""
    runs, final, classes = args.runs, args.final, args.classes
    summaries = {
        name: json.loads(Path(p).read_text()) for name, p in args.ensembles.items()
    }
    table = leaderboard_table(runs, summaries, classes)
    write_table(table, args.csv_out)
    save_figure(leaderboard_figure(table, classes), args.leaderboard_out)
    save_figure(ensembles_figure(summaries, classes), args.ensembles_out)
    save_figure(rounds_figure(table), args.rounds_out)
    confusion, worst = final_ensemble_oof(
        final["oof"],
        final["oof_labels"],
        args.images_path,
        args.masks_dir,
        args.image_root,
        classes,
        args.worst_count,
    )
    save_figure(
        confusion_figure(
            confusion, classes, f"OOF confusion of the final ensemble ({final['name']})"
        ),
        args.confusion_out,
    )
    save_figure(
        worst_images_figure(
            worst, classes, f"Worst OOF images of the final ensemble ({final['name']})"
        ),
        args.worst_out,
    )
    with atomic_dir(args.curves_out) as curves_dir:
        for run in runs:
            histories = {
                f"{job['fold']} s{job['seed']}": pd.read_csv(job["history"]).to_dict(
                    "records"
                )
                for job in run["jobs"]
            }
            fig = training_curves_figure(histories, f"{run['round']} {run['model']}")
            save_figure(fig, curves_dir / f"{run['round']}_{run['model']}.png")
    return table


def main(argv=None) -> None:
    run_step(
        leaderboard,
        LeaderboardArgs,
        argv,
        "The results report's leaderboard and figures.",
        (ValueError, FileNotFoundError, KeyError),
        report=lambda table: table[["rank", "entry", "oof_miou"]].to_string(
            index=False
        ),
    )


if __name__ == "__main__":
    main()
