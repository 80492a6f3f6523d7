"""Rule train: one network per fold, strategy and loss, on the fold's training pairs."""

import contextlib
import shutil

import torch

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.runlog import rule_logger
from emsrflow.train import TrainSettings, train

log = rule_logger(snakemake.log[0], "train")
p, out = snakemake.params, snakemake.output
torch.set_num_threads(snakemake.threads)
settings = TrainSettings.from_dict({**p.settings, "loss": snakemake.wildcards.loss})
with contextlib.ExitStack() as stack:
    lrs = [stack.enter_context(io.open_volume(path)) for path in snakemake.input.lr]
    hrs = [stack.enter_context(io.open_volume(path)) for path in snakemake.input.hr]
    tau = hrs[0].shape[2] // lrs[0].shape[2]
    torch.manual_seed(settings.seed)  # the initial weights, so that a rerun is identical
    model = build_network({**p.spec, "scale": tau})
    log.info("%s ×%d on %d pairs: %s", p.spec["type"], tau, len(lrs), snakemake.input.lr)
    train(
        model,
        list(zip(lrs, hrs, strict=True)),
        settings,
        checkpoint=p.checkpoint,
        curve=out.curve,
        progress=False,
    )
with io.atomic_output(out.model) as tmp:
    shutil.copyfile(p.checkpoint, tmp)
