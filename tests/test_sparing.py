"""Tests of rtplan.sparing: organ sparing and hot-spot spread of the IMRT dose estimate."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from phantoms import box_mask, sphere_mask

from rtplan.dose_estimate import DoseModelParameters, estimate_course_dose, make_dose_grid
from rtplan.dvh import occupancy_on_grid
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.plan import Course, Target
from rtplan.sparing import (
    MAX_INTERFACE_YIELD,
    OrganSparing,
    apply_interface_yield,
    apply_organ_hold,
    apply_organ_sparing,
    interface_yield,
    spared_region,
    sparing_factor,
)
from rtplan.structures import Structure, StructureSet

CT = ImageGrid(shape=(40, 120, 120), spacing_mm=(2.5, 1.25, 1.25), origin_mm=(-75.0, -75.0, -50.0))
RX = 66.0


@pytest.fixture(scope="module")
def case():
    ptv = Structure("PTV", sphere_mask(CT, (0.0, 0.0, 0.0), 25.0), CT, role="ptv")
    # a slab behind the PTV, reaching into it by 5 mm (an organ wrapping the PTV's back)
    rectum = Structure("Rectum", box_mask(CT, (-12.0, 20.0, -30.0), (12.0, 60.0, 30.0)), CT)
    body = Structure("Body", np.ones(CT.shape, bool), CT, role="external")
    grid = make_dose_grid(CT, body=body)
    ss = StructureSet([ptv, rectum, body])
    course = Course("C", "imrt", 33, (Target(ptv, RX),))
    return grid, ss, course


def _signed_mm(grid, ptv):
    from scipy import ndimage

    inside = occupancy_on_grid(ptv, grid) >= 0.5
    out = ndimage.distance_transform_edt(~inside, sampling=grid.spacing_mm)
    return np.where(inside, -1.0, out)


def test_sparing_factor_closed_form():
    r = np.array([-10.0, 0.0, 5.0, 20.0, 1e9])
    f = sparing_factor(r, 0.4, 10.0)
    expected = [1.0, 1.0, 1 - 0.4 * (1 - math.exp(-0.5)), 1 - 0.4 * (1 - math.exp(-2.0)), 0.6]
    assert np.allclose(f, expected)
    assert np.all(np.diff(f[1:]) < 0)  # strictly lower with every mm outside


@pytest.mark.parametrize(
    "bad",
    [
        dict(strength=1.0),
        dict(strength=-0.1),
        dict(length_mm=0.0),
        dict(organ=""),
        dict(interface_yield=-0.01),
        dict(interface_yield=float("nan")),
        dict(hold_level=1.0),
        dict(hold_level=-0.1),
        dict(hold_level=float("nan")),
        dict(hold_length_mm=0.0),
    ],
)
def test_organ_sparing_refuses_bad_values(bad):
    kw = dict(organ="Rectum", strength=0.3, length_mm=10.0) | bad
    with pytest.raises(InvalidInputError):
        OrganSparing(**kw)


def test_sparing_lowers_organ_dose_by_the_factor_and_never_touches_the_ptv(case):
    grid, ss, course = case
    # no blend: exactly the voxels at least half inside the rectum are spared
    none = dataclasses.replace(DoseModelParameters(), imrt_sparing=(), imrt_sparing_blend_mm=0.0)
    spare = dataclasses.replace(none, imrt_sparing=(OrganSparing("Rectum", 0.4, 10.0),))
    plain = estimate_course_dose(course, grid, params=none, organs=ss)
    spared = estimate_course_dose(course, grid, params=spare, organs=ss)
    unaware = estimate_course_dose(course, grid, params=spare)  # no organs: nothing spared
    assert np.array_equal(plain, unaware)

    rectum = occupancy_on_grid(ss["Rectum"], grid) >= 0.5
    ptv = occupancy_on_grid(ss["PTV"], grid) >= 0.5
    r = _signed_mm(grid, ss["PTV"])
    # outside the rectum nothing changes, the PTV included (also where the rectum is in it)
    assert np.array_equal(spared[~rectum], plain[~rectum])
    assert np.array_equal(spared[ptv], plain[ptv])
    assert (rectum & ptv).any()
    # in the rectum outside the PTV: exactly the sparing factor of the distance
    out = rectum & ~ptv
    ratio = spared[out] / plain[out]
    # the model's distance has sub-voxel corrections: compare with the EDT to a voxel
    expected = sparing_factor(r[out] - 0.5 * min(grid.spacing_mm), 0.4, 10.0)
    assert np.allclose(ratio, expected, atol=0.03)
    # monotonic: along the axis away from the PTV, the spared dose falls, and falls more
    k, i = grid.shape[0] // 2, grid.shape[2] // 2
    line = [j for j in range(grid.shape[1]) if rectum[k, j, i] and not ptv[k, j, i]]
    prof_spared, prof_plain = spared[k, line, i], plain[k, line, i]
    assert len(line) > 8
    assert np.all(np.diff(prof_spared) < 0)
    assert np.all(np.diff(prof_spared / prof_plain) < 1e-6)


def test_hold_caps_the_organ_dose_in_closed_form_away_from_the_ptv():
    # the slab organ 20 < y < 40 mm (weight 1 inside, blend 0), the PTV y < 30 mm
    grid, y, inside, region = _slab_region(0.0)
    r = np.broadcast_to((y - 30.0)[None, :, None], grid.shape).astype(np.float32)
    rel = np.broadcast_to(np.where(y < 30.0, 1.03, 0.9)[None, :, None], grid.shape)
    rel = rel.astype(np.float32)
    held = rel.copy()
    hold = OrganSparing("A", 0.0, 1.0, hold_level=0.5, hold_length_mm=3.0)
    apply_organ_hold(held, r, {"A": region}, [hold])
    cap = 0.5 + 0.5 * np.exp(-np.maximum(r, 0.0) / 3.0)
    expected = np.where(inside & (r > 0), np.minimum(rel, cap), rel)
    assert np.allclose(held, expected, atol=1e-6)
    # the PTV (r <= 0) and the voxels outside the organ are never changed
    assert np.array_equal(held[r <= 0], rel[r <= 0])
    assert np.array_equal(held[~inside], rel[~inside])
    # the cap comes down to the level with distance: held dose falls with r in the organ
    line = held[2, :, 3][inside[2, :, 3] & (y > 30.0)]
    assert np.all(np.diff(line) <= 0) and line[-1] < 0.55 < 0.75 < line[0]
    # dose already below the cap is untouched
    low = np.full(grid.shape, 0.3, np.float32)
    apply_organ_hold(low, r, {"A": region}, [hold])
    assert np.all(low == np.float32(0.3))
    # no hold, or an organ without a region: untouched
    for sp, organs in ((dataclasses.replace(hold, hold_level=0.0), {"A": region}), (hold, {})):
        same = rel.copy()
        apply_organ_hold(same, r, organs, [sp])
        assert np.array_equal(same, rel)
    # two organs over the same voxels, caps crossing at r ~ 6 mm: the lower holds, once
    both = rel.copy()
    steep = OrganSparing("A", 0.0, 1.0, hold_level=0.6, hold_length_mm=1.0)
    slow = OrganSparing("B", 0.0, 1.0, hold_level=0.3, hold_length_mm=8.0)
    apply_organ_hold(both, r, {"B": region, "A": region}, [slow, steep])
    cap_a = 0.6 + 0.4 * np.exp(-np.maximum(r, 0.0) / 1.0)
    cap_b = 0.3 + 0.7 * np.exp(-np.maximum(r, 0.0) / 8.0)
    lowest = np.where(inside & (r > 0), np.minimum(rel, np.minimum(cap_a, cap_b)), rel)
    assert np.allclose(both, lowest, atol=1e-6)
    held_voxels = inside & (r > 0)
    assert (cap_a < cap_b)[held_voxels & (r < 6)].any() and (cap_b < cap_a)[held_voxels].any()


def test_hold_is_blended_across_the_organ_surface_by_the_weight():
    grid, _, _, region = _slab_region(6.0)  # blended: weight 0.5 at the surface
    weight = np.zeros(grid.size, np.float32)
    weight[region.index] = region.weight
    r = np.full(grid.shape, 50.0, np.float32)  # far from a PTV everywhere: cap = h
    held = np.full(grid.shape, 0.9, np.float32)
    apply_organ_hold(held, r, {"A": region}, [OrganSparing("A", 0.0, 1.0, hold_level=0.5)])
    flat = held.reshape(-1)
    # d - w (d - h): the full hold deep inside, half of it at the surface, none outside
    assert np.allclose(flat, 0.9 - weight * (0.9 - 0.5), atol=1e-6)
    assert flat.min() == pytest.approx(0.5, abs=1e-6) and flat.max() == np.float32(0.9)
    assert ((flat > 0.5 + 1e-3) & (flat < 0.9 - 1e-3)).any()  # bent in, not a step


def test_hold_in_the_estimate_never_touches_the_ptv_and_keeps_dose_falling(case):
    grid, ss, course = case
    none = dataclasses.replace(DoseModelParameters(), imrt_sparing=(), imrt_sparing_blend_mm=0.0)
    hold = OrganSparing("Rectum", 0.0, 10.0, hold_level=0.5, hold_length_mm=3.0)
    held_params = dataclasses.replace(none, imrt_sparing=(hold,))
    plain = estimate_course_dose(course, grid, params=none, organs=ss)
    held = estimate_course_dose(course, grid, params=held_params, organs=ss)
    rectum = occupancy_on_grid(ss["Rectum"], grid) >= 0.5
    ptv = occupancy_on_grid(ss["PTV"], grid) >= 0.5
    assert np.array_equal(held[~rectum], plain[~rectum])
    assert np.array_equal(held[ptv], plain[ptv])
    out = rectum & ~ptv
    assert np.all(held[out] <= plain[out])
    # far from the PTV (r > 20 mm, cap within 0.1 % of the level): min(plain, 0.5 Rx)
    r = _signed_mm(grid, ss["PTV"])
    far = out & (r > 20.0)
    assert far.any() and (plain[far] > 0.5 * RX).any()
    assert np.allclose(held[far], np.minimum(plain[far], 0.5 * RX), rtol=2e-3)
    # along the axis away from the PTV the held dose still falls
    k, i = grid.shape[0] // 2, grid.shape[2] // 2
    line = [j for j in range(grid.shape[1]) if rectum[k, j, i] and not ptv[k, j, i]]
    assert len(line) > 8 and np.all(np.diff(held[k, line, i]) <= 1e-6)
    # an SBRT course is never held nor spared
    sbrt = Course("S", "sbrt", 5, course.targets)
    spared_and_held = dataclasses.replace(
        none, imrt_sparing=(dataclasses.replace(hold, strength=0.4),)
    )
    assert np.array_equal(
        estimate_course_dose(sbrt, grid, params=spared_and_held, organs=ss),
        estimate_course_dose(sbrt, grid, params=none, organs=ss),
    )


def test_hot_spot_spread_is_zero_mean_inside_and_nothing_outside(case):
    grid, ss, course = case
    flat = dataclasses.replace(
        DoseModelParameters(),
        imrt_sparing=(),
        imrt_hot_spot_spread=0.0,
        imrt_hot_spot_volume_power=0.0,
    )
    spread = dataclasses.replace(flat, imrt_hot_spot_spread=0.02)
    a = estimate_course_dose(course, grid, params=flat, organs=ss)
    b = estimate_course_dose(course, grid, params=spread, organs=ss)
    ptv = occupancy_on_grid(ss["PTV"], grid) >= 0.5
    assert np.array_equal(a[~ptv], b[~ptv])
    deep = ptv & (ndimage_depth(ptv, grid) > 15.0)
    diff = (b - a)[deep] / RX
    assert abs(diff.mean()) < 0.004  # zero mean over a 15 mm-deep core
    assert 0.012 < diff.std() < 0.024  # the standard deviation set (fade ~95 % at 15 mm)
    assert (b[ptv] > 1.04 * RX).any() and not (a[ptv] > 1.04 * RX).any()


def _ptv_volume_cc(grid, ss):
    """The PTV's volume (cc) as the model sees it: its occupancy on the dose grid."""
    return float(occupancy_on_grid(ss["PTV"], grid).sum()) * np.prod(grid.spacing_mm) / 1e3


