# Helpers for the rules of every stage: the package on the path, config checks, data paths.
# No rules here (snakemake --lint).

import json
import re
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


# --- rounds: r0 trains on the given labels; r1.. on cleaned labels and/or pseudo labels ---

CLEAN = config["clean"]["enabled"]
PSEUDO = config["pseudo"]["enabled"]
LATER_ROUNDS = config["pseudo"]["rounds"] if PSEUDO else int(CLEAN)
ROUNDS = [f"r{n}" for n in range(LATER_ROUNDS + 1)]
FINAL_ROUND = ROUNDS[-1]


def previous_round(round_):
    return f"r{int(round_[1:]) - 1}"


def round_training_inputs(wildcards):
    """What a round trains on beyond the index: r1.. add the cleaned masks and the dropped
    list (clean) and the previous round's pseudo labels (pseudo)."""
    inputs = {}
    if wildcards.round != "r0" and CLEAN:
        inputs.update(
            train_masks=rules.clean.output.masks, dropped=rules.clean.output.dropped
        )
    if wildcards.round != "r0" and PSEUDO:
        inputs.update(
            pseudo=expand(rules.pseudo_labels.output.images, round=wildcards.round)[0],
            pseudo_masks=expand(
                rules.pseudo_labels.output.masks, round=wildcards.round
            )[0],
        )
    return inputs


def round_training_args(wildcards, input):
    args = []
    if "train_masks" in input.keys():
        args.append(f"--train-masks-dir {input.train_masks} --drop {input.dropped}")
    if "pseudo" in input.keys():
        args.append(f"--pseudo {input.pseudo} --pseudo-masks-dir {input.pseudo_masks}")
    return " ".join(args)


def cleaned_masks(wildcards):
    """Later rounds' OOF is scored on the original labels and, beside, on the cleaned ones."""
    if wildcards.round == "r0" or not CLEAN:
        return {}
    return {"cleaned": rules.clean.output.masks}


def previous_ensemble(wildcards):
    """Round r<n>'s pseudo labels come from round r<n-1>'s ensemble."""
    return expand(rules.round_ensemble.output, round=previous_round(wildcards.round))


def predict_dirs(round_, model, seed):
    """The predict folder of each fold of one model x seed."""
    return [
        os.path.dirname(path)
        for fold in FOLDS
        for path in expand(
            rules.predict.output.oof, round=round_, model=model, fold=fold, seed=seed
        )
    ]


def members_inputs(members):
    """Every predict output of every member (all folds)."""
    return [
        path
        for _, round_, model, seed in members
        for fold in FOLDS
        for path in expand(
            rules.predict.output, round=round_, model=model, fold=fold, seed=seed
        )
    ]


def members_json(members):
    """JSON: member name -> its predict folders (one per fold)."""
    return json.dumps(
        {
            name: predict_dirs(round_, model, seed)
            for name, round_, model, seed in members
        },
        sort_keys=True,
    )


def round_members(round_):
    """(name, round, model, seed) of every model x seed of one round."""
    return [
        (f"{round_}/{model}/s{seed}", round_, model, seed)
        for model in MODELS
        for seed in SEEDS
    ]


# --- label-noise cleaning -------------------------------------------------------------


def clean_source_inputs(wildcards):
    """The r0 OOF probabilities that judge the labels: r0's ensemble, or one model's runs."""
    source = config["clean"]["source"]
    if source == "ensemble":
        return expand(rules.round_ensemble.output, round="r0")
    return members_inputs([m for m in round_members("r0") if m[2] == source])


def clean_sources_json(wildcards, input):
    source = config["clean"]["source"]
    if source == "ensemble":
        return json.dumps({"r0/ensemble": ["results/r0/ensemble"]})
    return members_json([m for m in round_members("r0") if m[2] == source])


# --- ensemble and submission -----------------------------------------------------------


def member_runs():
    """(name, round, model, seed) of every ensemble member (ensemble.members, see schema)."""
    runs = []
    for entry in config["ensemble"]["members"] or MODELS:
        parts = entry.split("/")
        round_ = parts.pop(0) if re.fullmatch(r"r\d+", parts[0]) else FINAL_ROUND
        model = parts.pop(0)
        seeds = [int(parts[0][1:])] if parts else SEEDS
        if round_ not in ROUNDS or model not in MODELS or not set(seeds) <= set(SEEDS):
            raise WorkflowError(
                f"segflow config: ensemble.members: {entry!r} names no trained round, model"
                f" and seed (rounds {ROUNDS}, models {MODELS}, seeds {SEEDS})"
            )
        runs += [(f"{round_}/{model}/s{seed}", round_, model, seed) for seed in seeds]
    return runs


MEMBERS = member_runs()  # checked now: a wrong member stops the run before any job

# The ensemble and round_ensemble rules run the same step on different members.
ENSEMBLE_SHELL = (
    "python -m segflow.ensemble --members {params.members:q} --images {input.images}"
    " --masks-dir {input.masks} --classes {params.classes:q} --out-dir {params.out_dir}"
    " --method {params.settings[method]} --weights {params.settings[weights]}"
    " --class-bias {params.settings[class_bias]} --tune-pixels {params.settings[tune_pixels]}"
    " --chunk {params.settings[chunk]} > {log} 2>&1"
)


def sample_submission(wildcards):
    return {"sample": DATA.sample_submission} if DATA.sample_submission else {}


def final_targets():
    """What `snakemake` (rule all) builds."""
    targets = [
        rules.submission.output.csv,
        rules.eda.output.report,
        rules.ensemble.output.summary,
        *expand(rules.oof_score.output.json, round=ROUNDS, model=MODELS),
    ]
    if CLEAN:
        targets += [rules.clean.output.summary, rules.clean.output.gallery]
    if PSEUDO:
        targets += expand(rules.pseudo_labels.output.summary, round=ROUNDS[1:])
    if config["data"]["demo"]:
        targets.append(rules.demo_score.output.score)
        if CLEAN:
            targets.append(rules.demo_noise.output.detection)
        if len(ROUNDS) > 1:
            targets.append(rules.demo_rounds.output.rounds)
    return targets


def print_run_summary():
    """At the end of a run: where the submission is and how it scores on OOF (and the demo)."""
    summary_path = Path("results/ensemble/summary.json")
    if (
        not summary_path.exists()
        or not Path("results/submission/submission.csv").exists()
    ):
        return
    summary = json.loads(summary_path.read_text())
    lines = [
        "segflow: submission written to results/submission/submission.csv",
        f"  ensemble OOF mIoU {summary['oof_miou']:.4f} (best member {summary['best_member_oof_miou']:.4f})",
    ]
    score_path = Path("results/demo/score.json")
    if config["data"]["demo"] and score_path.exists():
        score = json.loads(score_path.read_text())
        lines.append(
            f"  demo test mIoU {score['test_miou']:.4f} (results/demo/score.json)"
        )
    print("\n".join(lines))
