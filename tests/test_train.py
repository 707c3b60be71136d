"""Training on tiny real data: the loss falls, outputs are complete, CPU runs are reproducible."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CLASSES, model_params, train_fold
from segflow.checkpoints import load_checkpoint
from segflow.fold_data import fold_split
from segflow.optim import LrSchedule, create_optimizer
from segflow.settings import WandbSettings


def run(tiny_dataset, out_dir, seed=0, **changes):
    return train_fold(
        tiny_dataset, out_dir, seed=seed, settings=model_params(**changes)
    )


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return out, run(tiny_dataset, out, epochs=3)


def test_training_lowers_the_loss_and_writes_history_and_metrics(trained):
    out, metrics = trained
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert {
        "lr",
        "val_loss",
        "val_miou",
        "seconds",
        "images_per_s",
        "iou_Paper",
    } <= set(history.columns)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert metrics["val_miou"] == pytest.approx(history["val_miou"].max())
    assert metrics["best_epoch"] == int(history["val_miou"].idxmax()) + 1
    assert (
        metrics["train_images"] == 12
        and metrics["val_images"] == 12
        and metrics["device"] == "cpu"
    )


def test_checkpoint_holds_plain_types_and_loads_with_weights_only(trained):
    out, metrics = trained
    checkpoint = torch.load(
        out / "model.pt", weights_only=True
    )  # raises on numpy scalars, Paths...
    assert set(checkpoint) == {
        "state_dict",
        "config",
        "classes",
        "fold",
        "seed",
        "epoch",
        "val_miou",
        "input_size",
    }
    assert (
        checkpoint["epoch"] == metrics["best_epoch"]
        and checkpoint["classes"] == CLASSES
        and checkpoint["input_size"] is None  # the tiny images' own 64 x 64
        and checkpoint["seed"] == 0
        and checkpoint["fold"] == 0
        and checkpoint["val_miou"] == pytest.approx(metrics["val_miou"])
    )
    model, _, _ = load_checkpoint(out / "model.pt")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, len(CLASSES), 64, 64)


def test_the_saved_weights_are_those_of_the_epoch_they_name(tiny_dataset, tmp_path):
    """model.pt scores on fold 0's validation images (recomputed here from the image
    and mask files, with ImageNet normalisation and plain cross-entropy written out)
    the val loss and val mIoU that history.csv gives the epoch the checkpoint names, and
    not another epoch's loss. Plain CE, so that the loss is known without segflow."""
    metrics = run(
        tiny_dataset, tmp_path, epochs=3, loss={"ce": 1.0}, class_weights=None
    )
    history = pd.read_csv(tmp_path / "history.csv").set_index("epoch")
    model, checkpoint, _ = load_checkpoint(tmp_path / "model.pt")
    assert checkpoint["epoch"] == metrics["best_epoch"]
    images = pd.read_parquet(tiny_dataset["images"])
    folds = pd.read_csv(tiny_dataset["folds"])
    val = images.merge(folds, on="image_id").query("fold == 0")
    n = len(CLASSES)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    confusion = np.zeros((n, n), dtype=np.int64)
    losses = []
    for row in val.itertuples():
        bgr = cv2.imread(str(tiny_dataset["root"] / row.file_name))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) / 255.0
        x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).float()[None]
        truth = cv2.imread(
            str(tiny_dataset["masks"] / f"{row.coco_id}.png"), cv2.IMREAD_UNCHANGED
        ).astype(np.int64)
        assert (truth != 255).all()  # every image counts as much in the mean loss
        with torch.no_grad():
            logits = model(x)
        losses.append(
            float(
                torch.nn.functional.cross_entropy(logits, torch.from_numpy(truth)[None])
            )
        )
        prediction = logits.argmax(dim=1)[0].numpy()
        confusion += np.bincount(
            truth.ravel() * n + prediction.ravel(), minlength=n * n
        ).reshape(n, n)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    miou = np.mean(hits[union > 0] / union[union > 0])
    saved = history.loc[checkpoint["epoch"]]
    assert miou == pytest.approx(saved["val_miou"], abs=1e-6)
    assert np.mean(losses) == pytest.approx(saved["val_loss"], rel=1e-4)
    others = history.drop(checkpoint["epoch"])["val_loss"]
    assert (abs(others - np.mean(losses)) > 1e-3).all(), history  # epochs told apart


