rule predict:
    """OOF probabilities of the fold's validation images and test probabilities (uint8 .npy)."""
    input:
        model=rules.train.output.model,
        images=rules.index.output.images,
        folds=rules.folds.output.folds,
    output:
        oof="results/{round}/predict/{model}/{fold}-s{seed}/oof.npy",
        oof_ids="results/{round}/predict/{model}/{fold}-s{seed}/oof_ids.txt",
        test="results/{round}/predict/{model}/{fold}-s{seed}/test.npy",
        test_ids="results/{round}/predict/{model}/{fold}-s{seed}/test_ids.txt",
    log:
        "results/logs/{round}/predict/{model}/{fold}-s{seed}.log",
    benchmark:
        "results/benchmarks/{round}/predict/{model}/{fold}-s{seed}.tsv"
    conda:
        ENV
    threads: config["threads"]["predict"]
    resources:
        gpu=1,
        mem_mb=job_memory_mb(config, "predict"),
        runtime=job_runtime_minutes(config, "predict"),
    params:
        root=DATA.root,
        size=prediction_size_arg(config),
        tta=lambda wildcards: prediction_tta(config, wildcards.model),
        overlap=lambda wildcards: prediction_overlap(config, wildcards.model),
        batch_size=config["predict"]["batch_size"],
    shell:
        "python -m segflow.predict --model {input.model} --images {input.images}"
        " --folds {input.folds} --image-root {params.root:q} --fold {wildcards.fold}"
        " --size {params.size} --tta {params.tta} --batch-size {params.batch_size}"
        " --window-overlap {params.overlap} --oof-out {output.oof}"
        " --test-out {output.test} --threads {threads} > {log} 2>&1"


rule oof_score:
    """A model's folds merged into one OOF set per seed: mIoU, per-class and per-image IoU."""
    input:
        unpack(cleaned_masks),
        oof=lambda wildcards: expand(
            rules.predict.output.oof, fold=FOLDS, seed=SEEDS, allow_missing=True
        ),
        images=rules.index_train.output.images,
        folds=rules.folds.output.folds,
        masks=rules.index_train.output.masks,
    output:
        json="results/{round}/oof/{model}.json",
        csv="results/{round}/oof/{model}.csv",
    log:
        "results/logs/{round}/oof/{model}.log",
    benchmark:
        "results/benchmarks/{round}/oof/{model}.tsv"
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "oof_score"),
        runtime=job_runtime_minutes(config, "oof_score"),
    params:
        classes=CLASSES_JSON,
        runs=oof_runs,
        cleaned=lambda wildcards, input: (
            f"--cleaned-masks-dir {input.cleaned}" if "cleaned" in input.keys() else ""
        ),
    shell:
        "python -m segflow.oof_score --model-name {wildcards.model} --runs {params.runs:q}"
        " --images {input.images} --folds {input.folds} --masks-dir {input.masks}"
        " --classes {params.classes:q} --out-json {output.json} --out-csv {output.csv}"
        " {params.cleaned} > {log} 2>&1"
