"""Rule phantom: write the acquisitions and ground truth of one phantom dataset."""

import json

from emsrflow import io
from emsrflow.phantom import Phantom, PhantomParams
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "phantom")
out, slab, chunks = snakemake.output, snakemake.params.io["slab"], snakemake.params.io["chunks"]
phantom = Phantom(PhantomParams.from_dict(snakemake.params.phantom), seed=snakemake.params.seed)
log.info("phantom seed %d: HR %s, LR %s", snakemake.params.seed, phantom.hr_shape, phantom.lr_shape)

volumes = [
    (out.hr, phantom.hr_shape, phantom.hr_voxel_nm, phantom.hr),
    (out.lr, phantom.lr_shape, phantom.lr_voxel_nm, phantom.lr),
    (
        f"{out.anisotropic}:/raw",
        phantom.anisotropic_shape,
        phantom.anisotropic_voxel_nm,
        phantom.anisotropic,
    ),
    (out.hr_clean, phantom.hr_shape, phantom.hr_voxel_nm, lambda a, b: phantom.hr_clean(a, b)[0]),
    (out.hr_labels, phantom.hr_shape, phantom.hr_voxel_nm, lambda a, b: phantom.hr_clean(a, b)[1]),
    (
        out.anisotropic_clean,
        phantom.anisotropic_truth_shape,
        phantom.clean_voxel_nm,
        lambda a, b: phantom.anisotropic_truth(a, b)[0],
    ),
]
for spec, shape, voxel_nm, render in volumes:
    io.write_slabs(spec, shape, voxel_nm, render, slab=slab, chunks=chunks)
    log.info("wrote %s %s", spec, shape)
with io.atomic_output(out.truth) as tmp:
    tmp.write_text(json.dumps(phantom.truth(), indent=2))