def test_same_seed_gives_identical_weights_on_cpu(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "a", seed=5, epochs=1)
    run(tiny_dataset, tmp_path / "b", seed=5, epochs=1)
    run(tiny_dataset, tmp_path / "c", seed=6, epochs=1)
    a, b, c = (
        torch.load(tmp_path / x / "model.pt", weights_only=True)["state_dict"]
        for x in "abc"
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "sgd", "scheduler": "plateau", "accumulate": 2, "grad_clip": 1.0},
        {
            "loss": {"focal": 1.0, "lovasz": 0.5},
            "label_smoothing": 0.1,
            "scheduler": "none",
        },
    ],
)
def test_other_optimizers_schedulers_and_losses_run(tiny_dataset, tmp_path, changes):
    metrics = run(tiny_dataset, tmp_path, epochs=1, **changes)
    assert 0.0 <= metrics["val_miou"] <= 1.0


def schedule_lrs(steps=100, **changes) -> list[float]:
    """The lr of each optimizer step of a 10-epoch run of 10 steps per epoch."""
    settings = model_params(epochs=10, lr=1.0, min_lr_ratio=0.01, **changes)
    model = torch.nn.Linear(2, 2)
    optimizer = create_optimizer(model, settings)
    schedule = LrSchedule(optimizer, settings, steps_per_epoch=10)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.after_step()
    return lrs


def test_warmup_then_cosine():
    lrs = schedule_lrs(scheduler="cosine", warmup_epochs=1)
    # Linear from lr / warmup steps, the peak once the 10 warmup steps are done.
    assert lrs[:10] == pytest.approx([0.1 + 0.09 * t for t in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.01, abs=0.002)


def test_cosine_restarts_and_poly():
    restarts = schedule_lrs(
        scheduler="cosine_restarts", warmup_epochs=0, restart_epochs=3
    )
    # Each 30-step cycle starts again at the peak and falls to about the floor.
    assert [restarts[i] for i in (0, 30, 60, 90)] == pytest.approx([1.0] * 4)
    assert restarts[29] < 0.02 and restarts[59] < 0.02
    assert all(a >= b for a, b in zip(restarts[30:59], restarts[31:60]))
    poly = schedule_lrs(scheduler="poly", warmup_epochs=0, poly_power=2.0)
    # (1 - t/T)^2 from 1 to 0.01: at a quarter of the run 0.01 + 0.99 x 0.5625.
    assert poly[25] == pytest.approx(0.01 + 0.99 * 0.75**2, abs=1e-6)
    assert all(a > b for a, b in zip(poly, poly[1:]))


@pytest.mark.parametrize("name", ["lookahead_adamw", "sgd", "radam"])
def test_timm_optimizers(name):
    """timm's factory: the named optimizer, weight decay kept off biases."""
    settings = model_params(optimizer=name, weight_decay=0.05)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = create_optimizer(model, settings)
    inner = getattr(optimizer, "_base_optimizer", optimizer)  # timm's Lookahead wraps
    assert type(inner).__name__.lower() == name.removeprefix("lookahead_")
    assert name.startswith("lookahead") == (type(optimizer).__name__ == "Lookahead")
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.05]  # biases and norm weights, then the conv weight


