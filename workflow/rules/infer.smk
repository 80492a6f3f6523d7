rule infer:
    """Super-resolve a held-out dataset's LR volume with its fold's model (tiled)."""
    input:
        lr="results/{dataset}/prepare/lr.ome.zarr",
        pair="results/{dataset}/prepare/pair.json",
        model=get_fold_model,
    output:
        sr=directory("results/{dataset}/sr/{arch}_{strategy}_{loss}.ome.zarr"),
    log:
        "results/logs/infer/{dataset}/{arch}_{strategy}_{loss}.log",
    benchmark:
        "results/benchmarks/infer/{dataset}/{arch}_{strategy}_{loss}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["infer"]["threads"]
    resources:
        mem_mb=4000,
        gpu=config["infer"]["gpus"],
    params:
        spec=lambda wildcards: ARCHS[wildcards.arch],
        infer=config["infer"],
        io=config["io"],
    script:
        "../../scripts/infer.py"


rule infer_baseline:
    """Upsample a dataset's LR volume with a parameter-free baseline (bicubic)."""
    input:
        lr="results/{dataset}/prepare/lr.ome.zarr",
        pair="results/{dataset}/prepare/pair.json",
    output:
        sr=directory("results/{dataset}/sr/{baseline}.ome.zarr"),
    log:
        "results/logs/infer/{dataset}/{baseline}.log",
    benchmark:
        "results/benchmarks/infer/{dataset}/{baseline}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    threads: config["infer"]["threads"]
    resources:
        mem_mb=4000,
    params:
        spec=lambda wildcards: ARCHS[wildcards.baseline],
        infer=config["infer"],
        io=config["io"],
    script:
        "../../scripts/infer.py"


rule enhance:
    """Apply a trained super-resolver to the HR volume at its own resolution."""
    input:
        lr="results/{dataset}/prepare/hr.ome.zarr",
        pair="results/{dataset}/prepare/pair.json",
        model=get_fold_model,
    output:
        sr=directory("results/{dataset}/enhanced/{arch}_{strategy}_{loss}.ome.zarr"),
    log:
        "results/logs/enhance/{dataset}/{arch}_{strategy}_{loss}.log",
    benchmark:
        "results/benchmarks/enhance/{dataset}/{arch}_{strategy}_{loss}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["infer"]["threads"]
    resources:
        mem_mb=4000,
        gpu=config["infer"]["gpus"],
    params:
        spec=lambda wildcards: ARCHS[wildcards.arch],
        infer=config["infer"],
        io=config["io"],
    script:
        "../../scripts/infer.py"
