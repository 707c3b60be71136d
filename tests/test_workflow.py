"""The workflow through the Snakemake CLI: config errors, dry run, DAG, lint, a tiny real run."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import (
    DEFAULT_CONFIG,
    REPO,
    TINY_MODELS,
    demo_resolved,
    job_counts,
    snakemake,
    write_coco,
    write_config,
)
from segflow.fold_data import fold_name
from stage_files import label_reader, oof_miou, read_mask

# Tests that name models fix them, whatever config.yaml's default models are.
TWO_MODELS = {
    "deeplab_r18": {"arch": "DeepLabV3Plus", "encoder": "resnet18"},
    "fpn_r18": {"arch": "FPN", "encoder": "resnet18"},
}
R0_ONLY = {"clean": {"enabled": False}, "pseudo": {"enabled": False}}

pytestmark = pytest.mark.workflow


# --- config validation: stops before any job, naming the key or file -----------------------


@pytest.mark.parametrize(
    "changes,words",
    [
        (
            {"cv": {"method": "kfold", "foldz": 3}},
            ["Additional properties are not allowed", "foldz"],
        ),
        ({"colour": "red"}, ["Additional properties are not allowed", "colour"]),
        ({"cv": {"folds": "five"}}, ["'five' is not of type 'integer'", "folds"]),
        ({"cv": {"method": "random"}}, ["'random' is not one of", "method"]),
        (
            {"demo": {"noise_rate": 1.5}},
            ["1.5 is greater than the maximum of 1", "noise_rate"],
        ),
        ({"data": {"on_error": "ignore"}}, ["'ignore' is not one of", "on_error"]),
        (
            {"cv": {"group_by": "batch_(\\d"}},
            ["cv.group_by", "neither 'folder' nor a valid regex"],
        ),
    ],
)
def test_bad_config_value_stops_before_any_job(tmp_path, changes, words):
    write_config(tmp_path, **changes)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    for word in words:
        assert word in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_class_list_is_reported(tmp_path):
    config = write_config(tmp_path)
    del config["classes"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", check=False)
    assert (
        result.returncode != 0
        and "'classes' is a required property" in result.stdout + result.stderr
    )


def own_data(tmp_path, **data):
    root = tmp_path / "mydata"
    write_coco(
        root,
        "train_all.json",
        [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        [],
    )
    write_coco(
        root,
        "test.json",
        [{"id": 1, "file_name": "t.png", "width": 32, "height": 32}],
        [],
    )
    return {"data": {"demo": False, "root": str(root), **data}}


@pytest.mark.parametrize(
    "data,words",
    [
        ({"train": "nope.json"}, ["data.train: file", "nope.json does not exist"]),
        ({"test": "nope.json"}, ["data.test: file", "nope.json does not exist"]),
        (
            {"root": "/no/such/folder"},
            ["data.root: folder /no/such/folder does not exist"],
        ),
    ],
)
def test_missing_data_path_stops_before_any_job(tmp_path, data, words):
    config = own_data(tmp_path)
    config["data"].update(data)
    write_config(tmp_path, **config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    for word in words:
        assert word in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_class_list_not_matching_categories_stops_before_any_job(tmp_path):
    config = own_data(tmp_path)
    write_config(tmp_path, **config, classes=["Background", "Paper", "Glass"])
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train_all.json: categories do not match config 'classes'" in output
    assert "categories not in classes: ['Battery', 'Clothing'" in output


def test_own_dataset_by_config_only(tmp_path):
    write_config(tmp_path, **own_data(tmp_path))
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    assert "demo" not in counts and counts["index"] == 1


# --- the DAG -----------------------------------------------------------------------------


def test_dry_run_of_the_default_config_runs_every_stage(tmp_path):
    """The README's main job: r0 with its full fits, cleaning, pseudo labels, round r1
    warm-started from r0, the ensembles, the submission and the demo's scores."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    config = demo_resolved(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert config["cv"]["folds"] == 3  # the demo's own, from demo.overrides
    output = snakemake(tmp_path, "-n").stdout
    counts = job_counts(output)
    models, seeds = len(config["models"]), len(config["cv"]["seeds"])
    runs = models * (config["cv"]["folds"] + 1) * seeds  # + the full fit
    assert counts == {
        "all": 1,
        "demo": 1,
        "eda": 1,
        "folds": 1,
        "index": 1,
        "index_train": 1,
        "index_test": 1,
        "train": 2 * runs,
        "predict": 2 * runs,
        "oof_score": 2 * models,
        "ensemble": 2,
        "clean": 1,
        "pseudo_labels": 1,
        "submission": 1,
        "demo_score": 1,
        "demo_noise": 1,
        "demo_rounds": 1,
        "leaderboard": 1,
    }
    model = next(iter(config["models"]))
    assert f"output: results/r1/train/{model}/f0-s0/model.pt" in output
    assert f"output: results/r0/train/{model}/full-s0/model.pt" in output
    assert f"--init results/r0/train/{model}/f0-s0/model.pt" in output  # warm start
    assert "--labels results/r1/ensemble/test_labels.npy" in output  # r1 submits


