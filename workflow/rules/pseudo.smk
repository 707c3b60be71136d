rule pseudo_labels:
    """Round r<n>'s pseudo labels: round r<n-1>'s ensemble where it is confident, else 255."""
    input:
        unpack(previous_ensemble),
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
        classes=CLASSES_JSON,
        settings=pseudo_settings(config).to_json(),
    shell:
        "python -m segflow.pseudo --settings {params.settings:q} --test-npy {input.test}"
        " --images {input.images} --classes {params.classes:q}"
        " --images-out {output.images} --masks-out {output.masks}"
        " --summary-out {output.summary} --figure-out {output.figure} > {log} 2>&1"


rule demo_rounds:
    """Demo test mIoU of each round's own ensemble: what each round bought."""
    input:
        ensembles=[round_ensemble(r, "test_labels") for r in ROUNDS],
        truth=rules.demo.output.test_truth,
    output:
        rounds="results/demo/rounds.json",
    log:
        "results/logs/demo_rounds.log",
    conda:
        ENV
    params:
        rounds=rounds_json(),
        classes=CLASSES_JSON,
        size=config["submission"]["size"],
    shell:
        "python -m segflow.demo_score --rounds {params.rounds:q} --truth {input.truth}"
        " --classes {params.classes:q} --size {params.size} --out {output.rounds}"
        " > {log} 2>&1"
