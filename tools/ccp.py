"""The Clothing Co-Parsing (CCP) dataset as a segflow competition: label PNGs, COCO files.

CCP (Yang, Luo, Lin, CVPR 2014; github.com/bearpaw/clothing-co-parsing, Apache-2.0):
1,004 street-fashion photos of about 550x825 (portrait, sizes vary by a few pixels)
with pixel-level labels in .mat files, 59 labels (0 = null, the background; skin, hair
and 56 garments and accessories, many rare). This script

1. writes each labelled photo's label as a PNG (values = CCP label indices);
2. holds out a fixed random 30% of the labelled photos (seed 0) as the test set: their
   labels go to ``holdout/labels`` (read only by ``benchmarks/ccp_score.py``);
3. converts both sets with ``python -m segflow.convert`` (null is the background);
4. writes ``config.yaml``: the project's config.yaml with the edits docs/own-data.md
   documents (classes, data, a native-size submission) and the CPU budget of its CCP
   table (``--input-size``, ``--epochs``, ``--folds``).

    python tools/ccp.py --source /path/to/clothing-co-parsing --out data/ccp
    snakemake -s /path/to/segflow/Snakefile -d data/ccp -- submission

``--source`` is a checkout of the repository (photos/, annotations/pixel-level/,
label_list.mat). It needs scipy (a dependency of scikit-learn) for the .mat files.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
import yaml
from scipy.io import loadmat

from segflow.convert import convert

REPO = Path(__file__).resolve().parents[1]
TEST_SHARE = 0.3
SEED = 0


def ccp_classes(source: Path) -> list[str]:
    names = loadmat(source / "label_list.mat")["label_list"][0]
    return [str(name[0]) for name in names]


def prepare(source: str | Path, out: str | Path) -> dict:
    source, out = Path(source), Path(out).resolve()
    classes = ccp_classes(source)
    labelled = sorted((source / "annotations" / "pixel-level").glob("*.mat"))
    rng = np.random.default_rng(SEED)
    test = set(rng.permutation(len(labelled))[: round(TEST_SHARE * len(labelled))])
    for k, mat in enumerate(labelled):
        split = "test" if k in test else "train"
        label = loadmat(mat)["groundtruth"].astype(np.uint8)
        photo = source / "photos" / f"{mat.stem}.jpg"
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, out / split / "images" / photo.name)
        labels = out / ("holdout" if split == "test" else "train") / "labels"
        labels.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(labels / f"{mat.stem}.png"), label)
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    train = convert(
        images_dir=out / "train" / "images",
        labels_dir=out / "train" / "labels",
        classes=classes,
        background="null",
        root=out,
        out=out / "train.json",
    )
    convert(
        images_dir=out / "test" / "images",
        classes=classes,
        background="null",
        root=out,
        out=out / "test.json",
    )
    return train


def write_config(
    out: Path, lines: dict, input_size: list[int], epochs: int, folds: int
) -> dict:
    """config.yaml of the run: the project's, with the documented edits (docs/own-data.md)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["classes"] = lines["classes"]
    config["data"].update(
        {**lines["data"], "demo": False, "train": "train.json", "test": "test.json"}
    )
    config["submission"]["size"] = "native"  # scored at each photo's own size
    config["predict"]["size"] = input_size
    config["defaults"]["input_size"] = input_size
    config["defaults"]["epochs"] = epochs
    config["cv"]["folds"] = folds
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--input-size", type=int, nargs=2, default=[144, 96])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    result = prepare(args.source, args.out)
    write_config(
        Path(args.out), result["config"], args.input_size, args.epochs, args.folds
    )
    print(f"{result['images']} training images, {result['annotations']} annotations")


if __name__ == "__main__":
    main()
