"""Reading and writing EM volumes: TIFF, HDF5, Zarr and OME-Zarr.

This is the only module that touches volume files. Volumes are 3D arrays ordered
(z, y, x); voxel sizes are tuples of three floats (z, y, x) in nanometres, or ``None``
when the file does not give one. A volume location ("spec") is a path ending in
``.tif``/``.tiff``, ``.h5``/``.hdf5``/``.hdf`` followed by ``:/dataset``, or
``.zarr``/``.ome.zarr`` optionally followed by ``:array`` (see :func:`parse_path`).
Readers stream slabs of sections; writers take slabs and publish the file atomically.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import tifffile
import zarr
from numcodecs import Blosc

from .errors import InputError

__all__ = [
    "ZARR_OPTIONS",
    "VolumeReader",
    "VolumeWriter",
    "atomic_output",
    "from_float01",
    "ngff_multiscales",
    "open_volume",
    "parse_path",
    "read_volume",
    "to_float01",
    "write_slabs",
    "write_volume",
]

VoxelSize = tuple[float, float, float]

_SPEC = re.compile(r"^(.+?\.(h5|hdf5|hdf|zarr|tiff?))(?::(.*))?$", re.IGNORECASE)
_UNIT_NM = {
    **dict.fromkeys(("nm", "nanometer", "nanometre"), 1.0),
    **dict.fromkeys(("um", "µm", "μm", "micron", "micrometer", "micrometre"), 1e3),
    **dict.fromkeys(("mm", "millimeter", "millimetre"), 1e6),
    **dict.fromkeys(("cm", "centimeter", "centimetre"), 1e7),
    **dict.fromkeys(("å", "angstrom"), 0.1),
    "inch": 2.54e7,
}
# Zarr array options: Blosc/LZ4 (the Zarr 2 default, read by Fiji and napari), "/" keys (NGFF).
ZARR_OPTIONS = {
    "compressors": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
    "chunk_key_encoding": {"name": "v2", "separator": "/"},
    "fill_value": 0,
}
# What the file libraries and codecs raise for unreadable or corrupt files.
_LIBRARY_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError)
_LIBRARY_ERRORS += (zlib.error, ET.ParseError)


def _split(spec: str | os.PathLike) -> tuple[Path, str, str | None]:
    """Split a spec into (file path, kind 'tiff'/'hdf5'/'zarr', key or None)."""
    match = _SPEC.match(str(spec).strip().rstrip("/"))
    if match is None:
        raise InputError(
            f"{spec}: unsupported volume location; expected .tif, .tiff, .h5:/dataset, "
            ".hdf5:/dataset, .hdf:/dataset, .zarr or .ome.zarr"
        )
    path, key = Path(match[1]), match[3] or None
    kind = {"h": "hdf5", "z": "zarr", "t": "tiff"}[match[2][0].lower()]
    if kind == "tiff" and key:
        raise InputError(f"{spec}: a TIFF takes no ':{key}'")
    return path, kind, key


def parse_path(spec: str) -> tuple[Path, str | None]:
    """Split a volume location into the file path and the key inside the file.

    Parameters
    ----------
    spec : str
        ``a.tif``, ``a.h5:/volumes/raw``, ``a.zarr``, ``a.zarr:raw`` or ``a.ome.zarr``.

    Returns
    -------
    path : Path
        The file (or Zarr directory).
    key : str or None
        HDF5 dataset or Zarr array path; ``None`` for TIFF and whole Zarr stores.

    Raises
    ------
    InputError
        For an unknown suffix, a TIFF with a key, or an HDF5 location without a key
        unless the file exists and holds exactly one 3D dataset (then that one is used).
    """
    path, kind, key = _split(spec)
    if kind == "hdf5" and key is None:
        key = _only_3d_dataset(path)
    return path, key


def _only_3d_dataset(path: Path) -> str:
    hint = f"give the dataset after a colon, as '{path}:/dataset'"
    if not path.is_file():
        raise InputError(f"{path}: HDF5 location without a dataset; {hint}")
    with _reading(path), h5py.File(path, "r") as file:
        names: list[str] = []
        file.visititems(
            lambda name, obj: names.append(f"/{name}") if getattr(obj, "ndim", 0) == 3 else None
        )
    if len(names) != 1:
        raise InputError(f"{path}: {len(names)} 3D datasets {names}; {hint}")
    return names[0]


@contextlib.contextmanager
def _reading(path: str | Path) -> Iterator[None]:
    """Turn a library's error about an unreadable file into an InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except _LIBRARY_ERRORS as err:
        raise InputError(
            f"{path}: cannot read (corrupt file or wrong format): {type(err).__name__}: {err}"
        ) from err


