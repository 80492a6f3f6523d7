"""EMSRNet: the edge-attention super-resolution network of the EMSR paper.

Khateri et al., "No-Clean-Reference Image Super-Resolution: Application to Electron
Microscopy", IEEE TCI 2024, Sec. II.C, Fig. 2–3, Table I and Sec. III.B. A 3×3
convolution extracts shallow features X_SF from the LR image y (eq. 10); k basic blocks
form the edge-attention module X_EA = H_EA(y, X_SF) (eq. 11); the long skip X_EA + X_SF
is upsampled by a pixel shuffle and mapped to the image by a convolution (eq. 15).

A basic block runs m residual blocks, then two parallel paths: the upper (deep) path
of residual blocks, and the lower path that reconstructs an LR image (convolution,
ReLU, convolution) whose à-trous wavelet details, with those of the input y, are
concatenated and filtered into edge features. An attention block turns the edge
features into maps that multiply the deep features, and the product is added to them.
A ViT block (window multi-head self-attention with LayerNorm and an MLP, eq. 12–14) and
a convolution close the block.

Where the paper is silent, the structure follows the authors' public code
(mkhateri/EMSR, ``EMSR/model/models.py``); these facts come from it:

- the wavelet details fed to each block are those of the network input y (computed
  once, shared by all blocks) and of the block's own reconstructed LR image; only the
  detail planes are used (not the smoothed approximations), after a Gaussian
  pre-smoothing (σ ≈ 0.6) of the image;
- the reconstructed LR image is ``conv3×3(C→C) → ReLU → conv3×3(C→1)``;
- the lower-path "filtering" is one 3×3 convolution from the 2·J detail planes to C
  channels followed by residual blocks;
- the two paths run in ``edge_stages`` = 2 successive stages, each with ``n`` residual
  blocks on the deep path and ``n`` on the edge path and its own attention block, the
  deep features being updated as d ← d + A(e)·d; the paper's n = 1 counts the
  residual blocks per path and stage (the authors' code hard-codes the two stages,
  which is what gives the measured 3,124,032 parameters that reach the output);
- the attention block is a pixel attention: ``A(e) = conv(conv(e) ⊙ σ(conv1×1(
  LeakyReLU_0.2(conv(e)))))`` with 3×3 convolutions and a 1×1 convolution with bias;
- the ViT block comes after the attention stages and is followed by one 3×3
  convolution; a basic block has no skip connection around it;
- attention has no relative position bias, no shifted windows and no query/key/value
  bias; the MLP uses ReLU and biases; the ViT normalisation is LayerNorm;
- every convolution has no bias, except the 1×1 one of the attention block;
- the residual block is ``conv3×3 → ReLU → conv3×3`` plus the identity;
- the reconstruction is one bias-free 3×3 convolution to τ²·C channels and a pixel
  shuffle, then one 3×3 convolution to the image (no ReLU).

Modules of the authors' code that do not reach the output (a depthwise convolution in
the ViT block, per-block and top-level image heads, a convolution before the upsampler:
40,960 parameters) are left out. Unlike their code, the attention windows are reached by
reflect padding and cropping back (their code resizes feature maps by nearest
neighbour, 341 → 340 and back), the wavelet transform reflects borders instead of
zero-padding them, and ×4 is two ×2 pixel-shuffle steps (their ×4 path does not run).
"""

from __future__ import annotations

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
from .wavelet import AtrousWavelet

__all__ = ["EMSRNet", "EdgeAttentionBlock", "PixelAttention", "ResidualBlock", "ViTBlock"]


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    """Bias-free 3×3 convolution, zero padding, as throughout the authors' network."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """``x + conv(ReLU(conv(x)))`` with bias-free 3×3 convolutions.

    Parameters
    ----------
    channels : int
        Feature channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3(channels, channels)
        self.conv2 = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (N, C, H, W) features."""
        return x + self.conv2(F.relu(self.conv1(x)))


class PixelAttention(nn.Module):
    """Attention block: edge features → attention maps for the deep features.

    ``A(e) = k4(k3(e) ⊙ σ(k2(LeakyReLU(k1(e)))))`` with 3×3 convolutions k1, k3, k4 and a
    1×1 convolution k2 (the only one with a bias).

    Parameters
    ----------
    channels : int
        Feature channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.k1 = _conv3(channels, channels)
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.k3 = _conv3(channels, channels)
        self.k4 = _conv3(channels, channels)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Return the attention maps of (N, C, H, W) edge features."""
        gate = torch.sigmoid(self.k2(F.leaky_relu(self.k1(e), 0.2)))
        return self.k4(self.k3(e) * gate)


class ViTBlock(nn.Module):
    """Window multi-head self-attention and MLP with pre-LayerNorm (eq. 12–14).

    ``X' = W-MSA(LN(X)) + X``, ``X'' = FFN(LN(X')) + X'``. The map is cut into
    non-overlapping M × M windows; inside each, every head attends with
    ``softmax(Q Kᵀ / √d_k) V``, d_k = C / heads. A map whose size is not a multiple of
    M is reflect-padded for the attention and cropped back.

    Parameters
    ----------
    channels : int
        Feature channels C (a multiple of ``heads``).
    heads : int
        Attention heads.
    window : int
        Window side M.
    mlp_ratio : float
        Hidden width of the MLP relative to C.
    """

    def __init__(self, channels: int, heads: int, window: int, mlp_ratio: float):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.window = window
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """W-MSA of a (N, C, H, W) map, returned as (N, H, W, C) tokens."""
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, self.window)
        hp, wp = padded.shape[-2:]
        tokens = self.norm1(padded.permute(0, 2, 3, 1))
        windows = split_windows(tokens, self.window)
        b, n, c = windows.shape
        qkv = self.qkv(windows).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # unbind, not tuple unpacking: TorchScript scripts it
        if q.device.type == "cpu":
            # with d_k = 4 the CPU attention kernel ran twice as fast in float32 as in
            # bfloat16 (AVX-512 CPU) and is more accurate: use float32 under autocast too
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return merge_windows(out, self.window, hp, wp)[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (N, C, H, W) features of any size."""
        tokens = x.permute(0, 2, 3, 1) + self._attention(x)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.permute(0, 3, 1, 2)


