"""Exploratory data analysis: a standalone HTML report, its figures as PNGs, and stats.json.

Reads only the data index (images.parquet, annotations.parquet, skipped.csv), the cached
masks and, for the gallery, a few images. Every figure is written as a PNG (the workflow
registers them with ``report()``) and embedded in the HTML, which needs no other file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

from segflow.groups import related_images
from segflow.images import image_file, read_rgb
from segflow.io import atomic_dir, atomic_path, write_json
from segflow.labels import IGNORE_INDEX, mask_file
from segflow.step_cli import arg, run_step
from segflow.tables import object_class_presence, pixel_columns
from segflow.viz import class_legend, class_palette, data_uri, overlay, save_figure


def dataset_stats(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    skipped: pd.DataFrame,
    classes: list[str],
) -> dict:
    """The numbers behind the report: counts per split, per class, per group; co-occurrence."""
    train = images[images["split"] == "train"]
    pixels = train[pixel_columns(len(classes))].to_numpy(dtype=np.int64).sum(axis=0)
    presence = train[pixel_columns(len(classes))].to_numpy(dtype=np.int64) > 0
    void = annotations["class_index"] == IGNORE_INDEX
    ignored = int(train["ignored_pixels"].fillna(0).astype(np.int64).sum())
    annotations = annotations[~void]  # void regions are no class's instances
    instances = np.bincount(
        annotations["class_index"].to_numpy(dtype=np.int64), minlength=len(classes)
    )
    relative_size = np.sqrt(
        annotations["area"]
        / annotations["image_id"].map(
            train.set_index("image_id").eval("width * height")
        )
    )
    per_class = []
    for k, name in enumerate(classes):
        sizes = relative_size[annotations["class_index"] == k]
        per_class.append(
            {
                "index": k,
                "name": name,
                "pixels": int(pixels[k]),
                "pixel_share": float(pixels[k] / max(1, pixels.sum())),
                "instances": int(instances[k]),
                "instance_share": float(instances[k] / max(1, instances.sum())),
                "images": int(presence[:, k].sum()),
                "median_relative_size": float(sizes.median()) if len(sizes) else None,
            }
        )
    foreground = object_class_presence(train, len(classes)).astype(np.int64)
    objects = train["n_objects"].astype(np.int64)
    return {
        "images": {
            split: int((images["split"] == split).sum()) for split in ("train", "test")
        },
        "annotations": int(len(annotations)),
        "crowd_annotations": int(annotations["iscrowd"].sum()),
        "skipped": {"total": int(len(skipped)), "by_reason": _reason_counts(skipped)},
        "classes": per_class,
        # Void categories and (data.unlabelled: ignore) uncovered pixels: in no class.
        "ignored": {
            "pixels": ignored,
            "share": ignored / max(1, ignored + int(pixels.sum())),
            "void_annotations": int(void.sum()),
        },
        "objects_per_image": {
            "mean": float(objects.mean()),
            "median": float(objects.median()),
            "max": int(objects.max()),
            "zero": int((objects == 0).sum()),
        },
        "image_sizes": {
            f"{w}x{h}": int(n)
            for (w, h), n in images.groupby(["width", "height"]).size().items()
        },
        "brightness": {
            split: float(images.loc[images["split"] == split, "brightness"].mean())
            for split in ("train", "test")
            if (images["split"] == split).any()
        },
        "groups": {
            str(g): {s: int(n) for s, n in part.groupby("split").size().items()}
            for g, part in images.groupby("group")
        },
        "cooccurrence": (
            foreground.T @ foreground
        ).tolist(),  # images holding both object classes (class order)
    }


# Groups a suggested cv.group_by leaves at least (enough for 5 folds of 2 groups each).
MIN_SUGGESTED_GROUPS = 10


def related_stats(images: pd.DataFrame, group_by: str | None) -> dict:
    """Sequences and near-duplicates among the labelled images (segflow.groups), and
    what the configured cv.group_by makes of them."""
    train = images[images["split"] == "train"].reset_index(drop=True)
    related = related_images(train, min_groups=MIN_SUGGESTED_GROUPS)
    names = train["file_name"].tolist()
    stems = related.stems.dropna()
    examples = [
        {"stem": stem, "images": int(n), "first": names[members.index[0]]}
        for (stem, n), (_, members) in zip(
            stems.value_counts().head(5).items(), stems.groupby(stems)
        )
    ]
    found = bool(related.in_sequences or related.duplicates)
    warning = None
    if found and not group_by:
        warning = (
            f"{related.in_sequences} labelled images are frames of {related.sequences}"
            f" file-name sequences and {len(related.duplicates)} pairs are"
            " near-duplicates: random folds put related images on both sides of a"
            " fold, so OOF mIoU is optimistic."
            + (
                f" Set cv.group_by: '{related.suggestion}' to keep runs of"
                " consecutive frames in one fold."
                if related.suggestion
                else " Group them with cv.group_by (a regex on file_name)."
            )
        )
    return {
        "sequences": related.sequences,
        "images_in_sequences": related.in_sequences,
        "sequence_examples": examples,
        "near_duplicates": len(related.duplicates),
        "duplicate_examples": [
            {"a": names[i], "b": names[j], "bits": bits}
            for i, j, bits in related.duplicates[:10]
        ],
        "suggested_group_by": related.suggestion,
        "group_by": group_by,
        "warning": warning,
    }


def _reason_counts(skipped: pd.DataFrame) -> dict:
    # "image file X is missing" -> "image file is missing": count by kind, not by file.
    kinds = (
        skipped["reason"]
        .astype(str)
        .str.replace(r"\S*/\S*|\d+", "", regex=True)
        .str.replace(r"\s+", " ", regex=True)
        .str.strip()
    )
    return {str(k): int(v) for k, v in kinds.value_counts().items()}


@dataclass(frozen=True, kw_only=True)
class EdaArgs:
    """What the EDA step reads, writes and is set by (its command line: step_cli)."""

    images_path: Path = arg("images.parquet", flag="--images")
    annotations_path: Path = arg("annotations.parquet", flag="--annotations")
    skipped_path: Path = arg("skipped.csv", flag="--skipped")
    masks_dir: Path = arg("the index's masks")
    image_root: Path = arg("the folder image file names are relative to")
    classes: list[str] = arg(
        "JSON list of class names, background first", parse=json.loads
    )
    report_out: Path = arg("report.html", flag="--report")
    stats_out: Path = arg("stats.json", flag="--stats")
    figures_dir: Path = arg("the figures' folder (PNG)")
    gallery_size: int = arg("images in the gallery")
    seed: int = arg("of the gallery's sample")
    group_by: str | None = arg(
        "cv.group_by, or empty for none", default=None, parse=lambda text: text or None
    )


def make_eda(args: EdaArgs) -> dict:
    """Write the EDA report, its figures and stats.json; return the stats.
    ``args.group_by``: the config's cv.group_by, which the related-images section checks."""
    classes = args.classes
    images = pd.read_parquet(args.images_path)
    annotations = pd.read_parquet(args.annotations_path)
    skipped = pd.read_csv(
        args.skipped_path, dtype={"image_id": "Int64", "annotation_id": "Int64"}
    )
    stats = dataset_stats(images, annotations, skipped, classes)
    stats["related"] = related_stats(images, args.group_by)
    palette = class_palette(len(classes))

    figures = {
        "splits": ("Images per split and group", _fig_splits(images, annotations)),
        "class_share": (
            "Class share by pixels and by instances",
            _fig_class_share(stats, classes, palette),
        ),
        "images_per_class": (
            "Images containing each class",
            _fig_images_per_class(stats, classes, palette),
        ),
        "object_size": (
            "Object size per class (sqrt of area / image area)",
            _fig_object_size(images, annotations, classes, palette),
        ),
        "objects_per_image": (
            "Objects per training image",
            _fig_objects_per_image(images),
        ),
        "image_stats": ("Image size and brightness", _fig_image_stats(images)),
        "cooccurrence": (
            "Class co-occurrence: share of images with the row class that also hold"
            " the column class",
            _fig_cooccurrence(stats, classes),
        ),
        "gallery": (
            "Sample training images with their masks",
            _fig_gallery(
                images,
                args.masks_dir,
                args.image_root,
                classes,
                palette,
                args.gallery_size,
                args.seed,
            ),
        ),
    }
    embedded = []
    with atomic_dir(args.figures_dir) as tmp_dir:
        for name, (title, fig) in figures.items():
            embedded.append(
                {
                    "name": name,
                    "title": title,
                    "src": data_uri(save_figure(fig, Path(tmp_dir) / f"{name}.png")),
                }
            )
        template = jinja2.Environment(
            loader=jinja2.PackageLoader("segflow", "templates"), autoescape=True
        ).get_template("eda.html.j2")
        html = template.render(
            stats=stats,
            figures=embedded,
            skipped=skipped.head(200).astype(object).fillna("").to_dict("records"),
            n_classes=len(classes),
        )
        with atomic_path(args.report_out) as tmp:
            tmp.write_text(html, encoding="utf-8")
        write_json(stats, args.stats_out)
    return stats


