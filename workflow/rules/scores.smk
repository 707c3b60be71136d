# The demo's hidden-test scores (never a training input): the submission, what each stage
# bought, and the single-model baselines the pipeline must beat.


rule demo_score:
    """The submission scored against the demo's hidden test labels (never a training input)."""
    input:
        submission=rules.submission.output.csv,
        truth=rules.demo.output.test_truth,
    output:
        score="results/demo/score.json",
    log:
        "results/logs/demo_score.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "demo_score"),
        runtime=job_runtime_minutes(config, "demo_score"),
    params:
        classes=CLASSES_JSON,
        size=submission_size_arg(config),
    shell:
        "python -m segflow.demo_score --submission {input.submission} --truth {input.truth}"
        " --classes {params.classes:q} --size {params.size} --out {output.score} > {log} 2>&1"


rule demo_rounds:
    """Demo test mIoU of baseline (a) and of each round's own ensemble: what each stage bought."""
    input:
        ensembles=[round_ensemble(r, "test_labels") for r in ROUNDS],
        baseline=list(baselines(ROUND_BASELINES).values()),
        truth=rules.demo.output.test_truth,
    output:
        rounds="results/demo/rounds.json",
        figure=report(
            "results/demo/rounds.png",
            caption="../report/rounds.rst",
            category="Results",
            labels={"figure": "rounds (demo hidden test)"},
        ),
    log:
        "results/logs/demo_rounds.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "demo_rounds"),
        runtime=job_runtime_minutes(config, "demo_rounds"),
    params:
        entries=rounds_entries_json(),
        classes=CLASSES_JSON,
        size=submission_size_arg(config),
    shell:
        "python -m segflow.demo_score --rounds {params.entries:q} --truth {input.truth}"
        " --classes {params.classes:q} --size {params.size} --out {output.rounds}"
        " --figure-out {output.figure} > {log} 2>&1"


rule demo_baselines:
    """Both single-model baselines on the demo test: (a) the first model's recipe on all
    labelled images (round r0's full fit) and (b) the same, compute-matched to the whole
    pipeline of its seed. Not in the default run: (b) costs as much as the pipeline."""
    input:
        baselines=list(baselines(["recipe", "matched"]).values()),
        truth=rules.demo.output.test_truth,
    output:
        baselines="results/demo/baselines.json",
    log:
        "results/logs/demo_baselines.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "demo_baselines"),
        runtime=job_runtime_minutes(config, "demo_baselines"),
    params:
        entries=json.dumps(
            {k: {"test": v} for k, v in baselines(["recipe", "matched"]).items()}
        ),
        classes=CLASSES_JSON,
        size=submission_size_arg(config),
    shell:
        "python -m segflow.demo_score --rounds {params.entries:q} --truth {input.truth}"
        " --classes {params.classes:q} --size {params.size} --out {output.baselines}"
        " > {log} 2>&1"