def test_the_submission_target_by_name(tmp_path):
    write_config(tmp_path)
    counts = job_counts(
        snakemake(
            tmp_path, "-n", "-j4", "--resources", "gpu=1", "--", "submission"
        ).stdout
    )
    assert (
        counts["submission"] == 1
        and counts["ensemble"] == 2  # r0's teaches r1; r1's submits
        and "demo_score" not in counts
    )


def test_ensemble_members_from_config(tmp_path):
    write_config(
        tmp_path,
        models={"a": {}, "b": {"arch": "FPN"}},
        cv={"seeds": [0, 1]},
        ensemble={"members": ["a/s1", "b"]},
        **R0_ONLY,
    )
    output = snakemake(tmp_path, "-n", "results/ensemble/summary.json").stdout
    submission = snakemake(tmp_path, "-n", "--", "submission").stdout
    assert "--labels results/ensemble/test_labels.npy" in submission  # not r0's own
    assert (
        "results/r0/predict/a/f0-s1/oof.npy" in output
        and "results/r0/predict/a/f0-s0/oof.npy" not in output
    )
    assert (
        "results/r0/predict/b/f0-s0/oof.npy" in output
        and "results/r0/predict/b/f0-s1/oof.npy" in output
    )
    write_config(tmp_path, ensemble={"members": ["nosuchmodel"]}, **R0_ONLY)
    result = snakemake(tmp_path, "-n", check=False)
    assert (
        result.returncode != 0
        and "ensemble.members: 'nosuchmodel' names no trained round, model"
        in result.stdout + result.stderr
    )
    write_config(
        tmp_path, ensemble={"members": ["r1/a"]}, **R0_ONLY
    )  # no round r1 while cleaning and pseudo labels are off
    result = snakemake(tmp_path, "-n", check=False)
    assert (
        result.returncode != 0
        and "'r1/a' names no trained round" in result.stdout + result.stderr
    )


def test_cleaning_adds_round_r1_and_the_submission_comes_from_it(tmp_path):
    write_config(
        tmp_path,
        models=TWO_MODELS,
        clean={"enabled": True},
        pseudo={"enabled": False},
        cv={"full_fit": False},
    )
    output = snakemake(tmp_path, "-n").stdout
    counts = job_counts(output)
    runs = 2 * 3  # 2 models x 3 folds x 1 seed per round
    assert counts == {
        "all": 1,
        "demo": 1,
        "eda": 1,
        "folds": 1,
        "index": 1,
        "index_train": 1,
        "index_test": 1,
        "train": 2 * runs,
        "predict": 2 * runs,
        "oof_score": 4,
        "clean": 1,
        "demo_noise": 1,
        "ensemble": 2,
        "submission": 1,
        "demo_score": 1,
        "demo_rounds": 1,
        "leaderboard": 1,
    }  # one ensemble per round: r0's judges the labels, r1's is the submission's
    assert (
        "results/r1/predict/fpn_r18/f0-s0/oof.npy" in output
        and "--train-masks-dir results/clean/masks --drop results/clean/dropped.txt"
        in output
    )
    write_config(
        tmp_path, models=TWO_MODELS, clean={"enabled": True, "source": "fpn_r18"}
    )
    counts = job_counts(snakemake(tmp_path, "-n", "results/clean/summary.json").stdout)
    assert counts == {
        "demo": 1,
        "index": 1,
        "index_train": 1,
        "index_test": 1,
        "folds": 1,
        "train": 3,
        "predict": 3,
        "clean": 1,
    }  # one model's r0 fold runs judge (its full fit has no OOF)
    write_config(tmp_path, clean={"enabled": True, "source": "nosuchmodel"})
    result = snakemake(tmp_path, "-n", check=False)
    assert (
        result.returncode != 0
        and "clean.source: 'nosuchmodel'" in result.stdout + result.stderr
    )


