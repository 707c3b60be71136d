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
    resources:
        mem_mb=job_memory_mb(config, "pseudo_labels"),
        runtime=job_runtime_minutes(config, "pseudo_labels"),
    params:
        classes=CLASSES_JSON,
        settings=pseudo_settings(config).to_json(),
    shell:
        "python -m segflow.pseudo --settings {params.settings:q} --test-npy {input.test}"
        " --images {input.images} --classes {params.classes:q}"
        " --images-out {output.images} --masks-out {output.masks}"
        " --summary-out {output.summary} --figure-out {output.figure} > {log} 2>&1"
