r"""Large-factor (8×, 16×) EM super-resolution with generative priors: training and inference.

Training of the three GPEMSR stages (Shou et al., CVPR 2024; the networks and losses
are in :mod:`emsrflow.archs.gpemsr`), each through the resumable loop
:func:`emsrflow.train.fit` (checkpoints, training curves, bit-identical resume):

Stage I, :func:`train_codebook`
    The VQGAN (:class:`~emsrflow.archs.gpemsr.VQAutoencoder`) on single HR patches with
    L1 + λ_c·L_c, and from step ``adversarial_start`` on also λ_adv·L_adv against a
    :class:`~emsrflow.archs.gpemsr.PatchDiscriminator` (the critic), which has its own
    Adam (β = 0.9, 0.99, the authors') and lazy R1 regularisation (every ``r1_every``
    critic steps, weighted ``r1_weight / 2 · r1_every``, as in the authors' code). In
    every adversarial step the critic is updated first, on the real patches and the
    generator's reconstructions of the step (detached), then the generator's loss is
    computed with the updated critic (the authors update the generator first; both use
    the same reconstructions). The critic runs in float32 whatever ``precision``.
Stage II, :func:`train_indexer`
    The indexer of :class:`~emsrflow.archs.gpemsr.GenerativePrior` with the frozen Stage I
    network loaded from its checkpoint: cross-entropy of the indexer's logits for the LR
    patch to the codes the frozen encoder gives the HR patch (``targets``).
Stage III, :func:`train_reconstruction`
    :class:`~emsrflow.archs.gpemsr.GPEMSR` with the frozen prior loaded from the Stage II
    checkpoint, on 2N + 1 = 5 adjacent LR sections: L1 + λ·L_Mfid,
    λ = :func:`~emsrflow.archs.gpemsr.fidelity_weight` of the factor by default.

Patches come from :class:`SectionSampler`: a random section of a random volume pair, a
random LR square and the HR square exactly ``scale`` times larger over the same field of
view, for Stage III the LR squares of the sections ``z − 2 … z + 2`` too (sections
beyond the ends of the volume replicate the end section), one random rotation by a
multiple of 90° and flips applied alike to all of them. Settings: :class:`CodebookSettings`,
:class:`IndexerSettings`, :class:`ReconstructionSettings`; ``patch`` is always the *HR*
patch size.

LR training data can be made from HR volumes with :func:`downsample_bicubic`
(area-aligned PyTorch bicubic with anti-aliasing, ``F.interpolate(mode="bicubic",
antialias=True, align_corners=False)``, via :func:`emsrflow.resize.bicubic`).

Distributed data-parallel training on one node: a trainer started by ``torchrun``
(environment ``WORLD_SIZE`` > 1) initialises the process group (NCCL on CUDA, Gloo on
the CPU), wraps the trained network (and Stage I's critic) in
:class:`~torch.nn.parallel.DistributedDataParallel`, gives rank r its own patch stream
(rank 0 the seed's, rank r > 0 ``default_rng([seed, r])``), so that the global batch is
``world × batch``; only rank 0 writes the checkpoint and the curve (its own losses),
which then holds the random states of every rank, so that a distributed run resumes with
the same number of processes. The command line (:func:`main`)::

    torchrun --standalone --nproc_per_node G -m emsrflow.largefactor stage1 --config stage1.json \
        --checkpoint stage1.pt --curve stage1.csv

Inference on volumes: :func:`predict_volume` super-resolves every section z from the
window z − 2 … z + 2 (replicated at the ends), tile by tile with blended overlaps
(:func:`emsrflow.infer.plan_tiles`), reading one section at a time, so memory holds
five LR sections and one output section whatever the volume's size.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .archs import build_network
from .archs.gpemsr import (
    PatchDiscriminator,
    VQAutoencoder,
    discriminator_adversarial_loss,
    fidelity_weight,
    generator_adversarial_loss,
    gpemsr_objective,
    indexer_objective,
    r1_penalty,
)
from .device import resolve_device
from .infer import blend_tiles, plan_blend
from .io import VolumeWriter, from_float01, open_volume, to_float01
from .resize import bicubic
from .train import OptimSettings, fit, integer_setting, load_model, real_setting

__all__ = [
    "CodebookSettings",
    "IndexerSettings",
    "ReconstructionSettings",
    "SectionSampler",
    "build_prior",
    "build_reconstruction",
    "downsample_bicubic",
    "iter_predict_volume",
    "main",
    "predict_volume",
    "train_codebook",
    "train_indexer",
    "train_reconstruction",
]

log = logging.getLogger(__name__)

#: Curve columns (after ``step, loss``) of the three stages.
CODEBOOK_TERMS = ("l1", "codebook", "g_adversarial", "d_adversarial", "r1")
INDEXER_TERMS = ("cross_entropy", "accuracy")
RECONSTRUCTION_TERMS = ("l1", "fidelity")

#: HR patches must be multiples of the codebook's compression p; LR patches of Stages II
#: and III multiples of GPEMSR's window (its pyramid and pooling).
HR_MULTIPLE, LR_MULTIPLE = 16, 4

#: Stage I architecture keywords (VQAutoencoder's but the scale), which Stage II takes
#: from the Stage I checkpoint.
_STAGE1_KEYS = tuple(k for k in inspect.signature(VQAutoencoder).parameters if k != "scale")


# ---------------------------------------------------------------------------------------
# Degradation


def downsample_bicubic(hr: np.ndarray, factor: int, *, clip: bool = True) -> np.ndarray:
    """Downsample HR sections by an integer factor with anti-aliased bicubic interpolation.

    PyTorch's ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``
    (through :func:`emsrflow.resize.bicubic`): area-aligned (LR pixel i covers HR pixels
    ``factor·i … factor·(i + 1) − 1``), the cubic kernel (a = −0.75) widened by the
    factor, as MATLAB's ``imresize`` and PIL do. Sections are resized eight at a time.

    Parameters
    ----------
    hr : numpy.ndarray
        (z, y, x) or (y, x) HR image; integers are scaled to [0, 1] by their dtype's
        maximum (:func:`emsrflow.io.to_float01`).
    factor : int
        Downsampling factor (8 or 16 for GPEMSR; any integer ≥ 1).
    clip : bool
        Clip the result to [0, 1].

    Returns
    -------
    numpy.ndarray
        float32, (z, y / factor, x / factor) or (y / factor, x / factor).

    Raises
    ------
    ValueError
        If the in-plane size is not a multiple of ``factor`` (the message names the
        shape; crop the HR volume first), or the factor is not an integer ≥ 1.
    """
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"the downsampling factor must be an integer ≥ 1, got {factor!r}")
    factor = int(factor)
    array = np.asarray(hr)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) image or (z, y, x) volume, got shape {array.shape}")
    height, width = array.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"HR size {height} × {width} is not a multiple of the factor {factor}; crop it "
            f"to {height // factor * factor} × {width // factor * factor} first"
        )
    shape = (height // factor, width // factor)
    if array.ndim == 2:
        return bicubic(to_float01(array), shape, clip=clip)
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for z0 in range(0, array.shape[0], 8):
        out[z0 : z0 + 8] = bicubic(to_float01(array[z0 : z0 + 8]), shape, clip=clip)
    return out


# ---------------------------------------------------------------------------------------
# Patches


def _volume_shape(volume: Any, what: str) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in getattr(volume, "shape", ()))
    if len(shape) != 3 or 0 in shape:
        raise ValueError(f"{what} must be a non-empty 3D (z, y, x) volume, got shape {shape}")
    return shape  # type: ignore[return-value]


def _transform(image: np.ndarray, turns: int, flip_x: bool, flip_y: bool) -> np.ndarray:
    """Rotate the last two axes by ``turns`` × 90° and flip them, as a float32 copy."""
    image = np.rot90(image, turns, axes=(-2, -1))
    image = image[..., ::-1] if flip_x else image
    image = image[..., ::-1, :] if flip_y else image
    return np.array(image, dtype=np.float32)


class SectionSampler:
    """Random aligned training patches of adjacent sections, drawn with a NumPy generator.

    A sample: a random pair, a random centre section z, a random LR square of
    ``patch / scale`` pixels in the sections z − N … z + N (N = ``sections // 2``;
    indices beyond the volume are clamped, so the end sections replicate) and the HR
    square of ``patch`` pixels of section z over the same field of view; a random
    rotation by a multiple of 90° and horizontal and vertical flips, the same for all.

    Parameters
    ----------
    pairs : sequence of (lr, hr)
        Volumes with ``.shape`` (z, y, x) and box indexing ``vol[z0:z1, y0:y1, x0:x1]``
        (NumPy arrays or :class:`emsrflow.io.VolumeReader`), in [0, 1] or integers
        (scaled by their dtype's maximum). Each HR volume has the shape
        (z, scale·y, scale·x) of its LR volume, sections in the same order. ``lr`` may
        be ``None`` in every pair: HR patches only (Stage I).
    scale : int
        The factor s between HR and LR pixels.
    patch : int
        HR patch size in pixels; the LR patch is ``patch / scale``.
    rng : numpy.random.Generator
        Source of all randomness (its state is what a checkpoint saves).
    sections : int
        2N + 1 LR sections per sample (odd): 5 for Stage III, 1 for Stages I and II.
    hr_multiple, lr_multiple : int
        The HR and LR patch sizes must be multiples of these (16 and 4 for GPEMSR).

    Raises
    ------
    ValueError
        If there are no pairs, a pair's shapes do not match (the message names the pair),
        the patch sizes are not multiples of ``hr_multiple`` / ``lr_multiple`` or
        ``patch`` is not a multiple of ``scale`` (the message names the sizes), or the
        patch is larger than a section.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Any, Any]],
        scale: int,
        patch: int,
        rng: np.random.Generator,
        *,
        sections: int = 5,
        hr_multiple: int = HR_MULTIPLE,
        lr_multiple: int = LR_MULTIPLE,
    ):
        self.pairs, self.rng = [tuple(pair) for pair in pairs], rng
        self.scale = integer_setting("scale", scale, 1)
        self.patch = integer_setting("patch", patch, 1)
        self.sections = integer_setting("sections", sections, 1)
        if self.sections % 2 == 0:
            raise ValueError(f"sections must be odd (2N + 1), got {self.sections}")
        if not self.pairs:
            raise ValueError("no training volumes given")
        if any(len(pair) != 2 for pair in self.pairs):
            raise ValueError("training volumes must be (lr, hr) pairs (lr None for HR only)")
        has_lr = {pair[0] is not None for pair in self.pairs}
        if len(has_lr) != 1:
            raise ValueError("either every training pair has an LR volume or none has")
        self.hr_only = not has_lr.pop()
        lr_patch = self.patch // self.scale
        if self.patch % hr_multiple or (not self.hr_only and self.patch % self.scale):
            raise ValueError(
                f"HR patch size {self.patch} must be a multiple of {hr_multiple}"
                + ("" if self.hr_only else f" and of the factor {self.scale}")
            )
        if not self.hr_only and lr_patch % lr_multiple:
            raise ValueError(
                f"LR patch size {lr_patch} (HR patch {self.patch} / factor {self.scale}) must "
                f"be a multiple of {lr_multiple}: use an HR patch size that is a multiple of "
                f"{math.lcm(hr_multiple, lr_multiple * self.scale)}"
            )
        self.lr_patch = lr_patch
        self.shapes = []
        for index, (lr, hr) in enumerate(self.pairs):
            hr_shape = _volume_shape(hr, f"training pair {index}: HR")
            if self.hr_only:
                self.shapes.append(hr_shape)
                size, limit = self.patch, hr_shape[1:]
            else:
                lr_shape = _volume_shape(lr, f"training pair {index}: LR")
                expect = (lr_shape[0], self.scale * lr_shape[1], self.scale * lr_shape[2])
                if hr_shape != expect:
                    raise ValueError(
                        f"training pair {index}: HR shape {hr_shape} does not match LR shape "
                        f"{lr_shape} at factor {self.scale}; expected HR shape {expect}"
                    )
                self.shapes.append(lr_shape)
                size, limit = lr_patch, lr_shape[1:]
            if size > min(limit):
                raise ValueError(
                    f"training pair {index}: patch of {size} pixels is larger than the "
                    f"section ({limit[0]} × {limit[1]}); lower the training setting 'patch'"
                )

    def window(self, z: int, depth: int) -> list[int]:
        """Return the section indices z − N … z + N, clamped to ``[0, depth)``."""
        half = self.sections // 2
        return [min(max(k, 0), depth - 1) for k in range(z - half, z + half + 1)]

    def sample(self) -> tuple[np.ndarray, ...]:
        """Draw one augmented sample.

        Returns
        -------
        lr : numpy.ndarray
            (sections, patch / scale, patch / scale) float32; absent for HR only.
        hr : numpy.ndarray
            (1, patch, patch) float32, the centre section.
        """
        rng, s = self.rng, self.scale
        index = int(rng.integers(len(self.pairs)))
        depth, height, width = self.shapes[index]
        size = self.patch if self.hr_only else self.lr_patch
        z, i, j = (int(rng.integers(n)) for n in (depth, height - size + 1, width - size + 1))
        turns, flip_x, flip_y = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
        lr_volume, hr_volume = self.pairs[index]
        if self.hr_only:
            hr = to_float01(np.asarray(hr_volume[z : z + 1, i : i + size, j : j + size]))
            return (_transform(hr, turns, flip_x, flip_y),)
        ks = self.window(z, depth)
        read = to_float01(np.asarray(lr_volume[ks[0] : ks[-1] + 1, i : i + size, j : j + size]))
        lr = read[[k - ks[0] for k in ks]]
        hr = to_float01(
            np.asarray(hr_volume[z : z + 1, s * i : s * (i + size), s * j : s * (j + size)])
        )
        return _transform(lr, turns, flip_x, flip_y), _transform(hr, turns, flip_x, flip_y)

    def batch(self, size: int) -> tuple[np.ndarray, ...]:
        """Draw ``size`` samples, stacked: ``(lr, hr)`` or ``(hr,)`` (N, C, y, x) arrays."""
        return tuple(
            np.stack(parts) for parts in zip(*(self.sample() for _ in range(size)), strict=True)
        )


