r"""Result tables of a study in the layout of the EMSR paper (Tables II to VI).

Pure pandas: the functions take and return data frames (or :class:`PaperTable`), read
and write no files.

:func:`aggregate`
    The long table of slice-level metrics (one row per method, dataset and slice, as
    written by the ``evaluate`` rule) summarised per method and dataset: mean ± standard
    deviation of each metric over the slices, how many slices entered the mean and
    which were excluded, plus an ``ALL DATASETS`` row per method.
:func:`paper_table`
    One metric of :func:`aggregate`'s summary laid out as in Table II (datasets ×
    methods) or Table III (datasets × training strategies), best value per row in bold
    and second best underlined.
:func:`cost_table`
    Table IV: parameters and running time per method.
:func:`metric_table`
    Tables V and VI (ablations): several metrics (rows) of one summary row per variant
    (columns), e.g. the ALL DATASETS means of each hyper-parameter setting.
:class:`PaperTable`
    The formatted cells and their ranks, rendered as Markdown, LaTeX or HTML.

Conventions
    Means and standard deviations use only finite values
    (:func:`emsrflow.metrics.finite_mean_std`), and slices whose ``status`` is not
    ``"ok"`` are excluded first; every exclusion is counted in the summary. Standard
    deviations are *sample* standard deviations (``ddof=1``, :data:`DDOF`): the paper's
    ALL DATASETS values are reproduced by ``ddof=1`` over its nine dataset means (e.g.
    SSIM of Bicubic, Table II: 0.665 ± 0.059 with ``ddof=1``, ± 0.056 with ``ddof=0``;
    FRC of PSSR: ± 0.036 against ± 0.034). The paper does not say which ``ddof`` its
    per-dataset standard deviations over slices use; the same ``ddof`` is used there.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .metrics import finite_mean_std

__all__ = [
    "ALL_DATASETS",
    "DDOF",
    "METRICS",
    "SEGMENTATION_METRICS",
    "PaperTable",
    "aggregate",
    "cost_table",
    "metric_table",
    "paper_table",
]

#: Label of the per-method row summarising all datasets (the paper's name for it).
ALL_DATASETS = "ALL DATASETS"

#: Slice-level metrics summarised by default (columns of the slice table).
METRICS = ("psnr", "ssim", "frc", "frc_resolution_nm")

#: Slice-level metrics against ground-truth labels (lower is better), present in the slice
#: table only where labels were given (:func:`emsrflow.metrics.slice_metrics`).
SEGMENTATION_METRICS = ("voi_split", "voi_merge", "voi", "arand")

#: Delta degrees of freedom of every standard deviation: sample standard deviation.
DDOF = 1

#: Columns of the slice table that describe a method; :func:`aggregate` carries them
#: into its summary when they are constant within each group.
_DESCRIPTORS = ("arch", "strategy", "loss")

#: Text of a value that could not be computed (no finite values, or too few for a std).
_MISSING = "n/a"

_TIME_ROW = "Time (seconds per slice)"
_PARAMETER_ROW = "#Parameters (million)"


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def _require(frame, columns, name):
    """Raise a :class:`ValueError` naming the columns of ``columns`` missing in ``frame``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing}; it has {list(frame.columns)}")


def _stats(values, ddof):
    """Compute ``{metric}_mean``, ``_std`` and ``_n`` of the finite values of each metric."""
    stats = {}
    for metric, column in values.items():
        mean, std, n = finite_mean_std(column, ddof=ddof)
        stats.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_n": n})
    return stats


def _exclusions(status):
    """Count the slices whose status is not ``"ok"`` and describe their statuses."""
    counts = status[status != "ok"].value_counts()
    text = "; ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    return int(counts.sum()), text


def _summary_row(dataset, n_datasets, status, stats):
    """Build one summary row: counts, exclusions and the metric statistics."""
    n_excluded, excluded = _exclusions(status)
    return {
        "dataset": dataset,
        "n_datasets": n_datasets,
        "n_slices": len(status),
        "n_excluded": n_excluded,
        "excluded": excluded,
        **stats,
    }


