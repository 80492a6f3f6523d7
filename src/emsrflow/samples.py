"""The sample sheet: one row per dataset (an animal × hemisphere acquisition).

Columns (``config/samples.tsv``, tab-separated; the JSON schema in
``workflow/schemas/samples.schema.yaml`` checks their form):

``dataset``
    Unique id, used in every output path.
``animal``, ``hemisphere``
    Cross-validation folds leave one animal out.
``lr``, ``hr``, ``anisotropic``
    Volume locations (see :func:`emsrflow.io.parse_path`); ``hr`` and ``anisotropic``
    may be empty.
``lr_voxel_nm``, ``hr_voxel_nm``, ``anisotropic_voxel_nm``
    Voxel sizes ``"z,y,x"`` in nanometres; empty means "read from the file".
"""

from __future__ import annotations

import pandas as pd

from .errors import InputError

__all__ = ["parse_voxel_size", "resolve_voxel_size", "volume_voxel_size"]


def parse_voxel_size(text: str | None, *, where: str) -> tuple[float, float, float] | None:
    """Parse a ``"z,y,x"`` voxel size in nanometres.

    Parameters
    ----------
    text : str or None
        Cell content; empty or missing gives ``None``.
    where : str
        Location named in error messages (sheet, row and column).

    Returns
    -------
    tuple of float or None
    """
    if text is None or (isinstance(text, float) and pd.isna(text)) or not str(text).strip():
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise InputError(
            f"{where}: voxel size must be three positive numbers 'z,y,x' in nm, got {text!r}"
        )
    return values


def resolve_voxel_size(
    sheet_value: tuple[float, float, float] | None,
    file_value: tuple[float, float, float] | None,
    *,
    path: str,
    column: str,
) -> tuple[float, float, float]:
    """Choose a volume's voxel size: the sheet's if given, otherwise the file's.

    Raises
    ------
    InputError
        If neither the sheet nor the file gives one.
    """
    if sheet_value is not None:
        return tuple(float(v) for v in sheet_value)
    if file_value is None:
        raise InputError(
            f"{path}: the file carries no voxel size and the sample sheet column "
            f"{column!r} is empty; give it there as 'z,y,x' in nm"
        )
    return tuple(float(v) for v in file_value)


def volume_voxel_size(volume, cell: str | None, *, column: str) -> tuple[float, float, float]:
    """Voxel size of an opened volume: its sample-sheet cell if filled, else its metadata.

    Parameters
    ----------
    volume : emsrflow.io.VolumeReader
        The opened volume (its ``path`` and ``voxel_size`` are used).
    cell : str or None
        The sample-sheet cell, ``"z,y,x"`` in nm or empty.
    column : str
        The sheet column, named in error messages.

    Returns
    -------
    tuple of float
    """
    sheet_value = parse_voxel_size(cell, where=f"sample sheet column {column!r} for {volume.path}")
    return resolve_voxel_size(sheet_value, volume.voxel_size, path=volume.path, column=column)
