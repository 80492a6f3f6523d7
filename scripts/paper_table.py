"""Rules table2 and table3: one of the EMSR paper's tables for one metric (MD, LaTeX, HTML).

Table II compares methods (columns) over datasets; Table III compares the training
strategies of one network and loss.
"""

import pandas as pd

from emsrflow import io
from emsrflow.runlog import rule_logger
from emsrflow.tables import paper_table

log = rule_logger(snakemake.log[0], snakemake.rule)
p, metric = snakemake.params, snakemake.wildcards.metric
summary = pd.read_csv(
    snakemake.input.summary, sep="\t", keep_default_na=False, na_values=["nan", "NaN"]
)
for column, value in p.select.items():
    summary = summary[summary[column] == value]
table = paper_table(
    summary,
    metric,
    higher_is_better=p.higher_is_better,
    columns=p.columns,
    decimals=p.decimals,
    title=p.title,
)
markdown, latex = snakemake.output.tables
for path, text in (
    (markdown, table.to_markdown()),
    (latex, table.to_latex()),
    (snakemake.output.html, table.to_html()),
):
    with io.atomic_output(path) as tmp:
        tmp.write_text(text)
log.info("%s:\n%s", p.title, table.to_markdown())
