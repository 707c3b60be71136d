"""Bad input and faults that used to get through (docs/robustness.md names each case):
each stops with a message naming the file, id or key, leaves nothing that looks
complete, or is handled as documented."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from conftest import (
    REPO,
    index_coco,
    job_counts,
    model_params,
    snakemake,
    square,
    train_fold,
    write_coco,
    write_config,
)
from segflow.coco import DataError
from segflow.io import atomic_dir, atomic_path


def index(coco, out, sample=None):
    return index_coco(coco["train"], coco["test"], coco["root"], out, sample=sample)


def jpeg_dataset(root, n_train=6):
    """Real JPEG photos (noise, so they do not compress to nothing) with one object."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k in range(1, n_train + 1):
        images.append({"id": k, "file_name": f"b/{k}.jpg", "width": 64, "height": 64})
        annotations.append(
            {
                "id": 100 + k,
                "image_id": k,
                "category_id": 2,
                "segmentation": [square(8, 8, 40, 40)],
                "iscrowd": 0,
            }
        )
    test = [{"id": 1, "file_name": "t/1.jpg", "width": 64, "height": 64}]
    for image in images + test:
        path = root / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (64, 64, 3), np.uint8))
    train = write_coco(root, "train.json", images, annotations, write_images=False)
    test_json = write_coco(root, "test.json", test, [], write_images=False)
    return {"root": root, "train": train, "test": test_json}


def test_truncated_jpeg_names_file_and_id(tmp_path):
    """[truncated-jpeg] libjpeg pads a truncated JPEG and cv2 reads it; segflow does not."""
    coco = jpeg_dataset(tmp_path / "data")
    path = tmp_path / "data" / "b" / "3.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: int(0.4 * len(data))])
    assert cv2.imread(str(path)) is not None  # the trap: cv2 alone accepts it
    with pytest.raises(DataError, match=r"image id 3.*b/3\.jpg is a broken JPEG"):
        index(coco, tmp_path / "out")
    assert not (tmp_path / "out" / "images.parquet").exists()
    path.write_bytes(data)  # the whole file indexes cleanly
    assert len(index(coco, tmp_path / "out")) == 7


