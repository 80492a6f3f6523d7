"""One fixed 3D segmentation pipeline for segmentation-aware evaluation of SR output.

Super-resolved EM is judged by what matters downstream: every method's output is
segmented by the *same* pipeline, and the segmentations are scored against ground truth
with :func:`emsrflow.metrics.voi` and :func:`emsrflow.metrics.adapted_rand_error`. The
published pipelines (Superhuman, MALA) use pretrained networks whose weights cannot be
had here, so a small one is trained openly, on labelled data of the study:

1. :class:`AffinityUNet`, a small anisotropic 3D U-Net, predicts the three
   nearest-neighbour affinities (z, y, x) of an EM volume in [0, 1];
2. :func:`train_affinity_net` trains it on image/label volumes with (optionally
   class-balanced) binary cross-entropy, through the package's training loop
   :func:`emsrflow.train.fit` (checkpointed, resumable);
3. :func:`predict_affinities` applies it tile by tile, in bounded memory;
4. :func:`segment` turns affinities into labels: a seeded watershed on the affinity
   graph (:func:`fragments`), then greedy agglomeration of the fragments by their mean
   boundary affinity (:func:`agglomerate`, the ``OneMinus<MeanAffinity>`` scheme of
   waterz, reimplemented in NumPy so that the pipeline has no compiled dependency).

Affinity convention (as waterz and MALA): channel ``a`` at voxel ``v`` is the affinity
between ``v`` and its neighbour ``v − e_a`` along axis ``a`` (0: z, 1: y, 2: x), so the
first plane of each channel has no edge. A ground-truth affinity is 1 where both voxels
carry the same *nonzero* label (:func:`affinities_from_labels`).

Label conventions: label 0 is "not an object". In the ISBI 2012 challenge labels, 255
marks cell interior and 0 membrane; the instances are the connected components of the
interior of each section (:func:`instances_from_membrane_labels`), and 0 there is a real
boundary class (``background="boundary"``: affinities to it are trained as 0). In sparse
annotations 0 may mean "unlabelled" instead (``background="unknown"``: edges touching it
are masked out of the loss). The built-in phantom (:class:`emsrflow.phantom.Phantom`)
gives instance labels directly, with 0 on membranes (:meth:`Phantom.hr_clean`).
"""

from __future__ import annotations

import csv
import functools
import heapq
import itertools
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from skimage import morphology
from torch import nn

from .device import resolve_device
from .io import to_float01
from .train import OptimSettings, fit

__all__ = [
    "AFFINITY_AXES",
    "AffinityUNet",
    "Settings",
    "affinities_from_labels",
    "affinity_loss",
    "agglomerate",
    "as_instances",
    "calibrate_threshold",
    "fragments",
    "instances_from_membrane_labels",
    "is_membrane_labels",
    "load_affinity_net",
    "predict_affinities",
    "segment",
    "segment_volume",
    "train_affinity_net",
]

#: Axes of the affinity channels: channel ``a`` links voxel ``v`` to ``v − e_a``.
AFFINITY_AXES = ("z", "y", "x")

_BACKGROUNDS = ("boundary", "unknown")


def _edge_slices(axis: int, ndim: int = 3) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index of the voxels ``v`` that have a neighbour ``v − e_axis``, and of those."""
    high = [slice(None)] * ndim
    low = [slice(None)] * ndim
    high[axis], low[axis] = slice(1, None), slice(None, -1)
    return tuple(high), tuple(low)


def _volume3d(array: Any, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{what} must be a 3D (z, y, x) volume, got shape {array.shape}")
    return array


def _affinities3d(affinities: Any) -> np.ndarray:
    affinities = np.asarray(affinities, dtype=np.float32)
    if affinities.ndim != 4 or affinities.shape[0] != 3:
        raise ValueError(
            f"affinities must have shape (3, z, y, x) (channels z, y, x), got {affinities.shape}"
        )
    if not np.all(np.isfinite(affinities)):
        raise ValueError("affinities must be finite everywhere")
    return affinities


# ---------------------------------------------------------------------------------------
# Ground truth


def affinities_from_labels(
    labels: Any, *, background: Literal["boundary", "unknown"] = "boundary"
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour affinity targets of an instance label volume, and their mask.

    Parameters
    ----------
    labels : array_like of int
        (z, y, x) instance labels; 0 is no object (membrane, background or unlabelled).
    background : {"boundary", "unknown"}
        Meaning of label 0. ``"boundary"`` (ISBI 2012 membranes, phantom membranes): an
        edge touching label 0 is a known boundary, target 0, in the mask. ``"unknown"``
        (sparse annotation): such edges are left out of the mask.

    Returns
    -------
    affinities : numpy.ndarray
        float32 (3, z, y, x): channel ``a`` at ``v`` is 1 where ``v`` and ``v − e_a``
        carry the same nonzero label, else 0.
    mask : numpy.ndarray
        float32 (3, z, y, x): 1 where the target is defined. The first plane of each
        channel (no neighbour ``v − e_a``) is always 0.

    Raises
    ------
    ValueError
        If ``labels`` is not 3D or ``background`` is not one of the two conventions.
    """
    labels = _volume3d(labels, "labels")
    if background not in _BACKGROUNDS:
        raise ValueError(f"background must be 'boundary' or 'unknown', got {background!r}")
    affinities = np.zeros((3, *labels.shape), np.float32)
    mask = np.zeros((3, *labels.shape), np.float32)
    for axis in range(3):
        high, low = _edge_slices(axis)
        here, there = labels[high], labels[low]
        affinities[axis][high] = (here == there) & (here != 0)
        mask[axis][high] = 1.0 if background == "boundary" else (here != 0) & (there != 0)
    return affinities, mask


