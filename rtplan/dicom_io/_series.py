"""Axial image series: shared slice geometry, order along the normal, identity direction.

Private to :mod:`rtplan.dicom_io`. The CT and PET readers check the slices of a series
here, sort them by their position along the slice normal and build the grid; every reader
and writer flips arrays to (or from) the identity direction here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from rtplan._typing import FloatArray
from rtplan.dicom_io._common import _integer, _number, _numbers, _tag_name
from rtplan.errors import DicomInputError, GeometryError
from rtplan.grid import GRID_ATOL_MM, ImageGrid

__all__: list[str] = []

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


@dataclass(frozen=True)
class _ImageSeries:
    """An axial image series sorted along its normal (internal)."""

    grid_file: ImageGrid  # in file orientation, slices sorted along the normal
    items: list[tuple[Path, Dataset]]  # sorted like grid_file's slices
    positions: FloatArray  # (n, 3)


@dataclass(frozen=True)
class _PlaneGeometry:
    """The in-plane geometry every slice of a series shares (from its first file)."""

    path: Path
    orientation: FloatArray  # ImageOrientationPatient, (6,)
    rows: int
    columns: int
    pixel_spacing_mm: FloatArray  # PixelSpacing, (2,), [row, col]
    frame_of_reference_uid: str

    @classmethod
    def of(cls, path: Path, ds: Dataset) -> _PlaneGeometry:
        """The geometry of the file ``path`` holding ``ds``."""
        spacing = _numbers(ds, "PixelSpacing", path, 2)
        if np.any(spacing <= 0):
            raise DicomInputError(
                f"{path}: tag {_tag_name('PixelSpacing')} {spacing.tolist()} must be positive"
            )
        return cls(
            path=path,
            orientation=_numbers(ds, "ImageOrientationPatient", path, 6),
            rows=_integer(ds, "Rows", path),
            columns=_integer(ds, "Columns", path),
            pixel_spacing_mm=spacing,
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        )


def _sorted_series(
    items: list[tuple[Path, Dataset]], folder: str | os.PathLike[str]
) -> _ImageSeries:
    """Check the shared geometry of a series' slices and sort them along the normal."""
    plane = _PlaneGeometry.of(*items[0])
    positions = [_slice_position(path, ds, plane) for path, ds in items]
    pos = np.asarray(positions, float).reshape(-1, 3)
    order = _order_along_normal(items, pos, plane.orientation)
    items_sorted = [items[n] for n in order]
    pos_sorted = pos[order]
    grid = _grid_of_slices(pos_sorted, plane, folder)
    return _ImageSeries(grid_file=grid, items=items_sorted, positions=pos_sorted)


def _slice_position(path: Path, ds: Dataset, plane: _PlaneGeometry) -> FloatArray:
    """ImagePositionPatient of one slice, after checking that it shares ``plane``."""
    first_path = plane.path
    if _integer(ds, "NumberOfFrames", path, 1) > 1:
        raise DicomInputError(
            f"{path}: multi-frame image (tag {_tag_name('NumberOfFrames')} > 1); only "
            "single-frame image series are supported"
        )
    if _integer(ds, "SamplesPerPixel", path, 1) != 1:
        raise DicomInputError(f"{path}: tag {_tag_name('SamplesPerPixel')} must be 1")
    tilt = _number(ds, "GantryDetectorTilt", path, 0.0)
    if abs(tilt) > 1e-3:
        raise DicomInputError(
            f"{path}: gantry tilt of {tilt} degrees (tag "
            f"{_tag_name('GantryDetectorTilt')}); resample the series to an axial grid first"
        )
    iop = _numbers(ds, "ImageOrientationPatient", path, 6)
    if not np.allclose(iop, plane.orientation, atol=1e-4):
        raise DicomInputError(
            f"{path}: tag {_tag_name('ImageOrientationPatient')} {iop.tolist()} differs "
            f"from {plane.orientation.tolist()} in {first_path}"
        )
    for key, value in (("Rows", plane.rows), ("Columns", plane.columns)):
        got = _integer(ds, key, path)
        if got != value:
            raise DicomInputError(
                f"{path}: tag {_tag_name(key)} is {got} but {value} in {first_path} "
                "(mixed image sizes in one series)"
            )
    ps = _numbers(ds, "PixelSpacing", path, 2)
    if not np.allclose(ps, plane.pixel_spacing_mm, atol=1e-4):
        raise DicomInputError(
            f"{path}: tag {_tag_name('PixelSpacing')} {ps.tolist()} differs from "
            f"{plane.pixel_spacing_mm.tolist()} in {first_path}"
        )
    if str(ds.get("FrameOfReferenceUID", "") or "") != plane.frame_of_reference_uid:
        raise DicomInputError(
            f"{path}: tag {_tag_name('FrameOfReferenceUID')} differs from {first_path}'s"
        )
    return _numbers(ds, "ImagePositionPatient", path, 3)


