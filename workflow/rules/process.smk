# Production processing of new acquisitions with trained model packages (config
# `process:`): every volume is split along z into slabs, one job each, writing one
# OME-Zarr output that a final step checks and publishes; then reference-free QC.


checkpoint process_plan:
    """Check a model package against an acquisition (architecture, checksums, voxel size,
    intensities), plan the slab jobs and create the shared output, marked incomplete."""
    input:
        package=process_package,
        source=process_source_input,
    output:
        plan="results/process/{acquisition}/{product}.plan.json",
        store=directory("results/process/{acquisition}/{product}.ome.zarr"),
    log:
        "results/logs/process_plan/{acquisition}/{product}.log",
    benchmark:
        "results/benchmarks/process_plan/{acquisition}/{product}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        source=process_source,
        voxel=process_voxel,
        process=config.get("process"),
    script:
        "../../scripts/process.py"


rule process_slab:
    """Compute one slab of a product and write its region of the shared output."""
    input:
        plan="results/process/{acquisition}/{product}.plan.json",
        package=process_package,
        source=process_source_input,
    output:
        done="results/process/{acquisition}/slabs/{product}/{slab}.json",
    log:
        "results/logs/process_slab/{acquisition}/{product}/{slab}.log",
    benchmark:
        "results/benchmarks/process_slab/{acquisition}/{product}/{slab}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config.get("process", {}).get("threads", 1)
    resources:
        mem_mb=config.get("process", {}).get("mem_mb", 4000),
        gpu=config.get("process", {}).get("gpus", 0),
    params:
        process=config.get("process"),
    script:
        "../../scripts/process.py"


rule process_finalize:
    """Check that every slab of a product was written, then publish the OME-Zarr."""
    input:
        plan="results/process/{acquisition}/{product}.plan.json",
        slabs=process_slabs,
    output:
        summary="results/process/{acquisition}/{product}.json",
    log:
        "results/logs/process_finalize/{acquisition}/{product}.log",
    benchmark:
        "results/benchmarks/process_finalize/{acquisition}/{product}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=1000,
    script:
        "../../scripts/process.py"


rule process_qc:
    """Reference-free QC of a product: single-image FRC resolution of input and output,
    histograms, xy/xz panels and flags for outputs that look wrong."""
    input:
        summary="results/process/{acquisition}/{product}.json",
        plan="results/process/{acquisition}/{product}.plan.json",
        source=process_source_input,
    output:
        table="results/process/{acquisition}/qc/{product}.tsv",
        summary="results/process/{acquisition}/qc/{product}.json",
        panels=report(
            "results/process/{acquisition}/qc/{product}_panels.png",
            caption="../report/process_panels.rst",
            category="Processing QC",
            subcategory="{acquisition}",
            labels={
                "acquisition": "{acquisition}",
                "product": "{product}",
                "figure": "panels",
            },
        ),
        histogram=report(
            "results/process/{acquisition}/qc/{product}_histogram.png",
            caption="../report/process_histogram.rst",
            category="Processing QC",
            subcategory="{acquisition}",
            labels={
                "acquisition": "{acquisition}",
                "product": "{product}",
                "figure": "histogram",
            },
        ),
    log:
        "results/logs/process_qc/{acquisition}/{product}.log",
    benchmark:
        "results/benchmarks/process_qc/{acquisition}/{product}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        source=process_source,
        output=lambda wildcards: (
            f"results/process/{wildcards.acquisition}/{wildcards.product}.ome.zarr"
        ),
        qc=config.get("process", {}).get("qc", {}),
        meta=lambda wildcards: {
            "acquisition": wildcards.acquisition,
            "product": wildcards.product,
        },
    script:
        "../../scripts/qc.py"


rule process_qc_overview:
    """One table of every processed volume: resolutions, warnings and QC flags."""
    input:
        qc=lambda wildcards: [
            f"results/process/{a}/qc/{p}.json"
            for a, products in PRODUCTS.items()
            for p in products
        ],
        plans=lambda wildcards: [
            f"results/process/{a}/{p}.plan.json"
            for a, products in PRODUCTS.items()
            for p in products
        ],
    output:
        table="results/process/qc.tsv",
        html=report(
            "results/process/qc.html",
            caption="../report/process_overview.rst",
            category="Processing QC",
            labels={"table": "overview"},
        ),
    log:
        "results/logs/process_qc_overview.log",
    benchmark:
        "results/benchmarks/process_qc_overview.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=1000,
    script:
        "../../scripts/process_overview.py"