def test_dry_run_holds_models_x_folds_x_seeds_jobs(tmp_path):
    models = {"a": {}, "b": {"arch": "FPN"}, "c": {"encoder": "mobilenet_v2"}}
    write_config(
        tmp_path,
        models=models,
        cv={"folds": 4, "seeds": [0, 1]},
        clean={"enabled": False},
        pseudo={"enabled": False},
    )
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    assert counts["train"] == counts["predict"] == 3 * (4 + 1) * 2  # + the full fits
    assert counts["oof_score"] == 3


def test_holdout_trains_one_fold(tmp_path):
    write_config(
        tmp_path,
        models=TWO_MODELS,
        cv={"method": "holdout", "seeds": [0, 1], "full_fit": False},
        clean={"enabled": False},
        pseudo={"enabled": False},
    )
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    assert counts["train"] == 2 * 2  # 2 models x fold 0 x 2 seeds


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"defaults": {"optimizer": "adam"}}, ["'adam' is not one of", "optimizer"]),
        (
            {"models": {"m": {"loss": {"bce": 1.0}}}},
            ["Additional properties are not allowed", "bce"],
        ),
        ({"models": {"bad-name": {}}}, ["bad-name", "does not match"]),
        (
            {"models": {"m": {"arch": "Unet3"}}},
            ["models.m.arch", "'Unet3' is not one of"],
        ),
        ({"models": {"m": {"lr": float("nan")}}}, ["models.m.lr: not a finite number"]),
        (
            {"defaults": {"weight_decay": float("inf")}},
            ["defaults.weight_decay: not a"],
        ),
        (
            {"classes": ["Background", "<script>alert(1)</script>"]},
            ["classes.1", "does not match"],
        ),
    ],
)
def test_bad_model_config_stops_before_any_job(tmp_path, changes, words):
    write_config(tmp_path, **changes)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    for word in words:
        assert word in result.stdout + result.stderr


def test_eda_alone_needs_no_folds(tmp_path):
    write_config(tmp_path)
    counts = job_counts(snakemake(tmp_path, "-n", "results/eda/report.html").stdout)
    assert counts == {
        "demo": 1,
        "eda": 1,
        "index": 1,
        "index_train": 1,
        "index_test": 1,
    }


def test_dag_view(tmp_path):
    write_config(tmp_path)
    dag = snakemake(tmp_path, "--dag").stdout
    assert dag.lstrip().startswith("digraph")
    for rule in ("demo", "index_train", "index_test", "index", "eda", "folds"):
        assert f'label = "{rule}"' in dag


def test_resources_flag_needs_the_double_dash_and_the_profile_sets_it(tmp_path):
    """TRAPS: argparse reads a target after --resources as another resource."""
    write_config(tmp_path)
    assert (
        job_counts(
            snakemake(
                tmp_path,
                "-n",
                "-j4",
                "--resources",
                "gpu=1",
                "--",
                "results/folds/folds.csv",
            ).stdout
        )["folds"]
        == 1
    )
    profile = yaml.safe_load(
        (REPO / "profiles" / "default" / "config.yaml").read_text()
    )
    assert profile["resources"] == {"gpu": 1}
    plain = snakemake(tmp_path, "-n", "results/folds/folds.csv")
    assert "Using workflow specific profile" in plain.stdout + plain.stderr


