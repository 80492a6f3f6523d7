"""PSSR-style residual U-Net baseline.

PSSR (Fang et al., "Deep learning-based point-scanning super-resolution imaging",
Nature Methods 2021) upsamples the LR image bicubically to the HR grid and restores it
with a U-Net whose encoder is a ResNet-34 (fastai ``unet_learner``): the EMSR paper
counts 32.0 M parameters for it. This is a from-scratch U-Net of that kind, without
ImageNet weights: a full-resolution stem, ResNet basic-block stages (3, 4, 6, 3 blocks
of 64 … 512 channels, each stage after the first halving the resolution), a widening
bottleneck, and a decoder of pixel-shuffle ×2 upsampling, skip concatenation and two
convolutions per level; a 1×1 convolution predicts the residual added to the bicubic
image. The input is reflect-padded to a multiple of 2^depth and the output cropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_scale, pad_to_multiple
from .registry import ARCHS

__all__ = ["ResUNet"]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution, batch normalisation and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv + BN, identity or projected shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class _UpBlock(nn.Module):
    """Decoder level: pixel-shuffle ×2, concatenate the skip, two conv-BN-ReLU."""

    def __init__(self, c_deep: int, c_skip: int):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(c_deep, 4 * c_skip, 1), nn.PixelShuffle(2), nn.ReLU())
        self.fuse = nn.Sequential(_conv_bn_relu(2 * c_skip, c_skip), _conv_bn_relu(c_skip, c_skip))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


@ARCHS.register("unet")
class ResUNet(nn.Module):
    """Residual U-Net on the bicubic-upsampled LR image (PSSR baseline).

    Maps (N, 1, h, w) LR images to (N, 1, τh, τw): the bicubic upsampling plus a
    U-Net-predicted residual. The defaults (a ResNet-34 encoder) have 33.7 M
    parameters.

    Parameters
    ----------
    scale : int
        Upsampling factor τ.
    widths : sequence of int, optional
        Channels of the encoder stages; stage i > 0 works at 1/2^i of the HR size.
    blocks : sequence of int, optional
        ResNet basic blocks per encoder stage (as many as ``widths``).
    bottleneck : int, optional
        Widening factor of the two convolutions at the coarsest level.
    """

    def __init__(
        self,
        scale: int,
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (3, 4, 6, 3),
        bottleneck: int = 2,
    ):
        super().__init__()
        if len(widths) != len(blocks) or not widths or min(blocks) < 1:
            raise ValueError(
                f"widths {tuple(widths)} and blocks {tuple(blocks)} must have the same "
                "length ≥ 1, with at least one block per stage"
            )
        self.scale = check_scale(scale)
        multiple = 2 ** (len(widths) - 1)
        self.multiple = multiple
        self.window = multiple // math.gcd(multiple, self.scale)
        self.stem = _conv_bn_relu(1, widths[0])
        self.encoder = nn.ModuleList()
        c_in = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = [_BasicBlock(c_in, width, 2 if i else 1)]
            stage += [_BasicBlock(width, width, 1) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*stage))
            c_in = width
        self.middle = nn.Sequential(
            _conv_bn_relu(c_in, bottleneck * c_in), _conv_bn_relu(bottleneck * c_in, c_in)
        )
        self.decoder = nn.ModuleList(
            _UpBlock(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve (N, 1, h, w) LR images to (N, 1, τh, τw)."""
        size = (self.scale * x.shape[-2], self.scale * x.shape[-1])
        up = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        features = self.stem(pad_to_multiple(up, self.multiple))
        skips = []
        for stage in self.encoder:
            features = stage(features)
            skips.append(features)
        features = self.middle(skips.pop())
        for level in self.decoder:
            features = level(features, skips.pop())
        return up + self.head(features)[..., : size[0], : size[1]]