def _unit_nm(unit: str | None) -> float | None:
    """Nanometres per unit, or None for a missing or unknown unit."""
    text = str(unit or "").replace("\\u00B5", "µ").replace("\\u00C5", "Å").strip().lower()
    return _UNIT_NM.get(text, _UNIT_NM.get(text.removesuffix("s")))


def _voxel(values: object, scale: float = 1.0) -> VoxelSize | None:
    """Three positive finite sizes times ``scale``, or None if ``values`` is not that."""
    try:
        sizes = tuple(float(v) * scale for v in np.ravel(values))
    except (TypeError, ValueError):
        return None
    ok = len(sizes) == 3 and all(math.isfinite(v) and v > 0 for v in sizes)
    return sizes if ok else None


class _TiffPages:
    """Array-like view of a TIFF's first series that reads only the pages sliced."""

    def __init__(self, tif: tifffile.TiffFile):
        self._tif, self._series = tif, tif.series[0]
        self.shape = tuple(self._series.shape)
        self.dtype = np.dtype(self._series.dtype).newbyteorder("=")

    def __getitem__(self, zslice: slice) -> np.ndarray:
        z0, z1, _ = zslice.indices(self.shape[0])
        plane = self.shape[1:]
        if z1 <= z0:
            return np.empty((0, *plane), self.dtype)
        if self._series.dataoffset is not None:  # contiguous pixels: read just those bytes
            count = math.prod(plane)
            offset = self._series.dataoffset + z0 * count * self.dtype.itemsize
            typecode = self._tif.byteorder + self.dtype.char
            data = self._tif.filehandle.read_array(typecode, (z1 - z0) * count, offset=offset)
        else:
            data = self._tif.asarray(key=slice(z0, z1), series=self._series)
        return data.reshape(z1 - z0, *plane).astype(self.dtype, copy=False)


def _tiff_voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    if tif.is_ome:
        root = ET.fromstring(tif.ome_metadata)
        pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
        if pixels is None:
            return None
        sizes = [
            float(pixels.get(f"PhysicalSize{a}", "nan"))
            * (_unit_nm(pixels.get(f"PhysicalSize{a}Unit", "µm")) or math.nan)
            for a in "ZYX"
        ]
        return _voxel(sizes)
    meta, tags = tif.imagej_metadata or {}, tif.pages[0].tags
    unit = meta.get("unit") or {2: "inch", 3: "cm"}.get(int(tags.valueof("ResolutionUnit", 1)))
    scale, x, y = _unit_nm(unit), tags.valueof("XResolution"), tags.valueof("YResolution")
    if "spacing" not in meta or scale is None or not (x and y and x[0] and y[0]):
        return None
    return _voxel((meta["spacing"], y[1] / y[0], x[1] / x[0]), scale)


def _open_tiff(path: Path, key: str | None, stack: contextlib.ExitStack):
    tif = stack.enter_context(tifffile.TiffFile(path))
    return _TiffPages(tif), _tiff_voxel_size(tif)


def _open_hdf5(path: Path, key: str, stack: contextlib.ExitStack):
    data = stack.enter_context(h5py.File(path, "r")).get(key)
    if not isinstance(data, h5py.Dataset):
        raise InputError(f"{path}: no dataset {key!r} in the file")
    attrs = data.attrs
    voxel = _voxel(attrs.get("voxel_size_nm")) or _voxel(attrs.get("element_size_um"), 1e3)
    return data, voxel or _voxel(attrs.get("resolution"))


