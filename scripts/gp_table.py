"""Rules gp_table1 and gp_table5: the GPEMSR paper's Tables 1 and 5 (MD, LaTeX, HTML).

Rows are methods (Table 1) or Stage III variants (Table 5); per factor, the columns are
the metrics (:func:`emsrflow.tables.metric_table` of the factor's summary, transposed:
ranked among the rows), the perceptual metrics of ``params.perceptual`` (LPIPS, DISTS:
"not available" unless their local weights were configured) and, with
``params.cost_columns``, the trainable parameters and seconds per slice
(:func:`emsrflow.tables.cost_table` of the rule gp_infer's records). Values: the one
held-out dataset's mean ± std over slices, or ALL DATASETS (over the dataset means). The
caption names what replaces the paper's pretrained networks (the records' stand-ins).
"""

import json

import pandas as pd

from emsrflow import io
from emsrflow.runlog import rule_logger
from emsrflow.tables import ALL_DATASETS, PaperTable, cost_table, metric_table

PERCEPTUAL = {"lpips": "LPIPS ↓", "dists": "DISTS ↓"}
# metric_table's column names of the perceptual metrics → the paper's
RENAMED = {f"{m} ↓": label for m, label in PERCEPTUAL.items()}

log = rule_logger(snakemake.log[0], snakemake.rule)
p, inp = snakemake.params, snakemake.input
records = [json.loads(open(path).read()) for path in inp.costs]
costs = pd.DataFrame(records)
cells, ranks = [], []
for factor, path in zip(p.factors, inp.summaries, strict=True):
    summary = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan", "NaN"])
    summary = summary[summary.method.isin(list(p.methods))]
    datasets = sorted(set(summary.dataset) - {ALL_DATASETS})
    row = datasets[0] if len(datasets) == 1 else ALL_DATASETS
    metrics = {m: rule for m, rule in p.metrics.items() if f"{m}_mean" in summary}
    table = metric_table(summary, metrics, columns="method", dataset=row)
    part = table.cells.T.reindex(list(p.methods)).rename(columns=RENAMED)
    rank = table.ranks.T.reindex(list(p.methods)).rename(columns=RENAMED)
    for name in p.perceptual:
        if PERCEPTUAL[name] not in part:
            part[PERCEPTUAL[name]], rank[PERCEPTUAL[name]] = "not available", 0
    if p.cost_columns:
        cost = cost_table(costs[costs.factor == factor], parameter_decimals=4)
        part[["Params/M", "s/slice ↓"]] = cost.cells.T.reindex(list(p.methods)).to_numpy()
        rank[["Params/M", "s/slice ↓"]] = cost.ranks.T.reindex(list(p.methods)).to_numpy()
    prefix = {c: f"{factor}× {c}" for c in part.columns}
    cells.append(part.rename(columns=prefix).fillna("n/a"))
    ranks.append(rank.rename(columns=prefix).fillna(0).astype(int))
spread = (
    f"{datasets[0]}, over slices" if len(datasets) == 1 else f"over {len(datasets)} dataset means"
)
stand_ins = {}
for record in records:
    for part, text in (record.get("stand_ins") or {}).items():
        if text:
            stand_ins.setdefault(part, set()).add(text)
note = "; ".join(f"{part}: {' / '.join(sorted(texts))}" for part, texts in stand_ins.items())
labels = pd.Index([p.methods[m] for m in p.methods], dtype=object)
table = PaperTable(
    title=f"{p.title} ({spread})" + (f". The paper's pretrained networks: {note}" if note else ""),
    cells=pd.concat(cells, axis=1).set_axis(labels),
    ranks=pd.concat(ranks, axis=1).set_axis(labels),
    row_header="Method",
)
markdown, latex = snakemake.output.tables
for path, text in ((markdown, table.to_markdown()), (latex, table.to_latex())):
    with io.atomic_output(path) as tmp:
        tmp.write_text(text)
with io.atomic_output(snakemake.output.html) as tmp:
    tmp.write_text(table.to_html())
log.info("%s", table.to_markdown())