def ndimage_depth(mask, grid):
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask, sampling=grid.spacing_mm)


def _slab_region(blend_mm):
    """A slab organ 20 < y < 40 mm on a 2 mm grid, and its spared region."""
    grid = ImageGrid(shape=(6, 40, 8), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    y = grid.axis_coordinates_mm()[1]
    inside = np.zeros(grid.shape, bool)
    inside[:, (y > 20.0) & (y < 40.0), :] = True
    index = np.flatnonzero(inside)
    occupancy = np.ones(index.size, np.float32)
    return grid, y, inside, spared_region(index, occupancy, grid, blend_mm)


def test_spared_region_weight_is_the_smoothed_step_across_the_surface():
    blend = 6.0
    grid, y, _, region = _slab_region(blend)
    weight = np.zeros(grid.size)
    weight[region.index] = region.weight
    weight = weight.reshape(grid.shape)
    # the surface lies half a voxel beyond the outermost inside voxels: y = 21 and 39 mm;
    # across a flat surface the weight is Phi(d / sigma), sigma = blend / sqrt(2 pi)
    from scipy.special import ndtr

    d = np.minimum(y - 21.0, 39.0 - y)  # signed distance, > 0 inside
    expected = ndtr(d / (blend / math.sqrt(2 * math.pi)))
    assert np.allclose(weight[2, :, 3], expected, atol=0.03)  # sampled on 2 mm voxels
    core = (y > 28.0) & (y < 32.0)
    assert weight[2, core, 3].min() > 0.99 and weight[2, y < 12.0, 3].max() == 0.0
    assert np.all(region.weight > 0) and np.all(region.weight <= 1)
    # blend 0: exactly the inside voxels, weight 1
    _, _, inside0, region0 = _slab_region(0.0)
    assert np.array_equal(np.sort(region0.index), np.flatnonzero(inside0))
    assert np.all(region0.weight == 1)


def test_blended_sparing_has_no_step_at_the_organ_surface_and_spares_a_voxel_once():
    grid, y, _, region = _slab_region(6.0)
    _, _, _, sharp = _slab_region(0.0)
    r = np.broadcast_to((y - 10.0)[None, :, None], grid.shape).astype(np.float32)  # PTV y < 10
    sp = (OrganSparing("A", 0.5, 4.0),)
    ones = np.ones(grid.shape, np.float32)
    blended, stepped = ones.copy(), ones.copy()
    apply_organ_sparing(blended, r, {"A": region}, sp)
    apply_organ_sparing(stepped, r, {"A": sharp}, sp)
    # the largest jump between neighbouring voxels along y: a step without blend, a slope with
    jump_blended = np.abs(np.diff(blended[2, :, 3])).max()
    jump_stepped = np.abs(np.diff(stepped[2, :, 3])).max()
    assert jump_stepped > 0.4 and jump_blended < 0.5 * jump_stepped
    # deep inside: the full factor; beyond the Gaussian's reach outside: untouched
    deep = (y > 26.0) & (y < 34.0)
    assert np.allclose(blended[2, deep, 3], sparing_factor(r[2, deep, 3], 0.5, 4.0), atol=1e-3)
    assert np.all(blended[2, y < 12.0, 3] == 1.0)
    # the PTV (r <= 0) is never touched
    assert np.all(blended[r <= 0] == 1.0)
    # two organs over the same voxels: the stronger sparing holds, not the product
    both = ones.copy()
    apply_organ_sparing(
        both,
        r,
        {"A": region, "B": region},
        (OrganSparing("A", 0.3, 4.0), OrganSparing("B", 0.5, 4.0)),
    )
    assert np.allclose(both, blended, atol=1e-6)


def test_calibration_file_sets_the_profile_and_ceiling_defaults():
    from rtplan.sparing import CALIBRATION, parse_calibration

    cal = parse_calibration(
        'source = "x"\n[profile]\nsurface = 0.98\nplateau = 1.03\nplan_sum_ceiling = 1.08\n'
        "[hot_spot]\nspread = 0.02\ndepth_mm = 3\n"
    )
    assert (cal.surface, cal.plateau, cal.plan_sum_ceiling) == (0.98, 1.03, 1.08)
    assert (cal.hot_spot_spread, cal.hot_spot_depth_mm) == (0.02, 3.0)
    # keys left out: None, the tool defaults stay
    bare = parse_calibration('source = "x"\n[hot_spot]\nspread = 0.02\n')
    assert bare.surface is bare.plateau is bare.plan_sum_ceiling is bare.hot_spot_depth_mm is None
    with pytest.raises(InvalidInputError, match="plan_sum_ceiling"):
        parse_calibration('[profile]\nsurface = 1\nplateau = 1\nplan_sum_ceiling = "high"\n')
    # the shipped file is what the model's defaults are
    p = DoseModelParameters()
    assert p.imrt_surface == CALIBRATION.surface and p.imrt_plateau == CALIBRATION.plateau
    assert p.imrt_hot_spot_spread == CALIBRATION.hot_spot_spread
    assert p.imrt_hot_spot_volume_power == CALIBRATION.hot_spot_volume_power
    if CALIBRATION.plan_sum_ceiling is not None:
        assert p.plan_sum_ceiling == CALIBRATION.plan_sum_ceiling
    if CALIBRATION.hot_spot_depth_mm is not None:
        assert p.imrt_hot_spot_depth_mm == CALIBRATION.hot_spot_depth_mm


def test_interface_yield_grows_with_the_excess_volume_and_is_capped():
    assert interface_yield(0.05, 300.0, 300.0) == 0.0  # not beyond the reference volume
    assert interface_yield(0.05, 120.0, 300.0) == 0.0
    assert interface_yield(0.05, 1300.0, 300.0) == pytest.approx(0.05)  # 1,000 cc beyond
    assert interface_yield(0.05, 2300.0, 300.0) == pytest.approx(0.10)  # linear
    assert interface_yield(0.5, 5300.0, 300.0) == MAX_INTERFACE_YIELD
    assert interface_yield(0.0, 5300.0, 300.0) == 0.0


def test_interface_yield_factor_in_closed_form_near_the_ptv_surface_only():
    grid, y, inside, region = _slab_region(0.0)  # weight 1 in the organ, nothing else
    r = np.broadcast_to((y - 30.0)[None, :, None], grid.shape).astype(np.float32)  # PTV y < 30
    rel = np.ones(grid.shape, np.float32)
    apply_interface_yield(rel, r, {"A": region}, {"A": 0.06}, 2.5)
    expected = np.where(inside, 1.0 - 0.06 * np.exp(-np.abs(r) / 2.5), 1.0)
    assert np.allclose(rel, expected, atol=1e-6)
    # largest at the surface, both sides; gone 10 mm (4 bands) away
    line = rel[2, :, 3]
    at_surface = np.abs(y - 30.0) <= 1.0
    assert line[at_surface].min() < 1 - 0.06 * 0.6
    assert np.all(line[inside[2, :, 3] & (np.abs(y - 30.0) >= 9.0)] > 1 - 0.06 * 0.03)
    assert np.all(line[~inside[2, :, 3]] == 1.0)  # outside the organ: untouched
    # no yield, or an organ without a region: untouched
    for yields in ({"A": 0.0}, {"B": 0.06}):
        same = np.ones(grid.shape, np.float32)
        apply_interface_yield(same, r, {"A": region}, yields, 2.5)
        assert np.all(same == 1.0)
    # two organs over the same voxels: the larger yield holds, once
    both = np.ones(grid.shape, np.float32)
    apply_interface_yield(both, r, {"A": region, "B": region}, {"A": 0.02, "B": 0.06}, 2.5)
    assert np.allclose(both, rel, atol=1e-6)


def test_only_a_course_level_larger_than_the_reference_volume_yields(case):
    grid, ss, course = case  # a 65 cc PTV whose back lies in the rectum
    plain = dataclasses.replace(
        DoseModelParameters(),
        imrt_sparing=(OrganSparing("Rectum", 0.4, 10.0),),
        imrt_sparing_blend_mm=0.0,
    )
    yielding = dataclasses.replace(
        plain, imrt_sparing=(OrganSparing("Rectum", 0.4, 10.0, interface_yield=0.05),)
    )
    a = estimate_course_dose(course, grid, params=plain, organs=ss)
    b = estimate_course_dose(course, grid, params=yielding, organs=ss)
    assert np.array_equal(a, b)  # 65 cc < 300 cc: the fitted profile already holds
    # the same PTV counted against a 15 cc reference: 50 cc beyond it, y = 0.0025
    small_ref = dataclasses.replace(yielding, imrt_reference_volume_cc=15.0)
    no_yield = dataclasses.replace(plain, imrt_reference_volume_cc=15.0)
    a = estimate_course_dose(course, grid, params=no_yield, organs=ss)
    c = estimate_course_dose(course, grid, params=small_ref, organs=ss)
    rectum = occupancy_on_grid(ss["Rectum"], grid) >= 0.5
    r = _signed_mm(grid, ss["PTV"])
    volume_cc = _ptv_volume_cc(grid, ss)
    y = 0.05 * (volume_cc - 15.0) / 1000.0
    assert np.array_equal(c[~rectum], a[~rectum])  # only the organ
    near = rectum & (np.abs(r) <= 2.5)
    assert np.allclose(c[near] / a[near], 1 - y * np.exp(-np.abs(r[near]) / 2.5), atol=0.004)
    assert np.all(c[near] < a[near])


def test_hot_spot_spread_grows_with_the_level_volume_as_the_fitted_power(case):
    grid, ss, course = case
    base = dataclasses.replace(
        DoseModelParameters(),
        imrt_sparing=(),
        imrt_hot_spot_spread=0.02,
        imrt_hot_spot_volume_power=0.25,
        # the reference volume scales the fall-off outside too: held here
        imrt_penumbra_volume_power=0.0,
        imrt_tail_volume_power=0.0,
    )
    ptv = occupancy_on_grid(ss["PTV"], grid) >= 0.5
    deep = ptv & (ndimage_depth(ptv, grid) > 15.0)
    volume_cc = _ptv_volume_cc(grid, ss)
    flat = estimate_course_dose(
        course, grid, params=dataclasses.replace(base, imrt_hot_spot_spread=0.0), organs=ss
    )
    stds = []
    for reference_cc in (volume_cc, volume_cc / 16.0):  # level 1x and 16x the reference
        d = estimate_course_dose(
            course,
            grid,
            params=dataclasses.replace(base, imrt_reference_volume_cc=reference_cc),
            organs=ss,
        )
        stds.append(float(((d - flat)[deep] / RX).std()))
    assert stds[1] / stds[0] == pytest.approx(16.0**0.25, rel=1e-3)
    # power 0: the level's volume does not matter
    zero = dataclasses.replace(base, imrt_hot_spot_volume_power=0.0)
    d1 = estimate_course_dose(
        course, grid, params=dataclasses.replace(zero, imrt_reference_volume_cc=9.0), organs=ss
    )
    d2 = estimate_course_dose(course, grid, params=zero, organs=ss)
    assert np.array_equal(d1, d2)


def test_calibration_file_reads_the_volume_power_and_interface_yields():
    from rtplan.sparing import parse_calibration

    cal = parse_calibration(
        'source = "x"\n[hot_spot]\nspread = 0.03\nvolume_power = 0.25\n'
        "[sparing.Rectum]\nstrength = 0.6\nlength_mm = 8\ninterface_yield = 0.05\n"
        "[sparing.Bladder]\nstrength = 0.4\nlength_mm = 8\n"
    )
    assert cal.hot_spot_volume_power == 0.25
    yields = {s.organ: s.interface_yield for s in cal.sparing}
    assert yields == {"Rectum": 0.05, "Bladder": 0.0}
    assert parse_calibration('source = "x"\n[hot_spot]\nspread = 0.03\n').hot_spot_volume_power == 0
    with pytest.raises(InvalidInputError, match="interface yield"):
        parse_calibration("[sparing.Rectum]\nstrength = 0.6\nlength_mm = 8\ninterface_yield = -1\n")


def test_calibration_file_reads_the_holds():
    from rtplan.sparing import parse_calibration

    cal = parse_calibration(
        "[sparing.Femur_Head_L]\nstrength = 0\nlength_mm = 1\nhold_level = 0.47\n"
        "hold_length_mm = 2\n[sparing.Bladder]\nstrength = 0.4\nlength_mm = 8\n"
    )
    holds = {s.organ: (s.strength, s.hold_level, s.hold_length_mm) for s in cal.sparing}
    assert holds == {"Femur_Head_L": (0.0, 0.47, 2.0), "Bladder": (0.4, 0.0, 2.0)}
    with pytest.raises(InvalidInputError, match=r"\[sparing.Rectum\].*hold level"):
        parse_calibration("[sparing.Rectum]\nstrength = 0.6\nlength_mm = 8\nhold_level = 1.2\n")
    with pytest.raises(InvalidInputError, match="unknown keys.*hold_levle"):
        parse_calibration("[sparing.Rectum]\nstrength = 0.6\nlength_mm = 8\nhold_levle = 0.5\n")
    with pytest.raises(InvalidInputError, match="must be a table"):
        parse_calibration("[sparing]\nRectum = 3\n")


def test_calibration_file_reads_the_fall_off():
    from rtplan.dose_estimate import TOOL_DEFAULT_FALL_OFF
    from rtplan.sparing import FALL_OFF_KEYS, FallOff, parse_calibration

    cal = parse_calibration(
        'source = "x"\n[fall_off]\npenumbra_mm = 12.5\npenumbra_volume_power = 0.3\n'
        "tail_fraction = 0.3\ntail_volume_power = 0.25\ntail_mm = 150\ntail_z_mm = 13\n"
        "tail_z_floor = 0.05\n"
    )
    assert cal.fall_off == FallOff(12.5, 0.3, 0.3, 0.25, 150.0, 13.0, 0.05)
    assert parse_calibration('source = "x"\n').fall_off is None
    with pytest.raises(InvalidInputError, match="tail_fraction must be a number"):
        parse_calibration("[fall_off]\npenumbra_mm = 12.5\npenumbra_volume_power = 0.3\n")
    # the shipped file's literal values are the defaults (read here with tomllib alone)
    from importlib.resources import files

    import tomllib

    shipped = tomllib.loads(files("rtplan").joinpath("model_calibration.toml").read_text())
    p = DoseModelParameters()
    for key, value in shipped["fall_off"].items():
        assert getattr(p, f"imrt_{key}") == value, key
    assert p.imrt_tail_reference_radius_mm == 0  # the fitted powers replace it
    # out-of-range values and unknown keys are refused when the file is read
    good = {k: getattr(TOOL_DEFAULT_FALL_OFF, k) for k in FALL_OFF_KEYS}
    for key, bad in (
        ("penumbra_mm", -1.0),
        ("tail_mm", 0.0),
        ("tail_volume_power", -0.1),
        ("tail_fraction", 1.0),
        ("tail_z_floor", 1.5),
    ):
        text = "[fall_off]\n" + "".join(f"{k} = {v}\n" for k, v in {**good, key: bad}.items())
        with pytest.raises(InvalidInputError, match=key):
            parse_calibration(text)
    with pytest.raises(InvalidInputError, match="unknown keys"):
        parse_calibration(
            "[fall_off]\n" + "".join(f"{k} = {v}\n" for k, v in good.items()) + "x = 1\n"
        )
    with pytest.raises(InvalidInputError, match="must be a table"):
        parse_calibration("fall_off = 3\n")


def test_the_comparison_names_every_term_and_parameter_of_the_model():
    from rtplan.compare import _describe_model

    params = dataclasses.replace(
        DoseModelParameters(),
        imrt_sparing=(
            OrganSparing("Rectum", 0.6, 8.0, interface_yield=0.08),
            OrganSparing("Bladder", 0.4, 8.0),
        ),
    )
    text = _describe_model(params, 2.5)
    assert "Rectum s=0.6 L=8 mm yield=0.08/1000 cc" in text
    assert "; Bladder s=0.4 L=8 mm)" in text  # no yield: nothing added
    held = dataclasses.replace(
        params, imrt_sparing=(OrganSparing("Femur_Head_L", 0.0, 1.0, hold_level=0.47),)
    )
    assert "Femur_Head_L s=0 L=1 mm hold=0.47 Rx L_h=2 mm)" in _describe_model(held, 2.5)
    for name in ("imrt_hot_spot_volume_power", "imrt_reference_volume_cc", "imrt_yield_band_mm"):
        assert f"{name}=" in text
    assert "interface yield" in text


def test_spared_organ_names_resolve_synonyms_and_skip_empty_organs():
    from rtplan.dose_estimate import spared_organ_names

    rectum = Structure("RECTUM", box_mask(CT, (-12.0, 20.0, -30.0), (12.0, 60.0, 30.0)), CT)
    bladder = Structure("Bladder", np.zeros(CT.shape, bool), CT)  # drawn empty
    bulb = Structure("PenileBulb", sphere_mask(CT, (0.0, 30.0, -40.0), 6.0), CT)
    ss = StructureSet([bulb, bladder, rectum])
    spared = [
        OrganSparing("Rectum", 0.5, 8.0),
        OrganSparing("Bladder", 0.25, 4.0),
        OrganSparing("PenileBulb", 0.0, 2.0, hold_level=0.34),  # held, not spared
        OrganSparing("Femur_Head_L", 0.2, 30.0),  # not drawn
    ]
    params = DoseModelParameters(imrt_sparing=tuple(spared))
    # the anatomy's names, in the model's order
    assert spared_organ_names(ss, params) == ("RECTUM", "PenileBulb")
    assert spared_organ_names(ss, DoseModelParameters(imrt_sparing=())) == ()
    assert spared_organ_names(None, params) == ()
