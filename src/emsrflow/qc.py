"""Reference-free quality control (QC) of produced volumes: no ground truth needed.

A core facility applies a trained super-resolution (SR) or isotropic-reconstruction model
to new acquisitions. :func:`volume_qc` compares each produced volume (the *output*) with
the acquisition it was made from (the *input*) on a few evenly spaced sections:

Resolution
    The one-image FRC of Koho et al. (2019), :func:`emsrflow.metrics.single_image_frc`,
    of the input section and of the output section, in nm. That measurement needs
    independent noise in neighbouring pixels. A raw acquisition has it; a network output
    or an interpolation does not (it is smooth, its noise is correlated), and its
    one-image FRC then reports sharpness that is not there, or never crosses the
    threshold at all (NaN), whatever the blur. The output is therefore *also* measured
    after adding independent Gaussian noise with the input's noise level (the input's
    σ, a robust wavelet estimate, scaled to the output
    pixel so that the noise power per unit area matches): the *noise-matched*
    resolution, the resolution the output would show if it had been acquired with the
    input's noise. Structure the model lost (blur) then shows as a worse value, while
    an output that keeps the input's content measures at least as well as the input.
    The flag compares this noise-matched value with the input's.
Intensities
    Minimum, maximum and mean, the fraction of voxels at (or beyond) the ends of the
    intensity range (0 and 1 after :func:`emsrflow.io.to_float01`) and histograms of
    input and output.
Non-finite values
    NaN/inf counts of the measured sections, and of the whole output, scanned slab by
    slab.

Flags are human-readable strings; an empty list means nothing looked wrong.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .io import to_float01
from .metrics import SINGLE_IMAGE_FRC_MIN_SIZE, single_image_frc

__all__ = ["QC_COLUMNS", "QCSettings", "overview", "volume_qc"]

#: Columns of the per-section table of :func:`volume_qc`, in order.
QC_COLUMNS = (
    "section",
    "input_section",
    "input_frc_nm",
    "output_frc_nm",
    "output_frc_matched_nm",
    "frc_ratio",
    "input_noise_sigma",
    "input_min",
    "input_max",
    "input_mean",
    "output_min",
    "output_max",
    "output_mean",
    "input_clipped_fraction",
    "output_clipped_fraction",
    "input_nonfinite",
    "output_nonfinite",
)

_SCAN_SLAB = 16  # sections per read when scanning the whole output for NaN/inf


@dataclass(frozen=True)
class QCSettings:
    """Settings of :func:`volume_qc`.

    Parameters
    ----------
    sections : int
        Number of evenly spaced output sections measured (fewer if the output has fewer).
    clip_fraction : float
        Flag clipping when more than this fraction of the measured output voxels sit at
        (or beyond) 0 or 1 ...
    clip_factor : float
        ... and more than ``clip_factor`` times the fraction of the input's voxels at its
        extremes: an input with saturated pixels legitimately gives a saturated output.
    resolution_tolerance : float
        Flag when the output's noise-matched single-image FRC resolution (median over the
        sections) is worse (larger) than the input's by more than this relative amount.
    bins : int
        Histogram bins over [0, 1].
    seed : int
        Seed of the noise added for the noise-matched resolution (per section, so that
        results do not depend on the order of measurement).
    """

    sections: int = 8
    clip_fraction: float = 0.01
    clip_factor: float = 2.0
    resolution_tolerance: float = 0.05
    bins: int = 64
    seed: int = 0

    def __post_init__(self):
        checks = {
            "sections": isinstance(self.sections, int) and self.sections >= 1,
            "clip_fraction": 0 <= self.clip_fraction < 1,
            "clip_factor": self.clip_factor >= 1,
            "resolution_tolerance": self.resolution_tolerance >= 0,
            "bins": isinstance(self.bins, int) and self.bins >= 2,
            "seed": isinstance(self.seed, int) and self.seed >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"QCSettings.{name}: invalid value {getattr(self, name)!r}")


def _check_voxel(voxel, name):
    sizes = tuple(float(v) for v in (voxel or ()))
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise ValueError(f"{name}: voxel size must be three numbers > 0 (z, y, x), got {voxel}")
    return sizes


def _check_grids(source, output, in_voxel, out_voxel):
    """Both volumes must cover the same lateral field of view (within an input pixel)."""
    for axis in (1, 2):
        extent_in = source.shape[axis] * in_voxel[axis]
        extent_out = output.shape[axis] * out_voxel[axis]
        if abs(extent_in - extent_out) > in_voxel[axis] + 1e-6 * extent_in:
            raise ValueError(
                f"input {source.shape} at {in_voxel} nm and output {output.shape} at "
                f"{out_voxel} nm cover different fields of view along {'zyx'[axis]} "
                f"({extent_in:g} vs {extent_out:g} nm)"
            )
    if min(source.shape[1:]) < SINGLE_IMAGE_FRC_MIN_SIZE:
        raise ValueError(f"input sections {source.shape[1:]} are too small for the FRC")


def _measured_sections(n_output, n_input, out_z, in_z, count):
    """Evenly spaced input sections and the output sections centred nearest to them.

    Choosing the input first puts every measured output section at an acquired section
    (for an isotropic output, at a slice centre rather than between two slices, where
    the planes are interpolated and less sharp by construction).
    """
    count = min(count, n_input)
    nearest = np.unique(((np.arange(count) + 0.5) * n_input / count).astype(int))
    centre = (nearest + 0.5) * in_z / out_z - 0.5  # input centres on the output grid
    sections = np.clip(np.rint(centre).astype(int), 0, n_output - 1)
    return [int(s) for s in sections], [int(n) for n in nearest]


def _noise_sigma(image):
    """Noise σ of a section: median absolute finest diagonal Haar coefficient / 0.6745.

    Donoho's robust estimate, as :func:`skimage.restoration.estimate_sigma` (which needs
    PyWavelets): the coefficient ``(a − b − c + d) / 2`` of each 2 × 2 block has the
    standard deviation σ for white noise and is small on smooth structure. NaN if the
    section is not finite.
    """
    if not np.all(np.isfinite(image)):
        return math.nan
    ny, nx = (n - n % 2 for n in image.shape)
    x = image[:ny, :nx].astype(np.float64)
    detail = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(detail)) / 0.6745)


def _resolution(image, pixel_nm):
    return single_image_frc(image, pixel_nm=pixel_nm)["resolution_nm"]


def _intensity(image, prefix):
    """Min, max, mean of the finite voxels, fraction at the extremes, non-finite count."""
    finite = np.isfinite(image)
    values = image[finite]
    clipped = np.count_nonzero((values <= 0) | (values >= 1))
    empty = values.size == 0
    return {
        f"{prefix}_min": math.nan if empty else float(values.min()),
        f"{prefix}_max": math.nan if empty else float(values.max()),
        f"{prefix}_mean": math.nan if empty else float(values.mean(dtype=np.float64)),
        f"{prefix}_clipped_fraction": math.nan if empty else clipped / values.size,
        f"{prefix}_nonfinite": int(image.size - values.size),
        f"_{prefix}_clipped": clipped,
        f"_{prefix}_finite": int(values.size),
    }


def _measure(input_image, output_image, *, pixels, scale, rng):
    """One section pair: resolutions, noise level and intensity statistics."""
    sigma = _noise_sigma(input_image)
    matched = math.nan
    if math.isfinite(sigma) and np.all(np.isfinite(output_image)):
        noisy = output_image + rng.normal(0.0, sigma * scale, output_image.shape)
        matched = _resolution(noisy, pixels[1])
    row = {
        "input_frc_nm": _resolution(input_image, pixels[0]),
        "output_frc_nm": _resolution(output_image, pixels[1]),
        "output_frc_matched_nm": matched,
        "input_noise_sigma": sigma,
    }
    row["frc_ratio"] = matched / row["input_frc_nm"]
    return {**row, **_intensity(input_image, "input"), **_intensity(output_image, "output")}


def _count_nonfinite(output):
    """NaN/inf voxels of the whole output, read ``_SCAN_SLAB`` sections at a time."""
    if not np.issubdtype(output.dtype, np.inexact):
        return 0
    return sum(int(np.count_nonzero(~np.isfinite(slab))) for _, slab in output.slabs(_SCAN_SLAB))


def _median(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def _flags(summary, settings):
    flags = []
    inp, out = summary["input_frc_nm"], summary["output_frc_matched_nm"]
    if (
        math.isfinite(inp)
        and math.isfinite(out)
        and out > inp * (1 + settings.resolution_tolerance)
    ):
        flags.append(
            f"output resolution {out:.1f} nm is worse than the input's {inp:.1f} nm "
            f"(median single-image FRC, output with the input's noise level added)"
        )
    f_out, f_in = summary["output_clipped_fraction"], summary["input_clipped_fraction"]
    if f_out > settings.clip_fraction and not f_out <= settings.clip_factor * f_in:
        flags.append(
            f"{100 * f_out:.1f} % of output voxels are clipped at 0 or 1 "
            f"(input: {100 * f_in:.1f} %)"
        )
    if summary["output_nonfinite"]:
        flags.append(f"output holds {summary['output_nonfinite']} NaN/inf voxels")
    return flags


def volume_qc(source, output, *, input_voxel_nm, output_voxel_nm, settings=None):
    """Reference-free QC of an output volume against the input it was computed from.

    Parameters
    ----------
    source : emsrflow.io.VolumeReader
        The input (LR or anisotropic) volume, (z, h, w).
    output : emsrflow.io.VolumeReader
        The produced volume over the same field of view: SR (z, h·τ, w·τ) or isotropic
        (more, thinner sections). Each measured output section is compared with the
        input section nearest to it in physical z (section centres, area-aligned grids).
    input_voxel_nm, output_voxel_nm : (z, y, x)
        Voxel sizes in nm (the readers' ``voxel_size``). The FRC uses the x pixel size.
    settings : QCSettings, optional
        Defaults to ``QCSettings()``.

    Returns
    -------
    table : pandas.DataFrame
        One row per measured section with the columns :data:`QC_COLUMNS`: the output
        ``section`` and its ``input_section``; single-image FRC resolutions in nm
        (``input_frc_nm``, ``output_frc_nm`` of the output as it is, and
        ``output_frc_matched_nm`` with the input's noise level added; NaN where a curve
        never crosses 1/7 or a section is not finite); ``frc_ratio`` = matched output /
        input; the input's noise σ on the [0, 1] scale; min/max/mean of the finite
        voxels, the fraction at or beyond 0 and 1, and the NaN/inf count of each section.
    summary : dict
        ``sections`` (the output sections measured), the medians over the sections of
        the three resolutions and of ``frc_ratio`` (keys as the columns), the
        ``input_clipped_fraction`` and ``output_clipped_fraction`` over all measured
        voxels, ``output_nonfinite`` (the whole output volume), ``histogram``
        (``edges``, ``input`` and ``output`` counts over [0, 1] of all measured finite
        voxels, values outside counted in the end bins), ``settings`` and ``flags``, a
        list of human-readable strings (empty if nothing looks wrong).

    Raises
    ------
    ValueError
        If a voxel size is invalid or the volumes cover different fields of view.

    Notes
    -----
    Memory holds one section of each volume (and one slab of 16 output sections for the
    NaN/inf scan); only the measured sections are read otherwise.
    """
    settings = QCSettings() if settings is None else settings
    in_voxel = _check_voxel(input_voxel_nm, "input")
    out_voxel = _check_voxel(output_voxel_nm, "output")
    _check_grids(source, output, in_voxel, out_voxel)
    sections, nearest = _measured_sections(
        output.shape[0], source.shape[0], out_voxel[0], in_voxel[0], settings.sections
    )
    pixels = (in_voxel[2], out_voxel[2])
    scale = math.sqrt(in_voxel[1] * in_voxel[2] / (out_voxel[1] * out_voxel[2]))
    edges = np.linspace(0.0, 1.0, settings.bins + 1)
    counts = {
        "input": np.zeros(settings.bins, np.int64),
        "output": np.zeros(settings.bins, np.int64),
    }
    rows = []
    for section, input_section in zip(sections, nearest, strict=True):
        images = {
            "input": to_float01(source.read(input_section, input_section + 1)[0]),
            "output": to_float01(output.read(section, section + 1)[0]),
        }
        rng = np.random.default_rng([settings.seed, section])
        row = _measure(images["input"], images["output"], pixels=pixels, scale=scale, rng=rng)
        rows.append({"section": section, "input_section": input_section, **row})
        for name, image in images.items():
            values = np.clip(image[np.isfinite(image)], 0.0, 1.0)
            counts[name] += np.histogram(values, bins=edges)[0]
    table = pd.DataFrame(rows)
    totals = {
        name: table[f"_{name}_clipped"].sum() / max(table[f"_{name}_finite"].sum(), 1)
        for name in ("input", "output")
    }
    table = table.loc[:, list(QC_COLUMNS)]
    summary = {
        "sections": sections,
        **{c: _median(table[c]) for c in QC_COLUMNS if c.endswith("_nm") or c == "frc_ratio"},
        "input_clipped_fraction": float(totals["input"]),
        "output_clipped_fraction": float(totals["output"]),
        "output_nonfinite": _count_nonfinite(output),
        "histogram": {
            "edges": edges.tolist(),
            "input": counts["input"].tolist(),
            "output": counts["output"].tolist(),
        },
        "settings": asdict(settings),
    }
    summary["flags"] = _flags(summary, settings)
    return table, summary


def overview(records):
    """One row per processed volume: grids, resolutions, warnings and QC flags.

    Parameters
    ----------
    records : iterable of (dict, dict)
        For each volume its QC summary (the JSON written from :func:`volume_qc`, with the
        ``acquisition`` and ``product`` ids) and its processing plan
        (:meth:`emsrflow.process.Plan.to_dict`).

    Returns
    -------
    pandas.DataFrame
        Columns ``acquisition``, ``product``, ``input_shape``, ``output_shape``,
        ``input_voxel_nm``, ``output_voxel_nm``, the median single-image FRC
        resolutions (``input_frc_nm``, ``output_frc_matched_nm``), ``output_clipped_fraction``,
        ``output_nonfinite``, ``warnings`` (the plan's checks) and ``flags`` (QC), the
        last two joined by "; ", and ``status`` ("flagged" where any flag is raised,
        else "ok").
    """

    def grid(values):
        return "×".join(f"{v:g}" for v in values)

    rows = []
    for summary, plan in records:
        flags = list(summary.get("flags") or [])
        rows.append(
            {
                "acquisition": summary["acquisition"],
                "product": summary["product"],
                "status": "flagged" if flags else "ok",
                "input_shape": grid(plan["input_shape"]),
                "output_shape": grid(plan["output_shape"]),
                "input_voxel_nm": grid(plan["input_voxel_nm"]),
                "output_voxel_nm": grid(plan["output_voxel_nm"]),
                "input_frc_nm": summary.get("input_frc_nm"),
                "output_frc_matched_nm": summary.get("output_frc_matched_nm"),
                "output_clipped_fraction": summary.get("output_clipped_fraction"),
                "output_nonfinite": summary.get("output_nonfinite"),
                "warnings": "; ".join(plan.get("warnings") or []),
                "flags": "; ".join(flags),
            }
        )
    return pd.DataFrame(rows)