def _open_zarr(path: Path, key: str | None, stack: contextlib.ExitStack):
    node = zarr.open(store=str(path), mode="r")
    attrs = node.attrs.asdict()
    multiscales = (attrs.get("ome") or attrs).get("multiscales")  # NGFF 0.5 or 0.4
    if isinstance(node, zarr.Array):
        if key:
            raise InputError(f"{path}: is a Zarr array and takes no ':{key}'")
        return node, _voxel(attrs.get("voxel_size_nm"))
    processing = attrs.get("emsrflow_processing") or {}
    if processing.get("status") == "incomplete":
        raise InputError(
            f"{path}: incomplete: slab jobs are still writing it (or failed); rerun the "
            "workflow, whose final step publishes it"
        )
    if key is None and not multiscales:
        raise InputError(f"{path}: Zarr group without OME-NGFF multiscales; give ':array'")
    key = (key or multiscales[0]["datasets"][0]["path"]).strip("/")
    array = node.get(key)
    if not isinstance(array, zarr.Array):
        raise InputError(f"{path}: no Zarr array {key!r} in the group")
    voxel = _ngff_voxel_size(multiscales[0], key) if multiscales else None
    return array, voxel or _voxel(array.attrs.get("voxel_size_nm"))


def _ngff_voxel_size(multiscale: dict, key: str) -> VoxelSize | None:
    """Scale of dataset ``key`` of an OME-NGFF multiscale, in nm, if its axes have units."""
    dataset = next((d for d in multiscale.get("datasets", []) if d.get("path") == key), None)
    axes = multiscale.get("axes", [])
    if dataset is None or len(axes) != 3:
        return None
    transforms = [*dataset.get("coordinateTransformations", [])]
    transforms += multiscale.get("coordinateTransformations", [])
    scales = [t["scale"] for t in transforms if t.get("type") == "scale"] or [[1.0] * 3]
    factors = [_unit_nm(a.get("unit")) if isinstance(a, dict) else None for a in axes]
    if None in factors or any(len(s) != 3 for s in scales):
        return None
    return _voxel(np.prod(np.asarray(scales, float), axis=0) * factors)


