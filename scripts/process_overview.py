"""Rule process_qc_overview: one table of every processed volume and its QC flags."""

import html
import json

from emsrflow import io
from emsrflow.qc import overview
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
inp, out = snakemake.input, snakemake.output
records = [
    (json.loads(open(qc).read()), json.loads(open(plan).read())["plan"])
    for qc, plan in zip(inp.qc, inp.plans, strict=True)
]
table = overview(records)
with io.atomic_output(out.table) as tmp:
    table.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
flagged = table[table.status == "flagged"]
for _, row in flagged.iterrows():
    log.warning("%s %s: %s", row["acquisition"], row["product"], row["flags"])
heading = (
    f"{len(flagged)} of {len(table)} processed volumes flagged by QC"
    if len(flagged)
    else f"All {len(table)} processed volumes passed QC"
)
body = table.to_html(index=False, float_format="%.4g", na_rep="n/a", escape=True)
body = body.replace("<td>flagged</td>", '<td style="color:#b00;font-weight:bold">flagged</td>')
page = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Processing QC</title></head>"
    f"<body><h1>Processing QC</h1><p>{html.escape(heading)}. Resolutions are median "
    "single-image FRC (Koho et al. 2019) over the measured sections, in nm; the output's "
    "is measured with the input's noise level added (see emsrflow.qc).</p>"
    f"{body}</body></html>"
)
with io.atomic_output(out.html) as tmp:
    tmp.write_text(page, encoding="utf-8")
log.info("%s", heading)
