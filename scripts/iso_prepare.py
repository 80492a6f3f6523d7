"""Rules iso_prepare and iso_reference: the inputs of isotropic reconstruction.

``iso_prepare`` writes the anisotropic stack as float OME-Zarr chunked for reads of rows
and columns across all slices, with its thickness ρ (z voxel over lateral voxel); where
the sheet gives only an isotropic volume, the stack is simulated from it by averaging
``simulate_rho`` sections per slice (the validation protocol). ``iso_reference`` writes
the isotropic volume cropped to the reconstruction's depth.
"""

import json

from emsrflow import io
from emsrflow.errors import InputError
from emsrflow.isotropic import isotropic_depth, simulate_anisotropic
from emsrflow.runlog import rule_logger
from emsrflow.samples import volume_voxel_size

log = rule_logger(snakemake.log[0], snakemake.rule)
p, out = snakemake.params, snakemake.output
slab = p.io["slab"]


def chunks(shape):
    """Chunks for box reads of all slices over a few rows or columns."""
    return (min(shape[0], 64), min(shape[1], 32), min(shape[2], 32))


def prepare():
    with io.open_volume(snakemake.input.volume) as volume:
        if p.anisotropic:
            voxel = volume_voxel_size(volume, p.voxel_nm, column="anisotropic_voxel_nm")
            rho, shape, source = voxel[0] / voxel[2], volume.shape, "anisotropic"

            def render(z0, z1):
                return io.to_float01(volume.read(z0, z1))
        else:
            iso = volume_voxel_size(volume, "", column="isotropic")
            rho = float(p.simulate_rho)
            voxel = (iso[0] * rho, iso[1], iso[2])
            shape = (int(volume.shape[0] // rho + 1e-9), *volume.shape[1:])
            source = "simulated"

            def render(z0, z1):
                return simulate_anisotropic(volume, rho, z0, z1)

        if abs(voxel[1] - voxel[2]) > 1e-3 * voxel[2] or not rho >= 1:
            raise InputError(
                f"{volume.path}: voxel size {voxel} nm is not an anisotropic stack of square "
                "pixels with slices at least as thick as the pixels"
            )
        if shape[0] < 2:
            raise InputError(
                f"{volume.path}: {shape[0]} slice(s); isotropic reconstruction needs 2"
            )
        log.info("%s stack %s, ρ = %.4g, voxel %s nm", source, shape, rho, voxel)
        io.write_slabs(out.anisotropic, shape, voxel, render, slab=slab, chunks=chunks(shape))
    meta = {
        "source": source,
        "rho": rho,
        "anisotropic_shape": list(shape),
        "anisotropic_voxel_nm": list(voxel),
        "isotropic_shape": [isotropic_depth(shape[0], rho), *shape[1:]],
        "isotropic_voxel_nm": [voxel[2]] * 3,
    }
    with io.atomic_output(out.meta) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def reference():
    meta = json.loads(open(snakemake.input.meta).read())
    shape = tuple(meta["isotropic_shape"])
    with io.open_volume(snakemake.input.volume) as volume:
        voxel = volume_voxel_size(volume, "", column="isotropic")
        if volume.shape[1:] != shape[1:] or volume.shape[0] < shape[0]:
            raise InputError(
                f"{volume.path}: shape {volume.shape} does not cover the isotropic grid "
                f"{shape} of the anisotropic stack"
            )
        log.info("reference %s cropped to %s", volume.shape, shape)
        io.write_slabs(
            out.reference,
            shape,
            voxel,
            lambda z0, z1: io.to_float01(volume.read(z0, z1)),
            slab=slab,
            chunks=chunks(shape),
        )


{"iso_prepare": prepare, "iso_reference": reference}[snakemake.rule]()
