"""Own data in one command: segflow.init writes the config overlay from the COCO files,
checks it as the workflow will, and the workflow accepts it."""

from __future__ import annotations

import pytest
import yaml

from conftest import CLASSES, REPO, snakemake, write_coco
from segflow import init


@pytest.mark.workflow
def test_the_config_comes_from_the_categories_and_the_workflow_runs_it(
    small_coco, tmp_path, capsys
):
    out = tmp_path / "run" / "my_data.yaml"
    out.parent.mkdir()
    init.main(
        ["--train", str(small_coco["train"]), "--test", str(small_coco["test"])]
        + ["--out", str(out), "--base", str(REPO / "config.yaml")]
    )
    overlay = yaml.safe_load(out.read_text())
    assert overlay["classes"] == CLASSES  # Background, then the categories by id
    assert overlay["data"] == {
        "demo": False,
        "root": str(small_coco["root"]),
        "train": "train.json",
        "test": "test.json",
        "void": [],
        "unlabelled": "background",
    }
    # 40x30 images; DeepLabV3+ (the config's model) needs multiples of 16.
    assert overlay["defaults"] == {"input_size": [32, 48]}
    printed = capsys.readouterr().out
    assert "defaults.input_size [32, 48]" in printed
    assert "snakemake --configfile" in printed and "-- submission" in printed
    (out.parent / "config.yaml").write_text((REPO / "config.yaml").read_text())
    dry = snakemake(out.parent, "--configfile", str(out), "-n", "--", "submission")
    assert "index_train" in dry.stdout and "submission" in dry.stdout


def coco_pair(tmp_path, categories):
    images = [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}]
    test = [{"id": 1, "file_name": "t.png", "width": 8, "height": 6}]
    train = write_coco(tmp_path, "train.json", images, [], categories)
    return train, write_coco(tmp_path, "test.json", test, [], categories)


def test_classes_in_id_order_with_the_exporters_background_and_void(tmp_path):
    """Ids out of order in the file; a ``BACKGROUND`` category of the exporter becomes
    class 0 under its own name; ``void`` is ignored, not a class."""
    train, test = coco_pair(
        tmp_path,
        [
            {"id": 7, "name": "glass"},
            {"id": 2, "name": "void"},
            {"id": 0, "name": "BACKGROUND"},
            {"id": 3, "name": "paper"},
        ],
    )
    overlay = init.dataset_config(train, test)
    assert overlay["classes"] == ["BACKGROUND", "paper", "glass"]
    assert overlay["data"]["void"] == ["void"]
    init.checked(overlay, REPO / "config.yaml")  # the workflow's start checks pass
    named = init.dataset_config(train, test, void=["paper", "void"])
    assert named["classes"] == ["BACKGROUND", "glass"]


def test_a_wrong_void_or_an_existing_file_writes_nothing(tmp_path):
    train, test = coco_pair(tmp_path, [{"id": 1, "name": "glass"}])
    out = tmp_path / "my.yaml"
    base = ["--train", str(train), "--test", str(test), "--out", str(out)]
    base += ["--base", str(REPO / "config.yaml")]
    with pytest.raises(SystemExit, match=r"--void \['metal'\]: not categories of"):
        init.main(base + ["--void", "metal"])
    assert not out.exists()
    out.write_text("mine")
    with pytest.raises(SystemExit, match="exists; --force replaces it"):
        init.main(base)
    assert out.read_text() == "mine"
    init.main(base + ["--force"])
    assert yaml.safe_load(out.read_text())["classes"] == ["Background", "glass"]
