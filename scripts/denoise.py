"""Rule denoise: denoised HR reference and the noise level before and after."""

import pandas as pd

from emsrflow import io
from emsrflow.denoise import denoise_stack
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "denoise")
p, out = snakemake.params, snakemake.output
rows = []


def denoise(z0, z1):
    stack, slab_rows = denoise_stack(io.to_float01(hr.read(z0, z1)), z0=z0, **p.denoise)
    rows.extend(slab_rows)
    return stack


with io.open_volume(snakemake.input.hr) as hr:
    io.write_slabs(
        out.hr, hr.shape, hr.voxel_size, denoise, slab=p.io["slab"], chunks=p.io["chunks"]
    )
table = pd.DataFrame(rows)
log.info(
    "noise σ (0–255): %.2f before, %.2f after", table.sigma_before.mean(), table.sigma_after.mean()
)
with io.atomic_output(out.sigma) as tmp:
    table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
