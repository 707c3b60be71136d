rule pseudo_labels:
    """Round r<n>'s pseudo labels: round r<n-1>'s ensemble where it is confident, else 255."""
    input:
        ensemble=previous_ensemble,
        images=rules.index.output.images,
    output:
        images="results/pseudo/{round}/images.csv",
        masks=directory("results/pseudo/{round}/masks"),
        summary="results/pseudo/{round}/summary.json",
        figure=report(
            "results/pseudo/{round}/summary.png",
            caption="../report/pseudo.rst",
            category="Pseudo labels",
            labels={"round": "{round}"},
        ),
    log:
        "results/logs/{round}/pseudo_labels.log",
    benchmark:
        "results/benchmarks/{round}/pseudo_labels.tsv"
    conda:
        ENV
    params:
        ensemble_dir=lambda wildcards, input: os.path.dirname(input.ensemble[0]),
        classes=CLASSES_JSON,
        confidence=json.dumps(stable(config["pseudo"]["confidence"])),
        min_coverage=config["pseudo"]["min_coverage"],
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "python -m segflow.pseudo --test-npy {params.ensemble_dir}/test.npy"
        " --test-ids {params.ensemble_dir}/test_ids.txt --images {input.images}"
        " --classes {params.classes:q} --out-dir {params.out_dir}"
        " --confidence {params.confidence:q} --min-coverage {params.min_coverage}"
        " > {log} 2>&1"


rule demo_rounds:
    """Demo test mIoU of each round's own ensemble: what each round bought."""
    input:
        ensembles=expand(rules.round_ensemble.output.test_labels, round=ROUNDS),
        truth=rules.demo.output.test_truth,
    output:
        rounds="results/demo/rounds.json",
    log:
        "results/logs/demo_rounds.log",
    conda:
        ENV
    params:
        dirs=json.dumps(
            {round_: f"results/{round_}/ensemble" for round_ in ROUNDS}, sort_keys=True
        ),
        classes=CLASSES_JSON,
        size=config["submission"]["size"],
    shell:
        "python -m segflow.demo_score --rounds {params.dirs:q} --truth {input.truth}"
        " --classes {params.classes:q} --size {params.size} --out {output.rounds}"
        " > {log} 2>&1"
