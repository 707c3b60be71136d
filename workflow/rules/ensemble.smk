rule ensemble:
    """An ensemble of members' probabilities, weights and class bias tuned on OOF: each
    round's own (r<n>/ensemble: what the next round learns from) and, for another member
    list (ensemble.members), the final one (ensemble)."""
    input:
        predictions=ensemble_inputs,
        images=rules.index.output.images,
        masks=rules.index_train.output.masks,
    output:
        summary="results/{ensemble}/summary.json",
        oof="results/{ensemble}/oof.npy",
        oof_ids="results/{ensemble}/oof_ids.txt",
        oof_labels="results/{ensemble}/oof_labels.npy",
        test="results/{ensemble}/test.npy",
        test_ids="results/{ensemble}/test_ids.txt",
        test_labels="results/{ensemble}/test_labels.npy",
    log:
        "results/logs/{ensemble}.log",
    benchmark:
        "results/benchmarks/{ensemble}.tsv"
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "ensemble"),
        runtime=job_runtime_minutes(config, "ensemble"),
    params:
        settings=ensemble_settings(config).to_json(),
        members=ensemble_members_json,
        classes=CLASSES_JSON,
    shell:
        "python -m segflow.ensemble --settings {params.settings:q}"
        " --members {params.members:q} --images {input.images} --masks-dir {input.masks}"
        " --classes {params.classes:q} --summary-out {output.summary}"
        " --oof-out {output.oof} --test-out {output.test}"
        " --test-labels-out {output.test_labels} --oof-labels-out {output.oof_labels}"
        " > {log} 2>&1"


rule submission:
    """The competition CSV, checked before it is renamed into place."""
    input:
        unpack(sample_submission),
        labels=final_ensemble("test_labels"),
        ids=final_ensemble("test_ids"),
        test=DATA.test,
    output:
        csv="results/submission/submission.csv",
    log:
        "results/logs/submission.log",
    conda:
        ENV
    resources:
        mem_mb=job_memory_mb(config, "submission"),
        runtime=job_runtime_minutes(config, "submission"),
    params:
        size=submission_size_arg(config),
        n_classes=len(config["classes"]),
        sample=lambda wildcards, input: input.get("sample", ""),
        debug="--debug-subset" if config["debug"]["enabled"] else "",
    shell:
        "python -m segflow.submission write --labels {input.labels} --ids {input.ids}"
        " --test-json {input.test:q} --sample-submission={params.sample:q}"
        " --size {params.size} --n-classes {params.n_classes} --out {output.csv}"
        " {params.debug} > {log} 2>&1"
