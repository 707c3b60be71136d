"""Your own COCO dataset in one command: a config laid over config.yaml, and the command
that runs it.

    python -m segflow.init --train data/train_all.json --test data/test.json

writes ``my_data.yaml`` (``--out``): ``classes`` from the training file's categories in
id order, with the background first (a category named ``background``, any case, is that
class; else ``Background`` is added, painted where no annotation is); the data paths
(``--root``: the folder the images' ``file_name`` entries are relative to, by default
the training file's folder); ``data.void``: the categories named ``void`` (any case) or
given with ``--void``; ``defaults.input_size`` where the images have one size that a
model's architecture cannot take. Then it checks the result as the workflow will
(schema, class list against both files, image files, sizes) and prints the command.
Nothing is written when a check fails; an existing ``--out`` is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import yaml

from segflow.coco import DataError, read_json
from segflow.io import atomic_path

BACKGROUND = "Background"


def categories_in_id_order(coco: dict, source: str) -> list[dict]:
    categories = coco.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{source}: no categories")
    return sorted(categories, key=lambda c: c.get("id"))


def dataset_config(
    train: Path, test: Path, root: Path | None = None, void: list[str] | None = None
) -> dict:
    """The config overlay for a COCO dataset (see the module doc)."""
    train, test = Path(train).absolute(), Path(test).absolute()
    root = Path(root).absolute() if root is not None else train.parent
    categories = categories_in_id_order(read_json(train), str(train))
    names = [c["name"] for c in categories]
    void = list(void) if void else [n for n in names if n.lower() == "void"]
    unknown = [v for v in void if v not in names]
    if unknown:
        raise DataError(f"--void {unknown}: not categories of {train} ({names})")
    background = [n for n in names if n.lower() == "background"]
    first = background[0] if background else BACKGROUND
    classes = [first] + [n for n in names if n not in void and n != first]
    return {
        "classes": classes,
        "data": {
            "demo": False,
            "root": str(root),
            "train": relative(train, root),
            "test": relative(test, root),
            "void": void,
            "unlabelled": "background",
        },
    }


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it (the config stays movable
    with its data), else absolute."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def image_sizes(*paths: Path) -> list[tuple[int, int]]:
    """(height, width) of every image of the COCO files, as the JSON says."""
    return [
        (image["height"], image["width"])
        for path in paths
        for image in read_json(path)["images"]
        if isinstance(image, dict) and "height" in image and "width" in image
    ]


def fitting_input_size(config: dict, sizes: list[tuple[int, int]]):
    """``defaults.input_size`` for images of one size that some model's arch cannot
    take as they are (the nearest size every model takes, keeping their aspect); None
    where none is needed (several sizes are resized to the most common one anyway)."""
    from segflow.input_size import fits, nearest_fit, size_multiple
    from segflow.settings import model_settings

    if len(set(sizes)) != 1:
        return None
    settings = [model_settings(config, name) for name in config["models"]]
    if any(s.input_size or s.crop for s in settings):
        return None  # the user decides
    multiple = math.lcm(*(size_multiple(s.arch) for s in settings))
    size = sizes[0]
    return None if fits(size, multiple) else list(nearest_fit(size, multiple))


def checked(overlay: dict, base: Path) -> dict:
    """The overlay, with ``defaults.input_size`` where the images need one; stops on
    what the workflow would stop on at start (ConfigError, DataError)."""
    from segflow.settings import check_config, validate_config

    config = yaml.safe_load(base.read_text()) if base.is_file() else {}
    merged = merge(config, overlay)
    validate_config(merged)
    data = overlay["data"]
    root = Path(data["root"])
    size = fitting_input_size(
        merged, image_sizes(root / data["train"], root / data["test"])
    )
    if size is not None:
        overlay = merge(overlay, {"defaults": {"input_size": size}})
        merged = merge(config, overlay)
        validate_config(merged)
    check_config(merged)
    return overlay


def merge(base: dict, overlay: dict) -> dict:
    """Snakemake's --configfile rule: mappings merge key by key, the rest replaces."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, type=Path, help="training COCO JSON")
    parser.add_argument("--test", required=True, type=Path, help="test COCO JSON")
    parser.add_argument(
        "--root", type=Path, help="image root (default: --train's folder)"
    )
    parser.add_argument("--void", nargs="+", help="categories whose pixels are ignored")
    parser.add_argument("--out", type=Path, default=Path("my_data.yaml"))
    parser.add_argument(
        "--base",
        type=Path,
        default=Path("config.yaml"),
        help="the config the workflow reads first (the checks use it)",
    )
    parser.add_argument("--force", action="store_true", help="replace --out")
    args = parser.parse_args(argv)
    from segflow.settings import ConfigError

    if args.out.exists() and not args.force:
        sys.exit(f"ERROR: {args.out} exists; --force replaces it")
    try:
        overlay = dataset_config(args.train, args.test, args.root, args.void)
        overlay = checked(overlay, args.base)
    except (ConfigError, DataError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")
    with atomic_path(args.out) as tmp:
        tmp.write_text(yaml.safe_dump(overlay, sort_keys=False))
    classes = overlay["classes"]
    print(f"wrote {args.out}: {len(classes)} classes ({', '.join(classes)})")
    if overlay["data"]["void"]:
        print(f"  ignored (void): {overlay['data']['void']}")
    if "defaults" in overlay:
        size = overlay["defaults"]["input_size"]
        print(f"  defaults.input_size {size}: the nearest size every model takes")
    config = os.path.relpath(args.out)
    print("run it with:")
    print(f"  snakemake --configfile {config} -j4 --resources gpu=1 -- submission")


if __name__ == "__main__":
    main()
