"""A2I-3DEM: a U-shaped vision transformer for isotropic 3DEM reconstruction.

Paper: "A2I-3DEM" isotropic reconstruction of anisotropic 3DEM, Sec. II.B and Fig. 3;
where the paper is silent the network follows Uformer (Wang et al., "Uformer: A General
U-Shaped Transformer for Image Restoration", CVPR 2022) and its LeWin block.

The input is the LR axial section already interpolated to the target size, so the
network does not upsample (``scale`` = 1) and predicts a residual added to its input:

- input projection: 3×3 convolution 1 → C and LeakyReLU, the low-level features X₀;
- K encoder levels: at level l (C·2ˡ channels) a stack of ViT blocks, then a 4×4
  stride-2 convolution doubling the channels and halving the resolution;
- a bottleneck stack of ViT blocks at C·2ᴷ channels and 1/2ᴷ resolution;
- K decoder levels: a 2×2 stride-2 transposed convolution halving the channels,
  concatenation with the encoder features of the same level, a 1×1 convolution
  projecting the 2·C·2ˡ channels back to C·2ˡ, then a stack of ViT blocks;
- X₀ added to the last decoder features, a 3×3 convolution C → 1 (the output
  projection), and the input image added (global residual).

The ViT block is pre-LayerNorm: X' = W-MSA(LN(X)) + X, X'' = GLEN(LN(X')) + X'.
W-MSA is multi-head self-attention in non-overlapping M×M windows (no shifted windows)
with a Swin relative position bias, a ((2M−1)², heads) table; it is
:class:`~emsrflow.archs.swinir.WindowAttention`. GLEN, the gated locally-enhanced
feed-forward network, projects the C channels linearly to two hidden paths of
``mlp_ratio``·C channels, filters both with a depth-wise 3×3 convolution on the feature
map, multiplies GELU(first path) by the second, and projects linearly back to C (the
gated depth-wise feed-forward of Restormer, with the LeWin block's depth-wise
convolution).

Choices where the paper is silent:

- The decoder projects the concatenated channels back to those of its level (1×1
  convolution) instead of keeping them doubled as Uformer does; the last decoder then
  has the C channels of X₀, which is added to it as the paper describes.
- ``levels`` counts down-sampling steps (K above). The paper writes the bottleneck as
  2^(K−1)·C channels at 1/2^(K−1) resolution, i.e. its K counts the bottleneck level
  too: its K is ``levels + 1``.
- Every level uses the same window side M, so windows at the bottleneck cover
  M·2ᴷ input pixels: :attr:`Uformer.window` = M·2ᴷ is the grid that inputs are
  reflect-padded to (bottom and right, cropped back after) and that tiles align to.
- No stochastic depth, no shifted windows, no modulator; Linear layers are initialised
  with a truncated normal (σ = 0.02) and zero bias, as in Uformer.

The paper gives no sizes. The defaults are small (C = 32, K = 2, two blocks per
stack, heads 1, 2, 4 — 32 channels per head — M = 8, ratio 4: 1.13 M parameters);
Uformer's sizes (C = 32, K = 4, two blocks per stack, heads 1 … 16, M = 8, ratio 4)
give 17.9 M parameters here (Uformer-S, with doubled decoder channels, has 20.6 M), and
Uformer-B's (depths 1, 2, 8, 8, 2, 8, 8, 2, 1) 34.1 M (Uformer-B: 50.9 M).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_scale, merge_windows, pad_to_multiple, split_windows
from .registry import ARCHS
from .swinir import WindowAttention

__all__ = ["GLEN", "Uformer", "ViTBlock", "ViTStage"]


def _per_stage(values: int | Sequence[int], levels: int, name: str, *, double: bool) -> list[int]:
    """Expand a per-stage setting to its 2·levels + 1 values (encoder, bottleneck, decoder).

    Parameters
    ----------
    values : int or sequence of int
        An int gives the value of the first level, repeated (``double=False``) or doubled
        at each level (``double=True``); a sequence of ``levels + 1`` values gives the
        encoder levels and the bottleneck, mirrored for the decoder; a sequence of
        ``2·levels + 1`` values gives every stage in order.
    levels : int
        Encoder (and decoder) levels K.
    name : str
        Name of the setting, for error messages.
    double : bool
        Whether an int doubles at each level.

    Returns
    -------
    list of int
        The values of the K encoder levels, the bottleneck and the K decoder levels
        (decoder from the deepest level up).

    Raises
    ------
    ValueError
        If a sequence has another length or a value is < 1.
    """
    if isinstance(values, Integral):
        encoder = [values * (2**level if double else 1) for level in range(levels + 1)]
    else:
        encoder = [int(v) for v in values]
    if len(encoder) == levels + 1:
        stages = encoder + encoder[-2::-1]
    elif len(encoder) == 2 * levels + 1:
        stages = encoder
    else:
        raise ValueError(
            f"{name} needs {levels + 1} values (encoder levels and bottleneck) or "
            f"{2 * levels + 1} (every stage) for levels={levels}, got {list(encoder)}"
        )
    if min(stages) < 1:
        raise ValueError(f"{name} must be ≥ 1, got {stages}")
    return stages


class GLEN(nn.Module):
    """Gated locally-enhanced feed-forward network on (N, H, W, C) tokens.

    Parameters
    ----------
    dim : int
        Token channels C.
    hidden : int
        Channels of each of the two hidden paths.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.project_in = nn.Linear(dim, 2 * hidden)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.project_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, H, W, C) tokens to (N, H, W, C)."""
        y = self.project_in(x).permute(0, 3, 1, 2)
        y = self.dwconv(y).permute(0, 2, 3, 1)
        gate, value = y.chunk(2, dim=-1)
        return self.project_out(F.gelu(gate) * value)


class ViTBlock(nn.Module):
    """Pre-LayerNorm transformer block: window attention, then GLEN.

    Parameters
    ----------
    dim : int
        Token channels C (a multiple of ``heads``).
    heads : int
        Attention heads k.
    window : int
        Window side M; the token map's sides must be multiples of it.
    mlp_ratio : float
        Hidden channels of each GLEN path relative to ``dim``.
    """

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.glen = GLEN(dim, max(1, int(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, H, W, C) tokens to (N, H, W, C)."""
        h, w = x.shape[1:3]
        y = self.attn(split_windows(self.norm1(x), self.window))
        x = x + merge_windows(y, self.window, h, w)
        return x + self.glen(self.norm2(x))


