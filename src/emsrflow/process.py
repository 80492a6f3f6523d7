"""Production processing: model packages applied to new acquisitions, in z-slab jobs.

A core facility trains once per tissue and microscope setting, then applies the model
package (:mod:`emsrflow.bioimage`) to every new acquisition. The work on one volume is
described by a :class:`Plan`: the package, the input and output grids, and the output
cut into *slabs* of sections along z. Each slab is computed on its own
(:func:`render_slab`: super-resolution of its sections, or the isotropic reconstruction
of its planes with ``halo`` planes of context, :func:`emsrflow.isotropic.reconstruct_block`),
so a slab is the same array whether it is computed in one job that walks the whole
volume (:func:`process_volume`, the ``emsrflow apply`` command) or in a job of its own.

Slab jobs of a workflow share one OME-Zarr output: :func:`create_store` makes the array
(z chunks dividing the slab, so no two jobs ever write the same chunk) and marks it
incomplete; :func:`write_slab` writes one slab's region; :func:`finalize_store` checks
that every chunk was written and only then adds the OME-NGFF multiscales metadata that
makes it a volume. A store that is incomplete, or was planned for another input or
model, is refused with a clear error.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from torch import nn

from .bioimage import (
    check_intensities,
    check_voxel_size,
    inspect,
    intensity_profile,
    load_package,
)
from .errors import InputError
from .io import (
    ZARR_OPTIONS,
    from_float01,
    ngff_multiscales,
    open_volume,
    parse_path,
    to_float01,
    write_slabs,
)

__all__ = [
    "STATUS_KEY",
    "Plan",
    "apply_package",
    "create_store",
    "finalize_store",
    "make_plan",
    "process_volume",
    "render_slab",
    "write_slab",
]

log = logging.getLogger(__name__)

#: Attribute of a slab-job store: the plan it was made for and whether it is complete.
STATUS_KEY = "emsrflow_processing"

#: Options of the network passes that change the result (and so belong to a plan).
_RESULT_OPTIONS = ("tile", "overlap", "batch", "tta", "precision")


@dataclass(frozen=True)
class Plan:
    """What one volume's processing makes, and how it is cut into slab jobs.

    Attributes
    ----------
    kind : {'super-resolution', 'isotropic'}
        The package's task.
    source : str
        Input volume.
    package : str
        Model package.
    package_sha256 : str
        Checksum of the package's weights (from its manifest).
    input_shape, output_shape : tuple of int
        (z, y, x) grids.
    input_voxel_nm, output_voxel_nm : tuple of float
        (z, y, x) voxel sizes in nm.
    dtype : str
        Output voxel type.
    slab : int
        Output sections per slab (one job each in a workflow).
    halo : int
        Isotropic: planes of context on each side of a slab (0 for super-resolution).
    chunks : tuple of int
        Output chunk shape; its z divides ``slab``.
    options : dict
        tile, overlap, batch, tta, precision (and passes for isotropic).
    warnings : tuple of str
        What the checks found acceptable but worth saying (voxel size, intensities).
    """

    kind: str
    source: str
    package: str
    package_sha256: str
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    input_voxel_nm: tuple[float, float, float]
    output_voxel_nm: tuple[float, float, float]
    dtype: str
    slab: int
    halo: int
    chunks: tuple[int, int, int]
    options: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def slabs(self) -> list[tuple[int, int]]:
        """Output z ranges [z0, z1) of the slabs, in order."""
        depth = self.output_shape[0]
        return [(z0, min(z0 + self.slab, depth)) for z0 in range(0, depth, self.slab)]

    @property
    def rho(self) -> float:
        """Isotropic: slice thickness of the input in lateral pixels."""
        return self.input_voxel_nm[0] / self.input_voxel_nm[2]

    def identity(self) -> dict[str, Any]:
        """Return the fields that determine the output (a store records them)."""
        plain = self.to_dict()
        plain.pop("warnings")
        plain["source"] = os.path.abspath(parse_path(self.source)[0])
        plain["package"] = self.package_sha256
        return plain

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; :meth:`from_dict` inverts it."""
        plain = asdict(self)
        for name in ("input_shape", "output_shape", "input_voxel_nm", "output_voxel_nm"):
            plain[name] = list(plain[name])
        plain["chunks"], plain["warnings"] = list(self.chunks), list(self.warnings)
        return plain

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> Plan:
        """Rebuild a plan from :meth:`to_dict`."""
        values = dict(plain)
        for name in ("input_shape", "output_shape", "chunks"):
            values[name] = tuple(int(v) for v in values[name])
        for name in ("input_voxel_nm", "output_voxel_nm"):
            values[name] = tuple(float(v) for v in values[name])
        values["warnings"] = tuple(values.get("warnings", ()))
        return cls(**values)


