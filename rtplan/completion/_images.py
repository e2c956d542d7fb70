"""SimpleITK images from rtplan arrays and grids, and back (private to the package).

rtplan arrays are ``[k, j, i]`` on an :class:`~rtplan.grid.ImageGrid` with the identity
direction (the loaders flip every series to it); a SimpleITK image of the same array has
index ``(i, j, k)``, spacing ``(sx, sy, sz)`` and origin ``(x, y, z)`` in LPS mm, which is
SimpleITK's physical space too. Nothing is resampled on the way in or out.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask, FloatArray
from rtplan.completion._sitk import SitkImage, sitk
from rtplan.errors import GeometryError
from rtplan.grid import ImageGrid

#: Integer box ``(start, stop)`` of ``(k, j, i)`` indices.
Box = tuple[tuple[int, int, int], tuple[int, int, int]]


def check_identity(grid: ImageGrid, what: str) -> None:
    """Refuse a grid whose direction is not the identity (flip it at the I/O boundary)."""
    if not all(s > 0 for s in grid.axis_signs):
        raise GeometryError(
            f"{what} must be on a grid with the identity direction, got {grid.describe()}; "
            "load it through rtplan.atlas (which flips series to the identity)"
        )


def image(array: npt.ArrayLike, grid: ImageGrid, *, dtype: type = np.float32) -> SitkImage:
    """A SimpleITK image of ``array`` (``[k, j, i]``) on ``grid`` (identity direction)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=dtype)))
    sz, sy, sx = grid.spacing_mm
    img.SetSpacing((float(sx), float(sy), float(sz)))
    img.SetOrigin(tuple(float(v) for v in grid.origin_mm))
    return img


def box_image(grid: ImageGrid, box: Box) -> SitkImage:
    """An empty (uint8) image covering the voxels ``box`` of ``grid``: a resampling target."""
    (k0, j0, i0), (k1, j1, i1) = box
    img = sitk.Image(int(i1 - i0), int(j1 - j0), int(k1 - k0), sitk.sitkUInt8)
    sz, sy, sx = grid.spacing_mm
    img.SetSpacing((float(sx), float(sy), float(sz)))
    origin = grid.index_to_lps(np.array([k0, j0, i0], float))
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


def array(img: SitkImage) -> FloatArray:
    """The voxels of ``img`` as a float64 ``[k, j, i]`` array (a copy)."""
    out: FloatArray = np.asarray(sitk.GetArrayFromImage(img), dtype=np.float64)
    return out


def mask_box(mask: BoolMask, pad: int = 0) -> Box | None:
    """The index box of the ``True`` voxels, grown by ``pad`` and clipped to the array."""
    if not mask.any():
        return None
    lo = []
    hi = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo.append(max(0, int(hits[0]) - pad))
        hi.append(min(mask.shape[axis], int(hits[-1]) + 1 + pad))
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def box_slices(box: Box) -> tuple[slice, slice, slice]:
    """The box as index slices ``(k, j, i)``."""
    (k0, j0, i0), (k1, j1, i1) = box
    return slice(k0, k1), slice(j0, j1), slice(i0, i1)


def box_of_points(grid: ImageGrid, points_mm: FloatArray, margin_mm: float) -> Box | None:
    """The voxels of ``grid`` within ``margin_mm`` of the bounding box of LPS points."""
    lo_mm = points_mm.min(axis=0) - margin_mm
    hi_mm = points_mm.max(axis=0) + margin_mm
    corners = np.array([lo_mm, hi_mm])
    idx = grid.lps_to_index(corners)
    start = np.floor(idx.min(axis=0)).astype(int)
    stop = np.ceil(idx.max(axis=0)).astype(int) + 1
    start = np.maximum(start, 0)
    stop = np.minimum(stop, np.array(grid.shape))
    if np.any(stop <= start):
        return None
    return (
        (int(start[0]), int(start[1]), int(start[2])),
        (int(stop[0]), int(stop[1]), int(stop[2])),
    )


def box_corners_mm(grid: ImageGrid, box: Box) -> FloatArray:
    """The eight corner voxel centres of ``box`` in LPS mm, shape (8, 3)."""
    (k0, j0, i0), (k1, j1, i1) = box
    ks, js, is_ = (k0, k1 - 1), (j0, j1 - 1), (i0, i1 - 1)
    idx = np.array([[k, j, i] for k in ks for j in js for i in is_], float)
    corners: FloatArray = grid.index_to_lps(idx)
    return corners
