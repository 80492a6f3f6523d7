"""The `emsrflow` command: apply, export and inspect, as a subprocess and in-process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from package_helpers import HR_VOXEL, TAU, make_data, rewrite_zip, tiny_checkpoint

from emsrflow import bioimage, cli, io
from emsrflow.infer import predict_stack
from emsrflow.train import load_model

EMSRFLOW = str(Path(sys.executable).parent / "emsrflow")


def run(*args):
    return subprocess.run([EMSRFLOW, *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Data, a tiny trained EMSRNet and its package, exported by the command line."""
    folder = tmp_path_factory.mktemp("cli")
    paths, lr, hr = make_data(folder)
    checkpoint = tiny_checkpoint(folder, lr, hr)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"train": {"losses": ["l1"]}}))
    package = folder / "model.zip"
    code = cli.main(
        [
            "export",
            str(checkpoint),
            str(package),
            "--test-data",
            paths["lr"],
            "--reference",
            paths["hr"],
            "--strategy",
            "real",
            "--loss",
            "l1",
            "--fold",
            "brain1",
            "--training-datasets",
            "brain2_contra,brain3_ipsi",
            "--config",
            str(config),
            "--author",
            "A. Microscopist",
            "--no-test",
        ]
    )
    assert code == 0
    return {
        "folder": folder,
        "checkpoint": checkpoint,
        "package": package,
        "config": config,
        **paths,
    }


def test_help_explains_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("apply", "export", "inspect"):
        assert command in result.stdout
    apply = run("apply", "--help").stdout
    for option in ("--model", "--tile", "--overlap", "--device", "--precision", "--voxel-size"):
        assert option in apply
    assert "pixel size" in apply and "(default: 256)" in apply
    assert "--test-data" in run("export", "--help").stdout


def test_export_records_the_provenance(study):
    info = bioimage.inspect(study["package"])
    assert info["training"]["fold"] == "brain1" and info["tau"] == TAU
    assert info["training"]["datasets"] == ["brain2_contra", "brain3_ipsi"]
    config = yaml.safe_load(study["config"].read_text())
    assert info["config_sha256"] == bioimage.config_hash(config)
    assert info["authors"] == ["A. Microscopist"]


def test_inspect_prints_architecture_tau_voxels_and_training(study):
    result = run("inspect", study["package"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "emsrnet" in text and "τ (scale):      3" in text
    assert "50 × 45 × 45 nm" in text and "50 × 15 × 15 nm" in text
    assert "real" in text and "brain1" in text and "brain2_contra, brain3_ipsi" in text
    as_json = json.loads(run("inspect", "--json", study["package"]).stdout)
    assert as_json["voxel_size_nm"]["output"] == list(HR_VOXEL)


def test_apply_as_a_subprocess_matches_the_model(study, tmp_path):
    target = tmp_path / "sr.ome.zarr"
    result = run(
        "apply", "--model", study["package"], study["lr"], target,
        "--tile", 24, "--overlap", 8, "--device", "cpu", "--slab", 2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "super-resolving" in result.stderr and "100%" in result.stderr  # the tqdm bar
    sr, voxel = io.read_volume(str(target))
    assert sr.shape == (3, 120, 120) and sr.dtype == np.float32
    assert voxel == pytest.approx(HR_VOXEL)
    with io.open_volume(study["lr"]) as volume:
        expected = predict_stack(
            load_model(study["checkpoint"]), volume.read(), tile=24, overlap=8, device="cpu"
        )
    np.testing.assert_allclose(sr, expected, atol=1e-5)


def test_apply_in_process_keeps_8_bit_data_in_8_bits(study, tmp_path):
    target = tmp_path / "sr.tif"
    code = cli.main(
        ["apply", "--model", str(study["package"]), study["lr_tif"], str(target), "--quiet"]
    )
    assert code == 0
    sr, voxel = io.read_volume(str(target))
    assert sr.dtype == np.uint8 and sr.shape == (3, 120, 120)
    assert voxel == pytest.approx(HR_VOXEL, rel=1e-3)


def test_voxel_size_that_contradicts_the_package(study, tmp_path, capsys, caplog):
    target = tmp_path / "sr.ome.zarr"
    args = ["apply", "--model", str(study["package"]), study["lr"], str(target), "--quiet"]
    # HR-sized pixels: the input looks already super-resolved (τ contradicts it).
    assert cli.main([*args, "--voxel-size", "50,15,15"]) == 2
    err = capsys.readouterr().err
    assert "emsrflow apply: error:" in err and "already super-resolved" in err
    assert not target.exists()
    assert cli.main([*args, "--voxel-size", "50,100,100"]) == 2
    assert "resample the volume to 45 nm" in capsys.readouterr().err
    # 20 % off: a warning, and the output's voxel size follows the given one.
    assert cli.main([*args, "--voxel-size", "50,54,54"]) == 0
    assert "the output may be poorer" in caplog.text  # logged (to stderr outside pytest)
    assert io.read_volume(str(target))[1] == pytest.approx((50, 18, 18))
    assert cli.main([*args, "--voxel-size", "50,15,15", "--ignore-voxel-size"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main([*args, "--voxel-size", "50,15,15", "--ignore-voxel-size", "--overwrite"]) == 0


def test_damaged_and_foreign_packages_fail_with_one_line(study, tmp_path):
    def flip(name, data):
        return data[:-1] + bytes([data[-1] ^ 1]) if name == "weights.pt" else data

    damaged = rewrite_zip(study["package"], tmp_path / "damaged.zip", flip)
    result = run("apply", "--model", damaged, study["lr"], tmp_path / "sr.ome.zarr")
    assert result.returncode == 2
    assert "damaged.zip: damaged package: weights.pt has sha256" in result.stderr
    assert "Traceback" not in result.stderr
    foreign = tmp_path / "foreign.zip"
    foreign.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    result = run("inspect", foreign)
    assert result.returncode == 2 and "not a bioimage.io model package" in result.stderr


def test_missing_arguments_are_usage_errors():
    result = run("apply", "in.tif", "out.ome.zarr")
    assert result.returncode == 2 and "--model" in result.stderr
    result = run("apply", "--model", "m.zip", "--voxel-size", "1,2", "in.tif", "out.zarr")
    assert result.returncode == 2 and "three positive numbers" in result.stderr


def test_isotropic_package_applies_to_a_stack(tmp_path):
    import torch

    from emsrflow import archs

    torch.manual_seed(0)
    net = archs.build_network(
        {"type": "uformer", "scale": 1, "channels": 8, "levels": 1, "depths": 1, "heads": 2}
    )
    stack = np.random.default_rng(1).random((6, 32, 40), dtype=np.float32)
    io.write_volume(str(tmp_path / "stack.ome.zarr"), stack, (45.0, 15.0, 15.0))
    data = bioimage.isotropic_test_data(str(tmp_path / "stack.ome.zarr"), size=16)
    bioimage.export_package(net, tmp_path / "iso.zip", **data, kind="isotropic", test=False)
    target = tmp_path / "iso.ome.zarr"
    code = cli.main(
        ["apply", "--model", str(tmp_path / "iso.zip"), str(tmp_path / "stack.ome.zarr"),
         str(target), "--tile", "32", "--overlap", "8", "--quiet"]
    )  # fmt: skip
    assert code == 0
    volume, voxel = io.read_volume(str(target))
    assert volume.shape == (18, 32, 40) and voxel == pytest.approx((15.0, 15.0, 15.0))
