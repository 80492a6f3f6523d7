"""Perceptual image-quality metrics LPIPS and DISTS from local ImageNet weights.

Both metrics compare deep features of a pretrained ImageNet classifier and are
meaningless with random weights; nothing here downloads anything. A metric is built
only from two local files, the backbone's torchvision state dict and the metric's own
calibration, and :func:`perceptual_availability` tells a workflow which metrics its
configuration allows, so that the others are reported as ``"not available"``.

LPIPS (Zhang et al., CVPR 2018; the ``lpips`` package, version 0.1, "linear" calibration)
    :func:`load_lpips`, :class:`LPIPS`. ``net="alex"``: AlexNet
    (``alexnet-owt-7be5be79.pth``) with the calibration ``weights/v0.1/alex.pth`` of the
    ``lpips`` package; ``net="vgg"``: VGG16 (``vgg16-397923af.pth``) with
    ``weights/v0.1/vgg.pth``.
DISTS (Ding et al., TPAMI 2020; the ``DISTS_pytorch`` package)
    :func:`load_dists`, :class:`DISTS`: VGG16 (``vgg16-397923af.pth``) with L2 pooling
    (:func:`l2_pool`) and the package's ``weights.pt``.
Scoring
    :func:`score_slice` scores a 2D slice pair given as NumPy arrays, :func:`score_stack`
    every slice of a stack; lower is better for both metrics, 0 for identical images.

Configuration (the mapping read by :func:`perceptual_availability` and
:func:`load_perceptual`; an absent or ``None`` entry or path means "not available")::

    {"lpips": {"net": "alex", "backbone": "alexnet-owt-7be5be79.pth",
               "calibration": "lpips/weights/v0.1/alex.pth"},
     "dists": {"backbone": "vgg16-397923af.pth", "calibration": "DISTS/weights.pt"}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .archs.backbones import Backbone, load_backbone, load_state_dict_file
from .device import resolve_device

__all__ = [
    "DISTS",
    "DISTS_CHANNELS",
    "LPIPS",
    "LPIPS_NETS",
    "NOT_AVAILABLE",
    "PERCEPTUAL_METRICS",
    "available_perceptual_metrics",
    "l2_pool",
    "load_dists",
    "load_lpips",
    "load_perceptual",
    "perceptual_availability",
    "score_slice",
    "score_stack",
]

#: Names of the perceptual metrics, as keys of the configuration mapping.
PERCEPTUAL_METRICS = ("lpips", "dists")

#: Table entry of a metric that cannot be computed.
NOT_AVAILABLE = "not available"

#: LPIPS networks: backbone name, tapped layers and their channels.
LPIPS_NETS = {
    "alex": ("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5"), (64, 192, 384, 256, 256)),
    "vgg": (
        "vgg16",
        ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
        (64, 128, 256, 512, 512),
    ),
}

#: Channels of the DISTS stages: the image itself, then VGG16 relu1_2 … relu5_3.
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)

# Input scaling of LPIPS v0.1 (its ScalingLayer), applied to images in [-1, 1].
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)

# DISTS stages after the first (VGG16 relu1_2 = features[0:4]): each is an L2 pooling
# (in place of the max-pooling at index ``start - 1``) then features[start:stop].
_DISTS_STAGES = ((5, 9), (10, 16), (17, 23), (24, 30))

# Smallest image side each metric accepts (VGG16 relu5_3 after four 2×2 poolings;
# AlexNet relu5 after the stride-4 convolution and two 3×3 poolings).
_MIN_SIZE = {"alexnet": 31, "vgg16": 16}


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide a feature map by its Euclidean norm over channels (LPIPS)."""
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity, version 0.1 ("linear" calibration).

    Images in [0, 1] are mapped to [-1, 1] and scaled by the package's ScalingLayer
    (not the ImageNet normalisation); each tapped feature map is normalised to unit
    length over channels, the squared difference is weighted over channels by the
    calibration's 1×1 convolution, averaged over space and summed over the taps.

    Parameters
    ----------
    backbone : Backbone
        AlexNet for ``net="alex"``, VGG16 for ``net="vgg"``.
    weights : sequence of torch.Tensor
        The five calibration weights, of shapes (1, C_k, 1, 1).
    net : {"alex", "vgg"}, optional
        Which LPIPS network ``backbone`` and ``weights`` belong to.

    Attributes
    ----------
    min_size : int
        Smallest image side the network accepts.
    """

    def __init__(self, backbone: Backbone, weights: Sequence[torch.Tensor], *, net: str = "alex"):
        super().__init__()
        name, self.layers, channels = _lpips_net(net)
        if backbone.name != name:
            raise ValueError(f"LPIPS net {net!r} needs a {name} backbone, got {backbone.name}")
        shapes = [(1, c, 1, 1) for c in channels]
        if [tuple(w.shape) for w in weights] != shapes:
            raise ValueError(
                f"LPIPS {net!r} weights must have shapes {shapes}, "
                f"got {[tuple(w.shape) for w in weights]}"
            )
        self.net, self.backbone, self.min_size = net, backbone, _MIN_SIZE[name]
        for k, w in enumerate(weights):
            self.register_buffer(f"lin{k}", w.detach().float().clone())
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1), False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1), False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the tapped backbone features of images in [0, 1], scaled as LPIPS does.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape (N, 1 or 3, H, W), values in [0, 1].

        Returns
        -------
        list of torch.Tensor
            The five feature maps (not yet normalised over channels).
        """
        x = self.backbone.preprocess(x, normalize=False)
        x = (2 * x - 1 - self.shift) / self.scale
        return list(self.backbone(x, self.layers, normalize=False).values())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the LPIPS distance of each image pair.

        Parameters
        ----------
        x, y : torch.Tensor
            Images of shape (N, 1 or 3, H, W), values in [0, 1].

        Returns
        -------
        torch.Tensor
            Distances of shape (N,), ≥ 0 for non-negative calibration weights.
        """
        total = 0
        for k, (fx, fy) in enumerate(zip(self.features(x), self.features(y), strict=True)):
            diff = (_unit_normalize(fx) - _unit_normalize(fy)).square()
            total = total + F.conv2d(diff, getattr(self, f"lin{k}")).mean(dim=(1, 2, 3))
        return total


def l2_pool(x: torch.Tensor) -> torch.Tensor:
    """L2 pooling of DISTS: the root of a Hann-weighted local mean of x², stride 2.

    The depthwise 3×3 filter is the outer product of ``numpy.hanning(5)[1:-1]`` with
    itself, normalised to sum 1; the input is zero-padded by one pixel.

    Parameters
    ----------
    x : torch.Tensor
        Feature map of shape (N, C, H, W).

    Returns
    -------
    torch.Tensor
        Pooled map of shape (N, C, ⌈H/2⌉, ⌈W/2⌉): sqrt(conv(x²) + 1e-12).
    """
    taps = np.hanning(5)[1:-1]
    window = torch.as_tensor(np.outer(taps, taps) / np.outer(taps, taps).sum())
    window = window.to(x).expand(x.shape[1], 1, 3, 3)
    pooled = F.conv2d(x.square(), window, stride=2, padding=1, groups=x.shape[1])
    return (pooled + 1e-12).sqrt()


class DISTS(nn.Module):
    """Deep image structure and texture similarity.

    VGG16 with every max-pooling replaced by :func:`l2_pool`; at the image itself and at
    relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the spatial means (texture term S1)
    and the variances and covariance (structure term S2) of the two images are compared
    channel by channel, with the calibrated weights ``alpha`` and ``beta`` normalised
    by their joint sum. Distance = 1 − Σ (α S1 + β S2).

    Parameters
    ----------
    backbone : Backbone
        VGG16.
    alpha, beta : torch.Tensor
        Calibration weights of shape (1, 1475, 1, 1) (1475 = sum of
        :data:`DISTS_CHANNELS`).

    Attributes
    ----------
    min_size : int
        Smallest image side accepted (1: L2 pooling never shrinks a map to nothing).
    """

    min_size = 1

    def __init__(self, backbone: Backbone, alpha: torch.Tensor, beta: torch.Tensor):
        super().__init__()
        if backbone.name != "vgg16":
            raise ValueError(f"DISTS needs a vgg16 backbone, got {backbone.name}")
        shape = (1, sum(DISTS_CHANNELS), 1, 1)
        for name, w in (("alpha", alpha), ("beta", beta)):
            if tuple(w.shape) != shape:
                raise ValueError(f"DISTS {name} must have shape {shape}, got {tuple(w.shape)}")
        self.backbone = backbone
        self.register_buffer("alpha", alpha.detach().float().clone())
        self.register_buffer("beta", beta.detach().float().clone())

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the six DISTS stages of images in [0, 1].

        Parameters
        ----------
        x : torch.Tensor
            Images of shape (N, 1 or 3, H, W), values in [0, 1].

        Returns
        -------
        list of torch.Tensor
            The images (three channels, not normalised), then the VGG16 relu1_2,
            relu2_2, relu3_3, relu4_3 and relu5_3 maps computed with L2 pooling.
        """
        x = self.backbone.preprocess(x, normalize=False)
        layers = self.backbone.features
        h = layers[0:4](self.backbone.preprocess(x))
        stages = [x, h]
        for start, stop in _DISTS_STAGES:
            h = layers[start:stop](l2_pool(h))
            stages.append(h)
        return stages

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return the DISTS distance of each image pair.

        Parameters
        ----------
        x, y : torch.Tensor
            Images of shape (N, 1 or 3, H, W), values in [0, 1].

        Returns
        -------
        torch.Tensor
            Distances of shape (N,); 0 for identical images.
        """
        c1 = c2 = 1e-6
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / total, DISTS_CHANNELS, dim=1)
        similarity = 0
        for fx, fy, alpha, beta in zip(
            self.features(x), self.features(y), alphas, betas, strict=True
        ):
            mx, my = fx.mean(dim=(2, 3), keepdim=True), fy.mean(dim=(2, 3), keepdim=True)
            vx = (fx - mx).square().mean(dim=(2, 3), keepdim=True)
            vy = (fy - my).square().mean(dim=(2, 3), keepdim=True)
            cxy = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            s1 = (2 * mx * my + c1) / (mx.square() + my.square() + c1)
            s2 = (2 * cxy + c2) / (vx + vy + c2)
            similarity = similarity + (alpha * s1 + beta * s2).sum(dim=(1, 2, 3))
        return 1 - similarity


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _lpips_net(net: str) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """Return the backbone name, taps and channels of an LPIPS network."""
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}: use one of {', '.join(LPIPS_NETS)}")
    return LPIPS_NETS[net]


def _check_entries(state, shapes, path, what):
    """Return the tensors of ``state`` named in ``shapes`` after checking their shapes."""
    missing = [key for key in shapes if key not in state]
    if missing:
        raise ValueError(f"{what} file {path} lacks the keys {', '.join(missing)}")
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {shape})"
        for key, shape in shapes.items()
        if tuple(state[key].shape) != shape
    ]
    if wrong:
        raise ValueError(f"{what} file {path} holds tensors of the wrong shape: {', '.join(wrong)}")
    return [state[key] for key in shapes]


def load_lpips(backbone: str | Path, calibration: str | Path, *, net: str = "alex") -> LPIPS:
    """Build LPIPS from local weight files.

    Parameters
    ----------
    backbone : str or pathlib.Path
        torchvision state dict of AlexNet (``net="alex"``, ``alexnet-owt-7be5be79.pth``)
        or VGG16 (``net="vgg"``, ``vgg16-397923af.pth``); see
        :func:`~emsrflow.archs.backbones.load_backbone`.
    calibration : str or pathlib.Path
        The ``lpips`` package's ``weights/v0.1/{alex,vgg}.pth``: keys
        ``lin{k}.model.1.weight`` (k = 0…4) of shapes (1, C_k, 1, 1).
    net : {"alex", "vgg"}, optional
        LPIPS network.

    Returns
    -------
    LPIPS
        In eval mode, frozen.

    Raises
    ------
    ValueError
        If ``net`` is unknown or a file is absent or malformed (the message names it).
    """
    name, _, channels = _lpips_net(net)
    what = f"LPIPS {net} calibration"
    state = load_state_dict_file(calibration, what)
    shapes = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(channels)}
    weights = _check_entries(state, shapes, calibration, what)
    return LPIPS(load_backbone(name, backbone), weights, net=net).eval().requires_grad_(False)


def load_dists(backbone: str | Path, calibration: str | Path) -> DISTS:
    """Build DISTS from local weight files.

    Parameters
    ----------
    backbone : str or pathlib.Path
        torchvision state dict of VGG16 (``vgg16-397923af.pth``); see
        :func:`~emsrflow.archs.backbones.load_backbone`.
    calibration : str or pathlib.Path
        The ``DISTS_pytorch`` package's ``weights.pt``: tensors ``alpha`` and ``beta`` of
        shape (1, 1475, 1, 1).

    Returns
    -------
    DISTS
        In eval mode, frozen.

    Raises
    ------
    ValueError
        If a file is absent or malformed (the message names it).
    """
    shape = (1, sum(DISTS_CHANNELS), 1, 1)
    state = load_state_dict_file(calibration, "DISTS calibration")
    alpha, beta = _check_entries(
        state, {"alpha": shape, "beta": shape}, calibration, "DISTS calibration"
    )
    return DISTS(load_backbone("vgg16", backbone), alpha, beta).eval().requires_grad_(False)


def perceptual_availability(config: Mapping | None) -> dict[str, str | None]:
    """Say which perceptual metrics a configuration allows, and why the others not.

    Only the configuration and the existence of the files are checked; the files are
    read (and checked in full) by :func:`load_perceptual`.

    Parameters
    ----------
    config : mapping or None
        Entries ``"lpips"`` (keys ``net``, ``backbone``, ``calibration``) and
        ``"dists"`` (keys ``backbone``, ``calibration``); an absent or ``None`` entry or
        path makes the metric not available.

    Returns
    -------
    dict of str to str or None
        For each of :data:`PERCEPTUAL_METRICS`: ``None`` where the metric can be
        computed, otherwise the reason it is not available (report it as
        :data:`NOT_AVAILABLE`).
    """
    config = config or {}
    return {metric: _unavailable(metric, config.get(metric)) for metric in PERCEPTUAL_METRICS}


def _unavailable(metric: str, spec) -> str | None:
    """Return why a metric's configuration entry does not allow it, or None."""
    if not spec:
        return f"{metric} is not configured"
    if not isinstance(spec, Mapping):
        return f"the {metric} entry must be a mapping of paths, got {spec!r}"
    if metric == "lpips" and spec.get("net", "alex") not in LPIPS_NETS:
        return f"unknown LPIPS net {spec.get('net')!r}: use one of {', '.join(LPIPS_NETS)}"
    for key in ("backbone", "calibration"):
        if not spec.get(key):
            return f"no {metric} {key} weights file configured"
        if not Path(spec[key]).is_file():
            return f"{metric} {key} weights file {spec[key]} does not exist"
    return None


