rule demo:
    """Synthetic dataset in the competition layout, with injected label noise and hidden truth."""
    output:
        train=f"{DEMO_ROOT}/train_all.json",
        train_split=f"{DEMO_ROOT}/train.json",
        val=f"{DEMO_ROOT}/val.json",
        test=f"{DEMO_ROOT}/test.json",
        sample_submission=f"{DEMO_ROOT}/sample_submission.csv",
        noise=f"{DEMO_ROOT}/truth/noise.csv",
        test_truth=f"{DEMO_ROOT}/truth/test.json",
        train_truth=f"{DEMO_ROOT}/truth/train_all_clean.json",
        summary=f"{DEMO_ROOT}/truth/summary.json",
    log:
        "results/logs/demo.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "demo"),
        runtime=job_runtime_minutes(config, "demo"),
    params:
        root=lambda wildcards, output: os.path.dirname(output.train),
        classes=CLASSES_JSON,
        settings=demo_settings(config).to_json(),
    shell:
        "python -m segflow.demo --out {params.root} --classes {params.classes:q}"
        " --settings {params.settings:q} > {log} 2>&1"
