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


@given(st.data(), grids(min_side=10, max_side=16), st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_successive_uniform_expansions_match_one_within_a_voxel(data, grid, a, b):
    s = data.draw(masks(grid, border=room(grid, a + b), max_blobs=2))
    twice = expand(expand(s, grid, a), grid, b)
    once = expand(s, grid, a + b)
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
