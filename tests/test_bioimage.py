"""bioimage.io model packages: export, bioimage.io's model test, import, refusals."""

import json
import logging
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from package_helpers import (
    HR_VOXEL,
    LR_VOXEL,
    PROVENANCE,
    TAU,
    make_data,
    rewrite_zip,
    tiny_checkpoint,
)

from emsrflow import archs, bioimage, io, process
from emsrflow.errors import InputError
from emsrflow.infer import predict_stack
from emsrflow.train import load_model

BIOIMAGEIO = Path(sys.executable).parent / "bioimageio"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained EMSRNet exported with bioimage.io's model test run."""
    folder = tmp_path_factory.mktemp("package")
    paths, lr, hr = make_data(folder)
    checkpoint = tiny_checkpoint(folder, lr, hr)
    data = bioimage.sr_test_data(paths["lr"], scale=TAU, size=64, reference=paths["hr"])
    package = folder / "emsrnet_real_l1.zip"
    result = bioimage.export_package(checkpoint, package, **data, **PROVENANCE)
    return {"package": package, "checkpoint": checkpoint, "result": result, **paths}


def test_package_passes_the_bioimageio_model_test(exported):
    test = exported["result"]["test"]
    assert test["status"] == "passed", test
    names = [check["name"] for check in test["details"]]
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in names
        assert any(f"Run {weights} inference" in name for name in names)
    assert all(check["status"] == "passed" for check in test["details"])