def test_lint_is_clean(tmp_path):
    write_config(tmp_path)
    result = snakemake(tmp_path, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    import subprocess
    import sys

    files = [
        str(REPO / "Snakefile"),
        *map(str, sorted((REPO / "workflow" / "rules").glob("*.smk"))),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- a tiny real run (conftest.tiny_run) ----------------------------------------------------

TARGETS = ("all",)


def dry_run_with(workdir, config, tmp_path, **changes):
    """Job counts of a dry run of every target under ``config`` changed by ``changes``."""
    from conftest import deep_update

    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(deep_update(config, changes)))
    # Targets first: --configfile, like --resources, takes several values.
    output = snakemake(workdir, *TARGETS, "-n", "--configfile", str(changed)).stdout
    counts = {} if "Nothing to be done" in output else job_counts(output)
    counts.pop("all", None)
    return counts, output


def test_tiny_run_writes_index_masks_eda_and_folds(tiny_run):
    workdir, config = tiny_run
    results = workdir / "results"
    images = pd.read_parquet(results / "data" / "images.parquet")
    train = images[images["split"] == "train"]
    assert (
        len(train) == 16 and (images["split"] == "test").sum() == 6
    )  # debug sample; 6 test images exist
    assert sorted(p.name for p in (results / "data" / "masks").glob("*.png")) == sorted(
        f"{i}{kind}.png" for i in train["coco_id"] for kind in ("", "_instances")
    )
    folds = pd.read_csv(results / "folds" / "folds.csv")
    assert sorted(folds["image_id"]) == sorted(train["image_id"]) and sorted(
        folds["fold"].unique()
    ) == [0, 1]
    for log in ("demo", "index/train", "index/test", "index/merge", "eda", "folds"):
        assert (results / "logs" / f"{log}.log").is_file()
    assert (results / "benchmarks" / "index" / "train.tsv").is_file()
    assert not [p for p in results.rglob("*") if "partial" in p.name]


def test_tiny_run_eda_report_and_stats_agree_with_the_index(tiny_run):
    workdir, config = tiny_run
    results = workdir / "results"
    stats = json.loads((results / "eda" / "stats.json").read_text())
    images = pd.read_parquet(results / "data" / "images.parquet")
    annotations = pd.read_parquet(results / "data" / "annotations.parquet")
    train = images[images["split"] == "train"]
    assert stats["images"] == {"train": 16, "test": 6}
    assert stats["annotations"] == len(annotations) == int(train["n_objects"].sum())
    assert sum(c["pixels"] for c in stats["classes"]) == int(
        (train["width"] * train["height"]).sum()
    )
    assert [c["name"] for c in stats["classes"]] == config["classes"]
    html = (results / "eda" / "report.html").read_text()
    figures = sorted(p.stem for p in (results / "eda" / "figures").glob("*.png"))
    assert figures == sorted(
        [
            "splits",
            "class_share",
            "images_per_class",
            "object_size",
            "objects_per_image",
            "image_stats",
            "cooccurrence",
            "gallery",
        ]
    )
    assert len(re.findall(r'src="data:image/png;base64,', html)) == len(
        figures
    )  # standalone: all embedded
    assert 'src="http' not in html and "<link" not in html


def test_tiny_run_trains_predicts_and_scores_every_model(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results" / "r0"
    for model in TINY_MODELS:
        summary = json.loads((results / "oof" / f"{model}.json").read_text())
        assert summary["model"] == model and summary["seeds"]["0"]["images"] == 16
        assert summary["miou"] == pytest.approx(
            oof_miou_from_files(workdir / "results", model, "data/masks", "r0")
        )
        assert len(pd.read_csv(results / "oof" / f"{model}.csv")) == 16
        for fold in (0, 1):
            run = f"{model}/f{fold}-s0"
            assert {p.name for p in (results / "train" / run).iterdir()} == {
                "model.pt",
                "history.csv",
                "metrics.json",
                "progress.json",  # live progress, not rule outputs (segflow.progress)
                "curves.png",
            }
            assert (results / "predict" / run / "test.npy").is_file()
            assert (
                "epoch 1/1 train_loss"
                in (
                    workdir / "results" / "logs" / "r0" / "train" / f"{run}.log"
                ).read_text()
            )
            assert (
                workdir / "results" / "benchmarks" / "r0" / "train" / f"{run}.tsv"
            ).is_file()
    assert not (workdir / "results" / "wandb").exists()  # disabled: nothing written


def test_long_steps_write_their_progress_into_their_logs(tiny_run):
    """The last progress line of each long step counts every image it handled."""
    workdir, _ = tiny_run
    logs = workdir / "results" / "logs"
    expected = {
        "index/train.log": "index train: 24/24 images",  # every image opened
        "index/test.log": "index test: 6/6 images",
        "r0/predict/fpn/f0-s0.log": "predict test.npy: 6/6 images",
        "r0/predict/fpn/full-s0.log": "predict test.npy: 6/6 images",
        "r0/ensemble.log": "ensemble test.npy: 6/6 images",
    }
    for log, line in expected.items():
        assert line in (logs / log).read_text(), log


def test_snakemake_report_holds_the_eda_figures(tiny_run, tmp_path):
    workdir, _ = tiny_run
    snakemake(
        workdir, "--report", str(tmp_path / "report.zip")
    )  # needs pygments (snakemake[reports])
    import zipfile

    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    assert (
        sum(name.endswith((".png", "report.html")) for name in names) >= 9
    )  # the 8 figures and the EDA report


def test_tiny_run_rerun_has_nothing_to_do(tiny_run, tmp_path):
    workdir, config = tiny_run
    counts, output = dry_run_with(workdir, config, tmp_path)
    assert counts == {} and "Nothing to be done" in output
    # The same config with the keys of every mapping, nested ones too, in reverse order.
    reordered = reversed_keys(config)
    assert list(reordered["models"]["fpn"]) != list(config["models"]["fpn"])
    assert list(reordered["cv"]) != list(config["cv"])
    counts, _ = dry_run_with(workdir, reordered, tmp_path)
    assert counts == {}


def reversed_keys(value):
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_keys(item) for item in value]
    return value


def test_changing_one_models_lr_reruns_that_model_only(tiny_run, tmp_path):
    workdir, config = tiny_run
    counts, output = dry_run_with(
        workdir, config, tmp_path, models={"unet": {"lr": 0.01}}
    )
    assert counts == {
        "train": 3,  # 2 folds + the full fit
        "predict": 3,
        "oof_score": 1,
        "ensemble": 1,
        "submission": 1,
        "demo_score": 1,
        "demo_rounds": 1,
        "leaderboard": 1,
    }
    assert "output: results/r0/train/unet/" in output
    assert (
        "output: results/r0/train/fpn/" not in output
        and "output: results/r0/oof/fpn.json" not in output
    )


def test_changing_tta_repredicts_without_retraining(tiny_run, tmp_path):
    workdir, config = tiny_run
    counts, _ = dry_run_with(workdir, config, tmp_path, models={"fpn": {"tta": "d4"}})
    assert counts == {
        "predict": 3,
        "oof_score": 1,
        "ensemble": 1,
        "submission": 1,
        "demo_score": 1,
        "demo_rounds": 1,
        "leaderboard": 1,
    }


# What follows the tiny run's (2 models) OOF predictions: their scores, the ensemble, the
# submission and the demo's scores.
AFTER_OOF = {
    "oof_score": 2,
    "ensemble": 1,
    "submission": 1,
    "demo_score": 1,
    "demo_rounds": 1,
    "leaderboard": 1,
}


def test_changing_the_fold_count_reruns_folds_and_what_follows_only(tiny_run, tmp_path):
    workdir, config = tiny_run
    counts, _ = dry_run_with(workdir, config, tmp_path, cv={"folds": 3})
    assert counts == {
        "folds": 1,
        "train": 8,  # 2 models x (3 folds + the full fit)
        "predict": 8,
        **AFTER_OOF,
    }


def edited_copy(tiny_run, tmp_path, json_name):
    """A copy of the tiny run whose COCO file ``json_name`` gained one info field (its
    content changed, as a new version of a split would), and the dry run's job counts."""
    source, config = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir, symlinks=True)  # copy2 keeps mtimes
    path = workdir / "results" / "demo_data" / json_name
    coco = json.loads(path.read_text())
    coco["info"] = {**coco.get("info", {}), "version": "stage 2"}
    path.write_text(json.dumps(coco))
    output = snakemake(workdir, "-n").stdout
    return job_counts(output), output


