# Helpers for the rules of every stage: the package on the path, config checks, data paths.
# No rules here (snakemake --lint).

import json
import shlex
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
from segflow.probabilities import ids_path
from segflow.fold_data import FULL_FIT as FULL
from segflow.fold_data import fold_name, parse_fold
from segflow.weights_cache import is_local
from segflow.settings import (
    DEMO_ROOT,
    ConfigError,
    check_config,
    clean_settings,
    data_paths,
    demo_settings,
    ensemble_settings,
    job_memory_mb,
    job_runtime_minutes,
    prediction_overlap,
    prediction_size_arg,
    prediction_tta,
    pseudo_settings,
    round_model_settings,
    start_warnings,
    submission_size_arg,
    validate_config,
    wandb_settings,
)

# The schema (workflow/schemas/config.schema.yaml) checks and defaults every key; then
# the config is checked against the data. Either stops the run before any job.
try:
    validate_config(config)
    check_config(config)
except (ConfigError, DataError) as error:
    raise WorkflowError(f"segflow config: {error}")
for warning in start_warnings(config):
    print(f"WARNING {warning}", file=sys.stderr)

DATA = data_paths(config)
CLASSES_JSON = json.dumps(config["classes"])
ENV = "../../envs/segflow.yaml"
WANDB_DIR = "results/wandb"  # wandb's own folder, not a rule's output


def coco_files(wildcards):
    """The COCO JSONs the index reads: the demo rule's outputs or the user's files."""
    return {"train": DATA.train, "test": DATA.test}


def index_options(wildcards):
    """segflow.index split's options common to both splits."""
    return " ".join(
        [
            f"--image-root {shlex.quote(str(DATA.root))}",
            f"--classes {shlex.quote(CLASSES_JSON)}",
            f"--on-error {config['data']['on_error']}",
            f"--unlabelled {config['data']['unlabelled']}",
            f"--void {shlex.quote(json.dumps(config['data']['void']))}",
            f"--exif {config['data']['exif']}",
            f"--sample {debug_sample()} --seed {config['seed']}",
        ]
    )


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
# Folds as job folders and --fold name them: f0, f1, ... (and full, the full fit).
FOLDS = [
    fold_name(fold)
    for fold in (
        [0] if config["cv"]["method"] == "holdout" else range(config["cv"]["folds"])
    )
]


# cv.full_fit: every model x seed of every round is also fitted on all labelled images.
FULL_FIT = config["cv"]["full_fit"]
TRAINED_FOLDS = FOLDS + [FULL] if FULL_FIT else FOLDS
# The single-model baselines train the first model of config["models"], as a competitor's
# one model: (a) its recipe on all labelled images, round r0's full fit of that model;
# (b) the same, compute-matched, as a pseudo-round "matched" (results/matched/...).
BASELINE_MODEL = next(iter(config["models"]))
MATCHED = "matched"
# Beside the rounds (results/demo/rounds.json) only where r0 trains (a) anyway.
ROUND_BASELINES = ["recipe"] if FULL_FIT else []


def train_settings(wildcards):
    """JSON of what training reads, keys sorted: a change reruns this model's jobs only."""
    round_ = "r0" if wildcards.round == MATCHED else wildcards.round
    return round_model_settings(config, wildcards.model, round_).to_json()


def encoder_weights_file(wildcards):
    """The local weights file the model's encoder starts from (a file of the user's, or
    a named set in the weights cache): an input, so new weights retrain the model."""
    weights = round_model_settings(config, wildcards.model, "r0").encoder_weights
    return [weights] if is_local(weights) else []


def train_runtime_minutes(wildcards):
    """A training job's time limit on a cluster: it grows with the epochs it trains. The
    compute-matched baseline trains as long as every training job of the pipeline."""
    if wildcards.round == MATCHED:
        epochs = len(TRAINED_FOLDS) * sum(
            round_model_settings(config, model, round_).epochs
            for round_ in ROUNDS
            for model in MODELS
        )
    else:
        epochs = round_model_settings(config, wildcards.model, wildcards.round).epochs
    return job_runtime_minutes(config, "train", epochs)


def oof_runs(wildcards):
    """JSON: every fold x seed of one model and round, with its OOF probabilities."""
    return json.dumps(
        [
            {
                "fold": parse_fold(fold),
                "seed": seed,
                "oof": expand(
                    rules.predict.output.oof,
                    round=wildcards.round,
                    model=wildcards.model,
                    fold=fold,
                    seed=seed,
                )[0],
            }
            for seed in SEEDS
            for fold in FOLDS
        ]
    )


