import io
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from emsrflow.tables import (
    ALL_DATASETS,
    METRICS,
    SEGMENTATION_METRICS,
    PaperTable,
    aggregate,
    cost_table,
    metric_table,
    paper_table,
)

NAN = math.nan
EMSR = ("emsrnet_real_l1", "emsrnet", "real", "l1")
BICUBIC = ("bicubic", "bicubic", "", "")

# (method, dataset, PSNR, status); brain2 listed first to check that datasets are sorted.
PSNR_ROWS = [
    (EMSR, "brain2_ipsi", 25.0, "ok"),
    (EMSR, "brain2_ipsi", 27.0, "ok"),
    (EMSR, "brain2_ipsi", NAN, "constant slice"),
    (EMSR, "brain2_ipsi", NAN, "constant slice"),
    (EMSR, "brain1_ipsi", 20.0, "ok"),
    (EMSR, "brain1_ipsi", 22.0, "ok"),
    (EMSR, "brain1_ipsi", 24.0, "ok"),
    (EMSR, "brain3_ipsi", 29.0, "ok"),
    (EMSR, "brain3_ipsi", 31.0, "ok"),
    (EMSR, "brain3_ipsi", NAN, "non-finite prediction"),
    (BICUBIC, "brain1_ipsi", 19.0, "ok"),
    (BICUBIC, "brain1_ipsi", 21.0, "ok"),
    # All excluded; the finite value of the excluded slice must not be used either.
    (BICUBIC, "brain2_ipsi", 99.0, "constant slice"),
    (BICUBIC, "brain2_ipsi", NAN, "non-finite prediction"),
    (BICUBIC, "brain3_ipsi", 28.0, "ok"),
    (BICUBIC, "brain3_ipsi", 28.0, "ok"),
    (BICUBIC, "brain3_ipsi", 28.0, "ok"),
    # An "ok" slice restored exactly: infinite PSNR, left out of the PSNR mean only.
    (BICUBIC, "brain3_ipsi", math.inf, "ok"),
]


def make_slices(rows=PSNR_ROWS):
    records = []
    for z, ((method, arch, strategy, loss), dataset, psnr, status) in enumerate(rows):
        ok = status == "ok"
        records.append(
            {
                "dataset": dataset,
                "animal": dataset.split("_")[0],
                "hemisphere": "ipsi",
                "fold": dataset.split("_")[0],
                "method": method,
                "arch": arch,
                "strategy": strategy,
                "loss": loss,
                "slice": z,
                "status": status,
                "psnr": psnr,
                "ssim": 0.5 if ok else NAN,
                "frc": 0.3 if ok else NAN,
                "frc_resolution_nm": 12.0 if ok else NAN,
            }
        )
    return pd.DataFrame(records)


def strategy_rows():
    """Three strategies with l1, one with l2, and bicubic, on datasets b1 and b2."""
    rows = []
    for strategy, loss, psnr in [
        ("real", "l1", 24.0),
        ("denoised", "l1", 25.0),
        ("synthetic1", "l1", 22.0),
        ("real", "l2", 30.0),
    ]:
        method = ("_".join(["emsrnet", strategy, loss]), "emsrnet", strategy, loss)
        rows += [(method, d, psnr + k, "ok") for d in ("b1", "b2") for k in (0.0, 1.0)]
    return [*rows, (BICUBIC, "b1", 20.0, "ok"), (BICUBIC, "b2", 20.0, "ok")]


@pytest.fixture(scope="module")
def summary():
    return aggregate(make_slices())


def row(summary, method, dataset):
    match = summary[(summary.method == method) & (summary.dataset == dataset)]
    assert len(match) == 1
    return match.iloc[0]


# --------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------


def test_layout_of_the_summary(summary):
    assert list(summary.method) == ["emsrnet_real_l1"] * 4 + ["bicubic"] * 4
    datasets = ["brain1_ipsi", "brain2_ipsi", "brain3_ipsi", ALL_DATASETS]
    assert list(summary.dataset) == datasets * 2
    assert list(summary.columns[:5]) == ["method", "arch", "strategy", "loss", "dataset"]
    for metric in METRICS:
        assert {f"{metric}_mean", f"{metric}_std", f"{metric}_n"} <= set(summary.columns)
    assert list(summary.strategy) == ["real"] * 4 + [""] * 4