def test_fold_split_keeps_validation_out_of_training(tiny_dataset):
    images = pd.read_parquet(tiny_dataset["images"])
    folds = pd.read_csv(tiny_dataset["folds"])
    train_rows, val_rows = fold_split(images, folds, 1)
    assert not set(train_rows["image_id"]) & set(val_rows["image_id"])
    assert (val_rows["fold"] == 1).all() and (train_rows["split"] == "train").all()
    with pytest.raises(ValueError, match="fold 7 has no validation images"):
        fold_split(images, folds, 7)


def test_image_size_that_does_not_fit_the_arch_is_a_clear_error():
    from segflow.input_size import model_input_size

    sizes = [(72, 72), (72, 72)]
    with pytest.raises(
        ValueError,
        match=r"DeepLabV3Plus needs sides that are multiples of 16, images are 72x72"
        r" \(width x height\); set input_size, e\.g\. 80 ",
    ):
        model_input_size(sizes, "DeepLabV3Plus", None)
    assert model_input_size(sizes, "DeepLabV3Plus", 64) == (64, 64)  # resized: fine
    assert (
        model_input_size(sizes, "Unet", None) is None
    )  # Unet takes any size: as they are
    with pytest.raises(ValueError, match="input_size 72 does not fit DeepLabV3Plus"):
        model_input_size(sizes, "DeepLabV3Plus", 72)
    # 480x360 (width x height): the suggestion keeps the aspect, it does not upsample
    # 360 to 480 (the nearest multiples of 16: 368 and 480).
    with pytest.raises(ValueError, match=r"e\.g\. \[368, 480\]"):
        model_input_size([(360, 480)], "DeepLabV3Plus", None)
    with pytest.raises(ValueError, match=r"crop \[40, 72\] does not fit FPN"):
        model_input_size(sizes, "FPN", None, [40, 72])
    assert model_input_size(sizes, "FPN", [64, 96], [32, 64]) == (64, 96)


def test_mixed_image_sizes_train_at_a_size_derived_from_the_data():
    """The most common (height, width), each side rounded to the nearest multiple of
    the arch's (ties: the larger size): the aspect of most images is kept."""
    from segflow.input_size import model_input_size

    sizes = [(480, 640)] * 3 + [(512, 512)] * 2 + [(300, 200)]
    assert model_input_size(sizes, "Unet", None) == (480, 640)
    assert model_input_size([(100, 90), (70, 50)], "DeepLabV3Plus", None) == (96, 96)
    assert model_input_size([(820, 550), (825, 550)] * 2, "FPN", None) == (832, 544)
    assert model_input_size(sizes, "FPN", 256) == (256, 256)  # input_size wins
    assert model_input_size(sizes, "FPN", [256, 320]) == (256, 320)