class ViTStage(nn.Sequential):
    """A stack of :class:`ViTBlock` on a (N, C, H, W) feature map.

    Parameters
    ----------
    dim : int
        Channels C.
    depth : int
        Blocks.
    heads : int
        Attention heads.
    window : int
        Window side M.
    mlp_ratio : float
        GLEN width ratio.
    """

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float):
        super().__init__(*(ViTBlock(dim, heads, window, mlp_ratio) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, C, H, W) feature map to (N, C, H, W)."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _DecoderLevel(nn.Module):
    """Up-sample, concatenate the skip, project the channels back, ViT blocks."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * dim, dim, 2, stride=2)
        self.fuse = nn.Conv2d(2 * dim, dim, 1)
        self.blocks = ViTStage(dim, depth, heads, window, mlp_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Map deeper (N, 2C, H/2, W/2) features and a (N, C, H, W) skip to (N, C, H, W)."""
        return self.blocks(self.fuse(torch.cat([self.up(x), skip], dim=1)))


@ARCHS.register("uformer")
class Uformer(nn.Module):
    """A2I-3DEM U-shaped vision transformer (Uformer-like) at the target size.

    Maps (N, 1, h, w) images in [0, 1] — LR sections already interpolated to the HR
    size — to (N, 1, h, w) for any h, w ≥ 1: the input plus a predicted residual.

    Parameters
    ----------
    scale : int
        Upsampling factor; must be 1 (the network does not upsample).
    channels : int, optional
        Channels C of the input projection and the first level (C·2ˡ at level l).
    levels : int, optional
        Encoder/decoder levels K (down-sampling steps), ≥ 1.
    depths : int or sequence of int, optional
        ViT blocks per stage: an int for every stage, ``levels + 1`` values (encoder
        levels, bottleneck; mirrored for the decoder) or ``2·levels + 1`` (every stage).
    heads : int or sequence of int, optional
        Attention heads per stage: an int for the first level, doubled at each level;
        or sequences as for ``depths``. Each must divide its stage's channels.
    window : int, optional
        Attention window side M (≥ 2), the same at every level.
    mlp_ratio : float, optional
        Hidden channels of each GLEN path relative to the stage's channels.

    Attributes
    ----------
    scale : int
        1.
    window : int
        M·2^levels: the pixel grid of the bottleneck windows, which inputs are padded to
        and tiles align to.

    Raises
    ------
    ValueError
        If ``scale`` is not 1 or a size is out of range.
    """

    def __init__(
        self,
        scale: int,
        *,
        channels: int = 32,
        levels: int = 2,
        depths: int | Sequence[int] = 2,
        heads: int | Sequence[int] = 1,
        window: int = 8,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if check_scale(scale) != 1:
            raise ValueError(
                f"uformer works at the target size (its input is the LR image interpolated "
                f"to the HR grid), so scale must be 1, got {scale!r}"
            )
        if levels < 1 or channels < 1:
            raise ValueError(f"levels and channels must be ≥ 1, got {levels} and {channels}")
        if window < 2:
            raise ValueError(f"window must be ≥ 2, got {window}")
        self.scale = 1
        self.window = window * 2**levels
        self._multiple = self.window  # what forward pads to, whatever `window` is set to
        depth = _per_stage(depths, levels, "depths", double=False)
        head = _per_stage(heads, levels, "heads", double=True)
        dims = [channels * 2**level for level in range(levels + 1)]
        self.input_proj = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.LeakyReLU(inplace=True)
        )
        self.encoders = nn.ModuleList(
            ViTStage(dims[i], depth[i], head[i], window, mlp_ratio) for i in range(levels)
        )
        self.downs = nn.ModuleList(
            nn.Conv2d(dims[i], dims[i + 1], 4, stride=2, padding=1) for i in range(levels)
        )
        self.bottleneck = ViTStage(dims[levels], depth[levels], head[levels], window, mlp_ratio)
        self.decoders = nn.ModuleList(  # deepest first
            _DecoderLevel(dims[i], depth[2 * levels - i], head[2 * levels - i], window, mlp_ratio)
            for i in reversed(range(levels))
        )
        self.output_proj = nn.Conv2d(channels, 1, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal Linear weights with zero biases, unit LayerNorms (Uformer).

        The output projection starts 100 times smaller than PyTorch's default, so that an
        untrained network is close to the identity (its input, the interpolated image)
        while every parameter still receives gradients from the first step.
        """
        with torch.no_grad():
            self.output_proj.weight.mul_(0.01)
            self.output_proj.bias.zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore (N, 1, h, w) images; returns (N, 1, h, w)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self._multiple)
        low = self.input_proj(x)
        features, skips = low, []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            features = encoder(features)
            skips.append(features)
            features = down(features)
        features = self.bottleneck(features)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            features = decoder(features, skip)
        out = x + self.output_proj(features + low)
        return out[..., :h, :w]
