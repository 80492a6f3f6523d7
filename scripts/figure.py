"""Rules figure_frc, figure_boxplot, figure_panel, figure_training, figure_isotropic: figures.

``figure_frc`` averages the per-slice FRC curves of each method against the acquired HR
(the evaluate step keeps only their scalar summaries); ``figure_panel`` draws the middle
section of every method and the HR with a zoomed crop, and their xz/yz sections;
``figure_boxplot`` plots one metric of the slice table; ``figure_training`` the training
curves of a fold's models; ``figure_isotropic`` the xz/yz sections of an isotropic
reconstruction beside cubic interpolation and the reference, and its training curve.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from emsrflow import figures, io
from emsrflow.metrics import frc_curve
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], snakemake.rule)
p, inp, out = snakemake.params, snakemake.input, snakemake.output


def save(figure, path):
    with io.atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=p.dpi, format="png")
    log.info("wrote %s", path)


def method_volumes():
    """Method name → its SR volume, in the order of the rule's input."""
    return {Path(path).name.removesuffix(".ome.zarr"): path for path in inp.sr}


def open_all(paths):
    """Open the HR and the method volumes, checking that their grids agree."""
    hr = io.open_volume(inp.hr)
    readers = {name: io.open_volume(path) for name, path in paths.items()}
    for reader in readers.values():
        if reader.shape != hr.shape:
            raise ValueError(
                f"{reader.path} has shape {reader.shape} but its reference {hr.path} has {hr.shape}"
            )
    return hr, readers


def frc():
    hr, readers = open_all(method_volumes())
    curves = {name: [] for name in readers}
    try:
        for z0, reference in hr.slabs(p.io["slab"]):
            for name, reader in readers.items():
                prediction = reader.read(z0, z0 + len(reference))
                curves[name] += [
                    frc_curve(r, s) for r, s in zip(reference, prediction, strict=True)
                ]
        pixel_nm = hr.voxel_size[2]
    finally:
        for reader in (hr, *readers.values()):
            reader.close()
    averaged, rows = {}, []
    for name, per_slice in curves.items():
        freq, mean, std, n = figures.average_curves(per_slice)
        log.info("%s: FRC averaged over %d of %d slices", name, n, len(per_slice))
        averaged[name] = (freq, mean, std)
        rows.append(
            pd.DataFrame(
                {
                    "method": name,
                    "frequency_per_pixel": freq,
                    "frequency_per_nm": freq / pixel_nm,
                    "frc_mean": mean,
                    "frc_std": std,
                    "slices": n,
                }
            )
        )
    with io.atomic_output(out.tsv) as tmp:
        pd.concat(rows).to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    title = f"{snakemake.wildcards.dataset}: FRC against the acquired HR (mean ± std over slices)"
    save(figures.frc_curves(averaged, pixel_nm=pixel_nm, title=title), out.png)


def panel():
    hr, readers = open_all(method_volumes())
    readers = {**readers, "HR": hr}
    z, y, x = (n // 2 for n in hr.shape)
    middle, orthogonal, voxels = {}, {}, {}
    try:
        for name, reader in readers.items():
            voxels[name] = reader.voxel_size
            middle[name] = io.to_float01(reader.read(z, z + 1))[0]
            parts = [(slab[:, y, :], slab[:, :, x]) for _, slab in reader.slabs(p.io["slab"])]
            orthogonal[name] = {
                "xz": io.to_float01(np.concatenate([xz for xz, _ in parts])),
                "yz": io.to_float01(np.concatenate([yz for _, yz in parts])),
            }
    finally:
        for reader in readers.values():
            reader.close()
    dataset = snakemake.wildcards.dataset
    title = f"{dataset}: section {z}; PSNR and SSIM of the whole section against the acquired HR"
    save(figures.comparison_panel(middle, reference="HR", title=title), out.panel)
    title = f"{dataset}: xz section at y = {y}, yz section at x = {x}"
    save(figures.section_views(orthogonal, voxels, title=title), out.xz)


def boxplot():
    slices = pd.read_parquet(inp.slices)
    metric = snakemake.wildcards.metric
    figure = figures.metric_boxplots(
        slices,
        metric,
        datasets=p.datasets,
        methods=p.methods,
        higher_is_better=p.higher_is_better,
        title=f"{figures.METRIC_LABELS.get(metric, metric)} per slice against the acquired HR",
    )
    save(figure, out.png)


def training():
    curves = {
        Path(path).parent.name: pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN"])
        for path in inp.curves
    }
    title = f"fold {snakemake.wildcards.fold} (held-out animal): training curves"
    save(figures.training_curves(curves, title=title), out.png)


def isotropic():
    paths = {"anisotropic": inp.anisotropic}
    paths.update({Path(v).name.removesuffix(".ome.zarr"): v for v in inp.volumes})
    if inp.reference:
        paths["reference"] = inp.reference
    sections, voxels = {}, {}
    for name, path in paths.items():
        with io.open_volume(path) as volume:
            y, x = volume.shape[1] // 2, volume.shape[2] // 2
            sections[name] = {
                "xz": io.to_float01(volume[:, y : y + 1, :][:, 0]),
                "yz": io.to_float01(volume[:, :, x : x + 1][:, :, 0]),
            }
            voxels[name] = volume.voxel_size
    dataset = snakemake.wildcards.dataset
    title = f"{dataset}: isotropic reconstruction, xz and yz sections through the middle"
    save(figures.section_views(sections, voxels, title=title), out.png)
    curve = pd.read_csv(inp.curve, keep_default_na=False, na_values=["nan", "NaN"])
    title = f"{dataset}: self-supervised isotropic training (L1 + α·PDL)"
    save(figures.training_curves({"isotropic": curve}, title=title), out.training)


{
    "figure_frc": frc,
    "figure_isotropic": isotropic,
    "figure_panel": panel,
    "figure_boxplot": boxplot,
    "figure_training": training,
}[snakemake.rule]()
