"""Snakemake runs the workflow for real on phantom data, in a temporary directory."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from emsrflow import io
from emsrflow.transform import Similarity

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DATASETS = ["brain1_ipsi", "brain2_contra", "brain3_ipsi"]
TINY_TRAIN = {
    "strategies": ["real", "denoised", "synthetic1", "synthetic2"],
    "losses": ["l1"],
    "archs": {
        "emsrnet": {"type": "emsrnet", "channels": 8, "blocks": 1, "res_blocks": 1, "heads": 2},
        "bicubic": {"type": "bicubic"},
    },
    "settings": {
        "steps": 20,
        "batch": 2,
        "patch": 16,
        "checkpoint_every": 10,
        "log_every": 5,
        "deterministic": True,
        "seed": 0,
    },
    "gpus": 0,
    "threads": 1,
}
TINY_INFER = {
    "tile": 32,
    "overlap": 8,
    "batch": 4,
    "tta": False,
    "precision": "bf16",
    "device": "auto",
    "gpus": 0,
    "threads": 1,
    "enhance": True,
}
TINY_ISO = {
    "simulate_rho": 3.0,
    "arch": {"type": "uformer", "channels": 8, "levels": 1, "depths": 1, "heads": 2, "window": 4},
    "settings": {
        "steps": 10,
        "batch": 2,
        "patch": 24,
        "checkpoint_every": 5,
        "log_every": 5,
        "deterministic": True,
    },
    "passes": ["xz", "yz"],
    "slab": 16,
    "halo": 8,
    "gpus": 0,
    "threads": 1,
}
# The fixed segmentation pipeline of VOI/ARAND, as small as can be.
TINY_SEGMENTATION = {
    "net": {"channels": 4, "levels": 1},
    "settings": {
        "steps": 20,
        "batch": 1,
        "patch": [2, 32, 32],
        "log_every": 5,
        "seed": 0,
        "deterministic": True,
    },
    "thresholds": [0.3, 0.5],
    "tile": [16, 128, 128],
    "overlap": [2, 16, 16],
    "threads": 1,
}
# The validation protocol: a dataset given only as an isotropic volume.
SIMULATED = "brain3_ipsi"
# Ablations off (the demo's cheap noise study holds out brain3, absent from some tests).
NO_ABLATIONS = {
    "folds": [],
    "base": {"arch": "emsrnet", "strategy": "denoised", "loss": "l1"},
    "noise": {"sigma": [], "methods": []},
    "noisy_references": {"sigma": []},
    "lambdas": [],
    "hyperparameters": {},
}
# Every ablation study, as small as can be: on brain3_ipsi, three extra trainings (a noisy
# reference, λ = (1, 0, 0) and window 2; λ = (1, 1, 1) is the base model itself).
TINY_ABLATIONS = {
    **NO_ABLATIONS,
    "folds": ["brain3"],
    "noise": {"sigma": [8], "methods": ["bicubic"]},
    "noisy_references": {"sigma": [50]},
    "lambdas": [[1, 1, 1], [1, 0, 0]],
    "hyperparameters": {"window": [2]},
}


def snakemake(workdir, *args, config=None):
    """Run Snakemake on the workflow in ``workdir``; its output (stderr too) is ``stdout``."""
    command = [SNAKEMAKE, "--snakefile", str(ROOT / "workflow" / "Snakefile")]
    command += ["--directory", str(workdir), "--cores", "2", *args]
    if config is not None:
        command += ["--configfile", str(config)]
    return subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )


def make_study(workdir, datasets=DATASETS, **overrides):
    """Write a config and sample sheet for some demo datasets into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    sheet = pd.read_csv(ROOT / "config" / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    simulated = sheet.dataset == SIMULATED
    sheet.loc[simulated, "isotropic"] = f"resources/phantom/{SIMULATED}/anisotropic_clean.ome.zarr"
    sheet[sheet.dataset.isin(datasets)].to_csv(workdir / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["samples"] = "samples.tsv"
    config.update(
        {
            "train": TINY_TRAIN,
            "infer": TINY_INFER,
            "isotropic": TINY_ISO,
            "ablations": NO_ABLATIONS,
            "segmentation": TINY_SEGMENTATION,
            **overrides,
        }
    )
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir / "config.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    result = snakemake(workdir, config=make_study(workdir, ablations=TINY_ABLATIONS))
    assert result.returncode == 0, result.stdout[-5000:]
    return workdir


def test_dry_run_lists_every_rule(tmp_path):
    config = make_study(tmp_path, ablations=TINY_ABLATIONS)
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 0, result.stdout
    for rule in (
        "phantom",
        "register",
        "resize",
        "denoise",
        "degrade",
        "train",
        "infer",
        "infer_baseline",
        "table4",
        "add_noise",
        "ablation_infer",
        "ablation_evaluate",
        "ablation",
        "all",
    ):
        assert f"rule {rule}:" in result.stdout, rule


@pytest.mark.parametrize(
    ("ablations", "message"),
    [
        (
            {"noise": {"sigma": [4], "methods": ["edsr_real_l1"]}},
            "ablations: noise: methods ['edsr_real_l1'] are not methods of the study",
        ),
        ({"lambdas": [[1, 0, 0]], "folds": ["brain7"]}, "ablations: folds ['brain7']"),
        (
            {"lambdas": [[1, 0, 0]], "base": {"arch": "bicubic", "strategy": "real", "loss": "l1"}},
            "ablations: base: arch 'bicubic' is not a trained network",
        ),
    ],
)
def test_bad_ablation_config_is_named(tmp_path, ablations, message):
    config = make_study(tmp_path, ablations={**NO_ABLATIONS, **ablations})
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert message in result.stdout


def test_registration_recovers_the_phantom_transform(study):
    for dataset in DATASETS:
        truth = json.loads((study / f"resources/phantom/{dataset}/truth.json").read_text())
        found = json.loads((study / f"results/{dataset}/prepare/registration.json").read_text())
        expected = Similarity.from_dict(truth["hr_to_lr"])
        estimate = Similarity.from_dict(found["transform"])
        with io.open_volume(study / f"resources/phantom/{dataset}/hr.tif") as hr:
            assert estimate.max_displacement(expected, hr.shape[1:]) < 0.5
        assert found["score"] > 0.5
        residuals = pd.read_csv(
            study / f"results/{dataset}/prepare/registration_residuals.tsv", sep="\t"
        )
        assert residuals.shift_norm.max() < 0.5


def test_pairs_have_integer_ratio_and_voxel_sizes(study):
    prepare = study / "results/brain1_ipsi/prepare"
    pair = json.loads((prepare / "pair.json").read_text())
    assert pair["tau"] == 3
    lr, lr_nm = io.read_volume(prepare / "lr.ome.zarr")
    hr, hr_nm = io.read_volume(prepare / "hr.ome.zarr")
    assert lr.dtype == hr.dtype == np.float32
    assert hr.shape == (lr.shape[0], 3 * lr.shape[1], 3 * lr.shape[2])
    np.testing.assert_allclose(np.array(lr_nm[1:]), 3 * np.array(hr_nm[1:]), rtol=1e-6)
    assert 14 < hr_nm[2] < 16
    for kind in ("synthetic1", "synthetic2"):
        synthetic, synthetic_nm = io.read_volume(prepare / f"lr_{kind}.ome.zarr")
        assert synthetic.shape == lr.shape
        np.testing.assert_allclose(synthetic_nm, lr_nm, rtol=1e-6)
    # the registered LR resembles the HR averaged to its grid
    down = hr.reshape(hr.shape[0], lr.shape[1], 3, lr.shape[2], 3).mean(axis=(2, 4))
    assert np.corrcoef(down.ravel(), lr.ravel())[0, 1] > 0.6


def test_denoising_and_synthetic_parameters(study):
    prepare = study / "results/brain2_contra/prepare"
    sigma = pd.read_csv(prepare / "denoise_sigma.tsv", sep="\t")
    assert (sigma.sigma_after < sigma.sigma_before).all()
    params = pd.read_csv(prepare / "lr_synthetic2_params.tsv", sep="\t")
    assert params.blur_sigma.between(0, 3).all() and params.noise_hr.between(20, 40).all()
    assert params.noise_lr.between(5, 15).all()


def test_outputs_are_complete_and_no_temporaries_remain(study):
    assert not list(study.rglob("*.tmp-*"))
    assert not (study / "results/brain1_ipsi/prepare/registered_lr.ome.zarr").exists()  # temp()
    for dataset in DATASETS:
        assert (study / f"results/{dataset}/prepare/registration_qc.png").stat().st_size > 10_000
        assert (study / f"results/logs/register/{dataset}.log").exists()
        assert (study / f"results/benchmarks/register/{dataset}.tsv").exists()


def test_unknown_config_key_is_rejected(tmp_path):
    config = make_study(tmp_path, denoise={"method": "nlm", "strength": 1.0, "sigma": 3})
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert "'sigma' was unexpected" in result.stdout


def test_bad_sheet_row_names_row_and_column(tmp_path):
    config = make_study(tmp_path)
    sheet = pd.read_csv(tmp_path / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    sheet.loc[1, "hr_voxel_nm"] = "50,15"
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert "row 1" in result.stdout and "hr_voxel_nm" in result.stdout


def test_corrupt_input_fails_clearly_and_leaves_no_output(tmp_path):
    config = make_study(tmp_path, datasets=["brain1_ipsi"])
    phantom = tmp_path / "resources/phantom/brain1_ipsi"
    result = snakemake(tmp_path, "resources/phantom/brain1_ipsi/truth.json", config=config)
    assert result.returncode == 0, result.stdout[-3000:]
    (phantom / "lr.tif").write_bytes(b"II*\x00 this is not a TIFF file" * 10)
    target = "results/brain1_ipsi/prepare/registration.json"
    result = snakemake(tmp_path, target, config=config)
    assert result.returncode != 0
    assert "lr.tif" in result.stdout
    assert not (tmp_path / "results/brain1_ipsi/prepare").exists() or not any(
        (tmp_path / "results/brain1_ipsi/prepare").iterdir()
    )


def test_lr_of_other_tissue_fails_registration_with_its_score(tmp_path):
    config = make_study(tmp_path, datasets=["brain1_ipsi", "brain2_ipsi"])
    for dataset in ("brain1_ipsi", "brain2_ipsi"):
        result = snakemake(tmp_path, f"resources/phantom/{dataset}/truth.json", config=config)
        assert result.returncode == 0, result.stdout[-3000:]
    shutil.copy(
        tmp_path / "resources/phantom/brain2_ipsi/lr.tif",
        tmp_path / "resources/phantom/brain1_ipsi/lr.tif",
    )
    result = snakemake(tmp_path, "results/brain1_ipsi/prepare/registration.json", config=config)
    assert result.returncode != 0
    assert "does not cover the HR field of view" in result.stdout
    assert "normalised cross-correlation" in result.stdout
    assert not (tmp_path / "results/brain1_ipsi/prepare/registration.json").exists()


def test_missing_input_file_is_named(tmp_path):
    config = make_study(tmp_path, datasets=["brain1_ipsi", "brain2_ipsi"])
    sheet = (tmp_path / "samples.tsv").read_text()
    (tmp_path / "samples.tsv").write_text(sheet.replace("brain1_ipsi/lr.tif", "nowhere/lr.tif"))
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert "nowhere/lr.tif" in result.stdout


def test_voxel_sizes_without_sensible_ratio_fail_before_registration(tmp_path):
    config = make_study(tmp_path, datasets=["brain1_ipsi"])
    sheet = pd.read_csv(tmp_path / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    sheet.loc[0, "hr_voxel_nm"] = "50,40,40"
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    result = snakemake(tmp_path, "results/brain1_ipsi/prepare/registration.json", config=config)
    assert result.returncode != 0
    assert "hr.tif" in result.stdout and "resolution ratio of 1.25" in result.stdout
    assert not (tmp_path / "results/brain1_ipsi/prepare/registration.json").exists()


def test_training_per_fold_writes_model_and_curve(study):
    for fold in ("brain1", "brain2", "brain3"):
        for strategy in TINY_TRAIN["strategies"]:
            folder = study / f"results/models/{fold}/emsrnet_{strategy}_l1"
            assert (folder / "model.pt").stat().st_size > 1000
            curve = pd.read_csv(folder / "curve.csv")
            assert curve.step.max() == 20 and curve.step.is_unique
            assert np.isfinite(curve.loss).all()


def test_inference_upsamples_by_tau_with_voxel_size(study):
    prepare = study / "results/brain2_contra/prepare"
    lr, lr_nm = io.read_volume(prepare / "lr.ome.zarr")
    for name in ("emsrnet_real_l1", "emsrnet_synthetic2_l1", "bicubic"):
        sr, sr_nm = io.read_volume(study / f"results/brain2_contra/sr/{name}.ome.zarr")
        assert sr.shape == (lr.shape[0], 3 * lr.shape[1], 3 * lr.shape[2])
        assert sr.dtype == np.float32 and 0.0 <= sr.min() and sr.max() <= 1.0
        np.testing.assert_allclose(np.array(sr_nm[1:]) * 3, lr_nm[1:], rtol=1e-6)
    bicubic, _ = io.read_volume(study / "results/brain2_contra/sr/bicubic.ome.zarr")
    hr, _ = io.read_volume(prepare / "hr.ome.zarr")
    assert np.corrcoef(bicubic.ravel(), hr.ravel())[0, 1] > 0.6


def test_training_needs_two_animals(tmp_path):
    result = snakemake(tmp_path, "-n", config=make_study(tmp_path, datasets=["brain1_ipsi"]))
    assert result.returncode != 0
    assert "leave-one-animal-out training needs HR data of at least two animals" in result.stdout


def test_unknown_architecture_is_rejected(tmp_path):
    train = {**TINY_TRAIN, "archs": {"edsr": {"type": "edsr"}}}
    result = snakemake(tmp_path, "-n", config=make_study(tmp_path, train=train))
    assert result.returncode != 0
    assert "edsr" in result.stdout and "emsrnet" in result.stdout


def test_gpu_requested_where_none_exists_fails_clearly(study):
    settings = {**TINY_TRAIN["settings"], "device": "cuda"}
    train = {**TINY_TRAIN, "settings": settings}
    config = make_study(study, train=train, ablations=TINY_ABLATIONS)
    target = "results/models/brain1/emsrnet_real_l2/model.pt"
    try:
        result = snakemake(study, target, config=config)
    finally:
        make_study(study, ablations=TINY_ABLATIONS)
    assert result.returncode != 0
    assert "CUDA requested" in result.stdout
    assert not (study / target).exists()


def test_enhancer_keeps_the_hr_grid(study):
    hr, hr_nm = io.read_volume(study / "results/brain3_ipsi/prepare/hr.ome.zarr")
    enhanced, enhanced_nm = io.read_volume(
        study / "results/brain3_ipsi/enhanced/emsrnet_denoised_l1.ome.zarr"
    )
    assert enhanced.shape == hr.shape
    np.testing.assert_allclose(enhanced_nm, hr_nm, rtol=1e-6)
    assert np.corrcoef(enhanced.ravel(), hr.ravel())[0, 1] > 0.5


def test_tables_hold_every_method_dataset_and_slice(study):
    slices = pd.read_parquet(study / "results/tables/slices.parquet")
    methods = {f"emsrnet_{s}_l1" for s in TINY_TRAIN["strategies"]} | {"bicubic"}
    assert set(slices.method) == methods
    assert set(slices.dataset) == set(DATASETS)
    assert len(slices) == len(methods) * len(DATASETS) * 12
    assert (slices.status == "ok").all()
    assert slices.fold.equals(slices.animal)
    summary = pd.read_csv(study / "results/tables/summary.tsv", sep="\t")
    assert (summary.dataset == "ALL DATASETS").sum() == len(methods)
    bicubic = slices[slices.method == "bicubic"].groupby("dataset").psnr.mean()
    row = summary[(summary.method == "bicubic") & (summary.dataset == "ALL DATASETS")]
    assert row.psnr_mean.item() == pytest.approx(bicubic.mean())
    html = (study / "results/tables/table2_ssim.html").read_text()
    assert "<b>" in html and "ALL DATASETS" in html and "bicubic" in html
    table3 = (study / "results/tables/table3_emsrnet_l1_frc.md").read_text()
    assert "Table III" in table3 and "bicubic" not in table3
    assert all(strategy in table3 for strategy in TINY_TRAIN["strategies"])


def test_phantom_datasets_are_scored_against_their_labels(study):
    slices = pd.read_parquet(study / "results/tables/slices.parquet")
    segmentation = ["voi_split", "voi_merge", "voi", "arand"]
    assert set(segmentation) <= set(slices.columns)
    assert np.isfinite(slices[segmentation].to_numpy()).all()
    assert (slices[segmentation] >= 0).all().all() and (slices.arand <= 1).all()
    summary = pd.read_csv(study / "results/tables/summary.tsv", sep="\t")
    assert np.isfinite(summary[[f"{m}_mean" for m in segmentation]].to_numpy()).all()
    table = (study / "results/tables/table2_arand.md").read_text()
    assert "Table II: arand" in table and "bicubic" in table
    # Segmented by each fold's affinity network, its threshold chosen on training data.
    for fold in ("brain1", "brain2", "brain3"):
        calibration = json.loads(
            (study / f"results/models/segmentation/{fold}/calibration.json").read_text()
        )
        assert calibration["threshold"] in TINY_SEGMENTATION["thresholds"]
    log = (study / "results/logs/evaluate/brain1_ipsi/bicubic.log").read_text()
    assert "segmentation/brain1" in log
    assert (study / "results/figures/boxplot_voi_split.png").stat().st_size > 10_000


def test_table4_counts_parameters_and_times_slices(study):
    from emsrflow.train import load_model

    timings = pd.read_csv(study / "results/tables/table4.tsv", sep="\t")
    assert list(dict.fromkeys(timings.method)) == ["bicubic", "emsrnet"]
    assert (timings.seconds_per_slice > 0).all() and (timings.device == "cpu").all()
    assert timings[timings.method == "bicubic"].parameters.isna().all()
    model = load_model(study / "results/models/brain1/emsrnet_real_l1/model.pt")
    count = sum(weight.numel() for weight in model.parameters())
    assert timings[timings.method == "emsrnet"].parameters.unique().tolist() == [count]
    table = (study / "results/tables/table4.md").read_text()
    assert "#Parameters (million)" in table and "Time (seconds per slice)" in table
    assert f"{count / 1e6:.3f}" in table and "64×64 LR → 192×192 SR, cpu" in table


def test_ablation_tables_and_plots_hold_every_variant(study):
    variants = {
        "noise": ["bicubic σ=0", "bicubic σ=8"],
        "noisy_references": ["σ=0", "σ=50"],
        "lambdas": ["λ=(1, 1, 1)", "λ=(1, 0, 0)"],
        "hyperparameters": ["window=2"],
    }
    for name, labels in variants.items():
        table = (study / f"results/tables/ablation_{name}.md").read_text()
        assert "brain3\\_ipsi; mean ± std over its slices" in table
        for label in labels:
            assert label.replace("_", "\\_") in table, (name, label)
        assert "| arand ↓ |" in table
        summary = pd.read_csv(study / f"results/ablations/{name}/summary.tsv", sep="\t")
        assert set(summary.dataset) == {"brain3_ipsi", "ALL DATASETS"}
        assert np.isfinite(summary.psnr_mean).all()
        assert (study / f"results/figures/ablation_{name}.png").stat().st_size > 10_000
    # The variants are models of their own, trained on the other folds' pairs.
    for model in ("emsrnet_noisyref50_l1", "emsrnetlambda1x0x0_denoised_l1"):
        assert (study / f"results/models/brain3/{model}/model.pt").exists()
    assert not (study / "results/models/brain3/emsrnetlambda1x1x1_denoised_l1").exists()
    assert not (study / "results/models/brain1/emsrnet_noisyref50_l1").exists()
    # Noise σ = 8 on the LR: the slices of that variant differ from those at σ = 0.
    slices = pd.read_parquet(study / "results/ablations/noise/slices.parquet")
    bicubic = slices[slices.method == "bicubic"].groupby("variant").psnr.mean()
    assert bicubic["bicubic σ=8"] < bicubic["bicubic σ=0"]


def test_report_holds_the_tables(study):
    result = snakemake(study, "--report", "report.html", config=study / "config.yaml")
    assert result.returncode == 0, result.stdout[-3000:]
    # docutils renders every caption; a caption naming a wildcard its rule lacks warns
    assert "(WARNING/" not in result.stdout and "(ERROR/" not in result.stdout, result.stdout
    report = (study / "report.html").read_text()
    assert "isotropic_training.png" in report
    assert "table2_psnr.html" in report and "registration_qc.png" in report
    assert "table4.html" in report and "ablation_noise.png" in report


def test_figures_are_drawn_and_frc_curves_match_the_tables(study):
    figures = study / "results/figures"
    names = [f"boxplot_{m}" for m in ("psnr", "ssim", "frc", "frc_resolution_nm")]
    names += [f"training_{fold}" for fold in ("brain1", "brain2", "brain3")]
    names += [f"{d}/{f}" for d in DATASETS for f in ("frc_curves", "comparison")]
    names += [f"{d}/orthogonal_sections" for d in DATASETS]
    for name in names:
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
    slices = pd.read_parquet(study / "results/tables/slices.parquet")
    for dataset in DATASETS:
        curves = pd.read_csv(figures / f"{dataset}/frc_curves.tsv", sep="\t")
        assert (curves.slices == 12).all()
        # the mean over rings of the mean curve is the mean of the per-slice FRC scores
        table = slices[slices.dataset == dataset].groupby("method").frc.mean()
        pd.testing.assert_series_equal(
            curves.groupby("method").frc_mean.mean(), table, check_names=False, rtol=1e-4
        )


def test_training_reruns_bit_for_bit(study):
    import torch

    target = "results/models/brain2/emsrnet_denoised_l2/model.pt"
    weights = []
    for _ in range(2):
        result = snakemake(study, target, "--forcerun", "train", config=study / "config.yaml")
        assert result.returncode == 0, result.stdout[-3000:]
        weights.append(torch.load(study / target, weights_only=True)["model"])
        (study / target).chmod(0o644)  # protected(): allow the forced rerun to replace it
        (study / target).unlink()
        (study / target).with_name("checkpoint.pt").unlink()
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_isotropic_reconstruction_and_validation_protocol(study):
    sources = {}
    for dataset in ("brain1_ipsi", "brain2_contra", SIMULATED):
        folder = study / f"results/{dataset}/isotropic"
        meta = json.loads((folder / "anisotropic.json").read_text())
        sources[dataset] = meta["source"]
        assert meta["rho"] == pytest.approx(3.0)
        reference, voxel = io.read_volume(str(folder / "reference.ome.zarr"))
        for method in ("cubic", "uformer"):
            volume, iso_voxel = io.read_volume(str(folder / f"{method}.ome.zarr"))
            assert volume.shape == reference.shape == tuple(meta["isotropic_shape"])
            assert iso_voxel == pytest.approx(voxel) and len(set(iso_voxel)) == 1
            assert np.isfinite(volume).all() and 0 <= volume.min() and volume.max() <= 1
        assert (study / f"results/figures/{dataset}/isotropic_sections.png").stat().st_size > 10_000
    assert sources == {
        "brain1_ipsi": "anisotropic",
        "brain2_contra": "anisotropic",
        SIMULATED: "simulated",
    }
    # The simulated stack averages 3 sections of the phantom's clean volume per slice.
    clean, _ = io.read_volume(
        str(study / f"resources/phantom/{SIMULATED}/anisotropic_clean.ome.zarr")
    )
    stack, voxel = io.read_volume(
        str(study / f"results/{SIMULATED}/isotropic/anisotropic.ome.zarr")
    )
    np.testing.assert_allclose(stack[2], io.to_float01(clean)[6:9].mean(0), atol=1e-6)
    assert voxel[0] == pytest.approx(3 * voxel[2])
    summary = pd.read_csv(study / "results/tables/isotropic_summary.tsv", sep="\t")
    assert set(summary.method) == {"cubic", "uformer"}
    assert set(summary.dataset) == {"brain1_ipsi", "brain2_contra", SIMULATED, "ALL DATASETS"}
    assert "uformer" in (study / "results/tables/isotropic_psnr.md").read_text()


def test_trained_models_are_exported_as_tested_packages(study):
    from emsrflow import bioimage

    for fold in ("brain1", "brain2", "brain3"):
        for strategy in TINY_TRAIN["strategies"]:
            name = f"emsrnet_{strategy}_l1"
            info = bioimage.inspect(study / f"results/packages/{fold}/{name}.zip")
            assert info["tau"] == 3 and info["kind"] == "super-resolution"
            training = info["training"]
            assert (training["fold"], training["strategy"], training["loss"]) == (
                fold,
                strategy,
                "l1",
            )
            assert training["datasets"] and not any(
                d.startswith(fold) for d in training["datasets"]
            )
            assert info["weights"] == ["pytorch_state_dict", "torchscript"]
    for dataset in ("brain1_ipsi", "brain2_contra", SIMULATED):
        info = bioimage.inspect(study / f"results/packages/isotropic/{dataset}.zip")
        assert info["kind"] == "isotropic" and info["tau"] == 1
        assert info["training"]["datasets"] == [dataset]
    log = (study / "results/logs/export/brain1/emsrnet_real_l1.log").read_text()
    assert "bioimage.io test passed: Reproduce test outputs from test inputs (torchscript)" in log


def test_process_config_runs_slab_jobs_qc_and_reruns_one_slab(study):
    """Production: the study's packages applied to acquisitions of other animals, each
    volume in slab jobs writing one OME-Zarr; equal to one job; a lost slab reruns alone."""
    from emsrflow import process

    sheet = pd.DataFrame(
        {
            "acquisition": ["brain1_lr", "brain2_stack"],
            "volume": [
                "resources/phantom/brain1_ipsi/lr.tif",
                "resources/phantom/brain2_contra/anisotropic.h5:/raw",
            ],
            "package": ["results/packages/brain1/emsrnet_real_l1.zip", ""],
            "isotropic_package": ["", "results/packages/isotropic/brain1_ipsi.zip"],
        }
    )
    sheet.to_csv(study / "acquisitions.tsv", sep="\t", index=False)
    config = yaml.safe_load((ROOT / "config" / "process.yaml").read_text())
    config["process"].update(sheet="acquisitions.tsv", slab=4, halo=4, tile=32, overlap=8)
    (study / "process.yaml").write_text(yaml.safe_dump(config))
    configs = ["--configfile", str(study / "config.yaml"), str(study / "process.yaml")]
    result = snakemake(study, *configs)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "rule train:" not in result.stdout and "rule iso_train:" not in result.stdout
    out = study / "results/process"
    sr, voxel = io.read_volume(str(out / "brain1_lr/sr.ome.zarr"))
    assert sr.shape == (12, 258, 258) and voxel == pytest.approx((50, 50 / 3, 50 / 3))
    plan = json.loads((out / "brain1_lr/sr.plan.json").read_text())
    assert plan["slabs"] == [[0, 4], [4, 8], [8, 12]]
    iso, voxel = io.read_volume(str(out / "brain2_stack/isotropic.ome.zarr"))
    assert iso.shape == (48, 192, 192) and voxel == pytest.approx((15, 15, 15))
    overview = pd.read_csv(out / "qc.tsv", sep="\t")
    assert list(overview["product"]) == ["sr", "isotropic"]
    qc = json.loads((out / "brain1_lr/qc/sr.json").read_text())
    assert qc["input_frc_nm"] > 0 and qc["output_nonfinite"] == 0
    assert "Processing QC" in (out / "qc.html").read_text()
    for name in ("sr_panels.png", "sr_histogram.png"):
        assert (out / "brain1_lr/qc" / name).stat().st_size > 10_000
    # The slab jobs wrote what one job writes (the emsrflow apply command's function).
    single = study / "single.ome.zarr"
    with_plan = process.Plan.from_dict(plan["plan"])
    process.apply_package(
        study / "results/packages/brain1/emsrnet_real_l1.zip",
        str(study / "resources/phantom/brain1_ipsi/lr.tif"),
        str(single),
        progress=False,
        device="auto",
        slab=4,
        **{k: with_plan.options[k] for k in ("tile", "overlap", "batch", "tta", "precision")},
    )
    np.testing.assert_array_equal(io.read_volume(str(single))[0], sr)
    # A slab job killed: Snakemake removes its marker, and the run stops before the final
    # step and QC. The next run computes that slab alone and publishes the volume.
    killed = ["slabs/sr/1.json", "sr.json", "qc/sr.json", "qc/sr.tsv", "qc/sr_panels.png"]
    for path in [*(out / "brain1_lr" / p for p in killed), out / "qc.html", out / "qc.tsv"]:
        path.unlink()
    result = snakemake(study, *configs)
    assert result.returncode == 0, result.stdout[-5000:]
    reran = [line for line in result.stdout.splitlines() if "product=sr, slab=" in line]
    assert reran == ["    wildcards: acquisition=brain1_lr, product=sr, slab=1"], reran
    np.testing.assert_array_equal(io.read_volume(str(out / "brain1_lr/sr.ome.zarr"))[0], sr)
