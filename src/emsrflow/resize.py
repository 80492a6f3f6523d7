"""Bicubic resizing of LR/HR pairs to an integer resolution ratio.

The EMSR paper resizes each registered LR/HR pair with bicubic interpolation so that
their pixel sizes differ by an integer factor τ (for 15 nm HR and 50 nm LR pixels,
1024² → 1023² and ≈307² → 341², τ = 3). Resampling is area-aligned (pixel edges of
the input and output grids coincide at the borders of the field of view), so an HR
patch of τ·n pixels covers exactly the tissue of the corresponding n LR pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["bicubic", "integer_ratio", "nearest", "pair_shapes"]

#: Resolution ratios outside this range are rejected as nonsensical for lateral SR.
RATIO_RANGE = (2, 32)


def integer_ratio(lr_pixel_nm: float, hr_pixel_nm: float, *, ratio: int | None = None) -> int:
    """Return the integer resolution ratio τ for an LR/HR pixel-size pair.

    Parameters
    ----------
    lr_pixel_nm, hr_pixel_nm : float
        Lateral pixel sizes of the LR and HR acquisitions, in nanometres.
    ratio : int, optional
        Ratio requested by the configuration; by default the nearest integer to
        ``lr_pixel_nm / hr_pixel_nm``.

    Returns
    -------
    int
        τ, between 2 and 32.

    Raises
    ------
    InputError
        If the pixel sizes are not positive or give no sensible ratio.
    """
    if not (lr_pixel_nm > 0 and hr_pixel_nm > 0):
        raise InputError(
            f"pixel sizes must be positive, got LR {lr_pixel_nm} nm and HR {hr_pixel_nm} nm"
        )
    measured = lr_pixel_nm / hr_pixel_nm
    tau = round(measured) if ratio is None else int(ratio)
    lo, hi = RATIO_RANGE
    if not lo <= tau <= hi:
        raise InputError(
            f"LR pixel {lr_pixel_nm:g} nm and HR pixel {hr_pixel_nm:g} nm give a resolution "
            f"ratio of {measured:.3g} (τ = {tau}); super-resolution needs {lo} ≤ τ ≤ {hi}: "
            "check the voxel sizes in the sample sheet or the files' metadata"
        )
    if not 0.5 * tau <= measured <= 2.0 * tau:
        raise InputError(
            f"configured ratio τ = {tau} is far from the measured pixel-size ratio "
            f"{measured:.3g} (LR {lr_pixel_nm:g} nm, HR {hr_pixel_nm:g} nm)"
        )
    return tau


def pair_shapes(hr_shape: tuple[int, int], tau: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return the (y, x) shapes of the resized LR and HR images for ratio τ.

    The HR image keeps its field of view and is resized to the largest multiple of τ
    not above its size (1024 → 1023 for τ = 3); the LR image gets that size / τ.

    Parameters
    ----------
    hr_shape : tuple of int
        (y, x) size of the HR image.
    tau : int
        Integer resolution ratio.

    Returns
    -------
    lr_shape, hr_shape : tuple of (int, int)
    """
    lr = tuple(int(n) // tau for n in hr_shape)
    if min(lr) < 1:
        raise InputError(f"HR image of shape {tuple(hr_shape)} is smaller than τ = {tau}")
    return lr, tuple(n * tau for n in lr)


def bicubic(
    stack: np.ndarray, shape: tuple[int, int], *, antialias: bool = True, clip: bool = True
) -> np.ndarray:
    """Resize every slice of a stack with area-aligned bicubic interpolation.

    Parameters
    ----------
    stack : ndarray
        (z, y, x) or (y, x) float image with intensities in [0, 1].
    shape : tuple of int
        Output (y, x) shape.
    antialias : bool, optional
        Widen the cubic kernel when downsampling (as MATLAB's ``imresize`` and PIL do).
    clip : bool, optional
        Clip the result to [0, 1] (cubic interpolation overshoots at edges).

    Returns
    -------
    ndarray
        float32 array of the output shape.
    """
    array = np.asarray(stack, dtype=np.float32)
    planar = array.ndim == 2
    tensor = torch.from_numpy(np.ascontiguousarray(array[None] if planar else array))
    out = F.interpolate(
        tensor[:, None],
        size=tuple(shape),
        mode="bicubic",
        align_corners=False,
        antialias=antialias,
    )[:, 0]
    out = (out.clamp_(0.0, 1.0) if clip else out).numpy()
    return out[0] if planar else out


def nearest(stack: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize every slice of a stack by area-aligned nearest-neighbour sampling.

    For label images (ground-truth segmentations) that must follow a volume resized by
    :func:`bicubic`: output pixel ``i`` takes the input pixel under its centre,
    ``floor((i + 1/2) · n_in / n_out)``, on the same area-aligned grid (pixel edges
    coincide at the borders of the field of view). Values and dtype are kept; no new
    label appears.

    Parameters
    ----------
    stack : ndarray
        (z, y, x) or (y, x) array of any dtype (labels).
    shape : tuple of int
        Output (y, x) shape.

    Returns
    -------
    ndarray
        Array of the input's dtype and the output shape.
    """
    array = np.asarray(stack)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) image or (z, y, x) stack, got shape {array.shape}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"output shape must be two sizes ≥ 1, got {tuple(shape)}")
    y, x = (
        np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), n_in - 1)
        for n_in, n_out in zip(array.shape[-2:], shape, strict=True)
    )
    return array[..., y[:, None], x[None, :]]