# ---------------------------------------------------------------------------------------
# Plans


def _output_dtype(volume_dtype: np.dtype, dtype: str) -> np.dtype:
    kind = np.dtype(volume_dtype) if dtype == "input" else np.dtype(dtype)
    return kind if kind.kind in "ui" else np.dtype(np.float32)


def make_plan(
    package: str | os.PathLike,
    source: str,
    *,
    slab: int = 16,
    halo: int = 16,
    voxel_size_nm: Sequence[float] | None = None,
    dtype: str = "input",
    chunks: Sequence[int] | None = None,
    tile: int = 128,
    overlap: int = 32,
    batch: int = 4,
    tta: bool = False,
    precision: str = "fp32",
    passes: Sequence[str] = ("xz", "yz"),
    tolerance: float = 0.1,
    ignore_voxel_size: bool = False,
) -> Plan:
    """Check a package against an input volume and plan the processing.

    Parameters
    ----------
    package : str or os.PathLike
        Model package (:func:`emsrflow.bioimage.export_package`).
    source : str
        Input volume (see :func:`emsrflow.io.parse_path`).
    slab : int
        Output sections per slab.
    halo : int
        Isotropic packages: planes of context on each side of a slab; must not exceed
        ``slab``.
    voxel_size_nm : sequence of float, optional
        (z, y, x) of the input, overriding the file's. Without either the package's
        training voxel size is assumed, with a warning.
    dtype : {'input', 'float32', 'uint8', 'uint16'}
        Output voxel type; ``input`` keeps an integer input's type (float: float32).
    chunks : sequence of int, optional
        Output chunk shape (z, y, x); its z is reduced to a divisor of ``slab``.
    tile, overlap, batch, tta, precision
        See :func:`emsrflow.infer.predict_section`.
    passes : sequence of {'xz', 'yz'}
        Isotropic packages: plane orientations run and averaged.
    tolerance : float
        Relative lateral pixel difference accepted silently
        (:func:`emsrflow.bioimage.check_voxel_size`).
    ignore_voxel_size : bool
        Only warn where the voxel size contradicts the package.

    Returns
    -------
    Plan

    Raises
    ------
    InputError
        If the package is damaged or foreign, the voxel size contradicts it, the slab is
        smaller than the halo, or an option is out of range.
    """
    info = inspect(package)
    if int(slab) < 1 or int(halo) < 0:
        raise InputError(f"slab must be ≥ 1 and halo ≥ 0 sections, got slab {slab}, halo {halo}")
    isotropic = info["kind"] == "isotropic"
    if isotropic and int(slab) < int(halo):
        raise InputError(
            f"slab of {slab} sections is smaller than the halo of {halo}: every job would "
            f"compute more context than output; use a slab of at least {halo} sections"
        )
    messages = []
    with open_volume(source) as volume:
        if len(volume.shape) != 3:
            raise InputError(f"{source}: need a 3D (z, y, x) volume, got shape {volume.shape}")
        voxel = tuple(float(v) for v in voxel_size_nm) if voxel_size_nm else volume.voxel_size
        if voxel is None:
            trained = info["voxel_size_nm"]["input"]
            if isotropic:
                trained = info["extra"].get("stack_voxel_size_nm") or trained
            voxel = tuple(float(v) for v in trained)
            messages.append(
                f"{source}: the file gives no voxel size; assuming the package's training "
                f"voxel size {voxel} nm (pass --voxel-size z,y,x to set it)"
            )
        else:
            found = check_voxel_size(info, voxel, tolerance=tolerance, strict=not ignore_voxel_size)
            messages += [f"{source}: {message}" for message in found]
        profile = intensity_profile(volume)
        messages += check_intensities(info, profile, what=source)
        shape, out_dtype = tuple(int(n) for n in volume.shape), _output_dtype(volume.dtype, dtype)
    if isotropic:
        from .isotropic import isotropic_depth

        out_shape = (isotropic_depth(shape[0], voxel[0] / voxel[2]), shape[1], shape[2])
        out_voxel = (voxel[2], voxel[1], voxel[2])
        default_chunks = (64, 64, 64)
    else:
        tau = info["tau"]
        out_shape = (shape[0], shape[1] * tau, shape[2] * tau)
        out_voxel = (voxel[0], voxel[1] / tau, voxel[2] / tau)
        default_chunks = (1, 512, 512)
    slab = min(int(slab), out_shape[0])
    chunk = tuple(min(int(c), n) for c, n in zip(chunks or default_chunks, out_shape, strict=True))
    chunk = (math.gcd(chunk[0], slab), *chunk[1:])
    options = {
        "tile": int(tile),
        "overlap": int(overlap),
        "batch": int(batch),
        "tta": bool(tta),
        "precision": precision,
    }
    if isotropic:
        options["passes"] = list(passes)
    return Plan(
        kind=info["kind"],
        source=str(source),
        package=str(package),
        package_sha256=info["files"].get("weights.pt") or next(iter(info["files"].values()), ""),
        input_shape=shape,
        output_shape=out_shape,
        input_voxel_nm=voxel,
        output_voxel_nm=tuple(float(v) for v in out_voxel),
        dtype=str(out_dtype),
        slab=slab,
        halo=int(halo) if isotropic else 0,
        chunks=chunk,
        options=options,
        warnings=tuple(messages),
    )


