"""SwinIR baseline: image restoration with residual Swin transformer blocks.

Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCV Workshops 2021,
classical image super-resolution variant: a 3×3 convolution (shallow features), residual
Swin transformer blocks (RSTB: Swin layers alternating regular and shifted windows with
relative position bias and shifted-window attention masks, then a 3×3 convolution and
a residual connection), LayerNorm and a 3×3 convolution with a long skip, and the
pixel-shuffle upsampler (3×3 convolution to 64 channels with LeakyReLU, sub-pixel
convolution, 3×3 convolution to the image).

The defaults are SwinIR's classical SR configuration (embedding 180, six RSTBs of six
layers with six heads, 8 × 8 windows, MLP ratio 2, stochastic depth 0.1) with one
input and output channel: 11.75 M parameters at ×2, 11.94 M at ×3 and 11.90 M at ×4,
the EMSR paper's 11.8 M. The input is reflect-padded to a multiple of the window and
the output cropped back, as in the SwinIR code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    PixelShuffleUpsampler,
    check_scale,
    merge_windows,
    pad_to_multiple,
    split_windows,
)
from .registry import ARCHS

__all__ = ["RSTB", "SwinBlock", "SwinIR", "WindowAttention", "shifted_window_mask"]

#: Attention logit added between tokens of different regions in a shifted window.
_MASKED = -100.0


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Attention mask of shifted windows on an (h, w) map (multiples of ``window``).

    After the map is rolled by ``-shift`` along both axes, windows at the bottom and
    right borders hold tokens from opposite sides of the image; tokens may attend only
    to tokens from the same side.

    Parameters
    ----------
    h, w : int
        Size of the token map.
    window : int
        Window side M.
    shift : int
        Cyclic shift, 0 < shift < M.

    Returns
    -------
    torch.Tensor
        Additive mask of shape (windows, M², M²): 0 where attention is allowed, -100
        elsewhere.
    """
    regions = torch.zeros(1, h, w, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bounds):
        for j, cols in enumerate(bounds):
            regions[:, rows, cols, :] = 3 * i + j
    labels = split_windows(regions, window).squeeze(-1)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, _MASKED)


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with relative position bias.

    Parameters
    ----------
    dim : int
        Token channels (a multiple of ``heads``).
    heads : int
        Attention heads.
    window : int
        Window side M.
    """

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        yx = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ).flatten(1)
        offset = (yx[:, :, None] - yx[:, None, :]) + window - 1
        self.register_buffer(
            "bias_index", offset[0] * (2 * window - 1) + offset[1], persistent=False
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within windows.

        Parameters
        ----------
        x : torch.Tensor
            Windows of tokens, shape (N · windows, M², C), windows of one image together.
        mask : torch.Tensor, optional
            Additive mask of shape (windows, M², M²) (shifted windows).

        Returns
        -------
        torch.Tensor
            Tokens of the same shape.
        """
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1)  # heads, M², M²
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            windows = mask.shape[0]
            q, k, v = (t.reshape(b // windows, windows, *t.shape[1:]) for t in (q, k, v))
            attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1)).to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).flatten(0, 1)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    """Swin transformer layer: (shifted) window attention and MLP, pre-LayerNorm.

    Parameters
    ----------
    dim : int
        Token channels.
    heads : int
        Attention heads.
    window : int
        Window side M.
    shift : int
        Cyclic shift of the windows (0 or M // 2).
    mlp_ratio : float
        Hidden width of the GELU MLP relative to ``dim``.
    drop_path : float
        Stochastic depth probability of the two residual branches.
    """

    def __init__(
        self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float
    ):
        super().__init__()
        self.window = window
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply the layer to (N, H, W, C) tokens; ``mask`` is used if shifted."""
        h, w = x.shape[1:3]
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(split_windows(y, self.window), mask if self.shift else None)
        y = merge_windows(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + _drop_path(y, self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin layers, a 3×3 convolution, a skip.

    Parameters
    ----------
    dim : int
        Token channels.
    depth : int
        Swin layers, alternately with regular and shifted windows.
    heads : int
        Attention heads.
    window : int
        Window side M.
    mlp_ratio : float
        MLP width ratio.
    drop_paths : sequence of float
        Stochastic depth probability of each layer.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window: int,
        mlp_ratio: float,
        drop_paths: Sequence[float],
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            SwinBlock(dim, heads, window, (i % 2) * (window // 2), mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply the block to (N, H, W, C) tokens."""
        y = x
        for layer in self.layers:
            y = layer(y, mask)
        return x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@ARCHS.register("swinir")
class SwinIR(nn.Module):
    """SwinIR for single-channel super-resolution (classical SR variant).

    Maps (N, 1, h, w) LR images to (N, 1, τh, τw) for any h, w ≥ 1.

    Parameters
    ----------
    scale : int
        Upsampling factor τ.
    embed_dim : int, optional
        Token channels.
    depths : sequence of int, optional
        Swin layers per RSTB.
    heads : sequence of int, optional
        Attention heads per RSTB (divisors of ``embed_dim``).
    window : int, optional
        Window side M, in LR pixels.
    mlp_ratio : float, optional
        MLP width ratio.
    drop_path : float, optional
        Largest stochastic depth probability (rising linearly over the layers).
    upsample_channels : int, optional
        Channels of the pixel-shuffle upsampler.
    """

    def __init__(
        self,
        scale: int,
        *,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window: int = 8,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.1,
        upsample_channels: int = 64,
    ):
        super().__init__()
        if len(depths) != len(heads):
            raise ValueError(f"depths {tuple(depths)} and heads {tuple(heads)} differ in length")
        if window < 2:
            raise ValueError(f"window must be ≥ 2, got {window}")
        self.scale = check_scale(scale)
        self.window = window
        self.conv_first = nn.Conv2d(1, embed_dim, 3, padding=1)
        self.embed_norm = nn.LayerNorm(embed_dim)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            RSTB(embed_dim, d, nh, window, mlp_ratio, rates[s : s + d])
            for d, nh, s in zip(depths, heads, starts, strict=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, upsample_channels, 3, padding=1), nn.LeakyReLU(inplace=True)
        )
        self.upsample = PixelShuffleUpsampler(upsample_channels, self.scale)
        self.conv_last = nn.Conv2d(upsample_channels, 1, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve (N, 1, h, w) LR images to (N, 1, τh, τw)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.window)
        mask = shifted_window_mask(*x.shape[-2:], self.window, self.window // 2).to(x.device)
        shallow = self.conv_first(x)
        tokens = self.embed_norm(shallow.permute(0, 2, 3, 1))
        for layer in self.layers:
            tokens = layer(tokens, mask)
        deep = self.conv_after_body(self.norm(tokens).permute(0, 3, 1, 2)) + shallow
        out = self.conv_last(self.upsample(self.conv_before_upsample(deep)))
        return out[..., : self.scale * h, : self.scale * w]
