# Large-factor (8×, 16×) super-resolution with generative priors: the GPEMSR paper's
# three-stage method (Shou et al., CVPR 2024), its baselines, Tables 1 and 5. Off unless
# config `largefactor: factors` lists factors; helpers in common.smk ("Large-factor
# super-resolution (GPEMSR)").


wildcard_constraints:
    factor="|".join(map(str, GP_FACTORS)) or "^$",
    gp_variant="|".join(GP_VARIANTS),
    gp_method="|".join(GP_METHODS),
    gp_arch="|".join(GP_ARCHS) or "^$",


rule gp_degrade:
    """The LR of a large factor made from the prepared HR: the HR cropped (top left) to a
    multiple of the factor, downsampled by anti-aliased bicubic interpolation."""
    input:
        hr="results/{dataset}/prepare/hr.ome.zarr",
    output:
        lr=directory("results/{dataset}/largefactor/x{factor}/lr.ome.zarr"),
        hr=directory("results/{dataset}/largefactor/x{factor}/hr.ome.zarr"),
        pair="results/{dataset}/largefactor/x{factor}/pair.json",
    log:
        "results/logs/gp_degrade/{dataset}/x{factor}.log",
    benchmark:
        "results/benchmarks/gp_degrade/{dataset}/x{factor}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        io=config["io"],
    script:
        "../../scripts/gp_degrade.py"


rule gp_labels:
    """A dataset's ground-truth labels on the cropped HR grid of a large factor."""
    input:
        hr="results/{dataset}/prepare/hr.ome.zarr",
        labels=get_labels,
    output:
        labels=directory("results/{dataset}/largefactor/x{factor}/labels.ome.zarr"),
    log:
        "results/logs/gp_labels/{dataset}/x{factor}.log",
    benchmark:
        "results/benchmarks/gp_labels/{dataset}/x{factor}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        labels=sheet_value("labels"),
        io=config["io"],
    script:
        "../../scripts/gp_degrade.py"


rule gp_codebook:
    """GPEMSR Stage I (VQGAN codebook) on the HR of every animal but the fold's."""
    input:
        hr=gp_training_hr,
    output:
        model=protected("results/models/largefactor/{fold}/codebook/model.pt"),
        curve="results/models/largefactor/{fold}/codebook/curve.csv",
    log:
        "results/logs/gp_codebook/{fold}.log",
    benchmark:
        "results/benchmarks/gp_codebook/{fold}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: LARGEFACTOR.get("threads", 1)
    resources:
        mem_mb=16000,
        runtime=48 * 60,
        gpu=LARGEFACTOR.get("gpus", 0),
    params:
        stage="stage1",
        settings=gp_stage("codebook", "settings"),
        network=gp_stage("codebook", "network"),
        gpus=LARGEFACTOR.get("gpus", 0),
        # Not an output: it must survive a killed job so that the rerun resumes from it.
        checkpoint="results/models/largefactor/{fold}/codebook/checkpoint.pt",
    script:
        "../../scripts/gp_train.py"


rule gp_indexer:
    """GPEMSR Stage II (latent vector indexer) per fold and factor, Stage I frozen."""
    input:
        lr=gp_training_pairs("lr"),
        hr=gp_training_pairs("hr"),
        previous="results/models/largefactor/{fold}/codebook/model.pt",
    output:
        model=protected("results/models/largefactor/{fold}/x{factor}/indexer/model.pt"),
        curve="results/models/largefactor/{fold}/x{factor}/indexer/curve.csv",
    log:
        "results/logs/gp_indexer/{fold}/x{factor}.log",
    benchmark:
        "results/benchmarks/gp_indexer/{fold}/x{factor}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: LARGEFACTOR.get("threads", 1)
    resources:
        mem_mb=16000,
        runtime=48 * 60,
        gpu=LARGEFACTOR.get("gpus", 0),
    params:
        stage="stage2",
        settings=gp_stage("indexer", "settings"),
        network=gp_stage("indexer", "network"),
        gpus=LARGEFACTOR.get("gpus", 0),
        checkpoint="results/models/largefactor/{fold}/x{factor}/indexer/checkpoint.pt",
    script:
        "../../scripts/gp_train.py"