# ---------------------------------------------------------------------------------------
# Computing slabs


def render_slab(
    plan: Plan, model: nn.Module, volume: Any, z0: int, z1: int, *, device: str = "auto"
) -> np.ndarray:
    """Output sections ``z0`` to ``z1`` of a plan, in its output type.

    Parameters
    ----------
    plan : Plan
    model : torch.nn.Module
        The package's network (:func:`emsrflow.bioimage.load_package`).
    volume : emsrflow.io.VolumeReader or numpy.ndarray
        The plan's input; only what the slab needs is read.
    z0, z1 : int
        Output sections.
    device : str
        Where the network runs (see :func:`emsrflow.device.resolve_device`).

    Returns
    -------
    numpy.ndarray
        (z1 − z0, y, x) of ``plan.dtype``, intensities clipped to the type's range.
    """
    options = {k: plan.options[k] for k in _RESULT_OPTIONS} | {"device": device}
    if plan.kind == "isotropic":
        from .isotropic import reconstruct_block

        passes = plan.options["passes"]
        result = reconstruct_block(
            model, volume, plan.rho, z0, z1, halo=plan.halo, passes=passes, **options
        )
    else:
        from .infer import predict_stack

        result = predict_stack(model, to_float01(np.asarray(volume[z0:z1, :, :])), **options)
    return from_float01(result, plan.dtype)