def test_a_dataset_of_mixed_sizes_trains_and_predicts(tmp_path, monkeypatch):
    """Images of three sizes, no input_size: both steps resize to the derived side, the
    one training derived."""
    from conftest import index_coco, predict_fold, train_fold
    from segflow.demo import make_demo
    from segflow.folds import make_folds

    data = tmp_path / "data"
    make_demo(
        data,
        CLASSES,
        seed=0,
        train_images=12,
        test_images=3,
        size=48,
        batches=2,
        noise_rate=0.0,
    )
    coco = json.loads((data / "train_all.json").read_text())
    import cv2

    for image, side in zip(coco["images"], [48, 64, 40] * 4):
        path = data / image["file_name"]
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (side, side)))
        scale = side / image["width"]
        image["width"] = image["height"] = side
        for annotation in coco["annotations"]:
            if annotation["image_id"] == image["id"]:
                annotation["segmentation"] = [
                    [v * scale for v in polygon]
                    for polygon in annotation["segmentation"]
                ]
    (data / "train_all.json").write_text(json.dumps(coco))
    tiny = {
        "root": data,
        "images": tmp_path / "images.parquet",
        "masks": tmp_path / "masks",
        "folds": tmp_path / "folds.csv",
    }
    images = index_coco(
        data / "train_all.json", data / "test.json", data, tmp_path, sample=None
    )
    assert images["width"].nunique() == 3
    make_folds(images, len(CLASSES), "kfold", 2, seed=0).to_csv(
        tiny["folds"], index=False
    )
    metrics = train_fold(tiny, tmp_path / "run", settings=model_params(epochs=1))
    assert metrics["val_images"] == 6
    out = predict_fold(tiny, tmp_path / "run" / "model.pt", tmp_path / "predict")
    assert np.load(out / "test.npy").shape[1:] == (len(CLASSES), 48, 48)

    # As the workflow runs round r0: training reads the training split's table, where
    # 48, 64 and 40 px tie (the larger wins: 64), prediction the whole index, where the
    # three 48 px test images make 48 the most common. The model is predicted at the
    # side it was trained at, which its checkpoint holds.
    import segflow.predict

    train_only = dict(tiny, images=tmp_path / "train_images.parquet")
    images[images["split"] == "train"].to_parquet(train_only["images"])
    unet = model_params(epochs=1, arch="Unet")  # any side: no rounding to hide it
    train_fold(train_only, tmp_path / "split", settings=unet)
    checkpoint = torch.load(tmp_path / "split" / "model.pt", weights_only=True)
    assert checkpoint["input_size"] == [64, 64]
    seen = []
    real = segflow.predict.eval_transform
    monkeypatch.setattr(
        segflow.predict, "eval_transform", lambda side: seen.append(side) or real(side)
    )
    predict_fold(tiny, tmp_path / "split" / "model.pt", tmp_path / "split_predict")
    assert seen == [(64, 64)]


def test_wandb_offline_writes_a_local_run_and_nothing_else(
    tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    train_fold(
        tiny_dataset,
        tmp_path / "run",
        wandb=WandbSettings("offline", "segflow-test", str(tmp_path / "wandb")),
        run_name="r0/fpn/f0-s0",
    )
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(
        runs[0].glob("*.wandb")
    )  # synced later with `wandb sync`


def test_torch_never_gets_more_threads_than_the_process_has_cores():
    import torch

    from segflow.runtime import available_cores, set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(available_cores() + 6) == available_cores()
        assert torch.get_num_threads() == available_cores()
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# One training job as the workflow runs it, in its own process: argv = the tiny dataset
# (JSON), the job folder, the epochs.
TRAINING_JOB = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import model_params, train_fold
augment = [{{"HorizontalFlip": {{"p": 0.5}}}}, {{"RandomBrightnessContrast": {{}}}}]
# EMA and CutMix: their states (the average, the mixing's random stream) resume too.
settings = model_params(epochs=int(sys.argv[3]), augment=augment, averaging="ema",
                        mix="cutmix")
train_fold(json.loads(sys.argv[1]), sys.argv[2], settings=settings, run_name="r0/m/f0",
           resume_every_s=0)
"""


def test_a_killed_training_job_resumes_and_ends_with_the_uninterrupted_weights(
    tiny_dataset, tmp_path
):
    """kill -9 after an epoch, run again: it goes on from the last saved epoch (not from
    the start) and ends with the same weights, history and metrics as a run never
    killed (CPU), then leaves no resume state behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO
    from segflow.checkpoints import RESUME_FILE
    from segflow.progress import read_progress

    script = TRAINING_JOB.format(tests=str(REPO / "tests"))
    dataset = json.dumps({k: str(v) for k, v in tiny_dataset.items()})

    def job(out_dir, **kwargs):
        command = [sys.executable, "-c", script, dataset, str(out_dir), "3"]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **kwargs)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert job(whole).wait(timeout=300) == 0
    first = job(killed)
    deadline = time.time() + 300
    while time.time() < deadline:  # until epoch 2 is done and a state is saved
        progress = (
            read_progress(killed) if (killed / "progress.json").exists() else None
        )
        if (
            progress is not None
            and progress.epoch >= 2
            and (killed / RESUME_FILE).exists()
        ):
            break
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not (killed / "model.pt").exists() and (killed / RESUME_FILE).exists()
    second = job(killed)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    resumed_after = int(output.split("resumed after epoch ")[1].split()[0])
    assert 1 <= resumed_after < 3
    assert (
        f"epoch {resumed_after}/3" not in output
    )  # the saved epochs were not retrained
    expected, got = (
        torch.load(d / "model.pt", weights_only=True) for d in (whole, killed)
    )
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for name, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][name]), name
    columns = ["epoch", "lr", "train_loss", "val_loss", "val_miou"]
    assert pd.read_csv(whole / "history.csv")[columns].equals(
        pd.read_csv(killed / "history.csv")[columns]
    )
    assert not (killed / RESUME_FILE).exists() and not (whole / RESUME_FILE).exists()


