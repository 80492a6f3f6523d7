"""Rule process_qc: reference-free quality control of a produced volume against its input.

``params.source`` is the volume the model was applied to, ``params.output`` the SR or
isotropic volume made from it, and ``input.plan`` their processing plan (voxel sizes:
the plan's, which may come from the sheet rather than the file); ``params.qc`` holds the
:class:`emsrflow.qc.QCSettings` fields and ``params.meta`` the id columns added to the
table (acquisition, product).
Writes the per-section table (TSV), the summary with its flags (JSON; NaN as null), the
xy/xz panels and the intensity histograms (PNG); every flag is logged as a warning.
"""

import json
import math

from emsrflow import figures, io
from emsrflow.qc import QCSettings, volume_qc
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
meta = dict(p.meta)
settings = QCSettings(**dict(p.qc))


def plain(value):
    """JSON-safe copy: NaN and ±inf become null."""
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def middle_views(source, output, in_voxel, out_voxel):
    """Middle xy section of the output, the input section at its depth, and xz sections."""
    z_out = output.shape[0] // 2
    z_in = min(int((z_out + 0.5) * out_voxel[0] // in_voxel[0]), source.shape[0] - 1)
    y_in = source.shape[1] // 2
    y_out = min(int((y_in + 0.5) * in_voxel[1] // out_voxel[1]), output.shape[1] - 1)
    xy = [io.to_float01(r.read(z, z + 1)[0]) for r, z in ((source, z_in), (output, z_out))]
    xz = [io.to_float01(r[:, y : y + 1, :][:, 0]) for r, y in ((source, y_in), (output, y_out))]
    return xy, xz, (z_in, z_out, y_in)


def save(figure, path):
    with io.atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=getattr(p, "dpi", 150), format="png")
    log.info("wrote %s", path)


plan = json.loads(open(inp.plan).read())["plan"]
in_voxel, out_voxel = plan["input_voxel_nm"], plan["output_voxel_nm"]
with io.open_volume(p.source) as source, io.open_volume(p.output) as output:
    table, summary = volume_qc(
        source, output, input_voxel_nm=in_voxel, output_voxel_nm=out_voxel, settings=settings
    )
    xy, xz, (z_in, z_out, y_in) = middle_views(source, output, in_voxel, out_voxel)

for position, (key, value) in enumerate(meta.items()):
    table.insert(position, key, value)
with io.atomic_output(out.table) as tmp:
    table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
summary = {**meta, "input": p.source, "output": p.output, **summary}
with io.atomic_output(out.summary) as tmp:
    tmp.write_text(json.dumps(plain(summary), indent=2, allow_nan=False) + "\n")

name = " ".join(str(v) for v in meta.values())
title = f"{name}: input section {z_in}, output section {z_out}; xz at input row {y_in}"
panels = figures.qc_panels(
    *xy, *xz, input_voxel_nm=in_voxel, output_voxel_nm=out_voxel, title=title
)
save(panels, out.panels)
save(figures.qc_histograms(summary, title=f"{name}: intensity histograms"), out.histogram)

log.info(
    "%d sections: median single-image FRC input %.1f nm, output %.1f nm (noise-matched)",
    len(table),
    summary["input_frc_nm"],
    summary["output_frc_matched_nm"],
)
for flag in summary["flags"]:
    log.warning("QC flag: %s", flag)
