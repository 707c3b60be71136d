# Helpers for the rules of every stage: the package on the path, config checks, data paths.
# No rules here (snakemake --lint).

import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Rules run `python -m segflow.<step>`. Put the package on the path of this process and of
# every job, so the workflow also runs where segflow is not pip-installed (--sdm conda), and
# make `python` the interpreter running Snakemake (e.g. a venv that is not activated);
# under --sdm conda the job's environment comes first on PATH again.
PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
for variable, first in (
    ("PYTHONPATH", PACKAGE_DIR),
    ("PATH", os.path.dirname(sys.executable)),
):
    os.environ[variable] = os.pathsep.join(
        p for p in (first, os.environ.get(variable)) if p
    )

from segflow.coco import DataError
from segflow.settings import (
    DEMO_ROOT,
    ConfigError,
    check_config,
    data_paths,
    model_settings,
)

try:
    check_config(config)
except (ConfigError, DataError) as error:
    raise WorkflowError(f"segflow config: {error}")

DATA = data_paths(config)
CLASSES_JSON = json.dumps(config["classes"])
ENV = "../../envs/segflow.yaml"


def stable(value):
    """``value`` with every dict's keys sorted: params compare by their text, and a config
    whose keys merely changed order must not rerun anything."""
    if isinstance(value, dict):
        return {key: stable(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


def coco_files(wildcards):
    """The COCO JSONs the index reads: the demo rule's outputs or the user's files."""
    return {"train": DATA.train, "test": DATA.test}


def holdout_file(wildcards):
    """The competition's val.json when cv.method is holdout and data.val is set."""
    if config["cv"]["method"] == "holdout" and DATA.val is not None:
        return {"val": DATA.val}
    return {}


def debug_sample():
    """Images kept per split in debug mode; 0 keeps all."""
    return config["debug"]["images"] if config["debug"]["enabled"] else 0


# --- training and prediction ---------------------------------------------------------

MODELS = sorted(config["models"])
SEEDS = config["cv"]["seeds"]
# holdout validates one fold only; its other images (fold -1) are always trained on.
FOLDS = (
    [0] if config["cv"]["method"] == "holdout" else list(range(config["cv"]["folds"]))
)
PREDICT_ONLY = ("tta",)  # model keys that change predictions, not training


def train_params(wildcards):
    """JSON of what training reads, keys sorted: a change reruns exactly this model's jobs."""
    params = model_settings(config, wildcards.model)
    return json.dumps(
        {k: v for k, v in params.items() if k not in PREDICT_ONLY}, sort_keys=True
    )


def predict_size():
    return config["predict"]["size"] or config["submission"]["size"]


def wandb_settings():
    return json.dumps(
        {
            "mode": config["wandb"]["mode"],
            "project": config["wandb"]["project"],
            "dir": "results/wandb",
        },
        sort_keys=True,
    )
