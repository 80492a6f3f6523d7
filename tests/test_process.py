"""Production processing (emsrflow.process): slab jobs sharing one OME-Zarr, and bad input."""

import hashlib
import io as _io
import zipfile

import numpy as np
import pytest
import torch
from package_helpers import (
    LR_VOXEL,
    PROVENANCE,
    TAU,
    TINY_EMSRNET,
    make_data,
    rewrite_zip,
    tiny_checkpoint,
)

from emsrflow import archs, bioimage, io, process
from emsrflow.errors import InputError

OPTIONS = {"tile": 24, "overlap": 8, "precision": "fp32"}
ISO_OPTIONS = {"tile": 32, "overlap": 8, "precision": "fp32", "passes": ["xz", "yz"]}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """A tiny trained EMSRNet package and an isotropic (Uformer) package, with their data."""
    folder = tmp_path_factory.mktemp("process")
    paths, lr, hr = make_data(folder)
    checkpoint = tiny_checkpoint(folder, lr, hr)
    data = bioimage.sr_test_data(paths["lr_tif"], scale=TAU, size=32)
    sr = folder / "sr.zip"
    bioimage.export_package(checkpoint, sr, **data, **PROVENANCE, test=False)
    torch.manual_seed(0)
    net = archs.build_network(
        {"type": "uformer", "scale": 1, "channels": 8, "levels": 1, "depths": 1, "heads": 2}
    )
    stack = np.random.default_rng(1).random((6, 32, 40), dtype=np.float32)
    paths["stack"] = str(folder / "stack.ome.zarr")
    io.write_volume(paths["stack"], stack, (45.0, 15.0, 15.0))
    data = bioimage.isotropic_test_data(paths["stack"], size=16)
    iso = folder / "iso.zip"
    bioimage.export_package(net, iso, **data, kind="isotropic", test=False)
    return {"sr": sr, "iso": iso, **paths}


def run_slab_jobs(plan, target, order):
    """Each slab as its own job would: a fresh model and reader, then write its region."""
    process.create_store(plan, target)
    for index in order:
        z0, z1 = plan.slabs[index]
        model, _ = bioimage.load_package(plan.package)
        with io.open_volume(plan.source) as volume:
            data = process.render_slab(plan, model, volume, z0, z1, device="cpu")
        process.write_slab(plan, target, z0, data)


@pytest.mark.parametrize(
    ("kind", "source", "options", "slabs"),
    [("sr", "lr_tif", OPTIONS, 3), ("iso", "stack", {**ISO_OPTIONS, "halo": 4}, 3)],
)
def test_slab_jobs_equal_one_job_bit_for_bit(packages, tmp_path, kind, source, options, slabs):
    slab = 1 if kind == "sr" else 6
    plan = process.make_plan(packages[kind], packages[source], slab=slab, **options)
    assert len(plan.slabs) == slabs and plan.chunks[0] <= slab and slab % plan.chunks[0] == 0
    split = str(tmp_path / "split.ome.zarr")
    run_slab_jobs(plan, split, order=reversed(range(slabs)))  # any order, any process
    record = process.finalize_store(plan, split)
    assert record["status"] == "complete" and record["slabs"] == slabs
    single = str(tmp_path / "single.ome.zarr")
    process.apply_package(
        packages[kind], packages[source], single, slab=slab, device="cpu", progress=False, **options
    )
    (a, voxel_a), (b, voxel_b) = io.read_volume(split), io.read_volume(single)
    assert a.dtype == b.dtype and voxel_a == voxel_b == pytest.approx(plan.output_voxel_nm)
    np.testing.assert_array_equal(a, b)


def test_missing_slab_is_named_and_the_store_is_not_a_volume_until_complete(packages, tmp_path):
    plan = process.make_plan(packages["sr"], packages["lr_tif"], slab=1, **OPTIONS)
    target = str(tmp_path / "sr.ome.zarr")
    run_slab_jobs(plan, target, order=[0, 2])
    with pytest.raises(InputError, match="incomplete"):
        io.open_volume(target)
    with pytest.raises(InputError, match="sections 1-1 were never written"):
        process.finalize_store(plan, target)
    run_slab_jobs(plan, target, order=[1])  # the failed job alone, again
    process.finalize_store(plan, target)
    assert io.read_volume(target)[0].shape == plan.output_shape