def _group_rows(group, metrics, ddof):
    """Build the summary rows of one method: its datasets (sorted), then ALL DATASETS."""
    rows = [
        _summary_row(dataset, 1, part["status"], _stats({m: part[m] for m in metrics}, ddof))
        for dataset, part in group.groupby("dataset", sort=True)
    ]
    means = {m: [r[f"{m}_mean"] for r in rows] for m in metrics}
    rows.append(_summary_row(ALL_DATASETS, len(rows), group["status"], _stats(means, ddof)))
    return rows


def aggregate(
    slices: pd.DataFrame,
    *,
    metrics: Sequence[str] = METRICS,
    by: str | Sequence[str] = "method",
    ddof: int = DDOF,
) -> pd.DataFrame:
    """Summarise slice-level metrics per method and dataset, plus ALL DATASETS.

    For each group of ``by`` (a method) and each of its datasets, every metric is
    averaged over the dataset's slices with :func:`emsrflow.metrics.finite_mean_std`:
    slices whose ``status`` is not ``"ok"`` are excluded (their metrics are NaN), and so
    are non-finite values of ``"ok"`` slices (the infinite PSNR of a slice restored
    exactly). A dataset whose slices are all excluded gets NaN, never a mean over NaN.

    Each method then gets an ``ALL DATASETS`` row whose mean ± std is taken over its
    *dataset means*, not over all slices: the EMSR paper's convention (Table II
    footnote: "The overall evaluation [...] represents the mean and standard deviation
    across reported mean values for all datasets"), so every dataset weighs the same
    whatever its number of slices. Datasets with a NaN mean are left out of it and
    ``{metric}_n`` says how many were used.

    Parameters
    ----------
    slices : pandas.DataFrame
        The long table: one row per slice with the columns of ``by``, ``dataset``,
        ``status`` (``"ok"`` or the reason for excluding the slice) and ``metrics``;
        typically also ``arch``, ``strategy``, ``loss``, ``animal``, ``hemisphere``,
        ``fold`` and ``slice``. Slices of a dataset from several folds are pooled.
    metrics : sequence of str, optional
        Metric columns to summarise (default :data:`METRICS`).
    by : str or sequence of str, optional
        Column(s) identifying a method (default ``"method"``).
    ddof : int, optional
        Delta degrees of freedom of the standard deviations (default :data:`DDOF`, 1:
        sample standard deviation, as the paper's ALL DATASETS values).

    Returns
    -------
    pandas.DataFrame
        One row per method and dataset, the datasets of a method sorted and followed by
        its ``ALL DATASETS`` row; methods in their order of first appearance. Columns:

        ``by`` columns, then ``arch``, ``strategy``, ``loss``
            The descriptors present in ``slices`` and constant within each method
            (so that :func:`paper_table` can lay out strategies); others are dropped.
        ``dataset``
            The dataset, or :data:`ALL_DATASETS`.
        ``n_datasets``
            1 for a dataset row, the method's number of datasets for ALL DATASETS.
        ``n_slices``, ``n_excluded``, ``excluded``
            Slices in the row, how many had a status other than ``"ok"``, and those
            statuses with their counts, e.g. ``"2 constant slice; 1 non-finite
            prediction"`` (``""`` if none).
        ``{metric}_mean``, ``{metric}_std``, ``{metric}_n``
            Per metric: mean, standard deviation and the number of values they are
            computed from: finite slice values in a dataset row, finite dataset means
            in the ALL DATASETS row. The std is NaN when ``{metric}_n <= ddof``.

    Raises
    ------
    ValueError
        If a required column is missing or a ``by``, ``dataset`` or ``status`` cell is
        missing.
    """
    keys = [by] if isinstance(by, str) else list(by)
    metrics = list(metrics)
    _require(slices, [*keys, "dataset", "status", *metrics], "slices")
    labels = slices[[*keys, "dataset", "status"]]
    if labels.isna().to_numpy().any():
        raise ValueError(f"slices has missing values in the columns {list(labels.columns)}")

    carried = [
        c
        for c in _DESCRIPTORS
        if c in slices.columns
        and c not in keys
        and (slices.groupby(keys, sort=False)[c].nunique(dropna=False) <= 1).all()
    ]
    values = slices[metrics].astype(np.float64)
    values.loc[(slices["status"] != "ok").to_numpy(), :] = np.nan
    data = pd.concat([slices[[*keys, *carried, "dataset", "status"]], values], axis=1)

    rows = []
    for key, group in data.groupby(keys, sort=False):
        head = {**dict(zip(keys, key, strict=True)), **{c: group[c].iloc[0] for c in carried}}
        rows.extend({**head, **row} for row in _group_rows(group, metrics, ddof))
    columns = [
        *keys,
        *carried,
        "dataset",
        "n_datasets",
        "n_slices",
        "n_excluded",
        "excluded",
        *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")),
    ]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------
