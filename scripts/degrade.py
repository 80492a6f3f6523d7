"""Rule degrade: synthetic LR (Synthetic I or II) from the HR, seeded per section."""

import json

import pandas as pd

from emsrflow import io
from emsrflow.degrade import Synthetic2Ranges, degrade_stack
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "degrade")
p, out, kind = snakemake.params, snakemake.output, snakemake.wildcards.synthetic
pair = json.loads(open(snakemake.input.pair).read())
tau, ranges = pair["tau"], Synthetic2Ranges(**{k: tuple(v) for k, v in p.synthetic2.items()})
rows = []


def degrade(z0, z1):
    hr_slab = io.to_float01(hr.read(z0, z1))
    lr, slab_rows = degrade_stack(hr_slab, tau, kind=kind, seed=p.seed, z0=z0, ranges=ranges)
    rows.extend(slab_rows)
    return lr


with io.open_volume(snakemake.input.hr) as hr:
    shape = (hr.shape[0], hr.shape[1] // tau, hr.shape[2] // tau)
    io.write_slabs(
        out.lr, shape, pair["lr_voxel_nm"], degrade, slab=p.io["slab"], chunks=p.io["chunks"]
    )
log.info("%s: %d sections, τ = %d", kind, shape[0], tau)
with io.atomic_output(out.params) as tmp:
    pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False, float_format="%.4f")
