"""Rule register: LR → HR similarity transform, registered LR, residuals and QC figure."""

import dataclasses
import json

import numpy as np
import pandas as pd

from emsrflow import io, register
from emsrflow.errors import InputError
from emsrflow.resize import integer_ratio
from emsrflow.runlog import rule_logger
from emsrflow.samples import volume_voxel_size

log = rule_logger(snakemake.log[0], "register")
p, out = snakemake.params, snakemake.output
cfg, slab = p.register, p.io["slab"]
with io.open_volume(p.lr) as lr, io.open_volume(p.hr) as hr:
    lr.validate(slab=slab)
    hr.validate(slab=slab)
    lr_nm = volume_voxel_size(lr, p.lr_voxel_nm, column="lr_voxel_nm")
    hr_nm = volume_voxel_size(hr, p.hr_voxel_nm, column="hr_voxel_nm")
    try:
        integer_ratio(lr_nm[2], hr_nm[2])
    except InputError as error:
        raise InputError(f"{lr.path} and {hr.path}: {error}") from error
    if lr.shape[0] != hr.shape[0]:
        raise InputError(
            f"{lr.path} has {lr.shape[0]} sections but {hr.path} has "
            f"{hr.shape[0]}: paired acquisitions must have the same sections"
        )
    picks = register.section_picks(hr.shape[0], cfg["sections"])
    lr_picks, hr_picks = (
        np.concatenate([io.to_float01(v.read(z, z + 1)) for z in picks]) for v in (lr, hr)
    )
    try:
        result = register.estimate_transform(lr_picks, hr_picks, scale=hr_nm[2] / lr_nm[2], **cfg)
    except InputError as error:
        raise type(error)(f"{lr.path} → {hr.path}: {error}") from error
    result = dataclasses.replace(result, sections=tuple(picks[i] for i in result.sections))
    log.info("transform %s, score %.3f", result.transform, result.score)
    shape = (lr.shape[0], *register.registered_shape(hr.shape, result.transform))
    voxel_nm = (lr_nm[0], *(hr_nm[i] * hr.shape[i] / shape[i] for i in (1, 2)))
    tables = []

    def resample(z0, z1):
        moved = register.resample_lr(io.to_float01(lr.read(z0, z1)), result.transform, hr.shape)
        tables.append(register.residuals(moved, io.to_float01(hr.read(z0, z1)), z0=z0))
        return moved

    io.write_slabs(out.lr, shape, voxel_nm, resample, slab=slab, chunks=p.io["chunks"])
    z = hr.shape[0] // 2
    with io.open_volume(out.lr) as moved:
        figure = register.qc_figure(io.to_float01(hr.read(z, z + 1))[0], moved.read(z, z + 1)[0])
table = pd.concat(tables, ignore_index=True)
log.info("residual shift: median %.3f, max %.3f LR px", *table.shift_norm.agg(["median", "max"]))
with io.atomic_output(out.residuals) as tmp:
    table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
with io.atomic_output(out.qc) as tmp:
    figure.savefig(tmp, dpi=120)
summary = {
    **result.to_dict(),
    "lr": p.lr,
    "hr": p.hr,
    "lr_voxel_nm": lr_nm,
    "hr_voxel_nm": hr_nm,
    "registered_voxel_nm": voxel_nm,
    "residual_shift_max": float(table.shift_norm.max()),
}
with io.atomic_output(out.transform) as tmp:
    tmp.write_text(json.dumps(summary, indent=2))
