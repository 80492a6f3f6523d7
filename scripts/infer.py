"""Rules infer and infer_baseline: super-resolve an LR volume, slab by slab, tiled."""

import json

import torch

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.infer import predict_stack
from emsrflow.runlog import rule_logger
from emsrflow.train import load_model

log = rule_logger(snakemake.log[0], "infer")
p, out = snakemake.params, snakemake.output
torch.set_num_threads(snakemake.threads)
tau = json.loads(open(snakemake.input.pair).read())["tau"]
if hasattr(snakemake.input, "model"):
    model = load_model(snakemake.input.model, expect={"type": p.spec["type"], "scale": tau})
else:
    model = build_network({**p.spec, "scale": tau})
options = {key: p.infer[key] for key in ("tile", "overlap", "batch", "tta", "precision", "device")}
with io.open_volume(snakemake.input.lr) as lr:
    shape = (lr.shape[0], lr.shape[1] * tau, lr.shape[2] * tau)
    voxel_nm = (lr.voxel_size[0], lr.voxel_size[1] / tau, lr.voxel_size[2] / tau)
    log.info("%s ×%d: %s → %s, %s", p.spec["type"], tau, lr.shape, shape, options)
    io.write_slabs(
        out.sr,
        shape,
        voxel_nm,
        lambda z0, z1: predict_stack(model, lr.read(z0, z1), **options),
        slab=p.io["slab"],
        chunks=p.io["chunks"],
    )
