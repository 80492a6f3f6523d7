"""Synthetic SBEM phantom of rat brain tissue with ground truth (the demo data).

Nothing can be downloaded for the demo, so the workflow images a procedural tissue:
myelinated axons of white matter (dark myelin rings around light axoplasm, with
mitochondria, between small processes with thin membranes) and neuropil of gray matter
(irregular cells with thin dark membranes, clusters of synaptic vesicles and
mitochondria with faint cristae), mixed by a smooth random field.

A :class:`Phantom` builds a seeded *scene* once (cell seeds, axon centrelines,
ellipsoids, vesicle clusters) and renders any range of clean slices independently and
deterministically, so volumes far larger than memory can be made slab by slab. Three
acquisitions of the clean volume are simulated, as in the EMSR paper (Sec. II.A):

HR
    A small field of view at the clean voxel size, one section every ``section_nm``:
    Gaussian PSF, Poisson–Gaussian noise, scan-line correlated noise, border drift and
    charging streaks (Fig. 9 and Fig. 11 of the paper).
LR
    A larger field of view around the HR one, at ``lr.pixel_nm``, slightly
    misregistered (shift, rotation, scale error; the ground truth is
    :attr:`Phantom.hr_to_lr`), integrated exactly over each LR pixel, with its own
    blur, contrast and independent noise.
Anisotropic
    The HR field of view sliced ``thickness`` clean voxels thick (axial blur), for
    isotropic reconstruction; the ground truth is the clean volume.

Coordinates: clean voxel (z, y, x) has its centre at integer coordinates; HR pixel
(r, c) of any section is clean voxel (y, x) = ``hr_origin_yx + (r, c)``. The noise of
section ``k`` of each acquisition is drawn from ``np.random.default_rng([seed, stream,
k])``, so slab-wise generation equals whole generation.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, signal
from scipy.spatial import cKDTree

from .degrade import slice_weights
from .transform import Similarity

__all__ = [
    "LABEL_CLASSES",
    "AnisotropicParams",
    "HRParams",
    "LRParams",
    "Phantom",
    "PhantomParams",
    "TissueParams",
]

#: Classes returned by :meth:`Phantom.label_class`.
LABEL_CLASSES = {"membrane": 0, "cell": 1, "axoplasm": 2, "myelin": 3}

# Random streams: np.random.default_rng([seed, stream, ...]).
_SCENE, _HR, _LR, _ANISO = 0, 1, 2, 3
# Sub-streams of the scene.
_S_REGION, _S_GRAY, _S_WHITE, _S_AXONS, _S_AXON_MITO, _S_MITO, _S_BOUTON = range(7)
_S_MISREG, _S_VESICLE, _S_NOISE, _S_DENDRITE = 7, 8, 9, 10
# Channels of the procedural value noise.
_N_TEX1, _N_TEX2, _N_SHADE = range(1, 4)

_COARSE = 8  # coarse grid step (voxels) of the cell-candidate search
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TissueParams:
    """Clean tissue; lengths in nanometres, intensities on a [0, 1] scale.

    Attributes
    ----------
    voxel_nm : float
        Isotropic voxel size of the clean volume, also the HR pixel size.
    shape_yx : tuple of int or None
        Lateral extent (y, x) of the clean volume in voxels; None: just large enough
        for the LR field of view (HR field of view centred).
    depth : int or None
        Number of clean z voxels; None: what the HR sections and anisotropic slices need.
    white_matter_fraction : float
        Fraction of white matter, in [0, 1] (0: all gray, 1: all white).
    region_scale_nm : float
        Correlation length of the random field that splits white and gray matter.
    axon_axis : {"z", "y", "x"}
        Main direction of the axons (z: xy sections cut them across).
    axon_radius_nm : float
        Mean inner (axoplasm) radius of myelinated axons, log-normally distributed.
    axon_radius_cv : float
        Coefficient of variation of that radius.
    myelin_ratio : tuple of float
        Range of myelin thickness / inner radius (uniform).
    axon_fill : float
        Area fraction of myelinated fibres in white matter (packing may stop short).
    gray_axon_fill : float
        Area fraction of myelinated fibres in gray matter.
    axon_gap_nm : float
        Least gap between fibres where they are packed.
    axon_tilt_deg : float
        Largest tilt of the whole bundle from ``axon_axis``.
    axon_dispersion_deg : float
        Standard deviation of the individual tilt of each axon.
    axon_wander_nm : float
        Amplitude of the smooth wandering of centrelines.
    axon_wander_period_nm : float
        Period of that wandering along the axis.
    axon_mito_per_um : float
        Mitochondria per micrometre of myelinated axon.
    process_size_nm : float
        Spacing of the small processes (unmyelinated axons, glia) between fibres.
    process_elongation : float
        Elongation of those processes along ``axon_axis``.
    cell_size_nm : float
        Spacing of the small profiles of gray matter (thin axons, glia).
    cell_size_cv : float
        Variability of their sizes (spread of the power-diagram weights).
    dendrite_density_um3 : float
        Dendrite profiles (large cells) per cubic micrometre of gray matter.
    dendrite_radius_nm : float
        Mean radius of a dendrite profile (uniform within ±40 %).
    membrane_nm : float
        Thickness of cell membranes.
    boundary_jitter_nm : float
        Amplitude of the smooth jitter of cell boundaries.
    mito_density_um3 : float
        Mitochondria per cubic micrometre of gray matter.
    mito_radius_nm, mito_length_nm : float
        Typical mitochondrion radius and length.
    bouton_density_um3 : float
        Synaptic boutons (cells filled with vesicles) per cubic micrometre of gray matter.
    bouton_radius_nm : float
        Mean radius of a bouton (uniform within ±30 %).
    vesicle_diameter_nm : float
        Diameter of synaptic vesicles.
    vesicle_fill : float
        Volume fraction of a cluster occupied by vesicles.
    membrane_intensity, myelin_intensity, mito_intensity : float
        Intensities of membranes, myelin and mitochondria.
    cytoplasm_intensity, axoplasm_intensity : tuple of float
        Ranges of the intensity of each cell and each axon (uniform).
    vesicle_contrast : float
        Darkening at the rim of a vesicle.
    texture : float
        Amplitude of the fine granular texture (relative).
    shading : float
        Amplitude of the slow intensity variation (relative).
    """

    voxel_nm: float = 15.0
    shape_yx: tuple[int, int] | None = None
    depth: int | None = None
    white_matter_fraction: float = 0.7
    region_scale_nm: float = 3000.0
    axon_axis: str = "z"
    axon_radius_nm: float = 250.0
    axon_radius_cv: float = 0.4
    myelin_ratio: tuple[float, float] = (0.25, 0.45)
    axon_fill: float = 0.7
    gray_axon_fill: float = 0.03
    axon_gap_nm: float = 15.0
    axon_tilt_deg: float = 4.0
    axon_dispersion_deg: float = 0.5
    axon_wander_nm: float = 250.0
    axon_wander_period_nm: float = 20000.0
    axon_mito_per_um: float = 0.12
    process_size_nm: float = 220.0
    process_elongation: float = 5.0
    cell_size_nm: float = 260.0
    cell_size_cv: float = 0.5
    dendrite_density_um3: float = 0.8
    dendrite_radius_nm: float = 420.0
    membrane_nm: float = 30.0
    boundary_jitter_nm: float = 25.0
    mito_density_um3: float = 3.0
    mito_radius_nm: float = 110.0
    mito_length_nm: float = 700.0
    bouton_density_um3: float = 0.8
    bouton_radius_nm: float = 300.0
    vesicle_diameter_nm: float = 40.0
    vesicle_fill: float = 0.25
    membrane_intensity: float = 0.2
    myelin_intensity: float = 0.09
    mito_intensity: float = 0.4
    cytoplasm_intensity: tuple[float, float] = (0.6, 0.8)
    axoplasm_intensity: tuple[float, float] = (0.66, 0.8)
    vesicle_contrast: float = 0.55
    texture: float = 0.06
    shading: float = 0.05

    def __post_init__(self):
        _check_tuple(self, "tissue.", int, ("shape_yx",), 2, optional=True, positive=True)
        _check_tuple(self, "tissue.", float, ("myelin_ratio",), 2)
        _check_tuple(self, "tissue.", float, ("cytoplasm_intensity", "axoplasm_intensity"), 2)
        if self.depth is not None:
            _check_int(self, "tissue.", "depth", minimum=1)
        _check_numbers(self, "tissue.", _positive=_TISSUE_POSITIVE, _nonneg=_TISSUE_NONNEG)
        for name in ("white_matter_fraction", "axon_fill", "gray_axon_fill", "vesicle_fill"):
            _check_range(self, "tissue.", name, 0.0, 1.0)
        for name in (
            "membrane_intensity",
            "myelin_intensity",
            "mito_intensity",
            "vesicle_contrast",
        ):
            _check_range(self, "tissue.", name, 0.0, 1.0)
        for name in ("myelin_ratio", "cytoplasm_intensity", "axoplasm_intensity"):
            lo, hi = getattr(self, name)
            top = 1.0 if name != "myelin_ratio" else 5.0
            if not 0 <= lo <= hi <= top:
                raise ValueError(
                    f"phantom parameter tissue.{name} must satisfy 0 ≤ low ≤ high ≤ {top}, "
                    f"got {list(getattr(self, name))}"
                )
        if self.axon_axis not in ("z", "y", "x"):
            raise ValueError(
                f"phantom parameter tissue.axon_axis must be 'z', 'y' or 'x', "
                f"got {self.axon_axis!r}"
            )
        if self.process_elongation < 1:
            raise ValueError(
                "phantom parameter tissue.process_elongation must be ≥ 1, "
                f"got {self.process_elongation}"
            )


_TISSUE_POSITIVE = (
    "voxel_nm",
    "region_scale_nm",
    "axon_radius_nm",
    "axon_wander_period_nm",
    "process_size_nm",
    "cell_size_nm",
    "dendrite_radius_nm",
    "membrane_nm",
    "mito_radius_nm",
    "mito_length_nm",
    "bouton_radius_nm",
    "vesicle_diameter_nm",
)
_TISSUE_NONNEG = (
    "axon_radius_cv",
    "axon_gap_nm",
    "axon_tilt_deg",
    "axon_dispersion_deg",
    "axon_wander_nm",
    "axon_mito_per_um",
    "cell_size_cv",
    "boundary_jitter_nm",
    "mito_density_um3",
    "bouton_density_um3",
    "dendrite_density_um3",
    "texture",
    "shading",
)


@dataclass(frozen=True)
class HRParams:
    """HR acquisition: small field of view at the clean voxel size.

    Attributes
    ----------
    shape_yx : tuple of int
        Field of view (rows, cols) in HR pixels.
    sections : int
        Number of sections; the LR acquisition images the same sections.
    section_nm : float
        Distance between sections; section k is clean slice round(k·section_nm/voxel_nm).
    origin_yx : tuple of int or None
        Clean voxel (y, x) of HR pixel (0, 0); None centres the field of view.
    psf_nm : float
        Standard deviation of the Gaussian point-spread function.
    gain, offset : float
        Detector contrast and brightness: signal = offset + gain · clean intensity.
    dose : float
        Electrons per pixel at signal 1 (Poisson noise).
    read_noise : float
        Standard deviation of the additive Gaussian noise (signal units).
    line_offset, line_gain : float
        Standard deviations of the row-wise offset and gain (rows scanned along x).
    line_noise : float
        Standard deviation of noise correlated along the fast scan axis (x).
    line_corr_px : float
        Correlation length of that noise, in pixels.
    drift_px : float
        Largest displacement of the first rows and columns (border drift); 0: none.
    drift_width_px : float
        Decay length of the drift from the border, in pixels.
    charging : float
        Strength of charging streaks; 0: none.
    charging_prob : float
        Probability that a section has a charged patch.
    charging_length_px : float
        Length of the streaks along the scan direction, in pixels.
    """

    shape_yx: tuple[int, int] = (192, 192)
    sections: int = 12
    section_nm: float = 50.0
    origin_yx: tuple[int, int] | None = None
    psf_nm: float = 12.0
    gain: float = 1.0
    offset: float = 0.0
    dose: float = 60.0
    read_noise: float = 0.02
    line_offset: float = 0.012
    line_gain: float = 0.015
    line_noise: float = 0.015
    line_corr_px: float = 3.0
    drift_px: float = 3.0
    drift_width_px: float = 16.0
    charging: float = 1.0
    charging_prob: float = 0.5
    charging_length_px: float = 30.0

    def __post_init__(self):
        _check_tuple(self, "hr.", int, ("shape_yx",), 2, positive=True)
        _check_tuple(self, "hr.", int, ("origin_yx",), 2, optional=True)
        _check_int(self, "hr.", "sections", minimum=1)
        _check_numbers(
            self,
            "hr.",
            _positive=("section_nm", "dose"),
            _nonneg=(
                "psf_nm",
                "gain",
                "read_noise",
                "line_offset",
                "line_gain",
                "line_noise",
                "line_corr_px",
                "drift_px",
                "drift_width_px",
                "charging",
                "charging_length_px",
            ),
        )
        _check_range(self, "hr.", "charging_prob", 0.0, 1.0)
        _check_finite(self, "hr.", "offset")


@dataclass(frozen=True)
class LRParams:
    """LR acquisition: larger field of view around the HR one, coarser pixels.

    Attributes
    ----------
    pixel_nm : float
        LR pixel size (nominal).
    fov_factor : float
        LR field of view relative to the HR one (per side).
    max_shift_nm : float
        Largest misregistration shift per axis (drawn uniformly per seed).
    max_rotation_deg : float
        Largest misregistration rotation.
    max_scale_error : float
        Largest relative scale error.
    psf_nm : float
        Standard deviation of the Gaussian PSF (before pixel integration).
    gain, offset : float
        Contrast and brightness relative to the clean intensity.
    dose, read_noise, line_offset, line_gain, line_noise, line_corr_px : float
        Noise, as for :class:`HRParams`.
    """

    pixel_nm: float = 50.0
    fov_factor: float = 1.5
    max_shift_nm: float = 300.0
    max_rotation_deg: float = 2.0
    max_scale_error: float = 0.01
    psf_nm: float = 20.0
    gain: float = 0.8
    offset: float = 0.12
    dose: float = 80.0
    read_noise: float = 0.025
    line_offset: float = 0.006
    line_gain: float = 0.01
    line_noise: float = 0.01
    line_corr_px: float = 2.0

    def __post_init__(self):
        _check_numbers(
            self,
            "lr.",
            _positive=("pixel_nm", "fov_factor", "dose"),
            _nonneg=(
                "max_shift_nm",
                "max_rotation_deg",
                "psf_nm",
                "gain",
                "read_noise",
                "line_offset",
                "line_gain",
                "line_noise",
                "line_corr_px",
            ),
        )
        _check_range(self, "lr.", "max_scale_error", 0.0, 0.5)
        _check_range(self, "lr.", "max_rotation_deg", 0.0, 45.0)
        _check_finite(self, "lr.", "offset")


@dataclass(frozen=True)
class AnisotropicParams:
    """Anisotropic stack over the HR field of view, for isotropic reconstruction.

    Attributes
    ----------
    slices : int
        Number of slices.
    thickness : float
        Slice thickness ρ in clean voxels (may be non-integer); voxel (ρ·v, v, v).
        Slice k integrates clean z in [k·ρ − 0.5, (k + 1)·ρ − 0.5].
    axial_sigma_nm : float
        Standard deviation of the extra Gaussian blur along z.
    psf_nm, gain, offset, dose, read_noise, line_offset, line_gain, line_noise, \
