"""Rigid registration of an LR acquisition to the HR acquisition of the same tissue.

The LR stack covers a larger field of view than the HR stack; both have the same sections
and one unknown :class:`~emsrflow.transform.Similarity` (HR pixel → LR pixel) for all of
them. :func:`estimate_transform` finds it per section in two steps, then takes the median:

1. coarse: the HR, area-averaged to LR pixel size, is template-matched (normalised
   cross-correlation, NCC) inside the LR at a few rotations;
2. fine: shift, rotation and scale are refined jointly by maximising the NCC between the
   LR pixels and the HR, low-passed to LR resolution and sampled at the mapped LR pixel
   centres. Sampling the nearly noise-free HR rather than interpolating the noisy LR
   avoids a bias towards sub-pixel positions at which interpolation averages LR noise.

NCC makes the result invariant to gain/offset (contrast/brightness) differences.
Resampling grids are area-aligned: output pixel ``q`` of ``m`` over ``n`` HR pixels covers
HR pixels ``[q·f − 0.5, (q + 1)·f − 0.5]`` with ``f = n / m`` (centre ``(q + 0.5)·f − 0.5``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import ndimage, optimize
from skimage.feature import match_template
from skimage.registration import phase_cross_correlation
from skimage.transform import resize

from .errors import InputError, RegistrationError
from .transform import Similarity

__all__ = [
    "RegistrationResult",
    "estimate_transform",
    "qc_figure",
    "registered_shape",
    "resample_lr",
    "residuals",
    "section_picks",
]


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`estimate_transform`.

    Parameters
    ----------
    transform : Similarity
        HR pixel → LR pixel mapping.
    score : float
        NCC of the registered LR with the area-averaged HR, mean over ``sections``.
    sections : tuple of int
        Indices of the sections used for the estimate.
    """

    transform: Similarity
    score: float
    sections: tuple[int, ...]

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dictionary."""
        return {
            "transform": self.transform.to_dict(),
            "score": float(self.score),
            "sections": [int(z) for z in self.sections],
        }


def _stack(image: np.ndarray, name: str) -> np.ndarray:
    """Return ``image`` as a (z, y, x) stack (a 2D image becomes one section), not copied."""
    stack = np.asarray(image)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3 or min(stack.shape) == 0:
        raise InputError(f"{name} must be a 2D image or a (z, y, x) stack, got {stack.shape}")
    return stack


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two arrays of the same size (0 if one is flat)."""
    a = np.ravel(a) - np.mean(a)
    b = np.ravel(b) - np.mean(b)
    norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / norm) if norm > 0 else 0.0


def _area_downsample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Average a 2D image over the pixels of an area-aligned grid of (y, x) ``shape``."""
    out = np.asarray(image, dtype=np.float64)
    for axis, n_out in enumerate(shape):
        values = np.moveaxis(out, axis, -1)
        n = values.shape[-1]
        edges = np.linspace(0.0, n, n_out + 1)
        index = np.minimum(edges.astype(int), n - 1)
        before = np.cumsum(values, axis=-1) - values  # sum of the pixels before each pixel
        integral = before[..., index] + (edges - index) * values[..., index]
        out = np.moveaxis(np.diff(integral, axis=-1) * (n_out / n), -1, axis)
    return out


def _grid(hr_shape: tuple[int, int], out_shape: tuple[int, int]) -> np.ndarray:
    """HR (row, col) coordinates of the pixel centres of an area-aligned grid, shape (N, 2)."""
    axes = [(np.arange(m) + 0.5) * (n / m) - 0.5 for n, m in zip(hr_shape, out_shape, strict=True)]
    rows, cols = np.meshgrid(*axes, indexing="ij")
    return np.column_stack([rows.ravel(), cols.ravel()])


def _corners(shape: tuple[int, int]) -> np.ndarray:
    """(row, col) centres of the four corner pixels of an image of ``shape``."""
    return _grid((2, 2), (2, 2)) * (np.array(shape) - 1)


def _sample(section: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Cubic-spline values of a 2D image at (N, 2) points, prefiltering only around them."""
    shape = np.array(section.shape)
    lo = np.clip(np.floor(points.min(axis=0)).astype(int) - 8, 0, shape - 1)
    hi = np.clip(np.ceil(points.max(axis=0)).astype(int) + 9, lo + 1, shape)
    crop = np.asarray(section[lo[0] : hi[0], lo[1] : hi[1]], dtype=np.float64)
    coefficients = ndimage.spline_filter(crop, order=3, mode="nearest")
    return ndimage.map_coordinates(
        coefficients, (points - lo).T, order=3, mode="nearest", prefilter=False
    )


