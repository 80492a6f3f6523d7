"""SPyNet optical flow (Ranjan and Black, CVPR 2017), laid out like BasicSR's.

The GPEMSR authors estimate the flows of their pyramid deformable alignment with a
SPyNet pretrained on Sintel (BasicSR's ``spynet_sintel_final-3d2a1287.pth``), run on the
LR sections upsampled 4× (bilinear). That file cannot be fetched here: :class:`SPyNet`
either loads it from a local copy (:func:`load_spynet_weights`; then it stays frozen)
or starts from random weights and is trained end to end with Stage III.

Facts of BasicSR's ``spynet_arch.py`` followed here (an independent implementation):
six levels, each a basic module of five 7×7 convolutions (8 → 32 → 64 → 32 → 16 → 2,
ReLU between) whose input is the reference, the supporting image warped by the
upsampled flow and that flow; the images are normalised with ImageNet's mean and
standard deviation (grey sections are given as three equal channels) and resized to a
multiple of 32 (here at least 64, so that the coarsest level has 2 pixels); the
coarsest level starts from a zero flow of half its size; each finer level doubles the
flow (bilinear, corners aligned) and adds the module's residual. State-dict keys:
``basic_module.{level}.basic_module.{0,2,4,6,8}.{weight,bias}``.
"""

from __future__ import annotations

import itertools
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import load_checked, load_state_dict_file
from .common import warp

__all__ = ["SPyNet", "load_spynet_weights"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class _BasicModule(nn.Module):
    """One pyramid level: five 7×7 convolutions from 8 channels to a flow residual."""

    def __init__(self):
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 7, padding=3), nn.ReLU()]
        self.basic_module = nn.Sequential(*layers[:-1])
        nn.init.zeros_(self.basic_module[-1].weight)
        nn.init.zeros_(self.basic_module[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SPyNet(nn.Module):
    """Spatial pyramid network for optical flow.

    Parameters
    ----------
    levels : int
        Pyramid levels (6, as the pretrained network).

    Notes
    -----
    The last convolution of every level starts at zero, so that an untrained SPyNet
    gives zero flows (no alignment) and end-to-end training starts from there.
    ``forward(ref, supp)`` takes images (B, 1 or 3, H, W) in [0, 1] of any size and
    returns the flow (B, 2, H, W), (x, y) in pixels, such that
    ``supp(p + flow(p)) ≈ ref(p)``.
    """

    def __init__(self, levels: int = 6):
        super().__init__()
        if levels < 1:
            raise ValueError(f"SPyNet needs at least one level, got {levels}")
        self.basic_module = nn.ModuleList(_BasicModule() for _ in range(levels))
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def _pyramid_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        refs, supps = [self._normalise(ref)], [self._normalise(supp)]
        for _ in range(len(self.basic_module) - 1):
            refs.insert(0, F.avg_pool2d(refs[0], 2, 2, count_include_pad=False))
            supps.insert(0, F.avg_pool2d(supps[0], 2, 2, count_include_pad=False))
        h, w = refs[0].shape[-2:]
        flow = refs[0].new_zeros(ref.shape[0], 2, h // 2, w // 2)
        for module, r, s in zip(self.basic_module, refs, supps, strict=True):
            up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2
            if up.shape[-2:] != r.shape[-2:]:
                up = F.pad(
                    up, (0, r.shape[-1] - up.shape[-1], 0, r.shape[-2] - up.shape[-2]), "replicate"
                )
            flow = module(torch.cat([r, warp(s, up), up], 1)) + up
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Return the flow (B, 2, H, W) with ``supp(p + flow(p)) ≈ ref(p)``."""
        if ref.shape != supp.shape or ref.ndim != 4 or ref.shape[1] not in (1, 3):
            raise ValueError(
                f"SPyNet takes two images (B, 1 or 3, H, W) of one shape, got "
                f"{tuple(ref.shape)} and {tuple(supp.shape)}"
            )
        h, w = ref.shape[-2:]
        grid = 2 ** (len(self.basic_module) - 1)  # the coarsest level ≥ 2 pixels
        size = tuple(max(math.ceil(n / grid), 2) * grid for n in (h, w))
        if size != (h, w):
            ref = F.interpolate(ref, size=size, mode="bilinear", align_corners=False)
            supp = F.interpolate(supp, size=size, mode="bilinear", align_corners=False)
        flow = self._pyramid_flow(ref, supp)
        if size != (h, w):
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([w / size[1], h / size[0]], dtype=flow.dtype).view(
                1, 2, 1, 1
            ).to(flow.device)
        return flow


def load_spynet_weights(net: SPyNet, path: str | os.PathLike) -> SPyNet:
    """Load a SPyNet weights file (BasicSR's layout) into ``net`` and freeze it.

    Parameters
    ----------
    net : SPyNet
        The network to fill.
    path : str or os.PathLike
        A ``torch.save`` file of the state dict, bare or under ``"params"`` (BasicSR),
        e.g. ``spynet_sintel_final-3d2a1287.pth``; ImageNet ``mean``/``std`` entries
        are ignored (they are constants here).

    Returns
    -------
    SPyNet
        ``net``, with ``requires_grad`` off.

    Raises
    ------
    ValueError
        If the file is missing or unreadable, or its keys or shapes do not fit.
    """
    state = load_state_dict_file(path, "SPyNet weights")
    state = {k: v for k, v in state.items() if k not in ("mean", "std")}
    load_checked(net, state, path, "SPyNet weights")
    return net.requires_grad_(False)