# ---------------------------------------------------------------------------------------
# Settings


def _check_patch(patch: int, multiple: int, what: str) -> None:
    if patch % multiple:
        raise ValueError(
            f"training setting 'patch' (the HR patch size) must be a multiple of {multiple}"
            f"{what}, got {patch}"
        )


def _check_pair_patch(patch: int, scale: int) -> None:
    _check_patch(
        patch,
        math.lcm(HR_MULTIPLE, LR_MULTIPLE * scale),
        f" (16, and {LR_MULTIPLE} × scale so that the LR patch is a multiple of {LR_MULTIPLE})",
    )


def _check_scale(scale: Any) -> int:
    value = integer_setting("scale", scale, 2)
    if value & (value - 1) or value > HR_MULTIPLE:
        raise ValueError(f"training setting 'scale' must be 2, 4, 8 or 16, got {scale!r}")
    return value


@dataclass(frozen=True)
class CodebookSettings(OptimSettings):
    """Settings of Stage I (defaults: the authors' ``train_stage1.yml`` where it fits).

    The loop's settings are those of :class:`emsrflow.train.OptimSettings`, ``patch``
    being the HR patch size (a multiple of 16); further:

    Parameters
    ----------
    codebook_weight : float
        λ_c, weight of the codebook loss (10).
    adversarial_weight : float
        λ_adv, weight of the generator's adversarial loss (0.05).
    adversarial_start : int
        The critic is trained, and the adversarial term used, only after this many steps
        (40,000).
    critic_lr : float
        Initial learning rate of the critic's Adam (4e-4), halved with the generator's.
    r1_weight : float
        R1 weight γ (1e-4); the penalty γ/2 · r1_every · R1 is added every
        ``r1_every`` steps (lazy regularisation).
    r1_every : int
        Steps between R1 penalties (16).
    critic_channels, critic_layers, critic_padding : int
        :class:`~emsrflow.archs.gpemsr.PatchDiscriminator` architecture (64, 3, 0: the
        authors'; padding 0 needs patches of at least about 100 pixels).
    """

    steps: int = 480_000
    batch: int = 8
    patch: int = 512
    lr: float = 4e-4
    lr_halve_every: int = 120_000
    checkpoint_every: int = 5000
    codebook_weight: float = 10.0
    adversarial_weight: float = 0.05
    adversarial_start: int = 40_000
    critic_lr: float = 4e-4
    r1_weight: float = 1e-4
    r1_every: int = 16
    critic_channels: int = 64
    critic_layers: int = 3
    critic_padding: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_patch(self.patch, HR_MULTIPLE, "")
        for name in ("codebook_weight", "adversarial_weight", "r1_weight"):
            self._put(name, real_setting(name, getattr(self, name)))
        self._put("critic_lr", real_setting("critic_lr", self.critic_lr, positive=True))
        for name, minimum in (
            ("adversarial_start", 0),
            ("r1_every", 1),
            ("critic_channels", 1),
            ("critic_layers", 1),
            ("critic_padding", 0),
        ):
            self._put(name, integer_setting(name, getattr(self, name), minimum))


