"""Dose-volume histograms, dose metrics, constraint checks, gEUD and LKB NTCP.

A structure (a mask on the fine CT grid) is brought to the coarser dose grid once, by
:func:`structure_on_dose_grid`: for every dose voxel it touches we keep the fraction of
the voxel the structure occupies (computed exactly from the CT voxels, axis by axis) and
the centroid of the occupied part. The DVH then treats every dose voxel as a small box
in which the dose varies linearly (gradient from central differences of the dose grid):

* the dose of a partly occupied voxel is taken at the centroid of its occupied part
  (first-order correction of the voxel-centre dose), plus the box average of the dose's
  curvature (``h**2 / 24`` times the second differences), and
* each voxel's volume is spread uniformly over the dose range the gradient sweeps across
  it (width ``sqrt(sum((g_a * h_a)**2))`` for gradient ``g`` and voxel size ``h``, the
  width of a uniform distribution with the same variance as the exact one; for partly
  occupied voxels the size is scaled by the cube root of the occupancy).

The cumulative DVH of these uniform pieces (a sum of hinge functions) is computed on a
fine dose axis (default 0.01 Gy; hinges at the nearest axis point, so doses are good to
half a bin) with :func:`numpy.bincount` (in chunks of samples) and two cumulative sums;
metrics interpolate it. Full voxels of large structures are evaluated on contiguous runs
of the dose box rather than voxel by voxel (same model, equal up to float32 rounding).
The structure's volume is the CT mask's volume exactly.
See ``docs/dose_model.md`` for the accuracy measured against closed-form spheres.

Metric strings (see :func:`parse_metric`): ``"D95%"``, ``"D2cc"``, ``"D0.03cc"``,
``"Dmax"`` (= D0.03cc), ``"Dmin"``, ``"Dmean"``, ``"V65Gy"`` (% of the structure),
``"V45Gy[cc]"`` (cc), ``"V95%Rx"`` (volume receiving 95 % of a prescription, in %).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from rtplan._memo import IdentityMemo
from rtplan._typing import BoolMask, FloatArray
from rtplan.errors import GeometryError, GridMismatchError, InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure

#: float32 arrays: occupancies and centroid offsets on the dose grid.
Float32Array = npt.NDArray[np.float32]
#: int64 index arrays (raveled voxel indices).
IndexArray = npt.NDArray[np.int64]

__all__ = [
    "DMAX_VOLUME_CC",
    "DVH",
    "LKB_PARAMETERS",
    "Constraint",
    "ConstraintResult",
    "LKBParameters",
    "Metric",
    "StructureOnDoseGrid",
    "compute_dvh",
    "compute_dvhs",
    "evaluate_constraint",
    "geud_gy",
    "lkb_ntcp",
    "occupancy_on_grid",
    "parse_constraint",
    "parse_metric",
    "structure_on_dose_grid",
]

#: Volume (cc) used for the near-maximum dose reported as "Dmax" (ICRU 83 recommends a
#: small volume rather than a point maximum; 0.03 cc is the common TPS convention and the
#: one the issue asks for).
DMAX_VOLUME_CC = 0.03

#: Default width of the dose axis of a DVH, in Gy (tool default).
DEFAULT_BIN_WIDTH_GY = 0.01

_OCC_EPS = 1e-7  # occupancy below this is treated as empty
_CHUNK_SLICES = 16  # CT slices processed at once (bounds memory for large structures)
# full voxels are evaluated on runs of the raveled box (shifted slices) when they fill at
# least 1 / this of their structure's box, else voxel by voxel (neighbour gathers)
_FIELD_MIN_FILL = 4
_SAMPLE_CHUNK = 32768  # DVH samples processed at once (temporaries stay in cache)


# ---------------------------------------------------------------------------- argument checks
def _check_structure_and_grid(structure: object, dose_grid: object) -> None:
    """Raise TypeError naming ``structure`` or ``dose_grid`` when of the wrong type."""
    if not isinstance(structure, Structure):
        raise TypeError(
            f"structure must be an rtplan.structures.Structure, got {type(structure).__name__}"
        )
    if not isinstance(dose_grid, ImageGrid):
        raise TypeError(
            f"dose_grid must be an rtplan.grid.ImageGrid, got {type(dose_grid).__name__}"
        )


def _check_dvh(dvh: object) -> None:
    if not isinstance(dvh, DVH):
        raise TypeError(
            f"dvh must be an rtplan.dvh.DVH (from compute_dvh), got {type(dvh).__name__}"
        )


# ---------------------------------------------------------------------------- resampling
def _check_axial_identity(grid: ImageGrid, what: str) -> None:
    if not grid.is_standard_orientation:
        raise GeometryError(
            f"{what} must have the identity (standard axial) direction, got axis signs "
            f"{grid.axis_signs}; flip the arrays to the standard orientation when reading"
        )


def _axis_weights(
    src_first_centre: float,
    src_h: float,
    n_src: int,
    dst_first_centre: float,
    dst_h: float,
    n_dst: int,
    what: str,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Overlap weights of ``n_src`` source cells with the destination cells along one axis.

    Returns ``(a0, idx, w0, w1)``: destination cells ``a0 .. a0 + len(idx) - 1``; for each,
    ``idx[a, k]`` is a source cell (local index) and ``w0[a, k]`` its overlap length as a
    fraction of the destination cell, ``w1[a, k]`` the first moment of that overlap about
    the destination cell centre divided by the cell length (mm).
    """
    e0 = src_first_centre - 0.5 * src_h  # first source edge
    e1 = e0 + n_src * src_h
    f0 = dst_first_centre - 0.5 * dst_h
    tol = 1e-6
    a0 = math.floor((e0 - f0) / dst_h + tol)
    a1 = math.ceil((e1 - f0) / dst_h - tol)
    if a0 < 0 or a1 > n_dst:
        raise GeometryError(
            f"{what} extends outside the dose grid (source {e0:.2f}..{e1:.2f} mm, dose grid "
            f"{f0:.2f}..{f0 + n_dst * dst_h:.2f} mm along one axis); build the dose grid with "
            "rtplan.dose_estimate.make_dose_grid so that it covers the body and all structures"
        )
    a = np.arange(a0, a1)
    lo_a = f0 + a * dst_h
    hi_a = lo_a + dst_h
    centre_a = lo_a + 0.5 * dst_h
    kmax = math.ceil(dst_h / src_h) + 1
    b_first = np.floor((lo_a - e0) / src_h + tol).astype(np.int64)
    idx = b_first[:, None] + np.arange(kmax)[None, :]
    lo_b = e0 + idx * src_h
    lo = np.maximum(lo_a[:, None], lo_b)
    hi = np.minimum(hi_a[:, None], lo_b + src_h)
    overlap = np.clip(hi - lo, 0.0, None)
    valid = (idx >= 0) & (idx < n_src) & (overlap > 0)
    overlap = np.where(valid, overlap, 0.0)
    w0 = overlap / dst_h
    w1 = overlap * (0.5 * (lo + hi) - centre_a[:, None]) / dst_h
    w1 = np.where(valid, w1, 0.0)
    idx = np.clip(idx, 0, n_src - 1)
    return a0, idx, w0.astype(np.float32), w1.astype(np.float32)


