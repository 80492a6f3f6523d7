rule evaluate:
    """Per-slice PSNR, SSIM and FRC of a method's output against the acquired HR, and
    VOI and ARAND of its segmentation where the dataset has ground-truth labels."""
    input:
        sr="results/{dataset}/sr/{method}.ome.zarr",
        hr="results/{dataset}/prepare/hr.ome.zarr",
        labels=get_labels,
        segmenter=get_segmenter("model.pt"),
        calibration=get_segmenter("calibration.json"),
    output:
        slices="results/{dataset}/evaluate/{method}.tsv",
    log:
        "results/logs/evaluate/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{method}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        meta=method_metadata,
        labels=sheet_value("labels"),
        segmentation=config.get("segmentation"),
        io=config["io"],
    script:
        "../../scripts/evaluate.py"


rule segmenter:
    """The fixed segmentation pipeline of a fold: an affinity U-Net trained on the HR
    volumes and labels of the fold's labelled training datasets, its merge threshold
    chosen on them (lowest VOI)."""
    input:
        hr=lambda wildcards: expand(
            "results/{dataset}/prepare/hr.ome.zarr",
            dataset=labelled_training(wildcards.fold),
        ),
        labels=lambda wildcards: [
            volume_file(samples.loc[d, "labels"])
            for d in labelled_training(wildcards.fold)
        ],
    output:
        model="results/models/segmentation/{fold}/model.pt",
        curve="results/models/segmentation/{fold}/curve.csv",
        calibration="results/models/segmentation/{fold}/calibration.json",
    log:
        "results/logs/segmenter/{fold}.log",
    benchmark:
        "results/benchmarks/segmenter/{fold}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config.get("segmentation", {}).get("threads", 1)
    resources:
        mem_mb=4000,
        gpu=config["train"]["gpus"],  # as many as a training job of the study
    params:
        labels=lambda wildcards: [
            samples.loc[d, "labels"] for d in labelled_training(wildcards.fold)
        ],
        segmentation=config.get("segmentation"),
    script:
        "../../scripts/segmenter.py"


rule collect:
    """One slice-level table of every method and dataset, and its per-dataset summary."""
    input:
        expand(
            "results/{dataset}/evaluate/{method}.tsv", dataset=PAIRED, method=METHODS
        ),
    output:
        parquet="results/tables/slices.parquet",
        csv="results/tables/slices.csv",
        summary="results/tables/summary.tsv",
    log:
        "results/logs/collect.log",
    benchmark:
        "results/benchmarks/collect.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../../scripts/collect.py"


rule table2:
    """The paper's Table II (datasets × methods, mean ± std) for one metric."""
    input:
        summary="results/tables/summary.tsv",
    output:
        tables=multiext("results/tables/table2_{metric}", ".md", ".tex"),
        html=report(
            "results/tables/table2_{metric}.html",
            caption="../report/table2.rst",
            category="Results",
            subcategory="Table II: methods × datasets",
            labels={"metric": "{metric}"},
        ),
    log:
        "results/logs/table2/{metric}.log",
    benchmark:
        "results/benchmarks/table2/{metric}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    params:
        select={},
        columns="method",
        title=lambda wildcards: f"Table II: {wildcards.metric}, methods × datasets",
        higher_is_better=lambda wildcards: METRICS[wildcards.metric][0],
        decimals=lambda wildcards: METRICS[wildcards.metric][1],
    script:
        "../../scripts/paper_table.py"


rule table3:
    """The paper's Table III (datasets × training strategies) of one network and loss."""
    input:
        summary="results/tables/summary.tsv",
    output:
        tables=multiext("results/tables/table3_{arch}_{loss}_{metric}", ".md", ".tex"),
        html=report(
            "results/tables/table3_{arch}_{loss}_{metric}.html",
            caption="../report/table3.rst",
            category="Results",
            subcategory="Table III: training strategies × datasets",
            labels={
                "network": "{arch}",
                "loss": "{loss}",
                "metric": "{metric}",
            },
        ),
    log:
        "results/logs/table3/{arch}_{loss}_{metric}.log",
    benchmark:
        "results/benchmarks/table3/{arch}_{loss}_{metric}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    params:
        select=lambda wildcards: {"arch": wildcards.arch, "loss": wildcards.loss},
        columns="strategy",
        title=lambda wildcards: (
            f"Table III: {wildcards.metric} of {wildcards.arch} [{wildcards.loss}], "
            "training strategies × datasets"
        ),
        higher_is_better=lambda wildcards: METRICS[wildcards.metric][0],
        decimals=lambda wildcards: METRICS[wildcards.metric][1],
    script:
        "../../scripts/paper_table.py"


# Table IV times the first fold's models on the LR of a dataset that fold holds out.
TIMED = [d for d in PAIRED if samples.loc[d, "animal"] in FOLDS[:1]][:1]


rule table4:
    """The paper's Table IV: parameters of each network and its seconds per slice, timed
    on the LR sections of a held-out dataset (tiled inference as configured)."""
    input:
        models=expand(
            "results/models/{fold}/{arch}_{strategy}_{loss}/model.pt",
            fold=FOLDS[:1],
            arch=TRAINED,
            strategy=config["train"]["strategies"][:1],
            loss=config["train"]["losses"][:1],
        ),
        lr=expand("results/{dataset}/prepare/lr.ome.zarr", dataset=TIMED),
        pair=expand("results/{dataset}/prepare/pair.json", dataset=TIMED),
    output:
        tsv="results/tables/table4.tsv",
        tables=multiext("results/tables/table4", ".md", ".tex"),
        html=report(
            "results/tables/table4.html",
            caption="../report/table4.rst",
            category="Results",
            subcategory="Table IV: parameters and running time",
            labels={"table": "parameters and seconds per slice"},
        ),
    log:
        "results/logs/table4.log",
    benchmark:
        "results/benchmarks/table4.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["infer"]["threads"]
    resources:
        mem_mb=4000,
        gpu=config["infer"]["gpus"],
    params:
        # Networks in the paper's order: baselines, then the trained ones (one model each:
        # the size and speed do not depend on the fold, strategy or loss).
        methods=[*BASELINES, *TRAINED],
        trained=TRAINED,
        specs={name: ARCHS[name] for name in BASELINES},
        infer=config["infer"],
        # Middle LR sections timed one by one, after one untimed warm-up section.
        sections=8,
    script:
        "../../scripts/table4.py"
