"""Rule provenance: the config, seeds, versions, git commit and images of the run."""

from pathlib import Path

from emsrflow import provenance
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "provenance")
# The workflow's repository is the one holding the rule scripts: Snakemake points
# __file__ at this script's real path.
record = provenance.collect(
    snakemake.params.config,
    Path.cwd(),
    repository=Path(__file__).resolve().parent,
    derived_seeds=snakemake.params.seeds,
    files={"samples": snakemake.input.samples},
)
git = record["git"]
log.info("workflow commit %s (dirty: %s)", git["commit"], git["dirty"])
if git.get("error"):
    log.warning("git: %s", git["error"])
log.info("seeds %s", {key: value for key, value in record["seeds"].items() if key != "derived"})
for key, image in record["containers"]["images"].items():
    log.info("image %s: %s (digest %s)", key, image["reference"], image["digest"])
log.info("running in %s", record["containers"]["running"] or "no container")
packages = record["packages"]
log.info("%d Python distributions, key: %s", len(packages["all"]), packages["key"])
provenance.write(snakemake.output[0], record)
log.info("wrote %s", snakemake.output[0])