rule gp_reconstruction:
    """GPEMSR Stage III (MPF, POD, 3DA on 5 sections) per fold, factor and variant, the
    Stage II prior frozen (variants without MPF have none)."""
    input:
        lr=gp_training_pairs("lr"),
        hr=gp_training_pairs("hr"),
        previous=gp_prior,
        # local VGG19 / SPyNet weights where config `largefactor: pretrained:` names them
        pretrained=[
            GP_PRETRAINED[name]
            for name in ("vgg19", "spynet")
            if GP_PRETRAINED.get(name)
        ],
    output:
        model=protected(
            "results/models/largefactor/{fold}/x{factor}/gpemsr_{gp_variant}/model.pt"
        ),
        curve="results/models/largefactor/{fold}/x{factor}/gpemsr_{gp_variant}/curve.csv",
    log:
        "results/logs/gp_reconstruction/{fold}/x{factor}/{gp_variant}.log",
    benchmark:
        "results/benchmarks/gp_reconstruction/{fold}/x{factor}/{gp_variant}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: LARGEFACTOR.get("threads", 1)
    resources:
        mem_mb=16000,
        runtime=48 * 60,
        gpu=LARGEFACTOR.get("gpus", 0),
    params:
        stage="stage3",
        settings=gp_stage("reconstruction", "settings"),
        network=gp_stage("reconstruction", "network"),
        gpus=LARGEFACTOR.get("gpus", 0),
        checkpoint=(
            "results/models/largefactor/{fold}/x{factor}/gpemsr_{gp_variant}/checkpoint.pt"
        ),
    script:
        "../../scripts/gp_train.py"


rule gp_train_baseline:
    """A single-image baseline (EMSRNet, SwinIR-style) trained at a large factor on the
    fold's (LR, HR) pairs with the study's loop (real pairs)."""
    input:
        lr=gp_training_pairs("lr"),
        hr=gp_training_pairs("hr"),
    output:
        model=protected(
            "results/models/largefactor/{fold}/x{factor}/{gp_arch}_real_{loss}/model.pt"
        ),
        curve="results/models/largefactor/{fold}/x{factor}/{gp_arch}_real_{loss}/curve.csv",
    log:
        "results/logs/gp_train_baseline/{fold}/x{factor}/{gp_arch}_real_{loss}.log",
    benchmark:
        "results/benchmarks/gp_train_baseline/{fold}/x{factor}/{gp_arch}_real_{loss}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: LARGEFACTOR.get("threads", 1)
    resources:
        mem_mb=8000,
        runtime=24 * 60,
        gpu=min(LARGEFACTOR.get("gpus", 0), 1),
    params:
        spec=lambda wildcards: GP_ARCHS[wildcards.gp_arch],
        settings=lambda wildcards: LARGEFACTOR["baselines"]["settings"],
        checkpoint=(
            "results/models/largefactor/{fold}/x{factor}/{gp_arch}_real_{loss}/checkpoint.pt"
        ),
    script:
        "../../scripts/train.py"


rule gp_infer:
    """Super-resolve a held-out dataset's LR at a large factor with a method of its fold:
    GPEMSR section by section from 5 adjacent sections, the baselines slice by slice;
    the rule also times it and counts the trained parameters."""
    input:
        lr="results/{dataset}/largefactor/x{factor}/lr.ome.zarr",
        model=gp_method_model,
    output:
        sr=directory("results/{dataset}/largefactor/x{factor}/sr/{gp_method}.ome.zarr"),
        cost="results/{dataset}/largefactor/x{factor}/sr/{gp_method}.json",
    log:
        "results/logs/gp_infer/{dataset}/x{factor}/{gp_method}.log",
    benchmark:
        "results/benchmarks/gp_infer/{dataset}/x{factor}/{gp_method}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["gpu"]
    threads: LARGEFACTOR.get("threads", 1)
    resources:
        mem_mb=8000,
        gpu=lambda wildcards: (
            0
            if wildcards.gp_method == "bicubic"
            else min(LARGEFACTOR.get("gpus", 0), 1)
        ),
    params:
        spec=gp_method_spec,
        infer=LARGEFACTOR.get("infer"),
        io=config["io"],
    script:
        "../../scripts/gp_infer.py"