@dataclass(frozen=True)
class IndexerSettings(OptimSettings):
    """Settings of Stage II (defaults: the authors' ``train_stage2_x*.yml`` where it fits).

    ``patch`` is the HR patch size: a multiple of 16 whose LR size ``patch / scale`` is a
    multiple of 4 (a multiple of 32 at 8×, of 64 at 16×).

    Parameters
    ----------
    scale : int
        SR factor s (8 or 16; 2 and 4 are accepted too).
    """

    steps: int = 480_000
    batch: int = 8
    patch: int = 1024
    lr: float = 4e-4
    lr_halve_every: int = 120_000
    checkpoint_every: int = 5000
    scale: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        self._put("scale", _check_scale(self.scale))
        _check_pair_patch(self.patch, self.scale)


@dataclass(frozen=True)
class ReconstructionSettings(OptimSettings):
    """Settings of Stage III (defaults: the authors' ``train_stage3_x*.yml`` where it fits).

    ``patch`` is the HR patch size: a multiple of 16 whose LR size ``patch / scale`` is a
    multiple of 4 (a multiple of 32 at 8×, of 64 at 16×).

    Parameters
    ----------
    scale : int
        SR factor s (8 or 16).
    fidelity_weight : float, optional
        λ of the multi-reference fidelity loss; ``None``: the paper's value for the
        factor (:func:`~emsrflow.archs.gpemsr.fidelity_weight`: 0.01 at 16×, 0.001 at 8×).
    contextual_level : int
        Scale of the frozen Stage I encoder whose features the contextual loss compares
        (2: HR/4).
    """

    steps: int = 480_000
    batch: int = 8
    patch: int = 256
    lr: float = 4e-4
    lr_halve_every: int = 120_000
    checkpoint_every: int = 5000
    scale: int = 16
    fidelity_weight: float | None = None
    contextual_level: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        self._put("scale", _check_scale(self.scale))
        _check_pair_patch(self.patch, self.scale)
        if self.fidelity_weight is not None:
            self._put("fidelity_weight", real_setting("fidelity_weight", self.fidelity_weight))
        self._put("contextual_level", integer_setting("contextual_level", self.contextual_level, 0))