def test_a_new_test_set_retrains_nothing(tiny_run, tmp_path):
    """Stale-only for the test split: a competition's second-stage test set reruns the
    test index, the predictions, the ensemble and the submission; no training job and
    no folds (the tiny run has no pseudo labels: no round reads test images to train)."""
    counts, output = edited_copy(tiny_run, tmp_path, "test.json")
    assert counts == {
        "all": 1,
        "index_test": 1,
        "index": 1,
        "eda": 1,
        "predict": 6,  # 2 models x (2 folds + the full fit)
        **AFTER_OOF,
    }
    assert "rule train:" not in output and "rule folds:" not in output


def test_a_new_training_set_reruns_everything_after_the_index(tiny_run, tmp_path):
    counts, _ = edited_copy(tiny_run, tmp_path, "train_all.json")
    assert counts == {
        "all": 1,
        "index_train": 1,
        "index_test": 1,  # it checks test file names against the training file's
        "index": 1,
        "eda": 1,
        "folds": 1,
        "train": 6,
        "predict": 6,
        **AFTER_OOF,
    }


def test_changing_the_submission_size_rewrites_the_submission_only(tiny_run, tmp_path):
    workdir, config = tiny_run
    counts, _ = dry_run_with(workdir, config, tmp_path, submission={"size": 128})
    assert counts == {"submission": 1, "demo_score": 1, "demo_rounds": 1}


