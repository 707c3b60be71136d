rule round_ensemble:
    """One round's OOF ensemble of all its models x seeds: what the next round learns from."""
    input:
        predictions=lambda wildcards: members_inputs(round_members(wildcards.round)),
        images=rules.index.output.images,
        masks=rules.index.output.masks,
    output:
        summary="results/{round}/ensemble/summary.json",
        oof="results/{round}/ensemble/oof.npy",
        oof_ids="results/{round}/ensemble/oof_ids.txt",
        test="results/{round}/ensemble/test.npy",
        test_ids="results/{round}/ensemble/test_ids.txt",
        test_labels="results/{round}/ensemble/test_labels.npy",
    log:
        "results/logs/{round}/ensemble.log",
    benchmark:
        "results/benchmarks/{round}/ensemble.tsv"
    conda:
        ENV
    params:
        members=lambda wildcards: members_json(round_members(wildcards.round)),
        settings=stable(config["ensemble"]),
        classes=CLASSES_JSON,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        ENSEMBLE_SHELL


rule ensemble:
    """The submission's ensemble (ensemble.members); weights and class bias tuned on OOF."""
    input:
        predictions=members_inputs(MEMBERS),
        images=rules.index.output.images,
        masks=rules.index.output.masks,
    output:
        summary="results/ensemble/summary.json",
        oof="results/ensemble/oof.npy",
        oof_ids="results/ensemble/oof_ids.txt",
        test="results/ensemble/test.npy",
        test_ids="results/ensemble/test_ids.txt",
        test_labels="results/ensemble/test_labels.npy",
    log:
        "results/logs/ensemble.log",
    benchmark:
        "results/benchmarks/ensemble.tsv"
    conda:
        ENV
    params:
        members=members_json(MEMBERS),
        settings=stable(config["ensemble"]),
        classes=CLASSES_JSON,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        ENSEMBLE_SHELL


rule submission:
    """The competition CSV, checked before it is renamed into place."""
    input:
        unpack(sample_submission),
        labels=rules.ensemble.output.test_labels,
        ids=rules.ensemble.output.test_ids,
        test=DATA.test,
    output:
        csv="results/submission/submission.csv",
    log:
        "results/logs/submission.log",
    conda:
        ENV
    params:
        size=config["submission"]["size"],
        n_classes=len(config["classes"]),
        sample=lambda wildcards, input: input.get("sample", ""),
        debug="--debug-subset" if config["debug"]["enabled"] else "",
    shell:
        "python -m segflow.submission write --labels {input.labels} --ids {input.ids}"
        " --test-json {input.test:q} --sample-submission={params.sample:q}"
        " --size {params.size} --n-classes {params.n_classes} --out {output.csv}"
        " {params.debug} > {log} 2>&1"


rule demo_score:
    """The submission scored against the demo's hidden test labels (never a training input)."""
    input:
        submission=rules.submission.output.csv,
        truth=rules.demo.output.test_truth,
    output:
        score="results/demo/score.json",
    log:
        "results/logs/demo_score.log",
    conda:
        ENV
    params:
        classes=CLASSES_JSON,
        size=config["submission"]["size"],
    shell:
        "python -m segflow.demo_score --submission {input.submission} --truth {input.truth}"
        " --classes {params.classes:q} --size {params.size} --out {output.score} > {log} 2>&1"