def available_perceptual_metrics(config: Mapping | None) -> tuple[str, ...]:
    """Return the names of the perceptual metrics a configuration allows.

    Parameters
    ----------
    config : mapping or None
        As for :func:`perceptual_availability`.

    Returns
    -------
    tuple of str
        Some of :data:`PERCEPTUAL_METRICS`, in that order.
    """
    return tuple(name for name, reason in perceptual_availability(config).items() if not reason)


def load_perceptual(metric: str, spec: Mapping) -> LPIPS | DISTS:
    """Build a perceptual metric from its configuration entry.

    Parameters
    ----------
    metric : {"lpips", "dists"}
        Metric name.
    spec : mapping
        Its configuration entry: ``backbone`` and ``calibration`` paths, and for LPIPS
        the ``net`` (``"alex"`` by default).

    Returns
    -------
    LPIPS or DISTS

    Raises
    ------
    ValueError
        If the metric is unknown, a path is not configured or a file is absent or
        malformed.
    """
    if metric not in PERCEPTUAL_METRICS:
        raise ValueError(f"unknown perceptual metric {metric!r}: use lpips or dists")
    spec = spec or {}
    for key in ("backbone", "calibration"):
        if not spec.get(key):
            raise ValueError(f"{metric} needs a {key} weights file, none is configured")
    if metric == "lpips":
        return load_lpips(spec["backbone"], spec["calibration"], net=spec.get("net", "alex"))
    return load_dists(spec["backbone"], spec["calibration"])


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _check_images(reference, prediction, ndim, min_size):
    """Return both images as float32 arrays after checking shapes, dtypes and range."""
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(
            f"reference and prediction must have the same shape, got reference "
            f"{reference.shape} and prediction {prediction.shape}"
        )
    if reference.ndim != ndim:
        raise ValueError(f"expected {ndim}-D images, got shape {reference.shape}")
    if min(reference.shape[-2:]) < min_size:
        raise ValueError(
            f"images must be at least {min_size}×{min_size} pixels for this metric, "
            f"got shape {reference.shape}"
        )
    for name, image in (("reference", reference), ("prediction", prediction)):
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"{name} must be a float image in [0, 1], got dtype {image.dtype}")
        if image.size and not (image.min() >= 0 and image.max() <= 1):  # NaN fails too
            raise ValueError(
                f"{name} must have values in [0, 1], got [{image.min()}, {image.max()}]"
            )
    return reference.astype(np.float32), prediction.astype(np.float32)