def instances_from_membrane_labels(labels: Any, *, connectivity: int = 1) -> np.ndarray:
    """Instance labels from membrane/interior labels: 2D connected components per section.

    ISBI 2012 labels mark cell interior 255 and membrane 0; each connected component of
    the interior of a section is one instance. Sections are not linked (the ids of two
    sections never coincide), so train on such labels with ``z_affinity=False``.

    Parameters
    ----------
    labels : array_like
        (z, y, x) or (y, x); any nonzero value is interior.
    connectivity : {1, 2}
        In-plane connectivity of the interior: 1 (4-neighbourhood, the default: a
        one-pixel diagonal membrane separates) or 2 (8-neighbourhood).

    Returns
    -------
    numpy.ndarray
        uint32 labels of the same shape: 0 on membranes, instances numbered 1, 2, …
        section after section.

    Raises
    ------
    ValueError
        If ``labels`` is neither 2D nor 3D, or ``connectivity`` is not 1 or 2.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be (z, y, x) or (y, x), got shape {labels.shape}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(2, connectivity)
    sections = labels[None] if labels.ndim == 2 else labels
    out = np.zeros(sections.shape, np.uint32)
    offset = 0
    for k, section in enumerate(sections):
        components, count = ndimage.label(section != 0, structure=structure)
        out[k] = np.where(components > 0, components + offset, 0)
        offset += count
    return out[0] if labels.ndim == 2 else out


# ---------------------------------------------------------------------------------------
# Network


_NORMS = ("group", "batch", "none")


def is_membrane_labels(labels: Any) -> bool:
    """Whether labels are binary interior/membrane labels rather than instance ids.

    True for two values, 0 and the type's largest (255 in ISBI 2012's uint8 labels, or
    True for bool): such labels mark cell interiors, not which cell a voxel belongs to.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "bu":
        return False
    top = True if labels.dtype == bool else np.iinfo(labels.dtype).max
    values = np.unique(labels)
    return values.size == 2 and values[0] == 0 and values[1] == top