# --- rounds: r0 trains on the given labels; r1.. on cleaned labels and/or pseudo labels ---

CLEAN = config["clean"]["enabled"]
PSEUDO = config["pseudo"]["enabled"]
LATER_ROUNDS = config["pseudo"]["rounds"] if PSEUDO else int(CLEAN)
ROUNDS = [f"r{n}" for n in range(LATER_ROUNDS + 1)]
FINAL_ROUND = ROUNDS[-1]


def previous_round(round_):
    return f"r{int(round_[1:]) - 1}"


def pipeline_training_metrics(seed):
    """metrics.json of every training job of the pipeline with ``seed``: every round,
    model and fold (the full fits included). The compute-matched baseline sums their
    presentations."""
    return expand(
        rules.train.output.metrics,
        round=ROUNDS,
        model=MODELS,
        fold=TRAINED_FOLDS,
        seed=seed,
    )


def training_images_table(wildcards):
    """The index a training job reads: the training split's alone, unless the round
    trains on pseudo-labelled test images. A new test set then retrains only those."""
    if wildcards.round not in ("r0", MATCHED) and PSEUDO:
        return rules.index.output.images
    return rules.index_train.output.images


def round_training_inputs(wildcards):
    """What a job trains on beyond the index: r1.. add the cleaned masks and the dropped
    list (clean), the previous round's pseudo labels (pseudo) and, on a warm start, the
    previous round's checkpoint of the same model, fold and seed. The compute-matched
    baseline reads the pipeline's training metrics."""
    if wildcards.round == MATCHED:
        return {"matched": pipeline_training_metrics(wildcards.seed)}
    inputs = {}
    if wildcards.round != "r0" and config["retrain"]["init"] == "warm":
        inputs["init"] = expand(
            rules.train.output.model,
            round=previous_round(wildcards.round),
            model=wildcards.model,
            fold=wildcards.fold,
            seed=wildcards.seed,
        )[0]
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
    if "init" in input.keys():
        args.append(f"--init {input.init}")
    if "train_masks" in input.keys():
        args.append(f"--train-masks-dir {input.train_masks} --drop {input.dropped}")
    if "pseudo" in input.keys():
        args.append(
            f"--pseudo {input.pseudo} --pseudo-masks-dir {input.pseudo_masks}"
            f" --labelled-epochs {config['pseudo']['labelled_epochs']}"
        )
    if "matched" in input.keys():
        args.append(f"--match-presentations {' '.join(input.matched)}")
    return " ".join(args)


def cleaned_masks(wildcards):
    """Later rounds' OOF is scored on the original labels and, beside, on the cleaned ones."""
    if wildcards.round == "r0" or not CLEAN:
        return {}
    return {"cleaned": rules.clean.output.masks}


# --- ensembles: one per round (what the next round learns from), and the final one ---


def round_members(round_):
    """(name, round, model, seed) of every model x seed of one round."""
    return [
        (f"{round_}/{model}/s{seed}", round_, model, seed)
        for model in MODELS
        for seed in SEEDS
    ]


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
                f"segflow config: ensemble.members: {entry!r} names no trained round,"
                f" model and seed (rounds {ROUNDS}, models {MODELS}, seeds {SEEDS})"
            )
        runs += [(f"{round_}/{model}/s{seed}", round_, model, seed) for seed in seeds]
    return runs


MEMBERS = member_runs()  # checked now: a wrong member stops the run before any job
# The final ensemble is the last round's own when it has the same members; a separate
# ensemble (results/ensemble) is computed only for another member list.
FINAL_ENSEMBLE = (
    f"{FINAL_ROUND}/ensemble"
    if sorted(MEMBERS) == sorted(round_members(FINAL_ROUND))
    else "ensemble"
)


def ensemble_output(name, key):
    """One output file of ensemble ``name`` (``r<n>/ensemble`` or ``ensemble``)."""
    return expand(getattr(rules.ensemble.output, key), ensemble=name)[0]


def round_ensemble(round_, key):
    return ensemble_output(f"{round_}/ensemble", key)


def final_ensemble(key):
    return ensemble_output(FINAL_ENSEMBLE, key)