def test_a_saved_state_of_another_job_is_not_resumed(tmp_path):
    """A rerun after a config or data change (another fingerprint) starts over."""
    from segflow.checkpoints import (
        RESUME_FILE,
        load_training_state,
        save_training_state,
    )

    state = {"fingerprint": "job A", "epoch": 1, "model": {"w": torch.ones(2)}}
    save_training_state(tmp_path / RESUME_FILE, state)
    assert load_training_state(tmp_path / RESUME_FILE, "job B") is None
    loaded = load_training_state(tmp_path / RESUME_FILE, "job A")
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], torch.ones(2))
    assert load_training_state(tmp_path / "missing.pt", "job A") is None


def test_the_stored_input_side_reads_back_height_first():
    from segflow.checkpoints import trained_input_size

    assert trained_input_size({"input_size": [48, 64]}) == (48, 64)
    assert trained_input_size({"input_size": None}) is None  # images as they are


def test_the_last_labelled_epochs_leave_the_pseudo_labelled_images_out():
    """FoldLoaders picks the labelled-only loader for the last ``labelled_epochs`` of
    the run, and counts the run's optimizer steps per epoch's loader (at least one)."""
    from segflow.fold_loaders import FoldLoaders

    mixed, labelled = list(range(10)), list(range(3))  # batches per epoch
    loaders = FoldLoaders(mixed, labelled, None, None, epochs=5, labelled_epochs=2)
    assert [loaders.for_epoch(e) is labelled for e in range(1, 6)] == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert loaders.optimizer_steps(accumulate=1) == 3 * 10 + 2 * 3
    assert loaders.optimizer_steps(accumulate=4) == 3 * 2 + 2 * 1
    none = FoldLoaders(mixed, labelled, None, None, epochs=5, labelled_epochs=0)
    assert all(none.for_epoch(e) is mixed for e in range(1, 6))


def test_an_epoch_is_kept_only_when_it_validates_better():
    """RunState.keep_if_best: a better val mIoU replaces the kept epoch and copies its
    weights; an equal, worse or NaN one does not; without validation every epoch does."""
    import math

    import torch

    from segflow.run_state import RunState

    class NoAverage:
        active = False

    model = torch.nn.Linear(2, 1)
    state = RunState(model, None, None, None, None, NoAverage(), None)
    assert state.keep_if_best(1, {"val_miou": 0.3})
    kept = state.best_state["weight"].clone()
    with torch.no_grad():
        model.weight += 1
    for worse in (0.3, 0.2, math.nan):
        assert not state.keep_if_best(2, {"val_miou": worse})
    assert state.best["epoch"] == 1 and torch.equal(state.best_state["weight"], kept)
    assert state.keep_if_best(3, {"val_miou": 0.31})
    assert state.best == {"epoch": 3, "val_miou": 0.31}
    assert torch.equal(state.best_state["weight"], model.weight)
    full_fit = RunState(model, None, None, None, None, NoAverage(), None)
    assert full_fit.keep_if_best(1, {}) and full_fit.keep_if_best(2, {})
    assert full_fit.best == {"epoch": 2, "val_miou": None}


