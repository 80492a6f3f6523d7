"""Tests of emsrflow.io: formats, round trips, atomic writing and bad input."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from emsrflow import io
from emsrflow.errors import InputError

VOXEL = (33.3, 3.7, 5.0)
SPECS = ["vol.tif", "vol.tiff", "vol.h5:/volumes/raw", "vol.hdf5:raw", "vol.ome.zarr", "vol.zarr"]


def volume(dtype, shape=(7, 9, 11), seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    return rng.random(shape, dtype=np.float32).astype(dtype)


def leftovers(directory: Path):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("name", SPECS)
def test_round_trip_keeps_data_and_voxel_size(tmp_path, name, dtype):
    data = volume(dtype)
    spec = f"{tmp_path}/{name}"
    io.write_volume(spec, data, VOXEL, chunks=(2, 4, 4))
    read, voxel = io.read_volume(spec)
    assert read.dtype == data.dtype
    np.testing.assert_array_equal(read, data)
    np.testing.assert_allclose(voxel, VOXEL, rtol=1e-6)
    with io.open_volume(spec) as vol:
        assert vol.path == spec and vol.shape == data.shape and vol.dtype == data.dtype
        vol.validate(slab=3)
    assert leftovers(tmp_path) == [name.split(":")[0]]


@pytest.mark.parametrize("name", SPECS)
def test_slabwise_writing_equals_whole_writing(tmp_path, name):
    data = volume(np.uint16)
    whole, slabs = f"{tmp_path}/whole_{name}", f"{tmp_path}/slabs_{name}"
    io.write_volume(whole, data, VOXEL)
    with io.VolumeWriter(slabs, data.shape, data.dtype, VOXEL, chunks=(2, 5, 5)) as writer:
        for z0 in (4, 0, 2, 6):  # any order, slabs not aligned with chunks
            writer.write(z0, data[z0 : z0 + 2])
    np.testing.assert_array_equal(io.read_volume(slabs)[0], io.read_volume(whole)[0])
    with io.open_volume(slabs) as vol:
        got = list(vol.slabs(3))
    assert [z0 for z0, _ in got] == [0, 3, 6]
    np.testing.assert_array_equal(np.concatenate([s for _, s in got]), data)


def test_write_slabs_renders_in_order_and_takes_dtype_from_first_slab(tmp_path):
    data, calls = volume(np.float32), []

    def render(z0, z1):
        calls.append((z0, z1))
        return data[z0:z1]

    io.write_slabs(tmp_path / "out.ome.zarr", data.shape, VOXEL, render, slab=3)
    assert calls == [(0, 3), (3, 6), (6, 7)]
    np.testing.assert_array_equal(io.read_volume(tmp_path / "out.ome.zarr")[0], data)
    io.write_slabs(
        tmp_path / "u16.h5:/raw",
        (2, 3, 4),
        VOXEL,
        lambda a, b: np.ones((b - a, 3, 4), "u1"),
        slab=1,
        dtype=np.uint16,
    )
    assert io.read_volume(tmp_path / "u16.h5:/raw")[0].dtype == np.uint16


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_slab_reads_only_its_pages(tmp_path, compression):
    data = volume(np.uint16, shape=(6, 8, 10))
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
    if compression:  # corrupt the last page: a slab without it still reads
        with tifffile.TiffFile(path) as tif:
            offset, count = tif.pages[5].dataoffsets[0], tif.pages[5].databytecounts[0]
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(b"\xff" * count)
    with io.open_volume(str(path)) as vol:
        assert vol.shape == data.shape
        slab = vol.read(2, 4)
        assert slab.shape == (2, 8, 10)
        np.testing.assert_array_equal(slab, data[2:4])
        if compression:
            with pytest.raises(InputError, match=r"pages\.tif: cannot read"):
                vol.read()


def test_tiff_written_is_one_imagej_hyperstack(tmp_path):
    path = tmp_path / "stack.tif"
    io.write_volume(str(path), volume(np.uint8), VOXEL)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and len(tif.series) == 1
        assert tif.series[0].shape == (7, 9, 11)
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.0333)
        x = tif.pages[0].tags["XResolution"].value
        assert x[0] / x[1] == pytest.approx(1 / 0.005)  # pixels per µm


def test_ome_zarr_is_read_by_reference_reader(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = volume(np.uint8)
    path = tmp_path / "ref.ome.zarr"
    io.write_volume(str(path), data, VOXEL)
    node = next(iter(Reader(parse_url(path, fmt=FormatV04()))()))
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in node.metadata["axes"]} == {"nanometer"}
    assert node.metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": list(VOXEL)}
    ]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert zarr.open_array(path / "0", mode="r").metadata.zarr_format == 2


@pytest.mark.parametrize("name", ["out.tif", "out.h5:/raw", "out.ome.zarr"])
def test_exception_in_writer_leaves_nothing(tmp_path, name):
    with pytest.raises(KeyError), io.VolumeWriter(f"{tmp_path}/{name}", (4, 5, 6), "u1", VOXEL):
        raise KeyError("boom")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["out.tif", "out.h5:/raw", "out.ome.zarr"])
def test_missing_sections_raise_and_leave_nothing(tmp_path, name):
    spec = f"{tmp_path}/{name}"
    with pytest.raises(RuntimeError, match=r"out\..*sections 1-2, 4 never written"):
        with io.VolumeWriter(spec, (5, 4, 4), "u1", VOXEL) as writer:
            writer.write(0, np.ones((1, 4, 4), np.uint8))
            writer.write(3, np.ones((1, 4, 4), np.uint8))
    assert leftovers(tmp_path) == []


def test_writer_rejects_sections_written_twice(tmp_path):
    with pytest.raises(ValueError, match="sections 2 written twice"):
        with io.VolumeWriter(tmp_path / "a.ome.zarr", (4, 2, 2), "u1", VOXEL) as writer:
            writer.write(0, np.zeros((3, 2, 2), np.uint8))
            writer.write(2, np.zeros((2, 2, 2), np.uint8))
    assert leftovers(tmp_path) == []


def test_writer_rejects_a_dtype_imagej_cannot_hold(tmp_path):
    with pytest.raises(InputError, match=r"f64\.tif: cannot create: .*ImageJ"):
        io.VolumeWriter(tmp_path / "f64.tif", (2, 3, 4), np.float64, VOXEL)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["old.tif", "old.ome.zarr"])
def test_writer_replaces_existing_output(tmp_path, name):
    spec = f"{tmp_path}/{name}"
    io.write_volume(spec, volume(np.uint8, seed=1), VOXEL)
    new = volume(np.uint8, seed=2)
    io.write_volume(spec, new, (1.0, 2.0, 3.0))
    read, voxel = io.read_volume(spec)
    np.testing.assert_array_equal(read, new)
    assert voxel == pytest.approx((1.0, 2.0, 3.0))
    assert leftovers(tmp_path) == [name]


def test_atomic_output(tmp_path):
    target = tmp_path / "sub" / "table.tsv"
    with io.atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".")
        assert tmp.suffix == ".tsv" and not target.exists()
        tmp.write_text("a\tb\n")
    assert target.read_text() == "a\tb\n"
    with pytest.raises(OSError), io.atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise OSError("disk full")
    assert target.read_text() == "a\tb\n"
    assert leftovers(target.parent) == ["table.tsv"]


def _bad_volume(tmp_path, case):
    """Write one kind of bad input; return its spec."""
    path = tmp_path / f"bad_{case}.tif"
    if case == "missing":
        return str(tmp_path / "absent.h5:/raw")
    if case == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "2d":
        tifffile.imwrite(path, volume(np.uint8, shape=(9, 11)))
    elif case in ("nan", "inf"):
        data = volume(np.float32)
        data[5, 3, 2] = np.nan if case == "nan" else -np.inf
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    elif case == "empty":
        path = tmp_path / "bad_empty.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", shape=(0, 4, 4), dtype="u1")
        return f"{path}:/raw"
    elif case == "constant":
        zarr.create_array(tmp_path / "bad_constant.zarr", shape=(4, 5, 6), dtype="u2")[:] = 7
        return str(tmp_path / "bad_constant.zarr")
    elif case == "nokey":
        path = tmp_path / "bad_nokey.h5"
        with h5py.File(path, "w") as f:
            f["a"], f["b"] = volume(np.uint8), volume(np.uint8)
        return str(path)
    elif case == "corrupt_zarr":
        (tmp_path / "bad_corrupt.zarr").mkdir()
        (tmp_path / "bad_corrupt.zarr" / ".zarray").write_text("{not json")
        return str(tmp_path / "bad_corrupt.zarr")
    elif case == "corrupt_h5":
        path = tmp_path / "bad_corrupt.h5"
        path.write_bytes(b"not an HDF5 file" * 64)
        return f"{path}:/raw"
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"absent\.h5:/raw: file not found"),
        ("corrupt", r"bad_corrupt\.tif: cannot read"),
        ("corrupt_zarr", r"bad_corrupt\.zarr: cannot read"),
        ("corrupt_h5", r"bad_corrupt\.h5:/raw: cannot read"),
        ("2d", r"bad_2d\.tif: expected a 3D \(z, y, x\) volume, got shape \(9, 11\)"),
        ("nan", r"bad_nan\.tif: contains NaN in section z=5"),
        ("inf", r"bad_inf\.tif: contains infinite values in section z=5"),
        ("empty", r"bad_empty\.h5:/raw: empty volume"),
        ("constant", r"bad_constant\.zarr: constant volume \(every voxel is 7\)"),
        ("nokey", r"bad_nokey\.h5: 2 3D datasets \['/a', '/b'\]"),
    ],
)
def test_bad_input_raises_input_error_naming_the_file(tmp_path, case, message):
    spec = _bad_volume(tmp_path, case)
    with pytest.raises(InputError, match=message):
        with io.open_volume(spec) as vol:
            vol.validate(slab=2)


def test_hdf5_without_key_uses_the_only_3d_dataset(tmp_path):
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f["group/raw"] = volume(np.uint8)
        f["mask"] = np.ones((3, 3), np.uint8)
    assert io.parse_path(str(path)) == (path, "/group/raw")
    np.testing.assert_array_equal(io.read_volume(str(path))[0], volume(np.uint8))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("data/a.h5:/volumes/raw", (Path("data/a.h5"), "/volumes/raw")),
        ("data/a.HDF:raw", (Path("data/a.HDF"), "raw")),
        ("d.zarr/x.hdf5:/raw", (Path("d.zarr/x.hdf5"), "/raw")),
        ("a.ome.zarr/", (Path("a.ome.zarr"), None)),
        ("a.zarr:labels/0", (Path("a.zarr"), "labels/0")),
        ("stack.TIFF", (Path("stack.TIFF"), None)),
    ],
)
def test_parse_path(spec, expected):
    assert io.parse_path(spec) == expected


@pytest.mark.parametrize("spec", ["a.png", "a.tif:/raw", "absent.h5"])
def test_parse_path_rejects(spec):
    with pytest.raises(InputError, match=spec.split(":")[0].replace(".", r"\.")):
        io.parse_path(spec)


@pytest.mark.parametrize(
    ("unit", "resolution", "spacing", "expected"),
    [
        ("um", 1 / 0.004, 0.03, (30.0, 4.0, 4.0)),
        ("micron", 1 / 0.005, 0.05, (50.0, 5.0, 5.0)),
        ("\\u00B5m", 1 / 0.006, 0.04, (40.0, 6.0, 6.0)),
        ("nm", 1 / 8.0, 40.0, (40.0, 8.0, 8.0)),
        ("pixel", 1.0, 1.0, None),
    ],
)
def test_voxel_size_from_imagej_tiff(tmp_path, unit, resolution, spacing, expected):
    path = tmp_path / "ij.tif"
    meta = {"axes": "ZYX", "spacing": spacing, "unit": unit}
    tifffile.imwrite(
        path, volume(np.uint8), imagej=True, resolution=(resolution, resolution), metadata=meta
    )
    voxel = io.read_volume(str(path))[1]
    assert voxel == (pytest.approx(expected) if expected else None)


def test_voxel_size_from_ome_tiff(tmp_path):
    path = tmp_path / "x.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.005}
    meta |= {"PhysicalSizeZ": 30, "PhysicalSizeZUnit": "nm"}
    tifffile.imwrite(path, volume(np.uint16), metadata=meta)
    assert io.read_volume(str(path))[1] == pytest.approx((30.0, 5.0, 4.0))


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"element_size_um": [0.03, 0.004, 0.004]}, (30.0, 4.0, 4.0)),
        ({"resolution": [40.0, 4.0, 4.0]}, (40.0, 4.0, 4.0)),
        ({"voxel_size_nm": [50.0, 5.0, 6.0]}, (50.0, 5.0, 6.0)),
        ({}, None),
    ],
)
def test_voxel_size_from_hdf5_attributes(tmp_path, attrs, expected):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = volume(np.uint8)
        f["raw"].attrs.update(attrs)
    voxel = io.read_volume(f"{path}:/raw")[1]
    assert voxel == (pytest.approx(expected) if expected else None)


def test_voxel_size_from_ngff_05_in_micrometres(tmp_path):
    group = zarr.open_group(tmp_path / "v5.ome.zarr", mode="w", zarr_format=3)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [0.03, 0.004, 0.004]}]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": scale}]}
        ],
    }
    group.create_array("s0", shape=(3, 4, 5), dtype="u1")[:] = volume(np.uint8, (3, 4, 5))
    data, voxel = io.read_volume(str(tmp_path / "v5.ome.zarr"))
    assert data.shape == (3, 4, 5) and voxel == pytest.approx((30.0, 4.0, 4.0))


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        (np.uint8, [-0.5, 0.0, 0.5, 1.0, 1.7], [0, 0, 128, 255, 255]),
        (np.uint16, [-1.0, 1 / 65535, 1.0, 2.0], [0, 1, 65535, 65535]),
        (np.bool_, [-1.0, 0.2, 0.6, 3.0], [False, False, True, True]),
        (np.float32, [-0.25, 0.25, 1.5], [0.0, 0.25, 1.0]),
    ],
)
def test_from_float01_clips_instead_of_wrapping(dtype, values, expected):
    out = io.from_float01(np.array(values, np.float32), dtype)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.array(expected, dtype))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_to_float01_inverts_from_float01(dtype):
    data = volume(dtype)
    scaled = io.to_float01(data)
    assert scaled.dtype == np.float32 and 0.0 <= scaled.min() <= scaled.max() <= 1.0
    np.testing.assert_array_equal(io.from_float01(scaled, dtype), data)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([0, 51, 255], np.uint8), [0.0, 0.2, 1.0]),
        (np.array([0, 65535], np.uint16), [0.0, 1.0]),
        (np.array([False, True]), [0.0, 1.0]),
        (np.array([-0.5, 1.5], np.float64), [-0.5, 1.5]),
    ],
)
def test_to_float01_scales_integers_by_dtype_max(values, expected):
    out = io.to_float01(values)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-7)


def test_voxel_size_from_plain_zarr_attribute(tmp_path):
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    array = group.create_array("raw", shape=(3, 4, 5), dtype="u1")
    array[:] = volume(np.uint8, (3, 4, 5))
    array.attrs["voxel_size_nm"] = [40, 8, 8]
    with pytest.raises(InputError, match=r"plain\.zarr: Zarr group without OME-NGFF"):
        io.open_volume(tmp_path / "plain.zarr")
    data, voxel = io.read_volume(f"{tmp_path}/plain.zarr:raw")
    assert data.shape == (3, 4, 5) and voxel == (40.0, 8.0, 8.0)


@pytest.mark.parametrize("suffix", [".ome.zarr", ".tif", ".h5:/raw"])
def test_reader_reads_a_rectangle_of_one_section(tmp_path, suffix):
    data = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    spec = str(tmp_path / f"v{suffix}")
    io.write_volume(spec, data, (50.0, 15.0, 15.0), chunks=(1, 8, 8))
    with io.open_volume(spec) as reader:
        np.testing.assert_array_equal(reader[2, 3:11, 5:29], data[2, 3:11, 5:29])
        with pytest.raises(IndexError, match="section 4"):
            reader[4, 0:1, 0:1]