@pytest.mark.parametrize(
    ("dataset", "mean", "std", "n"),
    [
        ("brain1_ipsi", 22.0, 2.0, 3),  # 20, 22, 24
        ("brain2_ipsi", 26.0, math.sqrt(2), 2),  # 25, 27; two constant slices
        ("brain3_ipsi", 30.0, math.sqrt(2), 2),  # 29, 31; one non-finite prediction
    ],
)
def test_dataset_mean_and_sample_std_over_slices(summary, dataset, mean, std, n):
    r = row(summary, "emsrnet_real_l1", dataset)
    assert r.psnr_mean == pytest.approx(mean)
    assert r.psnr_std == pytest.approx(std)  # ddof = 1
    assert r.psnr_n == n
    assert r.n_datasets == 1


def test_all_datasets_is_mean_and_std_of_the_dataset_means(summary):
    r = row(summary, "emsrnet_real_l1", ALL_DATASETS)
    # Dataset means 22, 26, 30: mean 26, sample std 4 (not the mean over the 7 slices).
    assert r.psnr_mean == pytest.approx(26.0)
    assert r.psnr_std == pytest.approx(4.0)
    assert r.psnr_n == 3
    assert r.n_datasets == 3
    pooled = np.mean([20, 22, 24, 25, 27, 29, 31])
    assert r.psnr_mean != pytest.approx(pooled)


def test_ddof_is_an_option():
    summary = aggregate(make_slices(), ddof=0, metrics=["psnr"])
    assert row(summary, "emsrnet_real_l1", "brain1_ipsi").psnr_std == pytest.approx(
        math.sqrt(8 / 3)
    )
    assert row(summary, "emsrnet_real_l1", ALL_DATASETS).psnr_std == pytest.approx(
        math.sqrt(32 / 3)
    )
    assert "ssim_mean" not in summary.columns


def test_excluded_slices_are_counted_with_their_status(summary):
    r = row(summary, "emsrnet_real_l1", "brain2_ipsi")
    assert (r.n_slices, r.n_excluded, r.excluded) == (4, 2, "2 constant slice")
    r = row(summary, "emsrnet_real_l1", "brain1_ipsi")
    assert (r.n_slices, r.n_excluded, r.excluded) == (3, 0, "")
    r = row(summary, "emsrnet_real_l1", ALL_DATASETS)
    assert (r.n_slices, r.n_excluded) == (10, 3)
    assert r.excluded == "2 constant slice; 1 non-finite prediction"


def test_dataset_with_every_slice_excluded_is_nan_not_a_mean_over_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = aggregate(make_slices())
    r = row(summary, "bicubic", "brain2_ipsi")
    assert math.isnan(r.psnr_mean) and math.isnan(r.psnr_std)
    assert r.psnr_n == 0
    assert (r.n_slices, r.n_excluded) == (2, 2)
    assert r.excluded == "1 constant slice; 1 non-finite prediction"
    # ALL DATASETS over the two remaining dataset means, 20 and 28, and says so.
    r = row(summary, "bicubic", ALL_DATASETS)
    assert r.psnr_mean == pytest.approx(24.0)
    assert r.psnr_std == pytest.approx(math.sqrt(32))
    assert (r.psnr_n, r.n_datasets) == (2, 3)


def test_non_finite_value_of_an_ok_slice_is_left_out_of_that_metric_only(summary):
    r = row(summary, "bicubic", "brain3_ipsi")
    assert (r.n_slices, r.n_excluded, r.excluded) == (4, 0, "")
    assert (r.psnr_mean, r.psnr_std, r.psnr_n) == (28.0, 0.0, 3)
    assert r.ssim_n == 4


def test_single_dataset_has_no_std_over_datasets():
    summary = aggregate(make_slices(PSNR_ROWS[4:7]))
    r = row(summary, "emsrnet_real_l1", ALL_DATASETS)
    assert r.psnr_mean == pytest.approx(22.0)
    assert math.isnan(r.psnr_std)
    assert r.psnr_n == 1


def test_descriptors_varying_within_a_group_are_dropped():
    slices = make_slices(strategy_rows())
    summary = aggregate(slices, by="arch", metrics=["psnr"])
    assert list(summary.columns[:2]) == ["arch", "dataset"]
    summary = aggregate(slices, by=["arch", "strategy"], metrics=["psnr"])
    assert list(summary.columns[:3]) == ["arch", "strategy", "dataset"]
    summary = aggregate(slices[slices.loss == "l1"], by=["arch", "strategy"], metrics=["psnr"])
    assert list(summary.columns[:4]) == ["arch", "strategy", "loss", "dataset"]


def test_missing_columns_and_labels_raise():
    slices = make_slices()
    with pytest.raises(ValueError, match="status"):
        aggregate(slices.drop(columns="status"))
    with pytest.raises(ValueError, match="missing values"):
        aggregate(slices.assign(method=slices.method.where(slices.slice > 0)))