line_corr_px : float
        Lateral PSF, detector and noise, as for :class:`HRParams`.
    """

    slices: int = 16
    thickness: float = 3.0
    axial_sigma_nm: float = 10.0
    psf_nm: float = 12.0
    gain: float = 1.0
    offset: float = 0.0
    dose: float = 120.0
    read_noise: float = 0.02
    line_offset: float = 0.01
    line_gain: float = 0.015
    line_noise: float = 0.015
    line_corr_px: float = 3.0

    def __post_init__(self):
        _check_int(self, "anisotropic.", "slices", minimum=1)
        _check_numbers(
            self,
            "anisotropic.",
            _positive=("thickness", "dose"),
            _nonneg=(
                "axial_sigma_nm",
                "psf_nm",
                "gain",
                "read_noise",
                "line_offset",
                "line_gain",
                "line_noise",
                "line_corr_px",
            ),
        )
        _check_finite(self, "anisotropic.", "offset")


_SECTIONS = {
    "tissue": TissueParams,
    "hr": HRParams,
    "lr": LRParams,
    "anisotropic": AnisotropicParams,
}


@dataclass(frozen=True)
class PhantomParams:
    """All knobs of the phantom, grouped as tissue, HR, LR and anisotropic acquisition.

    The defaults make a small, fast demo: HR 192 × 192 pixels × 12 sections at 15 nm,
    LR 86 × 86 pixels at 50 nm, an anisotropic stack of 16 slices ρ = 3 thick.

    Attributes
    ----------
    tissue : TissueParams
    hr : HRParams
    lr : LRParams
    anisotropic : AnisotropicParams
    """

    tissue: TissueParams = field(default_factory=TissueParams)
    hr: HRParams = field(default_factory=HRParams)
    lr: LRParams = field(default_factory=LRParams)
    anisotropic: AnisotropicParams = field(default_factory=AnisotropicParams)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"phantom parameter {name} must be a {cls.__name__}")
        _Geometry(self)  # cross-checks of the fields of view

    @classmethod
    def from_dict(cls, d: dict | None) -> PhantomParams:
        """Build from a (possibly nested) dictionary of overrides of the defaults.

        Parameters
        ----------
        d : dict or None
            ``{"tissue": {...}, "hr": {...}, "lr": {...}, "anisotropic": {...}}``;
            missing keys keep their defaults, lists are accepted for tuples.

        Returns
        -------
        PhantomParams

        Raises
        ------
        ValueError
            For an unknown key (named in the message) or an invalid value.
        """
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError(f"phantom parameters must be a mapping, got {type(d).__name__}")
        parts = {}
        for key, sub in d.items():
            if key not in _SECTIONS:
                raise ValueError(
                    f"unknown phantom parameter {key!r}; expected one of {sorted(_SECTIONS)}"
                )
            if not isinstance(sub, dict):
                raise ValueError(f"phantom parameter {key} must be a mapping, got {sub!r}")
            known = {f.name for f in dataclasses.fields(_SECTIONS[key])}
            for name in sub:
                if name not in known:
                    raise ValueError(
                        f"unknown phantom parameter {key}.{name}; expected one of {sorted(known)}"
                    )
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}
            try:
                parts[key] = _SECTIONS[key](**values)
            except TypeError as err:  # pragma: no cover - defensive
                raise ValueError(f"phantom parameters {key}: {err}") from err
        return cls(**parts)

    def to_dict(self) -> dict:
        """Return a JSON-serialisable nested dictionary (inverse of :meth:`from_dict`)."""

        def plain(v):
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {
            name: {k: plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
            for name in _SECTIONS
        }


def _fail(prefix, name, value, what):
    raise ValueError(f"phantom parameter {prefix}{name} must be {what}, got {value!r}")


def _is_number(v):
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _check_finite(obj, prefix, name):
    v = getattr(obj, name)
    if not _is_number(v) or not math.isfinite(v):
        _fail(prefix, name, v, "a finite number")


def _check_numbers(obj, prefix, *, _positive=(), _nonneg=()):
    for name in _positive:
        v = getattr(obj, name)
        if not _is_number(v) or not math.isfinite(v) or v <= 0:
            _fail(prefix, name, v, "a positive number")
    for name in _nonneg:
        v = getattr(obj, name)
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            _fail(prefix, name, v, "a non-negative number")


def _check_range(obj, prefix, name, lo, hi):
    v = getattr(obj, name)
    if not _is_number(v) or not lo <= v <= hi:
        _fail(prefix, name, v, f"a number in [{lo}, {hi}]")


def _check_int(obj, prefix, name, *, minimum):
    v = getattr(obj, name)
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < minimum:
        _fail(prefix, name, v, f"an integer ≥ {minimum}")


def _check_tuple(obj, prefix, kind, names, n, *, optional=False, positive=False):
    for name in names:
        v = getattr(obj, name)
        if v is None and optional:
            continue
        ok = isinstance(v, tuple | list) and len(v) == n
        if ok and kind is int:
            ok = all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in v)
        elif ok:
            ok = all(_is_number(x) and math.isfinite(x) for x in v)
        if ok and positive:
            ok = all(x > 0 for x in v)
        if not ok:
            what = f"{n} {'positive ' if positive else ''}{kind.__name__}s"
            _fail(prefix, name, v, what + (" or null" if optional else ""))
        object.__setattr__(obj, name, tuple(kind(x) for x in v))


# --------------------------------------------------------------------------------------
# Geometry of the acquisitions (pure function of the parameters)
# --------------------------------------------------------------------------------------


class _Geometry:
    """Derived shapes, windows and margins; raises ValueError for impossible set-ups."""

    def __init__(self, p: PhantomParams):
        t, hr, lr, an = p.tissue, p.hr, p.lr, p.anisotropic
        v = t.voxel_nm
        self.v = v
        ny, nx = hr.shape_yx
        self.section_z = np.round(np.arange(hr.sections) * hr.section_nm / v).astype(int)
        self.aniso_depth = math.ceil(an.slices * an.thickness - 1e-9)
        need_z = max(int(self.section_z[-1]) + 1, self.aniso_depth)
        if t.depth is not None and t.depth < need_z:
            raise ValueError(
                f"phantom parameter tissue.depth={t.depth} is too small: the HR sections "
                f"and anisotropic slices need {need_z} clean slices"
            )
        self.depth = need_z if t.depth is None else t.depth

        self.lr_shape_yx = (
            max(1, round(lr.fov_factor * ny * v / lr.pixel_nm)),
            max(1, round(lr.fov_factor * nx * v / lr.pixel_nm)),
        )
        nly, nlx = self.lr_shape_yx
        self.scale0 = v / lr.pixel_nm  # nominal LR pixels per HR pixel
        self.lr_blur_px = lr.psf_nm / v
        self.w_margin = math.ceil(4 * self.lr_blur_px) + 2  # extension of the warp grid
        self.hr_margin = math.ceil(hr.drift_px + 4 * hr.psf_nm / v) + 3

        # Worst-case footprint of the LR field of view (clean px, relative to the HR centre)
        # and worst-case HR corners in LR coordinates.
        hc = np.array([(ny - 1) / 2, (nx - 1) / 2])
        ext_lr = self.w_margin + 5  # warp-grid extension and spline support (clean px)
        lo = np.full(2, np.inf)
        hi = np.full(2, -np.inf)
        worst_inside = np.inf
        mshift = lr.max_shift_nm / lr.pixel_nm
        for rot, sc, sy, sx in itertools.product(
            (-lr.max_rotation_deg, lr.max_rotation_deg),
            (-lr.max_scale_error, lr.max_scale_error),
            (-mshift, mshift),
            (-mshift, mshift),
        ):
            tr = _hr_to_lr(self.scale0 * (1 + sc), rot, (sy, sx), hc, self.lr_shape_yx)
            inv = tr.inverse()
            corners = np.array(
                [[-0.5, -0.5], [-0.5, nlx - 0.5], [nly - 0.5, -0.5], [nly - 0.5, nlx - 0.5]]
            )
            pts = inv.apply(corners) - hc
            lo = np.minimum(lo, pts.min(0) - ext_lr)
            hi = np.maximum(hi, pts.max(0) + ext_lr)
            hrc = np.array([[-0.5, -0.5], [-0.5, nx - 0.5], [ny - 0.5, -0.5], [ny - 0.5, nx - 0.5]])
            q = tr.apply(hrc)
            inside = np.min(np.concatenate([q + 0.5, np.array([nly - 0.5, nlx - 0.5]) - q], axis=1))
            worst_inside = min(worst_inside, inside)
        if worst_inside < 0:
            raise ValueError(
                f"phantom parameter lr.fov_factor={lr.fov_factor} is too small: the HR field "
                f"of view ({ny}×{nx} px at {v} nm) is not inside the LR one "
                f"({nly}×{nlx} px at {lr.pixel_nm} nm) for the largest misregistration "
                f"(lr.max_shift_nm={lr.max_shift_nm}, lr.max_rotation_deg="
                f"{lr.max_rotation_deg}, lr.max_scale_error={lr.max_scale_error})"
            )
        lo = np.minimum(lo, -hc - self.hr_margin)
        hi = np.maximum(hi, hc + self.hr_margin)

        if t.shape_yx is None:
            if hr.origin_yx is None:
                size = [
                    int(2 * math.ceil(max(-lo[i], hi[i]) + 2)) + (n % 2)
                    for i, n in enumerate((ny, nx))
                ]
                self.shape_yx = (size[0], size[1])
                self.origin = ((size[0] - ny) // 2, (size[1] - nx) // 2)
            else:
                self.origin = hr.origin_yx
                self.shape_yx = tuple(
                    math.ceil(self.origin[i] + hc[i] + hi[i] + 2) for i in range(2)
                )
        else:
            self.shape_yx = t.shape_yx
            self.origin = (
                hr.origin_yx
                if hr.origin_yx is not None
                else ((t.shape_yx[0] - ny) // 2, (t.shape_yx[1] - nx) // 2)
            )
        oy, ox = self.origin
        if oy < 0 or ox < 0 or oy + ny > self.shape_yx[0] or ox + nx > self.shape_yx[1]:
            raise ValueError(
                f"the HR field of view ({ny}×{nx} px) at hr.origin_yx={list(self.origin)} is "
                f"not inside the clean volume tissue.shape_yx={list(self.shape_yx)}"
            )
        c = np.array(self.origin) + hc
        if np.any(c + lo < 0) or np.any(c + hi > np.array(self.shape_yx) - 1):
            need = [math.ceil(max(2 * (hi[i] + 2), 2 * (-lo[i] + 2))) for i in range(2)]
            raise ValueError(
                f"the LR field of view (lr.fov_factor={lr.fov_factor}, lr.pixel_nm="
                f"{lr.pixel_nm}, with misregistration margins) is not inside the clean "
                f"volume tissue.shape_yx={list(self.shape_yx)} around hr.origin_yx="
                f"{list(self.origin)}; a centred field of view needs about {need} voxels"
            )


def _hr_to_lr(scale, rotation_deg, shift_lr, hr_centre, lr_shape_yx) -> Similarity:
    """Similarity mapping the HR centre to the LR centre plus ``shift_lr``."""
    lc = np.array([(lr_shape_yx[0] - 1) / 2, (lr_shape_yx[1] - 1) / 2])
    base = Similarity(float(scale), float(rotation_deg), (0.0, 0.0))
    off = lc + np.asarray(shift_lr, float) - base.apply(np.asarray(hr_centre, float)[None])[0]
    return Similarity(float(scale), float(rotation_deg), (float(off[0]), float(off[1])))


# --------------------------------------------------------------------------------------
# Procedural value noise (deterministic, independent of how a volume is cut into slabs)
# --------------------------------------------------------------------------------------


def _mix_int(h: int) -> int:
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def _key(*values: int) -> int:
    h = 0x243F6A8885A308D3
    for x in values:
        h = _mix_int((h ^ (int(x) & _MASK64)) * 0x9E3779B97F4A7C15 & _MASK64)
    return h


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


_PRIMES = (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB)


def _hash_uniform(key: int, *coords) -> np.ndarray:
    """Uniform values in [-1, 1) hashed from integer lattice coordinates (broadcast)."""
    with np.errstate(over="ignore"):
        h = np.uint64(key)
        for c, m in zip(coords, _PRIMES, strict=False):
            c = np.asarray(c, dtype=np.int64).astype(np.uint64)
            h = _mix(h ^ (c * np.uint64(m)))
        u = (h >> np.uint64(40)).astype(np.float32)
    return u * np.float32(2.0**-23) - np.float32(1.0)


def _smoothstep(t):
    return t * t * (3.0 - 2.0 * t)


def _noise_points(key: int, pts: np.ndarray, cell) -> np.ndarray:
    """Value noise at scattered points (N, d), lattice spacing ``cell`` per axis."""
    g = np.asarray(pts, float) / np.asarray(cell, float)
    i0 = np.floor(g).astype(np.int64)
    t = _smoothstep(g - i0)
    out = np.zeros(len(g))
    for corner in itertools.product((0, 1), repeat=g.shape[1]):
        w = np.prod([t[:, a] if c else 1 - t[:, a] for a, c in enumerate(corner)], axis=0)
        idx = [i0[:, a] + c for a, c in enumerate(corner)]
        out += w * _hash_uniform(key, *idx)
    return out


def _noise_slice(key: int, z: float, ys: np.ndarray, xs: np.ndarray, cell) -> np.ndarray:
    """3-D value noise on the plane ``z`` over global coordinates ``ys`` × ``xs``."""
    cz, cy, cx = cell
    fz = z / cz
    iz = math.floor(fz)
    tz = np.float32(_smoothstep(fz - iz))
    gy = ys / cy
    iy = np.floor(gy).astype(np.int64)
    ty = _smoothstep(gy - iy).astype(np.float32)
    gx = xs / cx
    ix = np.floor(gx).astype(np.int64)
    tx = _smoothstep(gx - ix).astype(np.float32)
    ly = np.arange(iy.min(), iy.max() + 2)
    lx = np.arange(ix.min(), ix.max() + 2)
    p0 = _hash_uniform(key, iz, ly[:, None], lx[None, :])
    p1 = _hash_uniform(key, iz + 1, ly[:, None], lx[None, :])
    p = p0 + tz * (p1 - p0)
    a = iy - ly[0]
    py = p[a] * (1 - ty)[:, None] + p[a + 1] * ty[:, None]
    b = ix - lx[0]
    return py[:, b] * (1 - tx) + py[:, b + 1] * tx


# --------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------


@dataclass
class _Population:
    """Cell seeds of one kind, sorted by z; power-diagram metric scaled along the axis."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    w: np.ndarray  # power weights (voxels²)
    gid0: int  # global index of the first seed
    f: float  # metric factor along the axon axis (1 / elongation)
    reach: float  # farthest distance (metric voxels) at which a seed can matter
    window_z: float  # half-width of the z window of seeds that can matter to a slice
    jit_amp: np.ndarray  # (n, 2) boundary jitter: amplitude of the y and x terms
    jit_freq: np.ndarray  # (n, 4) angular frequencies along y, x and (for the phases) z
    jit_phase: np.ndarray  # (n, 2) phases


