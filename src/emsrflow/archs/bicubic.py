"""Bicubic interpolation as a parameter-free network (the baseline of the EMSR paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_scale
from .registry import ARCHS

__all__ = ["Bicubic"]


@ARCHS.register("bicubic")
class Bicubic(nn.Module):
    """Bicubic upsampling by τ, clamped to [0, 1].

    ``torch.nn.functional.interpolate`` with ``mode="bicubic"`` and
    ``align_corners=False`` (pixel areas aligned: the output grid covers exactly the
    field of view of the input), without antialiasing.

    Parameters
    ----------
    scale : int
        Upsampling factor τ.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = check_scale(scale)
        self.window = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample (N, 1, h, w) images to (N, 1, τh, τw)."""
        size = (self.scale * x.shape[-2], self.scale * x.shape[-1])
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
