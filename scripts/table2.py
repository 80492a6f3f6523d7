"""Rule table2: the EMSR paper's Table II layout for one metric, as Markdown, LaTeX, HTML."""

import pandas as pd

from emsrflow import io
from emsrflow.runlog import rule_logger
from emsrflow.tables import paper_table

log = rule_logger(snakemake.log[0], "table2")
metric = snakemake.wildcards.metric
summary = pd.read_csv(
    snakemake.input.summary, sep="\t", keep_default_na=False, na_values=["nan", "NaN"]
)
table = paper_table(
    summary,
    metric,
    higher_is_better=snakemake.params.higher_is_better,
    decimals=snakemake.params.decimals,
)
markdown, latex = snakemake.output.tables
for path, text in (
    (markdown, table.to_markdown()),
    (latex, table.to_latex()),
    (snakemake.output.html, table.to_html()),
):
    with io.atomic_output(path) as tmp:
        tmp.write_text(text)
log.info("Table II for %s:\n%s", metric, table.to_markdown())
