"""GPEMSR: large-factor EM super-resolution with generative priors (networks and losses).

Shou et al., "Learning Large-Factor EM Image Super-Resolution with Generative Priors",
CVPR 2024 (Sec. 3, 4). Three stages, each a network here:

Stage I, :class:`VQAutoencoder` (registered ``gpemsr_codebook``, scale 1)
    A VQGAN on HR patches: :class:`Encoder` (residual blocks with GroupNorm, stride-2
    convolutions, a non-local block at the bottom; compression p = 16), a
    :class:`VectorQuantizer` (v = 1024 codes of d = 512, straight-through gradient,
    codebook + β·commitment loss, β = 1) and a :class:`Decoder` (residual blocks and
    transposed convolutions). Trained with L1 + λ_c·L_c + λ_adv·L_adv (λ_c = 10,
    λ_adv = 0.05 after 40k steps), :class:`PatchDiscriminator` and R1 regularisation;
    see :func:`codebook_objective`, :func:`generator_adversarial_loss`,
    :func:`discriminator_adversarial_loss` and :func:`r1_penalty`.
Stage II, :class:`GenerativePrior` (registered ``gpemsr_prior``, scale 8 or 16)
    The :class:`Indexer` (a convolutional encoder from the LR image to the latent grid,
    HR/16, and a linear classifier over the v codes) with the frozen Stage I network:
    the arg-max codes, decoded, give the reference image I_Ref and the decoder's
    multi-scale features F_Ref. Trained with the cross-entropy to the codes the frozen
    encoder gives the HR patch (:meth:`GenerativePrior.targets`,
    :func:`indexer_objective`). As a network it maps an LR image to I_Ref.
Stage III, :class:`GPEMSR` (registered ``gpemsr``, scale 8 or 16)
    From 2N + 1 = 5 adjacent LR sections (N, 5, h, w), the centre one super-resolved:
    LR features (a convolution and 5 residual blocks), :class:`MPF` (multi-scale prior
    fusion gated by a mask learned from patch-wise cosine similarity of I_Ref and the
    upsampled LR), :class:`POD` (pyramid, flow-guided deformable alignment of every
    section to the centre), :class:`ThreeDA` (spatial-attention and 3D-convolution
    fusion), 10 residual blocks, pixel-shuffle upsampling and a bilinear global
    residual. Trained with L1 + λ·L_Mfid (λ = 0.01 at 16×, 0.001 at 8×), see
    :func:`gpemsr_objective` and :func:`contextual_loss`.

Where the paper is silent, the authors' code (github.com/jtshou/GPEMSR, ``model/*.py``,
``option/*.yml``, ``train_stage*.py``) is followed; this is an independent
implementation. Facts taken from their code:

- sizes: encoder channels (64, 64, 128, 256, 512), one residual block per scale, three
  residual blocks between the bottom and the 1×1 convolution to d (and from d in the
  decoder), GroupNorm of 32 groups (eps 1e-6), ResBlock = (conv, GN, ReLU) × 2 plus a
  skip (1×1 convolution when the width changes), stride-2 3×3 convolutions down,
  3×3 transposed convolutions (output padding 1) up, the non-local block after the
  encoder's last down-sampling and after the decoder's input blocks; the codebook
  initialised uniformly in ±1/v; the indexer: the encoder's widths with two residual
  blocks per scale and *no* down-sampling at 16× (the LR image is already on the
  HR/16 grid), one stride-2 convolution in its last scale at 8×, then the non-local
  block, three residual blocks, a 1×1 convolution to d and a linear layer to v logits;
- the PatchGAN discriminator (64 filters, three layers, 4×4 kernels without padding,
  InstanceNorm, LeakyReLU 0.2), the Wasserstein-style losses −D(fake) for the generator
  and (−D(real) + D(fake))/2 for the discriminator, R1 weight 1e-4 applied every 16
  steps;
- Stage III: 64 channels, 8 deformable groups, 5 front and 10 back residual blocks
  (EDVR's conv–ReLU–conv blocks without normalisation, initialised ×0.1), one residual
  block per MPF level; the decoder's multi-scale features are taken after the last
  residual block of each scale (512 channels at HR/16, 256 at HR/8, 128 at HR/4, 64 at
  HR/2); MPF fuses from the finest level (HR/2) down to the LR grid: 4 levels at 16×,
  3 at 8× (the 512-channel HR/16 features are unused at 8×), LR features reach the
  finer levels by stride-2 transposed convolutions, level l's down-sampling
  convolution works on l·64 channels, and the output 1×1 convolution sees
  (L + 1)·64 channels; the mask: cosine similarity of 16 × 16 patches of full-resolution
  features of I_Ref and of the bilinearly upsampled LR image, three 3×3 convolutions
  (1 → 64 → 64 → 1) each followed by LeakyReLU 0.1, then a sigmoid, upsampled
  bilinearly to each level; POD is EDVR's PCD (three levels, cascading deformable
  convolution) whose offset convolutions also see encoded optical flows (a 3×3
  convolution to 16 channels then two stride-2 convolutions, no activations, in two
  branches) and the LR frames of the level; 3DA is EDVR's TSA fusion with two extra
  1×1×1 3D-convolution branches across sections; the up-sampler is ×2 steps of a
  convolution to 4·64 channels, pixel shuffle and LeakyReLU, then a 3×3 convolution
  with LeakyReLU and one to the image; the global residual is the bilinear
  (``align_corners=False``) upsampling of the centre section;
- the multi-Ref fidelity loss is their confidence-weighted contextual loss (cosine
  distance after centring on the reference's channel mean, band width 0.5, relative
  distances, and for every reference position the best match's contextual similarity
  weighted by exp((1 − d)/h) of the same match), between the output and each of the
  five sections' references, averaged.

Deviations (documented choices):

- VGG19 and SPyNet are pretrained on ImageNet and Sintel; nothing can be downloaded
  here. By default (``features="encoder"``) the MPF mask uses the frozen Stage I
  encoder's full-resolution features (its input convolution and first residual block,
  64 channels, in place of VGG ``relu1_2``) and the contextual loss its HR/4 features
  (level 2, 128 channels, in place of VGG ``relu3_4``, also at HR/4); with a local
  copy of torchvision's VGG19 weights, ``features="vgg19"`` uses VGG19 as the paper
  (:mod:`.backbones`). The flows are classical by default (:func:`section_flows`:
  dense pyramidal Lucas–Kanade, global phase correlation, or zero, on the LR sections,
  where they are already sub-pixel); ``flow="spynet"`` runs a :class:`~.spynet.SPyNet`
  on the sections upsampled ×4 as the authors do, loaded from a local Sintel weights
  file (frozen) or trained end to end. :meth:`GPEMSR.stand_ins` names the choice. The
  authors' code runs SpyNet twice on the same (section, centre) pair for its two flow
  branches; here the branches get the flow from the centre to the section and the
  reverse one.
- The flows also give the base offsets of POD's three pyramid deformable convolutions
  (flow-guided deformable alignment as in BasicVSR++; ``flow_guided=True``), so that a
  fresh POD already aligns with the true flow; in the authors' code the flows only
  enter the offset-predicting convolutions (``flow_guided=False``).
- In the codebook loss, β weights the commitment term ‖sg[Z_q] − Z_e‖² (VQ-VAE); the
  authors' code weights the codebook term; with β = 1 (theirs) they agree.
- Any power-of-two scale up to p is accepted (the paper uses 8 and 16).

Parameter counts at the paper's size. Stage III, trainable (as in the paper's Tables 1
and 2): 5,610,430 at 16× and 4,573,438 at 8×, equal to the parameters of the authors'
code that reach the output (SpyNet and VGG19, frozen, excluded); the paper lists
5.4627 M and 4.4257 M, exactly 147,712 fewer (5,462,718 and 4,425,726): the size of the
four 3×3 convolutions of POD's feature pyramid, or of one up-sampling convolution, which
their count apparently leaves out. Of these, MPF has 1,903,233 (16×) or 1,013,953 (8×),
POD 1,452,928 plus 147,712 for its pyramid, 3DA 369,724. The frozen prior adds
65,081,217 (16×) or 62,587,777 (8×). Stage I: 42,553,601 (encoder 18,691,136, decoder
23,338,177, codebook 524,288), discriminator 2,761,793; the indexer: 22,527,616 at 16×,
20,034,176 at 8×.

Practical notes: a Stage III training step at the paper's size (batch 8, HR 256², five
sections) took 0.23 s and 30 GiB on an H100, most of the memory going to the
contextual loss (it grows with the square of the HR/4 positions). Training on a GPU
cannot use ``torch.use_deterministic_algorithms(True)``: the backward passes of
``grid_sample`` (deformable convolution) and of bilinear interpolation have no
deterministic CUDA kernels. The flows are estimated without gradient.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, load_backbone_weights
from .common import check_scale, reflect_pad, warp
from .dcn import DCNPack, flow_to_offset
from .registry import ARCHS
from .spynet import SPyNet, load_spynet_weights

__all__ = [
    "FEATURE_SOURCES",
    "FLOW_METHODS",
    "GPEMSR",
    "MPF",
    "POD",
    "Decoder",
    "Encoder",
    "GenerativePrior",
    "Indexer",
    "NonLocalBlock",
    "PatchDiscriminator",
    "ResBlock",
    "ResidualBlockNoBN",
    "ThreeDA",
    "VQAutoencoder",
    "VectorQuantizer",
    "codebook_objective",
    "contextual_loss",
    "discriminator_adversarial_loss",
    "fidelity_weight",
    "generator_adversarial_loss",
    "gpemsr_objective",
    "indexer_objective",
    "lucas_kanade_flow",
    "phase_correlation_flow",
    "r1_penalty",
    "section_flows",
]

#: Stage I architecture of the paper (the authors' ``train_stage1.yml``).
PAPER_CHANNELS = (64, 64, 128, 256, 512)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or fewer when they do not divide ``channels``."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def _log2(value: int, what: str) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{what} must be a power of two, got {value}")
    return value.bit_length() - 1


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of (N, C, H, W) to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    return reflect_pad(x, 0, -w % multiple, 0, -h % multiple)


def _check_multiple(x: torch.Tensor, multiple: int, what: str) -> None:
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{what} of size {h} × {w}: training patches must be multiples of {multiple} "
            "(at inference, in eval mode, any size is padded and cropped back)"
        )


# ---------------------------------------------------------------------------------------
# Building blocks


class ResBlock(nn.Module):
    """VQGAN residual block: (3×3 conv, GroupNorm, ReLU) × 2 plus a skip connection.

    Parameters
    ----------
    in_channels, out_channels : int
        Widths; a 1×1 convolution adapts the skip when they differ.
    norm_groups : int
        GroupNorm groups (fewer if they do not divide the width).
    """

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels, norm_groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _norm(out_channels, norm_groups),
            nn.ReLU(inplace=True),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return skip(x) + body(x)."""
        return self.skip(x) + self.body(x)


