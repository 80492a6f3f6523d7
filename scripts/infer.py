"""Rules infer, infer_baseline, ablation_infer and enhance: run a network over a volume, tiled.

``infer`` and ``infer_baseline`` super-resolve the LR volume (voxel size / τ), and so does
``ablation_infer`` on a noisier LR; ``enhance`` applies the super-resolver to the HR volume
and keeps its voxel size.
"""

import json

import torch

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.infer import enhance_stack, predict_stack
from emsrflow.runlog import rule_logger
from emsrflow.train import load_model

log = rule_logger(snakemake.log[0], snakemake.rule)
p, out = snakemake.params, snakemake.output
torch.set_num_threads(snakemake.threads)
tau = json.loads(open(snakemake.input.pair).read())["tau"]
if getattr(snakemake.input, "model", None):  # trained networks; baselines are built
    model = load_model(snakemake.input.model, expect={"type": p.spec["type"], "scale": tau})
else:
    model = build_network({**p.spec, "scale": tau})
options = {key: p.infer[key] for key in ("tile", "overlap", "batch", "tta", "precision", "device")}
run, factor = (enhance_stack, 1) if snakemake.rule == "enhance" else (predict_stack, tau)
with io.open_volume(snakemake.input.lr) as source:
    shape = (source.shape[0], source.shape[1] * factor, source.shape[2] * factor)
    voxel_nm = (source.voxel_size[0], *(n / factor for n in source.voxel_size[1:]))
    log.info("%s ×%d: %s → %s, %s", p.spec["type"], tau, source.shape, shape, options)
    io.write_slabs(
        out.sr,
        shape,
        voxel_nm,
        lambda z0, z1: run(model, io.to_float01(source.read(z0, z1)), **options),
        slab=p.io["slab"],
        chunks=p.io["chunks"],
    )