def _order_along_normal(
    items: list[tuple[Path, Dataset]], pos: FloatArray, orientation: FloatArray
) -> npt.NDArray[np.intp]:
    """The order of the slices along the normal ``row x column``; duplicates refused."""
    normal = np.cross(orientation[:3], orientation[3:])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along_sorted = along[order]
    dup = np.flatnonzero(np.diff(along_sorted) <= GRID_ATOL_MM)
    if dup.size:
        a, b = items[order[dup[0]]][0], items[order[dup[0] + 1]][0]
        raise DicomInputError(
            f"{a} and {b} have the same slice position (tag "
            f"{_tag_name('ImagePositionPatient')}, {along_sorted[dup[0]]:.3f} mm along the normal)"
        )
    return order


def _grid_of_slices(
    pos_sorted: FloatArray, plane: _PlaneGeometry, folder: str | os.PathLike[str]
) -> ImageGrid:
    """The grid of the sorted slices; a geometry error names the tag at fault."""
    try:
        return ImageGrid.from_dicom_slices(
            pos_sorted.tolist(),
            orientation=plane.orientation.tolist(),
            pixel_spacing_mm=plane.pixel_spacing_mm.tolist(),
            rows=plane.rows,
            columns=plane.columns,
            frame_of_reference_uid=plane.frame_of_reference_uid or None,
        )
    except GeometryError as exc:
        tag = (
            "ImageOrientationPatient"
            if "orientation" in str(exc)
            else ("PixelSpacing" if "PixelSpacing" in str(exc) else "ImagePositionPatient")
        )
        raise DicomInputError(
            f"series in {folder} (first file {plane.path}), tag {_tag_name(tag)}: {exc}"
        ) from exc


# ====================================================================== identity direction
def _identity_grid(grid: ImageGrid) -> tuple[ImageGrid, tuple[bool, bool, bool]]:
    """The grid with the identity direction covering ``grid``'s voxels, and the flips.

    ``flips`` says, in array order ``(k, j, i)``, which axes run against their LPS axis
    and must be flipped (:func:`_flip_to_identity`) to put an array on the new grid.
    """
    k_sign, j_sign, i_sign = grid.axis_signs
    flips = (k_sign < 0, j_sign < 0, i_sign < 0)
    corner = [n - 1 if f else 0 for n, f in zip(grid.shape, flips)]
    x_mm, y_mm, z_mm = (float(v) for v in grid.index_to_lps(corner))
    new_grid = ImageGrid(
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=(x_mm, y_mm, z_mm),
        frame_of_reference_uid=grid.frame_of_reference_uid,
    )
    return new_grid, flips


def _flip_to_identity(
    array: npt.NDArray[_ScalarT], flips: tuple[bool, bool, bool]
) -> npt.NDArray[_ScalarT]:
    """``array`` flipped along the axes marked in ``flips`` (a view; itself when none)."""
    axes = tuple(n for n, f in enumerate(flips) if f)
    return np.flip(array, axis=axes) if axes else array