# ---------------------------------------------------------------------------------------
# Distributed training


class _Dispatch(nn.Module):
    """Runs a named method of the network in ``forward``, so DDP can wrap any method."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.net, method)(*args, **kwargs)


class _Routed:
    """The network as an objective sees it: ``methods`` run through the DDP wrapper."""

    def __init__(self, net: nn.Module, wrapper: nn.Module, methods: Sequence[str]):
        self._net, self._wrapper, self._methods = net, wrapper, frozenset(methods)

    def __getattr__(self, name: str) -> Any:
        if name in self._methods:
            return functools.partial(self._wrapper, name)
        return getattr(self._net, name)


@dataclass
class _Context:
    """Where this process stands: rank, world size, device."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def wrap(self, net: nn.Module, methods: Sequence[str]) -> Any:
        """Return ``net`` itself, or a stand-in running ``methods`` through DDP."""
        if not self.distributed:
            return net
        wrapper = nn.parallel.DistributedDataParallel(
            _Dispatch(net),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
        )
        return _Routed(net, wrapper, methods)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


@contextlib.contextmanager
def _distributed(settings: OptimSettings) -> Iterator[_Context]:
    """Set up the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield _Context(0, 1, resolve_device(settings.device))
        return
    device = resolve_device(settings.device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        context = _Context(dist.get_rank(), dist.get_world_size(), device)
        log.info("rank %d of %d on %s", context.rank, context.world, device)
        yield context
        context.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def _seeded_rng(settings: OptimSettings, context: _Context) -> np.random.Generator:
    if context.rank == 0:
        return np.random.default_rng(settings.seed)
    return np.random.default_rng([settings.seed, context.rank])


class _Hooks:
    """Extra checkpoint state for :func:`emsrflow.train.fit`.

    Every rank's random states (in a distributed run) and the critic (Stage I).
    """

    def __init__(self, context: _Context, rng: np.random.Generator, critic: Any = None):
        self.context, self.rng, self.critic = context, rng, critic
        self.writes = context.rank == 0

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"world": self.context.world}
        if self.context.distributed:
            mine = {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()}
            if self.context.device.type == "cuda":
                mine["cuda"] = torch.cuda.get_rng_state()
            gathered: list[Any] = [None] * self.context.world
            dist.all_gather_object(gathered, mine)
            state["ranks"] = gathered
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        state = dict(state or {})
        world = int(state.get("world", 1))
        if world != self.context.world:
            raise ValueError(
                f"the checkpoint was written by a run of {world} process(es); resume it with "
                f"the same number (now {self.context.world})"
            )
        if self.context.distributed:
            mine = state["ranks"][self.context.rank]
            self.rng.bit_generator.state = mine["numpy"]
            torch.set_rng_state(mine["torch"].cpu())
            if mine.get("cuda") is not None and self.context.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].cpu())
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])


def _run(
    net: nn.Module,
    sampler: SectionSampler,
    objective: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    settings: OptimSettings,
    context: _Context,
    rng: np.random.Generator,
    *,
    terms: Sequence[str],
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    progress: bool,
    critic: Any = None,
) -> nn.Module:
    hooks = _Hooks(context, rng, critic)
    trained = fit(
        net,
        sampler.batch,
        objective,
        settings,
        rng,
        terms=terms,
        checkpoint=checkpoint,
        curve=curve,
        progress=progress and hooks.writes,
        hooks=hooks,
    )
    context.barrier()  # the last checkpoint is written before any rank goes on
    return trained


# ---------------------------------------------------------------------------------------
# Stage I


class _Critic:
    """Stage I objective with its critic: the critic's step, then the generator's loss."""

    def __init__(self, settings: CodebookSettings, context: _Context):
        self.settings, self.step = settings, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + 1)
            self.module = PatchDiscriminator(
                1, settings.critic_channels, settings.critic_layers, settings.critic_padding
            )
        self.module.to(context.device).train()
        self.optimizer = torch.optim.Adam(
            self.module.parameters(), lr=settings.critic_lr, betas=(0.9, 0.99)
        )
        self.wrapped = self.module
        if context.distributed:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[context.device.index] if context.device.type == "cuda" else None,
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def _update(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.settings
        regularise = self.step % s.r1_every == 0
        real = real.detach().requires_grad_(regularise)
        real_logits, fake_logits = self.wrapped(torch.cat([real, fake.detach()])).chunk(2)
        d_loss = discriminator_adversarial_loss(real_logits, fake_logits)
        r1 = torch.zeros_like(d_loss)
        total = d_loss
        if regularise and s.r1_weight > 0:
            r1 = r1_penalty(real_logits, real)
            total = total + s.r1_weight / 2 * s.r1_every * r1
        for group in self.optimizer.param_groups:
            group["lr"] = s.critic_lr * 0.5 ** ((self.step - 1) // s.lr_halve_every)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return d_loss.detach(), r1.detach()

    def __call__(
        self, model: Any, hr: torch.Tensor, *, precision: str = "fp32"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        self.step += 1
        with torch.autocast(hr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            recon, vq_loss, _ = model.autoencode(hr)
        recon, vq_loss = recon.float(), vq_loss.float()
        l1 = F.l1_loss(recon, hr)
        zero = torch.zeros_like(l1)
        g_loss, d_loss, r1 = zero, zero, zero
        if self.step > s.adversarial_start:
            d_loss, r1 = self._update(hr, recon)
            self.module.requires_grad_(False)  # the generator's step leaves the critic alone
            try:
                g_loss = generator_adversarial_loss(self.module(recon))
            finally:
                self.module.requires_grad_(True)
        total = l1 + s.codebook_weight * vq_loss + s.adversarial_weight * g_loss
        return total, torch.stack([l1, vq_loss, g_loss, d_loss, r1]).detach()


def _hr_pairs(volumes: Sequence[Any]) -> list[tuple[None, Any]]:
    return [(None, volume) for volume in volumes]


def train_codebook(
    volumes: Sequence[Any],
    settings: CodebookSettings,
    *,
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    network: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train Stage I (VQGAN: generator and critic) on HR volumes; resumable.

    Parameters
    ----------
    volumes : sequence
        HR volumes (z, y, x) (NumPy arrays or :class:`emsrflow.io.VolumeReader`).
    settings : CodebookSettings
        Hyperparameters.
    checkpoint, curve : str or os.PathLike
        Checkpoint (the generator as the network, the critic, its optimizer and its step
        count under ``"hooks"``) and training-curve CSV with columns ``step, loss,``
        :data:`CODEBOOK_TERMS` ``, lr, seconds`` (the critic's terms are 0 in steps where
        it is not trained or not regularised); see :func:`emsrflow.train.fit`. If the
        checkpoint exists, training resumes from it.
    network : mapping, optional
        Keywords of :class:`~emsrflow.archs.gpemsr.VQAutoencoder` (default the paper's).
    progress : bool
        Show a progress bar (rank 0 only).

    Returns
    -------
    torch.nn.Module
        The generator (``gpemsr_codebook``), trained, in eval mode; load it later with
        :func:`emsrflow.train.load_model`.
    """
    with _distributed(settings) as context:
        torch.manual_seed(settings.seed)
        net = build_network({**dict(network or {}), "type": "gpemsr_codebook", "scale": 1})
        rng = _seeded_rng(settings, context)
        sampler = SectionSampler(
            _hr_pairs(volumes), 1, settings.patch, rng, sections=1, hr_multiple=net.compression
        )
        net.to(context.device)
        critic = _Critic(settings, context)
        routed = context.wrap(net, ["autoencode"])
        return _run(
            net,
            sampler,
            lambda _model, hr, precision: critic(routed, hr, precision=precision),
            settings,
            context,
            rng,
            terms=CODEBOOK_TERMS,
            checkpoint=checkpoint,
            curve=curve,
            progress=progress,
            critic=critic,
        )