class EdgeAttentionBlock(nn.Module):
    """Basic block of the edge-attention module (Fig. 3).

    Parameters
    ----------
    channels : int
        Feature channels C.
    res_blocks : int
        Residual blocks m before the two paths.
    branch_blocks : int
        Residual blocks n per path in each attention stage.
    edge_stages : int
        Successive attention stages.
    wavelet_scales : int
        Wavelet detail scales J per image.
    heads, window : int
        Attention heads and window side of the ViT block.
    mlp_ratio : float
        MLP width ratio of the ViT block.
    """

    def __init__(
        self,
        channels: int,
        *,
        res_blocks: int,
        branch_blocks: int,
        edge_stages: int,
        wavelet_scales: int,
        heads: int,
        window: int,
        mlp_ratio: float,
    ):
        super().__init__()
        self.body = nn.Sequential(*(ResidualBlock(channels) for _ in range(res_blocks)))
        self.to_image = nn.Sequential(_conv3(channels, channels), nn.ReLU(), _conv3(channels, 1))
        self.atw = AtrousWavelet(wavelet_scales)
        self.edge_in = _conv3(2 * wavelet_scales, channels)
        self.deep = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(channels) for _ in range(branch_blocks)))
            for _ in range(edge_stages)
        )
        self.edge = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(channels) for _ in range(branch_blocks)))
            for _ in range(edge_stages)
        )
        self.attention = nn.ModuleList(PixelAttention(channels) for _ in range(edge_stages))
        self.vit = ViTBlock(channels, heads, window, mlp_ratio)
        self.conv_out = _conv3(channels, channels)

    def forward(self, x: torch.Tensor, input_details: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            Features of shape (N, C, H, W).
        input_details : torch.Tensor
            Wavelet details of the network's LR input, shape (N, J, H, W).

        Returns
        -------
        torch.Tensor
            Edge-attention features of shape (N, C, H, W).
        """
        x = self.body(x)
        details = torch.cat([input_details, self.atw(self.to_image(x))], dim=1)
        e = self.edge_in(details)
        for deep, edge, attention in zip(self.deep, self.edge, self.attention, strict=True):
            d = deep(x)
            e = edge(e)
            x = d + attention(e) * d
        return self.conv_out(self.vit(x))


@ARCHS.register("emsrnet")
class EMSRNet(nn.Module):
    """The EMSR edge-attention super-resolution network.

    Maps (N, 1, h, w) LR images to (N, 1, τh, τw) for any h, w ≥ 1. The defaults are
    the paper's configuration (C = 64, k = 3, m = 4, n = 1, 16 heads, 4 × 4 windows,
    MLP ratio 2, three wavelet scales): 3,124,032 parameters at τ = 3.

    Parameters
    ----------
    scale : int
        Upsampling factor τ.
    channels : int, optional
        Feature channels C.
    blocks : int, optional
        Basic blocks k of the edge-attention module.
    res_blocks : int, optional
        Residual blocks m at the start of each basic block.
    branch_blocks : int, optional
        Residual blocks n per path and attention stage.
    edge_stages : int, optional
        Attention stages per basic block (2 in the authors' code).
    heads : int, optional
        Attention heads of the ViT blocks (a divisor of ``channels``).
    window : int, optional
        Attention window side M, in LR pixels.
    mlp_ratio : float, optional
        Hidden width of the ViT MLP relative to C.
    wavelet_scales : int, optional
        À-trous wavelet detail scales J.
    """

    def __init__(
        self,
        scale: int,
        *,
        channels: int = 64,
        blocks: int = 3,
        res_blocks: int = 4,
        branch_blocks: int = 1,
        edge_stages: int = 2,
        heads: int = 16,
        window: int = 4,
        mlp_ratio: float = 2.0,
        wavelet_scales: int = 3,
    ):
        super().__init__()
        self.scale = check_scale(scale)
        self.window = window
        self.atw = AtrousWavelet(wavelet_scales)
        self.head = _conv3(1, channels)
        self.blocks = nn.ModuleList(
            EdgeAttentionBlock(
                channels,
                res_blocks=res_blocks,
                branch_blocks=branch_blocks,
                edge_stages=edge_stages,
                wavelet_scales=wavelet_scales,
                heads=heads,
                window=window,
                mlp_ratio=mlp_ratio,
            )
            for _ in range(blocks)
        )
        self.upsample = PixelShuffleUpsampler(channels, self.scale, bias=False)
        self.mapper = _conv3(channels, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Super-resolve (N, 1, h, w) LR images to (N, 1, τh, τw)."""
        shallow = self.head(y)
        details = self.atw(y)
        x = shallow
        for block in self.blocks:
            x = block(x, details)
        return self.mapper(self.upsample(x + shallow))
