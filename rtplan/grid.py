"""Image geometry: :class:`ImageGrid`, voxel indices <-> patient (LPS) millimetres.

Conventions (see DESIGN.md):

* arrays are indexed ``[slice, row, col]`` = ``[k, j, i]``; ``shape`` and ``spacing_mm``
  follow that order;
* positions are DICOM patient coordinates (LPS: +x patient left, +y posterior,
  +z superior) in millimetres; ``origin_mm`` is the ``(x, y, z)`` position of the
  centre of voxel ``[0, 0, 0]``;
* ``direction`` is a 3 x 3 matrix whose columns are the LPS unit vectors of the
  column (``i``), row (``j``) and slice (``k``) axes, as in DICOM and ITK; the
  identity is the usual axial CT (columns run to the patient's left, rows run
  posterior, slices run superior). Only axial orientations are supported: the
  identity with any axis flipped. Oblique or rotated orientations are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._typing import BoolMask, FloatArray, Shape3, Vec3
from rtplan.errors import GeometryError, GridMismatchError, InvalidInputError

__all__ = [
    "GRID_ATOL_MM",
    "ImageGrid",
    "check_same_grid",
    "resample_to_grid",
]

#: Tolerance (mm) under which two grids' spacings and origins count as equal.
GRID_ATOL_MM = 1e-3

#: Tolerance on direction cosines when deciding that an orientation is axial.
_DIRECTION_ATOL = 1e-4

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _numeric(value: object, name: str) -> npt.NDArray[np.generic]:
    """``value`` as an array of numbers; strings, bools and other objects raise TypeError.

    (``np.asarray(value, float)`` would turn ``"2.5"`` into a number silently.)
    """
    arr = np.asarray(value)
    ok = arr.dtype.kind in "iuf" or (
        arr.dtype.kind == "O"
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in arr.reshape(-1))
    )
    if not ok:
        raise TypeError(f"{name} must be numbers, got {type(value).__name__} {value!r}")
    return arr


def _as_vec3(value: object, name: str) -> Vec3:
    arr = _numeric(value, name).astype(float).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} must be three finite numbers, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _as_shape3(value: object) -> Shape3:
    arr = _numeric(value, "shape").astype(np.float64).reshape(-1)
    valid = arr.shape == (3,) and bool(np.all(np.isfinite(arr)))
    if not valid or np.any(arr != np.round(arr)) or np.any(arr < 1):
        raise GeometryError(f"shape must be three positive integers, got {value!r}")
    return (int(arr[0]), int(arr[1]), int(arr[2]))


def _check_grid(value: object, name: str) -> None:
    """Raise TypeError naming the argument unless ``value`` is an :class:`ImageGrid`."""
    if not isinstance(value, ImageGrid):
        raise TypeError(f"{name} must be an ImageGrid, got {type(value).__name__}")


def _check_axial_direction(direction: npt.ArrayLike) -> tuple[float, ...]:
    d = np.asarray(direction, dtype=float)
    if d.shape == (9,):
        d = d.reshape(3, 3)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        raise GeometryError(f"direction must be a 3 x 3 matrix, got shape {d.shape}")
    rounded = np.round(d)
    is_signed_identity = np.allclose(d, rounded, atol=_DIRECTION_ATOL) and np.array_equal(
        np.abs(rounded), np.eye(3)
    )
    if not is_signed_identity:
        raise GeometryError(
            "only axial orientations are supported (the identity direction with axes "
            f"possibly flipped); got direction columns {np.round(d, 4).T.tolist()} "
            "(oblique, rotated or tilted images must be resampled to an axial grid first)"
        )
    return tuple(float(v) for v in rounded.reshape(-1))


@dataclass(frozen=True, slots=True)
class ImageGrid:
    """Immutable voxel geometry of a 3-D image in patient (LPS) millimetres.

    Parameters
    ----------
    shape : tuple of int
        ``(nz, ny, nx)``: slices, rows, columns.
    spacing_mm : tuple of float
        ``(sz, sy, sx)``: slice spacing, row spacing and column spacing in mm (> 0).
    origin_mm : tuple of float
        ``(x, y, z)`` LPS position in mm of the centre of voxel ``[0, 0, 0]``.
    direction : tuple of 9 float, optional
        Row-major 3 x 3 matrix whose columns are the LPS unit vectors of the column,
        row and slice axes. Default identity. Only diagonal matrices of +-1 (axial
        orientations, possibly flipped) are accepted.
    frame_of_reference_uid : str or None, optional
        DICOM FrameOfReferenceUID the positions refer to, when known.

    Raises
    ------
    GeometryError
        On a non-positive or non-integral shape, a non-positive spacing, non-finite
        numbers, or an oblique direction.
    TypeError
        When shape, spacing or origin are not numbers, or the FrameOfReferenceUID is
        neither a str nor None.

    Examples
    --------
    >>> g = ImageGrid(shape=(2, 3, 4), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(-10.0, 0.0, 5.0))
    >>> g.index_to_lps([1, 2, 3]).tolist()
    [-7.0, 2.0, 7.5]
    >>> g.lps_to_index([-7.0, 2.0, 7.5]).tolist()
    [1.0, 2.0, 3.0]
    """

    shape: Shape3
    spacing_mm: Vec3
    origin_mm: Vec3
    direction: tuple[float, ...] = field(default=_IDENTITY)
    frame_of_reference_uid: str | None = None

    def __post_init__(self) -> None:
        shape = _as_shape3(self.shape)
        spacing = _as_vec3(self.spacing_mm, "spacing_mm")
        if min(spacing) <= 0:
            raise GeometryError(f"spacing_mm must be positive, got {self.spacing_mm!r}")
        uid = self.frame_of_reference_uid
        if uid is not None and not isinstance(uid, str):
            raise TypeError(
                f"frame_of_reference_uid must be a str or None, got {type(uid).__name__} {uid!r}"
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", _as_vec3(self.origin_mm, "origin_mm"))
        object.__setattr__(self, "direction", _check_axial_direction(self.direction))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_components(
        cls,
        shape: Sequence[int],
        *,
        spacing_mm: Sequence[float],
        origin_mm: Sequence[float],
        direction: npt.ArrayLike | None = None,
        frame_of_reference_uid: str | None = None,
    ) -> ImageGrid:
        """Build a grid from its parts; see the class docstring for their meaning."""
        return cls(
            shape=_as_shape3(shape),
            spacing_mm=_as_vec3(spacing_mm, "spacing_mm"),
            origin_mm=_as_vec3(origin_mm, "origin_mm"),
            direction=_IDENTITY if direction is None else tuple(np.ravel(direction)),
            frame_of_reference_uid=frame_of_reference_uid,
        )

    @classmethod
    def from_dicom_slices(
        cls,
        positions_mm: Sequence[Sequence[float]],
        *,
        orientation: Sequence[float],
        pixel_spacing_mm: Sequence[float],
        rows: int,
        columns: int,
        frame_of_reference_uid: str | None = None,
        rel_tolerance: float = 0.01,
    ) -> ImageGrid:
        """Build a grid from the geometry of a series of DICOM image slices.

        Parameters
        ----------
        positions_mm : sequence of (x, y, z)
            ImagePositionPatient of every slice, in any order.
        orientation : sequence of 6 float
            ImageOrientationPatient (row direction cosines then column direction
            cosines), shared by all slices.
        pixel_spacing_mm : (row spacing, column spacing)
            PixelSpacing in mm, in DICOM order: the distance between rows first.
        rows, columns : int
            Rows and Columns of each slice.
        frame_of_reference_uid : str, optional
            FrameOfReferenceUID of the series.
        rel_tolerance : float, optional
            Allowed relative deviation of each slice gap from the median gap.

        Returns
        -------
        ImageGrid
            Slices are ordered by position along the slice normal (increasing), so
            the slice axis direction is the normal ``row x column``.

        Raises
        ------
        GeometryError
            On an oblique orientation, slices that are not stacked along the
            normal, duplicate positions, or uneven / missing slices (the message
            lists the positions found).
        """
        iop = np.asarray(orientation, dtype=float).reshape(-1)
        if iop.shape != (6,):
            raise GeometryError(f"ImageOrientationPatient must have 6 values, got {orientation!r}")
        row_dir, col_dir = iop[:3], iop[3:]
        normal = np.cross(row_dir, col_dir)
        direction = np.column_stack([row_dir, col_dir, normal])
        _check_axial_direction(direction)
        pos = np.asarray(positions_mm, dtype=float).reshape(-1, 3)
        if len(pos) == 0:
            raise GeometryError("no slice positions given")
        along = pos @ normal
        order = np.argsort(along, kind="stable")
        pos, along = pos[order], along[order]
        in_plane = pos - np.outer(along - along[0], normal)
        if not np.allclose(in_plane, in_plane[0], atol=max(GRID_ATOL_MM, 0.01)):
            raise GeometryError(
                "slices are not stacked along the slice normal (gantry tilt or shifted "
                f"slices); ImagePositionPatient values found: {pos.round(3).tolist()}"
            )
        ps = np.asarray(pixel_spacing_mm, dtype=float).reshape(-1)
        if ps.shape != (2,) or np.any(ps <= 0):
            raise GeometryError(
                f"PixelSpacing must be two positive numbers, got {pixel_spacing_mm!r}"
            )
        if len(pos) == 1:
            raise GeometryError(
                "a single slice does not define a slice spacing; at least two slices are needed"
            )
        gaps = np.diff(along)
        if np.any(gaps <= GRID_ATOL_MM):
            raise GeometryError(
                f"duplicate slice positions along the normal: {along.round(3).tolist()} mm"
            )
        step = float(np.median(gaps))
        if np.any(np.abs(gaps - step) > rel_tolerance * step):
            raise GeometryError(
                "uneven slice spacing or a missing slice: slice positions along the normal "
                f"are {along.round(3).tolist()} mm (gaps {np.unique(gaps.round(3)).tolist()} mm); "
                "resample the series to even spacing first"
            )
        return cls(
            shape=(len(pos), int(rows), int(columns)),
            spacing_mm=(step, float(ps[0]), float(ps[1])),
            origin_mm=_as_vec3(pos[0], "ImagePositionPatient"),
            direction=tuple(direction.reshape(-1)),
            frame_of_reference_uid=frame_of_reference_uid,
        )

    @classmethod
    def from_affine(
        cls,
        affine: npt.ArrayLike,
        shape_ijk: Sequence[int],
        *,
        convention: Literal["RAS", "LPS"] = "RAS",
        frame_of_reference_uid: str | None = None,
    ) -> ImageGrid:
        """Build a grid from a NIfTI-style 4 x 4 affine.

        The affine maps ``(i, j, k, 1)`` voxel indices of an array stored
        ``[i, j, k]`` (NIfTI order) to positions in ``convention``. The rtplan
        array for such an image is ``np.transpose(data, (2, 1, 0))`` (see
        :meth:`array_from_ijk`).

        Parameters
        ----------
        affine : array_like, shape (4, 4)
            Voxel-to-world affine in mm.
        shape_ijk : (ni, nj, nk)
            Shape of the NIfTI data array.
        convention : {"RAS", "LPS"}
            World convention of the affine; NIfTI is RAS. Converted to LPS here.
        frame_of_reference_uid : str, optional
            FrameOfReferenceUID, if known.

        Raises
        ------
        GeometryError
            On a shear, an oblique direction or a non-finite affine.
        """
        a = np.asarray(affine, dtype=float)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)):
            raise GeometryError(f"affine must be a finite 4 x 4 matrix, got shape {a.shape}")
        if convention not in ("RAS", "LPS"):
            raise GeometryError(f"convention must be 'RAS' or 'LPS', got {convention!r}")
        flip = np.diag([-1.0, -1.0, 1.0]) if convention == "RAS" else np.eye(3)
        m = flip @ a[:3, :3]
        origin = flip @ a[:3, 3]
        spacing_ijk = np.linalg.norm(m, axis=0)
        if np.any(spacing_ijk <= 0):
            raise GeometryError("affine has a zero-length voxel axis")
        direction = m / spacing_ijk
        ni, nj, nk = (int(n) for n in shape_ijk)
        return cls(
            shape=(nk, nj, ni),
            spacing_mm=(float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0])),
            origin_mm=_as_vec3(origin, "affine translation"),
            direction=tuple(direction.reshape(-1)),
            frame_of_reference_uid=frame_of_reference_uid,
        )

    @staticmethod
    def array_from_ijk(data: npt.ArrayLike) -> npt.NDArray[np.generic]:
        """Reorder a NIfTI-order ``[i, j, k]`` array to rtplan's ``[k, j, i]`` (a view)."""
        return np.transpose(np.asarray(data), (2, 1, 0))

    # ------------------------------------------------------------------ properties
    @property
    def direction_matrix(self) -> FloatArray:
        """The 3 x 3 direction matrix (a fresh array); columns: col, row, slice axes."""
        return np.array(self.direction, dtype=float).reshape(3, 3)

    @property
    def axis_signs(self) -> tuple[int, int, int]:
        """Sign of the LPS axis each array axis runs along, in array order (k, j, i).

        ``+1`` when increasing the slice index moves superior, the row index
        posterior, the column index to the patient's left; ``-1`` when flipped.
        """
        d = self.direction_matrix
        return (int(d[2, 2]), int(d[1, 1]), int(d[0, 0]))

    @property
    def is_standard_orientation(self) -> bool:
        """True for the identity direction (the usual axial CT)."""
        return self.direction == _IDENTITY

    @property
    def affine(self) -> FloatArray:
        """4 x 4 matrix mapping ``(k, j, i, 1)`` array indices to ``(x, y, z, 1)`` LPS mm."""
        m = np.zeros((4, 4))
        d = self.direction_matrix
        sz, sy, sx = self.spacing_mm
        # array index order is (k, j, i); direction columns are (i, j, k)
        m[:3, 0] = d[:, 2] * sz
        m[:3, 1] = d[:, 1] * sy
        m[:3, 2] = d[:, 0] * sx
        m[:3, 3] = self.origin_mm
        m[3, 3] = 1.0
        return m

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(np.prod(self.spacing_mm))

    @property
    def voxel_volume_cc(self) -> float:
        """Volume of one voxel in cc (cm^3)."""
        return self.voxel_volume_mm3 / 1000.0

    @property
    def size(self) -> int:
        """Number of voxels."""
        return int(np.prod(self.shape))

    @property
    def extent_mm(self) -> Vec3:
        """Physical size ``(z, y, x)`` of the grid in mm, voxel edge to voxel edge."""
        (nz, ny, nx), (sz, sy, sx) = self.shape, self.spacing_mm
        return (nz * sz, ny * sy, nx * sx)

    @property
    def bounds_mm(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """LPS bounds ``((xmin, xmax), (ymin, ymax), (zmin, zmax))`` of the voxel edges."""
        c0 = self.index_to_lps([-0.5, -0.5, -0.5])
        c1 = self.index_to_lps([n - 0.5 for n in self.shape])
        lo, hi = np.minimum(c0, c1), np.maximum(c0, c1)
        return (
            (float(lo[0]), float(hi[0])),
            (float(lo[1]), float(hi[1])),
            (float(lo[2]), float(hi[2])),
        )

    @property
    def center_mm(self) -> Vec3:
        """LPS position ``(x, y, z)`` of the grid centre in mm."""
        return _as_vec3(self.index_to_lps([(n - 1) / 2 for n in self.shape]), "center_mm")

    def axis_coordinates_mm(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """LPS coordinate of every slice, row and column centre.

        Returns
        -------
        z_mm, y_mm, x_mm : ndarray
            ``z_mm[k]`` is the z (superior) position of slice ``k``, ``y_mm[j]`` the
            y (posterior) position of row ``j``, ``x_mm[i]`` the x (left) position of
            column ``i``. Valid because only axial orientations are supported.
        """
        sk, sj, si = self.axis_signs
        sz, sy, sx = self.spacing_mm
        x0, y0, z0 = self.origin_mm
        nz, ny, nx = self.shape
        f64 = np.float64
        return (
            z0 + sk * sz * np.arange(nz, dtype=f64),
            y0 + sj * sy * np.arange(ny, dtype=f64),
            x0 + si * sx * np.arange(nx, dtype=f64),
        )

    # ------------------------------------------------------------------ transforms
    def index_to_lps(self, indices: npt.ArrayLike) -> FloatArray:
        """Map ``(k, j, i)`` array indices (integer or fractional) to LPS mm.

        Parameters
        ----------
        indices : array_like, shape (..., 3)
            Indices in array order ``(slice, row, col)``.

        Returns
        -------
        ndarray, shape (..., 3)
            Positions ``(x, y, z)`` in mm.
        """
        idx = np.asarray(indices, dtype=float)
        if idx.shape[-1:] != (3,):
            raise InvalidInputError(
                f"indices must have a last axis of length 3, got shape {idx.shape}"
            )
        a = self.affine
        out: FloatArray = idx @ a[:3, :3].T + a[:3, 3]
        return out

    def lps_to_index(self, points_mm: npt.ArrayLike) -> FloatArray:
        """Map LPS positions in mm to fractional ``(k, j, i)`` array indices.

        The exact inverse of :meth:`index_to_lps` (axial directions are diagonal,
        so no matrix inversion is involved).
        """
        p = np.asarray(points_mm, dtype=float)
        if p.shape[-1:] != (3,):
            raise InvalidInputError(
                f"points must have a last axis of length 3, got shape {p.shape}"
            )
        d = self.direction_matrix
        rel = p - np.asarray(self.origin_mm)
        # column (i), row (j), slice (k) step vectors are the direction columns
        out = np.empty(p.shape, dtype=float)
        sz, sy, sx = self.spacing_mm
        out[..., 0] = (rel @ d[:, 2]) / sz
        out[..., 1] = (rel @ d[:, 1]) / sy
        out[..., 2] = (rel @ d[:, 0]) / sx
        return out

    def lps_to_nearest_index(self, points_mm: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Nearest integer ``(k, j, i)`` indices of LPS positions (may lie outside the grid)."""
        return np.rint(self.lps_to_index(points_mm)).astype(np.int64)

    def contains_index(self, indices: npt.ArrayLike) -> BoolMask:
        """True where integer ``(k, j, i)`` indices lie inside the grid."""
        idx = np.asarray(indices)
        inside: BoolMask = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=-1)
        return inside

    # ------------------------------------------------------------------ crop / pad
    def crop(self, slices: tuple[slice, slice, slice]) -> ImageGrid:
        """Grid of the sub-array ``array[slices]`` (unit-step slices); the origin moves.

        Parameters
        ----------
        slices : tuple of 3 slice
            Slices along ``(k, j, i)``; ``None`` bounds mean the grid edge.

        Raises
        ------
        GeometryError
            On a step other than 1 or an empty result.
        """
        if len(slices) != 3:
            raise GeometryError(f"crop needs three slices, got {slices!r}")
        if not all(isinstance(s, slice) for s in slices):
            raise TypeError(f"crop needs three slice objects, got {slices!r}")
        starts, sizes = [], []
        for s, n in zip(slices, self.shape):
            start, stop, step = s.indices(n)
            if step != 1 or stop <= start:
                raise GeometryError(f"crop slices must be non-empty with step 1, got {slices!r}")
            starts.append(start)
            sizes.append(stop - start)
        return ImageGrid(
            shape=_as_shape3(sizes),
            spacing_mm=self.spacing_mm,
            origin_mm=_as_vec3(self.index_to_lps(starts), "origin_mm"),
            direction=self.direction,
            frame_of_reference_uid=self.frame_of_reference_uid,
        )

    def pad(self, pad_width: Sequence[tuple[int, int]] | int) -> ImageGrid:
        """Grid of ``np.pad(array, pad_width)``: ``(before, after)`` voxels per axis.

        Negative widths crop. The origin moves by ``before`` voxels.
        """
        pw = np.broadcast_to(np.asarray(pad_width, dtype=int), (3, 2))
        shape = [int(n + b + a) for n, (b, a) in zip(self.shape, pw)]
        if min(shape) < 1:
            raise GeometryError(f"padding {pw.tolist()} leaves an empty grid")
        return ImageGrid(
            shape=_as_shape3(shape),
            spacing_mm=self.spacing_mm,
            origin_mm=_as_vec3(self.index_to_lps(-pw[:, 0]), "origin_mm"),
            direction=self.direction,
            frame_of_reference_uid=self.frame_of_reference_uid,
        )

    def with_frame_of_reference(self, uid: str | None) -> ImageGrid:
        """The same grid with another FrameOfReferenceUID."""
        return ImageGrid(self.shape, self.spacing_mm, self.origin_mm, self.direction, uid)

    # ------------------------------------------------------------------ equality
    def equals(self, other: object, *, atol_mm: float = GRID_ATOL_MM) -> bool:
        """True when ``other`` is a grid with the same geometry within ``atol_mm``.

        Shape and direction must match exactly, spacing and origin within
        ``atol_mm``; the FrameOfReferenceUIDs must match when both are set.
        """
        if not isinstance(other, ImageGrid):
            return False
        if self.shape != other.shape or self.direction != other.direction:
            return False
        if not np.allclose(self.spacing_mm, other.spacing_mm, rtol=0, atol=atol_mm):
            return False
        if not np.allclose(self.origin_mm, other.origin_mm, rtol=0, atol=atol_mm):
            return False
        a, b = self.frame_of_reference_uid, other.frame_of_reference_uid
        return a is None or b is None or a == b

    def describe(self) -> str:
        """One-line human description used in error messages."""
        spacing = tuple(round(s, 4) for s in self.spacing_mm)
        origin = tuple(round(o, 3) for o in self.origin_mm)
        return f"ImageGrid(shape={self.shape}, spacing_mm={spacing}, origin_mm={origin})"


def check_same_grid(*grids: ImageGrid, names: Sequence[str] | None = None) -> None:
    """Raise :class:`GridMismatchError` unless every grid equals the first.

    Parameters
    ----------
    *grids : ImageGrid
        Grids to compare.
    names : sequence of str, optional
        What each grid belongs to, for the message; one name per grid.

    Raises
    ------
    GridMismatchError
        When a grid differs from the first.
    TypeError
        When an argument is not an :class:`ImageGrid`.
    InvalidInputError
        When ``names`` does not give one name per grid.
    """
    for n, g in enumerate(grids):
        _check_grid(g, f"grid {n} of check_same_grid")
    if not grids:
        return
    if names is not None and (isinstance(names, str) or len(names) != len(grids)):
        raise InvalidInputError(f"names must give one name per grid ({len(grids)}), got {names!r}")
    labels = list(names) if names is not None else [f"grid {n}" for n in range(len(grids))]
    for g, label in zip(grids[1:], labels[1:]):
        if not grids[0].equals(g):
            raise GridMismatchError(
                f"{label} is on {g.describe()} but {labels[0]} is on {grids[0].describe()}; "
                "resample one onto the other first (rtplan.grid.resample_to_grid)"
            )


@overload
def resample_to_grid(
    array: npt.ArrayLike,
    source: ImageGrid,
    target: ImageGrid,
    *,
    order: Literal[1] = 1,
    fill_value: float = 0.0,
) -> FloatArray: ...


@overload
def resample_to_grid(
    array: npt.ArrayLike,
    source: ImageGrid,
    target: ImageGrid,
    *,
    order: Literal[0, 1],
    fill_value: float = 0.0,
) -> npt.NDArray[np.generic]: ...


def resample_to_grid(
    array: npt.ArrayLike,
    source: ImageGrid,
    target: ImageGrid,
    *,
    order: Literal[0, 1] = 1,
    fill_value: float = 0.0,
) -> npt.NDArray[np.generic]:
    """Resample an array from one axial grid onto another.

    Parameters
    ----------
    array : array_like, shape ``source.shape``
        Image (or label map / mask) on ``source``.
    source, target : ImageGrid
        Geometries; both axial, so the map from target to source indices is a
        per-axis affine function and no coordinate arrays are built.
    order : {0, 1}
        0 = nearest neighbour (labels, masks), 1 = trilinear (images, SUV, dose).
    fill_value : float
        Value outside ``source``.

    Returns
    -------
    ndarray, shape ``target.shape``
        Same dtype as ``array`` for ``order=0``, float64 for ``order=1``.

    Raises
    ------
    GridMismatchError
        When both grids carry different FrameOfReferenceUIDs.
    TypeError
        When ``source`` or ``target`` is not an :class:`ImageGrid`.
    InvalidInputError
        When ``order`` is not 0 or 1.
    """
    _check_grid(source, "source")
    _check_grid(target, "target")
    if isinstance(order, bool) or order not in (0, 1):
        raise InvalidInputError(f"order must be 0 (nearest) or 1 (trilinear), got {order!r}")
    a = np.asarray(array)
    if a.shape != source.shape:
        raise GridMismatchError(
            f"array shape {a.shape} does not match source grid shape {source.shape}"
        )
    fa, fb = source.frame_of_reference_uid, target.frame_of_reference_uid
    if fa is not None and fb is not None and fa != fb:
        raise GridMismatchError(
            f"frames of reference differ (source {fa}, target {fb}); register the images first"
        )
    # source index = scale * target index + offset, axis by axis (both grids axial)
    t0 = source.lps_to_index(target.index_to_lps([0, 0, 0]))
    t1 = source.lps_to_index(target.index_to_lps(np.eye(3)))
    scale = np.array([t1[n][n] - t0[n] for n in range(3)])
    if order == 0 and np.issubdtype(a.dtype, np.bool_):
        src = a.view(np.uint8)
    else:
        src = a if order == 0 else a.astype(np.float64, copy=False)
    out = ndimage.affine_transform(
        src,
        scale,
        offset=t0,
        output_shape=target.shape,
        order=order,
        mode="constant",
        cval=fill_value,
        prefilter=False,
    )
    if order == 0 and np.issubdtype(a.dtype, np.bool_):
        return out.astype(bool)
    resampled: npt.NDArray[np.generic] = out
    return resampled
