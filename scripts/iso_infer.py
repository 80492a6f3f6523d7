"""Rule iso_infer: the isotropic volume, cubic along z then (for a network) xz and yz passes."""

import json

import torch

from emsrflow import io
from emsrflow.isotropic import reconstruct
from emsrflow.runlog import rule_logger
from emsrflow.train import load_model

log = rule_logger(snakemake.log[0], "iso_infer")
p, inp = snakemake.params, snakemake.input
torch.set_num_threads(snakemake.threads)
meta = json.loads(open(inp.meta).read())
model = None
if inp.model:
    model = load_model(inp.model, expect={"type": p.spec["type"], "scale": 1})
options = {key: p.infer[key] for key in ("tile", "overlap", "batch", "tta", "precision", "device")}
with io.open_volume(inp.anisotropic) as volume:
    log.info(
        "%s: %s → %s, passes %s",
        snakemake.wildcards.iso_method,
        volume.shape,
        meta["isotropic_shape"],
        p.passes,
    )
    reconstruct(
        model,
        volume,
        meta["rho"],
        snakemake.output.volume,
        voxel_size=meta["isotropic_voxel_nm"],
        slab=p.slab,
        halo=p.halo,
        passes=p.passes,
        chunks=(64, 64, 64),  # cubes: xy sections and xz planes read alike
        **options,
    )