rule gp_evaluate:
    """Per-slice PSNR, SSIM and FRC against the cropped HR, VOI and ARAND of the fixed
    segmentation pipeline's result where the dataset has labels, LPIPS and DISTS where
    their local weights are configured."""
    input:
        sr="results/{dataset}/largefactor/x{factor}/sr/{gp_method}.ome.zarr",
        hr="results/{dataset}/largefactor/x{factor}/hr.ome.zarr",
        labels=gp_labels,
        # The study's fixed segmentation pipeline of the dataset's fold (rule segmenter).
        segmenter=get_segmenter("model.pt"),
        calibration=get_segmenter("calibration.json"),
        # local LPIPS / DISTS weights where config `largefactor: pretrained:` names them
        perceptual=[
            spec[key]
            for spec in GP_PERCEPTUAL.values()
            for key in ("backbone", "calibration")
        ],
    output:
        slices="results/{dataset}/largefactor/x{factor}/evaluate/{gp_method}.tsv",
    log:
        "results/logs/gp_evaluate/{dataset}/x{factor}/{gp_method}.log",
    benchmark:
        "results/benchmarks/gp_evaluate/{dataset}/x{factor}/{gp_method}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=2000,
    params:
        meta=gp_method_metadata,
        # The labels already on the cropped HR grid (rule gp_labels).
        labels=lambda wildcards, input: input.labels or "",
        perceptual=GP_PERCEPTUAL,
        segmentation=config.get("segmentation"),
        io=config["io"],
    script:
        "../../scripts/evaluate.py"


rule gp_collect:
    """One slice-level table of every method and dataset at a factor, and its summary."""
    input:
        expand(
            "results/{dataset}/largefactor/x{{factor}}/evaluate/{gp_method}.tsv",
            dataset=PAIRED,
            gp_method=GP_METHODS,
        ),
    output:
        parquet="results/tables/largefactor_x{factor}_slices.parquet",
        csv="results/tables/largefactor_x{factor}_slices.csv",
        summary="results/tables/largefactor_x{factor}_summary.tsv",
    log:
        "results/logs/gp_collect/x{factor}.log",
    benchmark:
        "results/benchmarks/gp_collect/x{factor}.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    script:
        "../../scripts/collect.py"


rule gp_table1:
    """The GPEMSR paper's Table 1: methods × (metrics, parameters, seconds per slice) per
    factor."""
    input:
        summaries=expand(
            "results/tables/largefactor_x{factor}_summary.tsv", factor=GP_FACTORS
        ),
        costs=expand(
            "results/{dataset}/largefactor/x{factor}/sr/{gp_method}.json",
            dataset=PAIRED,
            factor=GP_FACTORS,
            gp_method=GP_TABLE1,
        ),
    output:
        tables=multiext("results/tables/largefactor_table1", ".md", ".tex"),
        html=report(
            "results/tables/largefactor_table1.html",
            caption="../report/largefactor_table1.rst",
            category="Results",
            subcategory="Large factors (GPEMSR)",
            labels={"table": "Table 1: methods × metrics per factor"},
        ),
    log:
        "results/logs/gp_table1.log",
    benchmark:
        "results/benchmarks/gp_table1.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    params:
        factors=GP_FACTORS,
        methods={m: GP_LABELS[m] for m in GP_TABLE1},
        metrics=GP_METRICS,
        perceptual=["lpips", "dists"],
        cost_columns=True,
        title=(
            f"Table 1 (GPEMSR layout): methods at {', '.join(f'{f}×' for f in GP_FACTORS)}, "
            "mean ± std; LPIPS and DISTS only from local ImageNet weights"
        ),
    script:
        "../../scripts/gp_table.py"


rule gp_table5:
    """The GPEMSR paper's Table 5: Stage III variants (MPF, POD, 3DA ablated) × metrics
    per factor."""
    input:
        summaries=expand(
            "results/tables/largefactor_x{factor}_summary.tsv", factor=GP_FACTORS
        ),
        costs=expand(
            "results/{dataset}/largefactor/x{factor}/sr/{gp_method}.json",
            dataset=PAIRED,
            factor=GP_FACTORS,
            gp_method=GP_TABLE5,
        ),
    output:
        tables=multiext("results/tables/largefactor_table5", ".md", ".tex"),
        html=report(
            "results/tables/largefactor_table5.html",
            caption="../report/largefactor_table5.rst",
            category="Results",
            subcategory="Large factors (GPEMSR)",
            labels={"table": "Table 5: ablation of MPF, POD and 3DA"},
        ),
    log:
        "results/logs/gp_table5.log",
    benchmark:
        "results/benchmarks/gp_table5.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    params:
        factors=GP_FACTORS,
        methods={m: GP_LABELS[m] for m in GP_TABLE5},
        metrics=GP_METRICS,
        perceptual=["lpips"],
        cost_columns=False,
        title=(
            f"Table 5 (GPEMSR layout): Stage III variants at "
            f"{', '.join(f'{f}×' for f in GP_FACTORS)}, mean ± std; LPIPS only from local "
            "ImageNet weights"
        ),
    script:
        "../../scripts/gp_table.py"