def _about_centre(scale: float, rotation_deg: float, target, centre) -> Similarity:
    """Similarity with the given scale and rotation that maps HR ``centre`` to LR ``target``."""
    linear = Similarity(scale, rotation_deg, (0.0, 0.0)).apply(np.asarray(centre)[None])[0]
    shift = np.asarray(target, dtype=np.float64) - linear
    return Similarity(float(scale), float(rotation_deg), (float(shift[0]), float(shift[1])))


def _coarse(section: np.ndarray, down: np.ndarray, max_rotation_deg: float):
    """Return the best rotation (degrees) and LR position of the centre of ``down``.

    ``down`` (HR at LR pixel size) is rotated in steps of at most 2° and template-matched.
    """
    n = np.array(down.shape)
    size = np.floor(n - 2 - np.sin(np.deg2rad(max_rotation_deg)) * n[::-1]).astype(int)
    if size.min() < 8 or np.any(size > section.shape):
        raise RegistrationError(
            f"the HR field of view ({n[0]}×{n[1]} LR pixels) is too small to register or "
            f"larger than the LR image ({section.shape[0]}×{section.shape[1]} pixels)"
        )
    offsets = _grid(tuple(size), tuple(size)) - (size - 1) / 2
    steps = 2 * int(np.ceil(max_rotation_deg / 2)) + 1
    best = (-np.inf, 0.0, np.zeros(2))
    for angle in np.linspace(-max_rotation_deg, max_rotation_deg, steps):
        unrotate = Similarity(1.0, -angle, tuple((n - 1) / 2))
        template = ndimage.map_coordinates(down, unrotate.apply(offsets).T, order=1)
        ncc = match_template(section, template.reshape(size))
        peak = np.unravel_index(np.argmax(ncc), ncc.shape)
        if ncc[peak] > best[0]:
            best = (ncc[peak], float(angle), np.array(peak) + (size - 1) / 2)
    return best[1], best[2]


