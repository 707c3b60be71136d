rule eda:
    """Standalone HTML report of the dataset, its figures and stats.json."""
    input:
        images=rules.index.output.images,
        annotations=rules.index_train.output.annotations,
        skipped=rules.index.output.skipped,
        masks=rules.index_train.output.masks,
    output:
        report=report(
            "results/eda/report.html",
            caption="../report/eda.rst",
            category="EDA",
            labels={"figure": "full report"},
        ),
        stats="results/eda/stats.json",
        figures=report(
            directory("results/eda/figures"),
            patterns=["{name}.png"],
            caption="../report/eda_figure.rst",
            category="EDA",
            labels={"figure": "{name}"},
        ),
    log:
        "results/logs/eda.log",
    benchmark:
        "results/benchmarks/eda.tsv"
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "eda"),
        runtime=job_runtime_minutes(config, "eda"),
    params:
        root=DATA.root,
        classes=CLASSES_JSON,
        gallery=config["eda"]["gallery"],
        seed=config["seed"],
        group_by=config["cv"]["group_by"] or "",
    shell:
        "python -m segflow.eda --images {input.images} --annotations {input.annotations}"
        " --skipped {input.skipped} --masks-dir {input.masks} --image-root {params.root:q}"
        " --classes {params.classes:q} --report {output.report} --stats {output.stats}"
        " --figures-dir {output.figures} --gallery-size {params.gallery} --seed {params.seed}"
        " --group-by={params.group_by:q} > {log} 2>&1"