@pytest.mark.workflow
def test_empty_test_set_stops_the_index_and_the_workflow(tmp_path, small_coco):
    """[empty-test-set] no test image: nothing to predict, so nothing runs."""
    test = json.loads(small_coco["test"].read_text())
    small_coco["test"].write_text(json.dumps(test | {"images": []}))
    with pytest.raises(DataError, match=r"test\.json: no test images"):
        index(small_coco, tmp_path / "out")
    write_config(
        tmp_path / "run",
        data={"demo": False, "root": str(small_coco["root"]), "train": "train.json"},
        models={"unet": {"arch": "Unet"}},
    )
    result = snakemake(tmp_path / "run", "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "data.test:" in output and "has no images: nothing to predict" in output
    assert not (tmp_path / "run" / "results").exists()


def test_a_submission_without_rows_fails_the_check(tmp_path):
    """[empty-submission] a header-only CSV is not a submission."""
    from segflow.submission import main

    path = tmp_path / "submission.csv"
    path.write_text("image_id,PredictionString\n")
    with pytest.raises(SystemExit, match="no rows"):
        main(["check", str(path), "--size", "4", "--n-classes", "3"])


@pytest.mark.workflow
def test_test_image_named_like_a_training_image(tmp_path, small_coco):
    """[test-is-train-image] the same file_name in both sets stops before any job."""
    test = json.loads(small_coco["test"].read_text())
    image = {"id": 7, "file_name": "b2/b.png", "width": 40, "height": 30}
    small_coco["test"].write_text(json.dumps(test | {"images": [image]}))
    with pytest.raises(
        DataError, match=r"file_name of a training image.*'b2/b\.png' \(id 7\)"
    ):
        index(small_coco, tmp_path / "out")
    write_config(
        tmp_path / "run",
        data={"demo": False, "root": str(small_coco["root"]), "train": "train.json"},
        models={"unet": {"arch": "Unet"}},
    )
    result = snakemake(tmp_path / "run", "-n", check=False)
    assert result.returncode != 0 and "['b2/b.png']" in result.stdout + result.stderr


def test_debug_mode_still_opens_every_image(tmp_path):
    """[debug-missing-image] a missing image outside the debug sample still stops."""
    coco = jpeg_dataset(tmp_path / "data", n_train=12)
    images = index(coco, tmp_path / "ok", sample=4)
    sampled = set(images.loc[images["split"] == "train", "coco_id"])
    assert len(sampled) == 4
    outside = next(k for k in range(1, 13) if k not in sampled)
    (tmp_path / "data" / "b" / f"{outside}.jpg").unlink()
    with pytest.raises(
        DataError, match=rf"image id {outside}\b.*missing or unreadable"
    ):
        index(coco, tmp_path / "out", sample=4)


def test_named_weights_without_cache_fail_at_once_in_a_training_process(tmp_path):
    """[hub-weights-offline] no retries: downloads are off before any hub import."""
    code = (
        "import time, segflow.data, segflow.models as m\n"  # albumentations first
        "t = time.perf_counter()\n"
        "try:\n"
        "    m.create_model('Unet', 'resnet18', 3, 'imagenet')\n"
        "except m.ModelError as e:\n"
        "    print(f'{time.perf_counter() - t:.1f}', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO / "workflow")}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds, _, message = result.stdout.partition(" ")
    assert "Downloads are off (HF_HUB_OFFLINE=1)" in message, result.stderr[-2000:]
    assert float(seconds) < 5 and time.perf_counter() - started < 60


def outputs_left(job_dir) -> set[str]:
    """What a failed training job left in its folder besides its live progress (which
    says how far it came, and that it never finished)."""
    from segflow.progress import CURVES_FILE, PROGRESS_FILE, read_progress

    if not job_dir.exists():
        return set()
    progress = read_progress(job_dir)
    assert progress is None or not progress.finished
    return {p.name for p in job_dir.iterdir()} - {PROGRESS_FILE, CURVES_FILE}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_diverging_run_stops_with_epoch_and_step_and_saves_nothing(
    tiny_dataset, tmp_path, optimizer
):
    """[diverging-run] a non-finite or exploding loss stops the job; no checkpoint."""
    from segflow.epoch import TrainingDiverged

    settings = model_params(optimizer=optimizer, lr=1e4, scheduler="none", epochs=3)
    with pytest.raises(
        TrainingDiverged, match=r"epoch \d, (validation after )?step \d+: loss"
    ):
        train_fold(tiny_dataset, tmp_path / "run", settings=settings)
    assert outputs_left(tmp_path / "run") == set()


def test_checkpoint_is_written_once_after_the_run(tiny_dataset, tmp_path, monkeypatch):
    """[early-checkpoint] no model.pt of an early epoch at its final path mid-run."""
    import segflow.train

    calls = []
    save = segflow.train.save_checkpoint

    def recording_save(path, *args, **kwargs):
        calls.append((path, (tmp_path / "run" / "metrics.json").exists()))
        save(path, *args, **kwargs)

    monkeypatch.setattr(segflow.train, "save_checkpoint", recording_save)
    metrics = train_fold(
        tiny_dataset, tmp_path / "run", settings=model_params(epochs=3)
    )
    assert calls == [(tmp_path / "run" / "model.pt", True)]  # once, after metrics
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert checkpoint["epoch"] == metrics["best_epoch"]


def test_identical_runs_write_identical_checkpoint_bytes(tiny_dataset, tmp_path):
    """[checkpoint-bytes] a checksum can confirm a reproduced run."""
    for name in ("a", "b"):
        train_fold(
            tiny_dataset, tmp_path / name, seed=3, settings=model_params(epochs=1)
        )
    a, b = ((tmp_path / n / "model.pt").read_bytes() for n in "ab")
    assert a == b


def test_output_folders_and_files_get_the_usual_modes(tmp_path):
    """[folder-modes] not 0700/0600: teammates on a shared cluster can read results."""
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "masks") as folder:
            (folder / "x.png").write_bytes(b"x")
        with atomic_path(tmp_path / "table.csv") as path:
            path.write_text("a\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "masks").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == 0o644


def test_submission_check_of_a_missing_file_is_one_line(tmp_path):
    """[check-missing-file] the file's name and why, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "segflow.submission", "check", str(tmp_path / "no.csv")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO / "workflow")},
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"ERROR: {tmp_path / 'no.csv'}: No such file or directory"
    )


@pytest.mark.workflow
def test_schema_error_is_one_line_naming_the_key(tmp_path):
    """[schema-error] the key and the problem, not the whole schema after them."""
    write_config(tmp_path, cv={"folds": "five"})
    result = snakemake(tmp_path, "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "segflow config: cv.folds: 'five' is not of type 'integer'" in output
    assert "$schema" not in output and "description" not in output
    assert len(output.splitlines()) < 15


@pytest.mark.workflow
def test_a_size_no_model_can_take_stops_before_any_job(tmp_path):
    """[size-misfit] one image size that the arch cannot take: named before any job."""
    root = tmp_path / "data"
    images = [{"id": 1, "file_name": "a.png", "width": 72, "height": 72}]
    write_coco(root, "train.json", images, [])
    write_coco(root, "test.json", [{**images[0], "file_name": "t.png"}], [])
    write_config(
        tmp_path / "run",
        data={"demo": False, "root": str(root), "train": "train.json"},
        models={"deeplab": {"arch": "DeepLabV3Plus"}},
    )
    result = snakemake(tmp_path / "run", "-n", check=False)
    assert result.returncode != 0
    assert (
        "models.deeplab: DeepLabV3Plus needs sides that are multiples of 16, images are"
        " 72x72 (width x height); set input_size, e.g. 80"
        in result.stdout
        + result.stderr
    )
    write_config(
        tmp_path / "run",
        data={"demo": False, "root": str(root), "train": "train.json"},
        models={"deeplab": {"arch": "DeepLabV3Plus", "input_size": 64}},
    )
    assert snakemake(tmp_path / "run", "-n").returncode == 0


@pytest.mark.workflow
def test_a_diverging_job_fails_the_workflow_and_leaves_no_model(tmp_path):
    """[diverging-run] through Snakemake: the job fails, its log says where, no model.pt."""
    write_config(
        tmp_path,
        models={"unet": {"arch": "Unet", "lr": 1e4, "optimizer": "sgd"}},
        cv={"folds": 2},
        defaults={"epochs": 2, "scheduler": "none"},
        wandb={"mode": "disabled"},
    )
    target = "results/r0/train/unet/f0-s0/model.pt"
    result = snakemake(tmp_path, "--cores", "2", target, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/r0/train/unet/f0-s0.log").read_text()
    assert "the run diverged" in log and re.search(r"epoch 1, .*step \d+: loss", log)
    assert outputs_left(tmp_path / "results/r0/train/unet/f0-s0") == set()


@pytest.mark.workflow
def test_a_missing_image_file_stops_before_any_job(tmp_path, small_coco):
    """[missing-image-at-start] a stat per image when the workflow starts: no job runs
    on a dataset whose files are known to be missing (the index still opens each)."""
    (small_coco["root"] / "b2" / "b.png").unlink()
    data = {"demo": False, "root": str(small_coco["root"]), "train": "train.json"}
    write_config(tmp_path / "run", data=data, models={"unet": {"arch": "Unet"}})
    result = snakemake(tmp_path / "run", "-n", check=False)
    assert result.returncode != 0 and not (tmp_path / "run" / "results").exists()
    assert "train.json: 1 image files missing under" in result.stdout + result.stderr
    assert "b2/b.png (id 2)" in result.stdout + result.stderr
    unet = {"unet": {"arch": "Unet"}}  # skip: the index leaves it out and lists it
    write_config(tmp_path / "run", data=data | {"on_error": "skip"}, models=unet)
    assert (
        snakemake(tmp_path / "run", "-n").returncode == 0
    )  # leaves it out and lists it


@pytest.mark.workflow
def test_a_truncated_checkpoint_is_named_removed_and_retrained(tiny_run, tmp_path):
    """[corrupt-checkpoint] a model.pt cut short (a kill, a full disk) fails its predict
    job with its name, and is removed: the next run retrains that model only."""
    source, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir, symlinks=True)  # copy2 keeps mtimes
    model = workdir / "results/r0/train/fpn/f0-s0/model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    target = "results/r0/predict/fpn/f0-s0/test.npy"  # its model is newer: it reruns
    result = snakemake(workdir, "--cores", "1", target, check=False)
    assert result.returncode != 0
    log = (workdir / "results/logs/r0/predict/fpn/f0-s0.log").read_text()
    assert re.search(
        r"results/r0/train/fpn/f0-s0/model\.pt: unreadable checkpoint", log
    )
    assert not model.exists()
    counts = job_counts(snakemake(workdir, "-n", target).stdout)
    assert counts == {"train": 1, "predict": 1}


def test_an_image_linked_out_of_the_root_is_read_with_a_warning(
    small_coco, tmp_path, capfd
):
    """[symlink-out] a file of the image root that links elsewhere is used (a folder on
    a bigger disk is common) but named in the index log."""
    root = small_coco["root"]
    elsewhere = tmp_path / "elsewhere.png"
    os.replace(root / "b2" / "b.png", elsewhere)
    (root / "b2" / "b.png").symlink_to(elsewhere)
    images = index(small_coco, tmp_path / "out")
    assert "b2/b.png" in set(images["file_name"])
    err = capfd.readouterr().err
    assert re.search(r"train\.json: 1 image files are symbolic links out of", err)
    assert "b2/b.png" in err and "b1/a.png" not in err


def test_an_image_over_pils_decompression_limit_names_file_and_id(
    small_coco, tmp_path, monkeypatch, capfd
):
    """[decompression-bomb] PIL refuses images over twice MAX_IMAGE_PIXELS with its own
    exception (not an OSError); the index names the file and id under both settings.
    The limit is lowered here so that a 40 x 30 image is over it."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(
        DataError, match=r"image id 1\b.*b1/a\.png is too large to decode"
    ):
        index(small_coco, tmp_path / "stop")
    with pytest.raises(DataError, match="no usable training image"):
        index_coco(
            small_coco["train"],
            small_coco["test"],
            small_coco["root"],
            tmp_path / "skip",
            on_error="skip",
        )
    err = capfd.readouterr().err
    assert re.search(r"WARNING skipped: .*image id 2\b.*b2/b\.png is too large", err)


def test_an_unreadable_resume_state_starts_the_job_over(tmp_path, capsys):
    """[corrupt-resume] a resume.pt cut short is not resumed from: the job starts over."""
    from segflow.checkpoints import load_training_state

    state = tmp_path / "resume.pt"
    state.write_bytes(b"PK\x03\x04 cut short")
    assert load_training_state(state, "fingerprint") is None
    assert f"{state}: unreadable" in capsys.readouterr().out