def ensemble_members(wildcards):
    """The members of ensemble ``wildcards.ensemble``."""
    if wildcards.ensemble == "ensemble":
        return MEMBERS
    return round_members(wildcards.ensemble.split("/")[0])


def member_files(members, key, folds=FOLDS):
    """Per member: its ``key`` (oof or test) probabilities, one file per fold."""
    return {
        name: [
            expand(
                getattr(rules.predict.output, key),
                round=round_,
                model=model,
                fold=fold,
                seed=seed,
            )[0]
            for fold in folds
        ]
        for name, round_, model, seed in members
    }


def ensemble_inputs(wildcards):
    """Every predict output of every member of the ensemble (all folds)."""
    return [
        path
        for _, round_, model, seed in ensemble_members(wildcards)
        for fold in TRAINED_FOLDS
        for path in expand(
            rules.predict.output, round=round_, model=model, fold=fold, seed=seed
        )
    ]


def ensemble_members_json(wildcards):
    """JSON: member name -> {"oof": [...], "test": [...]} (one file per fold), with
    "full": [its full fit's test file] under cv.full_fit."""
    members = ensemble_members(wildcards)
    oof, test = member_files(members, "oof"), member_files(members, "test")
    full = member_files(members, "test", folds=[FULL]) if FULL_FIT else {}
    return json.dumps(
        {
            name: {
                "oof": oof[name],
                "test": test[name],
                **({"full": full[name]} if full else {}),
            }
            for name in oof
        },
        sort_keys=True,
    )


# --- label-noise cleaning and pseudo labels ----------------------------------------------


def clean_sources():
    """The r0 OOF probabilities that judge the labels: r0's ensemble, or one model's runs."""
    source = config["clean"]["source"]
    if source == "ensemble":
        return {"r0/ensemble": [round_ensemble("r0", "oof")]}
    members = [m for m in round_members("r0") if m[2] == source]
    return member_files(members, "oof")


def clean_source_inputs(wildcards):
    files = [path for paths in clean_sources().values() for path in paths]
    return files + [str(ids_path(path)) for path in files]


def previous_ensemble(wildcards):
    """Round r<n>'s pseudo labels come from round r<n-1>'s ensemble."""
    round_ = previous_round(wildcards.round)
    return {
        "test": round_ensemble(round_, "test"),
        "test_ids": round_ensemble(round_, "test_ids"),
    }


def rounds_entries_json():
    """JSON, in figure order: baseline (a) of each seed -> its test probabilities (under
    cv.full_fit, where round r0 trains it anyway), then each round -> the files of its
    ensemble that the demo's rounds score reads."""
    keys = ("test_labels", "test_ids", "summary")
    entries = {
        f"baseline {name}": {"test": path}
        for name, path in baselines(ROUND_BASELINES).items()
    }
    entries.update({r: {k: round_ensemble(r, k) for k in keys} for r in ROUNDS})
    return json.dumps(entries)


def full_fit_test(round_, seed):
    """Test probabilities of the baseline model's full fit in ``round_`` (or matched)."""
    return expand(
        rules.predict.output.test,
        round=round_,
        model=BASELINE_MODEL,
        fold=FULL,
        seed=seed,
    )[0]


def baselines(kinds):
    """name -> test probabilities of each single-model baseline and seed: "recipe" (a),
    round r0's full fit of the baseline model; "matched" (b), its compute-matched twin.
    """
    rounds = {"recipe": "r0", "matched": MATCHED}
    return {
        f"{kind}/s{seed}": full_fit_test(rounds[kind], seed)
        for kind in kinds
        for seed in SEEDS
    }


# --- the results report ------------------------------------------------------------------


def report_ensembles():
    """Ensemble name -> summary.json: each round's, then the final one if it differs."""
    names = [f"{r}/ensemble" for r in ROUNDS]
    if FINAL_ENSEMBLE not in names:
        names.append(FINAL_ENSEMBLE)
    return {name: ensemble_output(name, "summary") for name in names}


def report_runs():
    """Per round x model: its OOF score and every training job (the full fits among them)."""
    return [
        {
            "round": round_,
            "model": model,
            "oof": expand(rules.oof_score.output.json, round=round_, model=model)[0],
            "jobs": [
                {
                    "fold": fold,
                    "seed": seed,
                    **{
                        key: expand(
                            getattr(rules.train.output, key),
                            round=round_,
                            model=model,
                            fold=fold,
                            seed=seed,
                        )[0]
                        for key in ("metrics", "history")
                    },
                }
                for seed in SEEDS
                for fold in TRAINED_FOLDS
            ],
        }
        for round_ in ROUNDS
        for model in MODELS
    ]


