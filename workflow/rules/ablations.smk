# Ablation studies of the EMSR paper (Sec. III.G), switched on in config `ablations:`.
# Models of the noisy-reference, λ and hyper-parameter studies are trained, inferred and
# evaluated by the rules train, infer and evaluate (common.smk names them); these rules
# add the noise, run the models on noisier LR inputs and summarise each study.
rule add_noise:
    """A volume with zero-mean Gaussian noise σ (0–255 scale) added: noisier LR inputs
    (Fig. 13) or noisy HR references made from the denoised HR (Fig. 14)."""
    input:
        volume="results/{dataset}/prepare/{volume}.ome.zarr",
    output:
        volume=temp(
            directory("results/{dataset}/prepare/{volume}_noise{sigma}.ome.zarr")
        ),
    log:
        "results/logs/add_noise/{dataset}/{volume}_noise{sigma}.log",
    benchmark:
        "results/benchmarks/add_noise/{dataset}/{volume}_noise{sigma}.tsv"
    wildcard_constraints:
        volume="lr|hr_denoised",
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        sigma=lambda wildcards: level_value(wildcards.sigma),
        seed=lambda wildcards: dataset_seed(
            config["degrade"]["seed"],
            f"{wildcards.dataset}/{wildcards.volume}_noise{wildcards.sigma}",
        ),
        io=config["io"],
    script:
        "../../scripts/add_noise.py"


rule ablation_infer:
    """Super-resolve a held-out dataset's LR with noise σ added, by a method of the study."""
    input:
        lr="results/{dataset}/prepare/lr_noise{sigma}.ome.zarr",
        pair="results/{dataset}/prepare/pair.json",
        model=get_method_model,
    output:
        sr=temp(directory("results/{dataset}/sr_lrnoise{sigma}/{method}.ome.zarr")),
    log:
        "results/logs/ablation_infer/{dataset}/{method}_lrnoise{sigma}.log",
    benchmark:
        "results/benchmarks/ablation_infer/{dataset}/{method}_lrnoise{sigma}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: config["infer"]["threads"]
    resources:
        mem_mb=4000,
        gpu=config["infer"]["gpus"],
    params:
        spec=method_spec,
        infer=config["infer"],
        io=config["io"],
    script:
        "../../scripts/infer.py"


rule ablation_evaluate:
    """Per-slice metrics of a method's output from the noisier LR against the acquired HR."""
    input:
        sr="results/{dataset}/sr_lrnoise{sigma}/{method}.ome.zarr",
        hr="results/{dataset}/prepare/hr.ome.zarr",
        labels=get_labels,
        segmenter=get_segmenter("model.pt"),
        calibration=get_segmenter("calibration.json"),
    output:
        slices="results/{dataset}/evaluate_lrnoise{sigma}/{method}.tsv",
    log:
        "results/logs/ablation_evaluate/{dataset}/{method}_lrnoise{sigma}.log",
    benchmark:
        "results/benchmarks/ablation_evaluate/{dataset}/{method}_lrnoise{sigma}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        meta=lambda wildcards: {
            **method_metadata(wildcards),
            "lr_noise": level_value(wildcards.sigma),
        },
        labels=sheet_value("labels"),
        segmentation=config.get("segmentation"),
        io=config["io"],
    script:
        "../../scripts/evaluate.py"


rule ablation:
    """One ablation study: its variants' metrics on the held-out datasets of the ablation
    folds as a table (metrics × variants, Tables V and VI) and a plot (Figs. 13, 14)."""
    input:
        lambda wildcards: [
            path for v in ablation_variants(wildcards) for path in v["files"]
        ],
    output:
        slices="results/ablations/{study}/slices.parquet",
        summary="results/ablations/{study}/summary.tsv",
        tables=multiext("results/tables/ablation_{study}", ".md", ".tex"),
        html=report(
            "results/tables/ablation_{study}.html",
            caption="../report/ablation_table.rst",
            category="Results",
            subcategory="Ablations",
            labels={"study": "{study}"},
        ),
        png=report(
            "results/figures/ablation_{study}.png",
            caption="../report/ablation_figure.rst",
            category="Figures",
            subcategory="Ablations",
            labels={"study": "{study}"},
        ),
    log:
        "results/logs/ablation/{study}.log",
    benchmark:
        "results/benchmarks/ablation/{study}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        variants=ablation_variants,
        metrics=METRICS,
        plot_metrics=["psnr", "ssim", "frc"],
        numeric=lambda wildcards: wildcards.study in ("noise", "noisy_references"),
        xlabel=lambda wildcards: ABLATION_AXES[wildcards.study],
        title=ablation_title,
        dpi=120,
    script:
        "../../scripts/ablation.py"
