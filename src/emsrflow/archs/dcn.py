"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019: every
kernel tap of every output position samples the input at its regular grid position
plus a learned offset, by bilinear interpolation (zero outside the image), and is
weighted by a learned modulation scalar in [0, 1]. Offsets and masks are shared by the
input channels of one *deformable group*.

Layouts follow ``torchvision.ops.deform_conv2d`` and mmcv: for deformable group ``g``
and kernel tap ``k`` (row-major over the kernel, ``K = kh·kw`` taps), ``offset[:,
2(gK + k)]`` is the vertical (y) and ``offset[:, 2(gK + k) + 1]`` the horizontal (x)
displacement in input pixels, and ``mask[:, gK + k]`` the modulation. The sampling is
done with one :func:`torch.nn.functional.grid_sample` call (``align_corners=False``
with the pixel-centre normalisation, so any input size works, 1 included) and the
convolution by a grouped matrix product. No compiled extension is needed; the backward
of ``grid_sample`` has no deterministic CUDA kernel, so training with
``torch.use_deterministic_algorithms(True)`` on a GPU fails (on a CPU it works).

:class:`DCNPack` is the usual "pack" of EDVR / BasicSR (``DCNv2Pack``): a 3×3
convolution predicts offsets and masks from a guiding feature (zero-initialised, so
that a fresh pack samples the regular grid with masks 0.5), optionally added to a base
offset such as an optical flow (flow-guided deformable alignment, as in BasicVSR++).
"""

from __future__ import annotations

import functools
import importlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = [
    "IMPLEMENTATIONS",
    "DCNPack",
    "ModulatedDeformConv2d",
    "compiled_kernel",
    "flow_to_offset",
    "modulated_deform_conv2d",
]


#: Implementations of :func:`modulated_deform_conv2d`.
IMPLEMENTATIONS = ("auto", "torch", "torchvision")


@functools.lru_cache(maxsize=1)
def compiled_kernel():
    """Return ``torchvision.ops.deform_conv2d`` where torchvision imports, else None.

    torchvision cannot be installed beside the CPU torch wheel this project pins, so
    this is None on such machines; GPU images that have a matching torchvision get its
    compiled kernel for CUDA inputs.
    """
    try:  # optional: imported by name so that a bundled copy of this file needs only torch
        return importlib.import_module("torchvision.ops").deform_conv2d
    except Exception:  # absent, or built for another torch
        return None


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    deform_groups: int = 1,
    implementation: str = "auto",
) -> torch.Tensor:
    """Modulated deformable 2D convolution.

    Parameters
    ----------
    x : torch.Tensor
        Input of shape (N, C_in, H, W).
    offset : torch.Tensor
        Offsets of shape (N, 2·deform_groups·kh·kw, H_out, W_out), (y, x) pairs per tap.
    mask : torch.Tensor or None
        Modulation of shape (N, deform_groups·kh·kw, H_out, W_out); ``None``: all ones
        (DCNv1).
    weight : torch.Tensor
        Kernel of shape (C_out, C_in / groups, kh, kw).
    bias : torch.Tensor, optional
        Bias of shape (C_out,).
    stride, padding, dilation : int or pair of int
        As for :func:`torch.nn.functional.conv2d` (zero padding).
    groups : int
        Convolution groups.
    deform_groups : int
        Deformable groups: consecutive input-channel blocks sharing offsets and masks.
    implementation : {'auto', 'torch', 'torchvision'}
        ``torch``: the plain-PyTorch sampling below; ``torchvision``: the compiled
        ``torchvision.ops.deform_conv2d`` (:func:`compiled_kernel`; same layouts);
        ``auto``: torchvision's for CUDA inputs where it imports, else plain PyTorch.

    Returns
    -------
    torch.Tensor
        Output of shape (N, C_out, H_out, W_out).

    Raises
    ------
    ValueError
        If the channel counts do not divide or the offset or mask shapes are wrong.
    """
    n, c_in, h, w = x.shape
    c_out, c_in_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if c_in % groups or c_out % groups or c_in_group * groups != c_in:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit {c_in} input channels in {groups} groups"
        )
    if c_in % deform_groups:
        raise ValueError(f"{c_in} input channels do not split into {deform_groups} deform groups")
    taps = kh * kw
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    expected = (n, 2 * deform_groups * taps, h_out, w_out)
    if tuple(offset.shape) != expected:
        raise ValueError(f"offset must have shape {expected}, got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (n, deform_groups * taps, h_out, w_out):
        raise ValueError(
            f"mask must have shape {(n, deform_groups * taps, h_out, w_out)}, "
            f"got {tuple(mask.shape)}"
        )
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    kernel = compiled_kernel()
    if implementation == "torchvision" and kernel is None:
        raise ValueError("implementation 'torchvision' asked for, but torchvision does not import")
    if implementation == "torchvision" or (
        implementation == "auto" and x.is_cuda and kernel is not None
    ):
        return kernel(
            x,
            offset.to(x.dtype),
            weight.to(x.dtype),
            None if bias is None else bias.to(x.dtype),
            stride=(sh, sw),
            padding=(ph, pw),
            dilation=(dh, dw),
            mask=None if mask is None else mask.to(x.dtype),
        )
    dtype = torch.promote_types(x.dtype, offset.dtype)
    rows = torch.arange(h_out, device=x.device, dtype=dtype) * sh - ph
    cols = torch.arange(w_out, device=x.device, dtype=dtype) * sw - pw
    tap_y = (torch.arange(kh, device=x.device, dtype=dtype) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=x.device, dtype=dtype) * dw).repeat(kh)
    off = offset.to(dtype).reshape(n, deform_groups, taps, 2, h_out, w_out)
    y = rows[:, None] + tap_y[:, None, None] + off[:, :, :, 0]  # (N, G, K, Ho, Wo)
    x_ = cols[None, :] + tap_x[:, None, None] + off[:, :, :, 1]
    # pixel centres of align_corners=False: index p ↦ (2p + 1) / size - 1
    grid = torch.stack(((2 * x_ + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)
    grid = grid.reshape(n * deform_groups, taps * h_out, w_out, 2)
    source = x.reshape(n * deform_groups, c_in // deform_groups, h, w)
    sampled = F.grid_sample(
        source, grid.to(source.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    sampled = sampled.reshape(n, deform_groups, c_in // deform_groups, taps, h_out * w_out)
    if mask is not None:
        sampled = sampled * mask.reshape(n, deform_groups, 1, taps, h_out * w_out).to(sampled.dtype)
    columns = sampled.reshape(n, groups, c_in_group * taps, h_out * w_out)
    kernel = weight.reshape(groups, c_out // groups, c_in_group * taps).to(columns.dtype)
    out = torch.einsum("gok,ngkl->ngol", kernel, columns).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.to(out.dtype)[:, None, None]
    return out


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution layer (DCNv2).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels C_in and C_out.
    kernel_size : int or pair of int
        Kernel size.
    stride, padding, dilation : int or pair of int
        As for :class:`torch.nn.Conv2d`.
    groups : int
        Convolution groups.
    deform_groups : int
        Deformable groups (offset and mask groups of input channels).
    bias : bool
        Whether the layer has a bias (initialised to zero).

    Notes
    -----
    The weights are initialised uniformly in ±1/√(C_in·kh·kw) as in mmcv and BasicSR.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}, {out_channels} not divisible by {groups}")
        if in_channels % deform_groups:
            raise ValueError(f"{in_channels} channels not divisible by {deform_groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        bound = 1 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def taps(self) -> int:
        """Number of kernel taps kh·kw."""
        return self.kernel_size[0] * self.kernel_size[1]

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Convolve ``x`` with the kernel taps displaced by ``offset``, weighted by ``mask``.

        Parameters
        ----------
        x : torch.Tensor
            Input (N, C_in, H, W).
        offset : torch.Tensor
            (N, 2·deform_groups·kh·kw, H_out, W_out), (y, x) pairs per tap.
        mask : torch.Tensor, optional
            (N, deform_groups·kh·kw, H_out, W_out); ``None`` means all ones.

        Returns
        -------
        torch.Tensor
            (N, C_out, H_out, W_out).
        """
        return modulated_deform_conv2d(
            x,
            offset,
            mask,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.deform_groups,
        )

    def extra_repr(self) -> str:
        """Describe the layer's hyper-parameters."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}"
        )


def flow_to_offset(flow: torch.Tensor, deform_groups: int, taps: int) -> torch.Tensor:
    """Turn a dense flow into deformable-convolution offsets shared by every tap.

    Parameters
    ----------
    flow : torch.Tensor
        Flow (N, 2, H, W) with channel 0 the x and channel 1 the y displacement, in
        pixels of the map it is applied to (BasicSR's ``flow_warp`` convention).
    deform_groups, taps : int
        Deformable groups and kernel taps of the convolution.

    Returns
    -------
    torch.Tensor
        Offsets (N, 2·deform_groups·taps, H, W): every tap of every group displaced by
        the flow, so that the convolution sees the input warped by ``flow``.
    """
    yx = flow.flip(1)  # (y, x) pairs
    n, _, h, w = flow.shape
    return yx[:, None].expand(n, deform_groups * taps, 2, h, w).reshape(n, -1, h, w)


class DCNPack(ModulatedDeformConv2d):
    """Deformable convolution whose offsets and masks are predicted from a feature.

    A 3×3 convolution (same stride, padding and dilation as the layer) maps the
    guiding feature to ``3·deform_groups·kh·kw`` channels: two thirds are offsets, the
    last third passes a sigmoid to give the masks (EDVR / BasicSR ``DCNv2Pack``). That
    convolution starts at zero, so a fresh pack samples the regular grid (or the base
    offset) with masks 0.5.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deform_groups, bias
        As for :class:`ModulatedDeformConv2d`.
    feature_channels : int, optional
        Channels of the guiding feature (default: ``in_channels``, as in BasicSR).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
        feature_channels: int | None = None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            deform_groups,
            bias,
        )
        self.conv_offset = nn.Conv2d(
            feature_channels or in_channels,
            3 * deform_groups * self.taps,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, feature: torch.Tensor, base_offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Deformably convolve ``x`` with offsets and masks predicted from ``feature``.

        Parameters
        ----------
        x : torch.Tensor
            Input (N, C_in, H, W).
        feature : torch.Tensor
            Guiding feature (N, feature_channels, H, W).
        base_offset : torch.Tensor, optional
            Offsets added to the predicted ones, e.g. :func:`flow_to_offset` of a flow.

        Returns
        -------
        torch.Tensor
            (N, C_out, H_out, W_out).
        """
        out = self.conv_offset(feature)
        k = self.deform_groups * self.taps
        offset, mask = out[:, : 2 * k], torch.sigmoid(out[:, 2 * k :])
        if base_offset is not None:
            offset = offset + base_offset
        return super().forward(x, offset, mask)
