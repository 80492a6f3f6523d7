rule export:
    """Package a trained super-resolution model as a bioimage.io model (zip), with a
    test crop of held-out data, and check it with bioimage.io's model test."""
    input:
        model="results/models/{fold}/{arch}_{strategy}_{loss}/model.pt",
        lr=lambda wildcards: f"results/{export_dataset(wildcards.fold)}/prepare/lr.ome.zarr",
        hr=lambda wildcards: f"results/{export_dataset(wildcards.fold)}/prepare/hr.ome.zarr",
    output:
        package="results/packages/{fold}/{arch}_{strategy}_{loss}.zip",
    log:
        "results/logs/export/{fold}/{arch}_{strategy}_{loss}.log",
    benchmark:
        "results/benchmarks/export/{fold}/{arch}_{strategy}_{loss}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=4000,
    params:
        export=config["export"],
        kind="super-resolution",
        training_datasets=lambda wildcards: training_datasets(wildcards.fold),
    script:
        "../../scripts/export.py"


rule iso_export:
    """Package a dataset's isotropic reconstruction network as a bioimage.io model
    (zip): τ = 1, its input an axial plane of the stack interpolated along z."""
    input:
        model="results/models/isotropic/{dataset}/model.pt",
        anisotropic="results/{dataset}/isotropic/anisotropic.ome.zarr",
        reference=lambda wildcards: (
            f"results/{wildcards.dataset}/isotropic/reference.ome.zarr"
            if wildcards.dataset in ISO_REFERENCED
            else []
        ),
    output:
        package="results/packages/isotropic/{dataset}.zip",
    log:
        "results/logs/iso_export/{dataset}.log",
    benchmark:
        "results/benchmarks/iso_export/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=4000,
    params:
        export=config["export"],
        kind="isotropic",
        training_datasets=lambda wildcards: [wildcards.dataset],
    script:
        "../../scripts/export.py"
