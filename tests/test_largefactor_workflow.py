"""Snakemake runs the large-factor (GPEMSR) rules for real on two phantom datasets, tiny."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.archs.backbones import Backbone
from emsrflow.train import load_model

pytestmark = pytest.mark.workflow

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DATASETS = ["brain1_ipsi", "brain2_contra"]  # two animals: two folds
LOOP = {"checkpoint_every": 2, "log_every": 2, "seed": 0, "deterministic": True, "device": "cpu"}
# One factor for the real run (each job costs seconds of imports); both in the dry run.
TINY = {
    "factors": [16],
    "codebook": {
        "network": {
            "channels": [4, 4, 4, 4, 4],
            "latent_dim": 4,
            "codes": 8,
            "bottleneck_blocks": 1,
            "norm_groups": 2,
        },
        "settings": {
            **LOOP,
            "steps": 4,
            "batch": 1,
            "patch": 64,
            "adversarial_start": 2,
            "critic_channels": 4,
            "critic_layers": 2,
            "critic_padding": 1,
        },
    },
    "indexer": {
        "network": {"indexer_blocks": 1},
        "settings": {**LOOP, "steps": 2, "batch": 1, "patch": 64},
    },
    "reconstruction": {
        "network": {"channels": 4, "deform_groups": 1, "front_blocks": 1, "back_blocks": 1},
        "settings": {**LOOP, "steps": 2, "batch": 1, "patch": 64},
    },
    "ablation": {"no_mpf": {"mpf": False}},
    "baselines": {
        "archs": {
            "emsrnet": {"type": "emsrnet", "channels": 4, "blocks": 1, "res_blocks": 1, "heads": 2}
        },
        "settings": {**LOOP, "steps": 2, "batch": 1, "patch": 4},
    },
    "infer": {"tile": 32, "overlap": 8, "batch": 4, "precision": "fp32", "device": "cpu"},
    "gpus": 0,
    "threads": 1,
}
TARGETS = ["results/tables/largefactor_table1.html", "results/tables/largefactor_table5.html"]
METHODS = ["bicubic", "emsrnet", "gpemsr_single", "gpemsr_full", "gpemsr_no_mpf"]
ALEX = (64, 192, 384, 256, 256)  # LPIPS's AlexNet taps


def snakemake(workdir, *args, config=None):
    """Run Snakemake on the workflow in ``workdir``; its output (stderr too) is ``stdout``."""
    command = [SNAKEMAKE, "--snakefile", str(ROOT / "workflow" / "Snakefile")]
    command += ["--directory", str(workdir), "--cores", "2", *args]
    if config is not None:
        command += ["--configfile", str(config)]
    return subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )


def make_study(workdir, **largefactor):
    """Write the demo config with a tiny `largefactor:` section and a two-dataset sheet."""
    workdir.mkdir(parents=True, exist_ok=True)
    sheet = pd.read_csv(ROOT / "config" / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    sheet[sheet.dataset.isin(DATASETS)].to_csv(workdir / "samples.tsv", sep="\t", index=False)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["samples"] = "samples.tsv"
    config["ablations"]["folds"] = []  # the demo's noise study holds out brain3, absent here
    config["largefactor"] = {**TINY, **largefactor}
    config["segmentation"].update(  # the fixed segmentation pipeline of VOI, tiny
        net={"channels": 4, "levels": 1},
        settings={"steps": 10, "batch": 1, "patch": [2, 32, 32], "log_every": 5},
        thresholds=[0.3, 0.5],
    )
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return workdir / "config.yaml"


def write_pretrained(folder):
    """Random weights in the layouts of torchvision's VGG19 and AlexNet and of LPIPS's
    calibration: they test the plumbing, not the features."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name in ("vgg19", "alexnet"):
        features = Backbone(name).features.state_dict()
        torch.save({f"features.{k}": v for k, v in features.items()}, folder / f"{name}.pth")
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(ALEX)}
    torch.save(lins, folder / "lpips_alex.pth")
    return {
        "vgg19": "pretrained/vgg19.pth",
        "spynet": None,
        "lpips": {
            "net": "alex",
            "backbone": "pretrained/alexnet.pth",
            "calibration": "pretrained/lpips_alex.pth",
        },
        "dists": {"backbone": None, "calibration": None},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    # VGG19 features and LPIPS from local files; SPyNet and DISTS left to their stand-ins.
    workdir = tmp_path_factory.mktemp("largefactor")
    pretrained = write_pretrained(workdir / "pretrained")
    result = snakemake(workdir, *TARGETS, config=make_study(workdir, pretrained=pretrained))
    assert result.returncode == 0, result.stdout[-6000:]
    return workdir


def test_config_without_the_section_runs_none_of_it(tmp_path):
    config = make_study(tmp_path)
    text = yaml.safe_load(config.read_text())
    del text["largefactor"]
    config.write_text(yaml.safe_dump(text, allow_unicode=True))
    result = snakemake(tmp_path, "-n", "--rerun-triggers", "mtime", config=config)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "rule gp_" not in result.stdout


def test_reserved_variant_name_is_rejected(tmp_path):
    result = snakemake(
        tmp_path, "-n", config=make_study(tmp_path, ablation={"full": {"mpf": False}})
    )
    assert result.returncode != 0
    assert "largefactor: ablation: the variant names ['full'] are reserved" in result.stdout


def test_both_factors_plan_every_stage_per_fold_factor_and_variant(tmp_path):
    archs = {**TINY["baselines"]["archs"], "swinir": {"type": "swinir", "embed_dim": 4}}
    config = make_study(tmp_path, factors=[8, 16], baselines={**TINY["baselines"], "archs": archs})
    result = snakemake(tmp_path, "-n", *TARGETS, config=config)
    assert result.returncode == 0, result.stdout[-3000:]
    counts = {
        rule: int(n)
        for rule, n in (
            line.split() for line in result.stdout.splitlines() if line.startswith("gp_")
        )
    }
    # 2 datasets (2 folds) × 2 factors; Stage III variants full, single, no_mpf; 5 methods
    # in Table 1 (bicubic, emsrnet, swinir, GPEMSR single and full) plus no_mpf.
    assert counts == {
        "gp_degrade": 4,
        "gp_labels": 4,
        "gp_codebook": 2,
        "gp_indexer": 4,
        "gp_reconstruction": 12,
        "gp_train_baseline": 8,
        "gp_infer": 24,
        "gp_evaluate": 24,
        "gp_collect": 2,
        "gp_table1": 1,
        "gp_table5": 1,
    }


def test_lr_is_the_cropped_hr_downsampled_by_the_factor(study):
    for factor in TINY["factors"]:
        folder = study / f"results/brain1_ipsi/largefactor/x{factor}"
        lr, lr_nm = io.read_volume(str(folder / "lr.ome.zarr"))
        hr, hr_nm = io.read_volume(str(folder / "hr.ome.zarr"))
        prepared, _ = io.read_volume(str(study / "results/brain1_ipsi/prepare/hr.ome.zarr"))
        assert hr.shape == (lr.shape[0], factor * lr.shape[1], factor * lr.shape[2])
        assert hr.shape[1] == prepared.shape[1] // factor * factor
        np.testing.assert_array_equal(hr, prepared[:, : hr.shape[1], : hr.shape[2]])
        np.testing.assert_allclose(lr_nm[1:], factor * np.array(hr_nm[1:]), rtol=1e-6)
        labels, _ = io.read_volume(str(folder / "labels.ome.zarr"))
        assert labels.shape == hr.shape
        assert json.loads((folder / "pair.json").read_text())["tau"] == factor


def test_every_stage_and_baseline_is_trained_per_fold(study):
    models = study / "results/models/largefactor"
    for fold in ("brain1", "brain2"):
        assert (models / fold / "codebook/model.pt").exists()
        for factor in TINY["factors"]:
            folder = models / fold / f"x{factor}"
            for name in (
                "indexer",
                "gpemsr_full",
                "gpemsr_single",
                "gpemsr_no_mpf",
                "emsrnet_real_l1",
            ):
                assert (folder / name / "model.pt").exists(), (fold, factor, name)
                assert len(pd.read_csv(folder / name / "curve.csv")) >= 1


def test_outputs_have_the_hr_shape_and_are_timed(study):
    for factor in TINY["factors"]:
        hr, _ = io.read_volume(
            str(study / f"results/brain2_contra/largefactor/x{factor}/hr.ome.zarr")
        )
        for method in METHODS:
            sr_file = study / f"results/brain2_contra/largefactor/x{factor}/sr/{method}.ome.zarr"
            sr, _ = io.read_volume(str(sr_file))
            assert sr.shape == hr.shape and np.isfinite(sr).all()
            cost = json.loads(sr_file.with_suffix("").with_suffix(".json").read_text())
            assert cost["seconds_per_slice"] > 0 and cost["sections"] == hr.shape[0]
            assert (cost["parameters"] is None) == (method == "bicubic")
            stand_ins = cost["stand_ins"]
            if method.startswith("gpemsr") and method != "gpemsr_no_mpf":
                assert "VGG19" in stand_ins["features"] and "vgg19.pth" in stand_ins["features"]
            if method == "gpemsr_full":
                assert "Lucas–Kanade" in stand_ins["flow"]
            if not method.startswith("gpemsr"):
                assert stand_ins == {}
    spec = load_model(study / "results/models/largefactor/brain1/x16/gpemsr_full/model.pt").spec
    assert spec["features"] == "vgg19" and spec["vgg19_weights"] == "pretrained/vgg19.pth"


def test_tables_hold_every_method_factor_and_metric(study):
    tables = study / "results/tables"
    for factor in TINY["factors"]:
        summary = pd.read_csv(tables / f"largefactor_x{factor}_summary.tsv", sep="\t")
        assert set(summary.method) == set(METHODS)
        assert summary.arand_mean.notna().all()  # the phantom has labels
        assert summary.lpips_mean.notna().all() and "dists_mean" not in summary
        voi = summary.voi_split_mean + summary.voi_merge_mean
        np.testing.assert_allclose(summary.voi_mean, voi, rtol=1e-6)
    table1 = (tables / "largefactor_table1.md").read_text()
    for text in ("Bicubic", "GPEMSR (single section)", "GPEMSR", "emsrnet"):
        assert f"| {text} |" in table1.replace("\\", "")
    for text in (
        "16× psnr ↑",
        "16× arand ↓",
        "16× voi ↓",
        "16× LPIPS ↓",
        "16× DISTS ↓",
        "16× Params/M",
        "16× s/slice ↓",
    ):
        assert text in table1.replace("\\", ""), text
    # DISTS alone is not available; the caption names the stand-ins and the local file.
    assert table1.count("not available") == len(METHODS) - 1  # no_mpf is not in Table 1
    assert "vgg19.pth" in table1 and "Lucas–Kanade" in table1
    table5 = (tables / "largefactor_table5.md").read_text()
    assert "GPEMSR, mpf=False" in table5 and "16× ssim ↑" in table5


def _merged(*names):
    """Shipped configs merged key by key, as Snakemake merges --configfile over them."""

    def merge(base, extra):
        for key, value in extra.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    config = {}
    for name in names:
        merge(config, yaml.safe_load((ROOT / "config" / name).read_text()))
    return config


@pytest.mark.parametrize("overlay", ["largefactor.yaml", "paper.yaml"])
def test_shipped_overlays_are_valid_and_the_demo_is_off(overlay):
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.validate(_merged("config.yaml", overlay), schema)
    assert _merged("config.yaml")["largefactor"]["factors"] == []
    assert "largefactor" not in schema["required"]


def test_paper_config_builds_the_papers_stage3_sizes():
    config = _merged("config.yaml", "paper.yaml")["largefactor"]
    assert config["codebook"]["network"]["codes"] == 1024
    assert config["codebook"]["network"]["latent_dim"] == 512
    prior = {**config["codebook"]["network"], **config["indexer"]["network"]}
    for scale, millions in ((16, 5.4627), (8, 4.4257)):  # Table 1, Stage III parameters
        spec = {**config["reconstruction"]["network"], "type": "gpemsr", "prior": prior}
        net = build_network({**spec, "scale": scale})
        count = sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6
        assert abs(count - millions) / millions < 0.05, (scale, count)
