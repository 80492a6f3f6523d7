rule evaluate:
    """Per-slice PSNR, SSIM and FRC of a method's output against the acquired HR."""
    input:
        sr="results/{dataset}/sr/{method}.ome.zarr",
        hr="results/{dataset}/prepare/hr.ome.zarr",
    output:
        slices="results/{dataset}/evaluate/{method}.tsv",
    log:
        "results/logs/evaluate/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{method}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    resources:
        mem_mb=2000,
    params:
        meta=method_metadata,
        io=config["io"],
    script:
        "../../scripts/evaluate.py"


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