class Phantom:
    """Synthetic SBEM tissue and its HR, LR and anisotropic acquisitions.

    Parameters
    ----------
    params : PhantomParams
        All knobs; ``PhantomParams()`` is a small demo.
    seed : int
        Non-negative seed: the same seed gives identical arrays.

    Attributes
    ----------
    clean_shape, hr_shape, lr_shape, anisotropic_shape : tuple of int
        (z, y, x) shapes of the clean volume and of the acquisitions.
    anisotropic_truth_shape : tuple of int
        (z, y, x) shape of the clean volume over the HR field of view that the
        anisotropic stack covers.
    clean_voxel_nm, hr_voxel_nm, lr_voxel_nm, anisotropic_voxel_nm : tuple of float
        (z, y, x) voxel sizes in nanometres (LR: nominal).
    hr_origin_yx : tuple of int
        Clean voxel (y, x) of HR pixel (0, 0).
    section_z : numpy.ndarray
        Clean z index of each HR/LR section.
    hr_to_lr : Similarity
        Ground truth mapping HR pixel (row, col) to LR pixel (row, col).
    """

    def __init__(self, params: PhantomParams | None = None, seed: int = 0):
        params = PhantomParams() if params is None else params
        if not isinstance(params, PhantomParams):
            raise ValueError(f"params must be a PhantomParams, got {type(params).__name__}")
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"phantom seed must be a non-negative integer, got {seed!r}")
        self.params = params
        self.seed = int(seed)
        g = _Geometry(params)
        self._geo = g
        t, hr, lr, an = params.tissue, params.hr, params.lr, params.anisotropic
        v = t.voxel_nm
        self._v = v
        self.clean_shape = (g.depth, *g.shape_yx)
        self.hr_shape = (hr.sections, *hr.shape_yx)
        self.lr_shape = (hr.sections, *g.lr_shape_yx)
        self.anisotropic_shape = (an.slices, *hr.shape_yx)
        self.anisotropic_truth_shape = (g.aniso_depth, *hr.shape_yx)
        self.clean_voxel_nm = (v, v, v)
        self.hr_voxel_nm = (float(hr.section_nm), v, v)
        self.lr_voxel_nm = (float(hr.section_nm), float(lr.pixel_nm), float(lr.pixel_nm))
        self.anisotropic_voxel_nm = (float(an.thickness * v), v, v)
        self.hr_origin_yx = (int(g.origin[0]), int(g.origin[1]))
        self.section_z = g.section_z.copy()

        rng = np.random.default_rng([self.seed, _SCENE, _S_MISREG])
        mshift = lr.max_shift_nm / lr.pixel_nm
        shift = rng.uniform(-mshift, mshift, 2)
        rot = rng.uniform(-lr.max_rotation_deg, lr.max_rotation_deg)
        sc = rng.uniform(-lr.max_scale_error, lr.max_scale_error)
        ny, nx = hr.shape_yx
        self.hr_to_lr = _hr_to_lr(
            g.scale0 * (1 + sc), rot, shift, ((ny - 1) / 2, (nx - 1) / 2), g.lr_shape_yx
        )

        self._build_scene()
        self._acq_window = self._acquisition_window()
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes = 0

    # ---------------------------------------------------------------- scene building
    def _rng(self, *stream):
        return np.random.default_rng([self.seed, _SCENE, *stream])

    def _build_scene(self):
        t = self.params.tissue
        v = self._v
        nz, ny, nx = self.clean_shape
        self._axis = {"z": 0, "y": 1, "x": 2}[t.axon_axis]
        self._uv = [a for a in range(3) if a != self._axis]
        m = math.ceil(1200.0 / v) + 4
        self._lo = np.array([-m, -m, -m], float)
        self._hi = np.array([nz + m, ny + m, nx + m], float)
        self._noise_key = _key(self.seed, _S_NOISE)

        # White/gray split: a smooth field over the plane across the axons.
        self._region_key = _key(self.seed, _S_REGION)
        self._region_cell = t.region_scale_nm / v
        frac = t.white_matter_fraction
        if frac >= 1:
            self._region_thr = -np.inf
        elif frac <= 0:
            self._region_thr = np.inf
        else:
            ext = np.array(self.clean_shape, float)[self._uv]
            gu, gv = np.meshgrid(
                np.linspace(0, ext[0], 96), np.linspace(0, ext[1], 96), indexing="ij"
            )
            vals = self._region_field(np.c_[gu.ravel(), gv.ravel()])
            self._region_thr = float(np.quantile(vals, 1 - frac))

        self._build_seeds()
        self._build_axons()
        self._build_ellipsoids()
        self._build_boutons()
        self._n_cells = self._n_seeds
        self._n_axons = len(self._ax_r_in)
        self._label_axon0 = self._n_cells + 1
        self._label_myelin0 = self._n_cells + self._n_axons + 1
        self._ell_owner = np.where(
            self._ell_kind == 1, self._label_axon0 + self._ell_owner_raw, self._ell_owner_raw + 1
        ).astype(np.int64)

    def _region_field(self, uv: np.ndarray) -> np.ndarray:
        c = self._region_cell
        return _noise_points(self._region_key, uv, (c, c)) + 0.5 * _noise_points(
            self._region_key ^ 0x5555, uv, (c / 2.3, c / 2.3)
        )

    def _white(self, pts_zyx: np.ndarray) -> np.ndarray:
        if self._region_thr == -np.inf:
            return np.ones(len(pts_zyx), bool)
        if self._region_thr == np.inf:
            return np.zeros(len(pts_zyx), bool)
        return self._region_field(pts_zyx[:, self._uv]) > self._region_thr

    def _jittered_grid(self, rng, spacing):
        spacing = np.asarray(spacing, float)
        counts = np.ceil((self._hi - self._lo) / spacing).astype(int)
        grids = np.meshgrid(*[np.arange(n) for n in counts], indexing="ij")
        base = np.stack([g.ravel() for g in grids], axis=1).astype(float)
        jit = rng.uniform(0.05, 0.95, base.shape)
        return self._lo + (base + jit) * spacing

    def _build_seeds(self):
        """Cell seeds of the power diagram, in four populations.

        Gray matter: small profiles (thin axons, glia), large dendrites and boutons (the
        last two with large weights, so they become big rounded cells among the small
        ones). White matter: small processes between the fibres, elongated along the axis.
        """
        t = self.params.tissue
        v = self._v
        s_gray = t.cell_size_nm / v
        s_white = t.process_size_nm / v
        sigma = math.sqrt(math.log1p(t.cell_size_cv**2))
        lo_c, hi_c = t.cytoplasm_intensity
        mid = 0.5 * (lo_c + hi_c)

        def small(s):
            def weights(rng, n):
                a = np.exp(rng.normal(0, sigma, n))
                return np.clip(0.5 * s * s * (a * a - 1), -0.6 * s * s, 0.9 * s * s)

            return weights

        def big(radius, spread):
            def weights(rng, n):
                return (radius * rng.uniform(1 - spread, 1 + spread, n)) ** 2

            return weights

        def spacing_of(density_um3):
            return 1000.0 / v / max(density_um3, 1e-9) ** (1 / 3)

        specs = [
            # stream, spacing, elongation, white?, weights, brightness range, enabled
            (_S_GRAY, s_gray, 1.0, False, small(s_gray), (lo_c, hi_c), True),
            (
                _S_DENDRITE,
                spacing_of(t.dendrite_density_um3),
                1.0,
                False,
                big(t.dendrite_radius_nm / v, 0.4),
                (mid, hi_c),
                t.dendrite_density_um3 > 0,
            ),
            (
                _S_BOUTON,
                spacing_of(t.bouton_density_um3),
                1.0,
                False,
                big(t.bouton_radius_nm / v, 0.3),
                (lo_c, mid),
                t.bouton_density_um3 > 0,
            ),
            (_S_WHITE, s_white, t.process_elongation, True, small(s_white), (lo_c, hi_c), True),
        ]
        pops, brights = [], []
        gid = 0
        for stream, s, elong, white, weights, (b_lo, b_hi), enabled in specs:
            big_cells = stream in (_S_DENDRITE, _S_BOUTON)
            rng = self._rng(stream)
            spacing = np.full(3, s)
            spacing[self._axis] *= elong
            pts = self._jittered_grid(rng, spacing) if enabled else np.zeros((0, 3))
            w = weights(rng, len(pts))
            bright = rng.uniform(b_lo, b_hi, len(pts))
            keep = self._white(pts) == white
            pts, w, bright = pts[keep], w[keep], bright[keep]
            order = np.argsort(pts[:, 0], kind="stable")
            pts, w, bright = pts[order], w[order], bright[order]
            f = 1.0 / elong
            reach = 3.2 * s + math.sqrt(max(w.max(initial=0.0), 0.0))
            window = reach / (f if self._axis == 0 else 1.0)
            # Separable perturbation of the power distance: boundaries move by about
            # ±jitter over wavelengths of 150–400 nm.
            n = len(pts)
            sep = np.sqrt(np.maximum(w, 1.0)) if big_cells else np.full(n, s)
            jit = 2.0 * t.boundary_jitter_nm / v * sep / math.sqrt(2)
            jit_amp = jit[:, None] * rng.uniform(0.5, 1.0, (n, 2))
            jit_freq = 2 * np.pi * v / rng.uniform(150.0, 400.0, (n, 4))
            # Elongated cells wiggle on a correspondingly longer scale along the axis.
            jit_freq[:, {0: [2, 3], 1: [0], 2: [1]}[self._axis]] *= f
            jit_phase = rng.uniform(0, 2 * np.pi, (n, 2))
            pops.append(
                _Population(
                    pts[:, 0],
                    pts[:, 1],
                    pts[:, 2],
                    w,
                    gid,
                    f,
                    reach,
                    window,
                    jit_amp,
                    jit_freq,
                    jit_phase,
                )
            )
            brights.append(bright)
            gid += len(pts)
        self._pops = pops
        self._bouton_pop = pops[2]
        self._n_seeds = gid
        self._cell_bright = np.concatenate(brights).astype(np.float32)

    def _owner_cells(self, pts: np.ndarray) -> np.ndarray:
        """Global index of the seed owning each point (unjittered power diagram)."""
        best = np.full(len(pts), np.inf)
        owner = np.zeros(len(pts), np.int64)
        if len(pts) == 0:
            return owner
        for pop in self._pops:
            n = len(pop.z)
            if n == 0:
                continue
            scale = np.ones(3)
            scale[self._axis] = pop.f
            coords = np.c_[pop.z, pop.y, pop.x] * scale
            tree = cKDTree(coords)
            k = min(16, n)
            _, idx = tree.query(pts * scale, k=k)
            idx = idx.reshape(len(pts), k)
            d2 = np.sum(((pts[:, None, :] - coords[idx] / scale) * scale) ** 2, axis=2)
            p = d2 - pop.w[idx]
            j = np.argmin(p, axis=1)
            pj = p[np.arange(len(pts)), j]
            better = pj < best
            best[better] = pj[better]
            owner[better] = pop.gid0 + idx[np.arange(len(pts)), j][better]
        return owner

    def _build_axons(self):
        t = self.params.tissue
        v = self._v
        rng = self._rng(_S_AXONS)
        lo, hi = self._lo[self._uv], self._hi[self._uv]
        h = max(1.0, 30.0 / v)  # grid step (voxels) for the initial positions
        gu = np.arange(lo[0], hi[0], h) + h / 2
        gv = np.arange(lo[1], hi[1], h) + h / 2
        mu, mv = np.meshgrid(gu, gv, indexing="ij")
        pts = np.zeros((mu.size, 3))
        pts[:, self._uv[0]] = mu.ravel()
        pts[:, self._uv[1]] = mv.ravel()
        white = self._white(pts)
        gap = t.axon_gap_nm / v
        cv = t.axon_radius_cv
        sig = math.sqrt(math.log1p(cv * cv))
        med = t.axon_radius_nm / math.sqrt(1 + cv * cv) / v
        r_min, r_max = max(1.5, 60.0 / v), 4 * t.axon_radius_nm / v
        pos, rin, rout = [np.zeros((0, 2))], [np.zeros(0)], [np.zeros(0)]
        for region, fill in ((white, t.axon_fill), (~white, t.gray_axon_fill)):
            target = fill * region.sum() * h * h
            if target <= 0:
                continue
            # Draw fibres (log-normal inner radius) until their area reaches the target.
            r_in = np.zeros(0)
            r_out = np.zeros(0)
            while np.pi * np.sum(r_out**2) < target:
                more = np.clip(med * np.exp(rng.normal(0, sig, 256)), r_min, r_max)
                r_in = np.concatenate([r_in, more])
                r_out = np.concatenate([r_out, more * (1 + rng.uniform(*t.myelin_ratio, 256))])
            npool = int(np.searchsorted(np.cumsum(np.pi * r_out**2), target)) + 1
            cells = rng.choice(np.flatnonzero(region), size=npool, replace=True)
            xy = np.c_[mu.ravel()[cells], mv.ravel()[cells]] + rng.uniform(
                -h / 2, h / 2, (npool, 2)
            )
            pos.append(xy)
            rin.append(r_in[:npool])
            rout.append(r_out[:npool])
        pos = np.concatenate(pos)
        r_in, r_out = np.concatenate(rin), np.concatenate(rout)
        pos = _relax_discs(pos, r_out + gap / 2, lo, hi)
        placed_u, placed_v = pos[:, 0], pos[:, 1]
        placed_rin, placed_rout = r_in, r_out
        n = len(placed_u)
        self._ax_u0 = np.array(placed_u, float)
        self._ax_v0 = np.array(placed_v, float)
        self._ax_r_in = np.array(placed_rin, float)
        self._ax_r_out = np.array(placed_rout, float)
        self._ax_g = self._ax_r_in / np.maximum(self._ax_r_out, 1e-9)
        self._ax_h = np.c_[
            np.clip(rng.normal(0, 0.05, n), -0.12, 0.12),
            np.clip(rng.normal(0, 0.03, n), -0.08, 0.08),
        ]
        self._ax_phase = rng.uniform(0, 2 * np.pi, (n, 2))
        self._ax_bright = rng.uniform(*t.axoplasm_intensity, n).astype(np.float32)
        # Tilt: the bundle's plus a small individual one (tan of the angles).
        ang = rng.uniform(0, 2 * np.pi)
        tilt = math.tan(math.radians(rng.uniform(0, t.axon_tilt_deg)))
        disp = math.tan(math.radians(t.axon_dispersion_deg))
        self._ax_tilt = np.array([tilt * math.cos(ang), tilt * math.sin(ang)]) + rng.normal(
            0, disp, (n, 2)
        )
        # Wandering: a smooth common field (neighbours move together) plus a small wobble.
        period = t.axon_wander_period_nm / v
        amp = t.axon_wander_nm / v
        nmodes = 3
        self._wf_amp = rng.normal(0, amp / math.sqrt(2 * nmodes), (nmodes, 2))
        self._wf_om = 2 * np.pi / (period * rng.uniform(0.6, 1.5, nmodes))
        kk = 2 * np.pi / (5 * period)
        kang = rng.uniform(0, 2 * np.pi, nmodes)
        self._wf_k = np.c_[np.cos(kang), np.sin(kang)] * kk
        self._wf_phi = rng.uniform(0, 2 * np.pi, (nmodes, 2))
        self._ax_wob_amp = rng.uniform(0.05, 0.15, (n, 2)) * amp
        self._ax_wob_om = 2 * np.pi / (period * rng.uniform(0.25, 0.5, n))
        self._ax_wob_phi = rng.uniform(0, 2 * np.pi, (n, 2))
        ax = self._axis
        self._tmid = 0.5 * (self._lo[ax] + self._hi[ax])
        self._ax_rmax = (
            self._ax_r_out * (1 + np.abs(self._ax_h).sum(1)) * math.sqrt(1 + 2 * (tilt + 0.2) ** 2)
            + 1.5
        )

    def _axon_centres(self, k: np.ndarray, t):
        """Centre (u, v) and slope (du/dt, dv/dt) of axons ``k`` at axis coordinate ``t``.

        ``k`` has shape (n,); ``t`` is a scalar or broadcasts against (n, 1).
        """
        k = np.asarray(k)
        u0 = self._ax_u0[k][:, None]
        v0 = self._ax_v0[k][:, None]
        t = np.asarray(t, float)
        dt = t - self._tmid
        cu = u0 + self._ax_tilt[k, 0][:, None] * dt
        cv = v0 + self._ax_tilt[k, 1][:, None] * dt
        du = np.broadcast_to(self._ax_tilt[k, 0][:, None], np.broadcast(cu, dt).shape).copy()
        dv = np.broadcast_to(self._ax_tilt[k, 1][:, None], du.shape).copy()
        for i in range(len(self._wf_om)):
            base = self._wf_k[i, 0] * u0 + self._wf_k[i, 1] * v0 + self._wf_om[i] * t
            for c, (pos, der) in enumerate(((cu, du), (cv, dv))):
                ph = base + self._wf_phi[i, c]
                pos += self._wf_amp[i, c] * np.sin(ph)
                der += self._wf_amp[i, c] * self._wf_om[i] * np.cos(ph)
        om = self._ax_wob_om[k][:, None]
        for c, (pos, der) in enumerate(((cu, du), (cv, dv))):
            ph = om * t + self._ax_wob_phi[k, c][:, None]
            a = self._ax_wob_amp[k, c][:, None]
            pos += a * np.sin(ph)
            der += a * om * np.cos(ph)
        return cu, cv, du, dv

    def _build_ellipsoids(self):
        """Mitochondria: in axons (along the axon) and in gray-matter cells."""
        t = self.params.tissue
        v = self._v
        ax = self._axis
        centres, rots, semi, kinds, owners = [], [], [], [], []
        # Axonal mitochondria.
        rng = self._rng(_S_AXON_MITO)
        n_ax = len(self._ax_r_in)
        length_um = (self._hi[ax] - self._lo[ax]) * v / 1000
        counts = rng.poisson(t.axon_mito_per_um * length_um, n_ax)
        k = np.repeat(np.arange(n_ax), counts)
        if len(k):
            tm = rng.uniform(self._lo[ax], self._hi[ax], len(k))
            half = t.mito_length_nm / v / 2 * np.exp(rng.normal(0, 0.35, len(k)))
            r = np.minimum(
                t.mito_radius_nm / v * np.exp(rng.normal(0, 0.25, len(k))),
                0.55 * self._ax_r_in[k],
            )
            r = np.maximum(r, 1.0)
            room = np.maximum(self._ax_r_in[k] - r - 1.0, 0)
            rad = room * np.sqrt(rng.uniform(0, 1, len(k)))
            ang = rng.uniform(0, 2 * np.pi, len(k))
            cu, cvv, du, dv = self._axon_centres(k, tm[:, None])
            cu, cvv, du, dv = cu[:, 0], cvv[:, 0], du[:, 0], dv[:, 0]
            c = np.zeros((len(k), 3))
            c[:, self._uv[0]] = cu + rad * np.cos(ang)
            c[:, self._uv[1]] = cvv + rad * np.sin(ang)
            c[:, ax] = tm
            d = np.zeros((len(k), 3))
            d[:, self._uv[0]] = du
            d[:, self._uv[1]] = dv
            d[:, ax] = 1.0
            centres.append(c)
            rots.append(_frames(d, rng))
            semi.append(np.c_[half, r, r * rng.uniform(0.75, 1.0, len(k))])
            kinds.append(np.ones(len(k), int))
            owners.append(k)
        # Gray-matter mitochondria.
        rng = self._rng(_S_MITO)
        vol_um3 = np.prod(self._hi - self._lo) * (v / 1000) ** 3
        n = rng.poisson(t.mito_density_um3 * vol_um3)
        c = rng.uniform(self._lo, self._hi, (n, 3))
        d = rng.normal(size=(n, 3))
        half = t.mito_length_nm / v / 2 * np.exp(rng.normal(0, 0.4, n))
        r = np.maximum(t.mito_radius_nm / v * np.exp(rng.normal(0, 0.25, n)), 1.0)
        r2 = r * rng.uniform(0.7, 1.0, n)
        rot = _frames(d, rng)
        keep = ~self._white(c)
        if keep.any():
            c, rot, half, r, r2 = c[keep], rot[keep], half[keep], r[keep], r2[keep]
            centres.append(c)
            rots.append(rot)
            semi.append(np.c_[half, r, r2])
            kinds.append(np.zeros(len(c), int))
            owners.append(self._owner_cells(c))
        if centres:
            self._ell_c = np.concatenate(centres)
            self._ell_r = np.concatenate(rots)
            self._ell_a = np.concatenate(semi)
            self._ell_kind = np.concatenate(kinds)
            self._ell_owner_raw = np.concatenate(owners)
        else:
            self._ell_c = np.zeros((0, 3))
            self._ell_r = np.zeros((0, 3, 3))
            self._ell_a = np.zeros((0, 3))
            self._ell_kind = np.zeros(0, int)
            self._ell_owner_raw = np.zeros(0, int)
        # Quadratic forms and bounding half-extents.
        inv_a2 = 1.0 / self._ell_a**2
        self._ell_q = np.einsum("nij,nj,nkj->nik", self._ell_r, inv_a2, self._ell_r)
        self._ell_h = np.sqrt(np.einsum("nij,nj->ni", self._ell_r**2, self._ell_a**2))
        self._ell_phase = self._rng(_S_MITO, 1).uniform(0, 2 * np.pi, len(self._ell_c))

    def _build_boutons(self):
        """Vesicle clusters filling the bouton cells."""
        t = self.params.tissue
        pop = self._bouton_pop
        self._bt_c = np.c_[pop.z, pop.y, pop.x]
        self._bt_r = np.sqrt(np.maximum(pop.w, 1.0)) * 0.95
        rv = t.vesicle_diameter_nm / 2 / self._v
        self._ves_r = rv
        self._bt_n = np.maximum(
            1, np.round(t.vesicle_fill * (self._bt_r / max(rv, 1e-6)) ** 3)
        ).astype(int)
        self._bt_owner = pop.gid0 + np.arange(len(pop.z)) + 1

    # ---------------------------------------------------------------- rendering
    def _render(self, z: int, y0: int, y1: int, x0: int, x1: int):
        """Clean intensity (float32) and labels (uint32) of slice ``z`` over a window."""
        t = self.params.tissue
        v = self._v
        ys = np.arange(y0, y1, dtype=np.float64)
        xs = np.arange(x0, x1, dtype=np.float64)
        gid, mdist = self._cells(z, y0, y1, x0, x1)
        key = self._noise_key
        tex = 0.65 * _noise_slice(key ^ _N_TEX1, z, ys, xs, (1.6, 1.6, 1.6)) + 0.5 * _noise_slice(
            key ^ _N_TEX2, z, ys, xs, (4.5, 4.5, 4.5)
        )
        tex *= np.float32(t.texture / 0.3)
        img = self._cell_bright[gid] * (1 + tex)
        labels = (gid + 1).astype(np.uint32)

        self._paint_ellipsoids(img, labels, z, y0, x0, kind=0)
        self._paint_vesicles(img, labels, z, y0, x0)

        half = t.membrane_nm / v / 2
        alpha = np.clip(half + 0.5 - mdist, 0, 1)
        img += alpha * (np.float32(t.membrane_intensity) * (1 + 0.5 * tex) - img)
        labels[mdist < half] = 0

        self._paint_axons(img, labels, tex, z, y0, y1, x0, x1)
        self._paint_ellipsoids(img, labels, z, y0, x0, kind=1)

        if t.shading > 0:
            cell = 2000.0 / v
            sh = _noise_slice(key ^ _N_SHADE, z, ys, xs, (cell, cell, cell))
            img *= 1 + np.float32(t.shading / 0.35) * sh
        np.clip(img, 0, 1, out=img)
        return img.astype(np.float32, copy=False), labels

    def _cells(self, z, y0, y1, x0, x1):
        """Owner seed (global index) and distance to the cell boundary, per pixel.

        A power diagram of the seeds, cut at ``z``: candidates are found with k-d trees
        on a coarse grid, then every pixel takes the best two of its coarse cell's
        candidates. Each seed's power distance has a smooth separable perturbation, so
        boundaries wiggle without seams.
        """
        S = _COARSE
        Y0, X0 = (y0 // S) * S, (x0 // S) * S
        ncy, ncx = -(-(y1 - Y0) // S), -(-(x1 - X0) // S)
        ax = self._axis
        sel = []
        for pop in self._pops:
            i0, i1 = np.searchsorted(pop.z, [z - pop.window_z, z + pop.window_z])
            margin = pop.reach / (pop.f if ax != 0 else 1.0)
            sy, sx = pop.y[i0:i1], pop.x[i0:i1]
            m = (
                (sy > Y0 - margin)
                & (sy < Y0 + ncy * S + margin)
                & (sx > X0 - margin)
                & (sx < X0 + ncx * S + margin)
            )
            idx = np.arange(i0, i1)[m]
            fz = pop.f if ax == 0 else 1.0
            fy = pop.f if ax == 1 else 1.0
            fx = pop.f if ax == 2 else 1.0
            cst = (fz * (z - pop.z[idx])) ** 2 - pop.w[idx]
            sel.append((pop, idx, cst, fy, fx))
        n_sel = sum(len(s[1]) for s in sel)
        # Per selected seed (one dummy, far away, at the end).
        SY, SX = np.zeros(n_sel + 1), np.zeros(n_sel + 1)
        CST = np.full(n_sel + 1, 1e30)
        FY, FX = np.ones(n_sel + 1), np.ones(n_sel + 1)
        GID = np.zeros(n_sel + 1, np.int64)
        JA = np.zeros((n_sel + 1, 2))  # jitter amplitude (y, x terms)
        JW = np.zeros((n_sel + 1, 2))  # jitter angular frequency
        JP = np.zeros((n_sel + 1, 2))  # jitter phase at this z
        ny_n, nx_n = ncy + 1, ncx + 1
        node_y = (Y0 + S * np.arange(ny_n)).astype(float)
        node_x = (X0 + S * np.arange(nx_n)).astype(float)
        qy, qx = np.meshgrid(node_y, node_x, indexing="ij")
        node_p, node_i = [], []
        off = 0
        for pop, idx, cst, fy, fx in sel:
            n = len(idx)
            if n == 0:
                continue
            sl = slice(off, off + n)
            SY[sl], SX[sl], CST[sl], FY[sl], FX[sl] = pop.y[idx], pop.x[idx], cst, fy, fx
            GID[sl] = pop.gid0 + idx
            JA[sl] = pop.jit_amp[idx]
            JW[sl] = pop.jit_freq[idx, :2]
            JP[sl] = pop.jit_phase[idx] + pop.jit_freq[idx, 2:] * z
            cmin = cst.min()
            tree = cKDTree(np.c_[pop.y[idx] * fy, pop.x[idx] * fx, np.sqrt(cst - cmin)])
            k = min(3, n)
            d, j = tree.query(np.c_[qy.ravel() * fy, qx.ravel() * fx, np.zeros(qy.size)], k=k)
            d = d.reshape(qy.size, k)
            j = j.reshape(qy.size, k)
            node_p.append(d * d + cmin)
            node_i.append(j + off)
            off += n
        if not node_p:  # pragma: no cover - the seed grids cover the whole domain
            raise RuntimeError("no cell seeds near the slice")
        node_p = np.concatenate(node_p, axis=1)
        node_i = np.concatenate(node_i, axis=1)
        order = np.argsort(node_p, axis=1, kind="stable")[:, :3]
        top = np.take_along_axis(node_i, order, axis=1)
        if top.shape[1] < 3:
            top = np.pad(top, ((0, 0), (0, 3 - top.shape[1])), constant_values=n_sel)
        top = top.reshape(ny_n, nx_n, 3)
        cand = np.concatenate([top[:-1, :-1], top[1:, :-1], top[:-1, 1:], top[1:, 1:]], axis=2)
        cand.sort(axis=2)
        dup = np.zeros(cand.shape, bool)
        dup[..., 1:] = cand[..., 1:] == cand[..., :-1]
        cand[dup] = n_sel
        cand.sort(axis=2)
        K = max(2, int((cand < n_sel).sum(axis=2).max()))
        cand = cand[..., :K]

        f32 = np.float32
        SYf, SXf, CSTf, FYf, FXf = (a.astype(f32) for a in (SY, SX, CST, FY, FX))
        JAf, JWf, JPf = JA.astype(f32), JW.astype(f32), JP.astype(f32)
        py = (Y0 + np.arange(ncy * S, dtype=f32)).reshape(ncy, S)
        px = (X0 + np.arange(ncx * S, dtype=f32)).reshape(ncx, S)
        gid_out = np.empty((ncy * S, ncx * S), np.int64)
        dist_out = np.empty((ncy * S, ncx * S), f32)
        block = max(1, 4096 // max(ncx, 1))
        for b0 in range(0, ncy, block):
            b1 = min(ncy, b0 + block)
            c = cand[b0:b1]  # (nb, ncx, K)
            yb = py[b0:b1, :, None, None]  # (nb, S, 1, 1)
            dy = (yb - SYf[c][:, None]) * FYf[c][:, None]  # (nb, S, ncx, K)
            a = dy * dy + CSTf[c][:, None]
            a += JAf[c, 0][:, None] * np.sin(JWf[c, 0][:, None] * yb + JPf[c, 0][:, None])
            xb = px[None, :, :, None]  # (1, ncx, S, 1)
            dx = (xb - SXf[c][:, :, None, :]) * FXf[c][:, :, None, :]  # (nb, ncx, S, K)
            e = dx * dx
            e += JAf[c, 1][:, :, None] * np.sin(JWf[c, 1][:, :, None] * xb + JPf[c, 1][:, :, None])
            p = a[:, :, :, None, :] + e[:, None]  # (nb, S, ncx, S, K)
            i1 = p.argmin(axis=-1)[..., None]
            p1 = np.take_along_axis(p, i1, -1)[..., 0]
            np.put_along_axis(p, i1, np.inf, -1)
            i2 = p.argmin(axis=-1)[..., None]
            p2 = np.take_along_axis(p, i2, -1)[..., 0]
            cb = np.broadcast_to(c[:, None, :, None, :], p.shape)
            g1 = np.take_along_axis(cb, i1, -1)[..., 0]
            g2 = np.take_along_axis(cb, i2, -1)[..., 0]
            sep = np.hypot(
                (SYf[g1] - SYf[g2]) * 0.5 * (FYf[g1] + FYf[g2]),
                (SXf[g1] - SXf[g2]) * 0.5 * (FXf[g1] + FXf[g2]),
            )
            shp = ((b1 - b0) * S, ncx * S)
            gid_out[b0 * S : b1 * S] = GID[g1].reshape(shp)
            dist_out[b0 * S : b1 * S] = ((p2 - p1) / (2 * np.maximum(sep, 1e-3))).reshape(shp)
        ry, rx = y0 - Y0, x0 - X0
        return (
            gid_out[ry : ry + y1 - y0, rx : rx + x1 - x0],
            dist_out[ry : ry + y1 - y0, rx : rx + x1 - x0],
        )

    def _paint_axons(self, img, labels, tex, z, y0, y1, x0, x1):
        t = self.params.tissue
        n = len(self._ax_r_in)
        if n == 0:
            return
        ax = self._axis
        H, W = y1 - y0, x1 - x0
        ys = np.arange(y0, y1, dtype=np.float64)
        xs = np.arange(x0, x1, dtype=np.float64)
        best = np.full((H, W), np.inf, np.float32)
        own = np.full((H, W), -1, np.int64)
        dist_b = np.zeros((H, W), np.float32)
        rad_b = np.ones((H, W), np.float32)
        k_all = np.arange(n)
        rmax = self._ax_rmax
        if ax == 0:
            cu, cv, du, dv = (a[:, 0] for a in self._axon_centres(k_all, float(z)))
            hit = (cu + rmax > y0) & (cu - rmax < y1) & (cv + rmax > x0) & (cv - rmax < x1)
            boxes = []
            for k in np.flatnonzero(hit):
                r = rmax[k]
                ya, yb = max(y0, math.floor(cu[k] - r)), min(y1, math.ceil(cu[k] + r) + 1)
                xa, xb = max(x0, math.floor(cv[k] - r)), min(x1, math.ceil(cv[k] + r) + 1)
                if ya < yb and xa < xb:
                    boxes.append((k, ya, yb, xa, xb))
        else:
            tv = ys if ax == 1 else xs
            cu, cv, _, _ = self._axon_centres(k_all, tv[None, :])
            near = np.abs(cu - z) < rmax[:, None]
            boxes = []
            for k in np.flatnonzero(near.any(axis=1)):
                ti = np.flatnonzero(near[k])
                ta, tb = ti[0], ti[-1] + 1
                lo = math.floor(cv[k, ta:tb].min() - rmax[k])
                hi = math.ceil(cv[k, ta:tb].max() + rmax[k]) + 1
                if ax == 1:
                    ya, yb = y0 + ta, y0 + tb
                    xa, xb = max(x0, lo), min(x1, hi)
                else:
                    xa, xb = x0 + ta, x0 + tb
                    ya, yb = max(y0, lo), min(y1, hi)
                if ya < yb and xa < xb:
                    boxes.append((k, ya, yb, xa, xb))
        for k, ya, yb, xa, xb in boxes:
            by, bx = ys[ya - y0 : yb - y0], xs[xa - x0 : xb - x0]
            kk = np.array([k])
            if ax == 0:
                wu = by[:, None] - cu[k]
                wv = bx[None, :] - cv[k]
                gu, gv = du[k], dv[k]
            elif ax == 1:
                cuk, cvk, gu, gv = (a[0][:, None] for a in self._axon_centres(kk, by[None, :]))
                wu = z - cuk
                wv = bx[None, :] - cvk
            else:
                cuk, cvk, gu, gv = (a[0][None, :] for a in self._axon_centres(kk, bx[None, :]))
                wu = z - cuk
                wv = by[:, None] - cvk
            dot = wu * gu + wv * gv
            d2 = wu * wu + wv * wv - dot * dot / (1 + gu * gu + gv * gv)
            dist = np.sqrt(np.maximum(d2, 0))
            th = np.arctan2(wu, wv)
            hk, pk = self._ax_h[k], self._ax_phase[k]
            rth = self._ax_r_out[k] * (
                1 + hk[0] * np.cos(2 * th + pk[0]) + hk[1] * np.cos(3 * th + pk[1])
            )
            nd = dist / rth
            sb = best[ya - y0 : yb - y0, xa - x0 : xb - x0]
            m = (dist < rth + 0.5) & (nd < sb)
            if not m.any():
                continue
            sb[m] = nd[m]
            own[ya - y0 : yb - y0, xa - x0 : xb - x0][m] = k
            dist_b[ya - y0 : yb - y0, xa - x0 : xb - x0][m] = dist[m]
            rad_b[ya - y0 : yb - y0, xa - x0 : xb - x0][m] = rth[m]
        m = own >= 0
        if not m.any():
            return
        o = own[m]
        d = dist_b[m]
        r = rad_b[m]
        g = self._ax_g[o].astype(np.float32)
        tx = tex[m]
        a_out = np.clip(r - d + 0.5, 0, 1)
        a_my = np.clip(d - g * r + 0.5, 0, 1)
        axo = self._ax_bright[o] * (1 + tx)
        mye = np.float32(t.myelin_intensity) * (1 + 0.5 * tx)
        fib = axo + a_my * (mye - axo)
        cur = img[m]
        img[m] = cur + a_out * (fib - cur)
        lab = labels[m]
        inside = d < r
        lab = np.where(
            inside,
            np.where(d < g * r, self._label_axon0 + o, self._label_myelin0 + o),
            lab,
        )
        labels[m] = lab.astype(np.uint32)

    def _paint_ellipsoids(self, img, labels, z, y0, x0, *, kind):
        if len(self._ell_c) == 0:
            return
        t = self.params.tissue
        H, W = img.shape
        c, h = self._ell_c, self._ell_h
        sel = np.flatnonzero(
            (self._ell_kind == kind)
            & (np.abs(c[:, 0] - z) < h[:, 0])
            & (c[:, 1] + h[:, 1] > y0)
            & (c[:, 1] - h[:, 1] < y0 + H)
            & (c[:, 2] + h[:, 2] > x0)
            & (c[:, 2] - h[:, 2] < x0 + W)
        )
        mi = np.float32(t.mito_intensity)
        period = 70.0 / self._v
        for i in sel:
            ya = max(0, math.floor(c[i, 1] - h[i, 1] - y0))
            yb = min(H, math.ceil(c[i, 1] + h[i, 1] - y0) + 1)
            xa = max(0, math.floor(c[i, 2] - h[i, 2] - x0))
            xb = min(W, math.ceil(c[i, 2] + h[i, 2] - x0) + 1)
            if ya >= yb or xa >= xb:
                continue
            q = self._ell_q[i]
            dz = z - c[i, 0]
            dy = (np.arange(ya, yb) + y0 - c[i, 1])[:, None]
            dx = (np.arange(xa, xb) + x0 - c[i, 2])[None, :]
            val = (
                q[0, 0] * dz * dz
                + 2 * q[0, 1] * dz * dy
                + 2 * q[0, 2] * dz * dx
                + q[1, 1] * dy * dy
                + 2 * q[1, 2] * dy * dx
                + q[2, 2] * dx * dx
            )
            amin = self._ell_a[i, 1:].min()
            alpha = np.clip((1 - np.sqrt(val)) * amin + 0.5, 0, 1)
            lab = labels[ya:yb, xa:xb]
            alpha = np.where(lab == self._ell_owner[i], alpha, 0).astype(np.float32)
            if not alpha.any():
                continue
            r = self._ell_r[i]
            s = dz * r[0, 0] + dy * r[1, 0] + dx * r[2, 0]
            cristae = np.cos(2 * np.pi * s / period + self._ell_phase[i])
            inner = np.clip(1.4 * (1 - val), 0, 1)
            tone = mi * (1 + 0.14 * cristae * inner) * (0.72 + 0.28 * inner)
            sub = img[ya:yb, xa:xb]
            sub += alpha * (tone.astype(np.float32) - sub)

    def _paint_vesicles(self, img, labels, z, y0, x0):
        if len(self._bt_c) == 0:
            return
        t = self.params.tissue
        H, W = img.shape
        c, r = self._bt_c, self._bt_r
        rv = self._ves_r
        sel = np.flatnonzero(
            (np.abs(c[:, 0] - z) < r + rv)
            & (c[:, 1] + r > y0 - 2)
            & (c[:, 1] - r < y0 + H + 2)
            & (c[:, 2] + r > x0 - 2)
            & (c[:, 2] - r < x0 + W + 2)
        )
        if len(sel) == 0:
            return
        pos, own = [], []
        for b in sel:
            rng = np.random.default_rng([self.seed, _SCENE, _S_VESICLE, int(b)])
            n = self._bt_n[b]
            d = rng.normal(size=(n, 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
            rr = (r[b] - rv) * rng.uniform(0, 1, n) ** (1 / 3)
            p = c[b] + d * rr[:, None]
            keep = np.abs(p[:, 0] - z) < rv
            pos.append(p[keep])
            own.append(np.full(keep.sum(), self._bt_owner[b]))
        p = np.concatenate(pos)
        own = np.concatenate(own)
        if len(p) == 0:
            return
        rad = np.sqrt(np.maximum(rv * rv - (p[:, 0] - z) ** 2, 0))
        acc = np.zeros(H * W, np.float64)
        span = math.ceil(rv) + 1
        oy, ox = np.meshgrid(np.arange(-span, span + 1), np.arange(-span, span + 1), indexing="ij")
        oy, ox = oy.ravel(), ox.ravel()
        iy = np.round(p[:, 1]).astype(int)[:, None] + oy - y0
        ix = np.round(p[:, 2]).astype(int)[:, None] + ox - x0
        rr = np.hypot(iy + y0 - p[:, 1:2], ix + x0 - p[:, 2:3])
        # Dark rim at the vesicle radius, lighter lumen, fading with the profile size.
        w = np.exp(-(((rr - rad[:, None]) / 0.75) ** 2)) * np.clip(rad[:, None] / rv, 0, 1)
        ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        flat = (iy * W + ix)[ok]
        ok2 = labels.ravel()[flat] == np.broadcast_to(own[:, None], ok.shape)[ok]
        acc += np.bincount(flat[ok2], weights=w[ok][ok2], minlength=H * W)
        dark = np.minimum(acc, 1.0).reshape(H, W).astype(np.float32)
        img *= 1 - np.float32(t.vesicle_contrast) * dark

    # ---------------------------------------------------------------- windows & cache
    def _acquisition_window(self):
        g = self._geo
        ny, nx = self.params.hr.shape_yx
        oy, ox = self.hr_origin_yx
        inv = self.hr_to_lr.inverse()
        nly, nlx = g.lr_shape_yx
        corners = np.array(
            [[-0.5, -0.5], [-0.5, nlx - 0.5], [nly - 0.5, -0.5], [nly - 0.5, nlx - 0.5]]
        )
        pts = inv.apply(corners) + np.array([oy, ox])
        ext = g.w_margin + 5
        lo = np.floor(pts.min(0) - ext).astype(int)
        hi = np.ceil(pts.max(0) + ext).astype(int) + 1
        m = g.hr_margin
        y0 = min(lo[0], oy - m)
        x0 = min(lo[1], ox - m)
        y1 = max(hi[0], oy + ny + m)
        x1 = max(hi[1], ox + nx + m)
        return int(y0), int(y1), int(x0), int(x1)

    def _section_slice(self, k: int):
        """Clean slice of section ``k`` over the acquisition window (cached)."""
        z = int(self.section_z[k])
        if z in self._cache:
            self._cache.move_to_end(z)
            return self._cache[z]
        out = self._render(z, *self._acq_window)
        self._cache[z] = out
        self._cache_bytes += out[0].nbytes + out[1].nbytes
        while self._cache_bytes > 96 * 2**20 and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old[0].nbytes + old[1].nbytes
        return out

    def _hr_crop(self, arr, margin=0):
        y0, _, x0, _ = self._acq_window
        oy, ox = self.hr_origin_yx
        ny, nx = self.params.hr.shape_yx
        return arr[
            oy - y0 - margin : oy - y0 + ny + margin, ox - x0 - margin : ox - x0 + nx + margin
        ]

    # ---------------------------------------------------------------- public API
    def clean(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """Render clean slices ``z0 ≤ z < z1`` over the whole clean XY extent.

        Parameters
        ----------
        z0, z1 : int
            Range of clean z indices, within ``[0, clean_shape[0]]``.

        Returns
        -------
        intensity : numpy.ndarray
            float32 (z1 − z0, Y, X) in [0, 1]: membranes and myelin dark, cytoplasm light.
        labels : numpy.ndarray
            uint32, same shape: 0 for membranes, one id per cell, axoplasm and myelin
            sheath (see :meth:`label_class`).
        """
        z0, z1 = self._check_range("z", z0, z1, self.clean_shape[0])
        _, ny, nx = self.clean_shape
        img = np.empty((z1 - z0, ny, nx), np.float32)
        lab = np.empty((z1 - z0, ny, nx), np.uint32)
        for i, z in enumerate(range(z0, z1)):
            img[i], lab[i] = self._render(z, 0, ny, 0, nx)
        return img, lab

    def label_class(self, labels: np.ndarray) -> np.ndarray:
        """Map labels to classes (:data:`LABEL_CLASSES`): membrane, cell, axoplasm, myelin.

        Parameters
        ----------
        labels : numpy.ndarray
            Labels from :meth:`clean`, :meth:`hr_clean` or :meth:`anisotropic_truth`.

        Returns
        -------
        numpy.ndarray
            uint8 array of the same shape.
        """
        labels = np.asarray(labels)
        out = np.zeros(labels.shape, np.uint8)
        out[(labels > 0) & (labels < self._label_axon0)] = LABEL_CLASSES["cell"]
        out[(labels >= self._label_axon0) & (labels < self._label_myelin0)] = LABEL_CLASSES[
            "axoplasm"
        ]
        out[labels >= self._label_myelin0] = LABEL_CLASSES["myelin"]
        return out

    def hr_clean(self, s0: int, s1: int) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless ground truth on the HR grid: clean sections ``s0 ≤ k < s1``.

        Parameters
        ----------
        s0, s1 : int
            Range of section indices.

        Returns
        -------
        intensity, labels : numpy.ndarray
            float32 and uint32 arrays of shape (s1 − s0, *hr_shape[1:]).
        """
        s0, s1 = self._check_range("section", s0, s1, self.hr_shape[0])
        img = np.empty((s1 - s0, *self.hr_shape[1:]), np.float32)
        lab = np.empty((s1 - s0, *self.hr_shape[1:]), np.uint32)
        for i, k in enumerate(range(s0, s1)):
            a, b = self._section_slice(k)
            img[i], lab[i] = self._hr_crop(a), self._hr_crop(b)
        return img, lab

    def hr(self, s0: int, s1: int) -> np.ndarray:
        """HR acquisition of sections ``s0 ≤ k < s1`` (uint8)."""
        s0, s1 = self._check_range("section", s0, s1, self.hr_shape[0])
        out = np.empty((s1 - s0, *self.hr_shape[1:]), np.uint8)
        for i, k in enumerate(range(s0, s1)):
            out[i] = self._hr_section(k)
        return out

    def lr_clean(self, s0: int, s1: int) -> np.ndarray:
        """Noiseless LR sections ``s0 ≤ k < s1``: blurred and pixel-integrated clean.

        Before the LR contrast change and noise, on the clean [0, 1] scale (float32).
        """
        s0, s1 = self._check_range("section", s0, s1, self.lr_shape[0])
        out = np.empty((s1 - s0, *self.lr_shape[1:]), np.float32)
        for i, k in enumerate(range(s0, s1)):
            out[i] = self._lr_clean_section(k)
        return out

    def lr(self, s0: int, s1: int) -> np.ndarray:
        """LR acquisition of sections ``s0 ≤ k < s1`` (uint8)."""
        s0, s1 = self._check_range("section", s0, s1, self.lr_shape[0])
        p = self.params.lr
        out = np.empty((s1 - s0, *self.lr_shape[1:]), np.uint8)
        for i, k in enumerate(range(s0, s1)):
            rng = np.random.default_rng([self.seed, _LR, k])
            out[i] = _detect(self._lr_clean_section(k), rng, p)
        return out

    def anisotropic(self, k0: int, k1: int) -> np.ndarray:
        """Anisotropic stack slices ``k0 ≤ k < k1`` (uint8), voxel ``anisotropic_voxel_nm``."""
        k0, k1 = self._check_range("slice", k0, k1, self.anisotropic_shape[0])
        p = self.params.anisotropic
        v = self._v
        ny, nx = self.params.hr.shape_yx
        oy, ox = self.hr_origin_yx
        sig = p.psf_nm / v
        m = math.ceil(4 * sig) + 2
        cache: dict[int, np.ndarray] = {}
        out = np.empty((k1 - k0, ny, nx), np.uint8)
        for i, k in enumerate(range(k0, k1)):
            js, ws = slice_weights(k, p.thickness, p.axial_sigma_nm / v)
            acc = np.zeros((ny + 2 * m, nx + 2 * m), np.float64)
            for j, w in zip(js, ws, strict=True):
                if j not in cache:
                    cache[j] = self._render(j, oy - m, oy + ny + m, ox - m, ox + nx + m)[0]
                acc += w * cache[j]
            for j in [j for j in cache if j < js[0]]:
                del cache[j]
            img = ndimage.gaussian_filter(acc, sig, mode="nearest") if sig > 0 else acc
            rng = np.random.default_rng([self.seed, _ANISO, k])
            out[i] = _detect(img[m : m + ny, m : m + nx], rng, p)
        return out

    def anisotropic_truth(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """Clean volume over the HR field of view, clean slices ``z0 ≤ z < z1``.

        The anisotropic slice k covers clean z in [k·ρ − 0.5, (k + 1)·ρ − 0.5].

        Returns
        -------
        intensity, labels : numpy.ndarray
            float32 and uint32 arrays of shape (z1 − z0, *hr_shape[1:]).
        """
        z0, z1 = self._check_range("z", z0, z1, self.clean_shape[0])
        ny, nx = self.params.hr.shape_yx
        oy, ox = self.hr_origin_yx
        img = np.empty((z1 - z0, ny, nx), np.float32)
        lab = np.empty((z1 - z0, ny, nx), np.uint32)
        for i, z in enumerate(range(z0, z1)):
            img[i], lab[i] = self._render(z, oy, oy + ny, ox, ox + nx)
        return img, lab

    def truth(self) -> dict:
        """Ground truth and set-up as a JSON-serialisable dictionary.

        Returns
        -------
        dict
            Parameters, seed, ``hr_to_lr`` (:meth:`Similarity.to_dict`), shapes and voxel
            sizes (z, y, x), HR origin, clean z of each section, the clean z interval
            integrated by each anisotropic slice (before the axial blur) and label id ranges.
        """
        rho = float(self.params.anisotropic.thickness)
        return {
            "seed": self.seed,
            "params": self.params.to_dict(),
            "hr_to_lr": self.hr_to_lr.to_dict(),
            "clean_shape": list(self.clean_shape),
            "hr_shape": list(self.hr_shape),
            "lr_shape": list(self.lr_shape),
            "anisotropic_shape": list(self.anisotropic_shape),
            "anisotropic_truth_shape": list(self.anisotropic_truth_shape),
            "clean_voxel_nm": list(self.clean_voxel_nm),
            "hr_voxel_nm": list(self.hr_voxel_nm),
            "lr_voxel_nm": list(self.lr_voxel_nm),
            "anisotropic_voxel_nm": list(self.anisotropic_voxel_nm),
            "hr_origin_yx": list(self.hr_origin_yx),
            "section_z": [int(z) for z in self.section_z],
            "anisotropic_slice_bounds_z": [
                [k * rho - 0.5, (k + 1) * rho - 0.5] for k in range(self.anisotropic_shape[0])
            ],
            "labels": {
                "membrane": 0,
                "cells": [1, int(self._n_cells)],
                "axoplasm": [int(self._label_axon0), int(self._label_myelin0 - 1)],
                "myelin": [int(self._label_myelin0), int(self._label_myelin0 + self._n_axons - 1)],
            },
        }

    # ---------------------------------------------------------------- acquisitions
    def _check_range(self, what, a, b, n):
        if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in (a, b)):
            raise ValueError(f"{what} range must be integers, got {a!r}, {b!r}")
        if not 0 <= a <= b <= n:
            raise ValueError(f"{what} range [{a}, {b}) is outside [0, {n})")
        return int(a), int(b)

    def _hr_section(self, k: int) -> np.ndarray:
        p = self.params.hr
        v = self._v
        ny, nx = p.shape_yx
        m = self._geo.hr_margin
        win = self._hr_crop(self._section_slice(k)[0], m).astype(np.float64)
        sig = p.psf_nm / v
        if sig > 0:
            win = ndimage.gaussian_filter(win, sig, mode="nearest")
        rng = np.random.default_rng([self.seed, _HR, k])
        # Border drift: a smooth displacement of the first rows and the first columns.
        amp = p.drift_px * rng.uniform(0.3, 1.0, 4) * rng.choice([-1.0, 1.0], 4)
        if p.drift_px > 0 and p.drift_width_px > 0:
            rr = np.arange(ny, dtype=float)[:, None]
            cc = np.arange(nx, dtype=float)[None, :]
            er = np.exp(-rr / p.drift_width_px)
            ec = np.exp(-cc / p.drift_width_px)
            dy = amp[0] * er + amp[1] * ec
            dx = amp[2] * er + amp[3] * ec
            coords = np.array(np.broadcast_arrays(rr + m + dy, cc + m + dx))
            img = ndimage.map_coordinates(win, coords, order=1, mode="nearest")
        else:
            img = win[m : m + ny, m : m + nx]
        # Charging: in a patch, the beam leaves bright streaks trailing dark structures
        # (and edges) along the scan direction (x), stronger on some lines than others.
        u = rng.uniform(0, 1, 6)
        rows = signal.lfilter([math.sqrt(1 - 0.7**2)], [1, -0.7], rng.normal(0, 1, ny))
        if p.charging > 0 and u[0] < p.charging_prob:
            rr = np.arange(ny, dtype=float)[:, None]
            cc = np.arange(nx, dtype=float)[None, :]
            cy, cx = u[1] * ny, u[2] * nx
            ry, rx = (0.1 + 0.2 * u[3]) * ny, (0.2 + 0.3 * u[4]) * nx
            mask = np.exp(-(((rr - cy) / ry) ** 2) - ((cc - cx) / rx) ** 2)
            dark = np.clip(0.45 - img, 0, None)
            edge = np.abs(img - ndimage.gaussian_filter(img, 2.0, mode="nearest"))
            deposit = mask * (dark + edge) * np.exp(0.8 * rows)[:, None]
            a = math.exp(-1.0 / max(p.charging_length_px, 1e-3))
            streak = signal.lfilter([1 - a], [1, -a], deposit, axis=1)
            img = img + p.charging * (0.5 * streak + 0.04 * (0.5 + u[5]) * mask)
        return _detect(img, rng, p)

    def _lr_clean_section(self, k: int) -> np.ndarray:
        g = self._geo
        tr = self.hr_to_lr
        inv = tr.inverse()
        win = self._section_slice(k)[0]
        y0, _, x0, _ = self._acq_window
        oy, ox = self.hr_origin_yx
        nly, nlx = g.lr_shape_yx
        d = tr.scale  # LR units per clean pixel: the warp grid has clean-pixel spacing
        mw = g.w_margin
        nay, nax = math.ceil(nly / d), math.ceil(nlx / d)
        ua = -0.5 + (np.arange(-mw, nay + mw) + 0.5) * d
        ub = -0.5 + (np.arange(-mw, nax + mw) + 0.5) * d
        gu, gv = np.meshgrid(ua, ub, indexing="ij")
        hr_pts = inv.apply(np.c_[gu.ravel(), gv.ravel()])
        coords = (hr_pts + np.array([oy - y0, ox - x0])).T.reshape(2, *gu.shape)
        warped = ndimage.map_coordinates(win.astype(np.float64), coords, order=3, mode="mirror")
        if g.lr_blur_px > 0:
            warped = ndimage.gaussian_filter(warped, g.lr_blur_px, mode="nearest")
        warped = warped[mw : mw + nay, mw : mw + nax]
        my = _overlap_matrix(nly, ua[mw : mw + nay], d)
        mx = _overlap_matrix(nlx, ub[mw : mw + nax], d)
        return (my @ warped @ mx.T).astype(np.float32)


def _relax_discs(pos, radius, lo, hi, iterations=300):
    """Push overlapping discs apart until (nearly) none overlap; bigger discs move less."""
    pos = pos.copy()
    if len(pos) < 2:
        return pos
    area = radius**2
    for _ in range(iterations):
        pairs = cKDTree(pos).query_pairs(2 * radius.max(), output_type="ndarray")
        if len(pairs) == 0:
            break
        i, j = pairs[:, 0], pairs[:, 1]
        d = pos[j] - pos[i]
        dist = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
        over = radius[i] + radius[j] - dist
        m = over > 0
        if not m.any() or over.max() < 0.05:
            break
        i, j, d, dist, over = i[m], j[m], d[m], dist[m], over[m]
        unit = d / dist[:, None]
        wi = area[j] / (area[i] + area[j])
        step = 0.55 * over
        delta = np.zeros_like(pos)
        np.add.at(delta, i, -(step * wi)[:, None] * unit)
        np.add.at(delta, j, (step * (1 - wi))[:, None] * unit)
        pos += delta
        np.clip(pos, lo, hi, out=pos)
    return pos


def _frames(d: np.ndarray, rng) -> np.ndarray:
    """Orthonormal frames (n, 3, 3) whose first column is the direction ``d``."""
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.normal(size=d.shape)
    e1 = r - np.sum(r * d, axis=1, keepdims=True) * d
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True) + 1e-12
    e2 = np.cross(d, e1)
    return np.stack([d, e1, e2], axis=2)


def _overlap_matrix(n: int, centres: np.ndarray, width: float) -> np.ndarray:
    """Fraction of output pixel i ([i − 0.5, i + 0.5]) covered by each input cell."""
    lo = np.arange(n)[:, None] - 0.5
    hi = lo + 1.0
    a = centres[None, :] - width / 2
    b = centres[None, :] + width / 2
    return np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0, None)


def _detect(img: np.ndarray, rng: np.random.Generator, p) -> np.ndarray:
    """Detector: contrast, Poisson–Gaussian noise, scan-line noise, 8-bit quantisation."""
    ny, nx = img.shape
    sig = np.clip(p.offset + p.gain * np.asarray(img, np.float64), 0, None)
    out = rng.poisson(sig * p.dose) / p.dose
    out += rng.normal(0, 1, (ny, nx)) * p.read_noise
    rho = 0.6
    off = signal.lfilter([math.sqrt(1 - rho * rho)], [1, -rho], rng.normal(0, 1, ny))
    gain = 1 + p.line_gain * rng.normal(0, 1, ny)
    white = rng.normal(0, 1, (ny, nx))
    if p.line_corr_px > 0:
        a = math.exp(-1.0 / p.line_corr_px)
        corr = signal.lfilter([1 - a], [1, -a], white, axis=1) * math.sqrt((1 + a) / (1 - a))
    else:
        corr = white
    out = out * gain[:, None] + p.line_offset * off[:, None] + p.line_noise * corr
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