def process_volume(
    plan: Plan,
    model: nn.Module,
    target: str,
    *,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Compute every slab of a plan in this process and write the output atomically.

    Parameters
    ----------
    plan : Plan
    model : torch.nn.Module
        The package's network.
    target : str
        Output volume (any format of :class:`emsrflow.io.VolumeWriter`).
    device : str
        Where the network runs.
    progress : bool
        Show a progress bar (tqdm).
    """
    from tqdm.auto import tqdm

    unit = "plane" if plan.kind == "isotropic" else "section"
    desc = "reconstructing" if plan.kind == "isotropic" else "super-resolving"
    with (
        open_volume(plan.source) as volume,
        tqdm(total=plan.output_shape[0], unit=unit, desc=desc, disable=not progress) as bar,
    ):

        def render(z0: int, z1: int) -> np.ndarray:
            block = render_slab(plan, model, volume, z0, z1, device=device)
            bar.update(z1 - z0)
            return block

        write_slabs(
            target,
            plan.output_shape,
            plan.output_voxel_nm,
            render,
            slab=plan.slab,
            chunks=plan.chunks,
            dtype=plan.dtype,
        )


def apply_package(
    package: str | os.PathLike,
    source: str,
    target: str,
    *,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Apply a model package to a whole volume in one process (``emsrflow apply``).

    Parameters
    ----------
    package : str or os.PathLike
        Model package.
    source, target : str
        Input and output volumes (see :func:`emsrflow.io.parse_path`; the output format
        follows its suffix: ``.ome.zarr``, ``.zarr``, ``.tif``, ``.h5:/dataset``).
    device : str
        Where the network runs.
    overwrite : bool
        Replace an existing output (otherwise an existing output is an error).
    progress : bool
        Show a progress bar.
    **options
        Passed to :func:`make_plan` (slab, halo, voxel_size_nm, dtype, chunks, tile,
        overlap, batch, tta, precision, passes, tolerance, ignore_voxel_size).

    Returns
    -------
    dict
        ``package`` (:func:`emsrflow.bioimage.inspect`), ``plan`` (:meth:`Plan.to_dict`),
        ``input_shape``, ``output_shape``, ``input_voxel_size_nm``,
        ``output_voxel_size_nm``, ``warnings``.

    Raises
    ------
    InputError
        As :func:`make_plan`; if the output exists and ``overwrite`` is false.
    """
    existing = parse_path(target)[0]
    if existing.exists() and not overwrite:
        raise InputError(
            f"{target}: already exists; choose another output or pass --overwrite to replace it"
        )
    plan = make_plan(package, source, **options)
    for message in plan.warnings:
        log.warning("%s", message)
    model, info = load_package(package, device="cpu")
    process_volume(plan, model, target, device=device, progress=progress)
    return {
        "package": info,
        "plan": plan.to_dict(),
        "input_shape": list(plan.input_shape),
        "output_shape": list(plan.output_shape),
        "input_voxel_size_nm": list(plan.input_voxel_nm),
        "output_voxel_size_nm": list(plan.output_voxel_nm),
        "warnings": list(plan.warnings),
    }


# ---------------------------------------------------------------------------------------
# One OME-Zarr output shared by slab jobs


def _zarr_path(target: str) -> Path:
    path, key = parse_path(target)
    if key is not None or not path.name.endswith(".zarr"):
        raise InputError(f"{target}: slab jobs write an OME-Zarr output (a path ending .zarr)")
    return path


def _store_status(path: Path) -> dict[str, Any] | None:
    """Return the processing record of a store, or None (another volume)."""
    try:
        node = zarr.open_group(str(path), mode="r")
    except Exception:  # not a Zarr group at all
        return None
    record = node.attrs.asdict().get(STATUS_KEY)
    return record if isinstance(record, dict) else None


def _open_slab_array(plan: Plan, target: str) -> zarr.Array:
    path = _zarr_path(target)
    record = _store_status(path)
    if record is None or record.get("plan") != plan.identity():
        raise InputError(
            f"{target}: was not made for this plan (another input, model or grid); "
            "run the workflow's init step again or remove it"
        )
    return zarr.open_array(str(path / "0"), mode="r+", config={"write_empty_chunks": True})


def create_store(plan: Plan, target: str) -> None:
    """Create the shared output of a plan's slab jobs, marked incomplete.

    An existing store made for the same plan is kept (finished slabs stay); anything
    else at ``target`` is an error.

    Raises
    ------
    InputError
        If ``target`` holds another volume or file.
    """
    path = _zarr_path(target)
    identity = plan.identity()
    if path.exists():
        record = _store_status(path)
        if record is not None and record.get("plan") == identity:
            log.info("%s: reusing the store of this plan (%s)", target, record.get("status"))
            return
        what = f"a volume made for {record['plan'].get('source')}" if record else "another volume"
        raise InputError(
            f"{target}: already holds {what}, not this plan's output ({plan.source} with "
            f"{plan.package}); remove it or choose another output path"
        )
    group = zarr.open_group(str(path), mode="w-", zarr_format=2)
    group.create_array(
        "0", shape=plan.output_shape, dtype=plan.dtype, chunks=plan.chunks, **ZARR_OPTIONS
    )
    group.attrs[STATUS_KEY] = {"status": "incomplete", "plan": identity}


def write_slab(plan: Plan, target: str, z0: int, data: np.ndarray) -> None:
    """Write one slab's sections into the shared store of :func:`create_store`.

    Raises
    ------
    InputError
        If the store was made for another plan.
    ValueError
        If the slab is not one of the plan's slabs or has the wrong shape.
    """
    span = (z0, z0 + len(data))
    if span not in plan.slabs or tuple(data.shape[1:]) != plan.output_shape[1:]:
        raise ValueError(f"{target}: {data.shape} at z = {z0} is not a slab of the plan")
    _open_slab_array(plan, target)[span[0] : span[1]] = data.astype(plan.dtype, copy=False)


def _missing_chunks(array: zarr.Array) -> list[int]:
    """Z chunk indices with a chunk not written."""
    grid = [math.ceil(n / c) for n, c in zip(array.shape, array.chunks, strict=True)]
    folder = Path(array.store.root) / array.path
    missing = []
    for iz in range(grid[0]):
        for iy in range(grid[1]):
            if any(not (folder / f"{iz}/{iy}/{ix}").is_file() for ix in range(grid[2])):
                missing.append(iz)
                break
    return missing


def finalize_store(plan: Plan, target: str) -> dict[str, Any]:
    """Check that every chunk of a slab-job store was written, then publish it.

    Publishing adds the OME-NGFF multiscales metadata (before it, no OME-Zarr reader
    sees a volume) and marks the store complete.

    Returns
    -------
    dict
        The store's record: status, plan, and the slab count.

    Raises
    ------
    InputError
        If the store was made for another plan, or sections are missing (naming them).
    """
    array = _open_slab_array(plan, target)
    missing = _missing_chunks(array)
    if missing:
        depth = array.chunks[0]
        end = plan.output_shape[0]
        spans = ", ".join(f"{i * depth}-{min((i + 1) * depth, end) - 1}" for i in missing)
        raise InputError(f"{target}: sections {spans} were never written; rerun their slab jobs")
    group = zarr.open_group(str(_zarr_path(target)), mode="r+")
    group.attrs["multiscales"] = ngff_multiscales(_zarr_path(target).name, plan.output_voxel_nm)
    record = {"status": "complete", "plan": plan.identity(), "slabs": len(plan.slabs)}
    group.attrs[STATUS_KEY] = record
    return record
