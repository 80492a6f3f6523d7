rule iso_prepare:
    """The anisotropic stack as OME-Zarr with its thickness ρ; simulated from the
    isotropic volume (averaged along z) where the sheet gives no anisotropic stack."""
    input:
        volume=lambda wildcards: volume_file(
            samples.loc[wildcards.dataset, "anisotropic"]
            or samples.loc[wildcards.dataset, "isotropic"]
        ),
    output:
        anisotropic=directory("results/{dataset}/isotropic/anisotropic.ome.zarr"),
        meta="results/{dataset}/isotropic/anisotropic.json",
    log:
        "results/logs/iso_prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/iso_prepare/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        anisotropic=sheet_value("anisotropic"),
        isotropic=sheet_value("isotropic"),
        voxel_nm=sheet_value("anisotropic_voxel_nm"),
        simulate_rho=config["isotropic"]["simulate_rho"],
        io=config["io"],
    script:
        "../../scripts/iso_prepare.py"


rule iso_reference:
    """The isotropic reference on the reconstruction's grid (cropped to its depth)."""
    input:
        volume=get_volume("isotropic"),
        meta="results/{dataset}/isotropic/anisotropic.json",
    output:
        reference=directory("results/{dataset}/isotropic/reference.ome.zarr"),
    log:
        "results/logs/iso_reference/{dataset}.log",
    benchmark:
        "results/benchmarks/iso_reference/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        isotropic=sheet_value("isotropic"),
        io=config["io"],
    script:
        "../../scripts/iso_prepare.py"


rule iso_train:
    """Train the same-size network self-supervised on the stack's own xy planes."""
    input:
        anisotropic="results/{dataset}/isotropic/anisotropic.ome.zarr",
        meta="results/{dataset}/isotropic/anisotropic.json",
    output:
        model=protected("results/models/isotropic/{dataset}/model.pt"),
        curve="results/models/isotropic/{dataset}/curve.csv",
    log:
        "results/logs/iso_train/{dataset}.log",
    benchmark:
        "results/benchmarks/iso_train/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["isotropic"]["threads"]
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=config["isotropic"]["gpus"],
    params:
        spec=config["isotropic"]["arch"],
        settings=config["isotropic"]["settings"],
        # Not an output: it must survive a killed job so that the rerun resumes from it.
        checkpoint="results/models/isotropic/{dataset}/checkpoint.pt",
    script:
        "../../scripts/iso_train.py"


rule iso_infer:
    """Reconstruct the isotropic volume: cubic along z, then the network on every xz and
    yz plane, the passes averaged (cubic: the interpolation alone)."""
    input:
        anisotropic="results/{dataset}/isotropic/anisotropic.ome.zarr",
        meta="results/{dataset}/isotropic/anisotropic.json",
        model=lambda wildcards: (
            []
            if wildcards.iso_method == "cubic"
            else f"results/models/isotropic/{wildcards.dataset}/model.pt"
        ),
    output:
        volume=directory("results/{dataset}/isotropic/{iso_method}.ome.zarr"),
    log:
        "results/logs/iso_infer/{dataset}/{iso_method}.log",
    benchmark:
        "results/benchmarks/iso_infer/{dataset}/{iso_method}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["isotropic"]["threads"]
    resources:
        mem_mb=8000,
        gpu=lambda wildcards: (
            0 if wildcards.iso_method == "cubic" else config["isotropic"]["gpus"]
        ),
    params:
        spec=config["isotropic"]["arch"],
        passes=config["isotropic"]["passes"],
        slab=config["isotropic"]["slab"],
        halo=config["isotropic"]["halo"],
        infer=config["infer"],
    script:
        "../../scripts/iso_infer.py"


rule iso_evaluate:
    """Per-plane metrics of a reconstruction against the isotropic reference, on the xz
    planes (where the axial resolution shows)."""
    input:
        sr="results/{dataset}/isotropic/{iso_method}.ome.zarr",
        hr="results/{dataset}/isotropic/reference.ome.zarr",
    output:
        slices="results/{dataset}/isotropic/evaluate/{iso_method}.tsv",
    log:
        "results/logs/iso_evaluate/{dataset}/{iso_method}.log",
    benchmark:
        "results/benchmarks/iso_evaluate/{dataset}/{iso_method}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        meta=iso_method_metadata,
        planes="xz",
        io=config["io"],
    script:
        "../../scripts/evaluate.py"


rule iso_collect:
    """One plane-level table of the isotropic reconstructions, and its summary."""
    input:
        expand(
            "results/{dataset}/isotropic/evaluate/{iso_method}.tsv",
            dataset=ISO_REFERENCED,
            iso_method=ISO_METHODS,
        ),
    output:
        parquet="results/tables/isotropic_slices.parquet",
        csv="results/tables/isotropic_slices.csv",
        summary="results/tables/isotropic_summary.tsv",
    log:
        "results/logs/iso_collect.log",
    benchmark:
        "results/benchmarks/iso_collect.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../../scripts/collect.py"


rule iso_table:
    """A2I-3DEM's Table I layout: cubic and the network over datasets, for one metric."""
    input:
        summary="results/tables/isotropic_summary.tsv",
    output:
        tables=multiext("results/tables/isotropic_{metric}", ".md", ".tex"),
        html=report(
            "results/tables/isotropic_{metric}.html",
            caption="../report/table_isotropic.rst",
            category="Results",
            subcategory="Isotropic reconstruction",
            labels={"metric": "{metric}"},
        ),
    log:
        "results/logs/iso_table/{metric}.log",
    benchmark:
        "results/benchmarks/iso_table/{metric}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    params:
        select={},
        columns="method",
        title=lambda wildcards: (
            f"Isotropic reconstruction: {wildcards.metric} on xz planes, methods × datasets"
        ),
        higher_is_better=lambda wildcards: METRICS[wildcards.metric][0],
        decimals=lambda wildcards: METRICS[wildcards.metric][1],
    script:
        "../../scripts/paper_table.py"
