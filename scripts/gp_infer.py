"""Rule gp_infer: super-resolve an LR volume at a large factor, timed, parameters counted.

GPEMSR variants: :func:`emsrflow.largefactor.predict_volume` (section z from sections
z − 2 … z + 2, tiled); bicubic and the trained baselines:
:func:`emsrflow.infer.predict_stack` slab by slab (as the rule infer). The JSON output
holds the trainable parameters (GPEMSR: those optimised in Stage III, the frozen prior
excluded, as the paper counts them), the seconds per slice of the whole run after the
model is loaded (reading the LR and writing the SR included) and, for GPEMSR, what
replaces the paper's pretrained networks (:meth:`emsrflow.archs.gpemsr.GPEMSR.stand_ins`).
"""

import json
import time

import torch

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.device import resolve_device
from emsrflow.infer import predict_stack
from emsrflow.largefactor import predict_volume
from emsrflow.runlog import rule_logger
from emsrflow.train import load_model

log = rule_logger(snakemake.log[0], "gp_infer")
p, inp, out, f = (
    snakemake.params,
    snakemake.input,
    snakemake.output,
    int(snakemake.wildcards.factor),
)
torch.set_num_threads(snakemake.threads)
options = {key: p.infer[key] for key in ("tile", "overlap", "batch", "precision", "device")}
if inp.model:
    model = load_model(inp.model, expect={"type": p.spec["type"], "scale": f})
else:
    model = build_network({**p.spec, "scale": f})
with io.open_volume(inp.lr) as lr:
    shape = (lr.shape[0], lr.shape[1] * f, lr.shape[2] * f)
    voxel = (lr.voxel_size[0], lr.voxel_size[1] / f, lr.voxel_size[2] / f)
    log.info("%s ×%d: %s → %s, %s", snakemake.wildcards.gp_method, f, lr.shape, shape, options)
    start = time.perf_counter()
    if p.spec["type"] == "gpemsr":
        predict_volume(model, lr, **options, output=out.sr, voxel_size=voxel)
    else:
        io.write_slabs(
            out.sr,
            shape,
            voxel,
            lambda z0, z1: predict_stack(model, io.to_float01(lr.read(z0, z1)), **options),
            slab=p.io["slab"],
            chunks=p.io["chunks"],
        )
    seconds = time.perf_counter() - start
trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
cost = {
    "method": snakemake.wildcards.gp_method,
    "dataset": snakemake.wildcards.dataset,
    "factor": f,
    "parameters": trainable or None,
    "seconds": seconds,
    "sections": shape[0],
    "seconds_per_slice": seconds / shape[0],
    "device": str(resolve_device(options["device"])),
    "precision": options["precision"],
    "stand_ins": model.stand_ins() if p.spec["type"] == "gpemsr" else {},
}
log.info("%s", cost)
with io.atomic_output(out.cost) as tmp:
    tmp.write_text(json.dumps(cost, indent=2))
