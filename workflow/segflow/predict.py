"""Export a trained model's probabilities: its fold's validation images (OOF) and every
test image.

Test-time augmentation through ttach (``none``, ``hflip``, ``d4``, ``multiscale``). ttach
merges whatever the model returns, so the model is wrapped in a softmax: the merge is a
mean of probabilities, not of logits. Scales are resized bilinearly (ttach's default is
nearest).

A model trained on crops (the ``crop`` setting) predicts each image through an
overlapping sliding window of crop-sized tiles (segflow.sliding_window), TTA applied to
every tile, one image at a time: memory stays flat however large the image.

Each set is stored as segflow.probabilities lays it out (uint8 memmap + id sidecar) at
``size`` (height, width). Batches go straight into the memory map, so peak memory does not
grow with the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import ttach as tta

from segflow.checkpoints import load_checkpoint, trained_input_size
from segflow.data import SegmentationDataset, eval_transform, make_loader
from segflow.device import DeviceError, select_device
from segflow.fold_data import FULL_FIT, fold_split, parse_fold
from segflow.images import image_files
from segflow.input_size import (
    Size,
    as_size,
    parse_size,
    size_multiple,
)
from segflow.probabilities import encode_probabilities, probability_writer
from segflow.progress import ProgressLine
from segflow.runtime import (
    amp_autocast,
    loader_workers,
    resolve_amp,
    set_threads,
    to_device,
)
from segflow.sliding_window import sliding_window
from segflow.step_cli import arg, run_step

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
                    f"tta multiscale: {input_size} x {scale} is not a multiple of"
                    f" {multiple}, which this arch needs"
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
    size: Size,
    device: str,
    autocast,
    out,
    window: tuple[Size, float, int] | None = None,
) -> None:
    """Stream ``model``'s probabilities for ``loader`` into the stored set ``out`` at
    ``size`` (height, width); ``window``: (tile, overlap, tiles per batch) of a sliding
    window."""
    progress = ProgressLine(f"predict {Path(out).name}", len(image_ids))
    with probability_writer(out, image_ids, (n_classes, *size)) as stored:
        with torch.no_grad():
            for batch, index in loader:
                with autocast():
                    batch = to_device(batch, device)
                    if window is None:
                        probabilities = model(batch)
                    else:
                        probabilities = sliding_window(model, batch, *window)
                probabilities = F.interpolate(
                    probabilities.float(),
                    size=size,
                    mode="bilinear",
                    align_corners=False,
                )
                encoded = encode_probabilities(probabilities)  # on the device
                stored[index.numpy()] = encoded.cpu().numpy()
                progress.update(len(index))


@dataclass(frozen=True, kw_only=True)
class PredictArgs:
    """What one prediction job reads, writes and is set by (its command line:
    segflow.step_cli)."""

    model_path: Path = arg("model.pt from segflow.train", flag="--model")
    images_path: Path = arg("images.parquet (both splits)", flag="--images")
    folds_path: Path = arg("folds.csv", flag="--folds")
    image_root: Path = arg("the folder image file names are relative to")
    fold: int | None = arg(f"a fold (f0, f1, ...), or {FULL_FIT}", parse=parse_fold)
    size: Size = arg(
        "height x width of the stored maps (e.g. 96x128, or 96 for 96x96)",
        parse=parse_size,
    )
    tta_mode: str = arg("test-time augmentation", flag="--tta", choices=TTA_MODES)
    batch_size: int = arg("images per batch (tiles per batch with a crop)")
    oof_out: Path = arg("oof.npy (ids written beside)")
    test_out: Path = arg("test.npy (ids written beside)")
    threads: int = arg("CPU threads of the job")
    window_overlap: float = arg(
        "tile overlap of the sliding window (models trained on crops)"
    )


def predict(args: PredictArgs) -> None:
    """Write the OOF set (this fold's validation images; none for the full fit, fold
    None) and the test set, at ``size`` (height, width). ``window_overlap``: of the
    sliding window's tiles, for a model trained on crops."""
    size, batch_size, fold = as_size(args.size), args.batch_size, args.fold
    device = select_device()
    threads = set_threads(args.threads)
    model, checkpoint, settings = load_checkpoint(args.model_path, device)
    n_classes = len(checkpoint["classes"])
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = amp_autocast(device, resolve_amp(settings.amp, device))
    workers = loader_workers(settings.workers, threads, device)

    images = pd.read_parquet(args.images_path)
    # The side the model was trained at: training derives it from the images it reads
    # (the training split alone in round r0), so deriving it here from every image
    # could give another side where the test images' sizes differ.
    side = trained_input_size(checkpoint)
    transform = eval_transform(side)
    crop = as_size(settings.crop)
    window = None
    if crop:
        # One image at a time (sizes may differ); the window batches its tiles.
        window = (crop, args.window_overlap, batch_size)
        batch_size = 1
    _, val_rows = fold_split(images, pd.read_csv(args.folds_path), fold)
    test_rows = images[images["split"] == "test"].reset_index(drop=True)
    for rows, out in ((val_rows, args.oof_out), (test_rows, args.test_out)):
        loader = make_loader(
            SegmentationDataset(image_files(rows, args.image_root), None, transform),
            batch_size,
            shuffle=False,
            seed=0,
            workers=workers,
            pin_memory=device == "cuda",
        )
        if crop:
            seen_at = crop
        elif side:
            seen_at = side
        elif len(rows):
            seen_at = (int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
        else:
            seen_at = size
        wrapped = tta_model(model, args.tta_mode, seen_at, size_multiple(settings.arch))
        ids = rows["image_id"].tolist()
        write_probabilities(
            wrapped, loader, ids, n_classes, size, device, autocast, out, window
        )
        print(f"{len(rows)} images -> {out}", flush=True)


def main(argv=None) -> None:
    run_step(
        predict,
        PredictArgs,
        argv,
        "Export OOF and test probabilities of one trained model.",
        (ValueError, FileNotFoundError, DeviceError),
    )


if __name__ == "__main__":
    main()
