"""Self-supervised isotropic reconstruction of anisotropic stacks (A2I-3DEM, Sec. II).

An anisotropic stack has thick slices (ρ times the lateral pixel) along z. Its xy planes
are sharp, its xz and yz planes are not. The network learns the mapping from degraded to
sharp planes on the xy planes themselves:

Pairs
    A patch P_xy of an xy plane is integrated along one in-plane axis into thick rows
    exactly as the axial acquisition integrates z (:func:`emsrflow.degrade.integrate_axis`:
    a box of width ρ convolved with an axial Gaussian blur), gets Gaussian noise and one
    random offset per thick row (section-to-section brightness, the line artefacts of an
    axial plane), and is interpolated back, cubic along that axis, to its size: the
    network input. The target is P_xy. The axis is drawn per sample (both orientations),
    after a random rotation and flip.
Loss
    L1 + α·PDL (eq. 5), α = 0.01, Adam with learning rate 1e-4.
Inference
    The stack is interpolated to the isotropic grid, cubic along z (the same
    interpolation as the pairs'); the network runs on every xz plane and on every yz
    plane (tiled, :func:`emsrflow.infer.predict_stack`); the two passes are stacked back
    into volumes and averaged. The isotropic grid is processed in blocks of planes along
    z, each with a halo of context planes (:func:`reconstruct_block`), so memory is
    bounded by the block whatever the volume size, and blocks can be spread over jobs.

The projected distribution loss (Delbracio, Talebi and Milanfar, 2020) is the 1D
Wasserstein distance between the per-channel distributions of feature maps of the output
and the target, computed by sorting. The paper takes VGG features; ImageNet weights
cannot be fetched here, so the features are the image and its horizontal and vertical
differences (:func:`projected_distribution_loss`), named so in every record.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .degrade import integrate_axis, slice_weights_within
from .infer import predict_stack
from .io import from_float01, to_float01, write_slabs
from .train import OptimSettings, fit

__all__ = [
    "PASSES",
    "IsoPairSampler",
    "IsoSettings",
    "axial_degrade",
    "cubic_matrix",
    "isotropic_depth",
    "isotropic_objective",
    "projected_distribution_loss",
    "reconstruct",
    "reconstruct_block",
    "simulate_anisotropic",
    "train_isotropic",
    "upsample_axis",
]

log = logging.getLogger(__name__)

#: Inference passes: planes xz (fixed y) and yz (fixed x) of the isotropic grid.
PASSES = ("xz", "yz")

#: Names of the loss parts in the training curve.
TERMS = ("loss_l1", "loss_pdl")


def _range(name: str, value: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise ValueError(
            f"isotropic training setting {name!r} must be a range [low, high] with "
            f"0 ≤ low ≤ high, got {value!r}"
        )
    return low, high


@dataclass(frozen=True)
class IsoSettings(OptimSettings):
    """Settings of self-supervised isotropic training (A2I-3DEM defaults).

    The optimisation settings are those of :class:`emsrflow.train.OptimSettings`
    (``patch`` is the side M of the square xy patches); further:

    Parameters
    ----------
    alpha : float
        Weight α of the projected distribution loss (eq. 5).
    axial_blur : tuple of float
        Range of the axial Gaussian blur σ in lateral pixels, drawn per sample.
    noise : tuple of float
        Range of the Gaussian noise σ (0–255 scale) added to the thick slices.
    line_noise : tuple of float
        Range of σ (0–255 scale) of the random offset of each thick slice.
    axes : tuple of int
        In-plane axes a pair may be degraded along, drawn per sample: ``(0, 1)`` both
        (the network finds the axial direction itself), ``(0,)`` the rows only, the
        orientation of the xz and yz planes at inference (their rows are z). The tissue
        turns by the random rotation either way.
    """

    lr: float = 1e-4
    patch: int = 96
    alpha: float = 0.01
    axial_blur: tuple[float, float] = (0.0, 1.0)
    noise: tuple[float, float] = (0.0, 4.0)
    line_noise: tuple[float, float] = (0.0, 2.0)
    axes: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = float(self.alpha) if not isinstance(self.alpha, bool) else math.nan
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"isotropic training setting 'alpha' must be ≥ 0, got {self.alpha!r}")
        self._put("alpha", alpha)
        for name in ("axial_blur", "noise", "line_noise"):
            self._put(name, _range(name, getattr(self, name)))
        try:
            axes = tuple(sorted({int(a) for a in self.axes}))
        except (TypeError, ValueError):
            axes = ()
        if not axes or not set(axes) <= {0, 1}:
            raise ValueError(
                f"isotropic training setting 'axes' must list 0 and/or 1, got {self.axes!r}"
            )
        self._put("axes", axes)


def isotropic_depth(slices: int, rho: float) -> int:
    """Return the number of isotropic planes covering ``slices`` thick slices of thickness ρ."""
    return max(1, round(slices * rho))


def _keys(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = −½ (reproduces quadratics)."""
    t = np.abs(t)
    near = 1.5 * t**3 - 2.5 * t**2 + 1
    far = -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def cubic_matrix(n: int, size: int) -> np.ndarray:
    """Matrix (size × n) of cubic interpolation from n samples to ``size`` area-aligned ones.

    Output sample j sits at input coordinate (j + ½)·n/size − ½; samples past the ends
    repeat the end values. float32, read-only (cached).
    """
    position = (np.arange(size) + 0.5) * n / size - 0.5
    base = np.floor(position).astype(int)
    matrix = np.zeros((size, n), np.float64)
    for offset in range(-1, 3):
        index = base + offset
        np.add.at(matrix, (np.arange(size), np.clip(index, 0, n - 1)), _keys(position - index))
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def upsample_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Interpolate thick slices to ``size`` planes along ``axis``, cubic, area-aligned.

    Slice k's centre lands at isotropic coordinate (k + ½)·ρ − ½ with ρ = size / n,
    where the axial model (:func:`emsrflow.degrade.integrate_axis`) puts it; the
    interpolation is Keys' cubic convolution (a = −½).

    Parameters
    ----------
    array : numpy.ndarray
        Float data in [0, 1] with n slices along ``axis``.
    axis : int
        Axis to interpolate.
    size : int
        Output length along ``axis``.

    Returns
    -------
    numpy.ndarray
        float32, clipped to [0, 1].
    """
    data = np.moveaxis(np.asarray(array, np.float32), axis, -1)
    matrix = cubic_matrix(data.shape[-1], size).T
    return np.moveaxis(np.clip(data @ matrix, 0.0, 1.0), -1, axis)


def axial_degrade(
    image: np.ndarray,
    axis: int,
    rho: float,
    *,
    blur: float = 0.0,
    noise: float = 0.0,
    line_noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Degrade a lateral image along one axis the way the axial planes are degraded.

    Parameters
    ----------
    image : numpy.ndarray
        2D float image in [0, 1].
    axis : {0, 1}
        The in-plane axis playing z.
    rho : float
        Slice thickness in pixels (≥ 1, possibly non-integer).
    blur : float, optional
        Axial Gaussian blur σ in pixels.
    noise, line_noise : float, optional
        σ (0–255 scale) of the pixel noise and of the per-slice offsets.
    rng : numpy.random.Generator, optional
        Needed when ``noise`` or ``line_noise`` is positive.

    Returns
    -------
    degraded : numpy.ndarray
        The network input: thick slices interpolated back, cubic, to ``round(n·ρ)``
        pixels along ``axis`` (n = ``floor(length / ρ)`` thick slices), float32.
    target : numpy.ndarray
        ``image`` cropped to the same shape (the thick slices cover it exactly).
    """
    image = np.asarray(image, np.float32)
    thick = integrate_axis(image, axis, rho, blur)
    if noise > 0 or line_noise > 0:
        if rng is None:
            raise ValueError("axial_degrade needs an rng to add noise")
        thick = thick + np.float32(noise / 255) * rng.standard_normal(thick.shape, np.float32)
        shape = [1, 1]
        shape[axis] = thick.shape[axis]
        thick = thick + np.float32(line_noise / 255) * rng.standard_normal(shape, np.float32)
    size = isotropic_depth(thick.shape[axis], rho)
    degraded = upsample_axis(np.clip(thick, 0.0, 1.0), axis, size)
    target = image[:size] if axis == 0 else image[:, :size]
    return degraded, target


