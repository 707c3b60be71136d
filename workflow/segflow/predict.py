"""Export a trained model's probabilities: its fold's validation images (OOF) and every test image.

Test-time augmentation through ttach (``none``, ``hflip``, ``d4``, ``multiscale``). ttach
merges whatever the model returns, so the model is wrapped in a softmax: the merge is a
mean of probabilities, not of logits. Scales are resized bilinearly (ttach's default is
nearest).

Each set is written as ``<set>.npy``, uint8 (N, classes, size, size) holding p * 255,
which ``numpy.load(mmap_mode="r")`` streams, plus ``<set>_ids.txt`` (one image_id per
line, same order). Batches go straight into a memory map, so peak memory does not grow
with the number of images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import ttach as tta  # noqa: E402

from segflow.data import SegmentationDataset, build_transform, make_loader  # noqa: E402
from segflow.device import (
    select_device,
)  # before torch: it may set CUDA_VISIBLE_DEVICES
from segflow.io import atomic_path, write_ids  # noqa: E402
from segflow.models import size_multiple  # noqa: E402
from segflow.train import (
    amp_autocast,
    fold_split,
    load_checkpoint,
    resize_steps,
    to_device,
)  # noqa: E402

TTA_MODES = ("none", "hflip", "d4", "multiscale")
MULTISCALE = (0.75, 1.0, 1.25)


class Softmax(torch.nn.Module):
    """Model -> class probabilities (float32), so TTA averages probabilities."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)


def tta_model(
    model: torch.nn.Module, mode: str, input_size: tuple[int, int], multiple: int
) -> torch.nn.Module:
    """``model`` returning probabilities, averaged over the TTA transforms of ``mode``."""
    probabilities = Softmax(model)
    if mode == "none":
        return probabilities
    if mode == "hflip":
        transforms = tta.Compose([tta.HorizontalFlip()])
    elif mode == "d4":
        transforms = tta.aliases.d4_transform()
    elif mode == "multiscale":
        for scale in MULTISCALE:
            if any(round(side * scale) % multiple for side in input_size):
                raise ValueError(
                    f"tta multiscale: {input_size} x {scale} is not a multiple of {multiple}, which this arch needs"
                )
        transforms = tta.Compose(
            [
                tta.HorizontalFlip(),
                tta.Scale(
                    scales=list(MULTISCALE),
                    interpolation="bilinear",
                    align_corners=False,
                ),
            ]
        )
    else:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")
    return tta.SegmentationTTAWrapper(probabilities, transforms, merge_mode="mean")


def write_probabilities(
    model,
    loader,
    image_ids: list[str],
    n_classes: int,
    size: int,
    device: str,
    autocast,
    npy_path: Path,
    ids_path: Path,
) -> None:
    """Stream ``model``'s probabilities for ``loader`` into a uint8 memmap (see module doc)."""
    with atomic_path(npy_path) as tmp:
        out = np.lib.format.open_memmap(
            tmp,
            mode="w+",
            dtype=np.uint8,
            shape=(len(image_ids), n_classes, size, size),
        )
        with torch.no_grad():
            for batch, index in loader:
                with autocast():
                    probabilities = model(to_device(batch, device))
                probabilities = F.interpolate(
                    probabilities.float(),
                    size=(size, size),
                    mode="bilinear",
                    align_corners=False,
                )
                out[index.numpy()] = (
                    (probabilities * 255)
                    .round()
                    .clamp(0, 255)
                    .to(torch.uint8)
                    .cpu()
                    .numpy()
                )
        out.flush()
        del out
    write_ids(image_ids, ids_path)


def predict(
    *,
    model_path: str | Path,
    images_path: str | Path,
    folds_path: str | Path,
    image_root: str | Path,
    fold: int,
    size: int,
    tta_mode: str,
    batch_size: int,
    out_dir: str | Path,
    threads: int = 1,
) -> None:
    """Write oof.npy / oof_ids.txt (this fold's validation images) and test.npy / test_ids.txt."""
    out_dir = Path(out_dir)
    device = select_device()
    torch.set_num_threads(max(1, threads))
    model, checkpoint = load_checkpoint(model_path, device)
    params, n_classes = checkpoint["config"], len(checkpoint["classes"])
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = amp_autocast(device, params.get("amp", "none"))
    transform = build_transform(resize_steps(params))

    images = pd.read_parquet(images_path)
    _, val_rows = fold_split(images, pd.read_csv(folds_path), fold)
    test_rows = images[images["split"] == "test"].reset_index(drop=True)
    workers = max(1, threads - 1) if device == "cuda" else 0
    for name, rows in (("oof", val_rows), ("test", test_rows)):
        dataset = SegmentationDataset(
            [str(Path(image_root) / f) for f in rows["file_name"]], None, transform
        )
        loader = make_loader(
            dataset,
            batch_size,
            shuffle=False,
            seed=0,
            workers=workers,
            pin_memory=device == "cuda",
        )
        side = (
            (params["input_size"],) * 2
            if params.get("input_size")
            else (int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
            if len(rows)
            else (size, size)
        )
        wrapped = tta_model(model, tta_mode, side, size_multiple(params["arch"]))
        write_probabilities(
            wrapped,
            loader,
            rows["image_id"].tolist(),
            n_classes,
            size,
            device,
            autocast,
            out_dir / f"{name}.npy",
            out_dir / f"{name}_ids.txt",
        )
        print(f"{name}: {len(rows)} images -> {out_dir / f'{name}.npy'}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Export OOF and test probabilities of one trained model."
    )
    parser.add_argument("--model", required=True, help="model.pt from segflow.train")
    parser.add_argument("--images", required=True)
    parser.add_argument("--folds", required=True)
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument(
        "--size", type=int, required=True, help="side of the stored probability maps"
    )
    parser.add_argument("--tta", choices=TTA_MODES, default="hflip")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        predict(
            model_path=args.model,
            images_path=args.images,
            folds_path=args.folds,
            image_root=args.image_root,
            fold=args.fold,
            size=args.size,
            tta_mode=args.tta,
            batch_size=args.batch_size,
            out_dir=args.out_dir,
            threads=args.threads,
        )
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    main()
