"""Margins in physical millimetres: expand, shrink, ring, wall and boolean operations.

A :class:`Margin` gives one distance in mm for each of the six anatomical
directions; a plain number means a uniform margin. Masks are full-grid ``bool``
arrays indexed ``[slice, row, col]`` that travel with their
:class:`~rtplan.grid.ImageGrid`.

Semantics of a margin
---------------------
For a margin with semi-axes ``right, left, anterior, posterior, superior,
inferior`` (mm) let ``E`` be the *octant-wise ellipsoid*: in each of the eight
octants around the origin, the piece of the ellipsoid whose semi-axes are the
three margins of that octant's directions. A point ``p`` belongs to
``expand(S)`` when ``p`` lies in ``q + E`` for some point ``q`` of ``S``. A
point therefore grows by exactly ``left`` mm to the patient's left, by
``superior`` mm upwards, and smoothly in between; a uniform margin ``m`` is
the Minkowski sum with a ball of radius ``m``.

``shrink(S, M)`` is the complement of the expansion of the complement, with the
margin mirrored so that each value applies on its own side: ``superior=5``
moves the superior border of the structure 5 mm down (inferiorly), as a
treatment planning system's "inner margin" does.

Discretisation (the choice made here)
-------------------------------------
Results are evaluated exactly at voxel centres, in millimetres, on anisotropic
voxels. What a voxel of the input mask stands for matters at the sub-voxel
level, and neither simple choice keeps the volume of a structure:

* each voxel taken as its centre point (a centre-to-centre Euclidean distance
  transform, SimpleITK's signed Maurer distance, scipy's ``distance_transform_edt``)
  loses 0.3-0.5 mm all round: -2 to -7 % on a sphere of radius 15-30 mm grown by
  3-10 mm, -9 to -17 % on a 5 mm sphere;
* each voxel taken as its whole box gains the box's half-width: +6 to +20 %
  on the same spheres, and a single voxel grown by a 2-10 mm margin gains 76 %.

rtplan places the surface of a structure where the mask's sampled edge
implies it: every voxel on the border of the mask (one with an outside face
neighbour) grows from a point lying ``delta`` mm outward of its centre, where
``delta`` (between 0 and half the largest voxel side) is the distance from the
voxel centre to the 0.5 level of ``F``, the mask smoothed in-plane by a 3 x 3
binomial kernel, estimated as ``(F - 0.5) / |g|`` with ``g_a`` the one-sided
difference of ``F`` toward the lower of its two neighbours along each axis. A
flat face of a contour gets exactly half a voxel (half a slice for an axial face),
a one-slice structure is a slab one slice thick, and an isolated voxel or a
one-voxel line in a slice gets ``delta = 0`` and grows from its centre, so a single
voxel grows by exactly its margin. A *pole* (``F <= 0.5``: one voxel or a one-voxel
line in its slice, with the structure on one side along the slice axis only, like the
tip of a small sphere or the end of a one-voxel line across slices) has a flat axial
face half a slice beyond its centre on the side without structure. It grows from its
centre like any thin voxel, and from a point on the slice axis toward its face with
the ellipsoid scaled by ``1 + e / m_max`` (``e`` half the smaller in-plane voxel side,
at most a quarter slice; ``m_max`` the largest margin) and placed so that it reaches
exactly half a slice beyond the margin along the slice axis; in-plane it reaches at most
``e``, the half-width of the face, beyond the margin. (Scaling the pole's own ellipsoid,
as for the other border voxels below, would grow it half a slice further in-plane too,
where it has no surface: two columns more on 3 mm slices of 0.8 mm voxels.) Each other
border voxel is grown by its ellipsoid
scaled by ``1 + delta / h`` (``h`` the ellipsoid's half-width along the surface
normal ``n``, ``sqrt(sum (m_a n_a)**2)``),
which moves its reach along ``n`` by ``delta``; the scale is capped so that no
direction grows by more than ``delta`` (at most half the largest voxel side)
beyond its margin. On the rim where two faces of a mask meet, a border voxel whose
normal is mostly along the slice axis can therefore grow up to half a slice
further in-plane than its margin. In terms of the octant-wise ellipsoid
norm ``N`` this is an additively weighted ("power") distance,
``min_q [N(p - q)**2 - w(q)] <= 1`` with ``w = (1 + delta / h)**2 - 1``,
which separates along the three array axes.

A border voxel stands for the surface over its extent along the slice axis, but a
point per voxel leaves gaps between slices on curved surfaces (on a 5 mm sphere,
several tenths of a mm of radius). So a border voxel whose surface has an in-plane
part also grows from a second point ``z = 0.3`` slice away along the slice axis on
each side toward which its normal does not point outward (the inside of the
structure, or both sides where the surface is parallel to the slice axis), with the
offset of its tangent plane there, ``delta - z n_a`` (``n_a <= 0`` the normal's
component along that side), ``z`` capped so that ``z + offset`` stays within half the
largest voxel side. Flat axial faces get no such point, and the growth toward the
outside of the structure is unchanged. The height 0.3 is a choice measured on spheres
(0.4-0.5 grows 15 mm spheres by 1.5-2.5 %). These points and the poles' points enter the
pass along the slice axis as extra costs, on their own slice and the slices beyond them;
a pole's point also on the slices behind it. A sub-slice point's slices behind it (the
outside of the structure) are left to its voxel's own ellipsoid: on spheres of radius
5-30 mm this leaves out nothing of the formula at margins of 3-5 mm, 0.06-0.25 % of its
volume at 7-20 mm. It is computed by three 1-D
min-plus passes (int16 fixed point, boundary moved by < 1e-3 of the margin) on
the bounding box of the structure padded by the margin, so the cost follows the
structure and the margin, not the grid; ``tests/test_margins.py`` checks it voxel
for voxel against a brute-force evaluation of the same formula (margins up to 4 mm).

Measured on 0.98 x 0.98 x 2.5 mm voxels (``tests/test_margins.py``,
``benchmarks/README.md``): spheres of radius 15 and 30 mm grown by 3-10 mm come
within -1.4 to +1.3 % of the analytic volume of radius ``r + m`` over 24 random
sub-voxel positions of the centre (centre-to-centre distance: -2.3 to -7 %); a 100 cc
sphere grown by the margins of a prostate-bed PTV, asymmetric ones included, within 1 %
of the closed form. 5 mm spheres (two slices in radius) come within -2.6 to +1.0 % when
centred on a voxel or at the tests' offset, but from -7.4 to +1.8 % over the 24
positions, as their own masks vary by -6.9 to +4.1 %. Shrinking spheres of radius
15-30 mm by 3-10 mm gives -0.6 to -2.8 % of the analytic volume (centre-to-centre
distance: +3 to +8 %). A single voxel grown by an asymmetric margin is within 1 % of
the octant-wise ellipsoid.

Structures are never grown silently past the edge of the grid: by default this
raises :class:`~rtplan.errors.MarginOutsideGridError` naming the structure and
the side; ``clip=True`` keeps the part inside the grid and says in an
:class:`~rtplan.errors.RtplanWarning` how much was cut. Voxels outside the grid
count as outside every structure (``shrink`` erodes from the grid edge).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import as_mask, check_type
from rtplan.errors import (
    GridMismatchError,
    InvalidMarginError,
    InvalidMaskError,
    MarginOutsideGridError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid, check_same_grid

__all__ = [
    "Margin",
    "crop_away_from",
    "difference",
    "expand",
    "intersection",
    "ring",
    "shrink",
    "union",
    "wall",
]

_DIRECTIONS = ("right", "left", "anterior", "posterior", "superior", "inferior")

#: Integer index arrays (voxel offsets, flat indices).
_IntArray = npt.NDArray[np.intp]
#: Fixed-point cost arrays of the min-plus passes.
_Int16Array = npt.NDArray[np.int16]


class _SubSlicePoints(NamedTuple):
    """Growth points off the voxel centres, on the slice axis, toward one side.

    See :func:`_border_weights` and :func:`_pole_points`.
    """

    #: +1: the points lie toward increasing slice index from their voxels, -1: decreasing
    sign: int
    #: positions, in the index of border voxels, of the voxels the points belong to
    pos: _IntArray
    #: height of each point above its voxel centre along the slice axis, mm (>= 0)
    z_mm: FloatArray
    #: power weight of each point, ``scale**2 - 1``
    weight: npt.NDArray[np.float32]
    #: False: computed on their voxel's slice and the slices on the side ``sign`` only (the
    #: sub-slice points); True: on the slices behind them too (the poles' points)
    behind: bool


#: Relative slack on the threshold ``N**2 - w <= 1``, so that a voxel lying exactly on
#: the margin (e.g. a margin that is a multiple of the spacing) is kept despite float32
#: rounding in the min-plus passes.
_THRESHOLD_RTOL = 1e-5


@dataclass(frozen=True, slots=True)
class Margin:
    """A margin in millimetres for each of the six anatomical directions.

    Parameters
    ----------
    right, left, anterior, posterior, superior, inferior : float
        Distance in mm (finite, >= 0) by which a structure grows (or, for
        :func:`shrink`, its border moves inward) in that direction. Patient
        directions: left is +x, posterior is +y, superior is +z in LPS.

    Raises
    ------
    InvalidMarginError
        When a value is negative, NaN, infinite or not a number.

    Examples
    --------
    >>> Margin.uniform(7)
    Margin(right=7.0, left=7.0, anterior=7.0, posterior=7.0, superior=7.0, inferior=7.0)
    >>> Margin(right=7, left=7, anterior=7, posterior=5, superior=10, inferior=10).max_mm
    10.0
    >>> Margin.uniform(0).is_zero
    True
    """

    right: float = 0.0
    left: float = 0.0
    anterior: float = 0.0
    posterior: float = 0.0
    superior: float = 0.0
    inferior: float = 0.0

    def __post_init__(self) -> None:
        for name in _DIRECTIONS:
            object.__setattr__(self, name, _check_mm(getattr(self, name), f"margin {name!r}"))

    @classmethod
    def uniform(cls, mm: float) -> Margin:
        """The same margin ``mm`` (>= 0) in all six directions."""
        value = _check_mm(mm, "uniform margin")
        return cls(value, value, value, value, value, value)

    @property
    def is_zero(self) -> bool:
        """True when every direction is 0 mm."""
        return self.max_mm == 0.0

    @property
    def is_uniform(self) -> bool:
        """True when all six directions are equal."""
        return len(set(self._values())) == 1

    @property
    def max_mm(self) -> float:
        """The largest of the six margins, in mm."""
        return max(self._values())

    def mirrored(self) -> Margin:
        """The margin with each direction swapped with its opposite (right <-> left, ...)."""
        return Margin(
            right=self.left,
            left=self.right,
            anterior=self.posterior,
            posterior=self.anterior,
            superior=self.inferior,
            inferior=self.superior,
        )

    def as_dict(self) -> dict[str, float]:
        """The six margins in mm, keyed by direction."""
        return dict(zip(_DIRECTIONS, self._values()))

    def _values(self) -> tuple[float, float, float, float, float, float]:
        """The six margins in mm, in the order of ``_DIRECTIONS``."""
        return (self.right, self.left, self.anterior, self.posterior, self.superior, self.inferior)


MarginLike = Margin | float


def _check_mm(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.integer, np.floating)):
        raise InvalidMarginError(f"{name} must be a number of millimetres, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise InvalidMarginError(f"{name} must be a finite distance >= 0 mm, got {value!r}")
    return v


def _as_margin(margin: object, name: str = "margin") -> Margin:
    if isinstance(margin, Margin):
        return margin
    if isinstance(margin, bool) or not isinstance(margin, (Real, np.integer, np.floating)):
        raise InvalidMarginError(
            f"{name} must be a Margin or a number of millimetres (a uniform margin), "
            f"got {type(margin).__name__} {margin!r}"
        )
    return Margin.uniform(_check_mm(margin, name))


# ---------------------------------------------------------------------------- geometry


def _axis_margins(margin: Margin, grid: ImageGrid) -> tuple[FloatArray, FloatArray]:
    """Margins toward decreasing (``lo``) and increasing (``hi``) index along (k, j, i)."""
    sk, sj, si = grid.axis_signs
    # increasing k is superior when sk > 0; increasing j posterior; increasing i left
    pairs = [
        (margin.inferior, margin.superior, sk),
        (margin.anterior, margin.posterior, sj),
        (margin.right, margin.left, si),
    ]
    lo = np.array([a if s > 0 else b for a, b, s in pairs], dtype=np.float64)
    hi = np.array([b if s > 0 else a for a, b, s in pairs], dtype=np.float64)
    return lo, hi


def _side_name(axis: int, toward_high: bool, grid: ImageGrid) -> str:
    sign = grid.axis_signs[axis] * (1 if toward_high else -1)
    names = (("inferior", "superior"), ("anterior", "posterior"), ("right", "left"))[axis]
    return names[1] if sign > 0 else names[0]


#: Upper bound on the scale of a border voxel's ellipsoid; it only binds for margins
#: below a tenth of the largest voxel side, whose sub-voxel term it limits to 5 x margin.
_K_CAP = 6.0


def _max_scale(lo: FloatArray, hi: FloatArray, spacing: FloatArray) -> float:
    """Largest ellipsoid scale ``k`` a border voxel may get (see the module notes)."""
    mmax = float(max(lo.max(), hi.max()))
    if mmax == 0.0:
        return 1.0
    return min(1.0 + 0.5 * float(spacing.max()) / mmax, _K_CAP)


def _reach_voxels(
    lo: FloatArray, hi: FloatArray, spacing: FloatArray, kmax: float
) -> tuple[_IntArray, _IntArray]:
    """Largest offsets (voxels) toward decreasing / increasing index that can be reached."""
    eps = 1e-9
    rlo = np.floor(kmax * lo / spacing * (1 + _THRESHOLD_RTOL) + eps).astype(np.intp)
    rhi = np.floor(kmax * hi / spacing * (1 + _THRESHOLD_RTOL) + eps).astype(np.intp)
    return rlo, rhi


def _bbox(mask: BoolMask) -> tuple[slice, slice, slice] | None:
    """Bounding box of a 3-D bool mask (as ``_validation.bounding_box``, ~2x faster).

    Reduces whole slices as 64-bit words: on a 512 x 512 x 120 grid this is the
    largest fixed cost of a margin on a small structure.
    """
    nk = mask.shape[0]
    plane = mask.shape[1] * mask.shape[2]
    words = mask.flags.c_contiguous and plane % 8 == 0
    if words:
        any_k = np.bitwise_or.reduce(mask.reshape(nk, plane).view(np.uint64), axis=1) != 0
    else:
        any_k = mask.reshape(nk, plane).any(axis=1)
    ks = np.flatnonzero(any_k)
    if ks.size == 0:
        return None
    k0, k1 = int(ks[0]), int(ks[-1]) + 1
    sub = mask[k0:k1]
    if words:
        proj = np.bitwise_or.reduce(sub.reshape(k1 - k0, plane).view(np.uint64), axis=0)
        proj_b = proj.view(np.uint8).reshape(mask.shape[1:]) != 0
    else:
        proj_b = sub.any(axis=0)
    js = np.flatnonzero(proj_b.any(axis=1))
    iis = np.flatnonzero(proj_b.any(axis=0))
    return (
        slice(k0, k1),
        slice(int(js[0]), int(js[-1]) + 1),
        slice(int(iis[0]), int(iis[-1]) + 1),
    )


# The smoothed mask F is the mask filtered by the binomial kernel [1, 2, 1] / 4 along the
# row and column axes (not across slices: smoothing over 2.5 mm slices would bias the
# surface of curved structures). F is needed at a border voxel and at its six face
# neighbours: 39 taps of the mask, offsets (dk, dj, di).
_TAPS = np.array(
    [
        (dk, dj, di)
        for dk in (-1, 0, 1)
        for dj in range(-2, 3)
        for di in range(-2, 3)
        if (dk == 0 and not (abs(dj) == 2 and abs(di) == 2))
        or (dk != 0 and abs(dj) <= 1 and abs(di) <= 1)
    ]
)
_TAP_DOWN = [tuple(t) for t in _TAPS.tolist()].index((-1, 0, 0))
_TAP_UP = [tuple(t) for t in _TAPS.tolist()].index((1, 0, 0))
_SMOOTH = (0.25, 0.5, 0.25)
_CENTRES = ((0, 0, 0), (-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))


@functools.lru_cache(maxsize=1)
def _tap_weights() -> npt.NDArray[np.float32]:
    """(39, 7) weights giving F at the voxel and at its neighbours -k, +k, -j, +j, -i, +i."""
    index = {tuple(t): n for n, t in enumerate(_TAPS.tolist())}
    binom = _SMOOTH
    w = np.zeros((len(_TAPS), len(_CENTRES)), np.float32)
    for c, (ck, cj, ci) in enumerate(_CENTRES):
        for dj in (-1, 0, 1):
            for di in (-1, 0, 1):
                w[index[(ck, cj + dj, ci + di)], c] += binom[dj + 1] * binom[di + 1]
    return w


#: Height, as a fraction of the slice spacing, of the sub-slice point from which a border
#: voxel also grows toward the inside of the structure along the slice axis (see the
#: module notes). Chosen on spheres of radius 5-30 mm: 0.2-0.3 fills the gaps between
#: slices; 0.4-0.5 grows 15 mm spheres by 1.5-2.5 %.
_SUB_SLICE = 0.3


def _scale(delta: FloatArray, h: FloatArray, mmax: float, kmax: float) -> FloatArray:
    """Ellipsoid scale moving the reach along the normal by ``delta`` (see the notes)."""
    with np.errstate(over="ignore", divide="ignore"):  # margins of ~1e-300 mm
        scale = np.where(h > 0, 1.0 + delta / np.where(h > 0, h, 1.0), kmax)
        np.minimum(scale, 1.0 + delta / mmax, out=scale)
    capped: FloatArray = np.minimum(scale, kmax)
    return capped


def _border_weights(
    box: BoolMask, spacing: FloatArray, lo: FloatArray, hi: FloatArray, kmax: float
) -> tuple[_IntArray, npt.NDArray[np.float32], list[_SubSlicePoints]]:
    """Border voxels of ``box``, their power weights ``w >= 0`` and their sub-slice points.

    ``box`` must have at least two False voxels of padding on every side. The sub-voxel
    offset of a border voxel is ``delta = (F - 0.5) / |g|`` with, per axis, the one-sided
    difference ``g_a = (F - min(F(p - e_a), F(p + e_a))) / s_a`` toward the lower side
    (see the module notes). Returns the flat indices, the weights, and the growth points
    off the voxel centres (:class:`_SubSlicePoints`, positions in ``idx``): those of the
    poles (:func:`_pole_points`) and the sub-slice points of the other border voxels.
    """
    inner = box[1:-1, 1:-1, 1:-1]
    border = np.zeros_like(box)
    b = border[1:-1, 1:-1, 1:-1]
    np.logical_not(box[:-2, 1:-1, 1:-1], out=b)
    b |= ~box[2:, 1:-1, 1:-1]
    b |= ~box[1:-1, :-2, 1:-1]
    b |= ~box[1:-1, 2:, 1:-1]
    b |= ~box[1:-1, 1:-1, :-2]
    b |= ~box[1:-1, 1:-1, 2:]
    b &= inner
    idx = np.flatnonzero(border)
    if idx.size == 0 or kmax == 1.0:
        return idx, np.zeros(idx.size, np.float32), []
    _, nj, ni = box.shape
    flat_off = (_TAPS[:, 0] * nj + _TAPS[:, 1]) * ni + _TAPS[:, 2]
    flat = box.reshape(-1).view(np.uint8)
    neigh = flat[idx[:, None] + flat_off[None, :]].astype(np.float32)
    # einsum, not matmul: a multithreaded BLAS call is slow on a busy machine for this size
    fv = np.einsum("ij,jk->ik", neigh, _tap_weights()).astype(np.float64)
    # a pole (F <= 0.5: one voxel or a one-voxel line in its slice) with the structure on
    # one side along the slice axis only is the tip of the structure there. Like any thin
    # voxel it grows from its centre (delta = 0); its flat axial face gets its own point
    up_in = neigh[:, _TAP_UP] != 0
    pole = (up_in != (neigh[:, _TAP_DOWN] != 0)) & (fv[:, 0] <= 0.5)
    sources = _pole_points(pole, up_in, spacing, lo, hi, kmax)
    f = fv[:, 0]
    g = np.empty((idx.size, 3))
    h2 = np.zeros(idx.size)
    for a in range(3):
        f_lo, f_hi = fv[:, 1 + 2 * a], fv[:, 2 + 2 * a]
        g[:, a] = np.maximum(f - np.minimum(f_lo, f_hi), 0.0) / spacing[a]
        # margin of the side the surface faces; both sides equally low: the larger one
        m_a = np.where(f_hi < f_lo, hi[a], np.where(f_lo < f_hi, lo[a], max(lo[a], hi[a])))
        h2 += (g[:, a] * m_a) ** 2
    gnorm = np.sqrt(np.einsum("ij,ij->i", g, g))
    ok = (gnorm > 0) & (f > 0.5)
    big = 0.5 * float(spacing.max())
    delta = np.zeros(idx.size)
    delta[ok] = (f[ok] - 0.5) / gnorm[ok]
    np.minimum(delta, big, out=delta)
    # half-width h of the ellipsoid along the outward normal n = g / |g| (its support
    # function, each component with the margin of the side n points to); scaling the
    # ellipsoid by 1 + delta / h moves its reach along n by delta, and never more than
    # delta beyond the margin in any direction (a normal almost along a zero or small
    # margin would otherwise stretch the large ones)
    h = np.zeros(idx.size)
    h[ok] = np.sqrt(h2[ok]) / gnorm[ok]
    mmax = float(max(lo.max(), hi.max()))
    scale = np.where(ok, _scale(delta, h, mmax, kmax), 1.0)
    w = (scale**2 - 1.0).astype(np.float32)
    # sub-slice points: a border voxel stands for the surface over its extent along the
    # slice axis. Toward the inside of the structure along that axis (or both ways where
    # the surface is parallel to it) it also grows from the point z = _SUB_SLICE * s_k
    # away, whose offset to the tangent plane of its surface estimate is delta - z n_a
    # (n_a <= 0: the normal component along that direction); this fills the gaps the
    # single points leave between slices. Only where the surface has an in-plane part,
    # and z + offset stays within half the largest voxel side.
    steep = ok & ((g[:, 1] > 0) | (g[:, 2] > 0))
    if not steep.any():
        return idx, w, sources
    pos = np.flatnonzero(steep)
    nz = g[pos, 0] / gnorm[pos]
    f_low = np.minimum(fv[pos, 1], fv[pos, 2])
    d0 = delta[pos]
    for sign, f_next in ((1, fv[pos, 2]), (-1, fv[pos, 1])):
        # the outward normal's component along this direction: +n_z toward the lower
        # side of F along the slice axis, -n_z toward the higher one
        n_dir = np.where(f_next <= f_low, nz, -nz)
        use = n_dir <= 0
        z_s = np.minimum(_SUB_SLICE * float(spacing[0]), (big - d0) / (1.0 + np.abs(n_dir)))
        use &= z_s > 0
        if not use.any():
            continue
        z_s = z_s[use]
        d_s = d0[use] - z_s * n_dir[use]
        k_s = _scale(d_s, h[pos[use]], mmax, kmax)
        weight = (k_s * k_s - 1.0).astype(np.float32)
        sources.append(_SubSlicePoints(sign, pos[use], z_s, weight, behind=False))
    return idx, w, sources


def _pole_points(
    pole: BoolMask,
    up_in: BoolMask,
    spacing: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
    kmax: float,
) -> list[_SubSlicePoints]:
    """The growth points of the flat axial faces of the poles (see the module notes).

    A pole's face lies half a slice ``s_k / 2`` beyond its centre on the side without
    structure. It grows from one point on the slice axis toward that side, with the
    ellipsoid scaled by ``k = 1 + e / m_max`` (``e`` half the smaller in-plane voxel side,
    at most a quarter slice; ``k <= kmax``) and placed at ``z = s_k / 2 - (k - 1) m_out``
    (``m_out`` the margin toward that side): its reach along the slice axis is exactly half
    a slice beyond the margin, in-plane at most ``e`` beyond it, the half-width of the face.
    Scaling the pole's ellipsoid about its centre instead, as for the other border voxels,
    would also grow it half a slice further in-plane, where a pole has no surface.

    Parameters
    ----------
    pole, up_in : ndarray of bool, shape (n,)
        Which border voxels are poles; which have the structure on the next slice
        (increasing index). A pole's face is on the side without structure.
    spacing : ndarray, shape (3,)
        Voxel sides (mm) along (k, j, i).
    lo, hi : ndarray, shape (3,)
        Margins (mm) toward decreasing / increasing index, see :func:`_axis_margins`.
    kmax : float
        Largest ellipsoid scale, see :func:`_max_scale`.

    Returns
    -------
    list of _SubSlicePoints
        At most one entry per side, computed on the slices behind the points too.
    """
    half_slice = 0.5 * float(spacing[0])
    face_half_width = min(0.5 * float(min(spacing[1], spacing[2])), 0.5 * half_slice)
    k = min(1.0 + face_half_width / float(max(lo.max(), hi.max())), kmax)
    points: list[_SubSlicePoints] = []
    for sign, outward in ((1, pole & ~up_in), (-1, pole & up_in)):
        pos = np.flatnonzero(outward)
        if pos.size == 0:
            continue
        m_out = float(hi[0] if sign > 0 else lo[0])
        z_mm = np.full(pos.size, half_slice - (k - 1.0) * m_out)
        weight = np.full(pos.size, k * k - 1.0, np.float32)
        points.append(_SubSlicePoints(sign, pos, z_mm, weight, behind=True))
    return points


#: Fixed-point scale: the threshold value 1 of the normalised squared distance is
#: ``_Q_SCALE / kmax**2`` integer units, so every meaningful value fits in int16 with room
#: for an added cost; quantisation moves the boundary by < 1e-3 mm for usual margins.
_Q_SCALE = 10000.0
_Q_INF = 32767 - 10001


def _pass_costs(
    m_lo: float, m_hi: float, s: float, kmax: float, unit: float
) -> list[tuple[int, int]]:
    """Signed offsets t != 0 and their quantised costs ``(t s / m)**2`` still useful."""
    out: list[tuple[int, int]] = []
    for sign, m in ((1, m_hi), (-1, m_lo)):
        reach = kmax * m * (1 + _THRESHOLD_RTOL)
        t = 1
        while t * s <= reach:
            out.append((sign * t, round((t * s / m) ** 2 * unit)))
            t += 1
    return out


def _minplus_pass(d: _Int16Array, axis: int, costs: list[tuple[int, int]]) -> _Int16Array:
    """``out[p] = min_t d[p - t] + c(t)`` along ``axis`` (t = 0 costs 0), int16.

    ``axis`` should not be the last one: numpy is several times faster on the long
    contiguous runs of the first two axes.
    """
    out = d.copy()
    tmp = np.empty_like(d)
    n = d.shape[axis]
    for t, c in costs:
        if abs(t) >= n:
            continue
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        if t > 0:
            src[axis], dst[axis] = slice(0, n - t), slice(t, n)
        else:
            src[axis], dst[axis] = slice(-t, n), slice(0, n + t)
        tv = tmp[tuple(dst)]
        np.add(d[tuple(src)], np.int16(c), out=tv)
        np.minimum(out[tuple(dst)], tv, out=out[tuple(dst)])
    return out


def _add_sub_slice_points(
    d1: _Int16Array,
    idx: _IntArray,
    sources: list[_SubSlicePoints],
    shape: tuple[int, ...],
    core: tuple[slice, slice, slice],
    hz: float,
    lo: FloatArray,
    hi: FloatArray,
    kmax: float,
    unit: float,
) -> None:
    """Lower ``d1`` (after the pass along k) by the costs of the sub-slice points.

    A point at height ``z`` (mm) beyond a border voxel toward ``sign`` with weight ``w``
    costs ``((t hz - z) / m)**2 - w`` at ``t >= 1`` slices on that side,
    ``(z / m_back)**2 - w`` on the voxel's own slice (which lies on the other side of it)
    and, for points computed ``behind``, ``((t hz + z) / m_back)**2 - w`` at ``t >= 1``
    slices on the other side.
    """
    _, cj, ci = core
    nk, nj, ni = shape
    nci = ci.stop - ci.start
    plane = (cj.stop - cj.start) * nci
    flat = d1.reshape(-1)
    u32 = np.float32(unit)
    for src in sources:
        m, m_back = (hi[0], lo[0]) if src.sign > 0 else (lo[0], hi[0])
        kk, rest = np.divmod(idx[src.pos], nj * ni)
        jj, ii = np.divmod(rest, ni)
        col = kk * plane + (jj - cj.start) * nci + (ii - ci.start)
        neg_w = (-src.weight * u32).astype(np.float32)
        if m_back > 0:
            with np.errstate(over="ignore", divide="ignore"):  # margins of ~1e-300 mm
                cost = (src.z_mm / m_back).astype(np.float32) ** 2 * u32 + neg_w
            np.minimum(np.rint(cost), _Q_INF, out=cost)
            flat[col] = np.minimum(flat[col], cost.astype(np.int16))
        sides = [(src.sign, float(m), -1)]
        if src.behind:
            sides.append((-src.sign, float(m_back), 1))
        for side, m_side, z_sign in sides:
            if m_side == 0:
                continue
            with np.errstate(over="ignore", divide="ignore"):  # margins of ~1e-300 mm
                zm = (src.z_mm / m_side).astype(np.float32)
            # the slice t hz away from the voxel is t hz + z_sign z from the point
            first = float(src.z_mm.max() if z_sign < 0 else src.z_mm.min())
            reach = kmax * m_side * (1 + _THRESHOLD_RTOL)
            t = 1
            while t * hz + z_sign * first <= reach:
                cost = (np.float32(t * hz / m_side) + z_sign * zm) ** 2 * u32 + neg_w
                _lower_slice(flat, col, kk + side * t, side * t * plane, cost, nk)
                t += 1


def _lower_slice(
    flat: _Int16Array,
    col: _IntArray,
    kt: _IntArray,
    shift: int,
    cost: npt.NDArray[np.float32],
    nk: int,
) -> None:
    """``flat[col + shift] = min(flat[col + shift], round(cost))`` where ``0 <= kt < nk``."""
    np.rint(cost, out=cost)
    np.minimum(cost, _Q_INF, out=cost)
    inside = (kt >= 0) & (kt < nk)
    if inside.all():
        tgt = col + shift
    else:
        cost, tgt = cost[inside], col[inside] + shift
    flat[tgt] = np.minimum(flat[tgt], cost.astype(np.int16))


def _grow_box(
    box: BoolMask,
    core: tuple[slice, slice, slice],
    spacing: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
) -> BoolMask:
    """Expansion of the True voxels of ``box`` (all inside ``core``) within ``box``.

    ``box`` is padded around ``core`` by at least the reach of the margin plus one
    voxel. Returns a bool array of ``box.shape``.
    """
    kmax = _max_scale(lo, hi, spacing)
    unit = _Q_SCALE / (kmax * kmax)
    idx, w, sources = _border_weights(box, spacing, lo, hi, kmax)
    _, cj, ci = core
    nk, nj, ni = box.shape
    # initial function: 0 inside, -w on the border, "infinity" outside (fixed point)
    d = np.full(box.shape, _Q_INF, np.int16)
    d[box] = 0
    d.reshape(-1)[idx] = -np.rint(w * unit).astype(np.int16)
    # pass along k on the (j, i) columns of the core
    d1 = _minplus_pass(d[:, cj, ci], 0, _pass_costs(lo[0], hi[0], spacing[0], kmax, unit))
    del d
    if sources:
        _add_sub_slice_points(d1, idx, sources, box.shape, core, spacing[0], lo, hi, kmax, unit)
    # pass along j on the i columns of the core
    d2 = np.full((nk, nj, ci.stop - ci.start), _Q_INF, np.int16)
    d2[:, cj, :] = d1
    del d1
    d2 = _minplus_pass(d2, 1, _pass_costs(lo[1], hi[1], spacing[1], kmax, unit))
    # last pass along i, on (k, i, j) for contiguous runs: threshold and OR
    d2t = np.ascontiguousarray(d2.transpose(0, 2, 1))
    del d2
    out_t = np.zeros((nk, ni, nj), bool)
    thr = int(np.floor(unit * (1.0 + _THRESHOLD_RTOL)))
    below: dict[int, BoolMask] = {}
    width = d2t.shape[1]
    for t, c in [(0, 0), *_pass_costs(lo[2], hi[2], spacing[2], kmax, unit)]:
        start = ci.start + t
        if start < 0 or start + width > ni:  # the box is padded by the reach
            raise AssertionError("margin box too small")
        if c not in below:
            below[c] = d2t <= thr - c
        out_t[:, start : start + width, :] |= below[c]
    return out_t.transpose(0, 2, 1)


def _cut_box(
    mask: BoolMask, bbox: tuple[slice, slice, slice], pad_lo: _IntArray, pad_hi: _IntArray
) -> tuple[BoolMask, _IntArray, tuple[slice, slice, slice]]:
    """Copy ``mask[bbox]`` into a zero box padded by ``pad_lo``/``pad_hi`` voxels per axis.

    Returns the box, its grid-index origin (may be negative) and the core slices.
    """
    starts = np.array([s.start for s in bbox]) - pad_lo
    sizes = np.array([s.stop - s.start for s in bbox]) + pad_lo + pad_hi
    box: BoolMask = np.zeros(tuple(int(v) for v in sizes), bool)
    core = _core_slices(pad_lo, bbox)
    box[core] = mask[bbox]
    return box, starts, core


def _core_slices(pad_lo: _IntArray, bbox: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
    """Where ``bbox`` lies inside a box padded by ``pad_lo`` voxels below it."""
    k, j, i = (int(p) for p in pad_lo)
    sk, sj, si = bbox
    return (
        slice(k, k + (sk.stop - sk.start)),
        slice(j, j + (sj.stop - sj.start)),
        slice(i, i + (si.stop - si.start)),
    )


def _paste(
    box: BoolMask,
    starts: _IntArray,
    grid: ImageGrid,
    *,
    on_outside: Literal["raise", "warn", "ignore"],
    name: str,
    what: str,
) -> BoolMask:
    """Place a box result on the full grid, handling the part outside the grid."""
    shape = np.array(grid.shape)
    stops = starts + np.array(box.shape)
    g_lo = np.maximum(starts, 0)
    g_hi = np.minimum(stops, shape)
    inside = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(g_lo, g_hi, starts))
    out = np.zeros(grid.shape, bool)
    out[tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_hi))] = box[inside]
    if on_outside == "ignore" or (np.all(starts >= 0) and np.all(stops <= shape)):
        return out
    n_out = int(np.count_nonzero(box)) - int(np.count_nonzero(box[inside]))
    if n_out == 0:
        return out
    # how far past each edge the result reaches
    sides = []
    spacing = grid.spacing_mm
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        prof = np.flatnonzero(box.any(axis=other)) + starts[axis]
        below = -int(prof.min()) if prof.min() < 0 else 0
        above = int(prof.max()) - (int(shape[axis]) - 1) if prof.max() >= shape[axis] else 0
        if below:
            sides.append(f"{below * spacing[axis]:.1f} mm past the {_side_name(axis, False, grid)}")
        if above:
            sides.append(f"{above * spacing[axis]:.1f} mm past the {_side_name(axis, True, grid)}")
    where = ", ".join(sides)
    if on_outside == "raise":
        raise MarginOutsideGridError(
            f"{what} {name!r} would grow {where} edge of the grid "
            f"({n_out} voxels, {n_out * grid.voxel_volume_cc:.2f} cc outside {grid.describe()}); "
            "use an image with more room around the structure, a smaller margin, or clip=True "
            "to keep only the part inside the grid"
        )
    warnings.warn(
        f"{what} {name!r} was clipped at the grid edge: {n_out} voxels "
        f"({n_out * grid.voxel_volume_cc:.2f} cc) reaching {where} edge were cut",
        RtplanWarning,
        stacklevel=3,
    )
    return out


def _expand(
    mask: BoolMask,
    grid: ImageGrid,
    margin: Margin,
    *,
    on_outside: Literal["raise", "warn", "ignore"],
    name: str,
    what: str = "expanding",
) -> BoolMask:
    bbox = _bbox(mask)
    if bbox is None:
        return np.zeros(grid.shape, bool)
    if margin.is_zero:
        return mask.copy()
    spacing = np.asarray(grid.spacing_mm, float)
    lo, hi = _axis_margins(margin, grid)
    kmax = _max_scale(lo, hi, spacing)
    rlo, rhi = _reach_voxels(lo, hi, spacing, kmax)
    # the structure grows toward increasing index by up to rhi voxels, i.e. it needs room
    # below it for the costs of offsets toward decreasing index (rlo) and above for rhi
    box, starts, core = _cut_box(mask, bbox, np.maximum(rlo + 1, 2), np.maximum(rhi + 1, 2))
    grown = _grow_box(box, core, spacing, lo, hi)
    return _paste(grown, starts, grid, on_outside=on_outside, name=name, what=what)


def _shrink(mask: BoolMask, grid: ImageGrid, margin: Margin) -> BoolMask:
    bbox = _bbox(mask)
    if bbox is None:
        return np.zeros(grid.shape, bool)
    if margin.is_zero:
        return mask.copy()
    spacing = np.asarray(grid.spacing_mm, float)
    mirror = margin.mirrored()
    lo, hi = _axis_margins(mirror, grid)
    kmax = _max_scale(lo, hi, spacing)
    rlo, rhi = _reach_voxels(lo, hi, spacing, kmax)
    # the complement matters up to the reach R around the structure's box; it is cut
    # there, at c >= R + 1 voxels from the box edge, and its cut face lies R + 1 voxels
    # from the structure, out of its own reach (and >= 2 voxels for the surface taps)
    reach = np.maximum(rlo, rhi)
    c = np.maximum(reach + 1, 2)
    pad = c + reach + 1
    box, starts, _ = _cut_box(mask, bbox, pad, pad)
    ck, cj, ci = (int(v) for v in c)
    nk, nj, ni = box.shape
    inner_core = (slice(ck, nk - ck), slice(cj, nj - cj), slice(ci, ni - ci))
    outer = ~box
    comp = np.zeros_like(box)
    comp[inner_core] = outer[inner_core]
    grown = _grow_box(comp, inner_core, spacing, lo, hi)
    kept = box & ~grown
    return _paste(kept, starts, grid, on_outside="ignore", name="", what="")


# ---------------------------------------------------------------------------- public API


def _check_arguments(grid: object, name: object, clip: object = False) -> None:
    """Raise ``TypeError`` naming the argument on a grid, name or clip of the wrong type."""
    check_type(grid, ImageGrid, name="grid")
    check_type(name, str, name="name")
    check_type(clip, (bool, np.bool_), name="clip", expected_text="True or False")


def expand(
    mask: npt.ArrayLike,
    grid: ImageGrid,
    margin: MarginLike,
    *,
    clip: bool = False,
    name: str = "structure",
) -> BoolMask:
    """Grow a structure by a margin in millimetres (see the module notes for the semantics).

    Parameters
    ----------
    mask : array_like of bool, shape ``grid.shape``
        The structure, ``[slice, row, col]``; strict 0/1 numbers are accepted.
    grid : ImageGrid
        Geometry of ``mask``; flipped axes are handled (margins stay anatomical).
    margin : Margin or float
        Margin in mm; a number is a uniform margin.
    clip : bool, optional
        Allow the result to reach the grid edge: the part outside is cut and an
        :class:`~rtplan.errors.RtplanWarning` says how much. Default False.
    name : str, optional
        Name of the structure, for messages.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
        A new array; ``mask`` is not modified.

    Raises
    ------
    InvalidMaskError
        When ``mask`` is not a 3-D binary array of ``grid.shape``.
    InvalidMarginError
        When the margin is negative, NaN or not a number.
    MarginOutsideGridError
        When the result would reach past the grid edge and ``clip`` is False.

    Notes
    -----
    The work is done on the bounding box of the structure padded by the margin, so
    the cost follows the structure's size and the margin, not the grid's.

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(5, 9, 9), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> one = np.zeros(g.shape, bool); one[2, 4, 4] = True
    >>> int(expand(one, g, 0.0).sum()), int(expand(np.zeros(g.shape), g, 3.0).sum())
    (1, 0)
    >>> grown = expand(one, g, Margin(left=2.0))   # two voxels toward the patient's left
    >>> np.flatnonzero(grown[2, 4]).tolist()
    [4, 5, 6]
    >>> int(expand(one, g, 2.5)[:, 4, 4].sum())    # 2.5 mm = one slice up and down
    3
    """
    _check_arguments(grid, name, clip)
    m = _as_margin(margin)
    a = as_mask(mask, grid, name=name)
    return _expand(a, grid, m, on_outside="warn" if clip else "raise", name=name)


def shrink(
    mask: npt.ArrayLike,
    grid: ImageGrid,
    margin: MarginLike,
    *,
    name: str = "structure",
) -> BoolMask:
    """Move the border of a structure inward by a margin in millimetres.

    ``shrink(S, M)`` is the complement of ``expand(complement of S, M mirrored)``:
    ``Margin(superior=5)`` moves the superior border 5 mm down. Voxels outside the
    grid count as outside the structure.

    Parameters
    ----------
    mask : array_like of bool, shape ``grid.shape``
        The structure.
    grid : ImageGrid
        Geometry of ``mask``.
    margin : Margin or float
        Inner margin in mm; a number is a uniform margin.
    name : str, optional
        Name of the structure, for messages.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
        A new array inside ``mask``.

    Raises
    ------
    InvalidMaskError, InvalidMarginError
        On a bad mask or margin.

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(5, 9, 9), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> one = np.zeros(g.shape, bool); one[2, 4, 4] = True
    >>> int(shrink(one, g, 0.5).sum()), int(shrink(one, g, 0).sum())
    (0, 1)
    >>> cube = np.zeros(g.shape, bool); cube[1:4, 2:7, 2:7] = True
    >>> int(shrink(cube, g, 1.0).sum())    # 1 mm strips one voxel in-plane only
    27
    """
    _check_arguments(grid, name)
    m = _as_margin(margin)
    a = as_mask(mask, grid, name=name)
    return _shrink(a, grid, m)


def ring(
    mask: npt.ArrayLike,
    grid: ImageGrid,
    inner: MarginLike,
    outer: MarginLike,
    *,
    clip: bool = False,
    name: str = "structure",
) -> BoolMask:
    """Shell around a structure from ``inner`` mm to ``outer`` mm outside it.

    ``ring = expand(S, outer) - expand(S, inner)``; ``inner = 0`` gives a ring that
    touches the structure.

    Parameters
    ----------
    mask : array_like of bool, shape ``grid.shape``
        The structure.
    grid : ImageGrid
        Geometry of ``mask``.
    inner, outer : Margin or float
        Inner and outer distance in mm; each direction of ``outer`` must be >=
        that of ``inner``.
    clip : bool, optional
        As in :func:`expand`, for the outer expansion.
    name : str, optional
        Name of the structure, for messages.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``

    Raises
    ------
    InvalidMarginError
        When ``outer`` is smaller than ``inner`` in some direction.

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(5, 9, 9), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> one = np.zeros(g.shape, bool); one[2, 4, 4] = True
    >>> r = ring(one, g, 0, 1.0)
    >>> int(r.sum()), bool(r[2, 4, 4])
    (4, False)
    """
    _check_arguments(grid, name, clip)
    m_in, m_out = _as_margin(inner, "inner"), _as_margin(outer, "outer")
    inner_mm, outer_mm = m_in.as_dict(), m_out.as_dict()
    bad = [d for d in _DIRECTIONS if outer_mm[d] < inner_mm[d]]
    if bad:
        raise InvalidMarginError(
            f"ring of {name!r}: the outer margin must be >= the inner margin in every "
            f"direction; it is smaller toward {', '.join(bad)} (inner {m_in}, outer {m_out})"
        )
    a = as_mask(mask, grid, name=name)
    grown = _expand(a, grid, m_out, on_outside="warn" if clip else "raise", name=name)
    hole = _expand(a, grid, m_in, on_outside="ignore", name=name)
    return grown & ~hole


def wall(
    mask: npt.ArrayLike,
    grid: ImageGrid,
    thickness: MarginLike,
    *,
    name: str = "structure",
) -> BoolMask:
    """The layer of a structure within ``thickness`` mm of its border (e.g. a bladder wall).

    ``wall = S - shrink(S, thickness)``.

    Parameters
    ----------
    mask : array_like of bool, shape ``grid.shape``
        The structure.
    grid : ImageGrid
        Geometry of ``mask``.
    thickness : Margin or float
        Wall thickness in mm.
    name : str, optional
        Name of the structure, for messages.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
        A new array inside ``mask``.

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(5, 9, 9), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> cube = np.zeros(g.shape, bool); cube[1:4, 2:7, 2:7] = True
    >>> int(wall(cube, g, 1.0).sum()), int(wall(np.zeros(g.shape, bool), g, 1.0).sum())
    (48, 0)
    """
    _check_arguments(grid, name)
    m = _as_margin(thickness, "thickness")
    a = as_mask(mask, grid, name=name)
    return a & ~_shrink(a, grid, m)


def _masks_same_shape(masks: tuple[npt.ArrayLike, ...], what: str) -> list[BoolMask]:
    if not masks:
        raise InvalidMaskError(f"{what} needs at least one mask")
    arrays = [as_mask(m, name=f"mask {n} of {what}") for n, m in enumerate(masks)]
    for n, a in enumerate(arrays[1:], start=1):
        if a.shape != arrays[0].shape:
            raise GridMismatchError(
                f"mask {n} of {what} has shape {a.shape} but mask 0 has {arrays[0].shape}; "
                "masks must be on the same grid (resample one onto the other first)"
            )
    return arrays


def union(*masks: npt.ArrayLike) -> BoolMask:
    """Voxels in any of the masks (a new array).

    Examples
    --------
    >>> a = np.zeros((1, 1, 3), bool); a[0, 0, 0] = True
    >>> b = np.zeros((1, 1, 3), bool); b[0, 0, 2] = True
    >>> union(a, b)[0, 0].tolist(), union(a)[0, 0].tolist()
    ([True, False, True], [True, False, False])
    """
    arrays = _masks_same_shape(masks, "union")
    out = arrays[0].copy()
    for a in arrays[1:]:
        out |= a
    return out


def intersection(*masks: npt.ArrayLike) -> BoolMask:
    """Voxels in every one of the masks (a new array).

    Examples
    --------
    >>> a = np.ones((1, 1, 3), bool); b = np.zeros((1, 1, 3), bool); b[0, 0, 1] = True
    >>> intersection(a, b)[0, 0].tolist()
    [False, True, False]
    """
    arrays = _masks_same_shape(masks, "intersection")
    out = arrays[0].copy()
    for a in arrays[1:]:
        out &= a
    return out


def difference(a: npt.ArrayLike, b: npt.ArrayLike) -> BoolMask:
    """Voxels of ``a`` that are not in ``b`` (a new array).

    Examples
    --------
    >>> a = np.ones((1, 1, 3), bool); b = np.zeros((1, 1, 3), bool); b[0, 0, 1] = True
    >>> difference(a, b)[0, 0].tolist(), int(difference(b, b).sum())
    ([True, False, True], 0)
    """
    x, y = _masks_same_shape((a, b), "difference")
    return x & ~y


def crop_away_from(
    mask: npt.ArrayLike,
    avoid: npt.ArrayLike,
    grid: ImageGrid,
    gap: MarginLike = 0.0,
    *,
    name: str = "structure",
    avoid_name: str = "avoidance structure",
    avoid_grid: ImageGrid | None = None,
) -> BoolMask:
    """Remove from a structure every voxel within ``gap`` mm of an avoidance structure.

    ``crop_away_from(S, A, grid, gap) = S - expand(A, gap)``; the expansion of ``A``
    may reach past the grid edge without error (only the part inside matters).

    Parameters
    ----------
    mask : array_like of bool, shape ``grid.shape``
        The structure to crop (e.g. a PTV).
    avoid : array_like of bool, shape ``grid.shape``
        The structure to keep away from (e.g. the rectum).
    grid : ImageGrid
        Geometry of both masks.
    gap : Margin or float, optional
        Distance in mm kept between the result and ``avoid``. Default 0 (plain
        difference).
    name, avoid_name : str, optional
        Names for messages.
    avoid_grid : ImageGrid, optional
        Grid of ``avoid`` when it travels with its own; it must equal ``grid``.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``

    Raises
    ------
    GridMismatchError
        When ``avoid_grid`` differs from ``grid``.
    InvalidMaskError, InvalidMarginError
        On a bad mask or gap.

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(1, 1, 7), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> ptv = np.ones(g.shape, bool); rectum = np.zeros(g.shape, bool); rectum[0, 0, 6] = True
    >>> crop_away_from(ptv, rectum, g, 2.0)[0, 0].astype(int).tolist()
    [1, 1, 1, 1, 0, 0, 0]
    >>> int(crop_away_from(ptv, np.zeros(g.shape, bool), g, 5.0).sum())
    7
    """
    _check_arguments(grid, name)
    check_type(avoid_name, str, name="avoid_name")
    if avoid_grid is not None:
        check_same_grid(grid, avoid_grid, names=[f"{name!r}", f"{avoid_name!r}"])
    m = _as_margin(gap, "gap")
    a = as_mask(mask, grid, name=name)
    b = as_mask(avoid, grid, name=avoid_name)
    return a & ~_expand(b, grid, m, on_outside="ignore", name=avoid_name)