def _refine(section: np.ndarray, hr: np.ndarray, start: Similarity) -> Similarity:
    """Maximise the NCC of LR pixels with the low-passed HR at their mapped positions."""
    centre = (np.array(hr.shape) - 1) / 2
    corners = start.apply(_corners(hr.shape))
    lo = np.clip(np.floor(corners.min(axis=0)), 0, None).astype(int)
    hi = np.minimum(np.ceil(corners.max(axis=0)) + 1, section.shape).astype(int)
    pixels = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].reshape(2, -1).T.astype(np.float64)
    margin = 2.0 / start.scale  # two LR pixels, in HR pixels
    mapped = start.inverse().apply(pixels)
    keep = np.all((mapped >= margin) & (mapped <= np.array(hr.shape) - 1 - margin), axis=1)
    pixels, target = pixels[keep], section[lo[0] : hi[0], lo[1] : hi[1]].ravel()[keep]
    smooth = ndimage.gaussian_filter(hr, 0.5 / start.scale)
    coefficients = ndimage.spline_filter(smooth, order=3, mode="nearest")
    radius = start.scale * float(np.hypot(*centre))  # LR pixels from centre to corner
    origin = start.apply(centre[None])[0]

    def transform(x: np.ndarray) -> Similarity:
        # x: centre shift (LR px), rotation and log-scale as displacements at the corners
        scale = start.scale * np.exp(x[3] / radius)
        rotation = start.rotation_deg + np.rad2deg(x[2] / radius)
        return _about_centre(scale, rotation, origin + x[:2], centre)

    def cost(x: np.ndarray) -> float:
        points = transform(x).inverse().apply(pixels).T
        values = ndimage.map_coordinates(coefficients, points, mode="nearest", prefilter=False)
        return -_ncc(values, target)

    simplex = np.vstack([np.zeros(4), 0.5 * np.eye(4)])
    options = {"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-7}
    return transform(optimize.minimize(cost, np.zeros(4), method="Nelder-Mead", options=options).x)


def section_picks(count: int, sections: int) -> tuple[int, ...]:
    """Return up to ``sections`` evenly spaced section indices of a stack of ``count``.

    The first and last sections are always among them; registration estimates the
    transform on these sections only.
    """
    return tuple(int(z) for z in np.unique(np.linspace(0, count - 1, sections).round()))


def estimate_transform(
    lr: np.ndarray,
    hr: np.ndarray,
    *,
    scale: float,
    sections: int = 5,
    min_score: float = 0.5,
    max_rotation_deg: float = 5.0,
    max_scale_error: float = 0.05,
) -> RegistrationResult:
    """Estimate the HR → LR similarity transform of two acquisitions of the same tissue.

    Parameters
    ----------
    lr, hr : numpy.ndarray
        LR and HR stacks (z, y, x) with values in [0, 1] and the same number of sections;
        a 2D image is one section. The LR field of view must contain the HR one.
    scale : float
        Nominal pixel-size ratio ``hr_nm / lr_nm`` (LR pixels per HR pixel).
    sections : int
        Number of evenly spaced sections to register; their estimates are combined by
        their median.
    min_score : float
        Smallest acceptable score (NCC at the solution).
    max_rotation_deg : float
        Largest acceptable rotation in degrees, also the range of the coarse search.
    max_scale_error : float
        Largest acceptable relative difference between the estimated and nominal scale.

    Returns
    -------
    RegistrationResult
        Transform, score (mean NCC over the used sections) and the used sections.

    Raises
    ------
    InputError
        If the stacks have different numbers of sections or the options are invalid.
    RegistrationError
        If the score is below ``min_score``, the rotation or scale is out of bounds, or the
        mapped HR field of view is not inside the LR image; the message gives the score.
    """
    lr, hr = _stack(lr, "lr"), _stack(hr, "hr")
    if len(lr) != len(hr):
        raise InputError(f"LR has {len(lr)} sections but HR has {len(hr)}")
    if not (scale > 0 and sections >= 1 and max_rotation_deg >= 0):
        raise InputError(
            "scale must be positive, sections ≥ 1 and max_rotation_deg ≥ 0, got "
            f"{scale}, {sections} and {max_rotation_deg}"
        )
    used = section_picks(len(hr), sections)
    out_shape = tuple(max(1, round(n * scale)) for n in hr.shape[1:])
    centre = (np.array(hr.shape[1:]) - 1) / 2
    downs, params = [], []
    for z in used:
        section, reference = lr[z].astype(np.float64), hr[z].astype(np.float64)
        downs.append(_area_downsample(reference, out_shape))
        angle, position = _coarse(section, downs[-1], max_rotation_deg)
        found = _refine(section, reference, _about_centre(scale, angle, position, centre))
        params.append([found.scale, found.rotation_deg, *found.apply(centre[None])[0]])
    s, rotation, *position = np.median(params, axis=0)
    transform = _about_centre(s, rotation, position, centre)
    points = transform.apply(_grid(hr.shape[1:], out_shape))
    score = float(
        np.mean([_ncc(_sample(lr[z], points), d) for z, d in zip(used, downs, strict=True)])
    )
    where = f"(normalised cross-correlation {score:.2f})"
    corners = transform.apply(_corners(hr.shape[1:]))
    if score < min_score:
        raise RegistrationError(
            "LR does not cover the HR field of view "
            f"(best normalised cross-correlation {score:.2f} < {min_score:g})"
        )
    if abs(rotation) > max_rotation_deg:
        raise RegistrationError(
            f"rotation {rotation:.2f}° is beyond ±{max_rotation_deg:g}° {where}"
        )
    if abs(s / scale - 1) > max_scale_error:
        raise RegistrationError(
            f"scale {s:.4f} differs from the nominal {scale:.4f} by {abs(s / scale - 1):.1%} "
            f"> {max_scale_error:.1%} {where}"
        )
    if np.any(corners < -0.5) or np.any(corners > np.array(lr.shape[1:]) - 0.5):
        raise RegistrationError(
            "the HR field of view mapped by the estimated transform extends outside the LR "
            f"image ({lr.shape[1]}×{lr.shape[2]} pixels) {where}"
        )
    return RegistrationResult(transform, score, used)


def registered_shape(hr_shape: tuple[int, ...], transform: Similarity) -> tuple[int, int]:
    """Return the (y, x) shape of the LR resampled onto the HR field of view.

    Parameters
    ----------
    hr_shape : tuple of int
        Shape of the HR stack or section; only the last two (y, x) sizes are used.
    transform : Similarity
        HR pixel → LR pixel mapping.

    Returns
    -------
    tuple of int
        ``round(n · transform.scale)`` for each HR axis of ``n`` pixels.
    """
    return tuple(max(1, round(n * transform.scale)) for n in hr_shape[-2:])


def resample_lr(lr: np.ndarray, transform: Similarity, hr_shape: tuple[int, ...]) -> np.ndarray:
    """Resample the LR onto the HR field of view at LR pixel density, slice by slice.

    An HR axis of ``n`` pixels gets ``m = round(n · transform.scale)`` output pixels; the
    centre of output pixel ``q``, HR coordinate ``(q + 0.5)·n/m − 0.5``, is mapped to the LR
    with ``transform`` and the LR is sampled there with a cubic spline.

    Parameters
    ----------
    lr : numpy.ndarray
        LR stack (z, y, x) or section (y, x).
    transform : Similarity
        HR pixel → LR pixel mapping, e.g. from :func:`estimate_transform`.
    hr_shape : tuple of int
        Shape of the HR stack or section; only the last two (y, x) sizes are used.

    Returns
    -------
    numpy.ndarray
        float32 array clipped to [0, 1], 2D or 3D like ``lr``.
    """
    hr_shape = tuple(hr_shape[-2:])
    out_shape = registered_shape(hr_shape, transform)
    points = transform.apply(_grid(hr_shape, out_shape))
    lr = np.asarray(lr)
    out = np.empty((*lr.shape[:-2], *out_shape), dtype=np.float32)
    for index in np.ndindex(lr.shape[:-2]):
        out[index] = np.clip(_sample(lr[index], points), 0.0, 1.0).reshape(out_shape)
    return out


def residuals(lr_registered: np.ndarray, hr: np.ndarray, *, z0: int = 0) -> pd.DataFrame:
    """Measure the remaining misregistration of a registered LR, per section.

    Parameters
    ----------
    lr_registered : numpy.ndarray
        Output of :func:`resample_lr`, (z, y, x) or (y, x).
    hr : numpy.ndarray
        HR stack or section with the same number of sections.
    z0 : int, optional
        Index of the first section in the whole volume.

    Returns
    -------
    pandas.DataFrame
        One row per section: ``slice`` (its index); ``ncc`` with the HR area-averaged to
        the LR grid; ``shift_row``, ``shift_col`` and ``shift_norm``, the shift in LR pixels (phase
        correlation to 1/20 pixel) of the registered LR content relative to the HR.
    """
    lr, hr = _stack(lr_registered, "lr_registered"), _stack(hr, "hr")
    if len(lr) != len(hr):
        raise InputError(f"registered LR has {len(lr)} sections but HR has {len(hr)}")
    rows = []
    for section, reference in zip(lr, hr, strict=True):
        down = _area_downsample(reference, section.shape)
        shift = -phase_cross_correlation(down, section.astype(np.float64), upsample_factor=20)[0]
        rows.append([_ncc(section, down), *shift, np.hypot(*shift)])
    table = pd.DataFrame(rows, columns=["ncc", "shift_row", "shift_col", "shift_norm"])
    table.insert(0, "slice", np.arange(z0, z0 + len(table)))
    return table


def qc_figure(hr_section: np.ndarray, lr_registered_section: np.ndarray) -> Figure:
    """Draw a registration QC figure: checkerboard and magenta/green overlay.

    Parameters
    ----------
    hr_section : numpy.ndarray
        HR section (y, x).
    lr_registered_section : numpy.ndarray
        The same section of the registered LR (output of :func:`resample_lr`).

    Returns
    -------
    matplotlib.figure.Figure
        Figure with two axes. The LR is upsampled bicubically to the HR grid and both
        images are normalised to zero mean and unit standard deviation.
    """
    hr = np.asarray(hr_section, dtype=np.float64)
    lr = resize(np.asarray(lr_registered_section, dtype=np.float64), hr.shape, order=3)
    hr, lr = ((a - a.mean()) / (a.std() or 1.0) for a in (hr, lr))
    rows, cols = np.indices(hr.shape) // max(1, min(hr.shape) // 8)
    figure = Figure(figsize=(10, 5.2), layout="constrained")
    board, overlay = figure.subplots(1, 2)
    board.imshow(np.where((rows + cols) % 2 == 0, hr, lr), cmap="gray", vmin=-3, vmax=3)
    board.set_title("checkerboard: HR / registered LR")
    magenta, green = (np.clip((a + 3) / 6, 0, 1) for a in (hr, lr))
    overlay.imshow(np.stack([magenta, green, magenta], axis=-1))
    overlay.set_title("overlay: HR magenta, registered LR green")
    for axes in (board, overlay):
        axes.set_axis_off()
    return figure
