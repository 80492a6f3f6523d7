"""Rule segmenter: a fold's affinity U-Net, trained on labelled HR data, and its threshold."""

import json

import torch

from emsrflow import io, segment
from emsrflow.resize import nearest
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
torch.set_num_threads(snakemake.threads)
images, labels = [], []
for hr_path, labels_spec in zip(inp.hr, p.labels, strict=True):
    with io.open_volume(hr_path) as hr, io.open_volume(labels_spec) as truth:
        if truth.shape[0] != hr.shape[0]:
            raise ValueError(
                f"{truth.path}: {truth.shape[0]} sections, {hr.path} has {hr.shape[0]}"
            )
        images.append(io.to_float01(hr.read()))
        instances, linked = segment.as_instances(nearest(truth.read(), hr.shape[1:]))
        labels.append(instances)  # on the HR grid; binary labels: components per section
log.info("training on %d labelled volumes", len(images))
net, calibration = segment.train_pipeline(
    images, labels, p.segmentation, linked=linked, checkpoint=out.model, curve=out.curve
)
log.info(
    "threshold %.2f (VOI %s over %s)",
    calibration["threshold"],
    calibration["voi"],
    calibration["thresholds"],
)
with io.atomic_output(out.calibration) as tmp:
    tmp.write_text(json.dumps(calibration, indent=2))
