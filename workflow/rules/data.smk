rule index:
    """Validate the COCO files and every image; write the image index and the class masks."""
    input:
        unpack(coco_files),
    output:
        images="results/data/images.parquet",
        annotations="results/data/annotations.parquet",
        skipped="results/data/skipped.csv",
        masks=directory("results/data/masks"),
    log:
        "results/logs/index.log",
    benchmark:
        "results/benchmarks/index.tsv"
    conda:
        ENV
    threads: config["threads"]["index"]
    resources:
        mem_mb=job_memory_mb(config, "index"),
        runtime=job_runtime_minutes(config, "index"),
    params:
        root=DATA.root,
        classes=CLASSES_JSON,
        on_error=config["data"]["on_error"],
        unlabelled=config["data"]["unlabelled"],
        void=json.dumps(config["data"]["void"]),
        exif=config["data"]["exif"],
        sample=debug_sample(),
        seed=config["seed"],
    shell:
        "python -m segflow.index --train {input.train:q} --test {input.test:q}"
        " --image-root {params.root:q} --classes {params.classes:q}"
        " --images-out {output.images} --annotations-out {output.annotations}"
        " --skipped-out {output.skipped} --masks-dir {output.masks}"
        " --on-error {params.on_error} --unlabelled {params.unlabelled}"
        " --void {params.void:q} --exif {params.exif}"
        " --sample {params.sample} --seed {params.seed}"
        " --threads {threads} > {log} 2>&1"
