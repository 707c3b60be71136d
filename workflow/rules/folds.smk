rule folds:
    """Cross-validation folds of the labelled images (image_id, fold)."""
    input:
        unpack(holdout_file),
        images=rules.index_train.output.images,
    output:
        folds="results/folds/folds.csv",
        summary="results/folds/summary.json",
    log:
        "results/logs/folds.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "folds"),
        runtime=job_runtime_minutes(config, "folds"),
    params:
        method=config["cv"]["method"],
        folds=config["cv"]["folds"],
        group_by=config["cv"]["group_by"] or "",
        n_classes=len(config["classes"]),
        seed=config["seed"],
        val=lambda wildcards, input: input.get("val", ""),
    shell:
        "python -m segflow.folds --images {input.images} --out {output.folds}"
        " --summary-out {output.summary}"
        " --n-classes {params.n_classes} --method {params.method} --folds {params.folds}"
        " --seed {params.seed} --group-by={params.group_by:q} --val-json={params.val:q}"
        " > {log} 2>&1"
