"""Rules gp_codebook, gp_indexer and gp_reconstruction: train one GPEMSR stage.

The stage's configuration (settings, network, training volumes) is written as JSON next
to the checkpoint, then ``python -m emsrflow.largefactor stageN`` trains it (resuming
from the checkpoint), or with more than one GPU ``torchrun --standalone --nproc_per_node
G`` (as ``python -m torch.distributed.run``) runs it data-parallel; its output goes to
the rule's log. The finished checkpoint is copied to the model.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from emsrflow import io
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
lrs = list(inp.lr) if hasattr(inp, "lr") else [None] * len(inp.hr)
volumes = [{"hr": hr, **({"lr": lr} if lr else {})} for lr, hr in zip(lrs, inp.hr, strict=True)]
config = Path(p.checkpoint).with_name("config.json")
config.parent.mkdir(parents=True, exist_ok=True)
config.write_text(json.dumps({"settings": p.settings, "network": p.network, "volumes": volumes}))
command = ["-m", "emsrflow.largefactor", p.stage, "--config", str(config)]
command += ["--checkpoint", p.checkpoint, "--curve", out.curve, "--no-progress"]
previous = getattr(inp, "previous", None)  # none for Stage I and variants without MPF
if previous:
    command += ["--previous", str(previous)]
if p.gpus > 1:
    command = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={p.gpus}",
        *command,
    ]
env = {**os.environ, "OMP_NUM_THREADS": str(snakemake.threads)}
log.info("%s on %d volumes: %s", p.stage, len(volumes), " ".join(command))
with open(snakemake.log[0], "a") as handle:
    done = subprocess.run([sys.executable, *command], env=env, stdout=handle, stderr=handle)
if done.returncode:
    raise RuntimeError(f"{p.stage} failed (exit status {done.returncode}); see {snakemake.log[0]}")
with io.atomic_output(out.model) as tmp:
    shutil.copyfile(p.checkpoint, tmp)