class VolumeReader:
    """An open volume that reads slabs of sections on demand; use :func:`open_volume`.

    Parameters
    ----------
    spec : str
        Volume location (see :func:`parse_path`).

    Attributes
    ----------
    path : str
        The spec, as given; error messages start with it.
    shape : tuple of int
        (z, y, x).
    dtype : numpy.dtype
        Voxel type.
    voxel_size : tuple of float or None
        (z, y, x) in nm, or None when the file gives none.

    Raises
    ------
    InputError
        If the file is missing, unreadable or not a 3D volume.
    """

    def __init__(self, spec: str):
        self.path = str(spec)
        path, kind, key = _split(spec)
        if not path.exists():
            raise InputError(f"{self.path}: file not found")
        self._stack = contextlib.ExitStack()
        opener = {"tiff": _open_tiff, "hdf5": _open_hdf5, "zarr": _open_zarr}[kind]
        try:
            with _reading(self.path):
                key = _only_3d_dataset(path) if kind == "hdf5" and key is None else key
                self._data, self.voxel_size = opener(path, key, self._stack)
                self.shape = tuple(int(n) for n in self._data.shape)
                self.dtype = np.dtype(self._data.dtype)
            if len(self.shape) != 3:
                raise InputError(
                    f"{self.path}: expected a 3D (z, y, x) volume, got shape {self.shape}"
                )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> VolumeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying file."""
        self._stack.close()

    def read(self, z0: int = 0, z1: int | None = None) -> np.ndarray:
        """Read sections ``z0`` to ``z1`` (exclusive; default: to the end).

        Returns
        -------
        numpy.ndarray
            Shape (z1 - z0, y, x); only those sections are read from the file.
        """
        z1 = self.shape[0] if z1 is None else z1
        if not 0 <= z0 <= z1 <= self.shape[0]:
            raise ValueError(f"{self.path}: sections {z0}:{z1} outside 0:{self.shape[0]}")
        with _reading(self.path):
            return np.asarray(self._data[z0:z1])

    def __getitem__(self, index: tuple[int | slice, slice, slice]) -> np.ndarray:
        """Read a box, ``reader[z, y0:y1, x0:x1]`` or ``reader[z0:z1, y0:y1, x0:x1]``.

        Zarr and HDF5 read only the chunks the box touches (training patches, slabs of
        rows or columns); TIFF reads one whole section at a time.
        """
        z, rows, cols = index
        if isinstance(z, slice):
            start, stop, step = z.indices(self.shape[0])
            if step != 1:
                raise ValueError(f"{self.path}: section step {step} is not supported")
            with _reading(self.path):
                if isinstance(self._data, _TiffPages):
                    box = [self._data[k : k + 1][0, rows, cols] for k in range(start, stop)]
                    return np.stack(box) if box else np.asarray(self._data[0:0][:, rows, cols])
                return np.asarray(self._data[start:stop, rows, cols])
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"{self.path}: section {z} outside 0:{self.shape[0]}")
        with _reading(self.path):
            if isinstance(self._data, _TiffPages):
                return self._data[z : z + 1][0, rows, cols]
            return np.asarray(self._data[z, rows, cols])

    def slabs(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Iterate over the volume in order, ``size`` sections at a time.

        Yields
        ------
        z0 : int
            First section of the slab.
        slab : numpy.ndarray
            Sections ``z0`` to ``z0 + size`` (fewer at the end).
        """
        if size < 1:
            raise ValueError(f"slab size must be at least 1, got {size}")
        for z0 in range(0, self.shape[0], size):
            yield z0, self.read(z0, min(z0 + size, self.shape[0]))

    def validate(self, *, slab: int = 16) -> None:
        """Check the volume, streaming ``slab`` sections at a time.

        Raises
        ------
        InputError
            If the volume is empty, holds NaN or infinite values, or is constant.
        """
        if 0 in self.shape:
            raise InputError(f"{self.path}: empty volume of shape {self.shape}")
        low, high = math.inf, -math.inf
        for z0, data in self.slabs(slab):
            if np.issubdtype(data.dtype, np.inexact):
                bad = np.flatnonzero(~np.isfinite(data).all(axis=(1, 2)))
                if bad.size:
                    what = "NaN" if np.isnan(data[bad[0]]).any() else "infinite values"
                    raise InputError(f"{self.path}: contains {what} in section z={z0 + bad[0]}")
            low, high = min(low, float(data.min())), max(high, float(data.max()))
        if low == high:
            raise InputError(f"{self.path}: constant volume (every voxel is {low:g})")


def open_volume(spec: str) -> VolumeReader:
    """Open a volume for reading (a context manager).

    Parameters
    ----------
    spec : str
        Volume location (see :func:`parse_path`).

    Returns
    -------
    VolumeReader
    """
    return VolumeReader(spec)