def as_instances(labels: Any) -> tuple[np.ndarray, bool]:
    """Instance labels of a label volume, and whether they link sections.

    Binary interior/membrane labels (:func:`is_membrane_labels`) become the connected
    components of each section (:func:`instances_from_membrane_labels`), whose ids do not
    link sections; any other labels are instance ids already, linked in 3D.

    Returns
    -------
    labels : numpy.ndarray
    linked_in_z : bool
    """
    if is_membrane_labels(labels):
        return instances_from_membrane_labels(labels), False
    return np.asarray(labels), True


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class AffinityUNet(nn.Module):
    """Small 3D U-Net predicting the three nearest-neighbour affinities (z, y, x).

    Each level has two 3×3×3 convolutions with normalisation and ReLU; levels are
    joined by max pooling and transposed convolutions with skip connections. EM stacks
    are anisotropic (sections thicker than pixels), so by default only y and x are
    pooled. Inputs of any size are padded (edge values) to a multiple of the total
    pooling factor and the output cropped back.

    Parameters
    ----------
    channels : int
        Feature channels of the first level.
    levels : int
        Resolution levels (1: no pooling).
    growth : int
        Factor of the channels from one level to the next.
    pool_z : bool
        Pool (and upsample) z as well as y and x.
    norm : {"group", "batch", "none"}
        Normalisation after each convolution. ``"group"`` (group normalisation, up to 8
        groups) trains best in short runs and adapts to the contrast of each input, but
        its statistics are those of the tile, so use large tiles. ``"batch"`` is a
        fixed affine map in eval mode (one fixed function of the input whatever the
        tiling), but needed far longer training on the phantom, as did ``"none"``.

    Attributes
    ----------
    spec : dict
        The constructor's arguments and ``type: "affinity_unet"`` (saved in checkpoints;
        :func:`load_affinity_net` rebuilds the network from it).
    scale : int
        1: the output has the input's size.

    Notes
    -----
    Input (N, 1, d, h, w) intensities in [0, 1]; output (N, 3, d, h, w) logits (apply
    a sigmoid for affinities).
    """

    def __init__(
        self,
        channels: int = 16,
        levels: int = 3,
        *,
        growth: int = 2,
        pool_z: bool = False,
        norm: Literal["group", "batch", "none"] = "group",
    ):
        super().__init__()
        for name, value in (("channels", channels), ("levels", levels), ("growth", growth)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AffinityUNet: {name} must be an integer ≥ 1, got {value!r}")
        if not isinstance(pool_z, bool):
            raise ValueError(f"AffinityUNet: pool_z must be true or false, got {pool_z!r}")
        if norm not in _NORMS:
            raise ValueError(f"AffinityUNet: norm must be one of {_NORMS}, got {norm!r}")
        channels, levels, growth = int(channels), int(levels), int(growth)
        self.spec = {
            "type": "affinity_unet",
            "channels": channels,
            "levels": levels,
            "growth": growth,
            "pool_z": pool_z,
            "norm": norm,
        }
        self.scale = 1
        widths = [channels * growth**level for level in range(levels)]
        self.pool = (2 if pool_z else 1, 2, 2)
        self.multiple = tuple(p ** (levels - 1) for p in self.pool)
        self.down = nn.ModuleList(
            _Block(c_in, c_out, norm) for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True)
        )
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(wide, narrow, self.pool, stride=self.pool)
            for narrow, wide in itertools.pairwise(widths)
        )
        self.up = nn.ModuleList(_Block(2 * narrow, narrow, norm) for narrow in widths[:-1])
        self.head = nn.Conv3d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the affinity logits of a batch (N, 1, d, h, w) → (N, 3, d, h, w)."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"AffinityUNet expects (N, 1, d, h, w) input, got {tuple(x.shape)}")
        size = x.shape[2:]
        pad = [(-n) % m for n, m in zip(size, self.multiple, strict=True)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        x = x - 0.5
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool3d(x, self.pool)
            x = block(x)
            skips.append(x)
        skips.pop()
        for upsample, block in zip(reversed(self.upsample), reversed(self.up), strict=True):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        x = self.head(x)
        return x[:, :, : size[0], : size[1], : size[2]]


def load_affinity_net(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> AffinityUNet:
    """Rebuild a trained :class:`AffinityUNet` from a checkpoint of :func:`train_affinity_net`.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    AffinityUNet
        In eval mode.

    Raises
    ------
    ValueError
        If the checkpoint holds another kind of network.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    spec = dict(checkpoint.get("spec", {})) if isinstance(checkpoint, dict) else {}
    if spec.pop("type", None) != "affinity_unet":
        raise ValueError(f"{path}: not a checkpoint of an affinity U-Net (spec {spec})")
    net = AffinityUNet(**spec)
    net.load_state_dict(checkpoint["model"])
    return net.to(resolve_device(device)).eval()


# ---------------------------------------------------------------------------------------
# Training


def _patch(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        value = ()
    if len(value) != 3 or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1 for n in value
    ):
        raise ValueError(
            f"segmentation training setting 'patch' must be three integers ≥ 1 (d, h, w), "
            f"got {value!r}"
        )
    return tuple(int(n) for n in value)  # type: ignore[return-value]


@dataclass(frozen=True)
class Settings(OptimSettings):
    """Settings of affinity training (:func:`train_affinity_net`).

    The optimisation settings are those of :class:`emsrflow.train.OptimSettings`, with
    defaults for a small network (2000 steps of 2 boxes, learning rate 10⁻³ halved every
    1000 steps, a curve row every 10 steps); ``patch`` is the (d, h, w) box, (8, 64, 64)
    by default. Further:

    Parameters
    ----------
    balance : bool
        Class-balanced loss: per channel, the mean BCE of the positive (affinity 1) and
        of the negative edges weigh one half each.
    z_affinity : bool
        Train the z channel; false for labels whose ids do not link sections (ISBI 2012
        instances from :func:`instances_from_membrane_labels`).
    background : {"boundary", "unknown"}
        Meaning of label 0, see :func:`affinities_from_labels`.
    """

    steps: int = 2000
    batch: int = 2
    patch: tuple[int, int, int] = (8, 64, 64)  # type: ignore[assignment]
    lr: float = 1e-3
    lr_halve_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 10
    balance: bool = True
    z_affinity: bool = True
    background: Literal["boundary", "unknown"] = "boundary"

    def __post_init__(self) -> None:
        patch = _patch(self.patch)
        self._put("patch", patch[-1])  # OptimSettings checks an integer patch
        try:
            super().__post_init__()
        finally:
            self._put("patch", patch)
        for name in ("balance", "z_affinity"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"segmentation training setting {name!r} must be true or false, "
                    f"got {getattr(self, name)!r}"
                )
        if self.background not in _BACKGROUNDS:
            raise ValueError(
                f"segmentation training setting 'background' must be 'boundary' or "
                f"'unknown', got {self.background!r}"
            )


def affinity_loss(
    model: nn.Module,
    image: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    balance: bool = True,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked binary cross-entropy of the predicted affinity logits.

    Parameters
    ----------
    model : torch.nn.Module
        The network, (N, 1, d, h, w) → (N, 3, d, h, w) logits.
    image : torch.Tensor
        (N, 1, d, h, w) input.
    target, mask : torch.Tensor
        (N, 3, d, h, w) affinity targets and loss mask (:func:`affinities_from_labels`).
    balance : bool
        Per channel, average the mean BCE over positive and over negative edges (each
        class weighs ½; a class absent from the batch leaves the other alone); else
        the plain mean over masked edges.
    precision : {"fp32", "bf16"}
        Autocast of the forward pass; the loss is computed in float32.

    Returns
    -------
    total : torch.Tensor
        Scalar: the mean of the per-channel losses of the channels with masked edges.
    parts : torch.Tensor
        The per-channel losses (z, y, x), detached (0 for a channel without edges).
    """
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(image)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    dims = (0, 2, 3, 4)
    if balance:
        positive, negative = mask * (target > 0.5), mask * (target <= 0.5)
        n_pos, n_neg = positive.sum(dims), negative.sum(dims)
        mean_pos = (bce * positive).sum(dims) / n_pos.clamp_min(1)
        mean_neg = (bce * negative).sum(dims) / n_neg.clamp_min(1)
        weight_pos = torch.where(n_neg > 0, 0.5, 1.0) * (n_pos > 0)
        weight_neg = torch.where(n_pos > 0, 0.5, 1.0) * (n_neg > 0)
        parts = weight_pos * mean_pos + weight_neg * mean_neg
    else:
        parts = (bce * mask).sum(dims) / mask.sum(dims).clamp_min(1)
    present = (mask.sum(dims) > 0).to(parts.dtype)
    total = (parts * present).sum() / present.sum().clamp_min(1)
    return total, parts.detach()


class _PatchSampler:
    """Random (d, h, w) training boxes with flips (and y↔x transposes for square boxes).

    A box is read with one extra voxel before it along each axis where the volume
    allows, so that its first planes have affinity targets too; the augmentation acts
    on the labels before the targets are computed.
    """

    def __init__(self, images, labels, settings: Settings, rng: np.random.Generator):
        self.images, self.labels, self.settings, self.rng = images, labels, settings, rng
        self.shapes = []
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            shape = tuple(int(n) for n in getattr(image, "shape", ()))
            if len(shape) != 3 or tuple(getattr(label, "shape", ())) != shape:
                raise ValueError(
                    f"training volume {index}: image shape {shape} and label shape "
                    f"{tuple(getattr(label, 'shape', ()))} must be the same 3D (z, y, x) shape"
                )
            if any(p > n for p, n in zip(settings.patch, shape, strict=True)):
                raise ValueError(
                    f"training volume {index}: patch {settings.patch} is larger than the "
                    f"volume {shape}; lower the segmentation training setting 'patch'"
                )
            self.shapes.append(shape)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng, patch = self.rng, self.settings.patch
        index = int(rng.integers(len(self.shapes)))
        shape = self.shapes[index]
        margin = [int(n > p) for n, p in zip(shape, patch, strict=True)]
        box = tuple(
            slice(start, start + p + m)
            for start, p, m in (
                (int(rng.integers(n - p - m + 1)), p, m)
                for n, p, m in zip(shape, patch, margin, strict=True)
            )
        )
        image = to_float01(np.asarray(self.images[index][box]))
        label = np.asarray(self.labels[index][box])
        flips = rng.integers(2, size=3).astype(bool)
        transpose = patch[1] == patch[2] and bool(rng.integers(2))
        for axis in np.flatnonzero(flips):
            image, label = np.flip(image, axis), np.flip(label, axis)
        if transpose:
            image, label = image.transpose(0, 2, 1), label.transpose(0, 2, 1)
        target, mask = affinities_from_labels(label, background=self.settings.background)
        if not self.settings.z_affinity:
            mask[0] = 0.0
        keep = tuple(slice(m, None) for m in margin)
        image = np.ascontiguousarray(image[keep], dtype=np.float32)
        return image[None], target[(slice(None), *keep)], mask[(slice(None), *keep)]

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, targets, masks = zip(*(self.sample() for _ in range(size)), strict=True)
        return np.stack(images), np.stack(targets), np.stack(masks)


def _as_volumes(volumes: Any, what: str) -> list[Any]:
    if hasattr(volumes, "shape") and len(volumes.shape) == 3:
        return [volumes]
    if isinstance(volumes, Sequence) and volumes and all(hasattr(v, "shape") for v in volumes):
        return list(volumes)
    raise ValueError(f"{what} must be a 3D volume or a non-empty sequence of 3D volumes")


def _read_curve(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    columns = rows[0]
    values = np.array(rows[1:], dtype=np.float64).reshape(-1, len(columns))
    return {name: values[:, i] for i, name in enumerate(columns)}


def train_affinity_net(
    images: Any,
    labels: Any,
    settings: Settings | None = None,
    rng: np.random.Generator | None = None,
    *,
    net: AffinityUNet | None = None,
    checkpoint: str | os.PathLike | None = None,
    curve: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """Train an affinity network on image/instance-label volumes.

    Boxes of ``settings.patch`` voxels are drawn at random (random flips along every
    axis, random y↔x transposes of square boxes) and the network is optimised by
    :func:`emsrflow.train.fit` (Adam, halving learning rate, checkpoints) on
    :func:`affinity_loss`.

    Parameters
    ----------
    images : array_like or sequence
        A (z, y, x) volume or a sequence of them (NumPy arrays or
        :class:`emsrflow.io.VolumeReader`), intensities in [0, 1] (integers are scaled
        by their dtype's maximum).
    labels : array_like or sequence
        Instance labels of the same shapes (0: see ``settings.background``).
    settings : Settings, optional
        Hyperparameters (defaults: ``Settings()``).
    rng : numpy.random.Generator, optional
        Source of the patches; ``np.random.default_rng(settings.seed)`` by default.
    net : AffinityUNet, optional
        The network to train in place; by default a fresh ``AffinityUNet()`` initialised
        from ``settings.seed``.
    checkpoint, curve : str or os.PathLike, optional
        Checkpoint and training-curve CSV of :func:`emsrflow.train.fit` (an existing
        checkpoint is resumed). If not given, both go to a temporary folder that is
        removed at the end.
    progress : bool
        Show a progress bar.

    Returns
    -------
    net : torch.nn.Module
        The trained network, in eval mode, on the training device.
    curve : dict of str to numpy.ndarray
        The training curve by column: ``step``, ``loss`` (mean loss since the previous
        row), ``loss_z``, ``loss_y``, ``loss_x``, ``lr`` and ``seconds``.

    Raises
    ------
    ValueError
        If the volumes do not match or are smaller than the patch, or the checkpoint is
        of another network or other settings.
    """
    settings = Settings() if settings is None else settings
    if not isinstance(settings, Settings):
        raise ValueError(f"settings must be a segment.Settings, got {type(settings).__name__}")
    rng = np.random.default_rng(settings.seed) if rng is None else rng
    images, labels = _as_volumes(images, "images"), _as_volumes(labels, "labels")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image volume(s) but {len(labels)} label volume(s)")
    sampler = _PatchSampler(images, labels, settings, rng)
    if net is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            net = AffinityUNet()
    loss = functools.partial(affinity_loss, balance=settings.balance)
    with tempfile.TemporaryDirectory(prefix="emsrflow-affinity-") as folder:
        checkpoint = Path(folder, "checkpoint.pt") if checkpoint is None else Path(checkpoint)
        curve = Path(folder, "curve.csv") if curve is None else Path(curve)
        net = fit(
            net,
            sampler.batch,
            loss,
            settings,
            rng,
            terms=("loss_z", "loss_y", "loss_x"),
            checkpoint=checkpoint,
            curve=curve,
            progress=progress,
        )
        return net, _read_curve(curve)


# ---------------------------------------------------------------------------------------
# Tiled prediction


def _tiles(n: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, end) of the tile, (start, end) of the part written.

    Tile starts are multiples of ``align`` (the network's pooling grid) where the step
    allows; the last tile then ends at ``n`` and may be up to ``align − 1`` longer.
    """
    tile = min(tile, n)
    step = (tile - overlap) // align * align
    if step < 1:
        step, align = max(tile - overlap, 1), 1
    last = max(n - tile, 0) // align * align
    starts = [*range(0, last, step), last]
    ends = [s + tile for s in starts[:-1]] + [n]
    bounds = [0] + [(b + end) // 2 for end, b in zip(ends, starts[1:], strict=False)] + [n]
    return [
        (s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, ends, strict=True))
    ]


def _triple(value: Any, name: str, minimum: int) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int | np.integer) else tuple(value)
    if len(values) != 3 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ValueError(f"{name} must be an integer ≥ {minimum} or three of them, got {value!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def predict_affinities(
    net: nn.Module,
    volume: Any,
    *,
    tile: int | Sequence[int] = (16, 256, 256),
    overlap: int | Sequence[int] = (4, 32, 32),
    device: str | torch.device | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Predict the affinities of a volume tile by tile, in bounded memory.

    Tiles of ``tile`` voxels (clipped to the volume) overlap by ``overlap``; each
    output voxel is taken from the tile in which it lies farthest from a cut (the
    middle of each overlap is the seam), so that tile borders are never used where a
    neighbouring tile has context. Tiles start on the network's pooling grid (its
    ``multiple`` attribute, as :class:`AffinityUNet`'s), so that a network without
    tile-dependent normalisation gives the same affinities as on the whole volume
    once the overlap spans its receptive field. Only one tile is in memory at a time
    (besides the output).

    Parameters
    ----------
    net : torch.nn.Module
        Affinity network, (N, 1, d, h, w) → (N, 3, d, h, w) logits.
    volume : array_like
        (z, y, x) volume (NumPy array or :class:`emsrflow.io.VolumeReader`), intensities
        in [0, 1] (integers scaled by their dtype's maximum). Read one tile at a time.
    tile, overlap : int or sequence of int
        Tile size and overlap (d, h, w) in voxels; the overlap must be smaller than the
        tile.
    device : str or torch.device, optional
        Where to run (the network is moved there); the network's device by default.
    out : numpy.ndarray, optional
        float32-compatible (3, z, y, x) array to write into (a memory map or a Zarr
        array, for volumes larger than memory).

    Returns
    -------
    numpy.ndarray
        ``out`` (or a new float32 array): affinities in [0, 1] (sigmoid of the logits).

    Raises
    ------
    ValueError
        If the volume is not 3D, a tile or overlap is invalid, or ``out`` has the wrong
        shape.
    """
    shape = tuple(int(n) for n in getattr(volume, "shape", np.shape(volume)))
    if len(shape) != 3 or 0 in shape:
        raise ValueError(f"volume must be a non-empty 3D (z, y, x) volume, got shape {shape}")
    tile, overlap = _triple(tile, "tile", 1), _triple(overlap, "overlap", 0)
    if any(o >= t for o, t in zip(overlap, tile, strict=True)):
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    if out is None:
        out = np.empty((3, *shape), np.float32)
    elif tuple(out.shape) != (3, *shape):
        raise ValueError(f"out must have shape {(3, *shape)}, got {tuple(out.shape)}")
    if device is None:
        first = next(net.parameters(), None)
        target = first.device if first is not None else torch.device("cpu")
    else:
        target = resolve_device(device)
    was_training = net.training
    net.to(target).eval()
    align = tuple(int(m) for m in getattr(net, "multiple", (1, 1, 1)))
    plans = [_tiles(n, t, o, a) for n, t, o, a in zip(shape, tile, overlap, align, strict=True)]
    try:
        with torch.inference_mode():
            for parts in itertools.product(*plans):
                box = tuple(slice(s, e) for s, e, _, _ in parts)
                data = to_float01(np.asarray(volume[box]))
                logits = net(torch.from_numpy(np.ascontiguousarray(data))[None, None].to(target))
                probs = torch.sigmoid(logits.float())[0].cpu().numpy()
                keep = tuple(slice(a - s, b - s) for s, _, a, b in parts)
                write = tuple(slice(a, b) for _, _, a, b in parts)
                out[(slice(None), *write)] = probs[(slice(None), *keep)]
    finally:
        net.train(was_training)
    return out


# ---------------------------------------------------------------------------------------
# Watershed and agglomeration


def _smallest(affinities: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Smallest affinity of the edges incident to each voxel along ``axes`` (1 if none)."""
    smallest = np.ones(affinities.shape[1:], np.float32)
    for axis in axes:
        high, low = _edge_slices(axis)
        edge = affinities[axis][high]
        for side in (high, low):
            np.minimum(smallest[side], edge, out=smallest[side])
    return smallest


def _largest(affinities: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Largest affinity of the edges incident to each voxel along ``axes`` (0 if none)."""
    largest = np.zeros(affinities.shape[1:], np.float32)
    for axis in axes:
        high, low = _edge_slices(axis)
        edge = affinities[axis][high]
        for side in (high, low):
            np.maximum(largest[side], edge, out=largest[side])
    return largest


def _markers(
    affinities: np.ndarray,
    axes: Sequence[int],
    seed_threshold: float,
    h: float,
    linked: np.ndarray,
) -> np.ndarray:
    """Seeds of the watershed of a (3, z, y, x) block, numbered 1, 2, …, along ``axes``.

    The h-maxima of the distance transform of the interior (voxels all of whose edges
    are strong), one seed per connected maximum, or the largest distance of an interior
    component without an h-maximum; and, for thin objects without an interior, each
    component of the graph of strong edges that holds no seed, if it has two voxels
    or more or is ``linked`` (a voxel with a strong edge along an axis not in
    ``axes``: a one-voxel cross-section of an object).
    """
    shape = affinities.shape[1:]
    interior = _smallest(affinities, axes) > seed_threshold
    peaks = np.zeros(shape, bool)
    if interior.any():
        distance = ndimage.distance_transform_edt(interior)
        peaks = morphology.h_maxima(distance, h) > 0 if h > 0 else morphology.local_maxima(distance)
        peaks &= interior
        components, count = ndimage.label(interior)
        seeded = np.zeros(count + 1, bool)
        seeded[components[peaks]] = True
        if not seeded[1:].all():
            top = np.asarray(ndimage.maximum(distance, components, np.arange(count + 1)))
            peaks |= (~seeded[components]) & (components > 0) & (distance == top[components])
    structure = ndimage.generate_binary_structure(len(shape), len(shape))
    markers, count = ndimage.label(peaks, structure=structure)
    markers = markers.astype(np.int64).ravel()
    n = markers.size
    index = np.arange(n, dtype=np.int64).reshape(shape)
    rows, cols = [], []
    for axis in axes:
        high, low = _edge_slices(axis)
        strong = affinities[axis][high] > seed_threshold
        rows.append(index[high][strong])
        cols.append(index[low][strong])
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(rows_all.size, np.int8), (rows_all, cols_all)), (n, n))
    groups, group = csgraph.connected_components(graph, directed=False)
    seeded = np.zeros(groups, bool)
    seeded[group[markers > 0]] = True
    extra = ~seeded[group] & ((np.bincount(group, minlength=groups)[group] > 1) | linked.ravel())
    if extra.any():
        _, new = np.unique(group[extra], return_inverse=True)
        markers[extra] = count + 1 + new.ravel()
    return markers.reshape(shape)


def _flood(affinities: np.ndarray, markers: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Seeded watershed on the affinity graph: a maximum spanning forest rooted in the seeds.

    Every voxel joins the seed it reaches through the path whose weakest edge is
    strongest (flooding along the highest affinities first). Computed as the minimum
    spanning tree (weights 2 − affinity) of the voxel graph plus a root node joined to
    every seed voxel by lighter edges; cutting the root leaves one tree per seed voxel.
    """
    shape = markers.shape
    seeds = np.flatnonzero(markers)
    if seeds.size == 0:
        return np.ones(shape, np.int64)
    n = markers.size
    index = np.arange(n, dtype=np.int64).reshape(shape)
    rows, cols, weights = [], [], []
    for axis in axes:
        high, low = _edge_slices(axis, markers.ndim)
        rows.append(index[high].ravel())
        cols.append(index[low].ravel())
        weights.append(2.0 - affinities[axis][high].astype(np.float64).ravel())
    rows.append(np.full(seeds.size, n, np.int64))
    cols.append(seeds)
    weights.append(np.full(seeds.size, 0.5))
    graph = sparse.csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n + 1, n + 1),
    )
    tree = csgraph.minimum_spanning_tree(graph).tocoo()
    keep = (tree.row < n) & (tree.col < n)
    forest = sparse.coo_matrix(
        (np.ones(int(keep.sum()), np.int8), (tree.row[keep], tree.col[keep])), shape=(n, n)
    )
    _, component = csgraph.connected_components(forest, directed=False)
    owner = np.zeros(int(component.max()) + 1, np.int64)
    owner[component[seeds]] = markers.ravel()[seeds]
    return owner[component].reshape(shape)


def fragments(
    affinities: Any,
    *,
    seed_threshold: float = 0.5,
    h: float = 2.0,
    boundary_threshold: float = 0.05,
    in_xy: bool = True,
    in_plane: bool = False,
) -> np.ndarray:
    """Over-segment a volume into fragments by a seeded watershed of its affinities.

    1. Interior: voxels all of whose incident affinities exceed ``seed_threshold``.
    2. Seeds: the maxima of the Euclidean distance transform of the interior that stand
       at least ``h`` above their surroundings (h-maxima), one per connected maximum;
       an interior component without one is seeded at its largest distance.
    3. Flooding: every voxel joins the seed it reaches through the path of strongest
       affinities (watershed on the edge-weighted affinity graph, computed exactly as
       a maximum spanning forest rooted in the seeds).
    4. Boundary voxels, none of whose edges exceed ``boundary_threshold`` (membrane
       centres), are set to 0: they would dilute the mean boundary affinity between
       the fragments they lie between (the ``aff_threshold_low`` of waterz).

    With perfect affinities (:func:`affinities_from_labels`), every object with an
    interior voxel, or with two voxels joined by an edge, is covered exactly by its own
    fragments.

    Parameters
    ----------
    affinities : array_like
        (3, z, y, x) affinities in [0, 1] (channels z, y, x).
    seed_threshold : float
        Affinity above which an edge is inside an object.
    h : float
        Minimum depth in voxels of a distance-transform maximum to seed a fragment
        (0: every local maximum).
    boundary_threshold : float
        Voxels none of whose edges exceed this are boundary voxels (fragment 0).
    in_xy : bool
        Make the fragments section by section (2D, in-plane affinities only), as for
        anisotropic EM; else in 3D (z-affinities too; the watershed graph of the whole
        volume then takes roughly 200 bytes per voxel).
    in_plane : bool
        Ignore the z-affinities entirely (implies ``in_xy``).

    Returns
    -------
    numpy.ndarray
        uint64 fragment ids (not necessarily consecutive), unique over the volume; 0 on
        boundary voxels.

    Raises
    ------
    ValueError
        If the affinities are not (3, z, y, x) and finite, or a threshold is not in
        [0, 1].
    """
    affinities = _affinities3d(affinities)
    _check_thresholds(seed_threshold=seed_threshold, boundary_threshold=boundary_threshold)
    axes = (1, 2) if in_plane else (0, 1, 2)
    if in_xy or in_plane:
        linked = _largest(affinities, axes) > seed_threshold
        out = np.zeros(affinities.shape[1:], np.uint64)
        offset = 0
        for k in range(affinities.shape[1]):
            section = affinities[:, k : k + 1]
            markers = _markers(section, (1, 2), seed_threshold, h, linked[k : k + 1])
            out[k] = _flood(section, markers, (1, 2))[0] + offset
            offset += int(markers.max(initial=1))
    else:
        linked = np.zeros(affinities.shape[1:], bool)
        markers = _markers(affinities, axes, seed_threshold, h, linked)
        out = _flood(affinities, markers, axes).astype(np.uint64)
    out[_largest(affinities, axes) <= boundary_threshold] = 0
    return out


def _check_thresholds(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            value = math.nan
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {values[name]!r}")


def _region_graph(
    labels: np.ndarray, affinities: np.ndarray, axes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (u < v) of touching regions with the sum and count of their edge affinities.

    ``labels`` are dense ids 0 … n − 1.
    """
    n = int(labels.max(initial=0)) + 1
    keys, values = [], []
    for axis in axes:
        high, low = _edge_slices(axis)
        u, v = labels[high].ravel(), labels[low].ravel()
        cut = u != v
        u, v = u[cut], v[cut]
        keys.append(np.minimum(u, v) * n + np.maximum(u, v))
        values.append(affinities[axis][high].ravel()[cut].astype(np.float64))
    if not keys or sum(k.size for k in keys) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0), np.zeros(0)
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    sums = np.bincount(inverse, weights=np.concatenate(values), minlength=unique.size)
    counts = np.bincount(inverse, minlength=unique.size).astype(np.float64)
    return unique // n, unique % n, sums, counts


def agglomerate(
    fragments: Any,
    affinities: Any,
    *,
    threshold: float = 0.5,
    in_plane: bool = False,
) -> np.ndarray:
    """Merge fragments greedily by the mean affinity of their boundary (waterz-style).

    The region adjacency graph holds, for each pair of touching regions, the sum and
    number of the affinity edges between them. The pair of highest mean affinity is
    merged (sums and counts of the merged region's boundaries add up), and so on while
    that mean exceeds ``threshold``. This is waterz's ``OneMinus<MeanAffinity>``
    agglomeration with waterz threshold ``1 − threshold`` (exact priority queue).

    Parameters
    ----------
    fragments : array_like of int
        (z, y, x) fragment ids (:func:`fragments`); 0 marks boundary voxels, whose
        edges are left out of the region graph.
    affinities : array_like
        (3, z, y, x) affinities in [0, 1].
    threshold : float
        Merge while the highest mean boundary affinity is above this; 1 merges nothing,
        0 merges every touching pair (with a nonzero affinity).
    in_plane : bool
        Use only the y and x edges: no region spans two sections.

    Returns
    -------
    numpy.ndarray
        uint64 segment ids 1, 2, … (in order of the fragments' smallest ids); 0 where
        ``fragments`` is 0.

    Raises
    ------
    ValueError
        If the shapes do not match or ``threshold`` is not a number in [0, 1].
    """
    affinities = _affinities3d(affinities)
    labels = _volume3d(fragments, "fragments")
    if labels.shape != affinities.shape[1:]:
        raise ValueError(
            f"fragments of shape {labels.shape} do not match affinities of shape {affinities.shape}"
        )
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    ids, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(labels.shape).astype(np.int64)
    us, vs, sums, counts = _region_graph(dense, affinities, (1, 2) if in_plane else (0, 1, 2))
    if ids[0] == 0:  # boundary voxels: no edges
        keep = (us != 0) & (vs != 0)
        us, vs, sums, counts = us[keep], vs[keep], sums[keep], counts[keep]
    # Each boundary is one record [sum, count, u, v, alive], shared by both regions'
    # neighbour maps and by its heap entries; a boundary that only changes hands in a
    # merge keeps its mean and so its heap entry, and only boundaries that add up are
    # queued again.
    parent = list(range(len(ids)))  # a list: scalar access in the loop below is fast
    neighbours: list[dict[int, list]] = [{} for _ in ids]
    heap = []
    for u, v, total, count in zip(
        us.tolist(), vs.tolist(), sums.tolist(), counts.tolist(), strict=True
    ):
        edge = [total, count, u, v, True]
        neighbours[u][v] = neighbours[v][u] = edge
        heap.append((-total / count, u, v, edge))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        score, _, _, edge = pop(heap)
        if -score <= threshold:
            break
        if not edge[4] or edge[0] / edge[1] != -score:
            continue  # outdated entry: the boundary was merged or has grown since
        u, v = edge[2], edge[3]
        if len(neighbours[u]) < len(neighbours[v]):
            u, v = v, u
        parent[v] = u
        edge[4] = False
        merged = neighbours[u]
        del merged[v]
        for k, moved in neighbours[v].items():
            if k == u:
                continue
            around = neighbours[k]
            del around[v]
            stats = merged.get(k)
            if stats is None:  # the boundary v–k becomes u–k, its mean unchanged
                moved[2], moved[3] = u, k
                merged[k] = around[u] = moved
            else:  # u and v both touched k: the two boundaries add up
                stats[0] += moved[0]
                stats[1] += moved[1]
                moved[4] = False
                push(heap, (-stats[0] / stats[1], min(u, k), max(u, k), stats))
        neighbours[v] = {}
    parent = np.asarray(parent)
    # Each fragment's root; then number the segments by their smallest fragment.
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    _, segment_ids = np.unique(parent, return_inverse=True)
    segment_ids = segment_ids.ravel() + (0 if ids[0] == 0 else 1)
    return segment_ids[dense].astype(np.uint64)


def segment(
    affinities: Any,
    *,
    threshold: float = 0.5,
    seed_threshold: float = 0.5,
    h: float = 2.0,
    boundary_threshold: float = 0.05,
    fragments_in_xy: bool = True,
    in_plane: bool = False,
) -> np.ndarray:
    """Segment a volume from its affinities: seeded watershed, then agglomeration.

    :func:`fragments` over-segments (a watershed of the affinity graph from the maxima
    of the distance to the boundaries), then :func:`agglomerate` merges fragments while
    their mean boundary affinity exceeds ``threshold``; last, every boundary voxel left
    out of the fragments joins the nearest segment of its section.

    Parameters
    ----------
    affinities : array_like
        (3, z, y, x) affinities in [0, 1] (channels z, y, x; see
        :func:`affinities_from_labels`), e.g. from :func:`predict_affinities`.
    threshold : float
        Agglomeration threshold on the mean boundary affinity (higher: more segments).
        Part of the fixed pipeline: choose it once, on held-out labelled reference
        images, then use it for every method compared. With networks trained with the
        class-balanced loss (which leans towards boundaries), 0.3–0.5 scored best on
        the phantom and on ISBI 2012 (VOI lowest near 0.3, adapted Rand near 0.5).
    seed_threshold, h, boundary_threshold
        Interior threshold, seed depth and boundary-voxel threshold of
        :func:`fragments`.
    fragments_in_xy : bool
        Make the fragments section by section (the default, for anisotropic stacks);
        the agglomeration still links sections through the z-affinities.
    in_plane : bool
        Segment every section on its own, ignoring the z-affinities (for networks
        trained without them, e.g. on ISBI 2012 labels).

    Returns
    -------
    numpy.ndarray
        uint64 segment ids 1, 2, … of every voxel (no label 0).

    Raises
    ------
    ValueError
        If the affinities are not (3, z, y, x) and finite, or a threshold is invalid.
    """
    affinities = _affinities3d(affinities)
    pieces = fragments(
        affinities,
        seed_threshold=seed_threshold,
        h=h,
        boundary_threshold=boundary_threshold,
        in_xy=fragments_in_xy,
        in_plane=in_plane,
    )
    return _fill(agglomerate(pieces, affinities, threshold=threshold, in_plane=in_plane))


def _fill(labels: np.ndarray) -> np.ndarray:
    """Give every 0 voxel the label of the nearest labelled voxel of its section.

    A section without any label becomes one new segment.
    """
    next_id = int(labels.max(initial=0)) + 1
    for section in labels:
        empty = section == 0
        if not empty.any():
            continue
        if empty.all():
            section[...] = next_id
            next_id += 1
            continue
        _, (rows, cols) = ndimage.distance_transform_edt(empty, return_indices=True)
        section[empty] = section[rows[empty], cols[empty]]
    return labels


def segment_volume(
    net: nn.Module,
    volume: Any,
    *,
    tile: int | Sequence[int] = (16, 256, 256),
    overlap: int | Sequence[int] = (4, 32, 32),
    device: str | torch.device | None = None,
    **options: Any,
) -> np.ndarray:
    """Segment an EM volume: :func:`predict_affinities`, then :func:`segment`.

    Parameters
    ----------
    net : torch.nn.Module
        Trained affinity network.
    volume : array_like
        (z, y, x) intensities in [0, 1] (integers scaled by their dtype's maximum).
    tile, overlap, device
        As for :func:`predict_affinities`.
    **options
        Keyword options of :func:`segment` (``threshold``, ``seed_threshold``, ``h``,
        ``fragments_in_xy``, ``in_plane``).

    Returns
    -------
    numpy.ndarray
        uint64 segment ids of the volume.
    """
    affinities = predict_affinities(net, volume, tile=tile, overlap=overlap, device=device)
    return segment(affinities, **options)


def calibrate_threshold(
    net: nn.Module,
    images: Any,
    labels: Any,
    *,
    thresholds: Sequence[float] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
    tile: int | Sequence[int] = (16, 256, 256),
    overlap: int | Sequence[int] = (4, 32, 32),
    device: str | torch.device | None = None,
    in_plane: bool = False,
) -> dict[str, Any]:
    """Choose the agglomeration threshold of :func:`segment` on labelled reference data.

    The pipeline is fixed before any method is scored: its threshold is the one with the
    lowest mean VOI (split + merge, per section, label 0 ignored) over the given
    reference volumes, which should be the network's training data, never the data the
    methods are evaluated on.

    Parameters
    ----------
    net : torch.nn.Module
        Trained affinity network.
    images, labels : array_like or sequence of array_like
        Reference volumes (intensities in [0, 1]) and their instance labels, alike in shape.
    thresholds : sequence of float
        Candidates.
    tile, overlap, device
        As for :func:`predict_affinities`.
    in_plane : bool
        Segment each section on its own (labels that do not link sections).

    Returns
    -------
    dict
        ``threshold`` (the best), ``voi`` (the mean VOI of every candidate, in order),
        ``thresholds`` and ``in_plane``.
    """
    from .metrics import voi

    images, labels = _as_volumes(images, "images"), _as_volumes(labels, "labels")
    if len(images) != len(labels) or not thresholds:
        raise ValueError(
            "calibrate_threshold needs as many label volumes as images and a threshold"
        )
    scores = np.zeros(len(thresholds))
    sections = 0
    for image, truth in zip(images, labels, strict=True):
        affinities = predict_affinities(net, image, tile=tile, overlap=overlap, device=device)
        truth = np.asarray(truth)
        for index, threshold in enumerate(thresholds):
            segments = segment(affinities, threshold=float(threshold), in_plane=in_plane)
            scores[index] += sum(sum(voi(t, s)) for t, s in zip(truth, segments, strict=True))
        sections += len(truth)
    means = scores / sections
    return {
        "threshold": float(thresholds[int(np.argmin(means))]),
        "thresholds": [float(t) for t in thresholds],
        "voi": [round(float(v), 4) for v in means],
        "in_plane": bool(in_plane),
    }


def train_pipeline(
    images: Any,
    labels: Any,
    options: dict[str, Any],
    *,
    linked: bool,
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the fixed segmentation pipeline of a fold: an affinity U-Net, its threshold.

    Trains :class:`AffinityUNet` on labelled reference volumes
    (:func:`train_affinity_net`, seeded), then chooses its agglomeration threshold on the
    same volumes (:func:`calibrate_threshold`).

    Parameters
    ----------
    images, labels : array_like or sequence of array_like
        Reference volumes (intensities in [0, 1]) and their instance labels
        (:func:`as_instances`).
    options : dict
        The config's ``segmentation`` mapping: ``net`` (:class:`AffinityUNet` keywords),
        ``settings`` (:class:`Settings`), ``thresholds``, ``tile`` and ``overlap``.
    linked : bool
        Whether the labels link sections (3D instances; :func:`as_instances`); if not,
        no z affinity is trained and every section is segmented on its own.
    checkpoint, curve : path-like
        The network's checkpoint (resumed when present) and loss curve CSV.

    Returns
    -------
    net : torch.nn.Module
        The trained network.
    calibration : dict
        :func:`calibrate_threshold`'s result with ``tile`` and ``overlap``; its
        :func:`segment_keywords` are those of :func:`segment_volume`.
    """
    settings = Settings.from_dict({**options["settings"], "z_affinity": linked})
    torch.manual_seed(settings.seed)  # the initial weights, as the rest of training
    net = AffinityUNet(**options["net"])
    net, _ = train_affinity_net(
        images, labels, settings, net=net, checkpoint=checkpoint, curve=curve
    )
    tiling = {"tile": options["tile"], "overlap": options["overlap"]}
    calibration = calibrate_threshold(
        net, images, labels, thresholds=options["thresholds"], in_plane=not linked, **tiling
    )
    return net, {**calibration, **tiling}


def segment_keywords(calibration: dict[str, Any]) -> dict[str, Any]:
    """Pick the keywords of :func:`segment_volume` out of a :func:`train_pipeline` calibration.

    They are ``threshold``, ``tile``, ``overlap`` and ``in_plane``.
    """
    return {k: calibration[k] for k in ("threshold", "tile", "overlap", "in_plane")}