def test_folds_are_named_f_number_and_the_full_fit_full():
    """Job folders and --fold: f0, f1, ... and full; anything else is refused."""
    from segflow.fold_data import fold_name, parse_fold

    assert [fold_name(f) for f in (0, 3, 12, None)] == ["f0", "f3", "f12", "full"]
    for fold in (0, 3, 12, None):
        assert parse_fold(fold_name(fold)) == fold
    for bad in ("3", "all", "fall", "f", "f-1", "F3"):
        with pytest.raises(ValueError, match="f<number>"):
            parse_fold(bad)


def test_an_unreadable_or_foreign_resume_file_is_ignored_with_a_word(tmp_path, capsys):
    """A state cut short (a kill while it was written) or not a dict starts over."""
    from segflow.checkpoints import load_training_state, save_training_state

    path = tmp_path / "resume.pt"
    save_training_state(path, {"fingerprint": "A", "epoch": 3})
    path.write_bytes(path.read_bytes()[:40])
    assert load_training_state(path, "A") is None
    said = capsys.readouterr().out
    assert (
        f"{path}: unreadable (" in said and "Error" in said and "NoneType" not in said
    )
    torch.save([1, 2], path)
    assert load_training_state(path, "A") is None
    assert "another version of this job" in capsys.readouterr().out


def test_a_run_state_saved_and_loaded_restores_every_part(tiny_dataset, tmp_path):
    """RunState.state_dict -> save -> a fresh run's resume: the epoch the loop goes on
    after, history, best epoch and weights, presentations, model, optimizer, schedule,
    mixer and loader random streams, and the global random state, all as saved."""
    import random

    import pandas as pd

    from segflow.fold_data import RoundLabels, fold_data
    from segflow.fold_loaders import fold_loaders
    from segflow.models import create_model
    from segflow.run_state import new_run_state

    settings = model_params(epochs=3, mix="cutmix")
    images = pd.read_parquet(tiny_dataset["images"])
    data = fold_data(
        images,
        pd.read_csv(tiny_dataset["folds"]),
        0,
        tiny_dataset["root"],
        tiny_dataset["masks"],
        RoundLabels.none(),
    )

    def fresh(seed):
        torch.manual_seed(seed)
        loaders = fold_loaders(data, settings, len(CLASSES), (64, 64), 0, 0, "cpu")
        model = create_model("FPN", "mobilenet_v2", len(CLASSES), None)
        return new_run_state(model, settings, len(CLASSES), "none", data, loaders, 0)

    saved = fresh(0)
    batch, _ = next(iter(saved.loaders.train))  # moves the loader's streams
    saved.model(batch).mean().backward()
    saved.optimizer.step()  # AdamW's moments exist now
    saved.mixer.rng.random(5)
    for _ in range(3):
        saved.schedule.after_step()
    saved.epoch, saved.presentations = 2, 24
    saved.history += [{"epoch": 1, "val_miou": 0.1}, {"epoch": 2, "val_miou": 0.3}]
    saved.first_loss.append(2.5)
    assert saved.keep_if_best(2, {"val_miou": 0.3})
    random.seed(7)
    saved.save(tmp_path / "resume.pt", "job")
    expected_draw = (random.random(), torch.rand(1), np.random.rand())
    expected_mix = saved.mixer.rng.random()
    expected_batch = next(iter(saved.loaders.train))[0]

    resumed = fresh(1)  # other weights and streams until it resumes
    assert not torch.equal(
        next(resumed.model.parameters()), next(saved.model.parameters())
    )
    assert resumed.resume(tmp_path / "resume.pt", "job")
    assert (resumed.epoch, resumed.presentations) == (2, 24)
    assert resumed.history == saved.history and resumed.first_loss == [2.5]
    assert resumed.best == {"epoch": 2, "val_miou": 0.3}
    for key, value in saved.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
        assert torch.equal(resumed.best_state[key], value), key
    assert resumed.schedule.steps == saved.schedule.steps == 3
    moments = saved.optimizer.state_dict()["state"]
    assert moments and resumed.optimizer.state_dict()["state"].keys() == moments.keys()
    for key, value in moments[0].items():
        assert torch.equal(resumed.optimizer.state_dict()["state"][0][key], value)
    assert (
        resumed.optimizer.param_groups[0]["lr"] == saved.optimizer.param_groups[0]["lr"]
    )
    drawn = (random.random(), torch.rand(1), np.random.rand())
    assert drawn[0] == expected_draw[0] and torch.equal(drawn[1], expected_draw[1])
    assert drawn[2] == expected_draw[2]
    assert resumed.mixer.rng.random() == expected_mix
    assert torch.equal(next(iter(resumed.loaders.train))[0], expected_batch)
    assert not resumed.resume(tmp_path / "resume.pt", "another job")


