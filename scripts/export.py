"""Rules export and iso_export: a trained model as a bioimage.io model package."""

import torch

from emsrflow import bioimage
from emsrflow.runlog import rule_logger
from emsrflow.train import load_model

log = rule_logger(snakemake.log[0], snakemake.rule)
p, inp, wildcards = snakemake.params, snakemake.input, snakemake.wildcards
torch.set_num_threads(snakemake.threads)
model = load_model(inp.model).spec
if p.kind == "isotropic":
    data = bioimage.isotropic_test_data(
        inp.anisotropic, size=p.export["crop"], reference=inp.reference or None
    )
    provenance = {"strategy": "self-supervised", "loss": "l1+pdl"}
else:
    data = bioimage.sr_test_data(
        inp.lr, scale=model["scale"], size=p.export["crop"], reference=inp.hr
    )
    provenance = {"strategy": wildcards.strategy, "loss": wildcards.loss, "fold": wildcards.fold}
log.info("%s ×%d, test crop %s", model["type"], model["scale"], data["test_input"].shape)
result = bioimage.export_package(
    inp.model,
    snakemake.output.package,
    **data,
    kind=p.kind,
    **provenance,
    training_datasets=p.training_datasets,
    config_sha256=bioimage.config_hash(snakemake.config),
    authors=p.export["authors"],
    license=p.export["license"],
    torchscript=p.export["torchscript"],
    test=p.export["test"],
)
if not result["torchscript"]["included"]:
    log.warning("no TorchScript weights: %s", result["torchscript"]["reason"])
for check in result.get("test", {}).get("details", []):
    log.info("bioimage.io test %s: %s %s", check["status"], check["name"], check["errors"] or "")
log.info("wrote %s: weights %s", snakemake.output.package, ", ".join(result["weights"]))
