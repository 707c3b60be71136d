rule clean:
    """Labels scored against r0's out-of-fold predictions; flags, cleaned masks, gallery."""
    input:
        oof=clean_source_inputs,
        images=rules.index.output.images,
        annotations=rules.index.output.annotations,
        masks=rules.index.output.masks,
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
    params:
        sources=clean_sources_json,
        root=DATA.root,
        classes=CLASSES_JSON,
        settings=json.dumps(stable(config["clean"])),
        gallery=config["clean"]["gallery"],
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "python -m segflow.clean --sources {params.sources:q} --images {input.images}"
        " --annotations {input.annotations} --masks-dir {input.masks}"
        " --image-root {params.root:q} --classes {params.classes:q} --out-dir {params.out_dir}"
        " --settings {params.settings:q} --gallery {params.gallery} > {log} 2>&1"


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
    shell:
        "python -m segflow.noise_detection --flags {input.flags} --images {input.images}"
        " --noise {input.noise} --clean-truth {input.truth} --out {output.detection}"
        " > {log} 2>&1"
