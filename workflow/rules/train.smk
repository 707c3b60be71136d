rule train:
    """One model on one fold with one seed; the checkpoint of its best validation mIoU."""
    input:
        unpack(round_training_inputs),
        images=training_images_table,
        masks=rules.index_train.output.masks,
        folds=rules.folds.output.folds,
        encoder_weights=encoder_weights_file,
    output:
        model="results/{round}/train/{model}/{fold}-s{seed}/model.pt",
        history="results/{round}/train/{model}/{fold}-s{seed}/history.csv",
        metrics="results/{round}/train/{model}/{fold}-s{seed}/metrics.json",
    log:
        "results/logs/{round}/train/{model}/{fold}-s{seed}.log",
    benchmark:
        "results/benchmarks/{round}/train/{model}/{fold}-s{seed}.tsv"
    conda:
        ENV
    threads: config["threads"]["train"]
    resources:
        gpu=1,
        mem_mb=job_memory_mb(config, "train"),
        runtime=train_runtime_minutes,
    params:
        settings=train_settings,
        root=DATA.root,
        classes=CLASSES_JSON,
        wandb=wandb_settings(config, WANDB_DIR).to_json(),
        round_args=round_training_args,
    shell:
        "python -m segflow.train --settings {params.settings:q} --images {input.images}"
        " --folds {input.folds} --masks-dir {input.masks} --image-root {params.root:q}"
        " --classes {params.classes:q} --fold {wildcards.fold} --seed {wildcards.seed}"
        " --model-out {output.model} --history-out {output.history}"
        " --metrics-out {output.metrics} --threads {threads} --wandb {params.wandb:q}"
        " --name {wildcards.round}/{wildcards.model}/{wildcards.fold}-s{wildcards.seed}"
        " {params.round_args} > {log} 2>&1"
