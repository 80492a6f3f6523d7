"""Rule resize: bring the registered LR and the HR to an integer resolution ratio τ."""

import json

from emsrflow import io
from emsrflow.resize import bicubic, integer_ratio, pair_shapes
from emsrflow.runlog import rule_logger
from emsrflow.samples import volume_voxel_size

log = rule_logger(snakemake.log[0], "resize")
p, out = snakemake.params, snakemake.output
with io.open_volume(snakemake.input.lr) as lr, io.open_volume(p.hr) as hr:
    hr_nm = volume_voxel_size(hr, p.hr_voxel_nm, column="hr_voxel_nm")
    tau = integer_ratio(lr.voxel_size[2], hr_nm[2], ratio=p.ratio)
    lr_shape, hr_shape = pair_shapes(hr.shape[1:], tau)
    hr_out_nm = (hr_nm[0], *(hr_nm[i + 1] * hr.shape[i + 1] / hr_shape[i] for i in (0, 1)))
    lr_out_nm = (lr.voxel_size[0], hr_out_nm[1] * tau, hr_out_nm[2] * tau)
    log.info("τ = %d: LR %s → %s, HR %s → %s", tau, lr.shape[1:], lr_shape, hr.shape[1:], hr_shape)
    for source, target, shape, voxel_nm in (
        (lr, out.lr, lr_shape, lr_out_nm),
        (hr, out.hr, hr_shape, hr_out_nm),
    ):
        io.write_slabs(
            target,
            (source.shape[0], *shape),
            voxel_nm,
            lambda z0, z1, v=source, s=shape: bicubic(io.to_float01(v.read(z0, z1)), s),
            slab=p.io["slab"],
            chunks=p.io["chunks"],
        )
pair = {
    "tau": tau,
    "lr_shape": lr_shape,
    "hr_shape": hr_shape,
    "lr_voxel_nm": lr_out_nm,
    "hr_voxel_nm": hr_out_nm,
}
with io.atomic_output(out.pair) as tmp:
    tmp.write_text(json.dumps(pair, indent=2))