@torch.no_grad()
def _score(metric, reference, prediction, device) -> list[float]:
    """Score (D, H, W) float32 arrays slice by slice on ``device``."""
    device = resolve_device(device)
    metric = metric.to(device).eval()
    scores = []
    for ref, pred in zip(reference, prediction, strict=True):
        x = torch.from_numpy(ref)[None, None].to(device)
        y = torch.from_numpy(pred)[None, None].to(device)
        scores.append(float(metric(x, y)[0]))
    return scores


def score_slice(
    metric: LPIPS | DISTS,
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    device: str | torch.device | None = None,
) -> float:
    """Score one 2D slice pair with a perceptual metric.

    Parameters
    ----------
    metric : LPIPS or DISTS
        From :func:`load_perceptual`, :func:`load_lpips` or :func:`load_dists`.
    reference, prediction : numpy.ndarray
        Float images of shape (H, W) with values in [0, 1].
    device : str, torch.device or None, optional
        Where to compute (see :func:`emsrflow.device.resolve_device`); the metric is
        moved there.

    Returns
    -------
    float
        The distance (lower is better; 0 for identical images).

    Raises
    ------
    ValueError
        If the shapes differ, are not 2D or are smaller than the metric accepts, or an
        image is not a float image in [0, 1].
    """
    reference, prediction = _check_images(reference, prediction, 2, metric.min_size)
    return _score(metric, reference[None], prediction[None], device)[0]


def score_stack(
    metric: LPIPS | DISTS,
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    device: str | torch.device | None = None,
) -> list[float]:
    """Score every slice of a (D, H, W) stack pair with a perceptual metric.

    Parameters
    ----------
    metric : LPIPS or DISTS
        From :func:`load_perceptual`, :func:`load_lpips` or :func:`load_dists`.
    reference, prediction : numpy.ndarray
        Float stacks of shape (D, H, W) with values in [0, 1].
    device : str, torch.device or None, optional
        Where to compute, as for :func:`score_slice`.

    Returns
    -------
    list of float
        One distance per slice.

    Raises
    ------
    ValueError
        As :func:`score_slice`, for 3D stacks.
    """
    reference, prediction = _check_images(reference, prediction, 3, metric.min_size)
    return _score(metric, reference, prediction, device)
