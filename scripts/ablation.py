"""Rule ablation: one ablation study of the EMSR paper (Sec. III.G) as a table and a plot.

Every variant of the study (a method with noise added to its LR input, a model trained
with noisy references, other λ of the loss or other network sizes) was evaluated slice by
slice on the held-out datasets of the ablation folds. Its slices are summarised per
variant (:func:`emsrflow.tables.aggregate`: mean ± std per dataset, and ALL DATASETS over
the dataset means), laid out as the paper's Tables V and VI (metrics × variants,
:func:`emsrflow.tables.metric_table`) and plotted against the variable of the study
(:func:`emsrflow.figures.ablation_curves`, as Figs. 13 and 14).
"""

import pandas as pd

from emsrflow import figures, io
from emsrflow.runlog import rule_logger
from emsrflow.tables import ALL_DATASETS, aggregate, metric_table

log = rule_logger(snakemake.log[0], "ablation")
p, out = snakemake.params, snakemake.output
text = {"strategy": str, "loss": str, "status": str}
parts = []
for variant in p.variants:
    for path in variant["files"]:
        part = pd.read_csv(
            path, sep="\t", dtype=text, keep_default_na=False, na_values=["nan", "NaN"]
        )
        parts.append(part.assign(variant=variant["label"]))
slices = pd.concat(parts, ignore_index=True)
metrics = {m: rule for m, rule in p.metrics.items() if m in slices.columns}
summary = aggregate(slices, metrics=list(metrics), by="variant")
columns = {v["label"]: v for v in p.variants}
for key in ("series", "level"):
    summary.insert(1, key, summary.variant.map({k: v[key] for k, v in columns.items()}))
log.info(
    "%s: %d variants, %d slices of %d datasets",
    snakemake.wildcards.study,
    len(columns),
    len(slices),
    slices.dataset.nunique(),
)
with io.atomic_output(out.slices) as tmp:
    slices.to_parquet(tmp, index=False)
with io.atomic_output(out.summary) as tmp:
    summary.to_csv(tmp, sep="\t", index=False, na_rep="nan")

# One held-out dataset (as the paper's BRAIN3): its mean ± std over slices; several: the
# ALL DATASETS row, mean ± std over the dataset means.
datasets = sorted(slices.dataset.unique())
row = datasets[0] if len(datasets) == 1 else ALL_DATASETS
spread = "over its slices" if len(datasets) == 1 else f"over {len(datasets)} dataset means"
title = f"{p.title} ({', '.join(datasets)}; mean ± std {spread})"
table = metric_table(summary, metrics, dataset=row, title=title)
markdown, latex = out.tables
for path, content in (
    (markdown, table.to_markdown()),
    (latex, table.to_latex()),
    (out.html, table.to_html()),
):
    with io.atomic_output(path) as tmp:
        tmp.write_text(content)
log.info("%s", table.to_markdown())

figure = figures.ablation_curves(
    summary,
    [m for m in p.plot_metrics if m in metrics],
    numeric=p.numeric,
    xlabel=p.xlabel,
    dataset=row,
    higher_is_better={m: rule[0] for m, rule in metrics.items()},
    title=title,
)
with io.atomic_output(out.png) as tmp:
    figure.savefig(tmp, dpi=p.dpi, format="png")
