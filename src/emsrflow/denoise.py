"""Denoised HR references (the EMSR paper's "Denoised" training strategy).

Each HR section is denoised on its own with a classical Gaussian denoiser whose
strength follows the noise level estimated on that section. Noise levels are
reported on the 0–255 scale used throughout the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import bm3d
import numpy as np
from skimage.restoration import denoise_nl_means, estimate_sigma

__all__ = ["METHODS", "denoise_section", "denoise_stack", "noise_sigma"]


def noise_sigma(image: np.ndarray) -> float:
    """Estimate the Gaussian noise standard deviation of one section.

    Parameters
    ----------
    image : ndarray
        2D float image with intensities in [0, 1].

    Returns
    -------
    float
        Robust wavelet (median absolute deviation) estimate on the 0–1 scale.
    """
    return float(estimate_sigma(np.asarray(image, dtype=np.float64)))


def _nlm(image: np.ndarray, sigma: float, *, strength: float) -> np.ndarray:
    return denoise_nl_means(
        image, h=strength * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
    )


def _bm3d(image: np.ndarray, sigma: float, *, strength: float) -> np.ndarray:
    return bm3d.bm3d(image, sigma_psd=strength * sigma)


#: Denoisers by name: ``f(image, sigma, *, strength) -> image``. ``strength`` scales the
#: estimated noise level (non-local means ``h = strength·σ``; BM3D ``σ_psd = strength·σ``).
METHODS: dict[str, Callable[..., np.ndarray]] = {"nlm": _nlm, "bm3d": _bm3d}


def denoise_section(
    image: np.ndarray, *, method: str = "nlm", strength: float = 1.0
) -> tuple[np.ndarray, float]:
    """Denoise one section with the noise level estimated on it.

    Parameters
    ----------
    image : ndarray
        2D float image with intensities in [0, 1].
    method : {'nlm', 'bm3d'}
        Non-local means (scikit-image) or BM3D (the ``bm3d`` package).
    strength : float, optional
        Multiplier of the estimated noise level passed to the denoiser.

    Returns
    -------
    denoised : ndarray
        float32 image clipped to [0, 1].
    sigma : float
        The noise level estimated before denoising (0–1 scale).
    """
    if method not in METHODS:
        raise ValueError(f"unknown denoising method {method!r}; choose one of {sorted(METHODS)}")
    if strength <= 0:
        raise ValueError(f"strength must be positive, got {strength}")
    image = np.asarray(image, dtype=np.float64)
    sigma = noise_sigma(image)
    if sigma == 0:
        return image.astype(np.float32), sigma
    out = METHODS[method](image, sigma, strength=strength)
    return np.clip(out, 0.0, 1.0).astype(np.float32), sigma


def denoise_stack(
    stack: np.ndarray, *, method: str = "nlm", strength: float = 1.0, z0: int = 0
) -> tuple[np.ndarray, list[dict]]:
    """Denoise every section of a stack.

    Parameters
    ----------
    stack : ndarray
        (z, y, x) float stack with intensities in [0, 1].
    method, strength
        See :func:`denoise_section`.
    z0 : int, optional
        Index of the first section in the whole volume (for the report rows).

    Returns
    -------
    denoised : ndarray
        float32 stack.
    rows : list of dict
        Per section: ``slice``, ``sigma_before`` and ``sigma_after`` on the 0–255 scale.
    """
    out = np.empty(stack.shape, dtype=np.float32)
    rows = []
    for i, section in enumerate(stack):
        out[i], before = denoise_section(section, method=method, strength=strength)
        rows.append(
            {
                "slice": z0 + i,
                "sigma_before": 255.0 * before,
                "sigma_after": 255.0 * noise_sigma(out[i]),
            }
        )
    return out, rows
