rule leaderboard:
    """The results report: the leaderboard (CSV and heatmap), the ensembles' weights and
    class biases, what each round bought on OOF, the final ensemble's OOF confusion
    matrix and worst images, and each model's training curves."""
    input:
        unpack(report_inputs),
        images=rules.index.output.images,
        masks=rules.index_train.output.masks,
    output:
        csv="results/leaderboard.csv",
        leaderboard=report(
            "results/report/leaderboard.png",
            caption="../report/leaderboard.rst",
            category="Results",
            labels={"figure": "leaderboard"},
        ),
        ensembles=report(
            "results/report/ensembles.png",
            caption="../report/ensembles.rst",
            category="Results",
            labels={"figure": "ensemble weights and class biases"},
        ),
        rounds=report(
            "results/report/rounds_oof.png",
            caption="../report/rounds_oof.rst",
            category="Results",
            labels={"figure": "rounds (OOF)"},
        ),
        confusion=report(
            "results/report/confusion.png",
            caption="../report/confusion.rst",
            category="Results",
            labels={"figure": "OOF confusion matrix"},
        ),
        worst=report(
            "results/report/worst_oof.png",
            caption="../report/worst_oof.rst",
            category="Results",
            labels={"figure": "worst OOF images"},
        ),
        curves=report(
            directory("results/report/curves"),
            patterns=["{name}.png"],
            caption="../report/curves.rst",
            category="Training curves",
            labels={"figure": "{name}"},
        ),
    log:
        "results/logs/leaderboard.log",
    benchmark:
        "results/benchmarks/leaderboard.tsv"
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "leaderboard"),
        runtime=job_runtime_minutes(config, "leaderboard"),
    params:
        runs=json.dumps(report_runs()),
        ensembles=json.dumps(report_ensembles()),
        final=lambda wildcards, input: json.dumps(
            {
                "name": FINAL_ENSEMBLE,
                "oof": input.final_oof,
                "oof_labels": input.final_oof_labels,
            }
        ),
        root=DATA.root,
        classes=CLASSES_JSON,
        worst=config["report"]["worst_images"],
    shell:
        "python -m segflow.leaderboard --runs {params.runs:q}"
        " --ensembles {params.ensembles:q} --final {params.final:q}"
        " --images {input.images} --masks-dir {input.masks} --image-root {params.root:q}"
        " --classes {params.classes:q} --worst {params.worst} --csv-out {output.csv}"
        " --leaderboard-out {output.leaderboard} --ensembles-out {output.ensembles}"
        " --rounds-out {output.rounds} --confusion-out {output.confusion}"
        " --worst-out {output.worst} --curves-out {output.curves} > {log} 2>&1"