class NonLocalBlock(nn.Module):
    """Single-head self-attention over all positions, with GroupNorm and a residual.

    Parameters
    ----------
    channels : int
        Width C (queries, keys and values are 1×1 convolutions to C).
    norm_groups : int
        GroupNorm groups.
    """

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = _norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x + proj(softmax(q·kᵀ/√C)·v)."""
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class ResidualBlockNoBN(nn.Module):
    """EDVR residual block: 3×3 conv, ReLU, 3×3 conv, plus identity (weights ×0.1).

    Parameters
    ----------
    channels : int
        Width.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        for conv in (self.conv1, self.conv2):  # BasicSR's default_init_weights(·, 0.1)
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x + conv2(relu(conv1(x)))."""
        return x + self.conv2(F.relu(self.conv1(x)))


def _res_blocks(channels: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlockNoBN(channels) for _ in range(count)))


# ---------------------------------------------------------------------------------------
# Stage I: VQGAN


class Encoder(nn.Module):
    """VQGAN encoder E from an image to the latent grid (compression 2^(len(channels)−1)).

    A 3×3 convolution and ReLU; per scale ``blocks`` residual blocks and a stride-2 3×3
    convolution to the next width; a non-local block; ``bottleneck_blocks`` residual
    blocks and a 1×1 convolution to ``latent_dim``.

    Parameters
    ----------
    channels : sequence of int
        Widths per scale, finest first (the paper's: 64, 64, 128, 256, 512).
    latent_dim : int
        Latent (code) dimension d.
    blocks : int
        Residual blocks per scale.
    bottleneck_blocks : int
        Residual blocks before the output convolution.
    non_local : bool
        Whether the bottom has a non-local block.
    norm_groups : int
        GroupNorm groups.
    in_channels : int
        Image channels.
    """

    def __init__(
        self,
        channels: Sequence[int] = PAPER_CHANNELS,
        latent_dim: int = 512,
        blocks: int = 1,
        bottleneck_blocks: int = 3,
        non_local: bool = True,
        norm_groups: int = 32,
        in_channels: int = 1,
    ):
        super().__init__()
        channels = list(channels)
        self.compression = 2 ** (len(channels) - 1)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.ReLU())
        self.stages = nn.ModuleList(
            nn.Sequential(*(ResBlock(c, c, norm_groups) for _ in range(blocks)))
            for c in channels[:-1]
        )
        self.downs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(channels)
        )
        bottom = channels[-1]
        self.bottom = nn.Sequential(
            NonLocalBlock(bottom, norm_groups) if non_local else nn.Identity(),
            *(ResBlock(bottom, bottom, norm_groups) for _ in range(bottleneck_blocks)),
            nn.Conv2d(bottom, latent_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return Z_e, shape (N, d, H/p, W/p) for an (N, 1, H, W) image."""
        x = self.stem(x)
        for stage, down in zip(self.stages, self.downs, strict=True):
            x = down(stage(x))
        return self.bottom(x)

    def features(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Return the features of scale ``level`` (before its down-sampling).

        Parameters
        ----------
        x : torch.Tensor
            Image (N, 1, H, W).
        level : int
            Scale: 0 is full resolution (after the stem and the first residual
            blocks), ``level`` is at 1/2^level.

        Returns
        -------
        torch.Tensor
            (N, channels[level], H/2^level, W/2^level).
        """
        if not 0 <= level < len(self.stages):
            raise ValueError(f"level must be in [0, {len(self.stages)}), got {level}")
        x = self.stages[0](self.stem(x))
        for i in range(level):
            x = self.stages[i + 1](self.downs[i](x))
        return x


class Decoder(nn.Module):
    """VQGAN decoder Q from quantised latents to an image.

    A 1×1 convolution from ``latent_dim`` and ``bottleneck_blocks`` residual blocks; a
    non-local block; per scale ``blocks`` residual blocks and a stride-2 3×3 transposed
    convolution to the next width; a 3×3 convolution to the image.

    Parameters
    ----------
    channels : sequence of int
        Widths per scale, coarsest first (the paper's: 512, 256, 128, 64, 64).
    latent_dim, blocks, bottleneck_blocks, non_local, norm_groups
        As for :class:`Encoder`.
    out_channels : int
        Image channels.
    """

    def __init__(
        self,
        channels: Sequence[int] = PAPER_CHANNELS[::-1],
        latent_dim: int = 512,
        blocks: int = 1,
        bottleneck_blocks: int = 3,
        non_local: bool = True,
        norm_groups: int = 32,
        out_channels: int = 1,
    ):
        super().__init__()
        channels = list(channels)
        self.channels = channels
        top = channels[0]
        self.head = nn.Sequential(
            nn.Conv2d(latent_dim, top, 1),
            *(ResBlock(top, top, norm_groups) for _ in range(bottleneck_blocks)),
            NonLocalBlock(top, norm_groups) if non_local else nn.Identity(),
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ResBlock(c, c, norm_groups) for _ in range(blocks)))
            for c in channels[:-1]
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1)
            for a, b in itertools.pairwise(channels)
        )
        self.tail = nn.Conv2d(channels[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return the image (N, 1, p·h, p·w) decoded from (N, d, h, w) latents."""
        return self.multiscale(z)[1]

    def multiscale(self, z: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Decode and return the multi-scale features F_Ref with the image.

        Parameters
        ----------
        z : torch.Tensor
            Quantised latents (N, d, h, w).

        Returns
        -------
        features : list of torch.Tensor
            After the last residual block of each scale, coarsest first: entry ``l``
            has ``channels[l]`` channels and size (2^l·h, 2^l·w).
        image : torch.Tensor
            (N, 1, p·h, p·w).
        """
        x = self.head(z)
        features = []
        for stage, up in zip(self.stages, self.ups, strict=True):
            x = stage(x)
            features.append(x)
            x = up(x)
        return features, self.tail(x)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient (Eq. 1, 5).

    Parameters
    ----------
    codes : int
        Number of latent vectors v.
    dim : int
        Their dimension d.
    beta : float
        Weight β of the commitment term ‖sg[Z_q] − Z_e‖² in the loss.
    """

    def __init__(self, codes: int = 1024, dim: int = 512, beta: float = 1.0):
        super().__init__()
        self.codes, self.dim, self.beta = codes, dim, float(beta)
        self.embedding = nn.Embedding(codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codes, 1.0 / codes)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Return the index of the nearest code of every position of z (N, d, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        codebook = self.embedding.weight.float()
        with torch.autocast(z.device.type, enabled=False):  # distances in float32
            distance = (
                flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)
            )
        n, _, h, w = z.shape
        return distance.argmin(1).reshape(n, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Return the codes Z_q of (N, h, w) indices as (N, d, h, w)."""
        return self.embedding(indices).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise z.

        Parameters
        ----------
        z : torch.Tensor
            Encoder output Z_e (N, d, h, w).

        Returns
        -------
        quantized : torch.Tensor
            Z_e + sg[Z_q − Z_e]: the codes forward, the identity backward.
        loss : torch.Tensor
            ‖sg[Z_e] − Z_q‖² + β·‖sg[Z_q] − Z_e‖² (means).
        indices : torch.Tensor
            (N, h, w) code indices.
        """
        indices = self.indices(z)
        zq = self.lookup(indices).to(z.dtype)
        loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), loss, indices


def _coder_keywords(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return the keywords that the Stage I encoder and decoder share."""
    return {
        key: kwargs[key]
        for key in ("latent_dim", "blocks", "bottleneck_blocks", "non_local", "norm_groups")
    }


@ARCHS.register("gpemsr_codebook")
class VQAutoencoder(nn.Module):
    """Stage I of GPEMSR: the VQGAN generator (encoder, codebook, decoder) on HR images.

    Parameters
    ----------
    scale : int
        Must be 1 (it reconstructs its input).
    channels : sequence of int
        Encoder widths per scale, finest first; the decoder's are reversed. Their
        number sets the compression p = 2^(len − 1) (16 for the paper's five).
    latent_dim : int
        Code dimension d (512).
    codes : int
        Codebook size v (1024).
    beta : float
        Commitment weight β (1).
    blocks : int
        Residual blocks per scale (1).
    bottleneck_blocks : int
        Residual blocks at the bottom of encoder and decoder (3).
    non_local : bool
        Non-local blocks at the bottom.
    norm_groups : int
        GroupNorm groups (32).

    Notes
    -----
    ``window`` is p: :meth:`autoencode` needs sizes that are multiples of it, as does
    :meth:`forward` in training mode; in eval mode :meth:`forward` reflect-pads any
    size and crops back.
    """

    def __init__(
        self,
        scale: int = 1,
        channels: Sequence[int] = PAPER_CHANNELS,
        latent_dim: int = 512,
        codes: int = 1024,
        beta: float = 1.0,
        blocks: int = 1,
        bottleneck_blocks: int = 3,
        non_local: bool = True,
        norm_groups: int = 32,
    ):
        super().__init__()
        if check_scale(scale) != 1:
            raise ValueError(
                f"gpemsr_codebook reconstructs its input: scale must be 1, got {scale}"
            )
        self.scale = 1
        kwargs = _coder_keywords(locals())
        self.encoder = Encoder(channels, **kwargs)
        self.quantizer = VectorQuantizer(codes, latent_dim, beta)
        self.decoder = Decoder(list(channels)[::-1], **kwargs)
        self.compression = self.window = self.encoder.compression

    def autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, quantise and decode.

        Parameters
        ----------
        x : torch.Tensor
            HR images (N, 1, H, W), H and W multiples of p.

        Returns
        -------
        recon : torch.Tensor
            I_HRref, (N, 1, H, W).
        vq_loss : torch.Tensor
            The codebook loss L_c.
        indices : torch.Tensor
            (N, H/p, W/p) code indices.
        """
        _check_multiple(x, self.compression, "gpemsr_codebook input")
        quantized, vq_loss, indices = self.quantizer(self.encoder(x))
        return self.decoder(quantized), vq_loss, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction of (N, 1, H, W) images (padded in eval mode)."""
        h, w = x.shape[-2:]
        if not self.training:
            x = _pad_to(x, self.compression)
        return self.autoencode(x)[0][..., :h, :w]


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al.), the authors' variant.

    A 4×4 stride-2 convolution and LeakyReLU 0.2; ``layers`` 4×4 convolutions (stride 2
    but the last, stride 1; widths doubling up to 8×) with InstanceNorm and LeakyReLU;
    a 4×4 convolution to one logit per patch.

    Parameters
    ----------
    in_channels : int
        Image channels.
    channels : int
        Filters of the first layer (64).
    layers : int
        Intermediate layers (3).
    padding : int
        Padding of every convolution: 0 in the authors' code (needs inputs of at least
        about 100 pixels with three layers), 1 in pix2pix.
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, layers: int = 3, padding: int = 0):
        super().__init__()
        body: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, 2, padding),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for i in range(1, layers + 1):
            previous, mult = mult, min(2**i, 8)
            body += [
                nn.Conv2d(
                    channels * previous,
                    channels * mult,
                    4,
                    2 if i < layers else 1,
                    padding,
                    bias=False,
                ),
                nn.InstanceNorm2d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        body.append(nn.Conv2d(channels * mult, 1, 4, 1, padding))
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the patch logits (N, 1, h′, w′)."""
        return self.body(x)


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Return the generator's adversarial loss mean(−D(fake)) (the authors' code)."""
    return -fake_logits.mean()


def discriminator_adversarial_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    """Return the discriminator's loss (mean(−D(real)) + mean(D(fake)))/2 (their code)."""
    return 0.5 * (-real_logits.mean() + fake_logits.mean())


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Return the R1 penalty: the mean over samples of ‖∇_x D(x)‖² on real images.

    ``real`` must require gradients and ``real_logits`` be computed from it. The authors
    add ``1e-4 / 2 · 16 ·`` this every 16 discriminator steps.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def codebook_objective(
    model: VQAutoencoder,
    hr: torch.Tensor,
    *,
    codebook_weight: float = 10.0,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage I objective without the adversarial term: L1 + λ_c·L_c (Eq. 6).

    Parameters
    ----------
    model : VQAutoencoder
        The Stage I network.
    hr : torch.Tensor
        HR patches (N, 1, H, W), multiples of p.
    codebook_weight : float
        λ_c (10).
    precision : {"fp32", "bf16"}
        Autocast of the forward pass.

    Returns
    -------
    total : torch.Tensor
        The scalar loss.
    terms : torch.Tensor
        (L1, L_c), detached.
    """
    with torch.autocast(hr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        recon, vq_loss, _ = model.autoencode(hr)
    terms = torch.stack([F.l1_loss(recon.float(), hr), vq_loss.float()])
    return terms[0] + codebook_weight * terms[1], terms.detach()


# ---------------------------------------------------------------------------------------
# Stage II: latent vector indexer


class Indexer(nn.Module):
    """Latent vector indexer W: from the LR image to logits over the codes (Eq. 3).

    A 3×3 convolution and ReLU; per scale ``blocks − 1`` residual blocks and a last
    one to the next width, which is a stride-2 convolution in the last
    ``log2(p / scale)`` scales (none at 16×, one at 8×); a non-local block,
    ``bottleneck_blocks`` residual blocks, a 1×1 convolution to ``latent_dim`` and a
    linear layer to ``codes`` logits.

    Parameters
    ----------
    scale : int
        SR factor s (a power of two ≤ p).
    channels : sequence of int
        Widths per scale (the encoder's).
    latent_dim, codes : int
        d and v.
    blocks : int
        Residual blocks per scale, the transition included (2).
    bottleneck_blocks, non_local, norm_groups
        As for :class:`Encoder`.
    in_channels : int
        Image channels.
    """

    def __init__(
        self,
        scale: int = 16,
        channels: Sequence[int] = PAPER_CHANNELS,
        latent_dim: int = 512,
        codes: int = 1024,
        blocks: int = 2,
        bottleneck_blocks: int = 3,
        non_local: bool = True,
        norm_groups: int = 32,
        in_channels: int = 1,
    ):
        super().__init__()
        channels = list(channels)
        compression = 2 ** (len(channels) - 1)
        downs = _log2(compression, "the compression") - _log2(scale, "scale")
        if downs < 0 or downs > len(channels) - 1:
            raise ValueError(f"scale {scale} must be at most the compression {compression}")
        self.factor = 2**downs
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.ReLU()]
        stages = len(channels) - 1
        for i, (a, b) in enumerate(itertools.pairwise(channels)):
            layers += [ResBlock(a, a, norm_groups) for _ in range(blocks - 1)]
            if i >= stages - downs:
                layers.append(nn.Conv2d(a, b, 3, stride=2, padding=1))
            else:
                layers.append(ResBlock(a, b, norm_groups))
        bottom = channels[-1]
        if non_local:
            layers.append(NonLocalBlock(bottom, norm_groups))
        layers += [ResBlock(bottom, bottom, norm_groups) for _ in range(bottleneck_blocks)]
        layers.append(nn.Conv2d(bottom, latent_dim, 1))
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(latent_dim, codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits Z_w (N, v, h/f, w/f) of LR images (N, 1, h, w), f = p / s."""
        feature = self.body(x).permute(0, 2, 3, 1)
        return self.classifier(feature).permute(0, 3, 1, 2)


@ARCHS.register("gpemsr_prior")
class GenerativePrior(nn.Module):
    """Stage II of GPEMSR: the indexer with the frozen Stage I network (VQGAN-Indexer).

    Maps an LR image to the reference image I_Ref: the indexer's arg-max codes, looked
    up in the codebook and decoded. Only the indexer is trainable; load the Stage I
    weights with ``prior.vq.load_state_dict(codebook_model.state_dict())``.

    Parameters
    ----------
    scale : int
        SR factor s (8 or 16; any power of two ≤ p).
    channels, latent_dim, codes, beta, blocks, bottleneck_blocks, non_local, norm_groups
        The Stage I architecture, as for :class:`VQAutoencoder`.
    indexer_blocks : int
        Residual blocks per scale of the indexer (2).

    Notes
    -----
    ``window`` is p / s: :meth:`logits` needs LR sizes that are multiples of it, as does
    :meth:`forward` in training mode; in eval mode :meth:`forward` pads any size.
    """

    def __init__(
        self,
        scale: int = 16,
        channels: Sequence[int] = PAPER_CHANNELS,
        latent_dim: int = 512,
        codes: int = 1024,
        beta: float = 1.0,
        blocks: int = 1,
        bottleneck_blocks: int = 3,
        non_local: bool = True,
        norm_groups: int = 32,
        indexer_blocks: int = 2,
    ):
        super().__init__()
        self.scale = check_scale(scale)
        self.vq = VQAutoencoder(
            1, channels, latent_dim, codes, beta, blocks, bottleneck_blocks, non_local, norm_groups
        )
        self.vq.requires_grad_(False)
        self.indexer = Indexer(
            scale,
            channels,
            latent_dim,
            codes,
            indexer_blocks,
            bottleneck_blocks,
            non_local,
            norm_groups,
        )
        self.compression = self.vq.compression
        self.window = self.indexer.factor

    @torch.no_grad()
    def targets(self, hr: torch.Tensor) -> torch.Tensor:
        """Return the code indices (N, H/p, W/p) the frozen encoder gives HR patches."""
        _check_multiple(hr, self.compression, "HR patch")
        return self.vq.quantizer.indices(self.vq.encoder(hr))

    def logits(self, lr: torch.Tensor) -> torch.Tensor:
        """Return the indexer's logits (N, v, h·s/p, w·s/p) for LR images (N, 1, h, w)."""
        _check_multiple(lr, self.window, "LR image")
        return self.indexer(lr)

    @torch.no_grad()
    def reference(self, lr: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return the decoder's multi-scale features F_Ref and I_Ref for LR images.

        Parameters
        ----------
        lr : torch.Tensor
            (N, 1, h, w), multiples of p / s.

        Returns
        -------
        features : list of torch.Tensor
            As :meth:`Decoder.multiscale`, coarsest (HR/p) first.
        image : torch.Tensor
            I_Ref, (N, 1, s·h, s·w).
        """
        codes = self.logits(lr).argmax(1)
        return self.vq.decoder.multiscale(self.vq.quantizer.lookup(codes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return I_Ref (N, 1, s·h, s·w) for LR images (N, 1, h, w) (padded in eval mode)."""
        h, w = x.shape[-2:]
        if not self.training:
            x = _pad_to(x, self.window)
        return self.reference(x)[1][..., : self.scale * h, : self.scale * w]


def indexer_objective(
    model: GenerativePrior, lr: torch.Tensor, hr: torch.Tensor, *, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage II objective: cross-entropy of the indexer's logits to the HR codes (Eq. 7).

    Parameters
    ----------
    model : GenerativePrior
        The Stage II network.
    lr, hr : torch.Tensor
        LR (N, 1, h, w) and HR (N, 1, s·h, s·w) patches.
    precision : {"fp32", "bf16"}
        Autocast of the forward pass.

    Returns
    -------
    total : torch.Tensor
        The scalar loss.
    terms : torch.Tensor
        (cross-entropy, accuracy), detached.
    """
    target = model.targets(hr)
    with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model.logits(lr)
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"LR {tuple(lr.shape[-2:])} and HR {tuple(hr.shape[-2:])} patches do not match "
            f"at scale {model.scale}"
        )
    loss = F.cross_entropy(logits.float(), target)
    accuracy = (logits.argmax(1) == target).float().mean()
    return loss, torch.stack([loss, accuracy]).detach()


# ---------------------------------------------------------------------------------------
# Optical flow between sections (SpyNet stand-ins)


def _standardize(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.cat([a, b], dim=1)
    mean = both.mean((1, 2, 3), keepdim=True)
    std = both.std((1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (a - mean) / std, (b - mean) / std


def lucas_kanade_flow(
    ref: torch.Tensor,
    moving: torch.Tensor,
    *,
    levels: int = 3,
    iterations: int = 5,
    window: int = 5,
    eps: float = 1e-2,
) -> torch.Tensor:
    """Dense pyramidal Lucas–Kanade flow from ``ref`` to ``moving``.

    Coarse to fine (halving down to about 8 pixels, at most ``levels`` levels), each
    level iterates: warp ``moving`` by the flow, solve the 2×2 structure-tensor
    system of the linearised brightness constancy summed over a ``window`` box (with
    Tikhonov regularisation ``eps`` on intensities standardised per pair), update by
    at most one pixel, and box-filter the flow (a smoothness prior without which the
    iteration drifts in weakly textured windows).

    Parameters
    ----------
    ref, moving : torch.Tensor
        Images (B, 1, H, W).
    levels, iterations, window : int
        Pyramid levels, iterations per level and box size.
    eps : float
        Regularisation of the structure tensor (pulls untextured regions to no update).

    Returns
    -------
    torch.Tensor
        Flow (B, 2, H, W), (x, y) in pixels, such that moving(p + flow(p)) ≈ ref(p).
    """
    ref, moving = _standardize(ref.float(), moving.float())
    pyramid = [(ref, moving)]
    while len(pyramid) < levels and min(pyramid[-1][0].shape[-2:]) >= 16:
        size = [(s + 1) // 2 for s in pyramid[-1][0].shape[-2:]]
        pyramid.append(tuple(F.interpolate(t, size=size, mode="area") for t in pyramid[-1]))
    flow = torch.zeros(ref.shape[0], 2, *pyramid[-1][0].shape[-2:], device=ref.device)

    def box(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)

    for fixed, mov in reversed(pyramid):
        h, w = fixed.shape[-2:]
        if flow.shape[-2:] != (h, w):
            ratio = torch.tensor([w / flow.shape[-1], h / flow.shape[-2]], device=flow.device)
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow = flow * ratio[:, None, None]
        for _ in range(iterations):
            warped = warp(mov, flow)
            mean = F.pad(0.5 * (warped + fixed), (1, 1, 1, 1), mode="replicate")
            gx = 0.5 * (mean[..., 1:-1, 2:] - mean[..., 1:-1, :-2])
            gy = 0.5 * (mean[..., 2:, 1:-1] - mean[..., :-2, 1:-1])
            gt = warped - fixed
            sxx, sxy, syy = box(gx * gx) + eps, box(gx * gy), box(gy * gy) + eps
            sxt, syt = box(gx * gt), box(gy * gt)
            det = sxx * syy - sxy * sxy
            du = -(syy * sxt - sxy * syt) / det
            dv = -(sxx * syt - sxy * sxt) / det
            flow = box(flow + torch.cat([du, dv], dim=1).clamp(-1.0, 1.0))
    return flow


def phase_correlation_flow(ref: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Global translation from ``ref`` to ``moving`` by phase correlation, as a flow.

    The peak of the inverse FFT of the normalised cross-power spectrum (Hann-windowed
    images), refined to sub-pixel by a parabola through its neighbours.

    Parameters
    ----------
    ref, moving : torch.Tensor
        Images (B, 1, H, W).

    Returns
    -------
    torch.Tensor
        Constant flow (B, 2, H, W), (x, y), such that moving(p + flow) ≈ ref(p).
    """
    ref, moving = _standardize(ref.float(), moving.float())
    b, _, h, w = ref.shape
    hann = torch.outer(
        torch.hann_window(h, periodic=False, device=ref.device),
        torch.hann_window(w, periodic=False, device=ref.device),
    )
    if h < 3 or w < 3:
        return torch.zeros(b, 2, h, w, device=ref.device)
    spectrum = torch.fft.fft2(moving[:, 0] * hann) * torch.fft.fft2(ref[:, 0] * hann).conj()
    corr = torch.fft.ifft2(spectrum / spectrum.abs().clamp_min(1e-8)).real  # (B, H, W)
    peak = corr.reshape(b, -1).argmax(1)
    py, px = peak // w, peak % w
    batch = torch.arange(b, device=ref.device)

    def refine(centre, minus, plus):
        denom = minus - 2 * centre + plus
        return torch.where(denom.abs() > 1e-8, 0.5 * (minus - plus) / denom, 0.0).clamp(-0.5, 0.5)

    c = corr[batch, py, px]
    dy = py + refine(c, corr[batch, (py - 1) % h, px], corr[batch, (py + 1) % h, px])
    dx = px + refine(c, corr[batch, py, (px - 1) % w], corr[batch, py, (px + 1) % w])
    dy = torch.where(dy > h / 2, dy - h, dy)
    dx = torch.where(dx > w / 2, dx - w, dx)
    return torch.stack([dx, dy], 1)[:, :, None, None].expand(b, 2, h, w).contiguous()


_FLOWS = {"lk": lucas_kanade_flow, "phase": phase_correlation_flow}

#: Flow estimators of :class:`GPEMSR` (``flow``): classical ones and SPyNet.
FLOW_METHODS = ("lk", "phase", "zero", "spynet")

#: Flow estimators in words, for the records of what replaces SPyNet.
FLOW_NAMES = {
    "lk": "dense pyramidal Lucas–Kanade",
    "phase": "global phase correlation",
    "zero": "none: zero flow",
}

#: SPyNet sees the LR sections upsampled by this factor (the authors' 4×).
SPYNET_UPSAMPLE = 4

#: Sources of the MPF mask's and the fidelity loss's features (:class:`GPEMSR`).
FEATURE_SOURCES = ("encoder", "vgg19")

#: VGG19 layer of each feature level (scale HR/2^level).
VGG19_LEVELS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")


@torch.no_grad()
def section_flows(x: torch.Tensor, method: str = "lk") -> tuple[torch.Tensor, torch.Tensor]:
    """Flows between the centre section and every section of an LR stack.

    Parameters
    ----------
    x : torch.Tensor
        Sections (N, T, h, w), T odd.
    method : {"lk", "phase", "zero"}
        :func:`lucas_kanade_flow`, :func:`phase_correlation_flow`, or zero flows.

    Returns
    -------
    forward : torch.Tensor
        (N, T, 2, h, w): section_t(p + forward_t(p)) ≈ centre(p).
    backward : torch.Tensor
        (N, T, 2, h, w): centre(p + backward_t(p)) ≈ section_t(p).
    """
    n, t, h, w = x.shape
    if method == "zero":
        zero = x.new_zeros(n, t, 2, h, w, dtype=torch.float32)
        return zero, zero
    if method not in _FLOWS:
        raise ValueError(f"flow method must be 'lk', 'phase' or 'zero', got {method!r}")
    estimate = _FLOWS[method]
    centre = x[:, t // 2 : t // 2 + 1].expand(n, t, h, w).reshape(n * t, 1, h, w)
    sections = x.reshape(n * t, 1, h, w)
    forward = estimate(centre, sections).reshape(n, t, 2, h, w)
    backward = estimate(sections, centre).reshape(n, t, 2, h, w)
    forward[:, t // 2] = 0
    backward[:, t // 2] = 0
    return forward, backward


# ---------------------------------------------------------------------------------------
# Stage III modules


def _patch_similarity(a: torch.Tensor, b: torch.Tensor, patch: int) -> torch.Tensor:
    """Cosine similarity of co-located non-overlapping patch × patch feature patches."""
    n, c, h, w = a.shape

    def patches(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
        return F.normalize(t.reshape(n, h // patch, w // patch, -1).float(), dim=-1)

    return (patches(a) * patches(b)).sum(-1)[:, None]


class MPF(nn.Module):
    """Multi-scale prior fusion (Eq. 4) with the learned similarity mask.

    Levels run from the finest, HR/2, to the LR grid, HR/s (``L = log2 s`` levels). LR
    features reach level j by transposed convolutions; at level j the fusion
    convolution R_F sees the LR features, the decoder's features of that resolution
    and the running F̃ (j·C channels), then residual blocks, times the upsampled mask;
    the stride-2 convolution R_D takes it with F̃ to the next level. The output
    1×1 convolution R_O sees F̂, F̃ and the LR features.

    Parameters
    ----------
    channels : int
        Feature width C.
    scale : int
        SR factor s (a power of two ≥ 2).
    prior_channels : sequence of int
        Decoder feature widths, coarsest (HR/p) first.
    blocks : int
        Residual blocks after each fusion convolution.
    """

    def __init__(self, channels: int, scale: int, prior_channels: Sequence[int], blocks: int = 1):
        super().__init__()
        c = channels
        self.levels = _log2(scale, "scale")
        prior_channels = list(prior_channels)
        if not 1 <= self.levels <= len(prior_channels):
            raise ValueError(
                f"scale {scale} needs decoder features down to HR/{scale}; the decoder has "
                f"{len(prior_channels)} scales"
            )
        # level j (0: HR/2) uses the decoder scale at HR/2^(j+1)
        self.prior_index = [len(prior_channels) - 1 - j for j in range(self.levels)]
        self.lr_up = nn.ModuleList(
            nn.ConvTranspose2d(c, c, 3, 2, 1, output_padding=1) for _ in range(self.levels - 1)
        )
        self.mask_net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c, c, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c, 1, 3, padding=1),
            nn.LeakyReLU(0.1),
        )
        self.fuse = nn.ModuleList(
            nn.Conv2d(c + prior_channels[self.prior_index[j]] + j * c, c, 3, padding=1)
            for j in range(self.levels)
        )
        self.blocks = nn.ModuleList(_res_blocks(c, blocks) for _ in range(self.levels))
        self.down = nn.ModuleList(
            nn.Conv2d((j + 1) * c, (j + 1) * c, 3, 2, 1) for j in range(self.levels - 1)
        )
        self.out = nn.Conv2d((self.levels + 1) * c, c, 1)

    def mask(self, similarity: torch.Tensor) -> torch.Tensor:
        """Return the mask M = sigmoid(convs(CS)) from patch similarities (N, 1, ·, ·)."""
        return torch.sigmoid(self.mask_net(similarity))

    def forward(
        self, feature: torch.Tensor, prior: Sequence[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """Fuse LR features with the prior's features.

        Parameters
        ----------
        feature : torch.Tensor
            LR features F_LR (B, C, h, w).
        prior : sequence of torch.Tensor
            Decoder features, coarsest first (:meth:`Decoder.multiscale`).
        mask : torch.Tensor
            M, (B, 1, ·, ·) on the patch grid.

        Returns
        -------
        torch.Tensor
            F_Out (B, C, h, w).
        """
        lr = [feature]
        for up in self.lr_up:
            lr.append(_lrelu(up(lr[-1])))
        lr = lr[::-1]  # finest first
        running = None
        for j in range(self.levels):
            inputs = [lr[j], prior[self.prior_index[j]].to(feature.dtype)]
            if running is not None:
                inputs.append(running)
            gate = F.interpolate(mask, size=lr[j].shape[-2:], mode="bilinear", align_corners=False)
            fused = self.blocks[j](self.fuse[j](torch.cat(inputs, 1))) * gate.to(feature.dtype)
            if j < self.levels - 1:
                both = fused if running is None else torch.cat([fused, running], 1)
                running = self.down[j](both)
        parts = [fused, feature] if running is None else [fused, running, feature]
        return self.out(torch.cat(parts, 1))


class POD(nn.Module):
    """Pyramid optical-flow-guided deformable alignment of a section to the centre.

    EDVR's PCD alignment (three pyramid levels, coarse to fine, and a cascading
    deformable convolution) whose offset convolutions also see two encoded flows and the
    two LR frames of each level; with ``flow_guided`` the flow (halved per level) is
    also the base offset of the three pyramid deformable convolutions.

    Parameters
    ----------
    channels : int
        Feature width C.
    deform_groups : int
        Deformable groups (8).
    flow_channels : int
        Width of each flow encoder (16).
    flow_guided : bool
        Whether the flow is the base offset of the pyramid deformable convolutions.
    """

    def __init__(
        self,
        channels: int,
        deform_groups: int = 8,
        flow_channels: int = 16,
        flow_guided: bool = True,
    ):
        super().__init__()
        c, f = channels, flow_channels
        self.flow_guided = flow_guided
        self.deform_groups = deform_groups
        self.flow_encoders = nn.ModuleList(
            nn.ModuleList(
                [
                    nn.Conv2d(2, f, 3, 1, 1),
                    nn.Conv2d(f, f, 3, 2, 1),
                    nn.Conv2d(f, f, 3, 2, 1),
                ]
            )
            for _ in range(2)
        )
        guide = 2 * c + 2 * f + 2

        def conv(a: int, b: int) -> nn.Conv2d:
            return nn.Conv2d(a, b, 3, padding=1)

        def pack() -> DCNPack:
            return DCNPack(c, c, 3, padding=1, deform_groups=deform_groups)

        self.offset_in = nn.ModuleList(conv(guide, c) for _ in range(3))  # L1, L2, L3
        self.offset_mid = nn.ModuleList([conv(2 * c, c), conv(2 * c, c), conv(c, c)])
        self.offset_out = nn.ModuleList([conv(c, c), conv(c, c)])  # L1, L2
        self.dcn = nn.ModuleList(pack() for _ in range(3))
        self.feature_conv = nn.ModuleList([conv(2 * c, c), conv(2 * c, c)])  # L1, L2
        self.cascade_offset = nn.Sequential(conv(2 * c, c), nn.LeakyReLU(0.1), conv(c, c))
        self.cascade = pack()

    def _encode_flows(self, flows: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        levels: list[list[torch.Tensor]] = [[], [], []]
        for encoder, flow in zip(self.flow_encoders, flows, strict=True):
            x = flow
            for level, conv in enumerate(encoder):
                x = conv(x)
                levels[level].append(x)
        return levels

    def forward(
        self,
        neighbour: Sequence[torch.Tensor],
        centre: Sequence[torch.Tensor],
        neighbour_frame: torch.Tensor,
        centre_frame: torch.Tensor,
        flow: torch.Tensor,
        backward_flow: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Align the neighbour's features to the centre's.

        Parameters
        ----------
        neighbour, centre : sequence of torch.Tensor
            Feature pyramids [L1 (B, C, h, w), L2 (h/2), L3 (h/4)].
        neighbour_frame, centre_frame : torch.Tensor
            LR frames (B, 1, h, w).
        flow : torch.Tensor
            (B, 2, h, w), (x, y): neighbour(p + flow(p)) ≈ centre(p).
        backward_flow : torch.Tensor, optional
            The reverse flow (default: −flow).

        Returns
        -------
        torch.Tensor
            Aligned features (B, C, h, w).
        """
        dtype = neighbour[0].dtype
        flow = flow.to(dtype)
        backward_flow = -flow if backward_flow is None else backward_flow.to(dtype)
        flow_features = self._encode_flows([flow, backward_flow])
        frames = [(neighbour_frame.to(dtype), centre_frame.to(dtype))]
        flows = [flow]
        for _ in range(2):
            frames.append(
                tuple(
                    F.interpolate(t, scale_factor=0.5, mode="bilinear", align_corners=False)
                    for t in frames[-1]
                )
            )
            flows.append(F.avg_pool2d(flows[-1], 2) / 2)
        taps = self.dcn[0].taps
        offset_feature = feature = None
        for level in (2, 1, 0):
            guide = torch.cat(
                [neighbour[level], centre[level], *flow_features[level], *frames[level]], 1
            )
            offset = _lrelu(self.offset_in[level](guide))
            if offset_feature is not None:
                up = F.interpolate(
                    offset_feature, scale_factor=2, mode="bilinear", align_corners=False
                )
                offset = _lrelu(self.offset_mid[level](torch.cat([offset, up * 2], 1)))
                offset = _lrelu(self.offset_out[level](offset))
            else:
                offset = _lrelu(self.offset_mid[level](offset))
            base = (
                flow_to_offset(flows[level], self.deform_groups, taps) if self.flow_guided else None
            )
            aligned = self.dcn[level](neighbour[level], offset, base)
            if feature is None:
                feature = _lrelu(aligned)
            else:
                up = F.interpolate(feature, scale_factor=2, mode="bilinear", align_corners=False)
                feature = self.feature_conv[level](torch.cat([aligned, up], 1))
                if level:
                    feature = _lrelu(feature)
            offset_feature = offset
        offset = _lrelu(self.cascade_offset(torch.cat([feature, centre[0]], 1)))
        return _lrelu(self.cascade(feature, offset))


class ThreeDA(nn.Module):
    """3D spatial-attention fusion of aligned section features (EDVR TSA + 3D branches).

    Temporal attention (sigmoid of the correlation of embeddings with the centre's)
    weights every section; a 1×1 fusion convolution plus two branches of a 1×1×1 3D
    convolution across sections and a 1×1 convolution; a two-level spatial attention
    pyramid (max and average pooling) multiplies and adds.

    Parameters
    ----------
    channels : int
        Feature width C.
    sections : int
        Number of sections T.
    """

    def __init__(self, channels: int, sections: int = 5):
        super().__init__()
        c, t = channels, sections

        def conv(a: int, b: int, k: int) -> nn.Conv2d:
            return nn.Conv2d(a, b, k, padding=k // 2)

        self.embed_centre, self.embed = conv(c, c, 3), conv(c, c, 3)
        self.fusion = conv(t * c, c, 1)
        self.across = nn.ModuleList(nn.Conv3d(t, t, 1) for _ in range(2))
        self.across_fusion = nn.ModuleList(conv(t * c, c, 1) for _ in range(2))
        self.fusion_out = conv(c, c, 1)
        self.attn1, self.attn2 = conv(t * c, c, 1), conv(2 * c, c, 1)
        self.attn3, self.attn4, self.attn5 = conv(c, c, 3), conv(c, c, 1), conv(c, c, 3)
        self.level1, self.level2, self.level3 = conv(c, c, 1), conv(2 * c, c, 3), conv(c, c, 3)
        self.add1, self.add2 = conv(c, c, 1), conv(c, c, 1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1)], 1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, aligned: torch.Tensor) -> torch.Tensor:
        """Fuse aligned features (B, T, C, h, w), h and w multiples of 4, into (B, C, h, w)."""
        b, t, c, h, w = aligned.shape
        centre = self.embed_centre(aligned[:, t // 2])
        embedding = self.embed(aligned.reshape(b * t, c, h, w)).reshape(b, t, c, h, w)
        weight = torch.sigmoid((embedding * centre[:, None]).sum(2, keepdim=True))
        weighted = aligned * weight  # (B, T, C, h, w)
        flat = weighted.reshape(b, t * c, h, w)
        feature = _lrelu(self.fusion(flat))
        branches = [
            _lrelu(fuse(_lrelu(conv(weighted)).reshape(b, t * c, h, w)))
            for conv, fuse in zip(self.across, self.across_fusion, strict=True)
        ]
        feature = feature + branches[0]
        extra = self.fusion_out(feature)
        attn = _lrelu(self.attn2(self._pool(_lrelu(self.attn1(flat)))))
        level = _lrelu(self.level1(attn))
        level = _lrelu(self.level3(_lrelu(self.level2(self._pool(level)))))
        attn = _lrelu(self.attn3(attn)) + self._up(level)
        attn = self.attn5(self._up(_lrelu(self.attn4(attn))))
        add = self.add2(_lrelu(self.add1(attn)))
        return feature * torch.sigmoid(attn) * 2 + add + branches[1] + extra


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@ARCHS.register("gpemsr")
class GPEMSR(nn.Module):
    """Stage III of GPEMSR: multi-section reconstruction with the generative prior.

    Input: LR sections (N, T, h, w), T = ``sections`` (2N + 1 = 5), values in [0, 1];
    output: the centre section super-resolved, (N, 1, s·h, s·w). Every section gets LR
    features (3×3 convolution, LeakyReLU, ``front_blocks`` residual blocks), fused by
    :class:`MPF` with the frozen prior's (:class:`GenerativePrior`) decoder features;
    :class:`POD` aligns every section to the centre, :class:`ThreeDA` fuses them,
    ``back_blocks`` residual blocks and ×2 pixel-shuffle steps reconstruct, and the
    bilinear upsampling of the centre section is added.

    Parameters
    ----------
    scale : int
        SR factor s: 8 or 16 (any power of two ≤ the prior's compression p).
    channels : int
        Feature width C (64).
    sections : int
        Sections T, odd (5).
    deform_groups : int
        Deformable groups of POD (8).
    front_blocks, back_blocks : int
        Residual blocks before MPF (5) and after fusion (10).
    fusion_blocks : int
        Residual blocks per MPF level (1, the authors' configuration).
    mpf : bool
        Whether to use the prior (MPF); without it there is no prior and the loss is L1.
    align : {"pod", "resblocks"}
        POD, or (ablation) residual blocks with about POD's parameters per section.
    fusion : {"3da", "resblocks"}
        3DA, or (ablation) a 1×1 convolution and residual blocks with about 3DA's
        parameters.
    single_section : bool
        Use the centre section only (no alignment or fusion); the input may then have
        any odd number of sections, 1 included.
    flow : {"lk", "phase", "zero", "spynet"}
        Flow estimator used when :meth:`forward` gets no flows: classical
        (:func:`section_flows` on the LR sections) or a :class:`~.spynet.SPyNet` on the
        sections upsampled ×4 (bilinear), as the authors run theirs.
    spynet_weights : str, optional
        With ``flow="spynet"``: the local SPyNet weights file (BasicSR's Sintel
        ``spynet_sintel_final-3d2a1287.pth``) it was built from; the SPyNet is then
        frozen, as in the paper. ``None``: the SPyNet starts at zero flow and is trained
        end to end. The file is read by :meth:`load_pretrained`, not here (a checkpoint
        holds the weights and names the file).
    features : {"encoder", "vgg19"}
        Features of the MPF mask and the multi-Ref fidelity loss
        (:meth:`feature_maps`): the frozen Stage I encoder's, trained on EM (the
        replacement of ImageNet VGG19 that needs no download), or VGG19's as in the
        paper, from ``vgg19_weights``.
    vgg19_weights : str, optional
        With ``features="vgg19"``: the local file of torchvision's ImageNet VGG19
        weights (``vgg19-dcbb9e9d.pth``), read by :meth:`load_pretrained`.
    flow_guided : bool
        Whether POD uses the flow as base offsets (see :class:`POD`).
    prior : mapping, optional
        Keywords of :class:`GenerativePrior` but ``scale`` (default: the paper's). Load
        its weights into ``net.prior`` after Stage II; it stays frozen.

    Notes
    -----
    ``window`` is the LR grid the pyramid, pooling and mask patches need (4 at 8× and
    16×): training inputs must be multiples of it (HR multiples of 16); in eval mode
    any size is reflect-padded and cropped back.
    """

    def __init__(
        self,
        scale: int = 16,
        channels: int = 64,
        sections: int = 5,
        deform_groups: int = 8,
        front_blocks: int = 5,
        back_blocks: int = 10,
        fusion_blocks: int = 1,
        mpf: bool = True,
        align: str = "pod",
        fusion: str = "3da",
        single_section: bool = False,
        flow: str = "lk",
        flow_guided: bool = True,
        spynet_weights: str | None = None,
        features: str = "encoder",
        vgg19_weights: str | None = None,
        prior: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.scale = check_scale(scale)
        _log2(self.scale, "scale")
        if sections < 1 or sections % 2 == 0:
            raise ValueError(f"sections must be odd, got {sections}")
        if align not in ("pod", "resblocks") or fusion not in ("3da", "resblocks"):
            raise ValueError(
                f"align must be 'pod' or 'resblocks' and fusion '3da' or 'resblocks', "
                f"got {align!r}, {fusion!r}"
            )
        if flow not in FLOW_METHODS:
            raise ValueError(f"flow must be one of {', '.join(FLOW_METHODS)}, got {flow!r}")
        if spynet_weights is not None and flow != "spynet":
            raise ValueError(f"spynet_weights {spynet_weights!r} given with flow {flow!r}")
        if features not in FEATURE_SOURCES:
            raise ValueError(
                f"features must be one of {', '.join(FEATURE_SOURCES)}, got {features!r}"
            )
        if (features == "vgg19") != (vgg19_weights is not None):
            raise ValueError(
                "features 'vgg19' needs vgg19_weights, a local file of torchvision's "
                "ImageNet VGG19 weights (vgg19-dcbb9e9d.pth), and vgg19_weights needs "
                f"features 'vgg19'; got features {features!r}, vgg19_weights {vgg19_weights!r}"
            )
        c = channels
        self.sections, self.single_section = sections, single_section
        self.flow, self.use_mpf = flow, mpf
        self.spynet_weights = spynet_weights
        self.features, self.vgg19_weights = features, vgg19_weights
        if flow == "spynet" and not single_section and align == "pod":
            self.spynet = SPyNet().requires_grad_(spynet_weights is None)
        self.conv_first = nn.Conv2d(1, c, 3, padding=1)
        self.front = _res_blocks(c, front_blocks)
        window = 1
        if mpf:
            self.prior = GenerativePrior(self.scale, **dict(prior or {}))
            self.prior.requires_grad_(False)
            p = self.prior.compression
            if self.scale > p:
                raise ValueError(f"scale {scale} exceeds the prior's compression {p}")
            self.mask_patch = p  # the authors' 16 × 16 patches
            if features == "vgg19":
                self.vgg = Backbone("vgg19").requires_grad_(False)
            self.mpf = MPF(c, self.scale, self.prior.vq.decoder.channels[:-1], fusion_blocks)
            window = max(window, p // self.scale)
        if not single_section:
            window = max(window, 4)
            # the ablation's replacements: residual blocks with about the same parameters
            block = _count(ResidualBlockNoBN(c))
            pod = POD(c, deform_groups, flow_guided=flow_guided)
            pyramid = nn.ModuleList(
                nn.ModuleList([nn.Conv2d(c, c, 3, 2, 1), nn.Conv2d(c, c, 3, 1, 1)])
                for _ in range(2)
            )
            if align == "pod":
                self.align, self.pyramid = pod, pyramid
            else:
                blocks = round((_count(pod) + _count(pyramid)) / block)
                self.align = _res_blocks(c, max(1, blocks))
            tda = ThreeDA(c, sections)
            if fusion == "3da":
                self.fusion = tda
            else:
                blocks = round((_count(tda) - _conv1x1_params(sections * c, c)) / block)
                self.fusion = nn.Sequential(
                    nn.Conv2d(sections * c, c, 1), nn.LeakyReLU(0.1), _res_blocks(c, max(1, blocks))
                )
        self.align_mode, self.fusion_mode = align, fusion
        self.window = window
        self.back = _res_blocks(c, back_blocks)
        self.upsample = nn.ModuleList(
            nn.Conv2d(c, 4 * c, 3, padding=1) for _ in range(_log2(self.scale, "scale"))
        )
        self.hr_conv = nn.Conv2d(c, c, 3, padding=1)
        self.conv_last = nn.Conv2d(c, 1, 3, padding=1)

    # -- pieces ---------------------------------------------------------------------

    def _prior_fusion(self, feature: torch.Tensor, frames: torch.Tensor):
        features, reference = self.prior.reference(frames)
        with torch.no_grad():
            up = F.interpolate(
                frames, scale_factor=self.scale, mode="bilinear", align_corners=False
            )
            similarity = _patch_similarity(
                self.feature_maps(reference, 0), self.feature_maps(up, 0), self.mask_patch
            )
        mask = self.mpf.mask(similarity.to(feature.dtype))
        return self.mpf(feature, features, mask), reference

    def _align(self, feature, x, flow, backward_flow):
        n, t, c, h, w = feature.shape
        flat = feature.reshape(n * t, c, h, w)
        if self.align_mode != "pod":
            return self.align(flat).reshape(n, t, c, h, w)
        levels = [flat]
        for down, conv in self.pyramid:
            levels.append(_lrelu(conv(_lrelu(down(levels[-1])))))
        centre = [
            lv.reshape(n, t, *lv.shape[1:])[:, t // 2 : t // 2 + 1]
            .expand(n, t, *lv.shape[1:])
            .reshape(lv.shape)
            for lv in levels
        ]
        frames = x.reshape(n * t, 1, h, w)
        centre_frame = x[:, t // 2 : t // 2 + 1].expand(n, t, h, w).reshape(n * t, 1, h, w)
        aligned = self.align(
            levels,
            centre,
            frames,
            centre_frame,
            flow.reshape(n * t, 2, h, w),
            None if backward_flow is None else backward_flow.reshape(n * t, 2, h, w),
        )
        return aligned.reshape(n, t, c, h, w)

    def _flows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flow != "spynet":
            return section_flows(x, self.flow)
        n, t, h, w = x.shape
        s = SPYNET_UPSAMPLE
        up = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        sections = up.reshape(n * t, 1, s * h, s * w)
        centre = up[:, t // 2 : t // 2 + 1].expand_as(up).reshape(sections.shape)
        others = torch.ones(1, t, 1, 1, 1, dtype=up.dtype, device=up.device)
        others[:, t // 2] = 0  # the centre's flows to itself are zero
        flows = []
        for ref, supp in ((centre, sections), (sections, centre)):
            flow = F.interpolate(self.spynet(ref, supp), size=(h, w), mode="area") / s
            flows.append(flow.reshape(n, t, 2, h, w) * others)
        return flows[0], flows[1]

    def _reconstruct(self, x: torch.Tensor, flow, backward_flow):
        n, t, h, w = x.shape
        centre = x[:, t // 2 : t // 2 + 1]
        if self.single_section:
            x, t = centre, 1
        frames = x.reshape(n * t, 1, h, w)
        feature = self.front(_lrelu(self.conv_first(frames)))
        reference = None
        if self.use_mpf:
            feature, reference = self._prior_fusion(feature, frames)
            reference = reference.reshape(n, t, 1, *reference.shape[-2:])
        if self.single_section:
            fused = feature
        else:
            if flow is None and self.align_mode == "pod":
                flow, backward_flow = self._flows(x)
            aligned = self._align(feature.reshape(n, t, *feature.shape[1:]), x, flow, backward_flow)
            if self.fusion_mode == "3da":
                fused = self.fusion(aligned)
            else:
                fused = self.fusion(aligned.reshape(n, -1, h, w))
        out = self.back(fused)
        for conv in self.upsample:
            out = _lrelu(F.pixel_shuffle(conv(out), 2))
        out = self.conv_last(_lrelu(self.hr_conv(out)))
        base = F.interpolate(centre, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out + base.to(out.dtype), reference

    # -- public ---------------------------------------------------------------------

    def feature_maps(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Features of HR images for the MPF mask (level 0) and the fidelity loss.

        Parameters
        ----------
        x : torch.Tensor
            Images (N, 1, H, W) in [0, 1].
        level : int
            Scale: HR/2^level. The frozen Stage I encoder's features at that scale, or
            VGG19's last ReLU of block ``level + 1`` (``relu1_2``, ``relu2_2``,
            ``relu3_4``, ``relu4_4``, ``relu5_4``: the paper's mask takes ``relu1_2``,
            its contextual loss ``relu3_4``).

        Returns
        -------
        torch.Tensor
            (N, C, H / 2^level, W / 2^level).
        """
        if self.features == "vgg19":
            if not 0 <= level < len(VGG19_LEVELS):
                raise ValueError(f"VGG19 has feature levels 0–4, got {level}")
            return self.vgg(x, [VGG19_LEVELS[level]])[VGG19_LEVELS[level]]
        return self.prior.vq.encoder.features(x, level)

    def stand_ins(self) -> dict[str, str]:
        """Name what replaces each pretrained network of the paper in this network.

        Returns
        -------
        dict of str to str
            ``features`` (the MPF mask and the multi-Ref fidelity loss) and ``flow``
            (POD's optical flow), each in words; empty where the part is unused (no
            MPF, no POD).
        """
        if not self.use_mpf:
            features = ""
        elif self.features == "vgg19":
            features = f"ImageNet VGG19 (relu1_2, relu3_4) from {self.vgg19_weights}, as the paper"
        else:
            features = (
                "frozen Stage I encoder trained on EM, in place of ImageNet VGG19 (mask: "
                "its full-resolution level for relu1_2; fidelity loss: the level of the "
                "setting contextual_level, HR/4 by default, for relu3_4)"
            )
        if self.single_section or self.align_mode != "pod":
            flow = ""
        elif self.flow == "spynet" and self.spynet_weights is not None:
            flow = f"SPyNet from {self.spynet_weights} (frozen), as the paper"
        elif self.flow == "spynet":
            flow = "SPyNet-shaped network trained end to end, in place of Sintel-trained SPyNet"
        else:
            flow = (
                f"classical flow ({FLOW_NAMES[self.flow]}) on the LR sections, in place of "
                "Sintel-trained SPyNet"
            )
        return {"features": features, "flow": flow}

    def load_pretrained(self) -> GPEMSR:
        """Load the local pretrained weights the spec names.

        ``spynet_weights`` into the SPyNet (frozen), ``vgg19_weights`` into VGG19.

        Returns
        -------
        GPEMSR
            ``self``.

        Raises
        ------
        ValueError
            If a named file is missing or does not fit (the message names it).
        """
        if self.spynet_weights is not None and hasattr(self, "spynet"):
            load_spynet_weights(self.spynet, self.spynet_weights)
        if self.vgg19_weights is not None and hasattr(self, "vgg"):
            load_backbone_weights(self.vgg, self.vgg19_weights)
        return self

    def forward_with_reference(
        self,
        x: torch.Tensor,
        flow: torch.Tensor | None = None,
        backward_flow: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Super-resolve the centre section and return the prior's references too.

        Parameters
        ----------
        x : torch.Tensor
            LR sections (N, T, h, w).
        flow : torch.Tensor, optional
            (N, T, 2, h, w) flows from the centre to every section (x, y in LR pixels:
            section_t(p + flow_t(p)) ≈ centre(p)); default: estimated with the
            ``flow`` method.
        backward_flow : torch.Tensor, optional
            The reverse flows (default: −flow when ``flow`` is given).

        Returns
        -------
        sr : torch.Tensor
            (N, 1, s·h, s·w).
        references : torch.Tensor or None
            I_Ref of every section used, (N, T′, 1, s·h, s·w), or ``None`` without MPF.

        Raises
        ------
        ValueError
            If the input is not (N, T, h, w) with the expected T, or, in training mode,
            if h or w is not a multiple of ``window``.
        """
        if x.ndim != 4:
            raise ValueError(f"gpemsr takes LR sections (N, T, h, w), got shape {tuple(x.shape)}")
        t = x.shape[1]
        if self.single_section:
            if t % 2 == 0:
                raise ValueError(f"gpemsr needs an odd number of sections, got {t}")
        elif t != self.sections:
            raise ValueError(f"gpemsr expects {self.sections} sections (N, T, h, w), got {t}")
        h, w = x.shape[-2:]
        if self.training:
            _check_multiple(x, self.window, "gpemsr LR input")
        else:
            x = _pad_to(x, self.window)
            if flow is not None:
                flow = _pad_flow(flow, self.window)
            if backward_flow is not None:
                backward_flow = _pad_flow(backward_flow, self.window)
        sr, reference = self._reconstruct(x, flow, backward_flow)
        size = (self.scale * h, self.scale * w)
        if reference is not None:
            reference = reference[..., : size[0], : size[1]]
        return sr[..., : size[0], : size[1]], reference

    def forward(
        self,
        x: torch.Tensor,
        flow: torch.Tensor | None = None,
        backward_flow: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the super-resolved centre section (N, 1, s·h, s·w) of (N, T, h, w)."""
        return self.forward_with_reference(x, flow, backward_flow)[0]


def _conv1x1_params(c_in: int, c_out: int) -> int:
    return c_in * c_out + c_out


def _pad_flow(flow: torch.Tensor, multiple: int) -> torch.Tensor:
    n, t, _, h, w = flow.shape
    padded = _pad_to(flow.reshape(n, t * 2, h, w), multiple)
    return padded.reshape(n, t, 2, *padded.shape[-2:])


# ---------------------------------------------------------------------------------------
# Stage III loss


def fidelity_weight(scale: int) -> float:
    """Return λ_Mfid of the paper: 0.01 at 16×, 0.001 at 8× (other scales: 0.001)."""
    return 0.01 if scale >= 16 else 0.001


def contextual_loss(x: torch.Tensor, y: torch.Tensor, band_width: float = 0.5) -> torch.Tensor:
    """Confidence-weighted contextual loss (Mechrez et al.; the GPEMSR authors' form).

    Cosine distances d_ij between every position i of ``x`` and j of ``y`` (both
    centred on the channel mean of ``y`` over the batch), relative distances
    d_ij / (min_k d_ik + 1e-5), contextual similarities CX_ij = softmax-like
    normalisation of exp((1 − d̃_ij)/h) over j; for every j the best i, its CX and
    its confidence c_j = exp((1 − d_ij)/h); the loss is the batch mean of
    −log(Σ_j CX_j c_j / Σ_j c_j + 1e-5).

    Parameters
    ----------
    x, y : torch.Tensor
        Features (B, C, H, W) and (B, C, H′, W′) (e.g. output and reference).
    band_width : float
        h (0.5).

    Returns
    -------
    torch.Tensor
        Scalar loss (float32). Memory grows as B·(H·W)·(H′·W′).
    """
    x, y = x.float(), y.float()
    mu = y.mean((0, 2, 3), keepdim=True)
    xn = F.normalize((x - mu).flatten(2), dim=1)
    yn = F.normalize((y - mu).flatten(2), dim=1)
    dist = (1 - xn.transpose(1, 2) @ yn).clamp_min(0)  # (B, HW, H'W')
    relative = dist / (dist.min(2, keepdim=True).values + 1e-5)
    weight = torch.exp((1 - relative) / band_width)
    cx = weight / (weight.sum(2, keepdim=True) + 1e-5)
    best, index = cx.max(1, keepdim=True)  # over x, for every y position
    confidence = torch.gather(torch.exp((1 - dist) / band_width), 1, index)
    score = (best * confidence).sum((1, 2)) / confidence.sum((1, 2))
    return -torch.log(score + 1e-5).mean()


def gpemsr_objective(
    model: GPEMSR,
    lr: torch.Tensor,
    hr: torch.Tensor,
    *,
    weight: float | None = None,
    level: int = 2,
    flow: torch.Tensor | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage III objective L1 + λ·L_Mfid (Eq. 8).

    L_Mfid is :func:`contextual_loss` between the output and every section's reference
    I_Ref (the output repeated), on :meth:`GPEMSR.feature_maps` at ``level`` (HR/4 by
    default: the frozen Stage I encoder's, or VGG19 ``relu3_4`` as the authors').

    Parameters
    ----------
    model : GPEMSR
        The Stage III network.
    lr : torch.Tensor
        LR sections (N, T, h, w).
    hr : torch.Tensor
        HR centre section (N, 1, s·h, s·w).
    weight : float, optional
        λ (default :func:`fidelity_weight` of the scale; 0 without MPF).
    level : int
        Encoder scale of the contextual features.
    flow : torch.Tensor, optional
        Flows for :meth:`GPEMSR.forward_with_reference`.
    precision : {"fp32", "bf16"}
        Autocast of the forward pass (the loss is computed in float32).

    Returns
    -------
    total : torch.Tensor
        The scalar loss.
    terms : torch.Tensor
        (L1, L_Mfid), detached (L_Mfid is 0 without MPF).
    """
    with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        sr, references = model.forward_with_reference(lr, flow)
    sr = sr.float()
    l1 = F.l1_loss(sr, hr)
    if references is None:
        return l1, torch.stack([l1, torch.zeros_like(l1)]).detach()
    lam = fidelity_weight(model.scale) if weight is None else weight
    n, t = references.shape[:2]
    with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        output = model.feature_maps(sr[:, None].expand(n, t, *sr.shape[1:]).flatten(0, 1), level)
        with torch.no_grad():
            target = model.feature_maps(references.flatten(0, 1).to(sr.dtype), level)
    cx = contextual_loss(output, target)
    return l1 + lam * cx, torch.stack([l1, cx]).detach()
