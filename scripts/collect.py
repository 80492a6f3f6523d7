"""Rule collect: every method's slice rows in one table, and the per-dataset summary."""

import pandas as pd

from emsrflow import io
from emsrflow.perceptual import PERCEPTUAL_METRICS
from emsrflow.runlog import rule_logger
from emsrflow.tables import METRICS, SEGMENTATION_METRICS, aggregate

log = rule_logger(snakemake.log[0], "collect")
out = snakemake.output
text = {"strategy": str, "loss": str, "status": str}
slices = pd.concat(
    [
        pd.read_csv(path, sep="\t", dtype=text, keep_default_na=False, na_values=["nan", "NaN"])
        for path in snakemake.input
    ],
    ignore_index=True,
)
log.info(
    "%d slices of %d methods on %d datasets",
    len(slices),
    slices.method.nunique(),
    slices.dataset.nunique(),
)
with io.atomic_output(out.parquet) as tmp:
    slices.to_parquet(tmp, index=False)
with io.atomic_output(out.csv) as tmp:
    slices.to_csv(tmp, index=False)
with io.atomic_output(out.summary) as tmp:
    # VOI and ARAND where some dataset has ground-truth labels (NaN for the others), LPIPS
    # and DISTS where their weights were configured (rule gp_evaluate).
    extra = (*SEGMENTATION_METRICS, *PERCEPTUAL_METRICS)
    metrics = [*METRICS, *(m for m in extra if m in slices.columns)]
    aggregate(slices, metrics=metrics).to_csv(tmp, sep="\t", index=False, na_rep="nan")