def test_tiny_run_writes_a_valid_submission_and_a_demo_score(tiny_run):
    from segflow.coco import read_json
    from segflow.submission import check_submission

    workdir, config = tiny_run
    results = workdir / "results"
    test_ids = [
        image["file_name"]
        for image in read_json(results / "demo_data" / "test.json")["images"]
    ]
    lines = (results / "submission" / "submission.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == test_ids  # test.json order
    assert check_submission(
        results / "submission" / "submission.csv", 256, len(config["classes"]), test_ids
    ) == len(test_ids)
    score = json.loads((results / "demo" / "score.json").read_text())
    assert score["images"] == len(test_ids) and score["size"] == [256, 256]
    # The submission's score (from the CSV) is r0's ensemble's (from its label maps).
    rounds = json.loads((results / "demo" / "rounds.json").read_text())
    assert score["test_miou"] == pytest.approx(rounds["r0"]["test_miou"])
    # The final ensemble is round r0's own: the same members are not ensembled twice.
    assert not (results / "ensemble").exists()
    summary = json.loads((results / "r0" / "ensemble" / "summary.json").read_text())
    assert set(summary["members"]) == {"r0/fpn/s0", "r0/unet/s0"}


def test_skipped_input_is_counted_in_the_report(tmp_path):
    root = tmp_path / "mydata"
    images = [
        {"id": k, "file_name": f"b{k % 2}/{k}.png", "width": 16, "height": 16}
        for k in range(8)
    ]
    annotations = [
        {
            "id": k,
            "image_id": k,
            "category_id": 1 + k % 10,
            "segmentation": [[1, 1, 12, 1, 12, 12]],
        }
        for k in range(8)
    ]
    annotations.append(
        {"id": 99, "image_id": 3, "category_id": 2, "segmentation": [[1, 1, 5, 5]]}
    )  # 2 points
    write_coco(root, "train_all.json", images, annotations)
    write_coco(
        root,
        "test.json",
        [{"id": 0, "file_name": "t.png", "width": 16, "height": 16}],
        [],
    )
    (root / "b1" / "5.png").unlink()  # listed but missing
    write_config(
        tmp_path,
        data={"demo": False, "root": str(root), "on_error": "skip"},
        cv={"folds": 2},
        models={"unet": {"arch": "Unet"}},  # takes the 16 px images as they are
    )
    snakemake(tmp_path, "--cores", "1", "results/eda/report.html")
    stats = json.loads((tmp_path / "results" / "eda" / "stats.json").read_text())
    assert (
        stats["skipped"]["total"] == 2
    )  # the bad polygon; the missing image (with its annotation)
    html = (tmp_path / "results" / "eda" / "report.html").read_text()
    assert (
        "skipped items: <b>2</b>" in html
        and ">99<" in html
        and "5.png is missing or unreadable (skipped with its 1 annotation)" in html
    )
    images = pd.read_parquet(tmp_path / "results" / "data" / "images.parquet")
    assert (
        "b1/5.png" not in set(images["image_id"]) and len(images) == 8
    )  # 7 train + 1 test


# --- label-noise cleaning and round r1 on top of the tiny run -------------------------------


def test_tiny_clean_run_trains_r1_on_the_cleaned_labels(tiny_clean_run):
    """ignore: the flagged images keep training with their flagged regions at 255."""
    workdir, _ = tiny_clean_run
    results = workdir / "results"
    images = pd.read_parquet(results / "data" / "images.parquet").set_index("image_id")
    cleaned = pd.read_csv(results / "clean" / "images.csv").set_index("image_id")
    assert cleaned["flagged"].sum() == 4 and cleaned["train"].all()  # a quarter of 16
    assert (results / "clean" / "dropped.txt").read_text().split() == []
    changed = set()
    for image_id, coco_id in images.loc[cleaned.index, "coco_id"].items():
        original, given = (
            read_mask(results / d / f"{coco_id}.png")
            for d in ("data/masks", "clean/masks")
        )
        if not np.array_equal(original, given):
            changed.add(image_id)
            assert set(np.unique(given[given != original])) == {255}  # only ignored
    flagged = set(cleaned.index[cleaned["flagged"]])
    assert changed and changed <= flagged  # cleaned masks differ visibly, flagged only
    folds = pd.read_csv(results / "folds" / "folds.csv").set_index("image_id")["fold"]
    pseudo = pd.read_csv(results / "pseudo" / "r1" / "images.csv")
    n_pseudo = int(pseudo["kept"].sum())
    assert len(pseudo) == 6 and not set(pseudo["image_id"]) & set(folds.index)
    assert len(list((results / "pseudo" / "r1" / "masks").glob("*.png"))) == n_pseudo
    ignored = []
    for model in TINY_MODELS:
        for fold in (0, 1, None):
            run = f"{model}/{fold_name(fold)}-s0"
            r0 = json.loads(
                (results / "r0" / "train" / run / "metrics.json").read_text()
            )
            r1 = json.loads(
                (results / "r1" / "train" / run / "metrics.json").read_text()
            )
            assert r0["train_label_changes"] == {"ignored": 0.0, "relabelled": 0.0}
            trained = [i for i in folds.index if fold is None or folds[i] != fold]
            expected = label_changes_from_files(results, images, trained)
            assert r1["train_label_changes"] == pytest.approx(expected)
            ignored.append(expected["ignored"])
            assert r1["train_images"] == len(trained) and r1["dropped_images"] == 0
            assert r1["pseudo_images"] == n_pseudo > 0
            if fold is not None:
                assert r1["val_images"] == 8  # every labelled image of the fold
    assert max(ignored) > 0
    for model in TINY_MODELS:
        oof = json.loads((results / "r1" / "oof" / f"{model}.json").read_text())
        assert oof["miou_cleaned"] == pytest.approx(
            oof_miou_from_files(results, model, "clean/masks")
        )
        assert oof["miou"] == pytest.approx(
            oof_miou_from_files(results, model, "data/masks")
        )


def label_changes_from_files(results, images, image_ids):
    """Shares of the training pixels the cleaned masks ignore or relabel."""
    pixels = ignored = relabelled = 0
    for image_id in image_ids:
        coco_id = images.loc[image_id, "coco_id"]
        original = read_mask(results / "data" / "masks" / f"{coco_id}.png")
        given = read_mask(results / "clean" / "masks" / f"{coco_id}.png")
        pixels += original.size
        ignored += ((given == 255) & (original != 255)).sum()
        relabelled += ((given != original) & (given != 255) & (original != 255)).sum()
    return {"ignored": ignored / pixels, "relabelled": relabelled / pixels}


def oof_miou_from_files(results, model, masks, round_="r1"):
    """A model's OOF mIoU over both folds against the labels under ``masks``."""
    label_of = label_reader(results / "data" / "images.parquet", results / masks)
    files = [
        results / round_ / "predict" / model / f"f{f}-s0" / "oof.npy" for f in (0, 1)
    ]
    return oof_miou(files, label_of, len(DEFAULT_CONFIG["classes"]))


def test_tiny_relabel_run_trains_r1_on_the_relabelled_masks(tiny_relabel_run):
    """relabel: flagged regions take the confident OOF class, the unsure rest is 255."""
    workdir, _ = tiny_relabel_run
    results = workdir / "results"
    images = pd.read_parquet(results / "data" / "images.parquet").set_index("image_id")
    folds = pd.read_csv(results / "folds" / "folds.csv").set_index("image_id")["fold"]
    shares = []
    for fold in (0, 1, None):
        r1 = json.loads(
            (
                results
                / "r1"
                / "train"
                / "fpn"
                / f"{fold_name(fold)}-s0"
                / "metrics.json"
            ).read_text()
        )
        trained = [i for i in folds.index if fold is None or folds[i] != fold]
        expected = label_changes_from_files(results, images, trained)
        assert r1["train_label_changes"] == pytest.approx(expected)
        shares.append(expected["relabelled"])
    assert max(shares) > 0  # some pixels really took another class
    summary = json.loads((results / "clean" / "summary.json").read_text())
    assert summary["settings"]["action"] == "relabel"


def test_tiny_clean_run_reports_flags_gallery_noise_detection_and_submits_from_r1(
    tiny_clean_run,
):
    workdir, config = tiny_clean_run
    results = workdir / "results"
    scores = pd.read_csv(results / "clean" / "scores.csv")
    assert (scores["level"] == "image").sum() == 16 and len(
        list((results / "clean" / "masks").glob("*.png"))
    ) == 16
    assert (
        len(list((results / "clean" / "gallery").glob("*.png"))) == 3
        and "data:image/png;base64" in (results / "clean" / "gallery.html").read_text()
    )
    detection = json.loads((results / "demo" / "noise_detection.json").read_text())
    noise = pd.read_csv(results / "demo_data" / "truth" / "noise.csv")
    assert detection["labelled_images"] == 16 and detection["flagged_images"] == 4
    assert detection["noisy_images"] == noise["image_id"].isin(scores["image_id"]).sum()
    assert set(detection["images"]) == {
        "all",
        "class_swap",
        "missing",
        "shifted",
        "bloated",
    }
    summary = json.loads((results / "r1" / "ensemble" / "summary.json").read_text())
    assert set(summary["members"]) == {"r1/fpn/s0", "r1/unet/s0"}
    assert (
        json.loads((results / "r0" / "ensemble" / "summary.json").read_text())[
            "oof_images"
        ]
        == 16
    )
    lines = (results / "submission" / "submission.csv").read_text().splitlines()
    assert len(lines) == 1 + 6
    rounds = json.loads((results / "demo" / "rounds.json").read_text())
    # The run ends with where the submission is and what each stage bought.
    printed = (workdir / "snakemake.out").read_text()
    assert "what each stage bought (demo test mIoU): baseline recipe/s0" in printed
    assert set(rounds) == {"baseline recipe/s0", "r0", "r1"}
    score = json.loads((results / "demo" / "score.json").read_text())
    assert rounds["r1"]["test_miou"] == pytest.approx(score["test_miou"])
    assert (results / "pseudo" / "r1" / "summary.png").is_file()


@pytest.mark.parametrize(
    "clean,pseudo,expected",
    [
        (
            False,
            False,
            {
                "train": 8,
                "ensemble": 1,
                "clean": 0,
                "pseudo_labels": 0,
                "oof_score": 2,
            },
        ),
        (
            True,
            False,
            {
                "train": 16,
                "ensemble": 2,
                "clean": 1,
                "pseudo_labels": 0,
                "oof_score": 4,
            },
        ),
        (
            False,
            True,
            {
                "train": 16,
                "ensemble": 2,
                "clean": 0,
                "pseudo_labels": 1,
                "oof_score": 4,
            },
        ),
        (
            True,
            True,
            {
                "train": 16,
                "ensemble": 2,
                "clean": 1,
                "pseudo_labels": 1,
                "oof_score": 4,
            },
        ),
        (
            False,
            {"rounds": 2},
            {
                "train": 24,
                "ensemble": 3,
                "clean": 0,
                "pseudo_labels": 2,
                "oof_score": 6,
            },
        ),
    ],
)
def test_each_stage_switch_shows_exactly_its_jobs_in_the_dry_run(
    tmp_path, clean, pseudo, expected
):
    pseudo_config = (
        {"enabled": True, **pseudo} if isinstance(pseudo, dict) else {"enabled": pseudo}
    )
    write_config(
        tmp_path, models=TWO_MODELS, clean={"enabled": clean}, pseudo=pseudo_config
    )
    output = snakemake(tmp_path, "-n").stdout
    counts = job_counts(output)
    assert {rule: counts.get(rule, 0) for rule in expected} == expected
    assert counts["predict"] == counts["train"] and counts.get("demo_noise", 0) == int(
        clean
    )
    assert counts["demo_rounds"] == 1  # baseline (a) and every round
    if not clean and not pseudo:
        assert "results/r1/" not in output  # r0 only
    if pseudo:
        assert (
            "--pseudo results/pseudo/r1/images.csv --pseudo-masks-dir results/pseudo/r1/masks"
            in output
        )
