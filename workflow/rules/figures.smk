# Figures of the study for the report: baselines first, then the trained models.
TRAINED_MODELS = [m for m in METHODS if m not in BASELINES]
FIGURE_METHODS = [*BASELINES, *TRAINED_MODELS]


rule figure_frc:
    """FRC curves of every method against the acquired HR, averaged over the sections."""
    input:
        sr=expand("results/{{dataset}}/sr/{method}.ome.zarr", method=FIGURE_METHODS),
        hr="results/{dataset}/prepare/hr.ome.zarr",
    output:
        tsv="results/figures/{dataset}/frc_curves.tsv",
        png=report(
            "results/figures/{dataset}/frc_curves.png",
            caption="../report/figure_frc.rst",
            category="Figures",
            subcategory="FRC curves",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "results/logs/figure_frc/{dataset}.log",
    benchmark:
        "results/benchmarks/figure_frc/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        io=config["io"],
        dpi=120,
    script:
        "../../scripts/figure.py"


rule figure_panel:
    """Middle section of every method and the HR with a zoomed crop; xz and yz sections."""
    input:
        sr=expand("results/{{dataset}}/sr/{method}.ome.zarr", method=FIGURE_METHODS),
        hr="results/{dataset}/prepare/hr.ome.zarr",
    output:
        panel=report(
            "results/figures/{dataset}/comparison.png",
            caption="../report/figure_panel.rst",
            category="Figures",
            subcategory="Visual comparison",
            labels={"dataset": "{dataset}", "view": "middle section, zoomed"},
        ),
        xz=report(
            "results/figures/{dataset}/orthogonal_sections.png",
            caption="../report/figure_sections.rst",
            category="Figures",
            subcategory="Visual comparison",
            labels={"dataset": "{dataset}", "view": "xz and yz sections"},
        ),
    log:
        "results/logs/figure_panel/{dataset}.log",
    benchmark:
        "results/benchmarks/figure_panel/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        io=config["io"],
        dpi=120,
    script:
        "../../scripts/figure.py"


rule figure_boxplot:
    """Box plots of one per-slice metric, per dataset and method."""
    input:
        slices="results/tables/slices.parquet",
    output:
        png=report(
            "results/figures/boxplot_{metric}.png",
            caption="../report/figure_boxplot.rst",
            category="Figures",
            subcategory="Box plots",
            labels={"metric": "{metric}"},
        ),
    log:
        "results/logs/figure_boxplot/{metric}.log",
    benchmark:
        "results/benchmarks/figure_boxplot/{metric}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=1000,
    params:
        datasets=PAIRED,
        methods=FIGURE_METHODS,
        higher_is_better=lambda wildcards: METRICS[wildcards.metric][0],
        dpi=120,
    script:
        "../../scripts/figure.py"


rule figure_training:
    """Training loss and learning rate of every model of one fold."""
    input:
        curves=expand("results/models/{{fold}}/{model}/curve.csv", model=TRAINED_MODELS),
    output:
        png=report(
            "results/figures/training_{fold}.png",
            caption="../report/figure_training.rst",
            category="Figures",
            subcategory="Training curves",
            labels={"fold": "{fold}"},
        ),
    log:
        "results/logs/figure_training/{fold}.log",
    benchmark:
        "results/benchmarks/figure_training/{fold}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=1000,
    params:
        dpi=120,
    script:
        "../../scripts/figure.py"


rule figure_isotropic:
    """xz and yz sections of the anisotropic stack, its reconstructions and reference."""
    input:
        anisotropic="results/{dataset}/isotropic/anisotropic.ome.zarr",
        volumes=expand(
            "results/{{dataset}}/isotropic/{iso_method}.ome.zarr",
            iso_method=ISO_METHODS,
        ),
        reference=lambda wildcards: (
            f"results/{wildcards.dataset}/isotropic/reference.ome.zarr"
            if wildcards.dataset in ISO_REFERENCED
            else []
        ),
        curve="results/models/isotropic/{dataset}/curve.csv",
    output:
        png=report(
            "results/figures/{dataset}/isotropic_sections.png",
            caption="../report/figure_isotropic.rst",
            category="Figures",
            subcategory="Isotropic reconstruction",
            labels={"dataset": "{dataset}", "view": "xz and yz sections"},
        ),
        training=report(
            "results/figures/{dataset}/isotropic_training.png",
            caption="../report/figure_isotropic_training.rst",
            category="Figures",
            subcategory="Training curves",
            labels={"fold": "isotropic, {dataset}"},
        ),
    log:
        "results/logs/figure_isotropic/{dataset}.log",
    benchmark:
        "results/benchmarks/figure_isotropic/{dataset}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        dpi=120,
    script:
        "../../scripts/figure.py"
