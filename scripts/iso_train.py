"""Rule iso_train: self-supervised training on the xy planes of one anisotropic stack."""

import json
import shutil

import torch

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.isotropic import IsoSettings, train_isotropic
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "iso_train")
p, out = snakemake.params, snakemake.output
torch.set_num_threads(snakemake.threads)
settings = IsoSettings.from_dict(p.settings)
rho = json.loads(open(snakemake.input.meta).read())["rho"]
with io.open_volume(snakemake.input.anisotropic) as volume:
    torch.manual_seed(settings.seed)  # the initial weights, so that a rerun is identical
    model = build_network({**p.spec, "scale": 1})
    log.info("%s on %s (ρ = %.4g)", p.spec["type"], volume.path, rho)
    train_isotropic(
        model, [volume], rho, settings, checkpoint=p.checkpoint, curve=out.curve, progress=False
    )
with io.atomic_output(out.model) as tmp:
    shutil.copyfile(p.checkpoint, tmp)