@pytest.mark.skipif(not BIOIMAGEIO.exists(), reason="no bioimageio command")
def test_bioimageio_command_tests_the_package(exported, tmp_path):
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [str(BIOIMAGEIO), "test", str(exported["package"]), "--summary", str(summary)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(summary.read_text())
    assert report["status"] == "passed"
    names = [detail["name"] for detail in report["details"]]
    assert "Reproduce test outputs from test inputs (torchscript)" in names


def test_package_files_and_description(exported):
    with zipfile.ZipFile(exported["package"]) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert {
        "rdf.yaml",
        "weights.pt",
        "weights_torchscript.pt",
        "emsrflow_archs.py",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
    } <= names
    assert rdf["format_version"].startswith("0.5.")
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["callable"] == "build_network" and arch["kwargs"]["type"] == "emsrnet"
    axes = {a["id"]: a for a in rdf["inputs"][0]["axes"] if "id" in a}
    out_axes = {a["id"]: a for a in rdf["outputs"][0]["axes"] if "id" in a}
    assert axes["x"]["scale"] == LR_VOXEL[2] and axes["x"]["unit"] == "nanometer"
    assert out_axes["x"]["scale"] == pytest.approx(LR_VOXEL[2] / TAU)
    meta = rdf["config"]["emsrflow"]
    assert meta["tau"] == TAU and meta["training"]["strategy"] == "real"
    assert meta["config_sha256"] == PROVENANCE["config_sha256"]


def test_inspect_reports_the_provenance(exported):
    info = bioimage.inspect(exported["package"])
    assert info["architecture"] == "emsrnet" and info["tau"] == TAU
    assert info["kind"] == "super-resolution"
    assert info["voxel_size_nm"] == {"input": list(LR_VOXEL), "output": list(HR_VOXEL)}
    training = info["training"]
    assert (training["strategy"], training["loss"], training["fold"]) == ("real", "l1", "brain1")
    assert training["datasets"] == PROVENANCE["training_datasets"]
    assert training["steps"] == 6 and training["settings"]["patch"] == 12
    assert info["config_sha256"] == PROVENANCE["config_sha256"]
    assert info["weights"] == ["pytorch_state_dict", "torchscript"]
    assert set(info["files"]) >= {"weights.pt", "emsrflow_archs.py", "cover.png"}


def test_export_import_apply_gives_the_same_output(exported, tmp_path):
    before = load_model(exported["checkpoint"])
    after, info = bioimage.load_package(exported["package"])
    assert info["tau"] == TAU and not after.training
    with io.open_volume(exported["lr"]) as volume:
        stack = volume.read()
    options = {"tile": 24, "overlap": 8, "precision": "fp32", "device": "cpu"}
    expected = predict_stack(before, stack, **options)
    np.testing.assert_allclose(predict_stack(after, stack, **options), expected, atol=1e-5)
    target = str(tmp_path / "sr.ome.zarr")
    result = process.apply_package(
        exported["package"], exported["lr"], target, progress=False, slab=2, **options
    )
    applied, voxel = io.read_volume(target)
    np.testing.assert_allclose(applied, expected, atol=1e-5)
    assert voxel == pytest.approx(HR_VOXEL)
    assert result["output_shape"] == [3, 120, 120] and result["warnings"] == []


def test_the_architecture_file_needs_only_torch(exported, tmp_path):
    """The bundled architecture rebuilds the network with emsrflow not importable."""
    with zipfile.ZipFile(exported["package"]) as archive:
        archive.extractall(tmp_path)
    script = textwrap.dedent(
        """
        import importlib.abc, importlib.util, sys
        import numpy as np, torch, yaml

        class NoEmsrflow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "emsrflow":
                    raise ImportError("emsrflow is not importable here")

        sys.meta_path.insert(0, NoEmsrflow())
        spec = importlib.util.spec_from_file_location("arch", "emsrflow_archs.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rdf = yaml.safe_load(open("rdf.yaml"))
        kwargs = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
        net = module.build_network(**kwargs).eval()
        net.load_state_dict(torch.load("weights.pt", weights_only=True))
        x = torch.from_numpy(np.load("test_input.npy"))
        with torch.no_grad():
            y = net(x).clamp(0, 1).numpy()
        assert "emsrflow" not in sys.modules
        print("max difference", float(np.abs(y - np.load("test_output.npy")).max()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 1e-5


def test_damaged_weights_are_refused(exported, tmp_path):
    def flip(name, data):
        if name != "weights.pt":
            return data
        data = bytearray(data)
        data[-100] ^= 0xFF
        return bytes(data)

    damaged = rewrite_zip(exported["package"], tmp_path / "damaged.zip", flip)
    with pytest.raises(InputError, match=r"damaged\.zip: damaged package: weights\.pt has sha256"):
        bioimage.load_package(damaged)
    with pytest.raises(InputError, match=r"weights\.pt"):
        bioimage.inspect(damaged)


def test_wrong_sha256_in_the_description_is_refused(exported, tmp_path):
    def edit(name, data):
        if name != "rdf.yaml":
            return data
        rdf = yaml.safe_load(data)
        rdf["weights"]["pytorch_state_dict"]["sha256"] = "0" * 64
        return yaml.safe_dump(rdf).encode()

    wrong = rewrite_zip(exported["package"], tmp_path / "wrong.zip", edit)
    with pytest.raises(InputError, match=r"weights\.pt"):
        bioimage.load_package(wrong)


def test_missing_file_is_refused(exported, tmp_path):
    def drop(name, data):
        return None if name == "emsrflow_archs.py" else data

    missing = rewrite_zip(exported["package"], tmp_path / "missing.zip", drop)
    with pytest.raises(InputError, match=r"emsrflow_archs\.py is missing"):
        bioimage.load_package(missing)


def test_foreign_packages_are_refused(exported, tmp_path):
    def strip(name, data):
        if name != "rdf.yaml":
            return data
        rdf = yaml.safe_load(data)
        del rdf["config"]["emsrflow"]
        return yaml.safe_dump(rdf).encode()

    foreign = rewrite_zip(exported["package"], tmp_path / "foreign.zip", strip)
    with pytest.raises(InputError, match=r"foreign\.zip: a bioimage\.io model .* not exported by"):
        bioimage.load_package(foreign)
    no_rdf = rewrite_zip(exported["package"], tmp_path / "no_rdf.zip", lambda n, d: None)
    with pytest.raises(InputError, match=r"no_rdf\.zip: not a bioimage\.io model package"):
        bioimage.load_package(no_rdf)
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(InputError, match=r"notes\.zip: not a bioimage\.io model package"):
        bioimage.inspect(text)
    with pytest.raises(InputError, match="not found"):
        bioimage.inspect(tmp_path / "absent.zip")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta["spec"].update(type="sparse"), "architecture 'sparse'.*not registered"),
        (lambda meta: meta.update(tau=2), "τ unknown or inconsistent"),
        (lambda meta: meta.pop("tau"), "τ unknown or inconsistent"),
        (
            lambda meta: meta["voxel_size_nm"].update(output=[50.0, 20.0, 20.0]),
            "τ unknown or inconsistent",
        ),
        (lambda meta: meta.update(format_version=99), "format version 99"),
    ],
)
def test_inconsistent_metadata_is_refused(exported, tmp_path, change, message):
    def edit(name, data):
        if name != "rdf.yaml":
            return data
        rdf = yaml.safe_load(data)
        change(rdf["config"]["emsrflow"])
        return yaml.safe_dump(rdf).encode()

    edited = rewrite_zip(exported["package"], tmp_path / "edited.zip", edit)
    with pytest.raises(InputError, match=message):
        bioimage.load_package(edited)


def test_unscriptable_network_gets_no_torchscript_and_says_why(tmp_path, caplog):
    torch.manual_seed(0)
    net = archs.build_network(
        {"type": "uformer", "scale": 1, "channels": 8, "levels": 1, "depths": 1, "heads": 2}
    )
    image = np.random.default_rng(0).random((24, 32), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="emsrflow.bioimage"):
        result = bioimage.export_package(
            net,
            tmp_path / "iso.zip",
            test_input=image,
            voxel_size_nm=(15, 15, 15),
            kind="isotropic",
            test=False,
        )
    assert result["weights"] == ["pytorch_state_dict"]
    assert result["torchscript"]["included"] is False
    assert "torch.jit.script fails" in result["torchscript"]["reason"]
    assert "no TorchScript weights for uformer" in caplog.text
    model, info = bioimage.load_package(tmp_path / "iso.zip")
    assert info["kind"] == "isotropic" and info["tau"] == 1
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), net.eval()(x).numpy(), atol=1e-5)


def test_isotropic_test_data_is_an_interpolated_axial_plane(tmp_path):
    stack = np.linspace(0, 1, 8 * 20 * 30, dtype=np.float32).reshape(8, 20, 30)
    io.write_volume(str(tmp_path / "stack.ome.zarr"), stack, (45.0, 15.0, 15.0))
    data = bioimage.isotropic_test_data(str(tmp_path / "stack.ome.zarr"), size=16)
    assert data["test_input"].shape == (16, 16)
    assert data["voxel_size_nm"] == (15.0, 15.0, 15.0)
    assert data["metadata"]["rho"] == pytest.approx(3.0)


def test_voxel_size_check():
    info = {
        "kind": "super-resolution",
        "tau": 3,
        "voxel_size_nm": {"input": [50, 45, 45], "output": [50, 15, 15]},
    }
    assert bioimage.check_voxel_size(info, (60, 46, 46)) == []
    (warning,) = bioimage.check_voxel_size(info, (50, 55, 55))
    assert "trained on 45×45 nm" in warning and "+22%" in warning
    with pytest.raises(InputError, match="already super-resolved"):
        bioimage.check_voxel_size(info, (50, 15, 15))
    with pytest.raises(InputError, match="resample the volume to 45 nm"):
        bioimage.check_voxel_size(info, (50, 90, 90))
    assert len(bioimage.check_voxel_size(info, (50, 90, 90), strict=False)) == 1


def test_config_hash_ignores_key_order():
    assert bioimage.config_hash({"a": 1, "b": [1, 2]}) == bioimage.config_hash(
        {"b": (1, 2), "a": 1}
    )
    assert bioimage.config_hash({"a": 1}) != bioimage.config_hash({"a": 2})


def test_export_refuses_bad_arguments(exported, tmp_path):
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="at least 16 pixels"):
        bioimage.export_package(
            exported["checkpoint"], tmp_path / "x.zip", test_input=image, voxel_size_nm=LR_VOXEL
        )
    with pytest.raises(ValueError, match="kind must be one of"):
        bioimage.export_package(
            exported["checkpoint"],
            tmp_path / "x.zip",
            test_input=np.zeros((16, 16)),
            voxel_size_nm=LR_VOXEL,
            kind="denoising",
        )
    with pytest.raises(ValueError, match="τ = 1"):
        bioimage.export_package(
            exported["checkpoint"],
            tmp_path / "x.zip",
            test_input=np.zeros((16, 16)),
            voxel_size_nm=LR_VOXEL,
            kind="isotropic",
        )
    assert not (tmp_path / "x.zip").exists()
