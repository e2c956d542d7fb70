"""Tests of rtplan.margins: analytic volumes, a brute-force reference, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from phantoms import aniso_grid, box_mask, sphere_mask
from scipy import ndimage

from rtplan.errors import (
    GridMismatchError,
    InvalidMarginError,
    InvalidMaskError,
    MarginOutsideGridError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid
from rtplan.margins import (
    Margin,
    crop_away_from,
    difference,
    expand,
    intersection,
    ring,
    shrink,
    union,
    wall,
)

SPACING = (2.5, 0.98, 0.98)
VOXEL_DIAGONAL_MM = math.sqrt(sum(s * s for s in SPACING))
# a fixed sub-voxel offset of the sphere centres from a voxel centre (mm, LPS)
OFFSET_MM = np.array([0.31, -0.22, 0.71])


def sphere_vol(r):
    return 4.0 / 3.0 * math.pi * r**3


def grid_for(radius_mm, spacing=SPACING, origin=(-17.3, 4.2, -31.0)):
    shape = tuple(2 * (int(radius_mm / s) + 3) + 1 for s in spacing)
    return ImageGrid(shape=shape, spacing_mm=spacing, origin_mm=origin)


# ---------------------------------------------------------------------------- reference


#: as rtplan.margins._SUB_SLICE: height of the sub-slice point, in slices
SUB_SLICE = 0.3


def reference_sources(mask, spacing, lo, hi):
    """Slow re-implementation of the documented growth points (module notes).

    Returns a list of (position in fractional voxel indices (k, j, i), weight w); the
    structure is the union of the octant ellipsoids scaled by sqrt(1 + w) around them.
    """
    f = mask.astype(float)
    b = np.array([0.25, 0.5, 0.25])
    smooth = ndimage.correlate1d(f, b, axis=1, mode="constant")
    smooth = ndimage.correlate1d(smooth, b, axis=2, mode="constant")
    padded = np.pad(smooth, 1)
    padded_mask = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))
    border = mask & ~eroded
    mmax = max(lo.max(), hi.max())
    big = 0.5 * max(spacing)
    kmax = min(1.0 + big / mmax, 6.0)

    def scale(delta, h):
        k = kmax if h == 0 else min(1.0 + delta / h, kmax)
        return min(k, 1.0 + delta / mmax)

    sources = [(p.astype(float), 0.0) for p in np.argwhere(mask & eroded)]
    for p in np.argwhere(border):
        c = tuple(p + 1)
        ez = np.array([1, 0, 0])
        fp = padded[c]
        nb = {}
        for a in range(3):
            e = np.eye(3, dtype=int)[a]
            nb[a] = [padded[tuple(p + 1 - e)], padded[tuple(p + 1 + e)]]
        up, down = padded_mask[tuple(p + 1 + ez)], padded_mask[tuple(p + 1 - ez)]
        if up != down and fp <= 0.5:  # a pole: its centre and a point on its axial face
            sources.append((p.astype(float), 0.0))
            sign = -1 if up else 1  # toward the side without structure
            m_out = hi[0] if sign > 0 else lo[0]
            face_half_width = min(0.5 * min(spacing[1], spacing[2]), 0.25 * spacing[0])
            k = min(1.0 + face_half_width / mmax, kmax)
            z = 0.5 * spacing[0] - (k - 1.0) * m_out
            sources.append((p + sign * z / spacing[0] * ez, k * k - 1.0))
            continue
        g, m = np.zeros(3), np.zeros(3)
        for a in range(3):
            f_lo, f_hi = nb[a]
            g[a] = max(fp - min(f_lo, f_hi), 0.0) / spacing[a]
            m[a] = hi[a] if f_hi < f_lo else lo[a] if f_lo < f_hi else max(lo[a], hi[a])
        gn = np.linalg.norm(g)
        if gn == 0 or fp <= 0.5:
            sources.append((p.astype(float), 0.0))
            continue
        delta = min((fp - 0.5) / gn, big)
        h = np.linalg.norm(g * m) / gn
        k = scale(delta, h)
        sources.append((p.astype(float), k * k - 1.0))
        if g[1] == 0 and g[2] == 0:
            continue
        # sub-slice points toward the inside along the slice axis, on the tangent plane
        for sign in (1, -1):
            f_next = nb[0][1] if sign > 0 else nb[0][0]
            n_dir = g[0] / gn * (1 if f_next <= min(nb[0]) else -1)
            if n_dir > 0:
                continue
            z = min(SUB_SLICE * spacing[0], (big - delta) / (1 - n_dir))
            if z <= 0:
                continue
            k_s = scale(delta - z * n_dir, h)
            sources.append((p + sign * z / spacing[0] * ez, k_s * k_s - 1.0))
    return sources


def reference_power_distance(mask, grid, margin, targets=None):
    """min over growth points p of N(q - p)**2 - w(p), for every voxel q (brute force).

    With ``targets`` (bool mask) only those voxels q are computed (inf elsewhere).
    """
    spacing = np.array(grid.spacing_mm)
    sk, sj, si = grid.axis_signs
    pairs = [
        (margin.inferior, margin.superior, sk),
        (margin.anterior, margin.posterior, sj),
        (margin.right, margin.left, si),
    ]
    lo = np.array([a if s > 0 else b for a, b, s in pairs])
    hi = np.array([b if s > 0 else a for a, b, s in pairs])
    q = np.indices(grid.shape).reshape(3, -1).T
    if targets is not None:
        q = q[targets.reshape(-1)]
    best = np.full(len(q), np.inf)
    for p, w in reference_sources(mask, spacing, lo, hi):
        disp = (q - p) * spacing
        total = np.zeros(len(q))
        for a in range(3):
            m = np.where(disp[:, a] > 0, hi[a], lo[a])
            with np.errstate(divide="ignore", invalid="ignore"):
                term = np.where(disp[:, a] == 0, 0.0, (disp[:, a] / m) ** 2)
            total += term
        np.minimum(best, total - w, out=best)
    if targets is None:
        return best.reshape(grid.shape)
    out = np.full(grid.shape, np.inf)
    out[targets] = best
    return out


# ---------------------------------------------------------------------------- Margin


def test_margin_uniform_and_number_are_the_same():
    g = aniso_grid()
    m = sphere_mask(g, g.center_mm, 6.0)
    assert np.array_equal(expand(m, g, 4.0), expand(m, g, Margin.uniform(4.0)))
    assert np.array_equal(expand(m, g, 4), expand(m, g, Margin(4, 4, 4, 4, 4, 4)))


def test_margin_properties_and_mirror():
    m = Margin(right=1, left=2, anterior=3, posterior=4, superior=5, inferior=6)
    assert m.max_mm == 6.0 and not m.is_uniform and not m.is_zero
    assert m.mirrored() == Margin(right=2, left=1, anterior=4, posterior=3, superior=6, inferior=5)
    assert Margin.uniform(2.5).is_uniform
    assert m.as_dict()["superior"] == 5.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "3", None, True])
def test_invalid_margins_raise(bad):
    with pytest.raises(InvalidMarginError):
        Margin.uniform(bad)
    with pytest.raises(InvalidMarginError):
        Margin(left=bad)
    g = aniso_grid()
    with pytest.raises(InvalidMarginError, match="margin"):
        expand(np.zeros(g.shape, bool), g, bad)


def test_invalid_margin_message_names_the_direction():
    with pytest.raises(InvalidMarginError, match="posterior"):
        Margin(posterior=-2)


# ---------------------------------------------------------------------------- spheres


@pytest.mark.parametrize("offset", [OFFSET_MM, np.zeros(3)], ids=["offset", "centred"])
@pytest.mark.parametrize("r", [5.0, 15.0, 30.0])
@pytest.mark.parametrize("m", [3.0, 5.0, 7.0, 10.0])
def test_sphere_expansion_volume_and_surface(r, m, offset):
    g = grid_for(r + m + 3)
    centre = np.array(g.center_mm) + offset
    s = sphere_mask(g, centre, r)
    out = expand(s, g, m)
    vol = out.sum() * g.voxel_volume_mm3
    err = vol / sphere_vol(r + m) - 1
    # 5 mm spheres are two slices in radius: their own mask is off by -6.9 to +4.1 % with
    # the sub-voxel position; at these two positions the result is within 3 % (issue 2),
    # at others it can be up to 7.4 % small (see the module notes)
    tol = 0.03 if r == 5.0 else 0.015
    assert abs(err) <= tol, f"volume error {err:+.2%}"
    # every surface voxel of the result lies at margin +- a voxel diagonal from the sphere
    surface = out & ~ndimage.binary_erosion(out, border_value=0)
    z, y, x = g.axis_coordinates_mm()
    kk, jj, ii = np.nonzero(surface)
    dist = np.sqrt((x[ii] - centre[0]) ** 2 + (y[jj] - centre[1]) ** 2 + (z[kk] - centre[2]) ** 2)
    assert np.all(np.abs(dist - r - m) <= VOXEL_DIAGONAL_MM)


@pytest.mark.parametrize("r", [15.0, 30.0])
@pytest.mark.parametrize("m", [3.0, 10.0])
def test_sphere_expansion_beats_centre_to_centre_distance(r, m):
    # the plain distance transform (each voxel a point) loses ~half a voxel all round
    g = grid_for(r + m + 3)
    s = sphere_mask(g, np.array(g.center_mm) + OFFSET_MM, r)
    edt = ndimage.distance_transform_edt(~s, sampling=g.spacing_mm) <= m
    exact = sphere_vol(r + m)
    err_edt = abs(edt.sum() * g.voxel_volume_mm3 / exact - 1)
    err = abs(expand(s, g, m).sum() * g.voxel_volume_mm3 / exact - 1)
    assert err_edt > 0.02
    assert err < err_edt


def test_single_voxel_asymmetric_margin_extent_and_volume():
    m = Margin(right=3, left=7, anterior=5, posterior=2, superior=10, inferior=4)
    g = aniso_grid(shape=(15, 25, 25))
    one = np.zeros(g.shape, bool)
    c = (7, 12, 12)
    one[c] = True
    out = expand(one, g, m)
    kk, jj, ii = np.nonzero(out)
    sz, sy, sx = g.spacing_mm
    # identity direction: +k superior, +j posterior, +i left; extent = from the voxel
    # centre to the far edge of the outermost result voxel
    extents = {
        "superior": (kk.max() - c[0]) * sz + sz / 2,
        "inferior": (c[0] - kk.min()) * sz + sz / 2,
        "posterior": (jj.max() - c[1]) * sy + sy / 2,
        "anterior": (c[1] - jj.min()) * sy + sy / 2,
        "left": (ii.max() - c[2]) * sx + sx / 2,
        "right": (c[2] - ii.min()) * sx + sx / 2,
    }
    half = {"superior": sz / 2, "inferior": sz / 2, "posterior": sy / 2, "anterior": sy / 2}
    for side, ext in extents.items():
        assert abs(ext - getattr(m, side)) <= half.get(side, sx / 2) + 1e-9, side
    prods = [a * b for a in (m.superior, m.inferior) for b in (m.anterior, m.posterior)]
    prods = [p * e for p in prods for e in (m.left, m.right)]
    ellipsoid = 4.0 / 3.0 * math.pi * np.mean(prods)
    assert abs(out.sum() * g.voxel_volume_mm3 / ellipsoid - 1) <= 0.03


def test_the_end_of_a_line_across_slices_grows_in_plane_by_at_most_half_a_voxel_more():
    """A pole, here the end of a one-voxel line across 3 mm slices, is a flat axial face.

    It reaches half a slice beyond its margin along the slice axis, and in-plane at most
    half its smaller in-plane side (0.4 mm) beyond it. It used to grow as a ball half a
    slice larger than the margin in every direction: 2 + 1.5 mm = four 0.8 mm columns.
    """
    g = ImageGrid(shape=(9, 9, 21), spacing_mm=(3.0, 2.0, 0.8), origin_mm=(0.0, 0.0, 0.0))
    rod = np.zeros(g.shape, bool)
    rod[3:6, 4, 10] = True
    kk, jj, ii = np.nonzero(expand(rod, g, 2.0))
    assert (kk.min(), kk.max()) == (2, 6)  # 2 + 1.5 mm >= 3 mm: one slice beyond each end
    assert np.abs(ii - 10).max() <= math.floor((2.0 + 0.4) / 0.8 + 1e-9)  # 3 columns
    assert np.abs(jj - 4).max() <= math.floor((2.0 + 0.4) / 2.0 + 1e-9)  # 1 row
    assert not expand(rod, g, 1.4)[[2, 6]].any()  # 1.4 + 1.5 mm < 3 mm


def test_direction_of_each_anatomical_margin():
    g = aniso_grid(shape=(9, 15, 15))
    one = np.zeros(g.shape, bool)
    one[4, 7, 7] = True
    lps_axis = {"left": (2, +1), "right": (2, -1), "posterior": (1, +1)}
    lps_axis |= {"anterior": (1, -1), "superior": (0, +1), "inferior": (0, -1)}
    centre = np.array([4, 7, 7])
    for side, (axis, sign) in lps_axis.items():
        out = expand(one, g, Margin(**{side: 5.0}))
        idx = np.argwhere(out)
        moved = idx[:, axis] - centre[axis]
        assert np.all(sign * moved >= 0), side
        assert np.count_nonzero(moved) > 0, side
        others = [a for a in range(3) if a != axis]
        assert np.all(idx[:, others] == centre[others]), side


def test_flipped_axes_keep_anatomical_directions():
    m = Margin(right=2, left=6, anterior=1, posterior=4, superior=5, inferior=0)
    g = aniso_grid(shape=(14, 22, 30))
    flipped = ImageGrid(
        shape=g.shape,
        spacing_mm=g.spacing_mm,
        origin_mm=g.origin_mm,
        direction=(-1, 0, 0, 0, -1, 0, 0, 0, -1),
    )
    rng = np.random.default_rng(3)
    s = np.zeros(g.shape, bool)
    s[5:9, 8:14, 12:18] = rng.random((4, 6, 6)) < 0.6
    out = expand(s, g, m)
    # the same anatomy stored with every axis reversed
    out_flipped = expand(s[::-1, ::-1, ::-1], flipped, m)
    assert np.array_equal(out_flipped[::-1, ::-1, ::-1], out)


# ---------------------------------------------------------------------------- brute force


def small_case(seed, flip=False):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.choice([0.98, 1.5, 2.5], size=3))
    signs = rng.choice([-1.0, 1.0], size=3) if flip else np.ones(3)
    g = ImageGrid(
        shape=(12, 14, 14),
        spacing_mm=spacing,
        origin_mm=tuple(rng.uniform(-50, 50, 3)),
        direction=tuple(np.diag(signs).ravel()),
    )
    s = np.zeros(g.shape, bool)
    s[4:8, 5:9, 5:9] = rng.random((4, 4, 4)) < 0.5
    if rng.random() < 0.5:
        s[5:7, 5:8, 5:9] = True  # a solid part with flat faces
    vals = rng.choice([0.0, 0.5, 1.0, 2.0, 2.5, 3.3, 4.0], size=6)
    return g, s, Margin(*vals)


@pytest.mark.parametrize("seed", range(8))
def test_fast_method_matches_brute_force(seed):
    g, s, m = small_case(seed, flip=seed % 2 == 1)
    if m.is_zero:
        m = Margin.uniform(2.0)
    out = expand(s, g, m)
    ref = reference_power_distance(s, g, m)
    certain = np.abs(ref - 1.0) > 2e-3  # int16 fixed point: boundary band of 2e-3
    assert np.array_equal(out[certain], (ref <= 1.0)[certain])
    assert np.count_nonzero(~certain) <= 0.01 * out.size


@pytest.mark.parametrize(
    "margin",
    [
        Margin.uniform(12.0),
        Margin(right=9, left=12, anterior=6, posterior=10, superior=12, inferior=4),
    ],
    ids=["uniform", "asymmetric"],
)
def test_fast_method_matches_brute_force_at_the_poles_of_a_line_across_slices(margin):
    # a line of three voxels across 3 mm slices: two poles; with a 12 mm margin a pole's
    # point reaches further in-plane on the slices behind it than the middle voxel does
    g = ImageGrid(shape=(17, 25, 25), spacing_mm=(3.0, 1.5, 1.5), origin_mm=(0.0, 0.0, 0.0))
    s = np.zeros(g.shape, bool)
    s[7:10, 12, 12] = True
    out = expand(s, g, margin)
    ref = reference_power_distance(s, g, margin)
    certain = np.abs(ref - 1.0) > 2e-3
    assert np.array_equal(out[certain], (ref <= 1.0)[certain])
    assert np.count_nonzero(~certain) <= 0.01 * out.size


def test_shrink_matches_brute_force_on_the_complement():
    g, s, _ = small_case(101)
    m = Margin(right=1.0, left=2.0, anterior=0.5, posterior=1.5, superior=2.5, inferior=0.0)
    s[3:9, 4:10, 4:10] = True
    s[2, 6:8, 6:8] = True
    # shrink = complement of the expansion of the complement, margin mirrored; outside the
    # grid counts as outside, so embed in a grid padded by a wide empty border
    pad = 5
    big = ImageGrid(
        shape=tuple(n + 2 * pad for n in g.shape), spacing_mm=g.spacing_mm, origin_mm=(0, 0, 0)
    )
    sb = np.zeros(big.shape, bool)
    sb[pad:-pad, pad:-pad, pad:-pad] = s
    comp_ref = reference_power_distance(~sb, big, m.mirrored(), targets=sb)
    certain = np.abs(comp_ref - 1.0) > 2e-3
    out = shrink(sb, big, m)
    assert np.array_equal(out[certain], (sb & ~(comp_ref <= 1.0))[certain])
    assert out.any() and not out.all()


# ---------------------------------------------------------------------------- shrink, ring, wall


@pytest.mark.parametrize(("r", "m"), [(20.0, 3.0), (20.0, 6.0), (30.0, 10.0)])
def test_shrink_sphere_volume(r, m):
    g = grid_for(r + 2)
    s = sphere_mask(g, np.array(g.center_mm) + OFFSET_MM, r)
    out = shrink(s, g, m)
    assert not np.any(out & ~s)
    # measured -0.6 to -2.7 % (the centre-to-centre distance transform: +3 to +8 %)
    err = out.sum() * g.voxel_volume_mm3 / sphere_vol(r - m) - 1
    assert abs(err) <= 0.03, f"volume error {err:+.2%}"
    edt = ndimage.distance_transform_edt(s, sampling=g.spacing_mm) > m
    assert abs(err) < abs(edt.sum() * g.voxel_volume_mm3 / sphere_vol(r - m) - 1)


def test_shrink_applies_each_margin_on_its_own_side():
    g = aniso_grid(shape=(16, 20, 20))
    cube = np.zeros(g.shape, bool)
    cube[3:13, 5:15, 5:15] = True
    out = shrink(cube, g, Margin(superior=5.0))  # two 2.5 mm slices off the top
    assert np.array_equal(out, cube & (np.arange(16) < 11)[:, None, None])
    out = shrink(cube, g, Margin(left=1.0))  # one 0.98 mm column off the left (+i)
    expected = cube & (np.arange(20) < 14)[None, None, :]
    # away from the rims of the face exactly one column; on the rims (the first and last
    # slice, the first and last row) the sub-voxel surface estimate may take a second one
    rims = np.zeros(g.shape, bool)
    rims[[3, 12]] = True
    rims[:, [5, 14]] = True
    assert np.array_equal(out[~rims], expected[~rims])
    assert np.all(out[rims] <= expected[rims])
    assert np.all(out[rims] >= (cube & (np.arange(20) < 13)[None, None, :])[rims])


def test_ring_volume_is_the_difference_of_two_spheres():
    r, a, b = 15.0, 3.0, 8.0
    g = grid_for(r + b + 3)
    s = sphere_mask(g, np.array(g.center_mm) + OFFSET_MM, r)
    out = ring(s, g, a, b)
    assert not np.any(out & s)
    expected = sphere_vol(r + b) - sphere_vol(r + a)
    assert abs(out.sum() * g.voxel_volume_mm3 / expected - 1) <= 0.02
    assert np.array_equal(out, expand(s, g, b) & ~expand(s, g, a))


def test_ring_rejects_outer_smaller_than_inner():
    g = aniso_grid()
    with pytest.raises(InvalidMarginError, match="outer"):
        ring(np.zeros(g.shape, bool), g, 5.0, Margin(3, 5, 5, 5, 5, 5))


def test_wall_thickness():
    r, t = 20.0, 4.0
    g = grid_for(r + 2)
    centre = np.array(g.center_mm) + OFFSET_MM
    s = sphere_mask(g, centre, r)
    out = wall(s, g, t)
    assert not np.any(out & ~s)
    expected = sphere_vol(r) - sphere_vol(r - t)
    assert abs(out.sum() * g.voxel_volume_mm3 / expected - 1) <= 0.03
    z, y, x = g.axis_coordinates_mm()
    kk, jj, ii = np.nonzero(out)
    depth = r - np.sqrt(
        (x[ii] - centre[0]) ** 2 + (y[jj] - centre[1]) ** 2 + (z[kk] - centre[2]) ** 2
    )
    assert depth.max() <= t + VOXEL_DIAGONAL_MM / 2


# ---------------------------------------------------------------------------- degenerate


def test_empty_structure_in_and_out(grid, empty):
    for fn in (
        lambda: expand(empty, grid, 5.0),
        lambda: shrink(empty, grid, 5.0),
        lambda: ring(empty, grid, 1.0, 5.0),
        lambda: wall(empty, grid, 2.0),
        lambda: crop_away_from(empty, empty, grid, 3.0),
    ):
        out = fn()
        assert out.dtype == bool and out.shape == grid.shape and not out.any()


def test_zero_margin_is_identity_and_returns_a_copy(grid, sphere):
    for fn in (expand, shrink):
        out = fn(sphere, grid, 0.0)
        assert np.array_equal(out, sphere) and out is not sphere
    assert not ring(sphere, grid, 0.0, 0.0).any()
    assert not wall(sphere, grid, 0.0).any()


def test_inputs_are_not_modified(grid, sphere):
    before = sphere.copy()
    expand(sphere, grid, 3.0)
    shrink(sphere, grid, 3.0)
    assert np.array_equal(sphere, before)


def test_single_voxel_shrinks_to_nothing(grid, single_voxel):
    assert not shrink(single_voxel, grid, 0.5).any()


def test_zero_one_numbers_are_accepted(grid, sphere):
    assert np.array_equal(expand(sphere.astype(np.uint8), grid, 2.0), expand(sphere, grid, 2.0))


# ---------------------------------------------------------------------------- grid edge


def test_growing_past_the_grid_edge_raises_naming_structure_and_side():
    g = aniso_grid(shape=(10, 20, 20))
    s = np.zeros(g.shape, bool)
    s[8:10, 8:12, 8:12] = True  # touches the top slice
    with pytest.raises(MarginOutsideGridError, match=r"'CTV_Nodes'.*superior") as info:
        expand(s, g, 5.0, name="CTV_Nodes")
    assert "clip=True" in str(info.value)


def test_clip_warns_how_much_was_cut_and_keeps_the_inside_part():
    g = aniso_grid(shape=(10, 20, 20))
    s = np.zeros(g.shape, bool)
    s[8:10, 8:12, 0:3] = True  # touches the top slice and the right (-i) edge
    with pytest.warns(RtplanWarning, match=r"cc.*superior") as rec:
        out = expand(s, g, 5.0, clip=True, name="PTV")
    assert "right" in str(rec[0].message)
    big = g.pad(((3, 3), (3, 3), (6, 6)))
    sb = np.zeros(big.shape, bool)
    sb[3:-3, 3:-3, 6:-6] = s
    assert np.array_equal(expand(sb, big, 5.0)[3:-3, 3:-3, 6:-6], out)


def test_shrink_erodes_from_the_grid_edge():
    g = aniso_grid(shape=(6, 8, 8))
    full = np.ones(g.shape, bool)
    out = shrink(full, g, 1.0)
    assert np.array_equal(out[:, 1:-1, 1:-1], full[:, 1:-1, 1:-1])
    assert not out[:, 0].any() and not out[:, :, -1].any()


# ---------------------------------------------------------------------------- booleans, crop


def test_boolean_operations(grid):
    a = box_mask(grid, np.array(grid.center_mm) - 8, np.array(grid.center_mm) + 2)
    b = box_mask(grid, np.array(grid.center_mm) - 2, np.array(grid.center_mm) + 8)
    assert np.array_equal(union(a, b), a | b)
    assert np.array_equal(intersection(a, b), a & b)
    assert np.array_equal(difference(a, b), a & ~b)
    assert np.array_equal(union(a), a) and union(a) is not a
    assert union(a, b).sum() <= a.sum() + b.sum()


def test_crop_away_from_keeps_the_gap():
    g = aniso_grid(shape=(12, 30, 30))
    ptv = box_mask(g, np.array(g.center_mm) - 12, np.array(g.center_mm) + 12)
    rectum = np.zeros(g.shape, bool)
    rectum[:, 22:, :] = True  # posterior block (+j), to the grid edge
    out = crop_away_from(ptv, rectum, g, 3.0)
    assert not np.any(out & ~ptv)
    # the gap in rows: 3 mm / 0.98 mm -> rows 19, 20, 21 removed in addition to the rectum
    rows = np.flatnonzero(out.any(axis=(0, 2)))
    assert rows.max() == 18
    assert np.array_equal(crop_away_from(ptv, rectum, g), ptv & ~rectum)


def test_mismatched_grids_raise():
    g = aniso_grid()
    other = aniso_grid(origin=(0.0, 0.0, 0.0))
    m = np.zeros(g.shape, bool)
    with pytest.raises(GridMismatchError, match="'Rectum'"):
        crop_away_from(m, m, g, 2.0, avoid_grid=other, avoid_name="Rectum")
    with pytest.raises(GridMismatchError, match="same grid"):
        union(m, np.zeros((3, 4, 5), bool))
    with pytest.raises(InvalidMaskError, match="shape"):
        expand(np.zeros((3, 4, 5), bool), g, 2.0)


@pytest.mark.parametrize(
    "bad",
    [np.full((24, 40, 40), 2, np.uint8), np.full((24, 40, 40), 0.5), np.zeros((40, 40), bool)],
)
def test_non_boolean_masks_raise(bad):
    g = aniso_grid()
    with pytest.raises(InvalidMaskError):
        expand(bad, g, 2.0, name="GTV")
    with pytest.raises(InvalidMaskError):
        union(bad, bad)


def test_no_warning_when_inside_grid(grid, sphere):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expand(sphere, grid, 3.0)


def _point_dilation(mask, grid, margin):
    """Independent brute force: voxel centres within the octant ellipsoid of a centre of S.

    p is inside when some voxel centre q of ``mask`` has sum over axes of
    ((p - q)_axis / m_axis(sign))**2 <= 1, with the anatomical margin of each half-axis
    (LPS: +x left, +y posterior, +z superior). Zero margins allow no step on that side.
    """
    z, y, x = grid.axis_coordinates_mm()
    pts = np.stack(np.meshgrid(z, y, x, indexing="ij"), -1).reshape(-1, 3)
    src = pts[mask.reshape(-1)]
    d = pts[:, None, :] - src[None, :, :]  # (P, Q, 3) in (z, y, x) mm
    pos = (margin.superior, margin.posterior, margin.left)
    neg = (margin.inferior, margin.anterior, margin.right)
    total = np.zeros(d.shape[:2])
    for ax in range(3):
        semi = np.where(d[..., ax] >= 0, pos[ax], neg[ax])
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(
                semi > 0, (d[..., ax] / semi) ** 2, np.where(d[..., ax] == 0, 0, np.inf)
            )
        total += term
    return (total <= 1.0 + 1e-9).any(axis=1).reshape(grid.shape)


@pytest.mark.parametrize("seed", range(6))
def test_expand_is_bracketed_by_independent_point_dilations(seed):
    """The surface-aware result lies between point dilations by m - h/2 and m + h/2.

    Each border voxel grows from a point at most half a voxel (h = the largest voxel side)
    beyond its centre, so an independent brute-force dilation of the voxel centres by the
    physical ellipsoid brackets it: shrunk by h/2 it is inside the result, grown by h/2 it
    contains it.
    """
    g, s, m = small_case(200 + seed)
    if m.is_zero:
        m = Margin.uniform(3.0)
    h = max(g.spacing_mm) / 2
    out = expand(s, g, m)
    vals = m.as_dict()
    grown = Margin(**{k: v + h for k, v in vals.items()})
    shrunk = Margin(**{k: max(v - h, 0.0) for k, v in vals.items()})
    outer = _point_dilation(s, g, grown)
    inner = _point_dilation(s, g, shrunk) if all(v > h for v in vals.values()) else s
    assert not np.any(out & ~outer), "result reaches further than m + h/2 from every voxel centre"
    assert not np.any(inner & ~out), "result misses points within m - h/2 of a voxel centre"


# ------------------------------------------------------------------ argument checks

_PUBLIC_WITH_GRID = {
    "expand": lambda m, g, **kw: expand(m, g, 2.0, **kw),
    "shrink": lambda m, g, **kw: shrink(m, g, 2.0, **kw),
    "ring": lambda m, g, **kw: ring(m, g, 0.0, 2.0, **kw),
    "wall": lambda m, g, **kw: wall(m, g, 2.0, **kw),
    "crop_away_from": lambda m, g, **kw: crop_away_from(m, m, g, 2.0, **kw),
}


@pytest.mark.parametrize("func", sorted(_PUBLIC_WITH_GRID))
def test_the_grid_must_be_an_image_grid(func, grid, sphere):
    with pytest.raises(TypeError, match="grid must be an ImageGrid"):
        _PUBLIC_WITH_GRID[func](sphere, grid.shape)


@pytest.mark.parametrize("func", sorted(_PUBLIC_WITH_GRID))
def test_the_name_must_be_a_string(func, grid, sphere):
    with pytest.raises(TypeError, match="name"):
        _PUBLIC_WITH_GRID[func](sphere, grid, name=3)


@pytest.mark.parametrize("func", ["expand", "ring"])
def test_clip_must_be_true_or_false(func, grid, sphere):
    # a string used to count as True
    with pytest.raises(TypeError, match="clip"):
        _PUBLIC_WITH_GRID[func](sphere, grid, clip="no")
