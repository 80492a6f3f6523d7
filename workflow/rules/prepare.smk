rule register:
    """Register the LR acquisition to the HR field of view (similarity transform)."""
    input:
        lr=get_volume("lr"),
        hr=get_volume("hr"),
    output:
        lr=temp(directory("results/{dataset}/prepare/registered_lr.ome.zarr")),
        transform="results/{dataset}/prepare/registration.json",
        residuals="results/{dataset}/prepare/registration_residuals.tsv",
        qc=report(
            "results/{dataset}/prepare/registration_qc.png",
            caption="../report/registration_qc.rst",
            category="Preparation",
            subcategory="Registration",
            labels={"dataset": "{dataset}", "figure": "checkerboard and overlay"},
        ),
    log:
        "results/logs/register/{dataset}.log",
    benchmark:
        "results/benchmarks/register/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        lr=sheet_value("lr"),
        hr=sheet_value("hr"),
        lr_voxel_nm=sheet_value("lr_voxel_nm"),
        hr_voxel_nm=sheet_value("hr_voxel_nm"),
        register=config["register"],
        io=config["io"],
    script:
        "../../scripts/register.py"


rule resize:
    """Resize the registered LR and the HR to an integer resolution ratio τ (bicubic)."""
    input:
        lr="results/{dataset}/prepare/registered_lr.ome.zarr",
        hr=get_volume("hr"),
    output:
        lr=directory("results/{dataset}/prepare/lr.ome.zarr"),
        hr=directory("results/{dataset}/prepare/hr.ome.zarr"),
        pair="results/{dataset}/prepare/pair.json",
    log:
        "results/logs/resize/{dataset}.log",
    benchmark:
        "results/benchmarks/resize/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        hr=sheet_value("hr"),
        hr_voxel_nm=sheet_value("hr_voxel_nm"),
        ratio=config["resize"]["ratio"],
        io=config["io"],
    script:
        "../../scripts/resize.py"


rule denoise:
    """Denoised HR reference, with the noise level before and after per section."""
    input:
        hr="results/{dataset}/prepare/hr.ome.zarr",
    output:
        hr=directory("results/{dataset}/prepare/hr_denoised.ome.zarr"),
        sigma="results/{dataset}/prepare/denoise_sigma.tsv",
    log:
        "results/logs/denoise/{dataset}.log",
    benchmark:
        "results/benchmarks/denoise/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        denoise=config["denoise"],
        io=config["io"],
    script:
        "../../scripts/denoise.py"


rule degrade:
    """Synthetic LR from the HR: Synthetic (I) bicubic or (II) blur, noise, bicubic, noise."""
    input:
        hr="results/{dataset}/prepare/hr.ome.zarr",
        pair="results/{dataset}/prepare/pair.json",
    output:
        lr=directory("results/{dataset}/prepare/lr_{synthetic}.ome.zarr"),
        params="results/{dataset}/prepare/lr_{synthetic}_params.tsv",
    log:
        "results/logs/degrade/{dataset}_{synthetic}.log",
    benchmark:
        "results/benchmarks/degrade/{dataset}_{synthetic}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        seed=lambda wildcards: dataset_seed(
            config["degrade"]["seed"], wildcards.dataset
        ),
        synthetic2=config["degrade"]["synthetic2"],
        io=config["io"],
    script:
        "../../scripts/degrade.py"