# Formatting and ranking
# --------------------------------------------------------------------------------------


def _number(value, decimals):
    """Format ``value`` with ``decimals`` decimals; :data:`_MISSING` if not finite."""
    return f"{value:.{decimals}f}" if np.isfinite(value) else _MISSING


def _cell(mean, std, decimals):
    """Format a ``"mean ± std"`` cell; :data:`_MISSING` without a mean."""
    if not np.isfinite(mean):
        return _MISSING
    return f"{_number(mean, decimals)} ± {_number(std, decimals)}"


def _ranks(values, *, decimals, higher_is_better):
    """Rank 1 (best), 2 (second best) or 0 of each value, compared as displayed.

    Values are compared after rounding to ``decimals`` decimals, so that cells showing
    the same number share their mark; ranking is dense (all cells tied for best get 1,
    all cells with the next distinct value get 2). NaN is never ranked.
    """
    shown = [float(f"{v:.{decimals}f}") if np.isfinite(v) else math.nan for v in values]
    best = sorted({v for v in shown if not math.isnan(v)}, reverse=higher_is_better)[:2]
    return [best.index(v) + 1 if v in best else 0 for v in shown]


# --------------------------------------------------------------------------------------
# PaperTable and its renderers
# --------------------------------------------------------------------------------------

_MARKDOWN_SPECIAL = "\\`*_|<>[]"
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
}


def _markdown_escape(text):
    """Backslash-escape the characters that Markdown tables or emphasis would interpret."""
    return "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL else c for c in text)


