"""Super-resolution network architectures, registered by name (BasicSR style).

Every network maps (N, 1, h, w) LR images with values in [0, 1] to (N, 1, τh, τw) for
any h, w ≥ 1, and has the attributes ``scale`` (τ) and ``window`` (the LR-pixel grid
its attention windows or pooling are aligned to; tiles whose origins are multiples of
it see the same windows as the whole image). Build one from a configuration spec::

    net = build_network({"type": "emsrnet", "scale": 3, "channels": 64})

Registered architectures (:data:`ARCHS`):

``emsrnet``
    :class:`~emsrflow.archs.emsrnet.EMSRNet`, the EMSR paper's edge-attention network.
``unet``
    :class:`~emsrflow.archs.unet.ResUNet`, a PSSR-style residual U-Net on the
    bicubic-upsampled image.
``swinir``
    :class:`~emsrflow.archs.swinir.SwinIR`, the SwinIR classical SR network.
``uformer``
    :class:`~emsrflow.archs.uformer.Uformer`, the A2I-3DEM U-shaped vision transformer
    (Uformer-like); it works at the HR size on the interpolated LR image (``scale`` 1).
``bicubic``
    :class:`~emsrflow.archs.bicubic.Bicubic`, parameter-free bicubic upsampling.
``gpemsr``, ``gpemsr_codebook``, ``gpemsr_prior``
    :mod:`~emsrflow.archs.gpemsr`: the GPEMSR paper's large-factor (8×, 16×) network on
    five adjacent LR sections (input (N, 5, h, w)), its Stage I VQ codebook autoencoder
    (scale 1) and its Stage II generative prior (codebook indexer).

Not registered (parts of the networks above, or of metrics): :mod:`.dcn` (DCNv2),
:mod:`.spynet` (SPyNet optical flow) and :mod:`.backbones` (ImageNet VGG and AlexNet
feature stacks in torchvision's layout, for weights from local files).
"""

from . import backbones, bicubic, dcn, emsrnet, gpemsr, spynet, swinir, uformer, unet
from .registry import ARCHS, Registry, build_network

__all__ = [
    "ARCHS",
    "Registry",
    "backbones",
    "bicubic",
    "build_network",
    "dcn",
    "emsrnet",
    "gpemsr",
    "spynet",
    "swinir",
    "uformer",
    "unet",
]
