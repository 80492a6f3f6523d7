"""Rule table4: the EMSR paper's Table IV, parameters and seconds per slice per network.

Each network (the baselines, and one trained model per architecture: size and speed do
not depend on the fold, strategy or loss) super-resolves the middle LR sections of a
held-out dataset one at a time with the configured tiled inference
(:func:`emsrflow.infer.time_sections`: in-memory LR to in-memory SR, file input/output
and model loading excluded, after an untimed warm-up section).
"""

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import torch

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.device import resolve_device
from emsrflow.infer import _no_bf16_reason, time_sections
from emsrflow.runlog import rule_logger
from emsrflow.tables import cost_table
from emsrflow.train import load_model

log = rule_logger(snakemake.log[0], "table4")
p, inp, out = snakemake.params, snakemake.input, snakemake.output
torch.set_num_threads(snakemake.threads)
tau = json.loads(Path(inp.pair[0]).read_text())["tau"]
options = {key: p.infer[key] for key in ("tile", "overlap", "batch", "tta", "precision", "device")}
device = resolve_device(options["device"])
# The arithmetic actually used: bf16 falls back to fp32 where the device lacks it.
precision = options["precision"]
if precision == "bf16" and (reason := _no_bf16_reason(device)):
    log.warning("timed in fp32, not bf16: %s", reason)
    precision = "fp32"
with io.open_volume(inp.lr[0]) as lr:
    count = min(p.sections, lr.shape[0])
    z0 = (lr.shape[0] - count) // 2
    stack = io.to_float01(lr.read(z0, z0 + count))
    source = lr.path
models = dict(zip(p.trained, inp.models, strict=True))
rows = []
for name in p.methods:
    if name in models:
        model = load_model(models[name], expect={"scale": tau})
        parameters = sum(w.numel() for w in model.parameters() if w.requires_grad)
    else:  # a baseline: no trained parameters
        model, parameters = build_network({**p.specs[name], "scale": tau}), math.nan
    seconds = time_sections(model, stack, **options)
    log.info("%s: %s parameters, %.4f s per slice", name, parameters, seconds.mean())
    rows += [
        {"method": name, "parameters": parameters, "slice": z0 + i, "seconds_per_slice": s}
        for i, s in enumerate(seconds)
    ]
timings = pd.DataFrame(rows).assign(
    device=str(device),
    precision=precision,
    tile=options["tile"],
    threads=snakemake.threads,
    lr_shape="×".join(map(str, stack.shape[1:])),
    sr_shape="×".join(str(n * tau) for n in stack.shape[1:]),
    source=str(source),
)
with io.atomic_output(out.tsv) as tmp:
    timings.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
lr_size, sr_size = timings.lr_shape.iloc[0], timings.sr_shape.iloc[0]
# Millions with one decimal as in the paper, more for small networks (two significant
# digits of the smallest one).
counts = timings.parameters.dropna()
small = counts[counts > 0].min() if (counts > 0).any() else 1e6
decimals = max(1, 1 - math.floor(math.log10(small / 1e6)))
table = dataclasses.replace(
    cost_table(timings, parameter_decimals=decimals),
    title=(
        f"Table IV: network parameters and seconds per slice ({lr_size} LR → {sr_size} SR, "
        f"{device.type}, {precision}, tiles of {options['tile']} LR pixels, "
        f"{snakemake.threads} threads; mean ± std over {len(stack)} slices)"
    ),
)
markdown, latex = out.tables
for path, text in (
    (markdown, table.to_markdown()),
    (latex, table.to_latex()),
    (out.html, table.to_html()),
):
    with io.atomic_output(path) as tmp:
        tmp.write_text(text)
log.info("%s", table.to_markdown())
