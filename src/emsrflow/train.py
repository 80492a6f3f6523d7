"""Training of super-resolution networks without a clean reference (EMSR paper, Sec. II.D).

The objective (eq. 16) runs the same module, with shared weights, on an LR patch ``y``
and on a noisier copy ``y′ = y + N(0, σ²)``, σ ~ U[0, ``branch_noise``] on a 0–255
scale drawn per sample, and compares both outputs with the HR patch ``x`` and with each
other::

    L_T = λ1·ℓp(f(y), x) + λ2·ℓp(f(y′), x) + λ3·ℓp(f(y), f(y′)),   p ∈ {1, 2}

where ℓ1 and ℓ2 are the mean absolute and mean squared errors. Patches are drawn in the
main process with a NumPy generator: a random section of a random training pair, a
random LR rectangle of ``patch`` pixels and the HR rectangle exactly τ times larger over
the same field of view; each sample is rotated by a multiple of 90°, flipped
horizontally and/or vertically (the same transform on LR and HR), and gets Gaussian
noise with σ ~ U[0, ``input_noise``] (0–255 scale) on the LR only (Sec. III.B.1).

Adam with the learning rate halved every ``lr_halve_every`` steps. Checkpoints hold the
network, the optimizer, the scheduler, every random state and the training curve; a
killed run resumes from its last checkpoint and, in deterministic mode, ends with
weights bit-identical to an uninterrupted run. That loop, :func:`fit`, is shared by every
trainer of the package (:func:`train` here; self-supervised isotropic training in
:mod:`emsrflow.isotropic`), each supplying its batches and its loss.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import logging
import math
import operator
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .device import resolve_device
from .errors import InputError
from .io import atomic_output, to_float01

__all__ = [
    "CURVE_COLUMNS",
    "OptimSettings",
    "PatchSampler",
    "TrainSettings",
    "augment_pair",
    "emsr_loss",
    "fit",
    "integer_setting",
    "load_model",
    "objective",
    "real_setting",
    "save_checkpoint",
    "train",
]

log = logging.getLogger(__name__)

#: Columns of the training-curve CSV: the step, the total loss L_T, its three unweighted
#: ℓp terms (f(y) vs x, f(y′) vs x, f(y) vs f(y′)), each averaged over the steps since the
#: previous row, the learning rate of the row's step and the training wall time so far.
CURVE_COLUMNS = ("step", "loss", "loss_sr", "loss_noisy", "loss_consistency", "lr", "seconds")

_FORMAT = "emsrflow-train-checkpoint"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def integer_setting(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int ≥ ``minimum`` (not a float or bool).

    The error names the setting ``name``.
    """
    try:
        number = operator.index(value)  # ints and NumPy integers, not floats or bools
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise ValueError(f"training setting {name!r} must be an integer ≥ {minimum}, got {value!r}")
    return number


def real_setting(name: str, value: Any, *, positive: bool = False) -> float:
    """Return ``value`` as a finite float ≥ 0 (> 0 if ``positive``).

    Strings such as ``1e-4`` (which PyYAML reads as a string, not a float) are accepted.
    """
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (number > 0 if positive else number >= 0)):
        bound = "> 0" if positive else "≥ 0"
        raise ValueError(
            f"training setting {name!r} must be a finite number {bound}, got {value!r}"
        )
    return number


