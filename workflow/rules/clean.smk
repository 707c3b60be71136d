rule clean:
    """Labels scored against r0's out-of-fold predictions; flags, cleaned masks, gallery."""
    input:
        oof=clean_source_inputs,
        images=rules.index_train.output.images,
        annotations=rules.index_train.output.annotations,
        masks=rules.index_train.output.masks,
    output:
        scores="results/clean/scores.csv",
        flags="results/clean/flags.csv",
        images="results/clean/images.csv",
        dropped="results/clean/dropped.txt",
        masks=directory("results/clean/masks"),
        summary="results/clean/summary.json",
        gallery=report(
            "results/clean/gallery.html",
            caption="../report/clean.rst",
            category="Label noise",
            labels={"figure": "gallery"},
        ),
        figures=report(
            directory("results/clean/gallery"),
            patterns=["{name}.png"],
            caption="../report/clean_figure.rst",
            category="Label noise",
            labels={"figure": "{name}"},
        ),
    log:
        "results/logs/clean.log",
    benchmark:
        "results/benchmarks/clean.tsv"
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "clean"),
        runtime=job_runtime_minutes(config, "clean"),
    params:
        settings=clean_settings(config).to_json(),
        sources=json.dumps(clean_sources(), sort_keys=True),
        root=DATA.root,
        classes=CLASSES_JSON,
        unlabelled=config["data"]["unlabelled"],
    shell:
        "python -m segflow.clean --settings {params.settings:q}"
        " --sources {params.sources:q} --images {input.images}"
        " --annotations {input.annotations} --masks-dir {input.masks}"
        " --image-root {params.root:q} --classes {params.classes:q}"
        " --unlabelled {params.unlabelled} --scores-out {output.scores} --flags-out {output.flags}"
        " --images-out {output.images} --dropped-out {output.dropped}"
        " --masks-out {output.masks} --summary-out {output.summary}"
        " --gallery-out {output.gallery} --figures-out {output.figures} > {log} 2>&1"


rule demo_noise:
    """How many of the demo's injected label errors the cleaning flags (never a training input)."""
    input:
        flags=rules.clean.output.flags,
        images=rules.clean.output.images,
        noise=rules.demo.output.noise,
        truth=rules.demo.output.train_truth,
    output:
        detection="results/demo/noise_detection.json",
    log:
        "results/logs/demo_noise.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "demo_noise"),
        runtime=job_runtime_minutes(config, "demo_noise"),
    shell:
        "python -m segflow.demo_noise_score --flags {input.flags} --images {input.images}"
        " --noise {input.noise} --clean-truth {input.truth} --out {output.detection}"
        " > {log} 2>&1"