def _latex_escape(text):
    """Escape LaTeX's special characters; ``±``, ``↑`` and ``↓`` become math symbols."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def _is_summary(label, position):
    """Tell whether a row is an ALL DATASETS row below other rows (set off in output)."""
    return label == ALL_DATASETS and position > 0


@dataclass(frozen=True, eq=False)
class PaperTable:
    """A formatted table with the best and second-best cell of each row marked.

    Parameters
    ----------
    title : str
        Caption of the table.
    cells : pandas.DataFrame
        Cell texts (e.g. ``"0.745 ± 0.051"``); the index holds the row labels, the
        columns the column labels.
    ranks : pandas.DataFrame
        Same index and columns as ``cells``: 1 for the best value of its row (bold), 2
        for the second best (underlined), 0 for an unmarked cell.
    row_header : str, optional
        Header of the row-label column (default ``"Dataset"``).

    Raises
    ------
    ValueError
        If ``ranks`` does not have the index and columns of ``cells`` or holds values
        other than 0, 1 and 2.
    """

    title: str
    cells: pd.DataFrame
    ranks: pd.DataFrame
    row_header: str = "Dataset"

    def __post_init__(self):
        if not (
            self.cells.index.equals(self.ranks.index)
            and self.cells.columns.equals(self.ranks.columns)
        ):
            raise ValueError("ranks must have the index and columns of cells")
        if not self.ranks.isin([0, 1, 2]).to_numpy().all():
            raise ValueError("ranks must be 0 (unmarked), 1 (best) or 2 (second best)")

    def _rows(self):
        """Yield ``(label, [(text, rank), ...])`` per row."""
        for label, texts, ranks in zip(
            self.cells.index, self.cells.to_numpy(), self.ranks.to_numpy(), strict=True
        ):
            yield str(label), list(zip(texts, ranks, strict=True))

    def to_markdown(self) -> str:
        """Render as a Markdown (GFM/pandoc) pipe table with a ``Table:`` caption line.

        Returns
        -------
        str
            Best cells as ``**x**``, second best as ``<u>x</u>``; Markdown's special
            characters (``_``, ``*``, ``|``, …) backslash-escaped.
        """
        marks = {0: "{}", 1: "**{}**", 2: "<u>{}</u>"}
        header = [self.row_header, *map(str, self.cells.columns)]
        lines = [
            f"Table: {_markdown_escape(self.title)}",
            "",
            "| " + " | ".join(map(_markdown_escape, header)) + " |",
            "| :-- |" + " :-: |" * len(self.cells.columns),
        ]
        for label, row in self._rows():
            texts = [marks[rank].format(_markdown_escape(text)) for text, rank in row]
            lines.append("| " + " | ".join([_markdown_escape(label), *texts]) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        r"""Render as a LaTeX ``table`` with a booktabs ``tabular`` and a caption.

        Returns
        -------
        str
            Best cells as ``\textbf{x}``, second best as ``\underline{x}``; ``±`` as
            ``$\pm$``, special characters (``_``, ``&``, ``%``, …) escaped; a
            ``\midrule`` sets off the ALL DATASETS row. Needs ``\usepackage{booktabs}``.
        """
        marks = {0: "{}", 1: r"\textbf{{{}}}", 2: r"\underline{{{}}}"}
        header = [self.row_header, *map(str, self.cells.columns)]
        lines = [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{_latex_escape(self.title)}}}",
            rf"\begin{{tabular}}{{l{'c' * len(self.cells.columns)}}}",
            r"\toprule",
            " & ".join(map(_latex_escape, header)) + r" \\",
            r"\midrule",
        ]
        for position, (label, row) in enumerate(self._rows()):
            if _is_summary(label, position):
                lines.append(r"\midrule")
            texts = [marks[rank].format(_latex_escape(text)) for text, rank in row]
            lines.append(" & ".join([_latex_escape(label), *texts]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """Render as a standalone HTML ``<table>`` with a caption and class names.

        Returns
        -------
        str
            ``<table class="paper-table">`` with ``<caption>``, a ``<thead>`` of column
            headers and a ``<tbody>`` whose rows start with a ``<th scope="row">``
            label. Best cells are ``<td class="best"><b>x</b></td>``, second best
            ``<td class="second"><u>x</u></td>``; the ALL DATASETS row has class
            ``all-datasets``. All text is HTML-escaped.
        """
        marks = {
            0: ("", "{}"),
            1: (' class="best"', "<b>{}</b>"),
            2: (' class="second"', "<u>{}</u>"),
        }
        header = [self.row_header, *map(str, self.cells.columns)]
        lines = [
            '<table class="paper-table">',
            f"<caption>{html.escape(self.title)}</caption>",
            "<thead>",
            "<tr>" + "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header) + "</tr>",
            "</thead>",
            "<tbody>",
        ]
        for position, (label, row) in enumerate(self._rows()):
            style = ' class="all-datasets"' if _is_summary(label, position) else ""
            cells = "".join(
                f"<td{marks[rank][0]}>{marks[rank][1].format(html.escape(text))}</td>"
                for text, rank in row
            )
            lines.append(f'<tr{style}><th scope="row">{html.escape(label)}</th>{cells}</tr>')
        lines += ["</tbody>", "</table>"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Tables II, III and IV
# --------------------------------------------------------------------------------------


def paper_table(
    aggregated: pd.DataFrame,
    metric: str,
    *,
    higher_is_better: bool = True,
    columns: str = "method",
    decimals: int = 3,
    title: str | None = None,
) -> PaperTable:
    """Lay out one metric of :func:`aggregate`'s summary as the paper's Tables II/III.

    Rows are the datasets (sorted) followed by ``ALL DATASETS`` (if present); columns
    are the values of ``columns`` in their order of first appearance in
    ``aggregated`` (filter or reorder its rows beforehand to choose). Cells read
    ``"mean ± std"`` with ``decimals`` decimals, ``"n/a"`` for a NaN mean or std
    (an empty dataset, or a missing method/dataset pair).

    In each row the best mean is marked (bold) and the second best (underlined).
    Means are compared as displayed, i.e. rounded to ``decimals``: equal displayed
    values share their mark, and the next distinct value is second best (dense
    ranking). Unlike the paper, which broke the tie of DPIR and PSSR (PSNR 23.8 both,
    ALL DATASETS) by the standard deviation, ties are not broken. NaN is never ranked.

    Parameters
    ----------
    aggregated : pandas.DataFrame
        Output of :func:`aggregate` (or that table read back from a file): columns
        ``dataset``, ``columns``, ``{metric}_mean`` and ``{metric}_std``.
    metric : str
        The metric, e.g. ``"ssim"``.
    higher_is_better : bool, optional
        ``True`` for PSNR, SSIM and FRC; ``False`` for e.g. ``"frc_resolution_nm"``.
    columns : str, optional
        Column of ``aggregated`` whose values become the table's columns:
        ``"method"`` (Table II) or ``"strategy"`` (Table III, after the caller has kept
        only the rows of one ``arch`` and ``loss``).
    decimals : int, optional
        Decimals shown and compared (the paper uses 3 for SSIM and FRC, 1 for PSNR).
    title : str, optional
        Caption; by default the metric with ↑ or ↓ and ``"mean ± std"``.

    Returns
    -------
    PaperTable
        The table; its row header is ``"Dataset"``.

    Raises
    ------
    ValueError
        If a column is missing, the mean or std column is not numeric, or
        ``aggregated`` has several rows for one value of ``columns`` and one dataset
        (e.g. several archs or losses per strategy).
    """
    mean, std = f"{metric}_mean", f"{metric}_std"
    _require(aggregated, [columns, "dataset", mean, std], "aggregated")
    repeated = aggregated.duplicated([columns, "dataset"])
    if repeated.any():
        pairs = aggregated.loc[repeated, [columns, "dataset"]].drop_duplicates()
        raise ValueError(
            f"aggregated has several rows per ({columns}, dataset), e.g. "
            f"{list(pairs.itertuples(index=False, name=None))[:3]}; keep one row each "
            f"(e.g. one arch and loss per strategy) before laying out {columns!r} columns"
        )
    names = list(dict.fromkeys(aggregated[columns]))
    present = set(aggregated["dataset"])
    datasets = sorted(present - {ALL_DATASETS})
    rows = [*datasets, ALL_DATASETS] if ALL_DATASETS in present else datasets

    try:
        numbers = aggregated[[mean, std]].astype(np.float64)
    except ValueError as err:
        raise ValueError(
            f"aggregated columns {mean!r} and {std!r} must be numeric with NaN for missing "
            f"values (write the summary with na_rep='nan' to read it back with "
            f"keep_default_na=False): {err}"
        ) from err
    layout = pd.concat([aggregated[[columns, "dataset"]], numbers], axis=1)
    means, stds = (
        layout.pivot(index="dataset", columns=columns, values=v).reindex(index=rows, columns=names)
        for v in (mean, std)
    )
    index, header = pd.Index(rows, dtype=object), pd.Index(names, dtype=object)
    cells = pd.DataFrame(
        np.vectorize(_cell, otypes=[object])(means.to_numpy(), stds.to_numpy(), decimals),
        index=index,
        columns=header,
    )
    ranks = pd.DataFrame(
        [
            _ranks(row, decimals=decimals, higher_is_better=higher_is_better)
            for row in means.to_numpy()
        ],
        index=index,
        columns=header,
    )
    arrow = "↑" if higher_is_better else "↓"
    return PaperTable(title=title or f"{metric} {arrow} (mean ± std)", cells=cells, ranks=ranks)


def cost_table(
    rows: pd.DataFrame,
    *,
    decimals: int = 3,
    parameter_decimals: int = 1,
    ddof: int = DDOF,
) -> PaperTable:
    """Table IV: network parameters and running time per method.

    Two rows, as in the paper: the number of parameters in millions, and the mean ±
    std of the seconds per slice (over the rows of the method: the std is the spread
    between slices for per-slice rows, between runs for per-run rows; ``"n/a"`` with a
    single row). Only the time row is ranked: the fastest method in bold, the second
    fastest underlined (compared as displayed, ties shared, see :func:`paper_table`).
    Every method given is ranked, Bicubic included: it is a method of the comparison,
    and in the paper by far the fastest; to rank the networks only, drop its rows.

    Parameters
    ----------
    rows : pandas.DataFrame
        Columns ``method``, ``parameters`` (the number of trainable parameters, a count,
        not millions; the same in all rows of a method, or NaN if not applicable) and
        ``seconds_per_slice``; one row per slice or per run. Non-finite times are left
        out (:func:`emsrflow.metrics.finite_mean_std`).
    decimals : int, optional
        Decimals of the times (shown and compared).
    parameter_decimals : int, optional
        Decimals of the parameter counts in millions (the paper uses 1).
    ddof : int, optional
        Delta degrees of freedom of the time's standard deviation (default 1).

    Returns
    -------
    PaperTable
        Columns in the methods' order of first appearance; row header ``"Method"``.

    Raises
    ------
    ValueError
        If a column is missing or a method has different parameter counts.
    """
    _require(rows, ["method", "parameters", "seconds_per_slice"], "rows")
    parameters, times, time_means = {}, {}, {}
    for method, group in rows.groupby("method", sort=False):
        counts = group["parameters"].astype(np.float64).dropna().unique()
        if len(counts) > 1:
            raise ValueError(f"method {method!r} has different parameter counts {list(counts)}")
        parameters[method] = _number(
            counts[0] / 1e6 if len(counts) else math.nan, parameter_decimals
        )
        mean, std, _ = finite_mean_std(group["seconds_per_slice"], ddof=ddof)
        times[method], time_means[method] = _cell(mean, std, decimals), mean
    names = pd.Index(list(times), dtype=object)
    labels = pd.Index([_PARAMETER_ROW, _TIME_ROW], dtype=object)
    cells = pd.DataFrame([parameters, times], index=labels, columns=names)
    time_ranks = _ranks(list(time_means.values()), decimals=decimals, higher_is_better=False)
    ranks = pd.DataFrame([[0] * len(names), time_ranks], index=labels, columns=names)
    return PaperTable(
        title="Network parameters and running time",
        cells=cells,
        ranks=ranks,
        row_header="Method",
    )


def metric_table(
    aggregated: pd.DataFrame,
    metrics: Mapping[str, tuple[bool, int]],
    *,
    columns: str = "variant",
    dataset: str = ALL_DATASETS,
    title: str | None = None,
) -> PaperTable:
    """Tables V and VI: metrics (rows) × variants (columns), as the paper's ablations.

    Each column is one value of ``columns`` (a variant: a hyper-parameter setting, a
    choice of λ, a noise level), in its order of first appearance; each row one metric,
    read from the variant's row of ``dataset`` in :func:`aggregate`'s summary (by
    default ALL DATASETS, the mean ± std over the held-out datasets' means). Cells and
    marks as in :func:`paper_table`: the best variant of each row in bold, the second
    underlined, compared as displayed with the metric's own direction and decimals.

    Parameters
    ----------
    aggregated : pandas.DataFrame
        Output of :func:`aggregate`: columns ``dataset``, ``columns`` and
        ``{metric}_mean``, ``{metric}_std`` of every metric.
    metrics : mapping of str to (bool, int)
        Metric → (higher is better, decimals), in the order of the rows.
    columns : str, optional
        Column of ``aggregated`` naming the variants (default ``"variant"``).
    dataset : str, optional
        The summary row used per variant (default :data:`ALL_DATASETS`).
    title : str, optional
        Caption; by default ``"Ablation (mean ± std over the datasets)"``.

    Returns
    -------
    PaperTable
        Row labels ``"{metric} ↑"`` or ``"{metric} ↓"``; row header ``"Metric"``.

    Raises
    ------
    ValueError
        If a column is missing, no row holds ``dataset``, or a variant has several rows
        of ``dataset``.
    """
    metrics = dict(metrics)
    _require(
        aggregated,
        [columns, "dataset", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))],
        "aggregated",
    )
    rows = aggregated[aggregated["dataset"] == dataset]
    if rows.empty:
        raise ValueError(f"aggregated has no {dataset!r} rows")
    if rows[columns].duplicated().any():
        raise ValueError(
            f"aggregated has several {dataset!r} rows per {columns!r}: "
            f"{sorted(set(rows.loc[rows[columns].duplicated(), columns]))}"
        )
    names = pd.Index(list(rows[columns]), dtype=object)
    labels, cells, ranks = [], [], []
    for metric, (higher_is_better, decimals) in metrics.items():
        means, stds = (rows[f"{metric}_{s}"].astype(np.float64).to_numpy() for s in ("mean", "std"))
        labels.append(f"{metric} {'↑' if higher_is_better else '↓'}")
        cells.append([_cell(m, s, decimals) for m, s in zip(means, stds, strict=True)])
        ranks.append(_ranks(list(means), decimals=decimals, higher_is_better=higher_is_better))
    index = pd.Index(labels, dtype=object)
    return PaperTable(
        title=title or "Ablation (mean ± std over the datasets)",
        cells=pd.DataFrame(cells, index=index, columns=names),
        ranks=pd.DataFrame(ranks, index=index, columns=names),
        row_header="Metric",
    )
