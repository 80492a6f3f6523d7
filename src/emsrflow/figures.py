"""Figures of an EM super-resolution study (EMSR paper, Sec. III.C–G, Figs. 5, 7, 11, 13, 14).

Every plotting function takes plain arrays or tables and returns a
:class:`matplotlib.figure.Figure` built without pyplot (no global state, no display
needed); saving it (``figure.savefig(path)``, rendered by Agg) is the caller's job.

Plots
    :func:`frc_curves` (Fourier ring correlation per method with the 1/7 threshold),
    :func:`metric_boxplots` (per-slice metric per dataset and method),
    :func:`comparison_panel` (full fields with a zoom rectangle and the zoomed crops,
    like the paper's Figs. 5 and 7), :func:`training_curves` (loss and learning rate
    against the step), :func:`ablation_curves` (metrics against a noise level or
    hyper-parameter, like Figs. 13 and 14) and :func:`xz_views` (xz and yz sections with
    the physical aspect ratio, like Fig. 11; :func:`section_views` draws sections already
    cut).
Helpers
    :func:`average_curves` averages per-slice FRC curves; :func:`choose_crop` picks the
    zoom window of highest variance, deterministically.

Images are 2-D arrays (y, x) and volumes 3-D arrays (z, y, x); voxel sizes are
(z, y, x) in nanometres, as everywhere in emsrflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .metrics import psnr, ssim

__all__ = [
    "METRIC_LABELS",
    "ablation_curves",
    "average_curves",
    "choose_crop",
    "comparison_panel",
    "frc_curves",
    "metric_boxplots",
    "qc_histograms",
    "qc_panels",
    "section_views",
    "training_curves",
    "xz_views",
]

#: Axis labels of the per-slice metrics (columns of ``results/tables/slices.parquet``).
METRIC_LABELS = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "frc": "mean FRC",
    "frc_resolution_nm": "FRC resolution (nm)",
    "voi_split": "VOI split (bits)",
    "voi_merge": "VOI merge (bits)",
    "voi": "VOI (bits)",
    "arand": "adapted Rand error",
}

#: Percentiles of the display window shared by the images of one figure.
DISPLAY_PERCENTILES = (0.5, 99.5)


def _colors(n: int) -> list:
    """``n`` distinguishable colours: tab10, then tab20 beyond ten."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _display_window(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """Grey-level window (vmin, vmax) of the finite pixels of ``images`` pooled."""
    pixels = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in images])
    pixels = pixels[np.isfinite(pixels)]
    if pixels.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(pixels, DISPLAY_PERCENTILES)
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1.0)


# --------------------------------------------------------------------------------------
# FRC curves
# --------------------------------------------------------------------------------------


def average_curves(curves: Sequence[tuple[np.ndarray, np.ndarray]]):
    """Average per-slice FRC curves ring by ring.

    Curves with a NaN ring (a slice without power in a ring, e.g. a constant slice,
    which :func:`emsrflow.metrics.slice_metrics` reports as excluded) are left out.

    Parameters
    ----------
    curves : sequence of (frequencies, correlation)
        Curves of :func:`emsrflow.metrics.frc_curve`, all with the same frequencies.

    Returns
    -------
    frequencies, mean, std : numpy.ndarray
        The common frequencies (cycles per pixel) and the mean and population standard
        deviation of the correlation per ring; mean and std are NaN when no curve is
        usable.
    n : int
        Number of curves averaged.

    Raises
    ------
    ValueError
        If there are no curves or their frequencies differ.
    """
    if len(curves) == 0:
        raise ValueError("no FRC curves to average")
    frequencies = np.asarray(curves[0][0], dtype=np.float64)
    rows = []
    for freq, corr in curves:
        freq, corr = np.asarray(freq, dtype=np.float64), np.asarray(corr, dtype=np.float64)
        if freq.shape != frequencies.shape or not np.allclose(freq, frequencies):
            raise ValueError(
                f"FRC curves must share their frequencies (same slice shape), got "
                f"{freq.size} and {frequencies.size} rings"
            )
        if np.all(np.isfinite(corr)):
            rows.append(corr)
    if not rows:
        nan = np.full(frequencies.shape, np.nan)
        return frequencies, nan, nan.copy(), 0
    stack = np.stack(rows)
    return frequencies, stack.mean(axis=0), stack.std(axis=0), len(rows)


def frc_curves(
    curves: Mapping[str, tuple],
    *,
    pixel_nm: float | None = None,
    threshold: float = 1 / 7,
    title: str | None = None,
) -> Figure:
    """Plot FRC curves, one per method, with the fixed-threshold line.

    Parameters
    ----------
    curves : mapping of str to (frequencies, correlation) or (frequencies, mean, std)
        Per method: frequencies in cycles per pixel (as from
        :func:`emsrflow.metrics.frc_curve`) and the correlation; with a third array, the
        standard deviation over slices, drawn as a band of ± one std.
    pixel_nm : float, optional
        Pixel size in nm; the frequency axis is then in 1/nm (cycles per pixel divided by
        the pixel size), else in cycles per pixel.
    threshold : float, optional
        Height of the horizontal threshold line, 1/7 by default.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a line per method and the threshold line, all in the legend.

    Raises
    ------
    ValueError
        If ``curves`` is empty, an entry's arrays differ in length, or ``pixel_nm`` is
        not a positive number.
    """
    if not curves:
        raise ValueError("no FRC curves to plot")
    if pixel_nm is not None and not (math.isfinite(pixel_nm) and pixel_nm > 0):
        raise ValueError(f"pixel_nm must be a finite number > 0, got {pixel_nm}")
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    scale = 1.0 if pixel_nm is None else 1.0 / pixel_nm
    for color, (name, arrays) in zip(_colors(len(curves)), curves.items(), strict=True):
        freq, corr, *rest = (np.asarray(a, dtype=np.float64) for a in arrays)
        if freq.shape != corr.shape or any(r.shape != freq.shape for r in rest):
            raise ValueError(f"{name}: frequencies and correlation differ in length")
        axes.plot(freq * scale, corr, color=color, label=name, linewidth=1.4)
        if rest:
            axes.fill_between(
                freq * scale, corr - rest[0], corr + rest[0], color=color, alpha=0.15, lw=0
            )
    axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label="1/7 threshold")
    axes.set_xlabel(
        "spatial frequency (1/nm)" if pixel_nm is not None else "spatial frequency (cycles/pixel)"
    )
    axes.set_ylabel("Fourier ring correlation")
    axes.set_xlim(left=0)
    axes.set_ylim(min(-0.05, axes.get_ylim()[0]), 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncols=2 if len(curves) > 6 else 1)
    if title:
        axes.set_title(title)
    return figure


# --------------------------------------------------------------------------------------
# Box plots
# --------------------------------------------------------------------------------------


def metric_boxplots(
    slices: pd.DataFrame,
    metric: str,
    *,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    higher_is_better: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Box plots of a per-slice metric, grouped by dataset, one box per method.

    Only rows with ``status == "ok"`` (when the column exists) and a finite value enter,
    the slices the tables average.

    Parameters
    ----------
    slices : pandas.DataFrame
        Slice table with columns ``dataset``, ``method`` and ``metric`` (as
        ``results/tables/slices.parquet``).
    metric : str
        The column to plot.
    datasets, methods : sequence of str, optional
        Order of the groups and of the boxes in a group; by default their order of
        appearance in ``slices``.
    higher_is_better : bool, optional
        Adds an arrow to the axis label (↑ or ↓) when given.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with a tick per dataset and a legend entry per method.

    Raises
    ------
    ValueError
        If a column is missing or no finite value is left.
    """
    missing = {"dataset", "method", metric} - set(slices.columns)
    if missing:
        raise ValueError(f"slice table lacks the columns {sorted(missing)}")
    rows = slices
    if "status" in rows.columns:
        rows = rows[rows.status == "ok"]
    values = pd.to_numeric(rows[metric], errors="coerce")
    rows = rows[np.isfinite(values)]
    if rows.empty:
        raise ValueError(f"no finite values of {metric!r} to plot")
    datasets = list(datasets or pd.unique(rows.dataset))
    methods = list(methods or pd.unique(rows.method))
    groups = {
        key: group[metric].to_numpy(float) for key, group in rows.groupby(["dataset", "method"])
    }

    width = 0.8 / len(methods)
    figure = Figure(
        figsize=(max(6.0, 2.5 + len(datasets) * (0.2 * len(methods) + 0.3)), 5.0),
        layout="constrained",
    )
    axes = figure.subplots()
    colors = _colors(len(methods))
    for j, (method, color) in enumerate(zip(methods, colors, strict=True)):
        data, positions = [], []
        for i, dataset in enumerate(datasets):
            if (dataset, method) in groups:
                data.append(groups[dataset, method])
                positions.append(i - 0.4 + width * (j + 0.5))
        if not data:
            continue
        boxes = axes.boxplot(
            data,
            positions=positions,
            widths=width * 0.85,
            patch_artist=True,
            showfliers=True,
            flierprops={"markersize": 2, "markeredgecolor": color},
            medianprops={"color": "black"},
            manage_ticks=False,
        )
        for box in boxes["boxes"]:
            box.set_facecolor(color)
            box.set_alpha(0.8)
    axes.set_xticks(range(len(datasets)), datasets, rotation=20 if len(datasets) > 4 else 0)
    axes.set_xlim(-0.5, len(datasets) - 0.5)
    arrow = {True: " ↑", False: " ↓", None: ""}[higher_is_better]
    axes.set_ylabel(METRIC_LABELS.get(metric, metric) + arrow)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(
        handles=[
            Patch(facecolor=c, alpha=0.8, label=m) for m, c in zip(methods, colors, strict=True)
        ],
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    if title:
        axes.set_title(title)
    return figure


# --------------------------------------------------------------------------------------
# Visual comparison
# --------------------------------------------------------------------------------------


def choose_crop(image: np.ndarray, size: int | None = None) -> tuple[int, int, int]:
    """Find the square window of highest intensity variance: a zoom region full of structure.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (y, x), typically the reference.
    size : int, optional
        Side of the window in pixels; by default a quarter of the shorter side (at
        least 8, at most the shorter side).

    Returns
    -------
    (y0, x0, size) : tuple of int
        Top-left corner and side of the window, which lies entirely inside the image.
        Deterministic: among equal variances the first in row-major order wins.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or ``size`` is not in [1, shorter side].
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
    ny, nx = image.shape
    if size is None:
        size = min(max(8, min(ny, nx) // 4), ny, nx)
    size = int(size)
    if not 1 <= size <= min(ny, nx):
        raise ValueError(f"crop size must be in [1, {min(ny, nx)}], got {size}")
    image = np.where(np.isfinite(image), image, 0.0)
    image = image - image.mean()  # better conditioned sums

    def window_sums(values):
        total = np.zeros((ny + 1, nx + 1))
        total[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
        return (
            total[size:, size:]
            - total[:-size, size:]
            - total[size:, :-size]
            + total[:-size, :-size]
        )

    n = size * size
    variance = window_sums(image**2) / n - (window_sums(image) / n) ** 2
    y0, x0 = np.unravel_index(int(np.argmax(np.round(variance, 12))), variance.shape)
    return int(y0), int(x0), size


def comparison_panel(
    images: Mapping[str, np.ndarray],
    crop: tuple[int, int, int] | None = None,
    *,
    reference: str | None = None,
    data_range: float = 1.0,
    columns: int | None = None,
    title: str | None = None,
) -> Figure:
    """Visual comparison: each method's full field with the zoom rectangle, and its crop.

    Like the EMSR paper's Figs. 5 and 7. All images share one grey-level window (the
    0.5–99.5 percentiles of the reference, or of all images pooled without one), so
    contrast differences between methods stay visible.

    Parameters
    ----------
    images : mapping of str to numpy.ndarray
        Name → 2-D image, all of the same shape, in display order.
    crop : (y0, x0, size), optional
        Zoom window; by default :func:`choose_crop` of the reference (or of the first
        image).
    reference : str, optional
        Key of the reference image in ``images`` (e.g. the acquired HR). When given, the
        PSNR and SSIM of every other image against it, over the whole field, are
        written under its crop.
    data_range : float, optional
        ``L`` of PSNR and SSIM (1 for intensities in [0, 1]).
    columns : int, optional
        Images per row (default: all of them up to 5); each image takes two axes rows,
        its full field above its crop.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes per image (full field, then crop), titled with the image's name;
        grid cells after the last image stay empty.

    Raises
    ------
    ValueError
        If there are no images, their shapes differ, ``reference`` is not one of them or
        the crop leaves the image.
    """
    if not images:
        raise ValueError("no images to compare")
    arrays = {name: np.asarray(a, dtype=np.float64) for name, a in images.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    shape = next(iter(shapes.values()))
    if len(shape) != 2 or any(s != shape for s in shapes.values()):
        raise ValueError(f"images must be 2-D and of one shape, got {shapes}")
    if reference is not None and reference not in arrays:
        raise ValueError(f"reference {reference!r} is not one of the images {list(arrays)}")
    base = arrays[reference] if reference is not None else next(iter(arrays.values()))
    y0, x0, size = choose_crop(base) if crop is None else (int(c) for c in crop)
    if not (0 <= y0 and 0 <= x0 and size >= 1 and y0 + size <= shape[0] and x0 + size <= shape[1]):
        raise ValueError(f"crop {(y0, x0, size)} leaves the image of shape {shape}")
    vmin, vmax = _display_window([base] if reference is not None else list(arrays.values()))

    n = len(arrays)
    columns = min(n, columns or 5)
    grid_rows = math.ceil(n / columns)
    aspect = shape[0] / shape[1]
    figure = Figure(
        figsize=(2.6 * columns, grid_rows * (2.6 * aspect + 2.6 + 0.9)), layout="constrained"
    )
    grid = figure.add_gridspec(2 * grid_rows, columns, height_ratios=[aspect, 1] * grid_rows)
    shown = {"cmap": "gray", "vmin": vmin, "vmax": vmax, "interpolation": "nearest"}
    for k, (name, image) in enumerate(arrays.items()):
        row, col = divmod(k, columns)
        full = figure.add_subplot(grid[2 * row, col])
        zoom = figure.add_subplot(grid[2 * row + 1, col])
        full.imshow(image, **shown)
        full.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, edgecolor="yellow", lw=1.5)
        )
        full.set_title(name, fontsize="medium")
        zoom.imshow(image[y0 : y0 + size, x0 : x0 + size], **shown)
        for spine in zoom.spines.values():
            spine.set_edgecolor("yellow")
        if reference is not None:
            if name == reference:
                zoom.set_xlabel("reference", fontsize="small")
            else:
                scores = (
                    psnr(base, image, data_range=data_range),
                    ssim(base, image, data_range=data_range),
                )
                zoom.set_xlabel("PSNR {:.2f} dB\nSSIM {:.3f}".format(*scores), fontsize="small")
        for axes in (full, zoom):
            axes.set_xticks([])
            axes.set_yticks([])
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------


def training_curves(curves: Mapping[str, pd.DataFrame], *, title: str | None = None) -> Figure:
    """Training loss and learning rate against the step, one line per model.

    Parameters
    ----------
    curves : mapping of str to pandas.DataFrame
        Model name → its training curve (columns ``step``, ``loss`` and ``lr`` of
        :data:`emsrflow.train.CURVE_COLUMNS`; the total loss L_T is plotted).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes sharing the step axis: the loss (log scale) above, the learning rate
        (log scale) below; the legend names every model.

    Raises
    ------
    ValueError
        If ``curves`` is empty or a curve lacks a column.
    """
    if not curves:
        raise ValueError("no training curves to plot")
    for name, curve in curves.items():
        missing = {"step", "loss", "lr"} - set(curve.columns)
        if missing:
            raise ValueError(f"training curve {name} lacks the columns {sorted(missing)}")
    figure = Figure(figsize=(8, 6), layout="constrained")
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    for color, (name, curve) in zip(_colors(len(curves)), curves.items(), strict=True):
        loss = curve.loss.where(curve.loss > 0)  # a log axis cannot show 0
        loss_axes.plot(curve.step, loss, color=color, label=name, linewidth=1.2)
        # the rate of a row's step applies since the previous row: a step drawn backwards
        lr_axes.plot(curve.step, curve.lr, color=color, linewidth=1.2, drawstyle="steps-pre")
    loss_axes.set_yscale("log")
    loss_axes.set_ylabel("training loss $L_T$")
    loss_axes.grid(alpha=0.3, which="both")
    loss_axes.legend(fontsize="small", loc="upper right", ncols=2 if len(curves) > 4 else 1)
    lr_axes.set_yscale("log")
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("step")
    lr_axes.grid(alpha=0.3, which="both")
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------------------
# Ablations
# --------------------------------------------------------------------------------------


def ablation_curves(
    summary: pd.DataFrame,
    metrics: Sequence[str],
    *,
    x: str = "level",
    series: str = "series",
    numeric: bool = True,
    dataset: str = "ALL DATASETS",
    xlabel: str | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
    title: str | None = None,
) -> Figure:
    """Metrics against an ablation's variable, one line per series (Figs. 13 and 14).

    Parameters
    ----------
    summary : pandas.DataFrame
        Summary of :func:`emsrflow.tables.aggregate` with columns ``dataset``, ``x``,
        ``series`` and ``{metric}_mean``, ``{metric}_std``; only the rows of ``dataset``
        are drawn, mean ± std as error bars.
    metrics : sequence of str
        Metrics drawn, one axes each, side by side.
    x : str, optional
        Column of the variable (a noise σ, a hyper-parameter value).
    series : str, optional
        Column naming the lines (a method, a hyper-parameter).
    numeric : bool, optional
        ``x`` is a number (noise σ): plotted on a linear axis. Otherwise the rows are
        placed one after the other, in their order in ``summary``, labelled by ``x``.
    dataset : str, optional
        The summary rows drawn (default ALL DATASETS, the mean over the datasets).
    xlabel : str, optional
        Label of the horizontal axis (default ``x``).
    higher_is_better : mapping of str to bool, optional
        Adds ↑ or ↓ to the metrics' axis labels.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        If a column is missing, no row holds ``dataset`` or ``x`` is not numeric although
        ``numeric`` is set.
    """
    metrics = list(metrics)
    needed = {"dataset", x, series, *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))}
    missing = needed - set(summary.columns)
    if missing or not metrics:
        raise ValueError(f"summary lacks the columns {sorted(missing)} (or no metric given)")
    rows = summary[summary["dataset"] == dataset].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"summary has no {dataset!r} rows")
    if numeric:
        position = pd.to_numeric(rows[x], errors="coerce").astype(np.float64)
        if not np.isfinite(position).all():
            raise ValueError(f"column {x!r} must be numeric, got {list(rows[x])}")
    else:
        position = pd.Series(np.arange(len(rows), dtype=np.float64))
    names = list(dict.fromkeys(rows[series]))
    figure = Figure(figsize=(4.0 * len(metrics) + 1.5, 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(metrics), squeeze=False)[0])
    colors = _colors(len(names))
    for ax, metric in zip(axes, metrics, strict=True):
        for color, name in zip(colors, names, strict=True):
            part = rows[series] == name
            ax.errorbar(
                position[part],
                rows.loc[part, f"{metric}_mean"].astype(np.float64),
                yerr=rows.loc[part, f"{metric}_std"].astype(np.float64).fillna(0.0),
                color=color,
                marker="o",
                markersize=4,
                linewidth=1.3,
                capsize=3,
                label=str(name),
            )
        if not numeric:
            ax.set_xticks(position, [str(v) for v in rows[x]], rotation=30, ha="right")
        arrow = ""
        if higher_is_better is not None and metric in higher_is_better:
            arrow = " ↑" if higher_is_better[metric] else " ↓"
        ax.set_ylabel(METRIC_LABELS.get(metric, metric) + arrow)
        ax.set_xlabel(xlabel or x)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------------------
# Orthogonal sections
# --------------------------------------------------------------------------------------


def _voxel_of(voxel_size, name):
    sizes = voxel_size[name] if isinstance(voxel_size, Mapping) else voxel_size
    sizes = tuple(float(v) for v in (sizes or ()))
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise ValueError(f"{name}: voxel size must be three numbers > 0 (z, y, x), got {sizes}")
    return sizes


def xz_views(
    volumes: Mapping[str, np.ndarray],
    y: int | None = None,
    voxel_size=None,
    *,
    x: int | None = None,
    planes: Sequence[str] = ("xz", "yz"),
    title: str | None = None,
) -> Figure:
    """Orthogonal sections (xz, yz) of volumes, drawn with their physical aspect ratio.

    Like the EMSR paper's Fig. 11. Cuts the sections and draws them with
    :func:`section_views`: each in µm, so anisotropic voxels (sections thicker than the
    pixels) are stretched correctly along z, and volumes on different grids line up.

    Parameters
    ----------
    volumes : mapping of str to numpy.ndarray
        Name → 3-D volume (z, y, x), in display order (e.g. cubic, ours, reference).
    y : int, optional
        Row of the xz section, in pixels of the first volume (default: its middle row);
        other volumes use the row at the same physical position.
    voxel_size : (z, y, x) or mapping of str to (z, y, x)
        Voxel size in nm, one for all volumes or one per volume. Required.
    x : int, optional
        Column of the yz section, in pixels of the first volume (default: middle).
    planes : sequence of {"xz", "yz"}, optional
        Which sections to draw, one row each.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per plane and volume (rows: planes; columns: volumes), with equal
        physical scales on both axes.

    Raises
    ------
    ValueError
        If there are no volumes, one is not 3-D, a voxel size is missing or invalid, a
        plane is unknown or the position lies outside the first volume.
    """
    if not volumes:
        raise ValueError("no volumes to show")
    if voxel_size is None:
        raise ValueError("voxel_size (z, y, x) in nm is required for the aspect ratio")
    planes = _check_planes(planes)
    arrays = {name: np.asarray(v) for name, v in volumes.items()}
    for name, array in arrays.items():
        if array.ndim != 3:
            raise ValueError(f"{name}: expected a 3-D (z, y, x) volume, got shape {array.shape}")
    voxels = {name: _voxel_of(voxel_size, name) for name in arrays}
    first = next(iter(arrays))
    position = {}
    for axis, index in ((1, y), (2, x)):
        n = arrays[first].shape[axis]
        index = n // 2 if index is None else int(index)
        if not 0 <= index < n:
            raise ValueError(f"position {index} outside 0:{n} along axis {'zyx'[axis]}")
        position[axis] = (index + 0.5) * voxels[first][axis]  # nm, centre of the pixel

    def cut(name, plane):
        array, axis = arrays[name], 1 if plane == "xz" else 2
        index = min(int(position[axis] // voxels[name][axis]), array.shape[axis] - 1)
        return array[:, index, :] if axis == 1 else array[:, :, index]

    sections = {name: {plane: cut(name, plane) for plane in planes} for name in arrays}
    return section_views(sections, voxels, title=title)


def _check_planes(planes):
    planes = list(planes)
    if not planes or set(planes) - {"xz", "yz"} or len(set(planes)) != len(planes):
        raise ValueError(f"planes must be 'xz' and/or 'yz', each once, got {planes}")
    return planes


def section_views(
    sections: Mapping[str, Mapping[str, np.ndarray]],
    voxel_size,
    *,
    title: str | None = None,
) -> Figure:
    """Draw given xz/yz sections with their physical aspect ratio (see :func:`xz_views`).

    For volumes too large to hold: cut the sections while streaming and draw them here.
    All sections share one grey-level window.

    Parameters
    ----------
    sections : mapping of str to mapping of {"xz", "yz"} to numpy.ndarray
        Name → plane → 2-D section: ``"xz"`` is (z, x), ``"yz"`` is (z, y). Every name
        has the same planes.
    voxel_size : (z, y, x) or mapping of str to (z, y, x)
        Voxel size in nm, one for all or one per name.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per plane (rows) and name (columns), in µm with equal scales.

    Raises
    ------
    ValueError
        If there are no sections, the planes differ between names or are unknown, a
        section is not 2-D, or a voxel size is invalid.
    """
    if not sections:
        raise ValueError("no sections to show")
    planes = _check_planes(next(iter(sections.values())))
    images = {}
    for name, by_plane in sections.items():
        if list(by_plane) != planes:
            raise ValueError(f"{name}: planes {list(by_plane)} differ from {planes}")
        voxel = _voxel_of(voxel_size, name)
        for plane, image in by_plane.items():
            image = np.asarray(image, dtype=np.float64)
            if image.ndim != 2:
                raise ValueError(f"{name} {plane}: expected a 2-D section, got {image.shape}")
            lateral = voxel[2] if plane == "xz" else voxel[1]
            extent = (0.0, image.shape[1] * lateral / 1000, image.shape[0] * voxel[0] / 1000, 0.0)
            images[plane, name] = image, extent
    vmin, vmax = _display_window([image for image, _ in images.values()])
    ratio = max(extent[2] / extent[1] for _, extent in images.values())
    width = 3.2
    figure = Figure(
        figsize=(width * len(sections), len(planes) * (width * ratio + 0.9) + 0.4),
        layout="constrained",
    )
    grid = figure.subplots(len(planes), len(sections), squeeze=False)
    for row, plane in enumerate(planes):
        for col, name in enumerate(sections):
            axes = grid[row, col]
            image, extent = images[plane, name]
            axes.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, aspect="equal")
            axes.set_title(f"{name}: {plane}", fontsize="medium")
            axes.set_xlabel(f"{plane[0]} (µm)")
            axes.set_ylabel("z (µm)" if col == 0 else "")
    if title:
        figure.suptitle(title)
    return figure


# --------------------------------------------------------------------------------------
# Quality control of produced volumes
# --------------------------------------------------------------------------------------


def _qc_image(axes, image, pixel_y, pixel_x, shown, title):
    """Draw a 2-D image with axes in µm (pixel sizes in nm); return its extent."""
    extent = (0.0, image.shape[1] * pixel_x / 1000, image.shape[0] * pixel_y / 1000, 0.0)
    axes.imshow(image, extent=extent, aspect="equal", **shown)
    axes.set_title(title, fontsize="medium")
    return extent


def _qc_crop(crop, in_voxel, out_voxel, out_shape):
    """Return the output's window (y0, x0, height, width) over the input crop's field."""
    y0, x0, size = crop
    fy, fx = in_voxel[1] / out_voxel[1], in_voxel[2] / out_voxel[2]
    height, width = max(1, round(size * fy)), max(1, round(size * fx))
    oy = min(max(0, round(y0 * fy)), out_shape[0] - height)
    ox = min(max(0, round(x0 * fx)), out_shape[1] - width)
    return oy, ox, height, width


def qc_panels(
    input_section: np.ndarray,
    output_section: np.ndarray,
    input_xz: np.ndarray,
    output_xz: np.ndarray,
    *,
    input_voxel_nm,
    output_voxel_nm,
    crop: tuple[int, int, int] | None = None,
    title: str | None = None,
) -> Figure:
    """QC panels of an input volume and the volume produced from it.

    Top row: the input and output xy sections (typically the middle one) side by side,
    drawn in µm so that grids of different pixel sizes line up, with the zoom rectangle;
    middle row: the zoomed crops, the same field of view in both; bottom row: the xz
    sections of both at their physical aspect ratio (thick sections stretched along z).
    All images share one grey-level window (0.5–99.5 percentiles of all pooled), so a
    contrast or brightness change by the model stays visible.

    Parameters
    ----------
    input_section, output_section : numpy.ndarray
        2-D xy sections (y, x) of the input and the output at the same depth.
    input_xz, output_xz : numpy.ndarray
        2-D xz sections (z, x) of the input and the output at the same row.
    input_voxel_nm, output_voxel_nm : (z, y, x)
        Voxel sizes in nm.
    crop : (y0, x0, size), optional
        Zoom window in input pixels; by default :func:`choose_crop` of the input section.
        The output's window covers the same field of view on its grid.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Six axes: input and output full sections, crops and xz sections.

    Raises
    ------
    ValueError
        If an image is not 2-D, a voxel size is invalid or the crop leaves the input.
    """
    images = {
        "input": input_section,
        "output": output_section,
        "input xz": input_xz,
        "output xz": output_xz,
    }
    images = {name: np.asarray(a, dtype=np.float64) for name, a in images.items()}
    for name, image in images.items():
        if image.ndim != 2 or image.size == 0:
            raise ValueError(f"{name}: expected a non-empty 2-D image, got shape {image.shape}")
    voxels = {"input": _voxel_of(input_voxel_nm, "input")}
    voxels["output"] = _voxel_of(output_voxel_nm, "output")
    shape = images["input"].shape
    y0, x0, size = choose_crop(images["input"]) if crop is None else (int(c) for c in crop)
    if not (0 <= y0 and 0 <= x0 and size >= 1 and y0 + size <= shape[0] and x0 + size <= shape[1]):
        raise ValueError(f"crop {(y0, x0, size)} leaves the input section of shape {shape}")
    windows = {
        "input": (y0, x0, size, size),
        "output": _qc_crop(
            (y0, x0, size), voxels["input"], voxels["output"], images["output"].shape
        ),
    }
    vmin, vmax = _display_window(list(images.values()))
    shown = {"cmap": "gray", "vmin": vmin, "vmax": vmax, "interpolation": "nearest"}

    def aspect(name, plane_z=False):
        image, (vz, vy, vx) = images[name], voxels[name.split()[0]]
        return image.shape[0] * (vz if plane_z else vy) / (image.shape[1] * vx)

    ratios = [
        max(aspect("input"), aspect("output")),
        1.0,
        max(0.08, aspect("input xz", True), aspect("output xz", True)),
    ]
    figure = Figure(figsize=(8.0, 3.6 * sum(ratios) + 2.4), layout="constrained")
    grid = figure.subplots(3, 2, squeeze=False, height_ratios=ratios)
    for col, name in enumerate(("input", "output")):
        image, (_, vy, vx) = images[name], voxels[name]
        _qc_image(grid[0, col], image, vy, vx, shown, f"{name}: xy, {vx:g} nm pixels")
        wy, wx, height, width = windows[name]
        grid[0, col].add_patch(
            Rectangle(
                (wx * vx / 1000, wy * vy / 1000),
                width * vx / 1000,
                height * vy / 1000,
                fill=False,
                edgecolor="yellow",
                lw=1.5,
            )
        )
        zoom = image[wy : wy + height, wx : wx + width]
        _qc_image(grid[1, col], zoom, vy, vx, shown, f"{name}: zoom")
        for spine in grid[1, col].spines.values():
            spine.set_edgecolor("yellow")
        xz = images[f"{name} xz"]
        _qc_image(grid[2, col], xz, voxels[name][0], vx, shown, f"{name}: xz")
        grid[2, col].set_ylabel("z (µm)")
        for row in range(3):
            grid[row, col].set_xlabel("x (µm)")
        grid[0, col].set_ylabel("y (µm)")
    if title:
        figure.suptitle(title)
    return figure


def qc_histograms(summary: Mapping, *, title: str | None = None) -> Figure:
    """Intensity histograms of the input and the output, as fractions of their voxels.

    Parameters
    ----------
    summary : mapping
        The summary of :func:`emsrflow.qc.volume_qc`: its ``histogram`` (``edges``,
        ``input`` and ``output`` counts) is drawn; its ``flags``, when present, are
        written in the axes' upper left corner.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes with two step lines (log scale, so that clipping spikes at 0 and 1
        and empty bins stay visible).

    Raises
    ------
    ValueError
        If the histogram is missing or its counts do not match its edges.
    """
    histogram = summary.get("histogram") if isinstance(summary, Mapping) else None
    if not histogram or not {"edges", "input", "output"} <= set(histogram):
        raise ValueError("summary lacks a histogram with edges, input and output counts")
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for name, color in zip(("input", "output"), _colors(2), strict=True):
        counts = np.asarray(histogram[name], dtype=np.float64)
        if counts.shape != (edges.size - 1,):
            raise ValueError(f"{counts.size} {name} counts do not match {edges.size} edges")
        fraction = counts / counts.sum() if counts.sum() > 0 else counts
        shown = np.where(fraction > 0, fraction, np.nan)  # a log axis cannot show 0
        axes.stairs(shown, edges, color=color, label=name, linewidth=1.4)
    axes.set_yscale("log")
    axes.set_xlim(edges[0], edges[-1])
    axes.set_xlabel("intensity (scaled to [0, 1])")
    axes.set_ylabel("fraction of voxels")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small", loc="upper right")
    flags = list(summary.get("flags") or [])
    axes.set_title(title or "intensity histograms of the measured sections")
    note = "\n".join(f"⚠ {flag}" for flag in flags) if flags else "no QC flags"
    box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}
    axes.text(0.01, 0.98, note, transform=axes.transAxes, va="top", fontsize="small", bbox=box)
    return figure
