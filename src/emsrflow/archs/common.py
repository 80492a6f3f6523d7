"""Building blocks shared by the super-resolution networks.

Reflect padding that works for every image size (windows of a transformer need a size
that is a multiple of the window; convolutions of the wavelet transform need borders
wider than small images), window partitioning for window attention, and the
pixel-shuffle upsampler.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PixelShuffleUpsampler",
    "check_scale",
    "merge_windows",
    "pad_to_multiple",
    "reflect_pad",
    "split_windows",
    "warp",
]


def check_scale(scale: int) -> int:
    """Return ``scale`` as an int after checking that it is a positive integer.

    Parameters
    ----------
    scale : int
        Upsampling factor τ (an int or a NumPy integer).

    Returns
    -------
    int
        τ.

    Raises
    ------
    ValueError
        If ``scale`` is not an integer ≥ 1.
    """
    try:
        value = operator.index(scale)  # ints and NumPy integers, not floats
    except TypeError:
        value = 0
    if isinstance(scale, bool) or value < 1:
        raise ValueError(f"scale must be an integer ≥ 1, got {scale!r}")
    return value


def _reflect_axis(x: torch.Tensor, before: int, after: int, axis: int) -> torch.Tensor:
    """Reflect-pad one spatial axis (-1: width, -2: height) by any amount."""
    while before or after:
        size = x.shape[axis]
        if size == 1:  # nothing to reflect about: the symmetric extension is constant
            pad = (before, after, 0, 0) if axis == -1 else (0, 0, before, after)
            return F.pad(x, pad, mode="replicate")
        step_before, step_after = min(before, size - 1), min(after, size - 1)
        pad = (step_before, step_after, 0, 0) if axis == -1 else (0, 0, step_before, step_after)
        x = F.pad(x, pad, mode="reflect")
        before, after = before - step_before, after - step_after
    return x


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect-pad the last two axes of a 4D tensor by any amount.

    ``torch.nn.functional.pad`` reflects only by less than the axis length; larger
    borders are reached by reflecting repeatedly, and an axis of length 1 is repeated.

    Parameters
    ----------
    x : torch.Tensor
        Tensor of shape (N, C, H, W).
    left, right, top, bottom : int
        Border widths, in pixels (≥ 0).

    Returns
    -------
    torch.Tensor
        Tensor of shape (N, C, H + top + bottom, W + left + right).
    """
    if left == right == top == bottom == 0:
        return x
    if x.shape[-1] > max(left, right) and x.shape[-2] > max(top, bottom):
        return F.pad(x, (left, right, top, bottom), mode="reflect")
    return _reflect_axis(_reflect_axis(x, left, right, -1), top, bottom, -2)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of a 4D tensor to a multiple of ``multiple``.

    Parameters
    ----------
    x : torch.Tensor
        Tensor of shape (N, C, H, W).
    multiple : int
        Size that H and W are rounded up to a multiple of.

    Returns
    -------
    torch.Tensor
        Padded tensor; crop ``[..., :H, :W]`` to undo.
    """
    h, w = x.shape[-2:]
    return reflect_pad(x, 0, -w % multiple, 0, -h % multiple)


def split_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Cut a (N, H, W, C) map into non-overlapping square windows of tokens.

    Parameters
    ----------
    x : torch.Tensor
        Token map of shape (N, H, W, C) with H and W multiples of ``window``.
    window : int
        Window side M.

    Returns
    -------
    torch.Tensor
        Windows of shape (N · H/M · W/M, M², C), row-major over the windows.
    """
    n, h, w, c = x.shape
    x = x.reshape(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def merge_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Invert :func:`split_windows`.

    Parameters
    ----------
    windows : torch.Tensor
        Windows of shape (N · H/M · W/M, M², C).
    window : int
        Window side M.
    h, w : int
        Size of the token map.

    Returns
    -------
    torch.Tensor
        Token map of shape (N, H, W, C).
    """
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class PixelShuffleUpsampler(nn.Sequential):
    """Sub-pixel convolution upsampling of a feature map by an integer factor.

    A factor that is a power of two is reached in ×2 steps (each a 3×3 convolution to
    4·C channels and a pixel shuffle), any other factor in one step (a 3×3
    convolution to τ²·C channels and a pixel shuffle), as in EDSR and SwinIR.

    Parameters
    ----------
    channels : int
        Feature channels C, kept by every step.
    scale : int
        Upsampling factor τ.
    bias : bool, optional
        Whether the convolutions have a bias.
    """

    def __init__(self, channels: int, scale: int, *, bias: bool = True):
        if scale & (scale - 1) == 0:
            factors = [2] * int(math.log2(scale))
        else:
            factors = [scale]
        layers: list[nn.Module] = []
        for factor in factors:
            layers.append(nn.Conv2d(channels, channels * factor**2, 3, padding=1, bias=bias))
            layers.append(nn.PixelShuffle(factor))
        super().__init__(*layers)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at p + flow(p), bilinear, border values outside.

    Parameters
    ----------
    image : torch.Tensor
        (B, C, H, W).
    flow : torch.Tensor
        (B, 2, H, W): (x, y) displacements in pixels.

    Returns
    -------
    torch.Tensor
        (B, C, H, W), ``image(p + flow(p))``.
    """
    h, w = image.shape[-2:]
    ys = torch.arange(h, device=image.device, dtype=flow.dtype)
    xs = torch.arange(w, device=image.device, dtype=flow.dtype)
    x = xs + flow[:, 0]
    y = ys[:, None] + flow[:, 1]
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