def test_output_path_holding_another_volume_is_refused(packages, tmp_path):
    plan = process.make_plan(packages["sr"], packages["lr_tif"], slab=1, **OPTIONS)
    target = str(tmp_path / "sr.ome.zarr")
    io.write_volume(target, np.zeros((3, 8, 8), np.uint8), (50, 15, 15))
    with pytest.raises(InputError, match="already holds another volume"):
        process.create_store(plan, target)
    other = str(tmp_path / "other.ome.zarr")
    process.create_store(plan, other)
    process.create_store(plan, other)  # the same plan: kept, finished slabs stay
    wider = process.make_plan(packages["sr"], packages["lr_tif"], slab=1, tile=32)
    with pytest.raises(InputError, match="already holds a volume made for"):
        process.create_store(wider, other)
    with pytest.raises(InputError, match="not made for this plan"):
        process.write_slab(wider, other, 0, np.zeros((1, 120, 120), np.uint8))
    with pytest.raises(InputError, match="already exists"):
        process.apply_package(packages["sr"], packages["lr_tif"], target, progress=False)


def test_slab_smaller_than_the_halo_is_refused(packages):
    with pytest.raises(InputError, match="smaller than the halo"):
        process.make_plan(packages["iso"], packages["stack"], slab=2, halo=4)


def test_weights_that_do_not_fit_the_architecture_are_refused(packages, tmp_path):
    wider = archs.build_network({**TINY_EMSRNET, "channels": 16})
    buffer = _io.BytesIO()
    torch.save(wider.state_dict(), buffer)
    weights = buffer.getvalue()
    with zipfile.ZipFile(packages["sr"]) as archive:
        old = hashlib.sha256(archive.read("weights.pt")).hexdigest()
    new = hashlib.sha256(weights).hexdigest()

    def swap(name, data):
        if name == "weights.pt":
            return weights
        return data.replace(old.encode(), new.encode()) if name.endswith(".yaml") else data

    foreign = rewrite_zip(packages["sr"], tmp_path / "foreign.zip", swap)
    bioimage.inspect(foreign)  # checksums agree: the package looks whole
    with pytest.raises(InputError, match=r"weights\.pt does not load into emsrnet"):
        process.apply_package(foreign, packages["lr_tif"], str(tmp_path / "x.ome.zarr"))
    assert not (tmp_path / "x.ome.zarr").exists()


def test_input_of_another_type_and_range_warns_with_the_figures(packages, tmp_path):
    lr = io.read_volume(packages["lr_tif"])[0]
    dim = (lr.astype(np.float64) / 255 * 0.2 * 65535).astype(np.uint16)  # 16-bit, darker
    source = str(tmp_path / "dim.tif")
    io.write_volume(source, dim, LR_VOXEL)
    plan = process.make_plan(packages["sr"], source, **OPTIONS)
    type_warning, range_warning = plan.warnings
    assert "voxel type uint16, the model was trained on uint8" in type_warning
    assert (
        "intensities (1/50/99 %:" in range_warning and "differ from the training" in range_warning
    )
    assert plan.dtype == "uint16"
    assert process.make_plan(packages["sr"], packages["lr_tif"], **OPTIONS).warnings == ()


def test_an_unzipped_package_folder_works_like_the_zip(packages, tmp_path):
    folder = tmp_path / "package"
    with zipfile.ZipFile(packages["sr"]) as archive:
        archive.extractall(folder)
    assert bioimage.inspect(folder)["files"] == bioimage.inspect(packages["sr"])["files"]
    outputs = []
    for package in (packages["sr"], folder):
        target = str(tmp_path / f"{package.name}.ome.zarr")
        process.apply_package(package, packages["lr_tif"], target, progress=False, **OPTIONS)
        outputs.append(io.read_volume(target)[0])
    np.testing.assert_array_equal(*outputs)
    (folder / "weights.pt").write_bytes(b"not weights")
    with pytest.raises(InputError, match=r"damaged package: weights\.pt has sha256"):
        bioimage.inspect(folder)
