"""Rules gp_degrade and gp_labels: the data of one large factor f, made from the prepared HR.

``gp_degrade`` crops the prepared HR (top left) to a multiple of f in y and x and
downsamples it with :func:`emsrflow.largefactor.downsample_bicubic` (PyTorch's
anti-aliased bicubic, area-aligned: ``F.interpolate(mode="bicubic", antialias=True)``),
sections kept in z order. ``gp_labels`` maps the sheet's labels to the prepared HR's grid
by nearest neighbour (as the rule evaluate does) and crops them alike.
"""

import json

from emsrflow import io
from emsrflow.errors import InputError
from emsrflow.largefactor import downsample_bicubic
from emsrflow.resize import nearest
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
p, out, f = snakemake.params, snakemake.output, int(snakemake.wildcards.factor)
slab, chunks = p.io["slab"], p.io["chunks"]
with io.open_volume(snakemake.input.hr) as hr:
    depth, height, width = hr.shape
    h, w = height // f * f, width // f * f
    if not h or not w:
        raise InputError(f"{hr.path}: sections of {height} × {width} are smaller than {f}")
    vz, vy, vx = hr.voxel_size
    if snakemake.rule == "gp_labels":
        with io.open_volume(p.labels) as labels:
            if labels.shape[0] != depth:
                raise InputError(f"labels {labels.path} {labels.shape} ≠ {depth} sections")
            log.info("labels %s → %s, cropped to %d × %d", labels.shape, hr.shape, h, w)
            io.write_slabs(
                out.labels,
                (depth, h, w),
                (vz, vy, vx),
                lambda z0, z1: nearest(labels.read(z0, z1), (height, width))[:, :h, :w],
                slab=slab,
                chunks=chunks,
            )
    else:
        log.info("HR %s cropped to %d × %d, ×%d bicubic → LR", hr.shape, h, w, f)
        crop = lambda z0, z1: io.to_float01(hr.read(z0, z1))[:, :h, :w]  # noqa: E731
        io.write_slabs(out.hr, (depth, h, w), (vz, vy, vx), crop, slab=slab, chunks=chunks)
        io.write_slabs(
            out.lr,
            (depth, h // f, w // f),
            (vz, vy * f, vx * f),
            lambda z0, z1: downsample_bicubic(crop(z0, z1), f),
            slab=slab,
            chunks=chunks,
        )
        pair = {"tau": f, "hr_shape": [depth, h, w], "prepared_hr_shape": list(hr.shape)}
        with io.atomic_output(out.pair) as tmp:
            tmp.write_text(json.dumps({**pair, "downsampling": "bicubic, antialias"}, indent=2))
