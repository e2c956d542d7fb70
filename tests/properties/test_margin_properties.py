"""Invariants of rtplan.margins checked with hypothesis on small random grids and masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scipy import ndimage  # noqa: E402
from strategies import grids, margins, masks, uniform_margins  # noqa: E402

from rtplan.errors import RtplanWarning  # noqa: E402
from rtplan.grid import ImageGrid  # noqa: E402
from rtplan.margins import Margin, expand, shrink, union  # noqa: E402

MAX_MM = 3.0
_CUBE = np.ones((3, 3, 3), bool)


def grow(mask, grid, margin):
    """expand with clip=True, its warning silenced (these are invariants, not edge tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        return expand(mask, grid, margin, clip=True)


def within_one_voxel(a, b):
    """True when every voxel of ``a`` is in ``b`` or touches it (26-neighbourhood)."""
    return not np.any(a & ~ndimage.binary_dilation(b, structure=_CUBE))


def room(grid, mm):
    """Voxels of room per axis for a margin of ``mm`` (plus the sub-voxel term)."""
    return tuple(math.ceil((mm + 0.5 * max(grid.spacing_mm)) / s) + 1 for s in grid.spacing_mm)


@given(st.data(), grids(), margins(max_mm=MAX_MM))
def test_structure_is_inside_its_expansion(data, grid, margin):
    s = data.draw(masks(grid))
    out = grow(s, grid, margin)
    assert out.dtype == bool and out.shape == grid.shape
    assert not np.any(s & ~out)


@given(st.data(), grids(), margins(max_mm=MAX_MM))
def test_shrink_is_inside_the_structure(data, grid, margin):
    s = data.draw(masks(grid))
    assert not np.any(shrink(s, grid, margin) & ~s)


@given(st.data(), grids())
def test_zero_margin_is_identity(data, grid):
    s = data.draw(masks(grid))
    assert np.array_equal(expand(s, grid, 0.0), s)
    assert np.array_equal(expand(s, grid, Margin()), s)
    assert np.array_equal(shrink(s, grid, 0.0), s)


@given(st.data(), grids(), uniform_margins(max_mm=MAX_MM), uniform_margins(max_mm=MAX_MM))
def test_monotone_in_a_uniform_margin(data, grid, a, b):
    a, b = min(a, b), max(a, b)
    s = data.draw(masks(grid))
    small, large = grow(s, grid, a), grow(s, grid, b)
    # exact but for voxels lying on both boundaries within the fixed-point rounding
    assert within_one_voxel(small, large)
    assert np.count_nonzero(small & ~large) <= 2


@given(st.data(), grids(), margins(max_mm=MAX_MM), margins(max_mm=MAX_MM))
def test_monotone_in_every_margin_within_a_voxel(data, grid, m1, m2):
    lo = Margin(**{k: min(v, m2.as_dict()[k]) for k, v in m1.as_dict().items()})
    hi = Margin(**{k: max(v, m2.as_dict()[k]) for k, v in m1.as_dict().items()})
    s = data.draw(masks(grid))
    # the sub-voxel border term depends on the largest margin, so a larger margin in one
    # direction may move another direction's border by a fraction of a voxel
    assert within_one_voxel(grow(s, grid, lo), grow(s, grid, hi))


@given(st.data(), grids(), margins(max_mm=MAX_MM))
def test_monotone_in_the_structure_within_a_voxel(data, grid, margin):
    s1 = data.draw(masks(grid))
    s2 = s1 | data.draw(masks(grid))
    assert within_one_voxel(grow(s1, grid, margin), grow(s2, grid, margin))


#: Relative error of a radius from the int16 fixed point of rtplan.margins: the threshold 1
#: of the normalised squared distance is ``u = 10**4 / kmax**2`` units (kmax <= 6), a
#: voxel's value is a sum of at most four costs rounded to the unit (the weight and one
#: step per axis) and the threshold is floored, so ``N**2`` is off by < 3 units and a
#: radius ``k`` (>= 1, in margins) by < ``1.5 / (u k**2) <= 1.5 * 36 / 10**4 = 0.0054``.
FIXED_POINT_RTOL = 0.006


def centre_ball(s, grid, radius_mm):
    """Voxels whose centre lies within ``radius_mm`` of a voxel centre of ``s``."""
    return ndimage.distance_transform_edt(~s, sampling=grid.spacing_mm) <= radius_mm


@given(st.data(), grids(min_side=10, max_side=16), st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_successive_uniform_expansions_stay_within_the_derived_bounds(data, grid, a, b):
    """Expanding by a then b against expanding by a + b once, for a uniform margin.

    "Within one voxel of each other" cannot be guaranteed on anisotropic voxels: by design
    a border voxel may grow up to ``h`` (half the largest voxel side) beyond its margin in
    any direction (a rim voxel of an axial face in-plane; a pole in-plane by half its
    in-plane side), which on 3 mm slices of 0.8 mm voxels is more than one column. Two
    expansions can add two such terms where one adds one; and a thin structure can get the
    term from the expansion by ``a + b`` while ``a`` and ``b`` are each too small to reach
    the next voxel (a two-voxel line across 3 x 0.98 x 3 mm voxels grown by 0.84 mm, then
    0.90 mm, against 1.74 mm once: two rows apart). What holds, with ``B_r(S)`` the voxels
    whose centre lies within ``r`` mm of a voxel centre of ``S`` and ``e`` the relative
    error FIXED_POINT_RTOL:

    1. ``B_{m(1-e)}(S) <= expand(S, m) <= B_{(m+h)(1+e)}(S)``: every voxel centre of ``S``
       grows by at least its margin (weights >= 0), and every growth point lies ``z`` mm
       from a voxel centre of ``S`` with a ball of radius ``<= m + d``, ``z + d <= h``.
    2. Hence (triangle inequality) ``twice <= B_{(a+b+2h)(1+e)}(S)``.
    3. ``B_{(a+b)(1-e)}(S) <= dilate26(twice)``: for voxel indices ``D = v - q`` with
       ``|D s| = d <= a' + b'`` (``a' = a(1-e)``, ``b' = b(1-e)``, ``d > a'``) and
       ``l = a' / d``, ``U = trunc(l D)`` has ``|U s| <= a'`` so ``q + U`` is in the first
       expansion; ``W = D - U`` less one voxel toward ``q`` on each axis where ``l D`` was
       not an integer has ``|W s| <= (1 - l) d <= b'``, so ``q + U + W``, a 26-neighbour
       of ``v`` (or ``v``), is in the second.

    So the two results agree on ``B_{a+b}(S)`` but for a voxel of lattice rounding, and
    differ only in the shell of thickness ``2h`` beyond it.
    """
    h = 0.5 * max(grid.spacing_mm)
    s = data.draw(masks(grid, border=room(grid, a + b + h), max_blobs=2))
    twice = expand(expand(s, grid, a), grid, b)
    once = expand(s, grid, a + b)
    if not s.any():
        assert not once.any() and not twice.any()
        return
    e = FIXED_POINT_RTOL
    core = centre_ball(s, grid, (a + b) * (1 - e))
    assert not np.any(core & ~once)
    assert not np.any(once & ~centre_ball(s, grid, (a + b + h) * (1 + e)))
    assert not np.any(core & ~ndimage.binary_dilation(twice, structure=_CUBE))
    assert not np.any(twice & ~centre_ball(s, grid, (a + b + 2 * h) * (1 + e)))


def test_successive_expansions_of_a_rod_across_slices_match_one_within_a_voxel():
    """The falsifying example hypothesis found, 3 mm slices of 2 x 0.8 mm voxels.

    The two-voxel line across slices at column 6 was grown as a ball half a slice (1.5 mm)
    larger than the margin at each end, in-plane too; the expansion by 1 mm then had the
    same at the tips of its middle row, and growing by 1 mm twice reached 4.8 mm along the
    row where growing by 2 mm once reaches 3.2 mm. A pole now grows in-plane by at most
    half its in-plane side beyond the margin, and the two agree within a voxel.
    """
    grid = ImageGrid(shape=(10, 10, 13), spacing_mm=(3.0, 2.0, 0.8), origin_mm=(0.0, 0.0, 0.0))
    s = np.zeros(grid.shape, bool)
    for k, j, i in [(3, 5, 6), (3, 6, 6), (5, 6, 6), (6, 4, 6), (6, 6, 6)]:
        s[k, j, i] = True
    twice = expand(expand(s, grid, 1.0), grid, 1.0)
    once = expand(s, grid, 2.0)
    assert within_one_voxel(twice, once)
    assert within_one_voxel(once, twice)


@given(
    st.data(),
    grids(allow_flips=False),
    margins(max_mm=MAX_MM),
    st.tuples(*[st.floats(-500.0, 500.0)] * 3),
)
def test_translating_the_origin_changes_nothing(data, grid, margin, shift):
    s = data.draw(masks(grid))
    moved = ImageGrid(
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=tuple(o + d for o, d in zip(grid.origin_mm, shift)),
        direction=grid.direction,
    )
    assert np.array_equal(grow(s, grid, margin), grow(s, moved, margin))
    assert np.array_equal(shrink(s, grid, margin), shrink(s, moved, margin))


@given(st.data(), grids(allow_flips=False), margins(max_mm=MAX_MM), st.integers(1, 7))
def test_flipped_storage_gives_the_same_anatomy(data, grid, margin, flips):
    s = data.draw(masks(grid))
    axes = tuple(a for a in range(3) if flips >> a & 1)
    signs = [1.0, 1.0, 1.0]
    # direction columns are (i, j, k); array axes are (k, j, i)
    for a in axes:
        signs[2 - a] = -1.0
    flipped = ImageGrid(
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=grid.origin_mm,
        direction=tuple(np.diag(signs).ravel()),
    )
    out = grow(s, grid, margin)
    out_f = grow(np.flip(s, axes), flipped, margin)
    assert np.array_equal(np.flip(out_f, axes), out)


@given(st.data(), grids())
def test_union_volume_is_at_most_the_sum(data, grid):
    a, b = data.draw(masks(grid)), data.draw(masks(grid))
    u = union(a, b)
    assert u.sum() <= a.sum() + b.sum()
    assert not np.any((a | b) & ~u)
