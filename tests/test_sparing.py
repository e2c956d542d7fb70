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
from rtplan.sparing import OrganSparing, sparing_factor
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
    "bad", [dict(strength=1.0), dict(strength=-0.1), dict(length_mm=0.0), dict(organ="")]
)
def test_organ_sparing_refuses_bad_values(bad):
    kw = dict(organ="Rectum", strength=0.3, length_mm=10.0) | bad
    with pytest.raises(InvalidInputError):
        OrganSparing(**kw)


def test_sparing_lowers_organ_dose_by_the_factor_and_never_touches_the_ptv(case):
    grid, ss, course = case
    none = dataclasses.replace(DoseModelParameters(), imrt_sparing=())
    spare = dataclasses.replace(
        DoseModelParameters(), imrt_sparing=(OrganSparing("Rectum", 0.4, 10.0),)
    )
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


def test_hot_spot_spread_is_zero_mean_inside_and_nothing_outside(case):
    grid, ss, course = case
    flat = dataclasses.replace(DoseModelParameters(), imrt_sparing=(), imrt_hot_spot_spread=0.0)
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


def ndimage_depth(mask, grid):
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask, sampling=grid.spacing_mm)
