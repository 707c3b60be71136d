rule index_train:
    """Validate the training COCO file and its images; write their index and class masks."""
    input:
        train=lambda wildcards: DATA.train,
    output:
        images="results/data/train/images.parquet",
        skipped="results/data/train/skipped.csv",
        annotations="results/data/annotations.parquet",
        masks=directory("results/data/masks"),
    log:
        "results/logs/index/train.log",
    benchmark:
        "results/benchmarks/index/train.tsv"
    conda:
        ENV
    threads: config["threads"]["index"]
    resources:
        mem_mb=job_memory_mb(config, "index"),
        runtime=job_runtime_minutes(config, "index"),
    params:
        options=index_options,
    shell:
        "python -m segflow.index split --split train --coco {input.train:q} {params.options}"
        " --images-out {output.images} --skipped-out {output.skipped}"
        " --annotations-out {output.annotations} --masks-dir {output.masks}"
        " --threads {threads} > {log} 2>&1"


rule index_test:
    """Validate the test COCO file and its images (file names apart from training's)."""
    input:
        unpack(coco_files),
    output:
        images="results/data/test/images.parquet",
        skipped="results/data/test/skipped.csv",
    log:
        "results/logs/index/test.log",
    benchmark:
        "results/benchmarks/index/test.tsv"
    conda:
        ENV
    threads: config["threads"]["index"]
    resources:
        mem_mb=job_memory_mb(config, "index"),
        runtime=job_runtime_minutes(config, "index"),
    params:
        options=index_options,
    shell:
        "python -m segflow.index split --split test --coco {input.test:q}"
        " --train-json {input.train:q} {params.options}"
        " --images-out {output.images} --skipped-out {output.skipped}"
        " --threads {threads} > {log} 2>&1"


rule index:
    """Both splits' index in one table (what steps that read test images use)."""
    input:
        images=[rules.index_train.output.images, rules.index_test.output.images],
        skipped=[rules.index_train.output.skipped, rules.index_test.output.skipped],
    output:
        images="results/data/images.parquet",
        skipped="results/data/skipped.csv",
    log:
        "results/logs/index/merge.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "index"),
        runtime=job_runtime_minutes(config, "index"),
    shell:
        "python -m segflow.index merge --images {input.images}"
        " --skipped {input.skipped} --images-out {output.images}"
        " --skipped-out {output.skipped} > {log} 2>&1"