# --------------------------------------------------------------------------------------
# paper_table
# --------------------------------------------------------------------------------------


def synthetic(means, stds=None):
    """An aggregated table for one metric ``x`` with the given means per method."""
    datasets = ["d1"]
    records = [
        {
            "method": method,
            "dataset": datasets[0],
            "x_mean": mean,
            "x_std": 0.01 if stds is None else stds[method],
        }
        for method, mean in means.items()
    ]
    return pd.DataFrame(records)


def marks(table, row=0):
    return dict(zip(table.ranks.columns, table.ranks.iloc[row], strict=True))


def test_paper_table_layout_and_cells(summary):
    table = paper_table(summary, "psnr", decimals=1)
    assert list(table.cells.index) == ["brain1_ipsi", "brain2_ipsi", "brain3_ipsi", ALL_DATASETS]
    assert list(table.cells.columns) == ["emsrnet_real_l1", "bicubic"]
    assert table.cells.loc["brain1_ipsi", "emsrnet_real_l1"] == "22.0 ± 2.0"
    assert table.cells.loc["brain2_ipsi", "bicubic"] == "n/a"
    assert table.cells.loc[ALL_DATASETS, "bicubic"] == "24.0 ± 5.7"
    assert table.cells.loc[ALL_DATASETS, "emsrnet_real_l1"] == "26.0 ± 4.0"
    assert table.ranks.loc["brain2_ipsi"].tolist() == [1, 0]  # NaN never ranked
    assert table.ranks.loc[ALL_DATASETS].tolist() == [1, 2]
    assert "psnr" in table.title and "↑" in table.title


def test_missing_std_is_shown_as_not_available():
    summary = aggregate(make_slices(PSNR_ROWS[4:7]), metrics=["psnr"])
    table = paper_table(summary, "psnr", decimals=2)
    assert table.cells.loc[ALL_DATASETS, "emsrnet_real_l1"] == "22.00 ± n/a"