@dataclass(frozen=True)
class OptimSettings:
    """Settings of the optimisation loop shared by every trainer (:func:`fit`).

    Parameters
    ----------
    steps : int
        Optimizer steps in all (a resumed run may raise it).
    batch : int
        Training samples per step.
    patch : int
        Training patch size in input pixels.
    lr : float
        Initial Adam learning rate.
    lr_halve_every : int
        The learning rate is halved every this many steps.
    checkpoint_every : int
        Steps between checkpoints (and curve writes); the last step is always saved.
    log_every : int
        Steps between rows of the training curve.
    seed : int
        Seed of the patch sampler and of torch.
    deterministic : bool
        Use only deterministic torch algorithms, so that a run (resumed or not) is
        reproducible bit for bit on the same machine.
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"fp32", "bf16"}
        ``bf16`` runs forward and loss under bfloat16 autocast (mixed precision; the
        weights and the optimizer stay float32).
    """

    steps: int = 200_000
    batch: int = 2
    patch: int = 48
    lr: float = 1e-4
    lr_halve_every: int = 50_000
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "patch", "lr_halve_every", "checkpoint_every", "log_every"):
            self._put(name, integer_setting(name, getattr(self, name), 1))
        self._put("seed", integer_setting("seed", self.seed, 0))
        self._put("lr", real_setting("lr", self.lr, positive=True))
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(
                f"training setting 'precision' must be 'fp32' or 'bf16', got {self.precision!r}"
            )
        if not isinstance(self.deterministic, bool):
            raise ValueError(
                f"training setting 'deterministic' must be true or false, "
                f"got {self.deterministic!r}"
            )
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(
                f"training setting 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                f"got {self.device!r}"
            )

    def _put(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build settings from a mapping (a configuration section); missing keys default.

        Raises
        ------
        ValueError
            If a key is not a setting (the message names it and lists the known ones) or a
            value is invalid.
        """
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict (tuples as lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True)
class TrainSettings(OptimSettings):
    """Settings of EMSR training (defaults: the EMSR paper's values, Sec. III.B.1).

    The optimisation settings are those of :class:`OptimSettings` (``patch`` is the LR
    patch size; the HR patch is τ times larger); further:

    Parameters
    ----------
    loss : {"l1", "l2"}
        ℓp of the objective: mean absolute (``l1``) or mean squared (``l2``) error.
    lambdas : tuple of float
        (λ1, λ2, λ3) of eq. 16.
    branch_noise : float
        Largest σ (0–255 scale) of the noise of the noisier branch y′.
    input_noise : float
        Largest σ (0–255 scale) of the augmentation noise added to the LR patch.
    """

    loss: Literal["l1", "l2"] = "l1"
    lambdas: tuple[float, float, float] = (1.0, 1.0, 1.0)
    branch_noise: float = 5.0
    input_noise: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._put("branch_noise", real_setting("branch_noise", self.branch_noise))
        self._put("input_noise", real_setting("input_noise", self.input_noise))
        lambdas = self.lambdas
        if isinstance(lambdas, str | bytes) or not isinstance(lambdas, Sequence | np.ndarray):
            lambdas = ()
        if len(lambdas) != 3:
            raise ValueError(
                f"training setting 'lambdas' must be three numbers (λ1, λ2, λ3), "
                f"got {self.lambdas!r}"
            )
        self._put("lambdas", tuple(real_setting(f"lambdas[{i}]", v) for i, v in enumerate(lambdas)))
        if not any(self.lambdas):
            raise ValueError("training setting 'lambdas' must not be all zero")
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"training setting 'loss' must be 'l1' or 'l2', got {self.loss!r}")


# ---------------------------------------------------------------------------------------
# Loss


def emsr_loss(
    sr: torch.Tensor,
    sr_noisy: torch.Tensor,
    hr: torch.Tensor,
    *,
    loss: str = "l1",
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the no-clean-reference objective L_T (eq. 16) from the two branches' outputs.

    Parameters
    ----------
    sr, sr_noisy : torch.Tensor
        f(y) and f(y′), shape (N, 1, H, W).
    hr : torch.Tensor
        The HR reference x, same shape.
    loss : {"l1", "l2"}
        Mean absolute or mean squared error.
    lambdas : sequence of float
        (λ1, λ2, λ3).

    Returns
    -------
    total : torch.Tensor
        Scalar λ1·ℓp(f(y), x) + λ2·ℓp(f(y′), x) + λ3·ℓp(f(y), f(y′)).
    terms : torch.Tensor
        The three unweighted ℓp terms, shape (3,), detached.
    """
    distance = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
    terms = torch.stack([distance(sr, hr), distance(sr_noisy, hr), distance(sr, sr_noisy)])
    weights = torch.as_tensor(tuple(lambdas), dtype=terms.dtype, device=terms.device)
    return (weights * terms).sum(), terms.detach()


def objective(
    model: nn.Module,
    lr: torch.Tensor,
    lr_noisy: torch.Tensor,
    hr: torch.Tensor,
    *,
    loss: str = "l1",
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both branches through ``model`` (shared weights) and return :func:`emsr_loss`.

    One forward pass on the concatenated batch (y, y′); under ``precision="bf16"`` it runs
    in bfloat16 autocast, and the loss is computed in float32.

    Parameters
    ----------
    model : torch.nn.Module
        The network f.
    lr, lr_noisy : torch.Tensor
        y and y′, shape (N, 1, h, w).
    hr : torch.Tensor
        x, shape (N, 1, τh, τw).
    loss, lambdas
        As for :func:`emsr_loss`.
    precision : {"fp32", "bf16"}
        Autocast of the forward pass.

    Returns
    -------
    total, terms : torch.Tensor
        As for :func:`emsr_loss`.
    """
    with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(torch.cat([lr, lr_noisy]))
    sr, sr_noisy = out.float().chunk(2)
    return emsr_loss(sr, sr_noisy, hr, loss=loss, lambdas=lambdas)


# ---------------------------------------------------------------------------------------
# Patches


def augment_pair(
    lr: np.ndarray, hr: np.ndarray, rng: np.random.Generator, *, noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly rotate and flip an LR/HR patch pair alike, and add noise to the LR.

    Parameters
    ----------
    lr, hr : numpy.ndarray
        2D patches over the same field of view (HR τ times larger).
    rng : numpy.random.Generator
        Source of the rotation (0/90/180/270°), the two flips and the noise.
    noise : float
        Largest σ of the LR noise on a 0–255 scale; σ ~ U[0, noise] (0: no noise).

    Returns
    -------
    lr, hr : numpy.ndarray
        Contiguous float32 copies.
    """
    turns, flip_x, flip_y = int(rng.integers(4)), bool(rng.integers(2)), bool(rng.integers(2))
    pair = []
    for image in (lr, hr):
        image = np.rot90(image, turns)
        image = image[:, ::-1] if flip_x else image
        image = image[::-1] if flip_y else image
        pair.append(np.array(image, dtype=np.float32))
    if noise > 0:
        sigma = rng.uniform(0.0, noise) / 255.0
        pair[0] += np.float32(sigma) * rng.standard_normal(pair[0].shape, dtype=np.float32)
    return pair[0], pair[1]


def _shape(volume: Any, what: str) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in getattr(volume, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"{what} must be a 3D (z, y, x) volume, got shape {shape}")
    return shape  # type: ignore[return-value]


class PatchSampler:
    """Random aligned LR/HR training patches, drawn with a NumPy generator.

    Parameters
    ----------
    pairs : sequence of (lr, hr)
        Volumes with ``.shape`` (z, y, x) and ``vol[z, y0:y1, x0:x1]`` returning a 2D
        array in [0, 1] (integer arrays are scaled by their dtype's maximum): NumPy
        arrays or :class:`emsrflow.io.VolumeReader`.
    scale : int
        τ: every HR volume must have shape (z, τ·y, τ·x) of its LR volume's (z, y, x).
    patch : int
        LR patch size in pixels.
    rng : numpy.random.Generator
        Source of all randomness (its state is what a checkpoint saves).

    Raises
    ------
    ValueError
        If there are no pairs, a pair's shapes do not match (the message names the pair
        index), or ``patch`` is larger than an LR section.
    """

    def __init__(self, pairs: Sequence[tuple[Any, Any]], scale: int, patch: int, rng):
        self.pairs, self.scale, self.patch, self.rng = list(pairs), int(scale), int(patch), rng
        if not self.pairs:
            raise ValueError("no training pairs given")
        self.shapes = []
        for index, pair in enumerate(self.pairs):
            if len(pair) != 2:
                raise ValueError(f"training pair {index}: expected (lr, hr), got {len(pair)} items")
            lr = _shape(pair[0], f"training pair {index}: LR")
            hr = _shape(pair[1], f"training pair {index}: HR")
            expect = (lr[0], self.scale * lr[1], self.scale * lr[2])
            if hr != expect or 0 in lr:
                raise ValueError(
                    f"training pair {index}: HR shape {hr} does not match LR shape {lr} at "
                    f"τ = {self.scale}; expected HR shape {expect} (same sections, τ× larger)"
                )
            if self.patch > min(lr[1:]):
                raise ValueError(
                    f"training pair {index}: patch size {self.patch} is larger than the LR "
                    f"section size {lr[1]}×{lr[2]}; lower the training setting 'patch'"
                )
            self.shapes.append(lr)

    def sample(self, *, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Draw one augmented patch pair (see :func:`augment_pair`).

        Parameters
        ----------
        noise : float
            Largest σ (0–255 scale) of the LR augmentation noise.

        Returns
        -------
        lr : numpy.ndarray
            (patch, patch) float32.
        hr : numpy.ndarray
            (τ·patch, τ·patch) float32.
        """
        rng, p, t = self.rng, self.patch, self.scale
        index = int(rng.integers(len(self.pairs)))
        depth, height, width = self.shapes[index]
        z, i, j = (int(rng.integers(n)) for n in (depth, height - p + 1, width - p + 1))
        lr_volume, hr_volume = self.pairs[index]
        lr = to_float01(np.asarray(lr_volume[z, i : i + p, j : j + p]))
        hr = to_float01(np.asarray(hr_volume[z, t * i : t * (i + p), t * j : t * (j + p)]))
        return augment_pair(lr, hr, rng, noise=noise)

    def batch(
        self, size: int, *, input_noise: float = 0.0, branch_noise: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw a training batch: y, y′ = y + N(0, σ²) with σ ~ U[0, branch_noise], and x.

        Returns
        -------
        lr, lr_noisy : numpy.ndarray
            (size, 1, patch, patch) float32.
        hr : numpy.ndarray
            (size, 1, τ·patch, τ·patch) float32.
        """
        lrs, hrs = zip(*(self.sample(noise=input_noise) for _ in range(size)), strict=True)
        lr, hr = np.stack(lrs)[:, None], np.stack(hrs)[:, None]
        sigma = self.rng.uniform(0.0, branch_noise, size=(size, 1, 1, 1)) / 255.0
        lr_noisy = lr + sigma.astype(np.float32) * self.rng.standard_normal(
            lr.shape, dtype=np.float32
        )
        return lr, lr_noisy, hr


# ---------------------------------------------------------------------------------------
# Checkpoints


def _rng_states(rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
    }


def _set_rng_states(states: Mapping[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    rng.bit_generator.state = states["numpy"]
    if states.get("python") is not None:
        random.setstate(_tuples(states["python"]))


def _tuples(value: Any) -> Any:
    """Turn lists back into tuples, recursively (``random.setstate`` needs tuples)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    rng_states: Mapping[str, Any],
    settings: OptimSettings,
    **extra: Any,
) -> None:
    """Write a training checkpoint atomically (a temporary sibling, then a rename).

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file (``torch.save`` format, loadable with ``weights_only=True``).
    model : torch.nn.Module
        The network; its ``spec`` (the :func:`emsrflow.archs.build_network` spec) is saved
        with its weights.
    optimizer, scheduler
        Their state dicts are saved.
    step : int
        Optimizer steps done.
    rng_states : mapping
        Random states (``torch``, ``cuda``, ``numpy``, ``python``).
    settings : OptimSettings
        The run's settings.
    **extra
        Further entries (the trainer saves its ``curve`` rows and ``seconds``).
    """
    checkpoint = {
        "format": _FORMAT,
        "emsrflow": __version__,
        "spec": dict(model.spec),
        "step": int(step),
        "settings": settings.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": dict(rng_states),
        **extra,
    }
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def _read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises many kinds of errors for a bad file
        raise InputError(
            f"{path}: cannot read the checkpoint: {type(err).__name__}: {err}"
        ) from err
    required = {"spec", "model", "step", "settings"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise InputError(f"{path}: not an emsrflow training checkpoint")
    return checkpoint


def load_model(
    path: str | os.PathLike,
    *,
    expect: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild a trained network from a checkpoint (in eval mode).

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint written by :func:`train` (or the model file copied from one).
    expect : mapping, optional
        Spec entries the network must have, e.g. ``{"type": "emsrnet", "scale": 3}``.
    device : str or torch.device
        Where to put the network (``"auto"``, ``"cpu"``, ``"cuda"``...).

    Returns
    -------
    torch.nn.Module
        Built with :func:`emsrflow.archs.build_network` from the saved spec.

    Raises
    ------
    ValueError
        If the checkpoint's network differs from ``expect`` (the message names the file,
        its architecture and τ and the expected ones), or the file is no checkpoint.
    """
    from .archs import build_network  # lazily: archs is optional for the trainer itself

    target = resolve_device(device)
    checkpoint = _read_checkpoint(path, "cpu")
    spec = dict(checkpoint["spec"])
    wrong = {key: value for key, value in (expect or {}).items() if spec.get(key) != value}
    if wrong:
        expected = {**{k: spec.get(k) for k in ("type", "scale")}, **dict(expect or {})}
        raise ValueError(
            f"{path}: checkpoint holds architecture {spec.get('type')!r} with τ = "
            f"{spec.get('scale')}, expected architecture {expected.get('type')!r} with τ = "
            f"{expected.get('scale')} (mismatch in {', '.join(sorted(wrong))})"
        )
    model = build_network(spec)
    model.load_state_dict(checkpoint["model"])
    return model.to(target).eval()


# ---------------------------------------------------------------------------------------
# Training


def _write_curve(path: Path, columns: Sequence[str], rows: list[list[float]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([int(row[0]), *(f"{value:.9g}" for value in row[1:])])


def _tensorboard(curve: Path, step: int) -> Any:
    """Return a SummaryWriter beside the curve if tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(curve.parent / "tensorboard"), purge_step=step + 1)


@contextlib.contextmanager
def _determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Switch torch's deterministic mode (and cuDNN autotuning) for the block only."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled and device.type == "cuda"
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=warn_only)
        torch.backends.cudnn.benchmark = before[1]


def _resume_check(path: Path, checkpoint: dict, model: nn.Module, settings: OptimSettings) -> None:
    spec = dict(model.spec)
    if dict(checkpoint["spec"]) != spec:
        raise ValueError(
            f"{path}: checkpoint of network {checkpoint['spec']} cannot resume training of "
            f"{spec}; delete the checkpoint to start afresh"
        )
    saved = checkpoint["settings"]
    current = settings.to_dict()
    differ = sorted(
        key
        for key in set(saved) | set(current)
        if key != "steps" and saved.get(key) != current.get(key)
    )
    if differ:
        changes = "; ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path}: training settings differ from the checkpoint's ({changes}); only "
            "'steps' may change on resume (delete the checkpoint to start afresh)"
        )
    if settings.steps < checkpoint["step"]:
        raise ValueError(
            f"{path}: checkpoint is at step {checkpoint['step']}, beyond the requested "
            f"steps = {settings.steps}"
        )


def train(
    model: nn.Module,
    pairs: Sequence[tuple[Any, Any]],
    settings: TrainSettings,
    *,
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` on LR/HR pairs with the no-clean-reference objective (eq. 16).

    If ``checkpoint`` exists, training resumes from it (see :func:`fit`).

    Parameters
    ----------
    model : torch.nn.Module
        Network from :func:`emsrflow.archs.build_network` (it needs ``spec`` and
        ``scale``); trained in place.
    pairs : sequence of (lr, hr)
        Training volumes (see :class:`PatchSampler`).
    settings : TrainSettings
        Hyperparameters.
    checkpoint, curve : str or os.PathLike
        Checkpoint file and training-curve CSV (:data:`CURVE_COLUMNS`), see :func:`fit`.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    torch.nn.Module
        ``model``, trained, in eval mode, on the training device.

    Raises
    ------
    ValueError
        If the network has nothing to train, the pairs do not fit (see
        :class:`PatchSampler`), or the checkpoint is of another network or other
        settings (only ``steps`` may change on resume).
    RuntimeError
        If CUDA is requested but not available.
    """
    _check_trainable(model)
    rng = np.random.default_rng(settings.seed)
    sampler = PatchSampler(pairs, int(model.scale), settings.patch, rng)
    log.info(
        "EMSR objective: %s ×%d on %d pair(s)", model.spec["type"], model.scale, len(sampler.pairs)
    )
    return fit(
        model,
        functools.partial(
            sampler.batch, input_noise=settings.input_noise, branch_noise=settings.branch_noise
        ),
        functools.partial(objective, loss=settings.loss, lambdas=settings.lambdas),
        settings,
        rng,
        terms=CURVE_COLUMNS[2:5],
        checkpoint=checkpoint,
        curve=curve,
        progress=progress,
    )


def _check_trainable(model: nn.Module) -> None:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, Mapping) or not hasattr(model, "scale"):
        raise ValueError(
            "the network needs attributes 'spec' and 'scale'; build it with "
            "emsrflow.archs.build_network"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"nothing to train: network {spec.get('type')!r} has no trainable parameters"
        )


def fit(
    model: nn.Module,
    draw: Callable[[int], tuple[np.ndarray, ...]],
    loss: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    settings: OptimSettings,
    rng: np.random.Generator,
    *,
    terms: Sequence[str],
    checkpoint: str | os.PathLike,
    curve: str | os.PathLike,
    progress: bool = True,
    hooks: Any = None,
) -> nn.Module:
    """Optimise ``model`` with Adam on batches from ``draw``, checkpointed and resumable.

    Each step draws ``draw(settings.batch)`` (NumPy arrays, made tensors on the training
    device), computes ``total, parts = loss(model, *tensors, precision=...)`` and takes an
    Adam step; the learning rate is halved every ``settings.lr_halve_every`` steps.

    If ``checkpoint`` exists, training resumes from it: the network, optimizer,
    scheduler, random states (torch, Python and ``rng``) and curve are restored and the
    run continues to ``settings.steps``. With ``settings.deterministic`` the result is
    then bit-identical to an uninterrupted run on the same machine.

    Parameters
    ----------
    model : torch.nn.Module
        Network from :func:`emsrflow.archs.build_network` (it needs ``spec``); trained
        in place.
    draw : callable
        ``draw(size)`` returns a training batch as a tuple of arrays; its randomness must
        come from ``rng`` alone.
    loss : callable
        ``loss(model, *batch, precision=...)`` returns the scalar loss and its unweighted
        parts (a detached 1D tensor of ``len(terms)`` values).
    settings : OptimSettings
        Settings of the loop (saved in the checkpoint; on resume, only ``steps`` may
        differ).
    rng : numpy.random.Generator
        The generator ``draw`` uses; its state is checkpointed.
    terms : sequence of str
        Names of the loss parts: the curve's columns are ``step, loss, *terms, lr,
        seconds``.
    checkpoint : str or os.PathLike
        Checkpoint file, written atomically every ``settings.checkpoint_every`` steps and
        at the end.
    curve : str or os.PathLike
        Training-curve CSV (a row every ``settings.log_every`` steps and at the end: the
        means of the loss and its parts since the previous row, the learning rate and
        the wall time so far), rewritten atomically with every checkpoint. TensorBoard
        scalars go to ``tensorboard/`` beside it if the ``tensorboard`` package is
        installed.
    progress : bool
        Show a tqdm progress bar.
    hooks : object, optional
        Further state of the run, for trainers with a second network or several
        processes (:mod:`emsrflow.largefactor`): ``hooks.state_dict()`` is called in
        every process at every checkpoint and saved under ``"hooks"``;
        ``hooks.load_state_dict(state)`` is called on resume, after the random states
        are restored; a false ``hooks.writes`` makes this process write no checkpoint,
        curve or TensorBoard scalars (the other ranks of a distributed run).

    Returns
    -------
    torch.nn.Module
        ``model``, trained, in eval mode, on the training device.

    Raises
    ------
    ValueError
        If the network has nothing to train or the checkpoint is of another network or
        other settings.
    RuntimeError
        If CUDA is requested but not available.

    Notes
    -----
    A fresh run seeds torch's global generator (and Python's ``random``) with
    ``settings.seed``; the network's initial weights are the caller's. Deterministic mode
    is switched on only for the duration of the call.
    """
    _check_trainable(model)
    checkpoint, curve = Path(checkpoint), Path(curve)
    spec = model.spec
    columns = ("step", "loss", *terms, "lr", "seconds")
    device = resolve_device(settings.device)

    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=settings.lr_halve_every, gamma=0.5
    )
    step, seconds, rows = 0, 0.0, []
    running = torch.zeros(1 + len(terms), dtype=torch.float64, device=device)
    since_row = 0
    if checkpoint.exists():
        state = _read_checkpoint(checkpoint, "cpu")
        _resume_check(checkpoint, state, model, settings)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(state["rng"], rng)
        step, seconds = int(state["step"]), float(state.get("seconds", 0.0))
        rows = [list(map(float, row)) for row in state.get("curve", [])]
        saved = state.get("running", [0.0] * len(running))
        running += torch.as_tensor(saved, dtype=torch.float64).to(device)
        since_row = int(state.get("since_row", 0))
        if hooks is not None:
            hooks.load_state_dict(state.get("hooks"))
        log.info(
            "resuming %s at step %d of %d from %s", spec["type"], step, settings.steps, checkpoint
        )
    else:
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        log.info("training %s on %s, %d steps", spec["type"], device, settings.steps)

    writes = bool(getattr(hooks, "writes", True))

    def save() -> None:
        extra = {} if hooks is None else {"hooks": hooks.state_dict()}
        if not writes:
            return
        _write_curve(curve, columns, rows)  # first: a checkpoint never has rows the CSV lacks
        save_checkpoint(
            checkpoint,
            model,
            optimizer,
            scheduler,
            step,
            _rng_states(rng, device),
            settings,
            seconds=seconds,
            curve=rows,
            running=running.tolist(),
            since_row=since_row,
            **extra,
        )

    board = _tensorboard(curve, step) if writes else None
    bar = tqdm(total=settings.steps, initial=step, disable=not progress, unit="step")
    start_step, started = step, time.perf_counter()
    try:
        with _determinism(settings.deterministic, device):
            tic = time.perf_counter()
            while step < settings.steps:
                batch = [
                    torch.from_numpy(a).to(device, non_blocking=True) for a in draw(settings.batch)
                ]
                total, parts = loss(model, *batch, precision=settings.precision)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                rate = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                since_row += 1
                running[0] += total.detach()
                running[1:] += parts
                bar.update()
                if step % settings.log_every == 0 or step == settings.steps:
                    now = time.perf_counter()
                    seconds, tic = seconds + now - tic, now
                    means = (running / since_row).tolist()
                    rows.append([step, *means, rate, seconds])
                    running.zero_()
                    since_row = 0
                    bar.set_postfix(loss=f"{means[0]:.4g}", lr=f"{rate:.3g}")
                    if board is not None:
                        for name, value in zip(columns[1:-1], [*means, rate], strict=True):
                            board.add_scalar(f"train/{name}", value, step)
                if step % settings.checkpoint_every == 0 or step == settings.steps:
                    now = time.perf_counter()
                    seconds, tic = seconds + now - tic, now
                    save()
                    speed = (step - start_step) / max(now - started, 1e-9)
                    log.log(
                        logging.INFO if writes else logging.DEBUG,
                        "step %d/%d: loss %.5g, lr %.3g, %.2f steps/s; checkpoint %s",
                        step,
                        settings.steps,
                        rows[-1][1] if rows else math.nan,
                        rate,
                        speed,
                        checkpoint,
                    )
        if writes and not curve.exists():  # a resumed run that had nothing left to train
            _write_curve(curve, columns, rows)
    finally:
        bar.close()
        if board is not None:
            board.close()
    return model.eval()
