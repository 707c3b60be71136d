# segflow: a COCO segmentation competition dataset -> EDA, folds, training, prediction,
# label-noise cleaning, pseudo labels and retraining rounds, ensembling, submission.
# This file only wires: settings live in config.yaml (checked against the schema in
# workflow/rules/common.smk, with the helpers), each stage in its own rule file.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    round="|".join([*ROUNDS, MATCHED]),
    model="|".join(MODELS),
    fold=rf"f\d+|{FULL}",
    ensemble=r"ensemble|r\d+/ensemble",
    seed=r"\d+",


include: "workflow/rules/demo.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/eda.smk"
include: "workflow/rules/folds.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/clean.smk"
include: "workflow/rules/pseudo.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/results.smk"


rule all:
    default_target: True
    input:
        final_targets(),


rule baselines:
    """The demo's single-model baselines, (a) and (b): `snakemake baselines`."""
    input:
        rules.demo_baselines.output.baselines,


onstart:
    preflight()


onsuccess:
    print_run_summary()