@pytest.mark.parametrize(
    ("higher_is_better", "expected"),
    [
        (True, {"a": 0, "b": 2, "c": 1, "d": 0}),
        (False, {"a": 1, "b": 0, "c": 0, "d": 2}),
    ],
)
def test_best_and_second_best_per_row(higher_is_better, expected):
    aggregated = synthetic({"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.3})
    table = paper_table(aggregated, "x", higher_is_better=higher_is_better)
    assert marks(table) == expected
    assert ("↑" in table.title) is higher_is_better


def test_ties_share_the_mark_and_are_compared_as_displayed():
    # 0.7451 and 0.7449 both show 0.745: tied for best; 0.700 is then second best.
    aggregated = synthetic({"a": 0.7451, "b": 0.7449, "c": 0.700, "d": 0.700, "e": 0.5})
    table = paper_table(aggregated, "x")
    assert marks(table) == {"a": 1, "b": 1, "c": 2, "d": 2, "e": 0}
    # With 4 decimals they differ.
    table = paper_table(aggregated, "x", decimals=4)
    assert marks(table) == {"a": 1, "b": 2, "c": 0, "d": 0, "e": 0}


def test_nan_is_never_ranked():
    table = paper_table(synthetic({"a": NAN, "b": 0.2, "c": NAN}), "x")
    assert marks(table) == {"a": 0, "b": 1, "c": 0}
    assert table.cells.iloc[0].tolist() == ["n/a", "0.200 ± 0.010", "n/a"]


def test_markdown_marks_and_escapes(summary):
    text = paper_table(summary, "psnr", decimals=1).to_markdown()
    lines = text.splitlines()
    assert lines[0].startswith("Table: psnr")
    assert "| Dataset | emsrnet\\_real\\_l1 | bicubic |" in lines
    assert "| brain1\\_ipsi | **22.0 ± 2.0** | <u>20.0 ± 1.4</u> |" in lines
    assert "| brain2\\_ipsi | **26.0 ± 1.4** | n/a |" in lines
    assert "| ALL DATASETS | **26.0 ± 4.0** | <u>24.0 ± 5.7</u> |" in lines


def test_latex_marks_and_escapes(summary):
    text = paper_table(summary, "psnr", decimals=1, higher_is_better=False).to_latex()
    lines = text.splitlines()
    assert r"\toprule" in lines and r"\bottomrule" in lines
    assert r"\caption{psnr $\downarrow$ (mean $\pm$ std)}" in lines
    assert r"Dataset & emsrnet\_real\_l1 & bicubic \\" in lines
    assert r"brain1\_ipsi & \underline{22.0 $\pm$ 2.0} & \textbf{20.0 $\pm$ 1.4} \\" in lines
    assert r"brain3\_ipsi & \underline{30.0 $\pm$ 1.4} & \textbf{28.0 $\pm$ 0.0} \\" in lines
    all_row = next(i for i, line in enumerate(lines) if line.startswith(ALL_DATASETS))
    assert lines[all_row - 1] == r"\midrule"
    assert "_ipsi" not in text.replace(r"\_ipsi", "")
    assert "±" not in text


def test_html_marks_classes_and_escapes():
    aggregated = synthetic({"a<b & c": 0.9, "plain_name": 0.8, "low": 0.1})
    html = paper_table(aggregated, "x", title="SSIM <x>").to_html()
    assert html.startswith('<table class="paper-table">')
    assert html.rstrip().endswith("</table>")
    assert "<caption>SSIM &lt;x&gt;</caption>" in html
    assert '<th scope="col">a&lt;b &amp; c</th>' in html
    assert '<th scope="col">plain_name</th>' in html
    assert (
        '<tr><th scope="row">d1</th><td class="best"><b>0.900 ± 0.010</b></td>'
        '<td class="second"><u>0.800 ± 0.010</u></td><td>0.100 ± 0.010</td></tr>'
    ) in html


def test_html_sets_off_the_all_datasets_row(summary):
    html = paper_table(summary, "ssim").to_html()
    assert '<tr class="all-datasets"><th scope="row">ALL DATASETS</th>' in html
    assert html.count("all-datasets") == 1


def test_strategies_as_columns():
    summary = aggregate(make_slices(strategy_rows()))
    with pytest.raises(ValueError, match="several rows per"):
        paper_table(summary, "psnr", columns="strategy")
    l1 = summary[(summary.arch == "emsrnet") & (summary.loss == "l1")]
    table = paper_table(l1, "psnr", columns="strategy", decimals=1)
    assert list(table.cells.columns) == ["real", "denoised", "synthetic1"]
    assert list(table.cells.index) == ["b1", "b2", ALL_DATASETS]
    assert table.cells.loc["b1", "denoised"] == "25.5 ± 0.7"
    assert table.ranks.loc[ALL_DATASETS].tolist() == [2, 1, 0]


def test_summary_read_back_from_a_file(summary):
    def read(**to_csv):
        buffer = io.StringIO()
        summary.to_csv(buffer, sep="\t", index=False, **to_csv)
        buffer.seek(0)
        return pd.read_csv(buffer, sep="\t", keep_default_na=False, na_values=["nan", "NaN"])

    expected = paper_table(summary, "psnr")
    table = paper_table(read(na_rep="nan"), "psnr")
    pd.testing.assert_frame_equal(table.cells, expected.cells)
    pd.testing.assert_frame_equal(table.ranks, expected.ranks)
    with pytest.raises(ValueError, match="na_rep='nan'"):
        paper_table(read(), "psnr")  # NaN written as "" and read back as text


def test_paper_table_checks_its_input(summary):
    with pytest.raises(ValueError, match="voi_mean"):
        paper_table(summary, "voi")
    cells = pd.DataFrame([["1"]], index=["r"], columns=["c"])
    with pytest.raises(ValueError, match="index and columns"):
        PaperTable(title="t", cells=cells, ranks=pd.DataFrame([[0]], index=["r"], columns=["x"]))
    with pytest.raises(ValueError, match="0 \\(unmarked\\)"):
        PaperTable(title="t", cells=cells, ranks=pd.DataFrame([[3]], index=["r"], columns=["c"]))


# --------------------------------------------------------------------------------------
# cost_table
# --------------------------------------------------------------------------------------


def cost_rows():
    return pd.DataFrame(
        {
            "method": ["bicubic", "dpir", "emsrnet_real_l1", "emsrnet_real_l1", "swinir"],
            "parameters": [NAN, 32_700_000, 3_124_032, 3_124_032, 11_750_000],
            "seconds_per_slice": [0.017, 9.05, 0.25, 0.26, 0.309],
        }
    )


def test_cost_table_ranks_the_fastest_two_bicubic_included():
    table = cost_table(cost_rows())
    assert list(table.cells.columns) == ["bicubic", "dpir", "emsrnet_real_l1", "swinir"]
    parameters, time = table.cells.index
    assert table.cells.loc[parameters].tolist() == ["n/a", "32.7", "3.1", "11.8"]
    assert table.cells.loc[time, "emsrnet_real_l1"] == "0.255 ± 0.007"
    assert table.cells.loc[time, "bicubic"] == "0.017 ± n/a"
    assert table.ranks.loc[time].tolist() == [1, 0, 2, 0]
    assert table.ranks.loc[parameters].tolist() == [0, 0, 0, 0]
    assert table.row_header == "Method"
    assert "| Time (seconds per slice) | **0.017 ± n/a** | 9.050 ± n/a |" in table.to_markdown()


def test_cost_table_without_bicubic_ranks_the_networks():
    rows = cost_rows()
    table = cost_table(rows[rows.method != "bicubic"])
    assert table.ranks.iloc[1].tolist() == [0, 1, 2]


def test_cost_table_rejects_inconsistent_parameter_counts():
    rows = cost_rows()
    rows.loc[3, "parameters"] = 3_000_000
    with pytest.raises(ValueError, match="different parameter counts"):
        cost_table(rows)
    with pytest.raises(ValueError, match="seconds_per_slice"):
        cost_table(rows.drop(columns="seconds_per_slice"))


# --------------------------------------------------------------------------------------
# metric_table (ablations) and segmentation metrics
# --------------------------------------------------------------------------------------


def ablation_summary():
    """Three λ variants on two datasets, with PSNR, SSIM and ARAND (lower is better)."""
    rows = []
    for variant, psnr, arand in [("λ=(1, 0, 0)", 22.5, 0.40), ("λ=(1, 1, 1)", 22.7, 0.30)]:
        for dataset, shift in (("b3_ipsi", 0.0), ("b3_contra", 1.0)):
            rows += [
                {
                    "variant": variant,
                    "dataset": dataset,
                    "status": "ok",
                    "psnr": psnr + shift + k,
                    "ssim": 0.75,
                    "arand": arand,
                }
                for k in (-0.1, 0.1)
            ]
    return aggregate(pd.DataFrame(rows), metrics=["psnr", "ssim", "arand"], by="variant")


def test_metric_table_has_metrics_as_rows_and_variants_as_columns():
    summary = ablation_summary()
    metrics = {"psnr": (True, 1), "ssim": (True, 3), "arand": (False, 3)}
    table = metric_table(summary, metrics, title="Table VI")
    assert list(table.cells.columns) == ["λ=(1, 0, 0)", "λ=(1, 1, 1)"]
    assert list(table.cells.index) == ["psnr ↑", "ssim ↑", "arand ↓"]
    assert table.row_header == "Metric" and table.title == "Table VI"
    # ALL DATASETS: mean ± sample std over the two dataset means (23.0 and 24.0)
    assert table.cells.loc["psnr ↑", "λ=(1, 1, 1)"] == "23.2 ± 0.7"
    assert table.ranks.loc["psnr ↑"].tolist() == [2, 1]
    assert table.ranks.loc["ssim ↑"].tolist() == [1, 1]  # a tie shares the mark
    assert table.ranks.loc["arand ↓"].tolist() == [2, 1]  # lower is better
    one = metric_table(summary, metrics, dataset="b3_ipsi")
    assert one.cells.loc["psnr ↑", "λ=(1, 0, 0)"] == "22.5 ± 0.1"  # std over slices
    assert "| arand ↓ | <u>0.400 ± 0.000</u> | **0.300 ± 0.000** |" in one.to_markdown()


def test_metric_table_checks_its_input():
    summary = ablation_summary()
    with pytest.raises(ValueError, match="voi_split"):
        metric_table(summary, {"voi_split": (False, 3)})
    with pytest.raises(ValueError, match="no 'brain9' rows"):
        metric_table(summary, {"psnr": (True, 1)}, dataset="brain9")
    twice = pd.concat([summary, summary])
    with pytest.raises(ValueError, match="several"):
        metric_table(twice, {"psnr": (True, 1)})


def test_segmentation_metrics_are_summarised_where_labelled():
    slices = make_slices()
    labelled = slices.dataset == "brain1_ipsi"
    for metric in SEGMENTATION_METRICS:
        slices[metric] = np.where(labelled, 0.5, NAN)
    summary = aggregate(slices, metrics=[*METRICS, *SEGMENTATION_METRICS])
    rows = summary.set_index(["method", "dataset"])
    assert rows.loc[("bicubic", "brain1_ipsi"), "arand_mean"] == pytest.approx(0.5)
    assert np.isnan(rows.loc[("bicubic", "brain3_ipsi"), "voi_split_mean"])
    assert rows.loc[("bicubic", ALL_DATASETS), "voi_merge_n"] == 1
