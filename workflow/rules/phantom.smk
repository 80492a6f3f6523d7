rule phantom:
    """Acquisitions of the built-in EM phantom: HR, LR, anisotropic stack and ground truth."""
    output:
        hr="resources/phantom/{dataset}/hr.tif",
        lr="resources/phantom/{dataset}/lr.tif",
        anisotropic="resources/phantom/{dataset}/anisotropic.h5",
        hr_clean=directory("resources/phantom/{dataset}/hr_clean.ome.zarr"),
        hr_labels=directory("resources/phantom/{dataset}/hr_labels.ome.zarr"),
        anisotropic_clean=directory(
            "resources/phantom/{dataset}/anisotropic_clean.ome.zarr"
        ),
        truth="resources/phantom/{dataset}/truth.json",
    log:
        "results/logs/phantom/{dataset}.log",
    benchmark:
        "results/benchmarks/phantom/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        seed=lambda wildcards: dataset_seed(
            config["phantom"]["seed"], wildcards.dataset
        ),
        phantom=config["phantom"]["params"],
        io=config["io"],
    script:
        "../../scripts/phantom.py"