def _reduce(arr: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``out[..., a, ...] = sum_k w[a, k] * arr[..., idx[a, k], ...]`` along ``axis``."""
    shape = [1, 1, 1]
    shape[axis] = idx.shape[0]
    out = None
    for k in range(idx.shape[1]):
        wk = w[:, k]
        if not np.any(wk):
            continue
        term = np.take(arr, idx[:, k], axis=axis) * wk.reshape(shape)
        out = term if out is None else out + term
    if out is None:
        new_shape = list(arr.shape)
        new_shape[axis] = idx.shape[0]
        out = np.zeros(new_shape, np.float32)
    return out


def _occupancy_moments(
    structure: Structure, dose_grid: ImageGrid, *, moments: bool
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray | None]:
    """Fractional occupancy (and centroid offsets, mm) of ``structure`` on ``dose_grid``.

    Returns ``(bbox, m0, offsets)`` where ``bbox`` are dose-grid slices, ``m0`` the
    occupied fraction of each dose voxel in the box and ``offsets`` (shape ``(3,) +
    m0.shape``, order z, y, x, mm) the centroid of the occupied part relative to the
    voxel centre, or ``None`` when ``moments`` is False.
    """
    src = structure.grid
    _check_axial_identity(src, f"the grid of structure {structure.name!r}")
    _check_axial_identity(dose_grid, "the dose grid")
    fa, fb = src.frame_of_reference_uid, dose_grid.frame_of_reference_uid
    if fa is not None and fb is not None and fa != fb:
        raise GridMismatchError(
            f"structure {structure.name!r} is in frame of reference {fa} but the dose grid is "
            f"in {fb}"
        )
    bbox = structure.bbox
    if bbox is None:
        raise GeometryError(f"structure {structure.name!r} is empty")
    local = structure.cropped_mask
    zc, yc, xc = src.axis_coordinates_mm()
    zd, yd, xd = dose_grid.axis_coordinates_mm()
    src_first = (zc[bbox[0].start], yc[bbox[1].start], xc[bbox[2].start])
    dst_first = (zd[0], yd[0], xd[0])
    what = f"structure {structure.name!r}"
    weights = [
        _axis_weights(
            src_first[ax],
            src.spacing_mm[ax],
            local.shape[ax],
            dst_first[ax],
            dose_grid.spacing_mm[ax],
            dose_grid.shape[ax],
            what,
        )
        for ax in range(3)
    ]
    (az, iz, z0, z1), (ay, iy, y0, y1), (ax_, ix, x0, x1) = weights
    nz = local.shape[0]
    b00 = np.empty((nz, iy.shape[0], ix.shape[0]), np.float32)
    if moments:
        b0y = np.empty_like(b00)
        b1x = np.empty_like(b00)
    for s in range(0, nz, _CHUNK_SLICES):
        chunk = local[s : s + _CHUNK_SLICES].view(np.uint8)
        a0 = _reduce(chunk, 2, ix, x0)
        b00[s : s + _CHUNK_SLICES] = _reduce(a0, 1, iy, y0)
        if moments:
            b0y[s : s + _CHUNK_SLICES] = _reduce(a0, 1, iy, y1)
            a1 = _reduce(chunk, 2, ix, x1)
            b1x[s : s + _CHUNK_SLICES] = _reduce(a1, 1, iy, y0)
    m0 = _reduce(b00, 0, iz, z0)
    box = (
        slice(az, az + iz.shape[0]),
        slice(ay, ay + iy.shape[0]),
        slice(ax_, ax_ + ix.shape[0]),
    )
    if not moments:
        return box, m0, None
    mz = _reduce(b00, 0, iz, z1)
    my = _reduce(b0y, 0, iz, z0)
    mx = _reduce(b1x, 0, iz, z0)
    safe = np.where(m0 > _OCC_EPS, m0, 1.0)
    offsets = np.stack([mz / safe, my / safe, mx / safe])
    return box, m0, offsets


def occupancy_on_grid(structure: Structure, dose_grid: ImageGrid) -> Float32Array:
    """Fraction of every dose voxel that ``structure`` occupies.

    Parameters
    ----------
    structure : Structure
        A mask on its own (usually finer, CT) grid, standard axial orientation.
    dose_grid : ImageGrid
        The dose grid (standard axial orientation, same frame of reference).

    Returns
    -------
    ndarray of float32, shape ``dose_grid.shape``
        Occupied fraction in [0, 1]; the sum times the dose voxel volume equals the
        structure's volume (up to float32 rounding).

    Raises
    ------
    GeometryError
        If the structure is empty, extends outside the dose grid, or a grid is not in the
        standard orientation.
    GridMismatchError
        If the frames of reference differ.
    TypeError
        If ``structure`` is not a Structure or ``dose_grid`` not an ImageGrid.

    Examples
    --------
    >>> g = ImageGrid(shape=(4, 4, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[0:2, 0:2, 0:2] = True
    >>> dg = ImageGrid(shape=(2, 2, 2), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.5, 0.5, 0.5))
    >>> occupancy_on_grid(Structure("cube", m, g), dg)[0, 0, 0]
    np.float32(1.0)
    """
    _check_structure_and_grid(structure, dose_grid)
    box, m0, _ = _occupancy_moments(structure, dose_grid, moments=False)
    out = np.zeros(dose_grid.shape, np.float32)
    out[box] = np.clip(m0, 0.0, 1.0)
    return out


@dataclass(frozen=True, eq=False)
class StructureOnDoseGrid:
    """A structure resampled to a dose grid: occupied dose voxels with their weights.

    Build it with :func:`structure_on_dose_grid` once per structure and dose grid, then
    compute as many DVHs from it as there are dose distributions (options).

    Attributes
    ----------
    name : str
        Structure name.
    dose_grid : ImageGrid
        The dose grid.
    flat_index : ndarray of int64, shape (N,)
        Raveled dose-grid indices of the voxels the structure occupies (in part).
    volume_cc : ndarray of float64, shape (N,)
        Volume of the structure inside each of those voxels, in cc.
    occupancy : ndarray of float32, shape (N,)
        Occupied fraction of each voxel.
    offset_mm : ndarray of float32, shape (3, N)
        Centroid of the occupied part relative to the voxel centre, rows ``z, y, x``, mm.
    source_volume_cc : float
        Volume of the structure's mask on its own grid, in cc.
    box : tuple of 3 (start, stop)
        Dose-grid index range of the occupied voxels along (k, j, i).
    local_index : ndarray of int64, shape (N,)
        Raveled index of each voxel in the box padded by one voxel on every side.
    n_partial : int
        The first ``n_partial`` voxels are partly occupied; the others are full.
    role : str
        The structure's role.
    """

    name: str
    dose_grid: ImageGrid
    flat_index: IndexArray
    volume_cc: FloatArray
    occupancy: Float32Array
    offset_mm: Float32Array
    source_volume_cc: float
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    local_index: IndexArray
    n_partial: int
    role: str = "organ"

    @property
    def total_volume_cc(self) -> float:
        """Volume represented on the dose grid (equals the mask volume), in cc."""
        return float(self.volume_cc.sum())

    @cached_property
    def _size_scale2(self) -> Float32Array:
        """(occupancy ** (1/3)) ** 2: squared size of the occupied part relative to a voxel."""
        return np.cbrt(self.occupancy) ** 2

    @cached_property
    def _full_ascending(self) -> bool:
        """Whether the full voxels' local indices ascend (as structure_on_dose_grid builds them)."""
        full = self.local_index[self.n_partial :]
        return bool(np.all(full[1:] > full[:-1]))

    def occupancy_array(self) -> Float32Array:
        """Occupied fraction on the full dose grid (a new float32 array)."""
        out = np.zeros(self.dose_grid.size, np.float32)
        out[self.flat_index] = self.occupancy
        return out.reshape(self.dose_grid.shape)


def structure_on_dose_grid(structure: Structure, dose_grid: ImageGrid) -> StructureOnDoseGrid:
    """Resample a structure's mask to fractional occupancy of the dose grid's voxels.

    Parameters
    ----------
    structure : Structure
        Mask on its own (CT) grid; standard axial orientation.
    dose_grid : ImageGrid
        Dose grid; standard axial orientation; must contain the whole structure.

    Returns
    -------
    StructureOnDoseGrid

    Raises
    ------
    GeometryError
        Empty structure, structure outside the dose grid, or non-standard orientation.
    GridMismatchError
        Different frames of reference.
    TypeError
        If ``structure`` is not a Structure or ``dose_grid`` not an ImageGrid.
    """
    _check_structure_and_grid(structure, dose_grid)
    if structure.role == "external":  # the body is large and resampled once per case
        return _resampled(structure, dose_grid)
    found = _RESAMPLED.get((structure,), (dose_grid,))
    if found is None:
        found = _resampled(structure, dose_grid)
        for arr in (found.flat_index, found.volume_cc, found.occupancy, found.offset_mm):
            arr.flags.writeable = False
        _RESAMPLED.put((structure,), (dose_grid,), found)
    return found


def restricted(
    s: StructureOnDoseGrid, keep: BoolMask, name: str | None = None
) -> StructureOnDoseGrid:
    """The part of a resampled structure in the dose voxels ``keep`` (a dose-grid mask).

    The voxels left out are dropped from the samples, not given a dose: a DVH of the part
    is a DVH of those voxels alone, each sampled with its neighbours' doses as in the whole.

    Parameters
    ----------
    s : StructureOnDoseGrid
        From :func:`structure_on_dose_grid`.
    keep : ndarray of bool
        Dose-grid mask of the voxels to keep.
    name : str, optional
        Name of the part (default: the structure's).

    Returns
    -------
    StructureOnDoseGrid
        The kept voxels, ``source_volume_cc`` their volume. It may hold none
        (``flat_index.size == 0``), which has no DVH.

    Raises
    ------
    GridMismatchError
        ``keep`` is not of the dose grid's shape.
    """
    if keep.shape != s.dose_grid.shape:
        raise GridMismatchError(
            f"keep mask has shape {keep.shape}, the dose grid {s.dose_grid.shape}"
        )
    sel = keep.reshape(-1)[s.flat_index]
    return replace(
        s,
        name=s.name if name is None else name,
        flat_index=s.flat_index[sel],
        volume_cc=s.volume_cc[sel],
        occupancy=s.occupancy[sel],
        offset_mm=s.offset_mm[:, sel],
        local_index=s.local_index[sel],
        n_partial=int(np.count_nonzero(sel[: s.n_partial])),
        source_volume_cc=float(s.volume_cc[sel].sum()),
    )


#: Organs and targets resampled to a dose grid: the comparison's DVHs and the dose model's
#: organ sparing use the same ones (shared, read-only arrays).
_RESAMPLED: IdentityMemo[StructureOnDoseGrid] = IdentityMemo(32)


def _resampled(structure: Structure, dose_grid: ImageGrid) -> StructureOnDoseGrid:
    """The work of :func:`structure_on_dose_grid` (arguments checked)."""
    box, m0, offsets = _occupancy_moments(structure, dose_grid, moments=True)
    assert offsets is not None
    sel = m0 > _OCC_EPS
    local_idx = np.nonzero(sel)
    occ = np.clip(m0[sel], 0.0, 1.0).astype(np.float32)
    full = occ >= 1.0 - 1e-6
    occ[full] = 1.0
    order = np.argsort(full, kind="stable")  # partly occupied voxels first
    n_partial = int(np.count_nonzero(~full))
    kk = local_idx[0][order] + box[0].start
    jj = local_idx[1][order] + box[1].start
    ii = local_idx[2][order] + box[2].start
    occ = occ[order]
    flat = np.ravel_multi_index((kk, jj, ii), dose_grid.shape).astype(np.int64)
    off = np.stack([offsets[a][sel][order] for a in range(3)], axis=0).astype(np.float32)
    off[:, n_partial:] = 0.0
    vol = occ.astype(np.float64) * dose_grid.voxel_volume_cc
    lo = [int(kk.min()), int(jj.min()), int(ii.min())]
    hi = [int(kk.max()) + 1, int(jj.max()) + 1, int(ii.max()) + 1]
    padded_shape = tuple(b - a + 2 for a, b in zip(lo, hi))
    local = np.ravel_multi_index((kk - lo[0] + 1, jj - lo[1] + 1, ii - lo[2] + 1), padded_shape)
    return StructureOnDoseGrid(
        name=structure.name,
        dose_grid=dose_grid,
        flat_index=flat,
        volume_cc=vol,
        occupancy=occ,
        offset_mm=off,
        source_volume_cc=structure.volume_cc,
        box=tuple(zip(lo, hi)),  # type: ignore[arg-type]
        local_index=local.astype(np.int64),
        n_partial=n_partial,
        role=structure.role,
    )


# ---------------------------------------------------------------------------- DVH
@dataclass(frozen=True, eq=False)
class DVH:
    """Cumulative dose-volume histogram of one structure.

    Attributes
    ----------
    structure : str
        Structure name.
    dose_gy : ndarray, shape (K,)
        Dose axis in Gy (evenly spaced, ascending).
    cumulative_cc : ndarray, shape (K,)
        Volume receiving at least ``dose_gy[k]``, in cc (non-increasing).
    volume_cc : float
        Structure volume in cc.
    mean_gy : float
        Mean dose in Gy (volume-weighted).
    min_gy, max_gy : float
        Lowest and highest dose present in the structure, in Gy.
    """

    structure: str
    dose_gy: FloatArray
    cumulative_cc: FloatArray
    volume_cc: float
    mean_gy: float
    min_gy: float
    max_gy: float

    @property
    def cumulative_pct(self) -> FloatArray:
        """Cumulative DVH in % of the structure volume."""
        return 100.0 * self.cumulative_cc / self.volume_cc

    def differential(self) -> tuple[FloatArray, FloatArray]:
        """Differential DVH: bin centres (Gy) and volume in each bin (cc)."""
        dv = self.cumulative_cc[:-1] - self.cumulative_cc[1:]
        centres = 0.5 * (self.dose_gy[:-1] + self.dose_gy[1:])
        return centres, np.clip(dv, 0.0, None)

    def volume_at_dose_cc(self, dose_gy: float) -> float:
        """Volume (cc) receiving at least ``dose_gy``."""
        d = self.dose_gy
        if dose_gy <= d[0]:
            return float(self.cumulative_cc[0])
        if dose_gy >= d[-1]:
            return 0.0
        return float(np.interp(dose_gy, d, self.cumulative_cc))

    def volume_at_dose_pct(self, dose_gy: float) -> float:
        """Volume (% of the structure) receiving at least ``dose_gy``."""
        return 100.0 * self.volume_at_dose_cc(dose_gy) / self.volume_cc

    def dose_at_volume_cc(self, volume_cc: float) -> float:
        """Dose (Gy) that at least ``volume_cc`` of the structure receives (D_xcc).

        A volume larger than the structure gives the minimum dose.
        """
        v = self.cumulative_cc
        if volume_cc >= self.volume_cc:
            return self.min_gy
        if volume_cc <= 0:
            return self.max_gy
        # last index where V >= volume_cc (V is non-increasing)
        k = int(np.searchsorted(-v, -volume_cc, side="right")) - 1
        if k < 0:
            return float(self.dose_gy[0])
        if k >= len(v) - 1:
            return float(self.dose_gy[-1])
        v0, v1 = v[k], v[k + 1]
        t = 0.0 if v0 == v1 else (v0 - volume_cc) / (v0 - v1)
        return float(self.dose_gy[k] + t * (self.dose_gy[k + 1] - self.dose_gy[k]))

    def dose_at_volume_pct(self, volume_pct: float) -> float:
        """Dose (Gy) that at least ``volume_pct`` % of the structure receives (D_x%)."""
        return self.dose_at_volume_cc(volume_pct / 100.0 * self.volume_cc)

    def metric(self, spec: str | Metric, *, prescription_gy: float | None = None) -> float:
        """Evaluate a metric string such as ``"D95%"``, ``"V65Gy"`` or ``"Dmean"``.

        Parameters
        ----------
        spec : str or Metric
            See :func:`parse_metric`.
        prescription_gy : float, optional
            Needed by metrics relative to the prescription (``"V95%Rx"``).

        Returns
        -------
        float
            In the metric's unit (:attr:`Metric.unit`).
        """
        m = parse_metric(spec) if isinstance(spec, str) else spec
        return m.evaluate(self, prescription_gy=prescription_gy)


def _padded_box(dose_gy: np.ndarray, s: StructureOnDoseGrid) -> np.ndarray:
    """The dose in the structure's box, float32, padded by one voxel of edge values."""
    shape = tuple(b - a + 2 for a, b in s.box)
    sub = np.empty(shape, np.float32)
    sub[1:-1, 1:-1, 1:-1] = dose_gy[tuple(slice(a, b) for a, b in s.box)]
    sub[0], sub[-1] = sub[1], sub[-2]  # axis by axis over the full extent: corners too
    sub[:, 0], sub[:, -1] = sub[:, 1], sub[:, -2]
    sub[:, :, 0], sub[:, :, -1] = sub[:, :, 1], sub[:, :, -2]
    return sub


class _Histogram:
    """Accumulates the hinge coefficients of uniform dose spreads, chunk by chunk.

    V(d) = sum dens * ((hi - d)+ - (lo - d)+) is a sum of hinges; with the hinge
    coefficients C on the grid ``k * step``, V(d_k) = step * sum_{l > k} R(l), R = reverse
    cumsum of C. Hinges are placed at the nearest grid point (dose error <= step / 2), at
    least one step apart, and each sample's density is set from the rounded positions so
    that its volume is kept exactly. Coefficients are indexed from grid point 0 (doses
    are >= 0); chunks of at most :data:`_SAMPLE_CHUNK` samples keep the temporaries small
    (in cache), and the work buffers are allocated once.
    """

    def __init__(self, step: float) -> None:
        self.step = step
        self.inv = np.float32(1.0 / step)
        self.coef = np.zeros(0)
        self.d_min = math.inf
        self.d_max = -math.inf
        self.dose_volume = 0.0  # sum of volume * dose, for the mean
        self._lo = np.empty(_SAMPLE_CHUNK, np.float32)
        self._diff = np.empty(_SAMPLE_CHUNK, np.float32)
        self._idx = np.empty((2, _SAMPLE_CHUNK), np.int64)
        self._dens = np.empty(_SAMPLE_CHUNK, np.float64)

    def add(self, centre: np.ndarray, width: np.ndarray, vol: np.ndarray) -> None:
        """Add at most ``_SAMPLE_CHUNK`` samples (``width`` is overwritten)."""
        m = centre.size
        if m == 0:
            return
        half = width
        half *= np.float32(0.5)
        lo = np.subtract(centre, half, out=self._lo[:m])
        np.maximum(lo, np.float32(0.0), out=lo)
        hi = np.add(centre, half, out=half)
        self.d_min = min(self.d_min, float(lo.min()))
        self.d_max = max(self.d_max, float(hi.max()))
        # grid indices (float32 holds these integers exactly); hinges >= 1 step apart
        lo *= self.inv
        np.rint(lo, out=lo)
        hi *= self.inv
        np.rint(hi, out=hi)
        diff = np.subtract(hi, lo, out=self._diff[:m])
        np.maximum(diff, np.float32(1.0), out=diff)
        np.add(lo, diff, out=hi)
        ilo, ihi = self._idx[:, :m]
        np.copyto(ilo, lo, casting="unsafe")
        np.copyto(ihi, hi, casting="unsafe")
        dens = np.multiply(diff, np.float64(self.step), out=self._dens[:m])
        np.divide(vol, dens, out=dens)
        # weighted counts are float64 (the stubs say intp): no copy
        up = np.bincount(ihi, weights=dens, minlength=self.coef.size).astype(np.float64, copy=False)
        if up.size > self.coef.size:
            up[: self.coef.size] += self.coef
            self.coef = up
        else:
            self.coef += up
        self.coef -= np.bincount(ilo, weights=dens, minlength=self.coef.size)
        pos = np.maximum(centre, np.float32(0.0), out=diff)
        self.dose_volume += float(np.multiply(vol, pos, out=dens).sum())

    def dvh(self, name: str, total: float) -> DVH:
        """The cumulative DVH of everything added, for a structure of volume ``total``."""
        step = self.step
        k0 = math.floor(self.d_min / step) - 1
        n = math.ceil(self.d_max / step) - k0 + 3
        coef = np.zeros(n)
        skip = max(-k0, 0)  # grid point -1 (k0 = -1) holds no hinge
        part = self.coef[k0 + skip : k0 + n]
        coef[skip : skip + part.size] = part
        r = np.cumsum(coef[::-1])[::-1]
        cum = step * (np.cumsum(r[::-1])[::-1] - r)
        cum = np.clip(cum, 0.0, total)
        cum = np.minimum.accumulate(cum)  # remove round-off wiggles
        dose_axis = ((k0 + np.arange(n)) * step).astype(np.float64, copy=False)
        mean = self.dose_volume / total if total > 0 else 0.0
        return DVH(name, dose_axis, cum, total, mean, self.d_min, self.d_max)


def _dvh_of(dose_gy: np.ndarray, s: StructureOnDoseGrid, step: float) -> DVH:
    """DVH of ``s`` from the samples of its voxels.

    Each occupied voxel gives a sample: the dose at the centroid of its occupied part and
    the width of its dose spread. The dose box around the structure is padded by one voxel
    (edge values), so every sample has neighbours along each axis: gradients are central
    differences, and the curvature term ``h**2 / 24 * d2D/da2`` (box average of a curved
    dose) uses the same neighbours. Partly occupied voxels gather their neighbours one by
    one; full voxels do so too when they are few compared with their box, otherwise their
    values are computed for runs of the raveled box with shifted contiguous slices
    (:func:`_full_voxel_samples`, the same model up to float32 rounding).
    """
    sub = _padded_box(dose_gy, s)
    hist = _Histogram(step)
    npart = s.n_partial  # samples [:npart] are partly occupied voxels, the rest are full
    n = s.local_index.size
    blocked = (n - npart) * _FIELD_MIN_FILL >= sub.size and s._full_ascending
    stop = npart if blocked else n
    for a in range(0, stop, _SAMPLE_CHUNK):
        b = min(a + _SAMPLE_CHUNK, stop)
        centre, width = _dose_samples_gather(sub, s, a, b)
        hist.add(centre, width, s.volume_cc[a:b])
    if blocked:
        starts = np.arange(npart, n, _SAMPLE_CHUNK)
        stops = np.minimum(starts + _SAMPLE_CHUNK, n)
        local = s.local_index
        run = int((local[stops - 1] - local[starts]).max()) + 1
        work = np.empty((5, run), np.float32)
        out = np.empty((2, _SAMPLE_CHUNK), np.float32)
        ibuf = np.empty(_SAMPLE_CHUNK, np.int64)
        for a, b in zip(starts.tolist(), stops.tolist()):
            centre, width = out[0, : b - a], out[1, : b - a]
            _full_voxel_samples(sub, local[a:b], work, ibuf, centre, width)
            hist.add(centre, width, s.volume_cc[a:b])
    return hist.dvh(s.name, float(s.volume_cc.sum()))


def _dose_samples_gather(
    sub: np.ndarray, s: StructureOnDoseGrid, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``[start:stop]``: centre dose and width (Gy), from neighbour gathers."""
    flat = sub.reshape(-1)
    local = s.local_index[start:stop]
    d0 = np.take(flat, local)
    strides = (sub.shape[1] * sub.shape[2], sub.shape[2], 1)
    npart = min(max(s.n_partial - start, 0), stop - start)  # partly occupied ones first
    scale2 = s._size_scale2[start : start + npart]
    offset = s.offset_mm[:, start : start + npart]
    corr = np.zeros(d0.shape, np.float32)
    width2 = np.zeros(d0.shape, np.float32)
    spacing = s.dose_grid.spacing_mm
    buf = np.empty_like(local)
    two_d0 = 2.0 * d0
    high = d0.copy()
    low = d0.copy()
    for ax in range(3):
        up = np.take(flat, np.add(local, strides[ax], out=buf))
        dn = np.take(flat, np.subtract(local, strides[ax], out=buf))
        np.maximum(high, np.maximum(up, dn), out=high)
        np.minimum(low, np.minimum(up, dn), out=low)
        g = up - dn
        g *= np.float32(0.5 / spacing[ax])  # gradient, Gy / mm
        up += dn
        up -= two_d0
        up *= np.float32(1.0 / 24.0)  # curvature term h**2 / 24 * d2D/da2 of a full voxel
        up[:npart] *= scale2
        up[:npart] += g[:npart] * offset[ax]
        corr += up
        g *= np.float32(spacing[ax])
        g *= g
        g[:npart] *= scale2
        width2 += g
    d0 += corr
    width = np.sqrt(width2, out=width2)
    _limit_spread(d0, width, low, high)
    return d0, width


def _limit_spread(centre: np.ndarray, width: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """Keep each sample's spread inside the range of its voxel and neighbours (in place).

    A voxel at the edge of a flat top (one neighbour as high, the other far lower) has a
    large central-difference gradient; spread symmetrically it would reach above the
    highest dose around it. The spread is narrowed to ``2 * min(high - centre, centre -
    low)`` (a symmetric slope limiter; no change on a linear slope) and the centre kept in
    ``[low, high]``.
    """
    np.clip(centre, low, high, out=centre)
    room = np.subtract(high, centre, out=high)
    np.minimum(room, np.subtract(centre, low, out=low), out=room)
    room *= np.float32(2.0)
    np.minimum(width, room, out=width)


def _full_voxel_samples(
    sub: np.ndarray,
    local: np.ndarray,
    work: np.ndarray,
    ibuf: np.ndarray,
    centre: np.ndarray,
    width: np.ndarray,
) -> None:
    """Samples of full voxels at the ascending raveled indices ``local`` of the padded box.

    For a full voxel the correction is the curvature term alone: ``sum_a (up_a + dn_a -
    2 d0) / 24 = (sum of the 6 neighbours) / 24 - d0 / 4``, and the width is
    ``sqrt(sum_a (g_a h_a)**2) = 0.5 * sqrt(sum_a (up_a - dn_a)**2)``. Both are evaluated
    on the run of the raveled box from the first to the last voxel of ``local`` (full
    voxels are interior, so each neighbour is a shifted contiguous slice), then gathered
    into ``centre`` and ``width`` and limited by :func:`_limit_spread`. ``work`` (float32,
    shape ``(5, >= run)``) and ``ibuf`` (int64, ``>= local.size``) are scratch.
    """
    flat = sub.reshape(-1)
    strides = (sub.shape[1] * sub.shape[2], sub.shape[2], 1)
    lo, hi = int(local[0]), int(local[-1]) + 1
    nb, w2, tmp, high, low = work[:, : hi - lo]
    up, dn = flat[lo + strides[0] : hi + strides[0]], flat[lo - strides[0] : hi - strides[0]]
    np.add(up, dn, out=nb)
    np.subtract(up, dn, out=w2)
    w2 *= w2
    np.maximum(up, dn, out=high)
    np.minimum(up, dn, out=low)
    for st in strides[1:]:
        up, dn = flat[lo + st : hi + st], flat[lo - st : hi - st]
        nb += up
        nb += dn
        np.subtract(up, dn, out=tmp)
        tmp *= tmp
        w2 += tmp
        np.maximum(high, up, out=high)
        np.maximum(high, dn, out=high)
        np.minimum(low, up, out=low)
        np.minimum(low, dn, out=low)
    own = flat[lo:hi]
    np.maximum(high, own, out=high)
    np.minimum(low, own, out=low)
    nb *= np.float32(1.0 / 24.0)
    np.multiply(own, np.float32(0.75), out=tmp)
    nb += tmp
    index = np.subtract(local, lo, out=ibuf[: local.size])
    np.take(w2, index, out=width, mode="clip")  # indices are in range; clip: no copy
    np.sqrt(width, out=width)
    width *= np.float32(0.5)
    np.take(nb, index, out=centre, mode="clip")
    n = local.size
    high_s, low_s = np.take(high, index, mode="clip"), np.take(low, index, mode="clip")
    _limit_spread(centre[:n], width[:n], low_s, high_s)


def _check_dose(dose: np.ndarray, s: StructureOnDoseGrid) -> None:
    """Raise InvalidInputError if the dose in the structure's voxels is not finite or < 0."""
    box = dose[tuple(slice(a, b) for a, b in s.box)]
    if box.size <= _FIELD_MIN_FILL * s.flat_index.size:
        # the box holds every voxel of the structure: if it is clean, so is the structure
        low, high = box.min(), box.max()
        if low >= 0 and high < np.inf:
            return
    d_local = dose.reshape(-1)[s.flat_index]
    if not np.all(np.isfinite(d_local)):
        raise InvalidInputError(f"the dose inside structure {s.name!r} has NaN or infinite values")
    if d_local.size and d_local.min() < 0:
        raise InvalidInputError(f"the dose inside structure {s.name!r} is negative somewhere")


def compute_dvh(
    dose_gy: npt.ArrayLike,
    dose_grid: ImageGrid,
    structure: Structure | StructureOnDoseGrid,
    *,
    bin_width_gy: float = DEFAULT_BIN_WIDTH_GY,
) -> DVH:
    """Cumulative DVH of one structure.

    Parameters
    ----------
    dose_gy : array_like of float, shape ``dose_grid.shape``
        Dose in Gy on the dose grid (finite, >= 0).
    dose_grid : ImageGrid
        Geometry of ``dose_gy``.
    structure : Structure or StructureOnDoseGrid
        A structure on its CT grid (resampled here) or already resampled with
        :func:`structure_on_dose_grid` (faster when several doses are evaluated).
    bin_width_gy : float
        Resolution of the dose axis in Gy (> 0).

    Returns
    -------
    DVH

    Raises
    ------
    GridMismatchError
        Wrong dose shape, or a resampled structure built for another grid.
    GeometryError
        A resampled structure that holds no dose voxel (an empty :func:`restricted` part).
    ValueError
        Non-finite or negative dose, non-positive bin width.
    TypeError
        ``dose_grid`` not an ImageGrid, ``structure`` neither a Structure nor a
        StructureOnDoseGrid.
    """
    if not isinstance(dose_grid, ImageGrid):
        raise TypeError(
            f"dose_grid must be an rtplan.grid.ImageGrid, got {type(dose_grid).__name__}"
        )
    if not isinstance(structure, (Structure, StructureOnDoseGrid)):
        raise TypeError(
            f"structure must be a Structure or a StructureOnDoseGrid, "
            f"got {type(structure).__name__}"
        )
    dose = np.asarray(dose_gy)
    if dose.shape != dose_grid.shape:
        raise GridMismatchError(
            f"dose array has shape {dose.shape} but the dose grid has shape {dose_grid.shape}"
        )
    if not bin_width_gy > 0:
        raise InvalidInputError(f"bin_width_gy must be positive, got {bin_width_gy!r}")
    if isinstance(structure, Structure):
        s = structure_on_dose_grid(structure, dose_grid)
    else:
        s = structure
        if not s.dose_grid.equals(dose_grid):
            raise GridMismatchError(
                f"structure {s.name!r} was resampled to {s.dose_grid.describe()} but the dose is "
                f"on {dose_grid.describe()}"
            )
        if s.flat_index.size == 0:
            raise GeometryError(f"structure {s.name!r} holds no dose voxel: it has no DVH")
    _check_dose(dose, s)
    return _dvh_of(dose, s, bin_width_gy)


def compute_dvhs(
    dose_gy: npt.ArrayLike,
    dose_grid: ImageGrid,
    structures: Iterable[Structure | StructureOnDoseGrid] | Mapping[str, Structure],
    *,
    bin_width_gy: float = DEFAULT_BIN_WIDTH_GY,
) -> dict[str, DVH]:
    """DVHs of several structures (a StructureSet, a mapping or an iterable).

    Returns
    -------
    dict of str to DVH
        Keyed by structure name, in the input order.
    """
    if isinstance(structures, (str, Structure)) or not isinstance(structures, Iterable):
        raise TypeError(
            f"structures must be a StructureSet, a mapping or an iterable of structures, "
            f"got {type(structures).__name__}"
        )
    items = structures.values() if isinstance(structures, Mapping) else structures
    out: dict[str, DVH] = {}
    for s in items:
        dvh = compute_dvh(dose_gy, dose_grid, s, bin_width_gy=bin_width_gy)
        out[dvh.structure] = dvh
    return out


# ---------------------------------------------------------------------------- metrics
_METRIC_RE = re.compile(
    r"""^\s*(?:
        (?P<named>D(?:mean|max|min)|Dmean)
      | (?P<kind>[DV])\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<at_unit>%Rx|%|cc|Gy)
    )\s*(?:\[(?P<out>%|cc|Gy|%Rx)\])?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class Metric:
    """A parsed DVH metric.

    Attributes
    ----------
    kind : {"D", "V", "Dmean", "Dmax", "Dmin"}
        Dose at a volume, volume at a dose, or a summary dose.
    at : float or None
        The volume (for ``D``) or dose (for ``V``) the metric is taken at.
    at_unit : {"%", "cc", "Gy", "%Rx", ""}
        Unit of :attr:`at`.
    unit : {"Gy", "%Rx", "%", "cc"}
        Unit of the value.
    text : str
        The metric as written.
    """

    kind: str
    at: float | None
    at_unit: str
    unit: str
    text: str

    def evaluate(self, dvh: DVH, *, prescription_gy: float | None = None) -> float:
        """Value of the metric for ``dvh`` in :attr:`unit`."""
        needs_rx = self.at_unit == "%Rx" or self.unit == "%Rx"
        if needs_rx and (prescription_gy is None or not prescription_gy > 0):
            raise InvalidInputError(f"metric {self.text!r} needs a positive prescription_gy")
        if self.kind == "V":
            assert self.at is not None
            if self.at_unit == "%Rx":
                assert prescription_gy is not None  # checked above
                dose = self.at * prescription_gy / 100.0
            else:
                dose = self.at
            vol = dvh.volume_at_dose_cc(dose)
            return vol if self.unit == "cc" else 100.0 * vol / dvh.volume_cc
        if self.kind == "D":
            assert self.at is not None
            if self.at_unit == "%":
                d = dvh.dose_at_volume_pct(self.at)
            else:
                d = dvh.dose_at_volume_cc(self.at)
        elif self.kind == "Dmean":
            d = dvh.mean_gy
        elif self.kind == "Dmax":
            d = dvh.dose_at_volume_cc(min(DMAX_VOLUME_CC, dvh.volume_cc))
        else:  # Dmin
            d = dvh.min_gy
        if self.unit == "%Rx":
            assert prescription_gy is not None
            return 100.0 * d / prescription_gy
        return d


def parse_metric(text: str, *, unit: str | None = None) -> Metric:
    """Parse a metric string.

    Grammar (case-insensitive, spaces ignored)::

        Dmean | Dmax | Dmin                  dose in Gy (Dmax is D0.03cc)
        D<x>%  | D<x>cc                      dose received by x % / x cc (Gy)
        V<d>Gy | V<d>%Rx                     volume receiving d Gy / d % of Rx (in %)
        ... optionally followed by [%] [cc] [Gy] [%Rx] for the unit of the value.

    Parameters
    ----------
    text : str
        e.g. ``"V65Gy"``, ``"V45Gy[cc]"``, ``"D0.03cc"``, ``"D95%[%Rx]"``.
    unit : str, optional
        Unit of the value, overriding the bracket (``"%"``/``"cc"`` for V,
        ``"Gy"``/``"%Rx"`` for D).

    Returns
    -------
    Metric

    Raises
    ------
    ValueError
        For anything else; the message gives the grammar.

    Examples
    --------
    >>> parse_metric("V45Gy[cc]").unit, parse_metric("D95%").at, parse_metric("Dmax").kind
    ('cc', 95.0, 'Dmax')
    """
    match = _METRIC_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInputError(
            f"cannot parse DVH metric {text!r}; expected Dmean, Dmax, Dmin, D<x>%, D<x>cc, "
            "V<d>Gy or V<d>%Rx, optionally with a value unit in brackets such as V45Gy[cc]"
        )
    named = match.group("named")
    out = unit or match.group("out")
    if named:
        kind = {"dmean": "Dmean", "dmax": "Dmax", "dmin": "Dmin"}[named.lower()]
        at, at_unit = None, ""
    else:
        kind = match.group("kind").upper()
        at = float(match.group("value"))
        at_unit = {"%rx": "%Rx", "%": "%", "cc": "cc", "gy": "Gy"}[match.group("at_unit").lower()]
        if kind == "D" and at_unit not in ("%", "cc"):
            raise InvalidInputError(f"metric {text!r}: D must be followed by a volume in % or cc")
        if kind == "V" and at_unit not in ("Gy", "%Rx"):
            raise InvalidInputError(f"metric {text!r}: V must be followed by a dose in Gy or %Rx")
    if out is not None:
        out = {"%rx": "%Rx", "%": "%", "cc": "cc", "gy": "Gy"}.get(out.lower(), out)
    if kind == "V":
        out = out or "%"
        if out not in ("%", "cc"):
            raise InvalidInputError(f"metric {text!r}: a volume is given in % or cc, not {out!r}")
    else:
        out = out or "Gy"
        if out not in ("Gy", "%Rx"):
            raise InvalidInputError(f"metric {text!r}: a dose is given in Gy or %Rx, not {out!r}")
    return Metric(kind=kind, at=at, at_unit=at_unit, unit=out, text=text.strip())


# ---------------------------------------------------------------------------- constraints
_OPS = ("<=", "<", ">=", ">")
_CONSTRAINT_RE = re.compile(
    r"^\s*(?P<metric>[^<>=]+?)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<limit>-?\d+(?:\.\d*)?|-?\.\d+)\s*(?P<unit>%Rx|%|cc|Gy)?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Constraint:
    """A dose-volume constraint, as held in a protocol TOML.

    Parameters
    ----------
    structure : str
        Structure name (TG-263 or a synonym).
    metric : str
        Metric string (:func:`parse_metric`), e.g. ``"V65Gy"``, ``"D0.03cc"``, ``"Dmean"``.
    op : {"<=", "<", ">=", ">"}
        Comparison.
    limit : float
        The limit value, in ``unit``.
    unit : {"%", "cc", "Gy", "%Rx"}
        Unit of ``limit`` and of the evaluated value: ``%``/``cc`` for V metrics,
        ``Gy``/``%Rx`` for dose metrics.
    source : str
        Where the constraint comes from (e.g. ``"QUANTEC rectum, Michalski 2010"``).
    """

    structure: str
    metric: str
    op: str
    limit: float
    unit: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise InvalidInputError(f"constraint op must be one of {_OPS}, got {self.op!r}")
        if not math.isfinite(float(self.limit)):
            raise InvalidInputError(f"constraint limit must be a finite number, got {self.limit!r}")
        object.__setattr__(self, "limit", float(self.limit))
        parsed = parse_metric(self.metric, unit=self.unit)  # validates metric/unit
        object.__setattr__(self, "unit", parsed.unit)

    @property
    def parsed(self) -> Metric:
        """The parsed metric (value unit = :attr:`unit`)."""
        return parse_metric(self.metric, unit=self.unit)

    def describe(self) -> str:
        """Human-readable form, e.g. ``"Rectum V65Gy <= 35 %"``."""
        return f"{self.structure} {self.metric} {self.op} {self.limit:g} {self.unit}"


@dataclass(frozen=True)
class ConstraintResult:
    """Outcome of :func:`evaluate_constraint`.

    Attributes
    ----------
    constraint : Constraint
    value : float
        The metric's value in ``constraint.unit``.
    passed : bool
        Whether the constraint holds.
    margin : float
        Distance to the limit in ``constraint.unit``, positive when passing
        (``limit - value`` for ``<``/``<=``, ``value - limit`` for ``>``/``>=``).
    """

    constraint: Constraint
    value: float
    passed: bool
    margin: float


def parse_constraint(text: str, *, structure: str, source: str = "") -> Constraint:
    """Parse ``"V65Gy<=35%"``, ``"Dmax<=52Gy"``, ``"D95%>=95%Rx"`` or ``"V45Gy<195cc"``.

    The unit after the limit gives the value unit; it may be omitted for a V metric
    (``%``) or a dose metric (``Gy``).

    Examples
    --------
    >>> c = parse_constraint("V65Gy<=35%", structure="Rectum")
    >>> (c.metric, c.op, c.limit, c.unit)
    ('V65Gy', '<=', 35.0, '%')
    """
    if not isinstance(text, str):
        raise TypeError(f"constraint text must be a str, got {type(text).__name__}")
    m = _CONSTRAINT_RE.match(text)
    if m is None:
        raise InvalidInputError(
            f"cannot parse constraint {text!r}; expected <metric> <op> <limit>[unit], "
            "e.g. 'V65Gy<=35%', 'Dmax<=52Gy', 'D95%>=95%Rx'"
        )
    metric = m.group("metric").strip()
    unit = m.group("unit")
    parsed = parse_metric(metric)
    if unit is None:
        unit = parsed.unit
    unit = {"%rx": "%Rx", "%": "%", "cc": "cc", "gy": "Gy"}[unit.lower()]
    return Constraint(structure, metric, m.group("op"), float(m.group("limit")), unit, source)


def evaluate_constraint(
    constraint: Constraint, dvh: DVH, *, prescription_gy: float | None = None
) -> ConstraintResult:
    """Evaluate a constraint on a DVH: pass/fail and margin to the limit.

    Parameters
    ----------
    constraint : Constraint
    dvh : DVH
        DVH of ``constraint.structure`` (not checked by name; the caller pairs them).
    prescription_gy : float, optional
        Needed for ``%Rx`` metrics or units.

    Returns
    -------
    ConstraintResult

    Examples
    --------
    >>> d = DVH("R", np.array([0.0, 50.0, 100.0]), np.array([10.0, 5.0, 0.0]), 10.0,
    ...         50.0, 0.0, 100.0)
    >>> r = evaluate_constraint(parse_constraint("V65Gy<=35%", structure="R"), d)
    >>> round(r.value, 1), r.passed, round(r.margin, 1)
    (35.0, True, 0.0)
    """
    if not isinstance(constraint, Constraint):
        raise TypeError(
            f"constraint must be an rtplan.dvh.Constraint, got {type(constraint).__name__}"
        )
    _check_dvh(dvh)
    value = constraint.parsed.evaluate(dvh, prescription_gy=prescription_gy)
    lim, op = constraint.limit, constraint.op
    passed = {
        "<=": value <= lim + 1e-9,
        "<": value < lim,
        ">=": value >= lim - 1e-9,
        ">": value > lim,
    }[op]
    margin = lim - value if op in ("<", "<=") else value - lim
    return ConstraintResult(constraint, float(value), bool(passed), float(margin))


# ---------------------------------------------------------------------------- gEUD / NTCP
def _dose_volume_pairs(dvh: DVH) -> tuple[np.ndarray, np.ndarray]:
    centres, dv = dvh.differential()
    keep = dv > 0
    return centres[keep], dv[keep] / dvh.volume_cc


def geud_gy(dvh: DVH, n: float) -> float:
    """Generalised equivalent uniform dose, ``(sum_i v_i D_i**(1/n))**n``.

    Parameters
    ----------
    dvh : DVH
        DVH (usually of the EQD2 dose, alpha/beta = 3 Gy for late effects).
    n : float
        Volume parameter (> 0): ``n = 1`` gives the mean dose, ``n -> 0`` the maximum.

    Returns
    -------
    float
        gEUD in Gy.
    """
    _check_dvh(dvh)
    if not n > 0:
        raise InvalidInputError(f"the gEUD volume parameter n must be positive, got {n!r}")
    d, v = _dose_volume_pairs(dvh)
    if d.size == 0:
        return 0.0
    dmax = float(d.max())
    if dmax <= 0:
        return 0.0
    a = 1.0 / n
    # computed on doses scaled by the maximum to avoid overflow for small n
    return dmax * float(float(np.sum(v * (d / dmax) ** a)) ** n)  # float ** float: float here


@dataclass(frozen=True)
class LKBParameters:
    """Lyman-Kutcher-Burman parameters with their provenance.

    Attributes
    ----------
    td50_gy, m, n : float
        Uniform whole-organ dose for 50 % complication probability (Gy, EQD2 at 2 Gy per
        fraction), slope and volume parameters.
    endpoint : str
    source : str
        Citation, with the verification tag of CLINICAL.md section 7.
    alpha_beta_gy : float
        alpha/beta used to convert the dose to EQD2 before applying the model.
    caveat : str
        Known weaknesses.
    """

    td50_gy: float
    m: float
    n: float
    endpoint: str
    source: str
    alpha_beta_gy: float = 3.0
    caveat: str = ""


#: LKB parameter sets keyed by TG-263 structure name (CLINICAL.md section 7). Rectum uses
#: QUANTEC; the others are Burman 1991 fits of the Emami 1991 tolerance estimates, known
#: only through third-party transcriptions, and are shown with that caveat.
LKB_PARAMETERS: dict[str, LKBParameters] = {
    "Rectum": LKBParameters(
        76.9,
        0.13,
        0.09,
        "late rectal toxicity grade >= 2 / bleeding",
        "QUANTEC: Michalski et al., IJROBP 2010;76:S123 [V]",
    ),
    "Bladder": LKBParameters(
        80.0,
        0.11,
        0.5,
        "symptomatic contracture, volume loss",
        "Burman et al., IJROBP 1991 [V-3p]",
        caveat="fit to Emami 1991 tolerance estimates, not outcome data; QUANTEC found no "
        "reliable bladder model",
    ),
    "Femur_Head_L": LKBParameters(
        65.0,
        0.12,
        0.25,
        "necrosis",
        "Burman et al., IJROBP 1991 [V-3p]",
        caveat="fit to Emami 1991 tolerance estimates, not outcome data",
    ),
    "Femur_Head_R": LKBParameters(
        65.0,
        0.12,
        0.25,
        "necrosis",
        "Burman et al., IJROBP 1991 [V-3p]",
        caveat="fit to Emami 1991 tolerance estimates, not outcome data",
    ),
    "Bowel": LKBParameters(
        55.0,
        0.16,
        0.15,
        "obstruction, perforation",
        "Burman et al., IJROBP 1991, via an uncited open-source parameter file [V-3p, weak]",
        caveat="weak source; QUANTEC prefers the V15 / V45 thresholds for small bowel",
    ),
    "Colon_Sigmoid": LKBParameters(
        55.0,
        0.11,
        0.17,
        "obstruction, perforation (colon)",
        "Burman et al., IJROBP 1991, via an uncited open-source parameter file [V-3p, weak]",
        caveat="weak source",
    ),
}
LKB_PARAMETERS["Spc_Bowel"] = LKB_PARAMETERS["Bowel"]


def lkb_ntcp(
    dvh: DVH,
    parameters: LKBParameters | None = None,
    *,
    td50_gy: float | None = None,
    m: float | None = None,
    n: float | None = None,
) -> float:
    """Lyman-Kutcher-Burman NTCP, ``Phi((gEUD - TD50) / (m * TD50))``.

    Parameters
    ----------
    dvh : DVH
        DVH of the organ's EQD2 dose (alpha/beta from ``parameters``, usually 3 Gy): the
        published parameters refer to conventional fractionation.
    parameters : LKBParameters, optional
        e.g. ``LKB_PARAMETERS["Rectum"]``; or give ``td50_gy``, ``m`` and ``n``.
    td50_gy, m, n : float, optional
        Override or supply the parameters.

    Returns
    -------
    float
        Probability in [0, 1].
    """
    _check_dvh(dvh)
    if parameters is not None and not isinstance(parameters, LKBParameters):
        raise TypeError(
            f"parameters must be rtplan.dvh.LKBParameters or None, got {type(parameters).__name__}"
        )
    td50 = td50_gy if td50_gy is not None else (parameters.td50_gy if parameters else None)
    mm = m if m is not None else (parameters.m if parameters else None)
    nn = n if n is not None else (parameters.n if parameters else None)
    if td50 is None or mm is None or nn is None:
        raise InvalidInputError("lkb_ntcp needs parameters or all of td50_gy, m and n")
    if not (td50 > 0 and mm > 0 and nn > 0):
        raise InvalidInputError(f"LKB parameters must be positive, got TD50={td50}, m={mm}, n={nn}")
    eud = geud_gy(dvh, nn)
    return float(ndtr((eud - td50) / (mm * td50)))
