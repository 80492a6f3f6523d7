"""Rules evaluate and iso_evaluate: per-plane metrics of a method's output against its reference.

``params.planes`` says which planes are compared: ``xy`` (the sections, for lateral
super-resolution) or ``xz`` (for isotropic reconstruction, where the axial resolution
shows), read ``io.slab`` at a time.

``params.labels`` (optional, the sample sheet's ``labels`` cell) names ground-truth labels
on the original HR grid (the phantom's ``hr_labels``): they are mapped to the reference's
grid (the HR resized to the integer ratio τ) by nearest neighbour, and each section's
prediction is segmented and scored against them (VOI split and merge, adapted Rand error).
The segmentation is the fold's fixed pipeline where ``input.segmenter`` is given (rule
``segmenter``: affinities of a slab of predicted sections, watershed and agglomeration at
the calibrated threshold), else the membrane watershed of each section.

``params.perceptual`` (optional; rule gp_evaluate) maps ``lpips`` and ``dists`` to their
local weight files (:func:`emsrflow.perceptual.load_perceptual`): each is scored per
section too, on the prediction clipped to [0, 1].
"""

import contextlib
import json

import numpy as np
import pandas as pd
import torch

from emsrflow import io, segment
from emsrflow.metrics import slice_metrics
from emsrflow.perceptual import load_perceptual, score_slice
from emsrflow.resize import nearest
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
p = snakemake.params
planes = getattr(p, "planes", "xy")
labels_spec = getattr(p, "labels", "")
segmenter = getattr(snakemake.input, "segmenter", None)
perceptual = {
    name: load_perceptual(name, spec) for name, spec in getattr(p, "perceptual", {}).items()
}
if segmenter or perceptual:
    torch.set_num_threads(snakemake.threads)  # the same sums wherever the job runs
if perceptual:
    log.info("perceptual metrics from local weights: %s", p.perceptual)
if segmenter:
    net = segment.load_affinity_net(segmenter)
    calibration = json.loads(open(snakemake.input.calibration).read())
    segmenting = segment.segment_keywords(calibration)
    log.info("segmenting with %s at threshold %g", segmenter, segmenting["threshold"])
rows = []
with contextlib.ExitStack() as stack:
    sr, hr = (
        stack.enter_context(io.open_volume(v)) for v in (snakemake.input.sr, snakemake.input.hr)
    )
    if sr.shape != hr.shape:
        raise ValueError(
            f"{sr.path} has shape {sr.shape} but its reference {hr.path} has {hr.shape}"
        )
    labels = stack.enter_context(io.open_volume(labels_spec)) if labels_spec else None
    if labels is not None and (planes != "xy" or labels.shape[0] != hr.shape[0]):
        raise ValueError(
            f"labels {labels.path} of shape {labels.shape} do not match the {hr.shape[0]} "
            f"sections of {hr.path} (labels are compared on xy sections only)"
        )
    axis = {"xy": 0, "xz": 1}[planes]
    for a in range(0, hr.shape[axis], p.io["slab"]):
        b = min(a + p.io["slab"], hr.shape[axis])
        box = (slice(a, b), slice(None), slice(None))
        if axis == 1:
            box = (slice(None), slice(a, b), slice(None))
        reference, prediction = (io.to_float01(v[box]).swapaxes(0, axis) for v in (hr, sr))
        truth = segments = [None] * len(reference)
        if labels is not None:
            truth = segment.as_instances(nearest(labels.read(a, b), hr.shape[1:]))[0]
            if segmenter:
                segments = segment.segment_volume(net, prediction, **segmenting)
        for index, (ref, pred, lab, seg) in enumerate(
            zip(reference, prediction, truth, segments, strict=True), start=a
        ):
            metrics = slice_metrics(
                ref,
                pred,
                data_range=1.0,
                pixel_nm=hr.voxel_size[2],
                labels=lab,
                segmentation=seg,
            )
            for name, metric in perceptual.items():
                metrics[name] = score_slice(metric, ref, np.clip(pred, 0.0, 1.0))
            rows.append({**p.meta, "slice": index, **metrics})
table = pd.DataFrame(rows)
ok = table.status == "ok"
log.info(
    "%d %s planes, %d excluded; mean PSNR over the others %.3f dB%s",
    len(table),
    planes,
    (~ok).sum(),
    table.psnr[ok].mean(),
    f"; mean ARAND {table.arand[ok].mean():.3f} against {labels_spec}" if labels_spec else "",
)
with io.atomic_output(snakemake.output.slices) as tmp:
    table.to_csv(tmp, sep="\t", index=False)