class IsoPairSampler:
    """Self-supervised training pairs from the xy planes of anisotropic stacks.

    Parameters
    ----------
    volumes : sequence
        Anisotropic stacks with ``.shape`` (z, y, x) and ``vol[z, y0:y1, x0:x1]`` (NumPy
        arrays or :class:`emsrflow.io.VolumeReader`), all of thickness ``rho``.
    rho : float
        Slice thickness in lateral pixels.
    settings : IsoSettings
        Patch size and degradation ranges.
    rng : numpy.random.Generator
        Source of all randomness.

    Raises
    ------
    ValueError
        If there are no volumes, the patch does not fit in a plane, or the patch holds no
        thick slice.
    """

    def __init__(self, volumes: Sequence[Any], rho: float, settings: IsoSettings, rng):
        self.volumes, self.rho, self.settings, self.rng = list(volumes), float(rho), settings, rng
        if not self.volumes:
            raise ValueError("no anisotropic volumes given")
        for index, volume in enumerate(self.volumes):
            shape = tuple(volume.shape)
            if len(shape) != 3 or settings.patch > min(shape[1:]):
                raise ValueError(
                    f"anisotropic volume {index}: shape {shape} has no xy patch of "
                    f"{settings.patch} pixels; lower the isotropic setting 'patch'"
                )
        self.size = isotropic_depth(math.floor(settings.patch / self.rho + 1e-9), self.rho)
        if settings.patch < self.rho:
            raise ValueError(f"patch {settings.patch} is thinner than one slice (ρ = {rho})")

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Draw one (input, target) pair, each (size, size) float32."""
        rng, m, s = self.rng, self.settings.patch, self.settings
        volume = self.volumes[int(rng.integers(len(self.volumes)))]
        depth, height, width = volume.shape
        z, i, j = (int(rng.integers(n)) for n in (depth, height - m + 1, width - m + 1))
        patch = np.rot90(to_float01(np.asarray(volume[z, i : i + m, j : j + m])), rng.integers(4))
        patch = patch[:, ::-1] if rng.integers(2) else patch
        axis = s.axes[int(rng.integers(len(s.axes)))]
        degraded, target = axial_degrade(
            np.ascontiguousarray(patch),
            axis,
            self.rho,
            blur=round(rng.uniform(*s.axial_blur), 2),  # a cached integration matrix
            noise=rng.uniform(*s.noise),
            line_noise=rng.uniform(*s.line_noise),
            rng=rng,
        )
        crop = (slice(0, self.size), slice(0, self.size))
        return degraded[crop], np.ascontiguousarray(target[crop])

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``size`` pairs as (size, 1, s, s) float32 input and target arrays."""
        inputs, targets = zip(*(self.sample() for _ in range(size)), strict=True)
        return np.stack(inputs)[:, None], np.stack(targets)[:, None]


