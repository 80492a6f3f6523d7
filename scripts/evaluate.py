"""Rule evaluate: per-slice metrics of one method's output against the acquired HR."""

import pandas as pd

from emsrflow import io
from emsrflow.metrics import slice_metrics
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "evaluate")
p = snakemake.params
rows = []
with io.open_volume(snakemake.input.sr) as sr, io.open_volume(snakemake.input.hr) as hr:
    if sr.shape != hr.shape:
        raise ValueError(
            f"{sr.path} has shape {sr.shape} but its reference {hr.path} has {hr.shape}"
        )
    for z0, reference in hr.slabs(p.io["slab"]):
        prediction = sr.read(z0, z0 + len(reference))
        for z, (ref, pred) in enumerate(zip(reference, prediction, strict=True), start=z0):
            metrics = slice_metrics(ref, pred, data_range=1.0, pixel_nm=hr.voxel_size[2])
            rows.append({**p.meta, "slice": z, **metrics})
table = pd.DataFrame(rows)
ok = table.status == "ok"
log.info(
    "%d slices, %d excluded; mean PSNR over the others %.3f dB",
    len(table),
    (~ok).sum(),
    table.psnr[ok].mean(),
)
with io.atomic_output(snakemake.output.slices) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