def report_inputs(wildcards):
    """Every file the leaderboard reads."""
    runs = report_runs()
    return {
        "oof_scores": [run["oof"] for run in runs],
        "metrics": [job["metrics"] for run in runs for job in run["jobs"]],
        "histories": [job["history"] for run in runs for job in run["jobs"]],
        "ensembles": list(report_ensembles().values()),
        "final_oof": final_ensemble("oof"),
        "final_oof_labels": final_ensemble("oof_labels"),
    }


def sample_submission(wildcards):
    return {"sample": DATA.sample_submission} if DATA.sample_submission else {}


def final_targets():
    """What `snakemake` (rule all) builds."""
    targets = [
        rules.submission.output.csv,
        rules.eda.output.report,
        final_ensemble("summary"),
        *expand(rules.oof_score.output.json, round=ROUNDS, model=MODELS),
        rules.leaderboard.output.csv,
    ]
    if CLEAN:
        targets += [rules.clean.output.summary, rules.clean.output.gallery]
    if PSEUDO:
        targets += expand(rules.pseudo_labels.output.summary, round=ROUNDS[1:])
    if config["data"]["demo"]:
        targets += [rules.demo_score.output.score, rules.demo_rounds.output.rounds]
        if CLEAN:
            targets.append(rules.demo_noise.output.detection)
    return targets


def print_run_summary():
    """At the end of a run: where the submission is and how it scores on OOF (and the demo)."""
    summary_path = Path(final_ensemble("summary"))
    submission = Path(rules.submission.output.csv)
    if not summary_path.exists() or not submission.exists():
        return
    summary = json.loads(summary_path.read_text())
    lines = [
        f"segflow: submission written to {submission}",
        f"  ensemble OOF mIoU {summary['oof_miou']:.4f}"
        f" (best member {summary['best_member_oof_miou']:.4f}; {summary_path})",
    ]
    score_path = Path(rules.demo_score.output.score)
    if config["data"]["demo"] and score_path.exists():
        score = json.loads(score_path.read_text())
        lines.append(f"  demo test mIoU {score['test_miou']:.4f} ({score_path})")
    rounds_path = Path(rules.demo_rounds.output.rounds)
    if config["data"]["demo"] and rounds_path.exists():
        rounds = json.loads(rounds_path.read_text())
        lines.append(
            "  what each stage bought (demo test mIoU): "
            + ", ".join(f"{k} {v['test_miou']:.4f}" for k, v in rounds.items())
            + f" ({rounds_path})"
        )
    lines += run_warnings()
    print("\n".join(lines))


def run_warnings():
    """What the run summary must not leave unsaid: folds that split related images, how
    much cleaning changed (or would have), how many pseudo labels a round got."""
    warnings = []
    folds_summary = Path(rules.folds.output.summary)
    if folds_summary.exists():
        warning = json.loads(folds_summary.read_text()).get("warning")
        if warning:
            warnings.append(f"  WARNING folds: {warning} ({folds_summary})")
    clean_summary = Path(rules.clean.output.summary)
    if config["clean"]["enabled"] and clean_summary.exists():
        limits = json.loads(clean_summary.read_text()).get("limits")
        if limits:
            word = "WARNING " if limits["exceeded"] else ""
            warnings.append(f"  {word}{limits['message']} ({clean_summary})")
    summaries = expand(rules.pseudo_labels.output.summary, round=ROUNDS[1:])
    for path in map(Path, summaries if PSEUDO else []):
        if not path.exists():
            continue
        message = json.loads(path.read_text()).get("message")
        if message:
            warnings.append(f"  {message} ({path})")
    return warnings


def preflight():
    """Before the first job of a run (not a dry run): segflow.preflight's checks."""
    from segflow.preflight import run_problems

    found = run_problems(
        config,
        members=len(MODELS) * len(SEEDS) * len(ROUNDS),
        fold_jobs=len(TRAINED_FOLDS),
        local=workflow.local_exec,
    )
    if found:
        sys.exit("\n".join(f"ERROR pre-flight: {problem}" for problem in found))
