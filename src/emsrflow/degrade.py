"""Synthetic LR images made from HR images (EMSR paper, Sec. III.B.2).

Synthetic (I)
    Bicubic downsampling of the HR section by τ.
Synthetic (II)
    Isotropic Gaussian blur with a random standard deviation κ ∈ [0, 3] HR pixels,
    zero-mean Gaussian noise σ₁ ∈ [20, 40], bicubic downsampling by τ, then Gaussian
    noise σ₂ ∈ [5, 15] (σ on the 0–255 intensity scale).

Random draws are seeded per section from ``(seed, section index)``, so a volume
processed in slabs gives exactly the same result as one processed at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .resize import bicubic

__all__ = ["KINDS", "Synthetic2Ranges", "degrade_section", "degrade_stack", "synthetic2_draw"]

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