def projected_distribution_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Projected distribution loss between two batches of images.

    The mean over channels and samples of the 1D Wasserstein-1 distance between the
    value distributions of each feature map, computed as the L1 distance of the sorted
    values. Features: the image and its horizontal and vertical differences.

    Parameters
    ----------
    output, target : torch.Tensor
        (N, 1, H, W).

    Returns
    -------
    torch.Tensor
        Scalar.
    """

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        return [
            x.flatten(1),
            (x[..., :, 1:] - x[..., :, :-1]).flatten(1),
            (x[..., 1:, :] - x[..., :-1, :]).flatten(1),
        ]

    distances = [
        F.l1_loss(a.sort(dim=1).values, b.sort(dim=1).values)
        for a, b in zip(features(output), features(target), strict=True)
    ]
    return torch.stack(distances).mean()


def isotropic_objective(
    model: nn.Module,
    degraded: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.01,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 + α·PDL of the network's output on degraded planes (A2I-3DEM eq. 5).

    Returns
    -------
    total : torch.Tensor
        The scalar loss.
    terms : torch.Tensor
        The unweighted L1 and PDL terms, detached.
    """
    with torch.autocast(degraded.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        output = model(degraded)
    output = output.float()
    terms = torch.stack([F.l1_loss(output, target), projected_distribution_loss(output, target)])
    return terms[0] + alpha * terms[1], terms.detach()


def train_isotropic(
    model: nn.Module,
    volumes: Sequence[Any],
    rho: float,
    settings: IsoSettings,
    *,
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    progress: bool = True,
) -> nn.Module:
    """Train a same-size network self-supervised on the xy planes of anisotropic stacks.

    Parameters
    ----------
    model : torch.nn.Module
        Network from :func:`emsrflow.archs.build_network` with ``scale`` 1.
    volumes : sequence
        Anisotropic stacks (see :class:`IsoPairSampler`).
    rho : float
        Their slice thickness in lateral pixels.
    settings : IsoSettings
        Hyperparameters.
    checkpoint, curve, progress
        As for :func:`emsrflow.train.fit` (curve columns: step, loss, loss_l1,
        loss_pdl, lr, seconds).

    Returns
    -------
    torch.nn.Module
        The trained network, in eval mode.

    Raises
    ------
    ValueError
        If the network does not keep the size (``scale`` ≠ 1) or the volumes do not fit.
    """
    if getattr(model, "scale", None) != 1:
        raise ValueError(
            f"isotropic reconstruction needs a same-size network (scale 1), got "
            f"{getattr(model, 'spec', {}).get('type')!r} with scale {getattr(model, 'scale', None)}"
        )
    rng = np.random.default_rng(settings.seed)
    sampler = IsoPairSampler(volumes, rho, settings, rng)
    log.info(
        "self-supervised isotropic pairs: ρ = %.3g, %d volume(s), %d² patches",
        rho,
        len(sampler.volumes),
        sampler.size,
    )
    return fit(
        model,
        sampler.batch,
        functools.partial(isotropic_objective, alpha=settings.alpha),
        settings,
        rng,
        terms=TERMS,
        checkpoint=checkpoint,
        curve=curve,
        progress=progress,
    )


def simulate_anisotropic(volume: Any, rho: float, k0: int = 0, k1: int | None = None) -> np.ndarray:
    """Average an isotropic volume along z into slices ρ thick (the validation protocol).

    Slice k is the mean of the isotropic sections in [k·ρ − ½, (k + 1)·ρ − ½] (partial
    sections weighted by their overlap; :func:`emsrflow.degrade.slice_weights`).

    Parameters
    ----------
    volume : array-like
        (z, y, x) isotropic volume: a NumPy array or :class:`emsrflow.io.VolumeReader`;
        only the sections each slice needs are read.
    rho : float
        Slice thickness in sections (≥ 1).
    k0, k1 : int, optional
        Range of slices to make (default: all ``floor(z / ρ)``).

    Returns
    -------
    numpy.ndarray
        float32 (k1 − k0, y, x) stack in [0, 1].
    """
    depth = int(volume.shape[0])
    slices = math.floor(depth / rho + 1e-9)
    if not rho >= 1 or slices < 1:
        raise ValueError(f"{depth} sections hold no slice of thickness ρ = {rho} (ρ ≥ 1)")
    k1 = slices if k1 is None else k1
    out = np.empty((max(0, k1 - k0), *volume.shape[1:]), np.float32)
    for i, k in enumerate(range(k0, k1)):
        index, weights = slice_weights_within(k, rho, 0.0, depth)
        low = int(index.min())
        block = to_float01(np.asarray(volume[low : int(index.max()) + 1, :, :]))
        out[i] = np.tensordot(weights.astype(np.float32), block[index - low], axes=1)
    return out


def _block_rows(n: int, depth: int, z0: int, z1: int) -> tuple[np.ndarray, int, int]:
    """Rows z0..z1 of the cubic z-interpolation matrix and the slice range they read."""
    rows = cubic_matrix(n, depth)[z0:z1]
    used = np.flatnonzero(np.any(rows != 0, axis=0))
    k0, k1 = int(used[0]), int(used[-1]) + 1
    return rows[:, k0:k1], k0, k1


def reconstruct_block(
    model: nn.Module | None,
    volume: Any,
    rho: float,
    z0: int,
    z1: int,
    *,
    halo: int = 16,
    passes: Sequence[str] = PASSES,
    **options: Any,
) -> np.ndarray:
    """Isotropic sections ``z0`` to ``z1`` of the reconstruction of an anisotropic stack.

    The stack is interpolated cubic along z onto the isotropic planes ``z0 − halo`` to
    ``z1 + halo`` (clipped to the volume); each pass runs the network on the xz (or yz)
    planes of that block, whose rows are z; the passes are averaged and the halo is cut
    off. The network therefore sees ``halo`` planes of context above and below the
    block, as a tile sees its overlap: a result depends on the block grid (the ``slab``
    of :func:`reconstruct`) as tiled inference depends on its tiles, and not at all on
    how blocks are spread over jobs. Memory holds ``z1 − z0 + 2·halo`` sections of the
    isotropic grid (three times, in float32) besides the network's tiles.

    Parameters
    ----------
    model : torch.nn.Module or None
        Same-size network, or None for cubic interpolation alone.
    volume : array-like
        (z, y, x) anisotropic stack: a NumPy array or :class:`emsrflow.io.VolumeReader`
        (only the slices the block needs are read); intensities as :func:`to_float01`.
    rho : float
        Slice thickness in lateral pixels.
    z0, z1 : int
        Isotropic sections to return, ``0 ≤ z0 < z1 ≤ isotropic_depth(z, ρ)``.
    halo : int, optional
        Planes of context on each side of the block (≥ 0).
    passes : sequence of {'xz', 'yz'}, optional
        Plane orientations to run and average.
    **options
        Passed to :func:`emsrflow.infer.predict_stack` (tile, overlap, batch, tta,
        precision, device). ``tta=True`` averages the 4 flips of each plane
        (``tta="flips"``): the quarter turns of the 8 dihedral transforms would put z
        along the columns, which is not how the network was trained.

    Returns
    -------
    numpy.ndarray
        float32 (z1 − z0, y, x) in [0, 1].

    Raises
    ------
    ValueError
        If a pass is unknown, the volume is not 3D or the block is outside the grid.
    """
    unknown = sorted(set(passes) - set(PASSES)) or ([] if passes else ["none"])
    if unknown:
        raise ValueError(f"unknown isotropic pass(es) {unknown}; choose from {PASSES}")
    shape = tuple(int(n) for n in volume.shape)
    if len(shape) != 3:
        raise ValueError(f"anisotropic volume must be 3D (z, y, x), got shape {shape}")
    depth = isotropic_depth(shape[0], rho)
    if not 0 <= z0 < z1 <= depth or halo < 0:
        raise ValueError(
            f"block {z0}:{z1} with halo {halo} is outside the {depth} isotropic planes"
        )
    a, b = max(0, z0 - halo), min(depth, z1 + halo)
    rows, k0, k1 = _block_rows(shape[0], depth, a, b)
    stack = to_float01(np.asarray(volume[k0:k1, :, :]))
    block = np.clip(np.tensordot(rows, stack, axes=1), 0.0, 1.0)
    if model is None:
        return np.ascontiguousarray(block[z0 - a : z1 - a], np.float32)
    if options.get("tta") is True:
        options = {**options, "tta": "flips"}
    total = np.zeros((z1 - z0, *shape[1:]), np.float32)
    for name in passes:
        axis = 1 if name == "xz" else 2
        planes = np.ascontiguousarray(np.moveaxis(block, axis, 0))
        result = np.moveaxis(predict_stack(model, planes, **options), 0, axis)
        total += result[z0 - a : z1 - a]
    return total / len(passes)


def reconstruct(
    model: nn.Module | None,
    volume: Any,
    rho: float,
    target: str,
    *,
    voxel_size: Sequence[float],
    slab: int = 32,
    halo: int = 16,
    passes: Sequence[str] = PASSES,
    chunks: Sequence[int] | None = None,
    dtype: Any = np.float32,
    **options: Any,
) -> None:
    """Reconstruct an isotropic volume from an anisotropic stack, block by block.

    The isotropic grid (``isotropic_depth(z, ρ)`` planes) is cut into blocks of ``slab``
    planes, each reconstructed with ``halo`` planes of context
    (:func:`reconstruct_block`) and written as it is done, so memory is bounded by the
    block whatever the depth. With ``model=None`` the result is the cubic interpolation
    itself (the baseline).

    Parameters
    ----------
    model : torch.nn.Module or None
        Same-size network, or None for cubic interpolation alone.
    volume : array-like
        (z, y, x) anisotropic stack: a NumPy array or :class:`emsrflow.io.VolumeReader`.
    rho : float
        Slice thickness in lateral pixels.
    target : str
        Output volume (see :class:`emsrflow.io.VolumeWriter`), written atomically.
    voxel_size : sequence of float
        Isotropic output voxel (z, y, x) in nm.
    slab : int, optional
        Isotropic planes per block (≥ 1).
    halo : int, optional
        Planes of context on each side of a block (≥ 0).
    passes : sequence of {'xz', 'yz'}, optional
        Plane orientations to run and average.
    chunks : sequence of int, optional
        Chunk shape of the output.
    dtype : numpy.dtype, optional
        Output type (float32, or uint8/uint16 scaled from [0, 1]).
    **options
        Passed to :func:`emsrflow.infer.predict_stack` (tile, overlap, batch, tta,
        precision, device).

    Raises
    ------
    ValueError
        If a pass is unknown, the volume is not 3D, or ``slab`` is not positive.
    """
    if int(slab) < 1:
        raise ValueError(f"slab must be at least 1 isotropic plane, got {slab}")
    shape = tuple(int(n) for n in volume.shape)
    depth = isotropic_depth(shape[0], rho) if len(shape) == 3 else 0
    log.info("isotropic reconstruction: %d planes in blocks of %d, halo %d", depth, slab, halo)

    def render(z0: int, z1: int) -> np.ndarray:
        block = reconstruct_block(model, volume, rho, z0, z1, halo=halo, passes=passes, **options)
        return from_float01(block, dtype)

    write_slabs(
        target, (depth, *shape[1:]), voxel_size, render, slab=int(slab), chunks=chunks, dtype=dtype
    )
