"""Tiled, blended super-resolution inference of EM sections and stacks.

A section is cut into overlapping LR tiles (:func:`plan_tiles`), the tiles are
super-resolved in batches, and the outputs are blended back with smooth weights: along
an inner tile border (one shared with a neighbouring tile) a tile's weight is zero over
a *margin* of LR pixels, where its prediction lacks context, then rises as a raised
cosine across the rest of the overlap; image borders keep full weight. The blend is
normalised by the summed weights, so a network whose output does not depend on what
lies farther than ``margin`` LR pixels away gives exactly its untiled output, and any
other network passes smoothly from one tile to the next (the authors' code averages
tiles with equal weight, which leaves seams).

Tile origins are multiples of the network's window grid (``model.window`` for
window-attention networks, 1 otherwise), so every tile sees the windows of the untiled
image. Outputs are clipped to [0, 1] and returned as float32.

Networks run in channels-last memory format; ``precision="bf16"`` adds
``torch.autocast`` with bfloat16 where the device has native bfloat16 (AVX512-BF16 or
AMX CPUs, where oneDNN is several times faster than in float32, and recent GPUs), and
falls back to float32 with a logged warning elsewhere. ``tta=True`` (or ``"dihedral"``)
averages the network's outputs over the 8 flips and rotations of each tile;
``tta="flips"`` over its 4 flips only, which keep rows as rows (isotropic inference, whose
rows are z).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .device import resolve_device
from .resize import bicubic

__all__ = [
    "PRECISIONS",
    "Span",
    "Tile",
    "blend_tiles",
    "enhance_section",
    "enhance_stack",
    "plan_blend",
    "plan_tiles",
    "predict_section",
    "predict_stack",
    "time_sections",
]

log = logging.getLogger(__name__)

#: Arithmetic of the forward passes: float32, or bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")

#: Test-time augmentations: the transforms averaged, each (quarter turns, flipped axes).
TTA = {
    "dihedral": [(turns, flip) for turns in range(4) for flip in ((), (-1,))],
    "flips": [(0, ()), (0, (-2,)), (0, (-1,)), (0, (-2, -1))],
}


@dataclass(frozen=True)
class Span:
    """A tile's extent along one axis, in LR pixels.

    Attributes
    ----------
    start, stop : int
        Half-open range ``[start, stop)`` of the tile along the axis.
    before, after : int
        Overlap with the previous and the next tile along the axis; 0 at the image border.
    """

    start: int
    stop: int
    before: int
    after: int

    @property
    def size(self) -> int:
        """Length of the span in LR pixels."""
        return self.stop - self.start


@dataclass(frozen=True)
class Tile:
    """One tile of a plan: its spans along y and x.

    Attributes
    ----------
    y, x : Span
        Rows and columns of the tile.
    """

    y: Span
    x: Span

    @property
    def shape(self) -> tuple[int, int]:
        """(y, x) size of the tile in LR pixels."""
        return self.y.size, self.x.size

    def slices(self, scale: int = 1) -> tuple[slice, slice]:
        """Return the (y, x) slices of the tile in an image ``scale`` times the LR one.

        Parameters
        ----------
        scale : int, optional
            1 for the LR image, τ for the super-resolved one.

        Returns
        -------
        tuple of slice
        """
        return (
            slice(scale * self.y.start, scale * self.y.stop),
            slice(scale * self.x.start, scale * self.x.stop),
        )


def _plan_axis(n: int, tile: int, overlap: int, multiple: int) -> list[Span]:
    if n <= tile:
        return [Span(0, n, 0, 0)]
    longest = (tile - overlap) // multiple * multiple
    count = -(-(n - overlap) // longest)  # fewest tiles with count·stride + overlap ≥ n
    stride = -(-(n - overlap) // (count * multiple)) * multiple
    size = stride + overlap
    last = (n - size) // multiple * multiple
    starts = [*range(0, last, stride), last]
    stops = [start + size for start in starts[:-1]] + [n]
    return [
        Span(
            start,
            stop,
            stops[i - 1] - start if i else 0,
            stop - starts[i + 1] if i + 1 < len(starts) else 0,
        )
        for i, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]


def plan_tiles(
    shape_yx: tuple[int, int], *, tile: int, overlap: int, multiple: int = 1
) -> list[Tile]:
    """Cover an image with overlapping tiles.

    An axis not longer than ``tile`` is one tile. A longer one gets the fewest tiles of
    at most ``tile`` pixels that overlap by ``overlap`` pixels and start every
    ``stride`` pixels, ``stride`` a multiple of ``multiple``; the tiles are then made as
    short as that count allows (``stride + overlap``), so little is computed twice. The
    last tile ends on the image edge, its origin rounded down to a multiple of
    ``multiple``, so it overlaps its neighbour by at least ``overlap`` and is up to
    ``multiple - 1`` pixels longer than the others. All origins are multiples of
    ``multiple``: a network working on a grid of ``multiple``-pixel windows (window
    attention or pooling, padded at the bottom and right) sees in each tile the same
    windows as in the whole image.

    Parameters
    ----------
    shape_yx : tuple of int
        (y, x) size of the image.
    tile : int
        Tile size in pixels.
    overlap : int
        Minimum overlap of neighbouring tiles in pixels, ``0 <= overlap < tile``.
    multiple : int, optional
        Tile origins are multiples of this (a network's window size); ``tile - overlap``
        must be at least ``multiple``.

    Returns
    -------
    list of Tile
        Row-major tiles covering every pixel of the image.

    Raises
    ------
    ValueError
        If the shape or an option is out of range.
    """
    if len(shape_yx) != 2 or min(shape_yx) < 1:
        raise ValueError(f"shape_yx must be two positive sizes, got {tuple(shape_yx)}")
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile = {tile}), got {overlap}")
    if tile - overlap < multiple:
        raise ValueError(
            f"tile - overlap = {tile - overlap} is smaller than the window multiple "
            f"{multiple}: use a larger tile or a smaller overlap"
        )
    ys, xs = (_plan_axis(int(n), tile, overlap, multiple) for n in shape_yx)
    return [Tile(y, x) for y in ys for x in xs]


def _no_bf16_reason(device: torch.device) -> str | None:
    """Return why bfloat16 is not fast on ``device``, or None where it is."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bfloat16"
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        if capability.startswith("AVX512") and native:
            return None
        return f"this CPU ({capability}) has neither AVX512-BF16 nor AMX"
    return f"bfloat16 autocast is not used on {device.type} devices"


def _window(span: Span, scale: int, margin: int) -> np.ndarray:
    """Blending weights along one axis of a tile's output (``scale`` × its LR size)."""
    n = scale * span.size
    centre = (np.arange(n) + 0.5) / scale  # output pixel centres, LR pixels from the start
    weight = np.ones(n)
    for overlap, distance in ((span.before, centre), (span.after, span.size - centre)):
        if overlap:
            rise = np.clip((distance - margin) / (overlap - margin), 0.0, 1.0)
            weight *= 0.5 - 0.5 * np.cos(np.pi * rise)
    return weight.astype(np.float32)


def _tta_transforms(tta: bool | str) -> list[tuple[int, tuple[int, ...]]]:
    """Return the transforms of a ``tta`` option (False: the identity alone)."""
    if tta is False:
        return [(0, ())]
    name = "dihedral" if tta is True else tta
    if name not in TTA:
        raise ValueError(f"tta must be true, false or one of {sorted(TTA)}, got {tta!r}")
    return TTA[name]


def _forward(
    model: nn.Module, x: torch.Tensor, transforms: list[tuple[int, tuple[int, ...]]]
) -> torch.Tensor:
    """Super-resolve a batch (N, 1, h, w), averaging over ``transforms`` (turns, flips)."""
    if transforms == [(0, ())]:  # no TTA: no copies of the batch or its output
        return model(x.contiguous(memory_format=torch.channels_last)).float()
    total = None
    for turns, flips in transforms:
        view = torch.rot90(x, turns, (-2, -1)).flip(flips)
        out = model(view.contiguous(memory_format=torch.channels_last)).float()
        out = torch.rot90(out.flip(flips), -turns, (-2, -1))
        total = out if total is None else total + out
    return total / len(transforms)


def predict_section(
    model: nn.Module,
    image: np.ndarray,
    *,
    tile: int = 128,
    overlap: int = 32,
    margin: int | None = None,
    batch: int = 4,
    tta: bool | str = False,
    precision: str = "fp32",
    device: str | None = None,
) -> np.ndarray:
    """Super-resolve one 2D LR section, tile by tile.

    The model is put in eval mode and moved, in place, to ``device`` in channels-last
    memory format.

    Parameters
    ----------
    model : torch.nn.Module
        Network with an integer attribute ``scale`` (τ) mapping (N, 1, h, w) LR images in
        [0, 1] to (N, 1, τh, τw), and optionally ``window`` (its window grid size, to
        which tile origins are aligned).
    image : ndarray
        (h, w) float LR section with intensities in [0, 1].
    tile : int, optional
        Tile size in LR pixels (clamped to the image).
    overlap : int, optional
        Minimum overlap of neighbouring tiles in LR pixels.
    margin : int, optional
        LR pixels along inner tile borders given zero weight, ``2·margin < overlap``
        (or 0 without overlap); ``overlap // 4`` by default. The output equals the
        untiled one when the network's receptive field reaches no farther than
        ``margin`` LR pixels (and, for window attention, stays within its windows).
    batch : int, optional
        Tiles per forward pass (with ``tta``, each of the 4 or 8 passes per batch holds
        ``batch`` tiles).
    tta : bool or {'dihedral', 'flips'}, optional
        Average over the 8 flips and 90° rotations of each tile (True, 'dihedral'), or
        over its 4 flips ('flips': rows stay rows).
    precision : {'fp32', 'bf16'}, optional
        float32, or bfloat16 autocast where the device supports it (else float32, with
        a logged warning).
    device : str, optional
        See :func:`resolve_device`.

    Returns
    -------
    ndarray
        (τh, τw) float32 image clipped to [0, 1].

    Raises
    ------
    ValueError
        If the image is not 2D or an option is out of range.
    RuntimeError
        If the network's output has the wrong shape, or CUDA is asked for but missing.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"image must be a 2D section, got shape {array.shape}")
    return predict_stack(
        model,
        array[None],
        tile=tile,
        overlap=overlap,
        margin=margin,
        batch=batch,
        tta=tta,
        precision=precision,
        device=device,
    )[0]


def plan_blend(
    shape: tuple[int, int],
    *,
    tile: int,
    overlap: int,
    margin: int | None,
    batch: int,
    multiple: int,
    scale: int,
    device: torch.device,
) -> tuple[list[Tile], list[list[int]], list[torch.Tensor], torch.Tensor]:
    """Plan the tiled, blended inference of (h, w) sections for :func:`blend_tiles`.

    Parameters
    ----------
    shape : tuple of int
        (h, w) of a section, in input pixels.
    tile, overlap, margin, batch
        As for :func:`predict_section` (``margin=None``: ``overlap // 4``).
    multiple : int
        Tile origins are multiples of this (the network's window grid).
    scale : int
        Output pixels per input pixel.
    device : torch.device
        Where the weights live.

    Returns
    -------
    tiles, groups, weights, total
        The tiles (:func:`plan_tiles`), batches of their indices (one tile shape per
        batch, at most ``batch`` tiles), each tile's blending weights on the output grid
        and the sum of the weights.

    Raises
    ------
    ValueError
        If ``batch`` or ``margin`` is out of range, or the tiles cannot be planned.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    margin = overlap // 4 if margin is None else margin
    if margin < 0 or (overlap > 0 and 2 * margin >= overlap) or (overlap == 0 and margin):
        raise ValueError(
            f"margin must be ≥ 0 and less than half the overlap ({overlap}), got {margin}"
        )
    tiles = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple)
    spans = {span for t in tiles for span in (t.y, t.x)}
    windows = {s: torch.from_numpy(_window(s, scale, margin)).to(device) for s in spans}
    weights = [windows[t.y][:, None] * windows[t.x][None, :] for t in tiles]
    total = torch.zeros(scale * shape[0], scale * shape[1], device=device)
    for t, weight in zip(tiles, weights, strict=True):
        total[t.slices(scale)] += weight
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tiles):
        by_shape.setdefault(t.shape, []).append(i)
    groups = [g[i : i + batch] for g in by_shape.values() for i in range(0, len(g), batch)]
    return tiles, groups, weights, total


def blend_tiles(
    forward: Callable[[torch.Tensor], torch.Tensor],
    crop: Callable[[Tile], torch.Tensor],
    tiles: list[Tile],
    groups: list[list[int]],
    weights: list[torch.Tensor],
    total: torch.Tensor,
    *,
    scale: int,
    name: str,
) -> np.ndarray:
    """Run a network on batches of tiles and blend its outputs into one section.

    Parameters
    ----------
    forward : callable
        Network pass: (n, c, h, w) input tiles to (n, 1, scale·h, scale·w) outputs.
    crop : callable
        The (c, h, w) input of a tile.
    tiles, groups : list
        The tiles, and batches of their indices (tiles of one shape per batch).
    weights, total : torch.Tensor
        Each tile's blending weights on the output grid, and their sum.
    scale : int
        Output pixels per input pixel.
    name : str
        The network's name, for the error message.

    Returns
    -------
    numpy.ndarray
        The blended section, clipped to [0, 1].

    Raises
    ------
    RuntimeError
        If the network returns another shape than ``scale`` times its input.
    """
    blend = torch.zeros_like(total)
    for group in groups:
        x = torch.stack([crop(tiles[i]) for i in group])
        y = forward(x)
        expected = (len(group), 1, scale * x.shape[-2], scale * x.shape[-1])
        if tuple(y.shape) != expected:
            raise RuntimeError(
                f"{name} (scale {scale}) returned {tuple(y.shape)} for tiles "
                f"{tuple(x.shape)}; expected {expected}"
            )
        for i, pred in zip(group, y[:, 0], strict=True):
            blend[tiles[i].slices(scale)] += pred * weights[i]
    return blend.div_(total).clamp_(0.0, 1.0).cpu().numpy()


def predict_stack(
    model: nn.Module,
    stack: np.ndarray,
    *,
    tile: int = 128,
    overlap: int = 32,
    margin: int | None = None,
    batch: int = 4,
    tta: bool | str = False,
    precision: str = "fp32",
    device: str | None = None,
) -> np.ndarray:
    """Super-resolve every section of a stack, tile by tile.

    Sections are processed one after the other, so memory holds the stack, its output
    and one batch of tiles: a volume is streamed through slab by slab. Tiles, blending
    weights, device and precision are set up once per call.

    Parameters
    ----------
    model : torch.nn.Module
        See :func:`predict_section`.
    stack : ndarray
        (z, h, w) float LR stack with intensities in [0, 1].
    tile, overlap, margin, batch, tta, precision, device
        See :func:`predict_section`.

    Returns
    -------
    ndarray
        (z, τh, τw) float32 stack clipped to [0, 1].

    Raises
    ------
    ValueError
        If the stack is not 3D or an option is out of range.
    RuntimeError
        If the network's output has the wrong shape, or CUDA is asked for but missing.
    """
    array = np.asarray(stack, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"stack must be (z, y, x), got shape {array.shape}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    transforms = _tta_transforms(tta)
    device = resolve_device(device)
    scale = int(model.scale)
    tiles, groups, weights, total = plan_blend(
        array.shape[1:],
        tile=tile,
        overlap=overlap,
        margin=margin,
        batch=batch,
        multiple=int(getattr(model, "window", 1)),
        scale=scale,
        device=device,
    )
    bf16 = precision == "bf16"
    if bf16 and (reason := _no_bf16_reason(device)):
        log.warning("bfloat16 inference falls back to float32: %s", reason)
        bf16 = False
    model.eval().to(device=device, memory_format=torch.channels_last)

    out = np.empty((array.shape[0], *total.shape), dtype=np.float32)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        for z, section in enumerate(array):
            plane = torch.from_numpy(section).to(device)
            out[z] = blend_tiles(
                lambda x: _forward(model, x, transforms),
                lambda tile, plane=plane: plane[tile.slices()][None],
                tiles,
                groups,
                weights,
                total,
                scale=scale,
                name=type(model).__name__,
            )
    return out


def enhance_section(model: nn.Module, image: np.ndarray, **options) -> np.ndarray:
    """Enhance an HR section at its own resolution with a trained super-resolver.

    The EMSR paper (Sec. III.D.3, "Super-resolver as an enhancer", Fig. 10) applies the
    trained SR model to HR images of the resolution it was trained to produce: this
    mitigates noise and sharpens detail (though contrast may change where the images do
    not match the training data). Here the section itself is the network's input, so
    none of its detail is lost to downsampling first; the τ-times larger output is
    brought back to the section's shape by antialiased, area-aligned bicubic
    downsampling (:func:`emsrflow.resize.bicubic`).

    Parameters
    ----------
    model : torch.nn.Module
        See :func:`predict_section`.
    image : ndarray
        (h, w) float section with intensities in [0, 1].
    **options
        As for :func:`predict_section`.

    Returns
    -------
    ndarray
        float32 image of the input's shape, clipped to [0, 1].
    """
    array = np.asarray(image, dtype=np.float32)
    return bicubic(predict_section(model, array, **options), array.shape, antialias=True)


def enhance_stack(model: nn.Module, stack: np.ndarray, **options) -> np.ndarray:
    """Enhance every HR section of a stack at its own resolution.

    See :func:`enhance_section`; sections are processed as by :func:`predict_stack`.

    Returns
    -------
    ndarray
        float32 stack of the input's shape, clipped to [0, 1].
    """
    array = np.asarray(stack, dtype=np.float32)
    return bicubic(predict_stack(model, array, **options), array.shape[1:], antialias=True)


def time_sections(model: nn.Module, stack: np.ndarray, *, warmup: int = 1, **options) -> np.ndarray:
    """Seconds :func:`predict_stack` takes to super-resolve each section of a stack.

    Running time of the EMSR paper's Table IV: each section is super-resolved on its
    own, as one call of :func:`predict_stack` with ``options`` (tiling, batch, TTA,
    precision, device), and timed with :func:`time.perf_counter` from the LR array in
    memory to the SR array back in memory (tiling, forward passes, blending and the
    copy back from the device included; reading and writing files, building or loading
    the network excluded). The first ``warmup`` sections are run once untimed before,
    so that one-off costs (CUDA context, kernel selection, allocator) are not counted.

    Parameters
    ----------
    model : torch.nn.Module
        A super-resolver (see :func:`predict_section`).
    stack : ndarray
        (z, h, w) float LR stack in [0, 1]; every section is timed.
    warmup : int, optional
        Sections run untimed first (default 1).
    **options
        Keywords of :func:`predict_stack`.

    Returns
    -------
    ndarray
        float64 seconds per section, in the order of the stack.
    """
    array = np.asarray(stack, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"stack must be (z, y, x) with z ≥ 1, got shape {array.shape}")
    for section in array[: max(0, warmup)]:
        predict_stack(model, section[None], **options)
    seconds = []
    for section in array:
        start = time.perf_counter()
        predict_stack(model, section[None], **options)  # returns host memory: synchronised
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds, dtype=np.float64)