class NotPlain:
    """An object torch.load(weights_only=True) refuses to build."""


def test_a_checkpoint_reads_back_every_field_it_was_given(tmp_path):
    """save_checkpoint -> read_checkpoint without training: the values under their
    documented keys, val_miou None for the full fit and a float otherwise."""
    from segflow.checkpoints import read_checkpoint, save_checkpoint

    state = {"w": torch.arange(6.0).reshape(2, 3).t()}  # not contiguous: stored so
    settings = model_params()
    save_checkpoint(
        tmp_path / "a.pt",
        state,
        settings,
        ["bg", "x"],
        2,
        7,
        5,
        np.float32(0.25),
        (48, 64),
    )
    got = read_checkpoint(tmp_path / "a.pt")
    assert torch.equal(got["state_dict"]["w"], state["w"])
    assert got["config"] == settings.to_dict() and got["classes"] == ["bg", "x"]
    assert (got["fold"], got["seed"], got["epoch"]) == (2, 7, 5)
    assert got["input_size"] == [48, 64]
    assert type(got["val_miou"]) is float and got["val_miou"] == 0.25
    save_checkpoint(
        tmp_path / "full.pt", state, settings, ["bg", "x"], None, 0, 3, None, None
    )
    full = read_checkpoint(tmp_path / "full.pt")
    assert (
        full["fold"] is None and full["val_miou"] is None and full["input_size"] is None
    )


def test_a_checkpoint_without_weights_or_with_objects_is_refused_and_removed(tmp_path):
    """A file that is no checkpoint (no state_dict) or holds arbitrary objects (read
    with weights_only: never unpickled) fails with its name and is removed, so the next
    run retrains it."""
    from segflow.checkpoints import CheckpointError, read_checkpoint

    cases = {
        "plain.pt": {"weights": torch.ones(1)},
        "objects.pt": {"state_dict": NotPlain()},
    }
    for name, content in cases.items():
        path = tmp_path / name
        torch.save(content, path)
        with pytest.raises(CheckpointError, match=rf"{name}: unreadable checkpoint"):
            read_checkpoint(path)
        assert not path.exists()
    torch.save({"weights": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no state_dict in it"):
        read_checkpoint(tmp_path / "plain.pt")


def test_a_full_fit_with_averaged_weights_keeps_them_unscored(tiny_dataset, tmp_path):
    """No validation images (the full fit) and SWA: the averaged weights are kept, with
    no val mIoU, at the last epoch."""
    from segflow.checkpoints import read_checkpoint

    metrics = train_fold(
        tiny_dataset,
        tmp_path,
        fold=None,
        settings=model_params(epochs=2, averaging="swa"),
    )
    assert metrics["val_miou"] is None and metrics["best_epoch"] == 2
    assert metrics["averaged_epochs"] == [2]
    checkpoint = read_checkpoint(tmp_path / "model.pt")
    assert checkpoint["val_miou"] is None and checkpoint["epoch"] == 2
