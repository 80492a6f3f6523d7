"""Similarity transforms between HR and LR pixel grids.

Coordinates are (row, col) in pixels, with pixel centres at integer coordinates
(the scikit-image convention). A :class:`Similarity` maps a point of the HR grid to
the LR grid::

    p_lr = scale * R(rotation) @ p_hr + shift

so ``scale`` already contains the nominal pixel-size ratio ``hr_nm / lr_nm``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Similarity"]


@dataclass(frozen=True)
class Similarity:
    """Rotation, isotropic scale and shift from HR to LR pixel coordinates.

    Parameters
    ----------
    scale : float
        LR pixels per HR pixel (for 15 nm HR and 50 nm LR pixels, about 0.3).
    rotation_deg : float
        Counter-clockwise rotation in degrees, in the (row, col) plane.
    shift : tuple of float
        (row, col) translation in LR pixels.
    """

    scale: float
    rotation_deg: float
    shift: tuple[float, float]

    def matrix(self) -> np.ndarray:
        """Return the 3×3 homogeneous matrix acting on (row, col, 1) column vectors."""
        theta = np.deg2rad(self.rotation_deg)
        c, s = np.cos(theta) * self.scale, np.sin(theta) * self.scale
        return np.array(
            [[c, -s, self.shift[0]], [s, c, self.shift[1]], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map HR (row, col) points of shape (N, 2) to LR coordinates."""
        points = np.asarray(points, dtype=np.float64)
        m = self.matrix()
        return points @ m[:2, :2].T + m[:2, 2]

    def inverse(self) -> Similarity:
        """Return the transform mapping LR coordinates back to HR coordinates."""
        m = np.linalg.inv(self.matrix())
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        rotation = float(np.rad2deg(np.arctan2(m[1, 0], m[0, 0])))
        return Similarity(scale, rotation, (float(m[0, 2]), float(m[1, 2])))

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Similarity:
        """Build from a 3×3 (or 2×3) matrix, projecting it onto the nearest similarity."""
        m = np.asarray(m, dtype=np.float64)
        a = 0.5 * (m[0, 0] + m[1, 1])
        b = 0.5 * (m[1, 0] - m[0, 1])
        return cls(
            float(np.hypot(a, b)),
            float(np.rad2deg(np.arctan2(b, a))),
            (float(m[0, 2]), float(m[1, 2])),
        )

    def max_displacement(self, other: Similarity, shape: tuple[int, int]) -> float:
        """Largest distance, in LR pixels, between the two mappings over an HR field of view."""
        rows, cols = shape
        corners = np.array([[0, 0], [0, cols - 1], [rows - 1, 0], [rows - 1, cols - 1]], float)
        return float(np.max(np.linalg.norm(self.apply(corners) - other.apply(corners), axis=1)))

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dictionary."""
        d = asdict(self)
        d["shift"] = [float(v) for v in self.shift]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Similarity:
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["scale"]), float(d["rotation_deg"]), tuple(map(float, d["shift"])))
