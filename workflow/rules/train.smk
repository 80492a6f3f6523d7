rule train:
    """Train one network on the pairs of every animal but the fold's, resuming if killed."""
    input:
        lr=get_training_volumes(0),
        hr=get_training_volumes(1),
    output:
        model=protected("results/models/{fold}/{arch}_{strategy}_{loss}/model.pt"),
        curve="results/models/{fold}/{arch}_{strategy}_{loss}/curve.csv",
    log:
        "results/logs/train/{fold}/{arch}_{strategy}_{loss}.log",
    benchmark:
        "results/benchmarks/train/{fold}/{arch}_{strategy}_{loss}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["train"]["threads"]
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=config["train"]["gpus"],
    params:
        spec=lambda wildcards: ARCHS[wildcards.arch],
        # Ablation variants of a network (λ of the loss) override some settings.
        settings=lambda wildcards: {
            **config["train"]["settings"],
            **ABLATION_SETTINGS.get(wildcards.arch, {}),
        },
        # Not an output: it must survive a killed job so that the rerun resumes from it.
        checkpoint="results/models/{fold}/{arch}_{strategy}_{loss}/checkpoint.pt",
    script:
        "../../scripts/train.py"