# ---------------------------------------------------------------------------------------
# Stage II


def _stage1_keywords(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {key: spec[key] for key in _STAGE1_KEYS if key in spec}


def build_prior(codebook: str | os.PathLike, scale: int, **indexer: Any) -> nn.Module:
    """Return a Stage II network whose frozen Stage I part is loaded from a checkpoint.

    Parameters
    ----------
    codebook : str or os.PathLike
        Stage I checkpoint (:func:`train_codebook`).
    scale : int
        SR factor s.
    **indexer
        Further :class:`~emsrflow.archs.gpemsr.GenerativePrior` keywords
        (``indexer_blocks``); the Stage I architecture comes from the checkpoint.

    Returns
    -------
    torch.nn.Module
        ``gpemsr_prior`` (on the CPU).
    """
    stage1 = load_model(codebook, expect={"type": "gpemsr_codebook"})
    clash = sorted(set(indexer) & set(_STAGE1_KEYS))
    if clash:
        raise ValueError(
            f"network keyword(s) {', '.join(clash)} belong to the Stage I architecture, "
            f"which comes from {codebook}"
        )
    prior = build_network(
        {**indexer, **_stage1_keywords(stage1.spec), "type": "gpemsr_prior", "scale": scale}
    )
    prior.vq.load_state_dict(stage1.state_dict())
    return prior


def train_indexer(
    pairs: Sequence[tuple[Any, Any]],
    settings: IndexerSettings,
    *,
    codebook: str | os.PathLike,
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    network: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train Stage II (the latent vector indexer) on LR/HR pairs; resumable.

    Parameters
    ----------
    pairs : sequence of (lr, hr)
        Training volumes (see :class:`SectionSampler`; HR ``settings.scale`` × LR).
    settings : IndexerSettings
        Hyperparameters.
    codebook : str or os.PathLike
        Stage I checkpoint; its network is frozen inside the prior.
    checkpoint, curve : str or os.PathLike
        As for :func:`train_codebook`; curve terms :data:`INDEXER_TERMS`.
    network : mapping, optional
        Indexer keywords of :class:`~emsrflow.archs.gpemsr.GenerativePrior`
        (``indexer_blocks``).
    progress : bool
        Show a progress bar (rank 0 only).

    Returns
    -------
    torch.nn.Module
        The ``gpemsr_prior`` network, trained, in eval mode.
    """
    with _distributed(settings) as context:
        torch.manual_seed(settings.seed)
        prior = build_prior(codebook, settings.scale, **dict(network or {}))
        rng = _seeded_rng(settings, context)
        sampler = SectionSampler(
            pairs,
            settings.scale,
            settings.patch,
            rng,
            sections=1,
            hr_multiple=prior.compression,
            lr_multiple=max(prior.window, LR_MULTIPLE),
        )
        prior.to(context.device)
        routed = context.wrap(prior, ["logits"])
        return _run(
            prior,
            sampler,
            lambda _model, lr, hr, precision: indexer_objective(
                routed, lr, hr, precision=precision
            ),
            settings,
            context,
            rng,
            terms=INDEXER_TERMS,
            checkpoint=checkpoint,
            curve=curve,
            progress=progress,
        )


# ---------------------------------------------------------------------------------------
# Stage III


def build_reconstruction(prior: str | os.PathLike | None, scale: int, **network: Any) -> nn.Module:
    """Return a Stage III network whose frozen prior is loaded from a Stage II checkpoint.

    Local pretrained files that the keywords name (``spynet_weights``,
    ``vgg19_weights``) are loaded too (:meth:`~emsrflow.archs.gpemsr.GPEMSR.load_pretrained`).

    Parameters
    ----------
    prior : str or os.PathLike or None
        Stage II checkpoint (:func:`train_indexer`); ``None`` only with ``mpf=False``.
    scale : int
        SR factor s (that of the prior).
    **network
        Further :class:`~emsrflow.archs.gpemsr.GPEMSR` keywords but ``prior``.

    Returns
    -------
    torch.nn.Module
        ``gpemsr`` (on the CPU).
    """
    if "prior" in network:
        raise ValueError("the prior's architecture comes from the Stage II checkpoint")
    if not network.get("mpf", True):
        return build_network({**network, "type": "gpemsr", "scale": scale}).load_pretrained()
    if prior is None:
        raise ValueError("GPEMSR with MPF needs the Stage II checkpoint ('prior')")
    stage2 = load_model(prior, expect={"type": "gpemsr_prior", "scale": scale})
    keywords = {k: v for k, v in stage2.spec.items() if k not in ("type", "scale")}
    net = build_network({**network, "type": "gpemsr", "scale": scale, "prior": keywords})
    net.prior.load_state_dict(stage2.state_dict())
    return net.load_pretrained()


def train_reconstruction(
    pairs: Sequence[tuple[Any, Any]],
    settings: ReconstructionSettings,
    *,
    prior: str | os.PathLike | None,
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    network: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train Stage III (GPEMSR on 5 adjacent LR sections) on LR/HR pairs; resumable.

    Parameters
    ----------
    pairs : sequence of (lr, hr)
        Training volumes (see :class:`SectionSampler`), at least one section deep.
    settings : ReconstructionSettings
        Hyperparameters.
    prior : str or os.PathLike or None
        Stage II checkpoint; its network is frozen inside GPEMSR (``None`` with
        ``network={"mpf": False}``).
    checkpoint, curve : str or os.PathLike
        As for :func:`train_codebook`; curve terms :data:`RECONSTRUCTION_TERMS`
        (L1 and the unweighted contextual loss).
    network : mapping, optional
        Keywords of :class:`~emsrflow.archs.gpemsr.GPEMSR` but ``prior``.
    progress : bool
        Show a progress bar (rank 0 only).

    Returns
    -------
    torch.nn.Module
        The ``gpemsr`` network, trained, in eval mode.
    """
    with _distributed(settings) as context:
        torch.manual_seed(settings.seed)
        net = build_reconstruction(prior, settings.scale, **dict(network or {}))
        rng = _seeded_rng(settings, context)
        sampler = SectionSampler(
            pairs,
            settings.scale,
            settings.patch,
            rng,
            sections=net.sections,
            hr_multiple=HR_MULTIPLE,
            lr_multiple=max(net.window, 1),
        )
        net.to(context.device)
        routed = context.wrap(net, ["forward_with_reference"])
        weight = settings.fidelity_weight
        return _run(
            net,
            sampler,
            lambda _model, lr, hr, precision: gpemsr_objective(
                routed,
                lr,
                hr,
                weight=fidelity_weight(settings.scale) if weight is None else weight,
                level=settings.contextual_level,
                precision=precision,
            ),
            settings,
            context,
            rng,
            terms=RECONSTRUCTION_TERMS,
            checkpoint=checkpoint,
            curve=curve,
            progress=progress,
        )


# ---------------------------------------------------------------------------------------
# Inference


def iter_predict_volume(
    model: nn.Module,
    lr_volume: Any,
    *,
    tile: int = 64,
    overlap: int = 16,
    margin: int | None = None,
    batch: int = 4,
    precision: str = "fp32",
    device: str | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Super-resolve a volume section by section, yielding ``(z, section)`` in order.

    See :func:`predict_volume`; memory holds the LR sections z − N … z + N and one
    output section.
    """
    shape = _volume_shape(lr_volume, "LR volume")
    depth, height, width = shape
    sections = 1 if getattr(model, "single_section", False) else int(model.sections)
    half = sections // 2
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    target = resolve_device(device)
    scale = int(model.scale)
    tiles, groups, weights, total = plan_blend(
        (height, width),
        tile=tile,
        overlap=overlap,
        margin=margin,
        batch=batch,
        multiple=int(getattr(model, "window", 1)),
        scale=scale,
        device=target,
    )
    model.eval().to(target)

    cache: dict[int, torch.Tensor] = {}  # the LR sections of the current window

    def section(k: int) -> torch.Tensor:
        if k not in cache:
            data = np.asarray(lr_volume[k : k + 1, 0:height, 0:width])[0]
            cache[k] = torch.from_numpy(to_float01(data).copy()).to(target)
        return cache[k]

    with (
        torch.inference_mode(),
        torch.autocast(target.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        for z in range(depth):
            ks = [min(max(k, 0), depth - 1) for k in range(z - half, z + half + 1)]
            for k in [k for k in cache if k not in ks]:
                del cache[k]
            stack = torch.stack([section(k) for k in ks])  # (T, h, w)
            yield (
                z,
                blend_tiles(
                    lambda x: model(x).float(),
                    lambda tile, stack=stack: stack[(slice(None), *tile.slices())],
                    tiles,
                    groups,
                    weights,
                    total,
                    scale=scale,
                    name=type(model).__name__,
                ),
            )


def predict_volume(
    model: nn.Module,
    lr_volume: Any,
    *,
    tile: int = 64,
    overlap: int = 16,
    margin: int | None = None,
    batch: int = 4,
    precision: str = "fp32",
    device: str | None = None,
    output: str | None = None,
    voxel_size: Sequence[float] | None = None,
    dtype: Any = np.float32,
) -> np.ndarray | None:
    """Super-resolve every section of an LR volume with GPEMSR (multi-section input).

    Section z is super-resolved from the sections z − 2 … z + 2 (z − N … z + N for a
    network of 2N + 1 sections; indices beyond the volume replicate the end sections),
    tile by tile: tiles of ``tile`` LR pixels overlapping by ``overlap``, origins on the
    network's window grid, each padded by the network to the multiples it needs and
    cropped back, blended with the weights of :func:`emsrflow.infer.predict_stack`.
    Sections are read one at a time with box indexing (``lr_volume[k:k + 1, :, :]``)
    and each is read once.

    Parameters
    ----------
    model : torch.nn.Module
        A ``gpemsr`` network (input (N, T, h, w), output (N, 1, s·h, s·w)), put in eval
        mode and moved to ``device``.
    lr_volume : numpy.ndarray or emsrflow.io.VolumeReader
        (z, y, x) LR volume, any size; in [0, 1] or integers.
    tile, overlap, margin, batch : int
        Tiling (LR pixels) and tiles per forward pass; see
        :func:`emsrflow.infer.predict_stack`.
    precision : {"fp32", "bf16"}
        bfloat16 autocast or float32.
    device : str, optional
        See :func:`emsrflow.device.resolve_device`.
    output : str, optional
        Write the result to this volume (see :class:`emsrflow.io.VolumeWriter`) section
        by section instead of returning it.
    voxel_size : sequence of float, optional
        (z, y, x) nm of the output when writing; default the LR volume's ``voxel_size``
        with y and x divided by s, else (1, 1, 1).
    dtype : numpy.dtype
        Voxel type of the written volume (values in [0, 1] are scaled for integers).

    Returns
    -------
    numpy.ndarray or None
        (z, s·y, s·x) float32 in [0, 1], or ``None`` when written to ``output``.
    """
    depth, height, width = _volume_shape(lr_volume, "LR volume")
    scale = int(model.scale)
    sections = iter_predict_volume(
        model,
        lr_volume,
        tile=tile,
        overlap=overlap,
        margin=margin,
        batch=batch,
        precision=precision,
        device=device,
    )
    shape = (depth, scale * height, scale * width)
    if output is None:
        out = np.empty(shape, dtype=np.float32)
        for z, image in sections:
            out[z] = image
        return out
    if voxel_size is None:
        lr_voxel = getattr(lr_volume, "voxel_size", None)
        voxel_size = (
            (lr_voxel[0], lr_voxel[1] / scale, lr_voxel[2] / scale) if lr_voxel else (1, 1, 1)
        )
    with VolumeWriter(output, shape, dtype, voxel_size) as writer:
        for z, image in sections:
            writer.write(z, from_float01(image[None], dtype))
    return None


# ---------------------------------------------------------------------------------------
# Command line


def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    text = Path(path).read_text()
    if str(path).endswith((".yml", ".yaml")):
        import yaml

        config = yaml.safe_load(text)
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the configuration must be a mapping")
    return config


def _open_pairs(
    config: Mapping[str, Any], scale: int, stack: contextlib.ExitStack
) -> list[tuple[Any, Any]]:
    """Open the configuration's ``volumes``: ``[{"hr": spec, "lr": spec?}, ...]``.

    A missing ``lr`` is made from the HR volume with :func:`downsample_bicubic` (in
    memory).
    """
    entries = config.get("volumes") or []
    if not entries:
        raise ValueError("the configuration lists no 'volumes' ([{'hr': ..., 'lr': ...}])")
    pairs = []
    for entry in entries:
        entry = {"hr": entry} if isinstance(entry, str) else dict(entry)
        hr = stack.enter_context(open_volume(str(entry["hr"])))
        if scale == 1:
            pairs.append((None, hr))
        elif entry.get("lr"):
            pairs.append((stack.enter_context(open_volume(str(entry["lr"]))), hr))
        else:
            pairs.append((downsample_bicubic(hr.read(), scale), hr))
    return pairs


_STAGES = {
    "stage1": "codebook",
    "codebook": "codebook",
    "stage2": "indexer",
    "indexer": "indexer",
    "stage3": "reconstruction",
    "reconstruction": "reconstruction",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: train one stage, or super-resolve a volume.

    ``python -m emsrflow.largefactor {stage1,stage2,stage3} --config C --checkpoint P
    --curve CSV`` (also under ``torchrun``), where the JSON or YAML configuration holds
    ``settings`` (the stage's settings), ``network`` (architecture keywords),
    ``volumes`` (``[{"hr": spec, "lr": spec}]``; without ``lr`` the LR volume is made
    with :func:`downsample_bicubic`) and, for Stages II and III, ``codebook`` or
    ``prior`` (the previous stage's checkpoint; ``--previous`` overrides it).

    ``python -m emsrflow.largefactor predict --model P --input LR --output SR
    [--tile --overlap --device --precision]``.

    Returns
    -------
    int
        Exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m emsrflow.largefactor",
        description="Train the three GPEMSR stages (also under torchrun) or apply Stage III.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _STAGES:
        stage = sub.add_parser(name, help=f"train GPEMSR {_STAGES[name]} ({name})")
        stage.add_argument("--config", required=True, help="JSON or YAML configuration")
        stage.add_argument("--checkpoint", required=True, help="checkpoint file (resumed)")
        stage.add_argument("--curve", required=True, help="training-curve CSV")
        stage.add_argument("--previous", help="checkpoint of the previous stage")
        stage.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict = sub.add_parser("predict", help="super-resolve an LR volume with Stage III")
    predict.add_argument("--model", required=True, help="Stage III checkpoint")
    predict.add_argument("--input", required=True, help="LR volume")
    predict.add_argument("--output", required=True, help="output volume")
    predict.add_argument("--tile", type=int, default=64)
    predict.add_argument("--overlap", type=int, default=16)
    predict.add_argument("--batch", type=int, default=4)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    predict.add_argument("--dtype", default="uint8")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    if args.command == "predict":
        model = load_model(args.model, expect={"type": "gpemsr"})
        with open_volume(args.input) as volume:
            predict_volume(
                model,
                volume,
                tile=args.tile,
                overlap=args.overlap,
                batch=args.batch,
                precision=args.precision,
                device=args.device,
                output=args.output,
                dtype=args.dtype,
            )
        return 0
    stage = _STAGES[args.command]
    config = _read_config(args.config)
    common = {
        "checkpoint": args.checkpoint,
        "curve": args.curve,
        "network": config.get("network"),
        "progress": not args.no_progress,
    }
    with contextlib.ExitStack() as stack:
        if stage == "codebook":
            settings = CodebookSettings.from_dict(config.get("settings") or {})
            pairs = _open_pairs(config, 1, stack)
            train_codebook([hr for _, hr in pairs], settings, **common)
        elif stage == "indexer":
            settings = IndexerSettings.from_dict(config.get("settings") or {})
            pairs = _open_pairs(config, settings.scale, stack)
            codebook = args.previous or config.get("codebook")
            if not codebook:
                raise ValueError("Stage II needs the Stage I checkpoint: --previous or 'codebook'")
            train_indexer(pairs, settings, codebook=codebook, **common)
        else:
            settings = ReconstructionSettings.from_dict(config.get("settings") or {})
            pairs = _open_pairs(config, settings.scale, stack)
            prior = args.previous or config.get("prior")
            train_reconstruction(pairs, settings, prior=prior, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
