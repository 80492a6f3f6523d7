"""À-trous (stationary, undecimated) wavelet transform used by EMSRNet for edges.

The starlet transform smooths an image repeatedly with the separable B3-spline kernel
[1, 4, 6, 4, 1]/16, dilated by 2^(j-1) at scale j ("holes" between the taps), and keeps
the differences of successive smoothings as detail planes, each at the full image
size: c_0 = x, c_j = h_j * c_(j-1), w_j = c_(j-1) - c_j, so x = c_J + Σ_j w_j. The
detail planes are sparse, noise-robust multiscale edge maps (EMSR paper, Sec. II.C
and Fig. 4).

As in the authors' code, the image is first smoothed once with a small Gaussian
kernel (σ ≈ 0.6 pixels) so the finest scale does not respond to pixel noise; unlike
their code, borders are reflected instead of zero-padded, so a constant image has no
detail at its borders either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import reflect_pad

__all__ = ["B3_SPLINE", "PRESMOOTH", "AtrousWavelet"]

#: B3-spline scaling filter of the starlet transform (sums to 1).
B3_SPLINE = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)

_GAUSS_TAPS = (0.002566, 0.1655, 0.6638, 0.1655, 0.002566)

#: Gaussian pre-smoothing taps of the authors' code (σ ≈ 0.6), normalised to sum 1.
PRESMOOTH = tuple(t / sum(_GAUSS_TAPS) for t in _GAUSS_TAPS)


class AtrousWavelet(nn.Module):
    """Detail planes of the à-trous wavelet transform, per channel.

    Parameters
    ----------
    scales : int, optional
        Number of detail scales J; scale j uses the B3-spline kernel dilated by
        2^(j-1) (1, 2, 4 for the paper's three scales).
    presmooth : bool, optional
        Smooth the image with :data:`PRESMOOTH` before the transform (the authors'
        code does).
    """

    def __init__(self, scales: int = 3, *, presmooth: bool = True):
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be ≥ 1, got {scales}")
        self.scales = scales
        self.presmooth = presmooth
        self.register_buffer("b3", torch.tensor(B3_SPLINE), persistent=False)
        self.register_buffer("gauss", torch.tensor(PRESMOOTH), persistent=False)

    @staticmethod
    def _smooth(x: torch.Tensor, taps: torch.Tensor, dilation: int) -> torch.Tensor:
        """Convolve every channel with the separable kernel ``taps`` ⊗ ``taps``."""
        c = x.shape[1]
        half = dilation * (taps.numel() // 2)
        x = reflect_pad(x, half, half, half, half)
        row = taps.to(x.dtype).reshape(1, 1, 1, -1).expand(c, 1, 1, -1)
        x = F.conv2d(x, row, dilation=(1, dilation), groups=c)
        return F.conv2d(x, row.transpose(-1, -2), dilation=(dilation, 1), groups=c)

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split an image into detail planes and the coarsest smoothing.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape (N, C, H, W).

        Returns
        -------
        details : torch.Tensor
            Detail planes w_1 … w_J of shape (N, J·C, H, W), finest scale first
            (channels of one scale together).
        coarse : torch.Tensor
            The last smoothing c_J, of shape (N, C, H, W); ``details`` summed over the
            scales plus ``coarse`` gives back the (pre-smoothed) image.
        """
        current = self._smooth(x, self.gauss, 1) if self.presmooth else x
        details = []
        for j in range(self.scales):
            smoother = self._smooth(current, self.b3, 1 << j)  # 2^j as an int (TorchScript)
            details.append(current - smoother)
            current = smoother
        return torch.cat(details, dim=1), current

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the detail planes of ``x``, shape (N, J·C, H, W), finest first."""
        return self.decompose(x)[0]