def _slanted_class_names(ax) -> None:
    """Whole class names under the bars, slanted to end at their tick: never cut."""
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")


def _plain_log_ticks(ax) -> None:
    """A log axis labelled 0.01, 0.1, 1, 10 (not 10^-2 in small superscripts)."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


# One colour per split in every figure (the two panels of the splits figure once disagreed).
SPLIT_COLORS = {"train": "#4c72b0", "test": "#dd8452"}
ANNOTATION_COLOR = "#8172b3"


def _bar_colors(palette: np.ndarray, n: int):
    return [palette[k] / 255 if k else (0.6, 0.6, 0.6) for k in range(n)]


def _fig_splits(images: pd.DataFrame, annotations: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    counts = images.groupby(["group", "split"]).size().unstack(fill_value=0)
    counts.plot.bar(
        stacked=True, ax=axes[0], color=[SPLIT_COLORS[s] for s in counts.columns]
    )
    axes[0].set(title="images per group (folder) and split", xlabel="", ylabel="images")
    per_split = pd.Series(
        {
            "train images": int((images["split"] == "train").sum()),
            "test images": int((images["split"] == "test").sum()),
            "train annotations": len(annotations),
        }
    )
    axes[1].bar(
        per_split.index,
        per_split.to_numpy(),
        color=[SPLIT_COLORS["train"], SPLIT_COLORS["test"], ANNOTATION_COLOR],
    )
    axes[1].set(ylabel="count")
    axes[1].set(title="totals")
    for i, v in enumerate(per_split.to_numpy()):
        axes[1].text(i, v, str(v), ha="center", va="bottom")
    return fig


def _fig_class_share(stats: dict, names: list[str], palette: np.ndarray):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    rows = stats["classes"]
    colors = _bar_colors(palette, len(rows))
    axes[0].bar(
        names, [100 * r["pixel_share"] for r in rows], color=colors, edgecolor="grey"
    )
    axes[0].set(title="share of labelled pixels (%)", yscale="log")
    axes[1].bar(
        names[1:],
        [100 * r["instance_share"] for r in rows[1:]],
        color=colors[1:],
        edgecolor="grey",
    )
    axes[1].set(title="share of object instances (%)")
    for ax in axes:
        _slanted_class_names(ax)
    _plain_log_ticks(axes[0])
    return fig


def _fig_images_per_class(stats: dict, names: list[str], palette: np.ndarray):
    fig, ax = plt.subplots(figsize=(8, 3.5))
    rows = stats["classes"][1:]
    ax.bar(
        names[1:],
        [r["images"] for r in rows],
        color=_bar_colors(palette, len(rows) + 1)[1:],
        edgecolor="grey",
    )
    for i, r in enumerate(rows):
        ax.text(i, r["images"], str(r["images"]), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="training images")
    _slanted_class_names(ax)
    return fig


def _fig_object_size(
    images: pd.DataFrame,
    annotations: pd.DataFrame,
    names: list[str],
    palette: np.ndarray,
):
    fig, ax = plt.subplots(figsize=(9, 3.8))
    image_area = annotations["image_id"].map(
        images.set_index("image_id").eval("width * height")
    )
    relative = np.sqrt(annotations["area"] / image_area)
    data = [
        relative[annotations["class_index"] == k].to_numpy()
        for k in range(1, len(names))
    ]
    present = [k for k, d in enumerate(data) if len(d)]
    if present:
        boxes = ax.boxplot(
            [data[k] for k in present], patch_artist=True, showfliers=True
        )
        ax.set_xticks(range(1, len(present) + 1), [names[k + 1] for k in present])
        _slanted_class_names(ax)
        for patch, k in zip(boxes["boxes"], present):
            patch.set_facecolor(palette[k + 1] / 255)
    ax.set(yscale="log", ylabel="sqrt(object area / image area)")
    _plain_log_ticks(ax)
    return fig


def _fig_objects_per_image(images: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    counts = images.loc[images["split"] == "train", "n_objects"].astype(int)
    ax.hist(
        counts,
        bins=np.arange(counts.max() + 2) - 0.5,
        color="#4c72b0",
        edgecolor="white",
    )
    ax.set(xlabel="annotated objects in the image", ylabel="images")
    return fig


def _fig_image_stats(images: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    sizes = images.groupby(["width", "height", "split"]).size().unstack(fill_value=0)
    sizes.index = [f"{w}x{h}" for w, h in sizes.index]
    sizes.plot.bar(ax=axes[0], color=[SPLIT_COLORS[s] for s in sizes.columns])
    axes[0].set(title="image sizes (width x height)", ylabel="images")
    axes[0].tick_params(axis="x", rotation=0)
    for split, part in images.groupby("split"):
        axes[1].hist(
            part["brightness"],
            bins=30,
            alpha=0.6,
            label=split,
            density=True,
            color=SPLIT_COLORS[split],
        )
    axes[1].set(
        title="mean grey level per image",
        xlabel="brightness (0-255)",
        ylabel="share of the split's images (density)",
    )
    axes[1].legend()
    return fig


def _fig_cooccurrence(stats: dict, names: list[str]):
    both = np.array(stats["cooccurrence"], float)
    shown = np.flatnonzero(np.diag(both) > 0) if both.size else []
    both = both[np.ix_(shown, shown)] if len(shown) else np.zeros((0, 0))
    names = [names[k] for k in shown]  # the object classes some image holds
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    if both.size:
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(
                np.diag(both)[:, None] > 0, both / np.diag(both)[:, None], 0.0
            )
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(share)):
            for j in range(len(share)):
                ax.text(
                    j,
                    i,
                    f"{int(both[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(share)), names)
        _slanted_class_names(ax)
        ax.set_yticks(range(len(share)), names)
    ax.set_title("colour: P(column class | row class); number: images with both")
    return fig


def _gallery_images(
    train: pd.DataFrame, n_classes: int, size: int, seed: int
) -> list[int]:
    """Row positions: one image per class (rarest first) so every class is shown, then random."""
    rng = np.random.default_rng(seed)
    presence = train[pixel_columns(n_classes)].to_numpy(dtype=np.int64) > 0
    chosen: list[int] = []
    for k in np.argsort(presence[:, 1:].sum(axis=0)) + 1:
        candidates = [i for i in np.flatnonzero(presence[:, k]) if i not in chosen]
        if candidates and len(chosen) < size:
            chosen.append(int(rng.choice(candidates)))
    rest = [i for i in rng.permutation(len(train)) if i not in chosen]
    return chosen + [int(i) for i in rest[: max(0, size - len(chosen))]]


def _fig_gallery(images, masks_dir, image_root, classes, palette, size: int, seed: int):
    train = images[images["split"] == "train"].reset_index(drop=True)
    picks = _gallery_images(train, len(classes), size, seed)
    cols = 4
    rows = max(1, int(np.ceil(len(picks) / cols)))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.1 * rows), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        row = train.iloc[i]
        picture = read_rgb(image_file(row, image_root))
        mask = cv2.imread(
            str(mask_file(masks_dir, row["coco_id"])), cv2.IMREAD_UNCHANGED
        )
        ax.imshow(np.concatenate([picture, overlay(picture, mask, palette)], axis=1))
        ax.set_title(row["file_name"], fontsize=8)
    class_legend(fig, classes, palette)
    return fig


def main(argv=None) -> None:
    run_step(
        make_eda,
        EdaArgs,
        argv,
        "Write the EDA report of an indexed dataset.",
        (ValueError, FileNotFoundError),
        report=lambda stats: json.dumps(
            {k: stats[k] for k in ("images", "annotations", "skipped")}
        ),
    )


if __name__ == "__main__":
    main()
