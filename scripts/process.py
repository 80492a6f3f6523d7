"""Rules process_plan, process_slab and process_finalize: a model package applied to a
new acquisition in slab jobs that share one OME-Zarr output (emsrflow.process)."""

import json
import time

import torch

from emsrflow import io, process
from emsrflow.bioimage import load_package
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
inp, out, wildcards = snakemake.input, snakemake.output, snakemake.wildcards
store = f"results/process/{wildcards.acquisition}/{wildcards.product}.ome.zarr"
if snakemake.rule == "process_plan":
    s = snakemake.params.process
    keys = ("slab", "halo", "dtype", "chunks", "tile", "overlap", "batch", "tta")
    keys += ("precision", "passes", "tolerance", "ignore_voxel_size")
    options = {key: s[key] for key in keys if key in s}
    plan = process.make_plan(
        inp.package, snakemake.params.source, voxel_size_nm=snakemake.params.voxel, **options
    )
    for message in plan.warnings:
        log.warning("%s", message)
    process.create_store(plan, store)
    log.info("%s → %s in %d slabs", plan.input_shape, plan.output_shape, len(plan.slabs))
    with io.atomic_output(out.plan) as tmp:
        tmp.write_text(json.dumps({"plan": plan.to_dict(), "slabs": plan.slabs}, indent=2))
else:
    plan = process.Plan.from_dict(json.loads(open(inp.plan).read())["plan"])
if snakemake.rule == "process_slab":
    torch.set_num_threads(snakemake.threads)
    z0, z1 = plan.slabs[int(wildcards.slab)]
    model, _ = load_package(inp.package)
    start = time.perf_counter()
    with io.open_volume(plan.source) as volume:
        data = process.render_slab(
            plan, model, volume, z0, z1, device=snakemake.params.process.get("device", "auto")
        )
    process.write_slab(plan, store, z0, data)
    record = {"z": [z0, z1], "seconds": round(time.perf_counter() - start, 3)}
    log.info("sections %d-%d in %.1f s", z0, z1 - 1, record["seconds"])
    with io.atomic_output(out.done) as tmp:
        tmp.write_text(json.dumps(record))
elif snakemake.rule == "process_finalize":
    record = process.finalize_store(plan, store)
    log.info("%s: complete, %d slabs", store, record["slabs"])
    summary = {**record, "path": store, "warnings": list(plan.warnings)}
    with io.atomic_output(out.summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