def _temporary(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` onto ``final``, replacing a file or directory there."""
    old = None
    if final.is_dir() and not final.is_symlink():
        old = _temporary(final)
        final.rename(old)
    elif tmp.is_dir() and (final.exists() or final.is_symlink()):
        final.unlink()
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _ranges(indices: np.ndarray) -> str:
    """``[0, 1, 2, 5]`` → ``'0-2, 5'``."""
    runs = np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)
    return ", ".join(f"{r[0]}" if r.size == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def ngff_multiscales(name: str, voxel_size: Sequence[float]) -> list[dict]:
    """OME-NGFF 0.4 ``multiscales`` metadata of one level ``"0"`` (axes z, y, x in nm)."""
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [float(v) for v in voxel_size]}]
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": scale}],
        }
    ]


class VolumeWriter:
    """Write a volume slab by slab, publishing it atomically (a context manager).

    Data go to a hidden temporary sibling (``.<name>.tmp-<random>``). On a clean exit
    from the ``with`` block every section must have been written exactly once; the
    temporary then replaces ``spec`` (an existing file or directory there is replaced;
    an HDF5 file then holds only this dataset). On an exception nothing is left.

    Formats by suffix: ``.zarr``/``.ome.zarr``: OME-NGFF 0.4 on Zarr format 2, one
    level ``"0"``, axes z, y, x in nanometres, Blosc-compressed chunks;
    ``.tif``/``.tiff``: an ImageJ hyperstack (uint8, uint16, int16 or float32) with pixel size
    in µm, uncompressed so that slabs are written in place; ``.h5:/key``: a chunked,
    gzip-compressed dataset with attributes ``voxel_size_nm`` and ``element_size_um``.

    Parameters
    ----------
    spec : str
        Output location (see :func:`parse_path`); HDF5 needs ``:/dataset``.
    shape : sequence of int
        (z, y, x), all positive.
    dtype : numpy.dtype or str
        Voxel type; slabs are cast to it (``same_kind`` casting).
    voxel_size : sequence of float
        (z, y, x) in nm.
    chunks : sequence of int, optional
        Zarr and HDF5 chunk shape; default (16, 256, 256), clipped to the shape.
    """

    def __init__(self, spec, shape, dtype, voxel_size, *, chunks: Sequence[int] | None = None):
        self.path = str(spec)
        self._final, kind, self._key = _split(spec)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.voxel_size = _voxel(voxel_size)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"{self.path}: cannot write shape {self.shape}; need 3 sizes > 0")
        if self.voxel_size is None:
            raise InputError(f"{self.path}: voxel size must be 3 positive nm, got {voxel_size}")
        if (kind == "hdf5") != bool(self._key):
            raise InputError(f"{self.path}: HDF5 needs ':/dataset', other formats take no key")
        chunks = tuple(min(c, n) for c, n in zip(chunks or (16, 256, 256), self.shape, strict=True))
        self._written = np.zeros(self.shape[0], bool)
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temporary(self._final)
        self._stack = contextlib.ExitStack()
        self._done = False
        try:
            self._data = {"tiff": self._tiff, "hdf5": self._hdf5, "zarr": self._zarr}[kind](chunks)
        except BaseException as err:
            self.abort()
            if isinstance(err, TypeError | ValueError) and not isinstance(err, InputError):
                raise InputError(f"{self.path}: cannot create: {err}") from err
            raise

    def _tiff(self, chunks: tuple[int, ...]):
        z, y, x = (v / 1e3 for v in self.voxel_size)
        meta = {"axes": "ZYX", "spacing": z, "unit": "um"}
        imagej = {"imagej": True, "resolution": (1 / x, 1 / y), "metadata": meta}
        return tifffile.memmap(self._tmp, shape=self.shape, dtype=self.dtype, **imagej)

    def _hdf5(self, chunks: tuple[int, ...]):
        file = self._stack.enter_context(h5py.File(self._tmp, "w"))
        data = file.create_dataset(
            self._key, self.shape, self.dtype, chunks=chunks, compression="gzip", shuffle=True
        )
        data.attrs["voxel_size_nm"] = self.voxel_size
        data.attrs["element_size_um"] = [v / 1e3 for v in self.voxel_size]
        return data

    def _zarr(self, chunks: tuple[int, ...]):
        group = zarr.open_group(self._tmp, mode="w", zarr_format=2)
        group.attrs["multiscales"] = ngff_multiscales(self._final.name, self.voxel_size)
        return group.create_array(
            "0", shape=self.shape, dtype=self.dtype, chunks=chunks, **ZARR_OPTIONS
        )

    def __enter__(self) -> VolumeWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, z0: int, slab: np.ndarray) -> None:
        """Write ``slab`` (shape (n, y, x)) as sections ``z0`` to ``z0 + n``."""
        slab = np.asarray(slab)
        z1 = z0 + (slab.shape[0] if slab.ndim == 3 else 0)
        if slab.shape[1:] != self.shape[1:] or not 0 <= z0 < z1 <= self.shape[0]:
            raise ValueError(f"{self.path}: slab {slab.shape} at z={z0} outside {self.shape}")
        if self._written[z0:z1].any():
            again = _ranges(z0 + np.flatnonzero(self._written[z0:z1]))
            raise ValueError(f"{self.path}: sections {again} written twice")
        self._data[z0:z1] = slab.astype(self.dtype, casting="same_kind", copy=False)
        self._written[z0:z1] = True

    def close(self) -> None:
        """Check that every section was written, then move the file into place.

        Raises
        ------
        RuntimeError
            If sections are missing (the temporary is removed, nothing is published).
        """
        if self._done:
            return
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise RuntimeError(f"{self.path}: sections {_ranges(missing)} never written")
        self._release()
        _replace(self._tmp, self._final)

    def abort(self) -> None:
        """Discard everything written; ``spec`` is left as it was."""
        if not self._done:
            self._release()
            _remove(self._tmp)

    def _release(self) -> None:
        if isinstance(getattr(self, "_data", None), np.memmap):
            self._data.flush()
        self._data, self._done = None, True
        self._stack.close()


def write_volume(spec: str, array: np.ndarray, voxel_size, *, chunks=None) -> None:
    """Write a whole in-memory volume atomically (see :class:`VolumeWriter`)."""
    array = np.asarray(array)
    with VolumeWriter(spec, array.shape, array.dtype, voxel_size, chunks=chunks) as writer:
        writer.write(0, array)


def write_slabs(
    spec: str,
    shape: Sequence[int],
    voxel_size,
    render: Callable[[int, int], np.ndarray],
    *,
    slab: int,
    chunks: Sequence[int] | None = None,
    dtype=None,
) -> None:
    """Write a volume computed ``slab`` sections at a time, ``render(z0, z1)`` each.

    Parameters
    ----------
    spec, shape, voxel_size, chunks
        As for :class:`VolumeWriter`.
    render : callable
        ``render(z0, z1)`` returns sections ``z0`` to ``z1`` (exclusive), called in order.
    slab : int
        Sections per call: memory holds one slab, whatever the depth.
    dtype : numpy.dtype, optional
        Voxel type; default that of the first slab.
    """
    first = np.asarray(render(0, min(slab, shape[0])))
    dtype = first.dtype if dtype is None else dtype
    with VolumeWriter(spec, shape, dtype, voxel_size, chunks=chunks) as writer:
        writer.write(0, first)
        for z0 in range(slab, shape[0], slab):
            writer.write(z0, render(z0, min(z0 + slab, shape[0])))


def read_volume(spec: str) -> tuple[np.ndarray, VoxelSize | None]:
    """Read a whole volume and its voxel size (nm, or None if the file gives none)."""
    with open_volume(spec) as volume:
        return volume.read(), volume.voxel_size


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write a small file atomically: yield a temporary sibling, then rename it.

    The temporary (``.<name>.tmp-<random><suffix>``, keeping the suffix so that format
    guessing from it works) replaces ``path`` when the block succeeds and is removed
    when it raises.

    Yields
    ------
    Path
        Where the caller writes.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final, final.suffix)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, final)


def to_float01(array: np.ndarray) -> np.ndarray:
    """Intensities as float32: integers over their dtype's maximum, bool as 0/1.

    Floats are cast to float32 unchanged.
    """
    array = np.asarray(array)
    if array.dtype.kind == "b" or np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        return np.divide(array, np.iinfo(array.dtype).max, dtype=np.float32)
    raise TypeError(f"cannot scale intensities of dtype {array.dtype}")


def from_float01(array: np.ndarray, dtype) -> np.ndarray:
    """Inverse of :func:`to_float01`: clip to [0, 1] (never wrap), then scale and round.

    Bool output is ``value >= 0.5``; float output is the clipped values.
    """
    dtype, clipped = np.dtype(dtype), np.clip(np.asarray(array, dtype=np.float64), 0.0, 1.0)
    if dtype.kind == "b":
        return clipped >= 0.5
    if np.issubdtype(dtype, np.integer):
        return np.rint(clipped * np.iinfo(dtype).max).astype(dtype)
    return clipped.astype(dtype)
