"""Synthetic LR images made from HR images (EMSR paper, Sec. III.B.2).

Synthetic (I)
    Bicubic downsampling of the HR section by τ.
Synthetic (II)
    Isotropic Gaussian blur with a random standard deviation κ ∈ [0, 3] HR pixels,
    zero-mean Gaussian noise σ₁ ∈ [20, 40], bicubic downsampling by τ, then Gaussian
    noise σ₂ ∈ [5, 15] (σ on the 0–255 intensity scale).

Random draws are seeded per section from ``(seed, section index)``, so a volume
processed in slabs gives exactly the same result as one processed at once.

Axial (slice-thickness) degradation
    Slice ``k`` of an anisotropic stack integrates the isotropic volume over
    [k·ρ − ½, (k + 1)·ρ − ½] (ρ in isotropic pixels, possibly non-integer), convolved
    with an axial Gaussian blur: :func:`slice_weights`, :func:`integrate_axis`. The
    phantom's anisotropic acquisition, the self-supervised pairs of isotropic
    reconstruction and its validation protocol all use this one model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special
from scipy.ndimage import gaussian_filter

from .resize import bicubic

__all__ = [
    "KINDS",
    "Synthetic2Ranges",
    "add_noise",
    "degrade_section",
    "degrade_stack",
    "integrate_axis",
    "slice_weights",
    "slice_weights_within",
    "synthetic2_draw",
]

KINDS = ("synthetic1", "synthetic2")


@dataclass(frozen=True)
class Synthetic2Ranges:
    """Uniform ranges of the Synthetic (II) degradation; noise on the 0–255 scale."""

    blur_sigma: tuple[float, float] = (0.0, 3.0)
    noise_hr: tuple[float, float] = (20.0, 40.0)
    noise_lr: tuple[float, float] = (5.0, 15.0)

    def __post_init__(self):
        for name, (lo, hi) in asdict(self).items():
            if not 0 <= lo <= hi:
                raise ValueError(
                    f"synthetic2 range {name} must satisfy 0 ≤ low ≤ high, got {lo}, {hi}"
                )


def synthetic2_draw(rng: np.random.Generator, ranges: Synthetic2Ranges) -> dict[str, float]:
    """Draw the blur and noise parameters of one Synthetic (II) section."""
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in asdict(ranges).items()}


def degrade_section(
    hr: np.ndarray,
    tau: int,
    *,
    kind: str,
    rng: np.random.Generator,
    ranges: Synthetic2Ranges = Synthetic2Ranges(),
) -> tuple[np.ndarray, dict[str, float]]:
    """Make the synthetic LR image of one HR section.

    Parameters
    ----------
    hr : ndarray
        2D float HR image in [0, 1] whose shape is a multiple of ``tau``.
    tau : int
        Downsampling factor.
    kind : {'synthetic1', 'synthetic2'}
        Degradation model.
    rng : numpy.random.Generator
        Source of the random parameters and noise.
    ranges : Synthetic2Ranges, optional
        Parameter ranges of Synthetic (II).

    Returns
    -------
    lr : ndarray
        float32 image of shape ``hr.shape // tau``, clipped to [0, 1].
    params : dict
        The parameters drawn (empty for Synthetic (I)).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {KINDS}")
    if hr.shape[0] % tau or hr.shape[1] % tau:
        raise ValueError(f"HR shape {hr.shape} is not a multiple of τ = {tau}")
    shape = (hr.shape[0] // tau, hr.shape[1] // tau)
    if kind == "synthetic1":
        return bicubic(hr, shape), {}
    params = synthetic2_draw(rng, ranges)
    image = gaussian_filter(np.asarray(hr, np.float32), params["blur_sigma"], mode="reflect")
    image = image + rng.normal(0.0, params["noise_hr"] / 255.0, image.shape).astype(np.float32)
    # Downsample without clipping: the noise must not be rectified before it is averaged.
    lr = bicubic(image, shape, clip=False)
    lr = lr + rng.normal(0.0, params["noise_lr"] / 255.0, lr.shape).astype(np.float32)
    return np.clip(lr, 0.0, 1.0).astype(np.float32), params


def degrade_stack(
    stack: np.ndarray,
    tau: int,
    *,
    kind: str,
    seed: int,
    z0: int = 0,
    ranges: Synthetic2Ranges = Synthetic2Ranges(),
) -> tuple[np.ndarray, list[dict]]:
    """Make the synthetic LR stack of an HR stack, seeded per section.

    Parameters
    ----------
    stack : ndarray
        (z, y, x) float HR stack in [0, 1].
    tau : int
        Downsampling factor.
    kind : {'synthetic1', 'synthetic2'}
        Degradation model.
    seed : int
        Seed of the whole volume; section ``z`` uses ``default_rng([seed, z])``.
    z0 : int, optional
        Index of the first section of ``stack`` in the whole volume.
    ranges : Synthetic2Ranges, optional
        Parameter ranges of Synthetic (II).

    Returns
    -------
    lr : ndarray
        float32 (z, y/τ, x/τ) stack.
    rows : list of dict
        Per section: ``slice`` and the parameters drawn.
    """
    sections, rows = [], []
    for i, hr in enumerate(stack):
        rng = np.random.default_rng([seed, z0 + i])
        lr, params = degrade_section(hr, tau, kind=kind, rng=rng, ranges=ranges)
        sections.append(lr)
        rows.append({"slice": z0 + i, **params})
    return np.stack(sections), rows


def add_noise(stack: np.ndarray, sigma: float, *, seed: int, z0: int = 0) -> np.ndarray:
    """Add zero-mean Gaussian noise to a stack, seeded per section (EMSR ablations).

    The EMSR paper's noise ablations (Sec. III.G, Figs. 13 and 14) add Gaussian noise of
    standard deviation σ on the 0–255 scale to the LR input at test time, or to the
    denoised HR references used for training. Section ``z`` draws its noise from
    ``default_rng([seed, z])``, so a volume processed in slabs gives exactly the result
    of one processed at once; the result is clipped to [0, 1] as an 8-bit image would be.

    Parameters
    ----------
    stack : ndarray
        (z, y, x) float stack in [0, 1].
    sigma : float
        Standard deviation on the 0–255 intensity scale (≥ 0; 0 returns a copy).
    seed : int
        Seed of the whole volume.
    z0 : int, optional
        Index of the first section of ``stack`` in the whole volume.

    Returns
    -------
    ndarray
        float32 stack of the input's shape, clipped to [0, 1].
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"noise sigma must be a finite number ≥ 0, got {sigma}")
    array = np.asarray(stack, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"stack must be (z, y, x), got shape {array.shape}")
    out = np.empty_like(array)
    for i, section in enumerate(array):
        rng = np.random.default_rng([seed, z0 + i])
        noise = rng.normal(0.0, sigma / 255.0, section.shape).astype(np.float32)
        out[i] = np.clip(section + noise, 0.0, 1.0)
    return out


def slice_weights(k: int, rho: float, sigma: float) -> tuple[list[int], np.ndarray]:
    """Isotropic indices and weights integrated by thick slice ``k``.

    Slice ``k`` averages the isotropic voxels over [k·ρ − ½, (k + 1)·ρ − ½] (a box of
    width ρ, counting partial voxels by their overlap), convolved with a Gaussian of
    standard deviation ``sigma`` (axial blur), both in isotropic voxels.

    Parameters
    ----------
    k : int
        Index of the thick slice.
    rho : float
        Slice thickness in isotropic voxels (> 0, possibly non-integer).
    sigma : float
        Axial blur in isotropic voxels (≥ 0).

    Returns
    -------
    indices : list of int
        Isotropic indices with a weight above 1e-6 (they may fall outside the volume).
    weights : numpy.ndarray
        Their weights, summing to 1.
    """
    a, b = k * rho - 0.5, (k + 1) * rho - 0.5
    j = np.arange(math.floor(a - 4 * sigma) - 1, math.ceil(b + 4 * sigma) + 2)
    if sigma <= 1e-6:
        w = np.clip(np.minimum(j + 0.5, b) - np.maximum(j - 0.5, a), 0, None) / rho
    else:

        def g(x):
            return x * special.ndtr(x) + np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

        def prim(lo, hi, edge):
            return sigma * (g((hi - edge) / sigma) - g((lo - edge) / sigma))

        w = (prim(j - 0.5, j + 0.5, a) - prim(j - 0.5, j + 0.5, b)) / rho
    keep = w > 1e-6
    j, w = j[keep], w[keep]
    return [int(x) for x in j], w / w.sum()


def slice_weights_within(k: int, rho: float, sigma: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`slice_weights` with indices mirrored into ``[0, n)`` (symmetric borders)."""
    indices, weights = slice_weights(k, rho, sigma)
    index = np.asarray(indices)  # mirrored about -0.5 and n - 0.5
    index = np.where(index < 0, -index - 1, index)
    index = np.where(index > n - 1, 2 * n - 1 - index, index)
    return np.clip(index, 0, n - 1), weights


def integrate_axis(array: np.ndarray, axis: int, rho: float, sigma: float = 0.0) -> np.ndarray:
    """Integrate an array along one axis into thick slices (see :func:`slice_weights`).

    Parameters
    ----------
    array : numpy.ndarray
        Isotropic data, any dimensionality.
    axis : int
        Axis to integrate (the axial direction).
    rho : float
        Slice thickness in pixels along ``axis`` (≥ 1).
    sigma : float, optional
        Axial Gaussian blur in pixels.

    Returns
    -------
    numpy.ndarray
        float32 array with ``floor(n / ρ)`` slices along ``axis`` (n its length there);
        weights reaching past the ends are mirrored back inside (symmetric borders).

    Raises
    ------
    ValueError
        If ρ < 1 or the axis is shorter than one slice.
    """
    data = np.asarray(array, dtype=np.float32)
    n = data.shape[axis]
    if not rho >= 1.0:
        raise ValueError(f"slice thickness ρ must be ≥ 1 pixel, got {rho}")
    if math.floor(n / rho + 1e-9) < 1:
        raise ValueError(f"an axis of {n} pixels holds no slice of thickness ρ = {rho}")
    matrix = _integration_matrix(n, float(rho), float(sigma))
    moved = np.moveaxis(data, axis, -1)
    return np.moveaxis(moved @ matrix.T, -1, axis)


@functools.lru_cache(maxsize=256)
def _integration_matrix(n: int, rho: float, sigma: float) -> np.ndarray:
    """Weights (slices × n) of :func:`integrate_axis`, mirrored at the ends (read-only)."""
    slices = math.floor(n / rho + 1e-9)
    matrix = np.zeros((slices, n), np.float64)
    for k in range(slices):
        np.add.at(matrix[k], *slice_weights_within(k, rho, sigma, n))
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix
