"""Tests of rtplan.level_zones: which intended level governs each dose voxel.

Expected maps are built from scratch: a Euclidean distance transform over the whole grid
(the module crops it to boxes), the rule written out voxel class by voxel class.
"""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import box_mask, random_box_or_sphere, sphere_mask
from scipy import ndimage

from rtplan.dvh import structure_on_dose_grid
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.level_zones import HOT_SPOT_LIMIT_PCT, LEVEL_REACH_MM, _shared_cc, level_zones
from rtplan.plan import TargetLevel
from rtplan.structures import Structure

GRID = ImageGrid(shape=(32, 40, 40), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(0.0, 0.0, 0.0))
AB = 1.5
FACTOR = 1.11
PELVIS = ((45.0, 25),)  # 42.4 Gy EQD2
BED = ((45.0, 25), (21.6, 12))  # 62.8 Gy EQD2; 107 % of it: 69.8 Gy EQD2
NODE = ((60.0, 25),)  # 66.9 Gy EQD2: within the bed's 107 %
SIB = ((74.0, 37),)  # 74.0 Gy EQD2: above it, a boost


def _level(name, mask, parts, courses=()):
    """A level; ``courses``: indices of the courses treating it (one per part)."""
    ptv = Structure(name, mask, GRID, role="ptv")
    return TargetLevel(ptv, parts, ("imrt",) * len(parts), tuple(courses))


def _eqd2(parts):
    return sum(d * (d / n + AB) / (2 + AB) for d, n in parts)


def _distance_mm(mask):
    return ndimage.distance_transform_edt(~mask, sampling=GRID.spacing_mm)


def test_the_grid_footprints_are_the_masks():
    """The premise of the expected maps below: on its own grid a PTV touches its mask."""
    bed = _level("PTVsb_6660", sphere_mask(GRID, (48, 48, 40), 20.0), BED)
    z = level_zones([bed], GRID, AB)
    np.testing.assert_array_equal(z.footprints[0], bed.ptv.mask)


def test_a_level_within_the_hot_spot_limit_governs_only_its_reach():
    """The bed beside a node boost that overlaps it in part: the node's level governs the
    bed within 5 mm of the node, the bed's own level the rest (it was the node's level over
    the whole bed)."""
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    node_mask = sphere_mask(GRID, (72, 48, 40), 8.0)
    assert np.any(bed_mask & node_mask) and np.any(bed_mask & ~node_mask)
    bed, node = _level("PTVsb_6660", bed_mask, BED), _level("PTVn1_6000", node_mask, NODE)
    z = level_zones([node, bed], GRID, AB)
    assert [lv.name for lv in z.levels] == ["PTVsb_6660", "PTVn1_6000"]  # ranked by EQD2
    assert z.containers == frozenset()
    near = _distance_mm(node_mask) <= LEVEL_REACH_MM
    expected = np.full(GRID.shape, -1)
    expected[bed_mask] = np.where(near[bed_mask], 1, 0)
    expected[node_mask] = 1
    np.testing.assert_array_equal(z.governing, expected)
    assert np.any(expected[bed_mask] == 0) and np.any(expected[bed_mask & ~node_mask] == 1)
    ceiling = z.ceiling_eqd2_gy(FACTOR)
    far_bed = bed_mask & ~near
    np.testing.assert_allclose(ceiling[far_bed], FACTOR * _eqd2(BED))
    np.testing.assert_allclose(ceiling[near & bed_mask], FACTOR * _eqd2(NODE))
    np.testing.assert_allclose(ceiling[~(bed_mask | node_mask)], FACTOR * _eqd2(NODE))


def test_a_boost_makes_a_container_governed_by_its_boosts_and_their_neighbours():
    """The pelvic PTV overlapped by the bed and a node boost: within 5 mm of the bed the
    bed's level, within 5 mm of the node the node's, elsewhere the highest overlapping
    (a sequential boost's fall-off inside it is the plan's)."""
    pelvis_mask = box_mask(GRID, (10, 10, 10), (90, 90, 60))
    bed_mask = sphere_mask(GRID, (40, 50, 55), 15.0)  # sticks out of the pelvic PTV
    node_mask = sphere_mask(GRID, (75, 50, 30), 6.0)  # > 10 mm from the bed
    assert _distance_mm(bed_mask)[node_mask].min() > 2 * LEVEL_REACH_MM
    assert np.any(bed_mask & ~pelvis_mask)
    levels = [
        _level("PTVn_4500", pelvis_mask, PELVIS),
        _level("PTVsb_6660", bed_mask, BED),
        _level("PTVn1_6000", node_mask, NODE),
    ]
    z = level_zones(levels, GRID, AB)
    assert z.containers == frozenset({"PTVn_4500"})
    near_bed = _distance_mm(bed_mask) <= LEVEL_REACH_MM
    near_node = _distance_mm(node_mask) <= LEVEL_REACH_MM
    expected = np.full(GRID.shape, -1)
    pelvis_only = pelvis_mask & ~bed_mask & ~node_mask
    expected[pelvis_only] = 2  # the highest overlapping: the node
    expected[pelvis_only & near_bed] = 1
    expected[pelvis_only & near_node] = 2
    expected[bed_mask] = 1
    expected[node_mask] = 2
    np.testing.assert_array_equal(z.governing, expected)
    assert np.any(expected[pelvis_only] == 1)


def _random_levels(rng, n):
    schemes = [PELVIS, BED, NODE, SIB]
    out = []
    for k in range(n):
        centre = rng.uniform([10, 10, 10], [90, 90, 70])
        mask = sphere_mask(GRID, tuple(centre), float(rng.uniform(4.0, 25.0)))
        out.append(_level(f"PTV{k}", mask, schemes[int(rng.integers(len(schemes)))]))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_no_ptv_is_held_below_its_own_level(seed):
    """Whatever the geometry: every voxel of a PTV gets at least the factor times its own
    level, at most the factor times the highest level, and outside every PTV the highest."""
    rng = np.random.default_rng(seed)
    levels = _random_levels(rng, int(rng.integers(2, 6)))
    z = level_zones(levels, GRID, AB)
    ceiling = z.ceiling_eqd2_gy(FACTOR)
    top = FACTOR * max(_eqd2(lv.parts) for lv in levels)
    anywhere = np.zeros(GRID.shape, bool)
    for lv in levels:
        m = lv.ptv.mask
        assert np.all(ceiling[m] >= FACTOR * _eqd2(lv.parts) - 1e-9), lv.name
        anywhere |= m
    assert np.all(ceiling <= top + 1e-9)
    np.testing.assert_allclose(ceiling[~anywhere], top)
    assert np.all((z.governing >= 0) == anywhere)


def test_a_lower_ptv_touching_a_container_does_not_lower_it():
    """The bed around a local-boost SIB (a container) and a pelvic PTV overlapping the bed's
    edge by one voxel: the bed is held at no less than its own level anywhere (a rule tried
    on 2026-12-05 held it at 0.676 times that), the SIB at its own."""
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    sib_mask = sphere_mask(GRID, (48, 48, 40), 6.0)
    pelvis_mask = box_mask(GRID, (66, 0, 0), (100, 100, 80))
    edge = bed_mask & pelvis_mask
    assert 0 < edge.sum() < 0.05 * bed_mask.sum()
    levels = [
        _level("PTVn_4500", pelvis_mask, PELVIS, (0,)),
        _level("PTVsb_6660", bed_mask, BED, (0, 1)),
        _level("PTVp_7400", sib_mask, ((45.0, 25), (29.0, 12)), (0, 1)),
    ]
    z = level_zones(levels, GRID, AB)
    # the bed's share in the pelvic PTV is under SEQUENTIAL_FRACTION: no boost of it
    assert z.containers == frozenset({"PTVsb_6660"})
    ceiling = z.ceiling_eqd2_gy(FACTOR)
    sib = _eqd2(((45.0, 25), (29.0, 12)))
    assert ceiling[bed_mask].min() == pytest.approx(FACTOR * _eqd2(BED))
    np.testing.assert_allclose(ceiling[edge], FACTOR * _eqd2(BED))
    np.testing.assert_allclose(ceiling[sib_mask], FACTOR * sib)
    # the bed away from its edge keeps the SIB's level: the boost's fall-off is the plan's
    inner = bed_mask & (_distance_mm(pelvis_mask) > LEVEL_REACH_MM)
    np.testing.assert_allclose(ceiling[inner], FACTOR * sib)


def _face_max(arr):
    """Maximum over each voxel and its six face neighbours (edges: the voxel's own)."""
    out = arr.copy()
    for axis in range(3):
        for shift in (1, -1):
            rolled = np.roll(arr, shift, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = 0 if shift == 1 else -1
            rolled[tuple(edge)] = arr[tuple(edge)]
            out = np.maximum(out, rolled)
    return out


def test_check_zones_read_a_voxel_with_its_neighbours():
    """The bed's parts for the hot-spot check: each voxel in the part of the highest level
    governing it or a face neighbour (the DVH samples it with them), a partition of the bed."""
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    node_mask = sphere_mask(GRID, (72, 48, 40), 8.0)
    bed, node = _level("PTVsb_6660", bed_mask, BED), _level("PTVn1_6000", node_mask, NODE)
    z = level_zones([bed, node], GRID, AB)
    zones = z.check_zones(bed)
    assert [lv.name for lv, _ in zones] == ["PTVsb_6660", "PTVn1_6000"]
    union = np.zeros(GRID.shape, int)
    for _, m in zones:
        union += m
    np.testing.assert_array_equal(union, bed_mask.astype(int))
    expected = _face_max(z.governing)
    np.testing.assert_array_equal(zones[1][1], bed_mask & (expected == 1))
    d = _distance_mm(node_mask)
    # a ring beyond the reach that is read with the node's level: next to a raised voxel
    assert np.any(zones[1][1] & (d > LEVEL_REACH_MM))
    assert not np.any(zones[1][1] & (d > LEVEL_REACH_MM + 2.5))
    # the node's own zones: all its own
    [(level, m)] = z.check_zones("PTVn1_6000")
    assert level.name == "PTVn1_6000" and np.array_equal(m, node_mask)


def test_levels_of_one_scheme_do_not_govern_each_other():
    """Two node boosts of the same scheme side by side: neither is higher, each is read
    against its own level; nor is either a container of the other."""
    a = _level("PTVn1_6000", sphere_mask(GRID, (40, 48, 40), 8.0), NODE)
    b = _level("PTVn2_6000", sphere_mask(GRID, (52, 48, 40), 8.0), NODE)
    assert np.any(a.ptv.mask & b.ptv.mask)
    z = level_zones([a, b], GRID, AB)
    assert z.containers == frozenset()
    for lv in (a, b):
        [(level, m)] = z.check_zones(lv)
        assert level is lv and np.array_equal(m, lv.ptv.mask)


def test_a_container_needs_a_level_above_its_hot_spot_limit():
    """The threshold is the target's own 107 % (every course's part scaled, in EQD2)."""
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    inner = sphere_mask(GRID, (48, 48, 40), 8.0)
    limit_eqd2 = _eqd2(tuple((HOT_SPOT_LIMIT_PCT / 100 * d, n) for d, n in BED))
    for dose, container in ((0.99, False), (1.01, True)):
        # one fraction scheme whose EQD2 is just below / above the bed's 107 %
        d = dose * limit_eqd2  # at 2 Gy per fraction EQD2 equals the physical dose
        boost = _level("PTVb", inner, ((d, round(d / 2.0)),))
        z = level_zones([_level("PTVsb_6660", bed_mask, BED), boost], GRID, AB)
        assert ("PTVsb_6660" in z.containers) is container, dose


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levels": []}, "at least one"),
        ({"alpha_beta_gy": 0.0}, "alpha_beta"),
        ({"alpha_beta_gy": float("nan")}, "alpha_beta"),
        ({"reach_mm": -1.0}, "reach_mm"),
    ],
)
def test_bad_input_is_refused(kwargs, match):
    bed = _level("PTVsb_6660", sphere_mask(GRID, (48, 48, 40), 10.0), BED)
    args = {"levels": [bed], "dose_grid": GRID, "alpha_beta_gy": AB} | kwargs
    with pytest.raises(InvalidInputError, match=match):
        level_zones(**args)


def test_courses_for_some_levels_only_are_refused():
    m = sphere_mask(GRID, (48, 48, 40), 10.0)
    with pytest.raises(InvalidInputError, match="every level"):
        level_zones([_level("A", m, BED, (0, 1)), _level("B", m, NODE)], GRID, AB)


def test_sbrt_levels_and_repeated_names_are_refused():
    m = sphere_mask(GRID, (48, 48, 40), 10.0)
    sbrt = TargetLevel(Structure("PTV_L4", m, GRID, role="ptv"), ((30.0, 5),), ("sbrt",))
    with pytest.raises(InvalidInputError, match="SBRT"):
        level_zones([sbrt], GRID, AB)
    bed = _level("PTVsb_6660", m, BED)
    with pytest.raises(InvalidInputError, match="unique"):
        level_zones([bed, _level("PTVsb_6660", m, NODE)], GRID, AB)
    z = level_zones([bed], GRID, AB)
    with pytest.raises(InvalidInputError, match="no conventional level"):
        z.check_zones("PTVx")
    with pytest.raises(InvalidInputError, match="factor"):
        z.ceiling_eqd2_gy(0.0)


def test_a_container_near_a_lower_ptv_does_not_lower_a_higher_one_it_holds():
    """The pelvic PTV holds the bed (itself a container, around a SIB); a 50 Gy PTV lies
    beside the bed without touching it. The pelvic PTV near that PTV is governed by its
    level, below the bed's: where the two hold the same voxel the bed keeps its own."""
    pelvis_mask = box_mask(GRID, (0, 0, 0), (100, 100, 80))
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    sib_mask = sphere_mask(GRID, (48, 48, 40), 6.0)
    side_mask = sphere_mask(GRID, (76, 48, 40), 6.0)
    gap = _distance_mm(bed_mask)[side_mask].min()
    assert 0 < gap <= LEVEL_REACH_MM
    levels = [
        _level("PTVn_4500", pelvis_mask, PELVIS),
        _level("PTVsb_6660", bed_mask, BED),
        _level("PTVp_7400", sib_mask, SIB),
        _level("PTV_5000", side_mask, ((50.0, 25),)),
    ]
    z = level_zones(levels, GRID, AB)
    assert z.containers == frozenset({"PTVn_4500", "PTVsb_6660"})
    ceiling = z.ceiling_eqd2_gy(FACTOR)
    near_side = bed_mask & (_distance_mm(side_mask) <= LEVEL_REACH_MM)
    assert near_side.any()
    np.testing.assert_allclose(ceiling[near_side], FACTOR * _eqd2(BED))
    assert ceiling[bed_mask].min() == pytest.approx(FACTOR * _eqd2(BED))
    # the pelvic PTV alone near the 50 Gy PTV: that level
    pelvis_near = pelvis_mask & ~bed_mask & ~side_mask & (_distance_mm(side_mask) <= 2.5)
    pelvis_near &= _distance_mm(bed_mask) > LEVEL_REACH_MM
    assert pelvis_near.any()
    np.testing.assert_allclose(ceiling[pelvis_near], FACTOR * 50.0)


# a CT grid twice as fine as the dose grid, voxel-aligned: PTVs that only share partly
# occupied dose voxels
FINE = ImageGrid(shape=(64, 80, 80), spacing_mm=(1.25, 1.25, 1.25), origin_mm=(0.0, 0.0, 0.0))
DOSE = ImageGrid(shape=(32, 40, 40), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(0.625, 0.625, 0.625))


def _fine_level(name, mask, parts, courses):
    ptv = Structure(name, mask, FINE, role="ptv")
    return TargetLevel(ptv, parts, ("imrt",) * len(parts), tuple(courses))


def _fine_distance_mm(mask):
    return ndimage.distance_transform_edt(~mask, sampling=FINE.spacing_mm)


def _on_dose(mask_fine):
    """Dose voxels a fine mask touches."""
    return mask_fine.reshape(32, 2, 40, 2, 40, 2).any(axis=(1, 3, 5))


def _far_from(mask_fine, mm):
    """Dose voxels whose centre is more than ``mm`` from every voxel of a fine mask."""
    d = _fine_distance_mm(mask_fine)
    return d.reshape(32, 2, 40, 2, 40, 2).min(axis=(1, 3, 5)) > mm


LOCAL_SIB = ((45.0, 25), (29.0, 12))  # 74.9 Gy EQD2, above the bed's 107 %


def test_a_sib_beside_the_bed_is_no_boost_of_it():
    """A SIB of the bed's courses beside the bed, 0.75 mm away: they share partly occupied
    dose voxels only. The bed is no container: away from the SIB its own level governs
    (a first version of this rule held the whole bed at the SIB's level: 110.4 %)."""
    bed_mask = sphere_mask(FINE, (50.0, 50.0, 40.0), 20.0)
    sib_mask = sphere_mask(FINE, (76.75, 50.0, 40.0), 6.0)
    gap = _fine_distance_mm(bed_mask)[sib_mask].min()
    assert 0.5 < gap < 1.5 and np.any(_on_dose(bed_mask) & _on_dose(sib_mask))
    bed = _fine_level("PTVsb_6660", bed_mask, BED, (0, 1))
    sib = _fine_level("PTVp_7400", sib_mask, LOCAL_SIB, (0, 1))
    z = level_zones([bed, sib], DOSE, AB)
    assert z.containers == frozenset()
    far = _on_dose(bed_mask) & _far_from(sib_mask, LEVEL_REACH_MM + 1.25)
    assert far.sum() > 0.8 * _on_dose(bed_mask).sum()
    np.testing.assert_array_equal(z.governing[far], 0)


def test_a_node_above_the_beds_limit_overlapping_it_in_part_is_no_boost_of_it():
    """A 62.5 Gy node boost (71.4 Gy EQD2, above the bed's 107 %) of the pelvic course,
    overlapping the bed by 10 mm: not nested, not sequential, so no boost of the bed."""
    bed_mask = sphere_mask(FINE, (50.0, 50.0, 40.0), 20.0)
    node_mask = sphere_mask(FINE, (69.0, 50.0, 40.0), 9.0)
    assert 0.1 < (bed_mask & node_mask).sum() / node_mask.sum() < 0.5
    bed = _fine_level("PTVsb_6660", bed_mask, BED, (0, 1))
    node = _fine_level("PTVn1_6250", node_mask, ((62.5, 25),), (0,))
    assert bed.scale_giving_eqd2(node.eqd2_gy(AB), AB) > HOT_SPOT_LIMIT_PCT / 100
    z = level_zones([bed, node], DOSE, AB)
    assert z.containers == frozenset()
    far = _on_dose(bed_mask) & _far_from(node_mask, LEVEL_REACH_MM + 1.25)
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 0)
    # the same node given by a course of its own (sequential) is a boost of the bed
    seq = _fine_level("PTVn1_6250", node_mask, ((62.5, 25),), (2,))
    assert level_zones([bed, seq], DOSE, AB).containers == frozenset({"PTVsb_6660"})


def _pelvis_bed_sib(pelvis_to_x, sib_xy=(43.0, 50.0)):
    """Pelvic PTV (course 0) up to ``pelvis_to_x`` mm, bed (courses 0, 1) from x = 30 mm,
    a local SIB (courses 0, 1) in the bed."""
    bed_mask = sphere_mask(FINE, (50.0, 50.0, 40.0), 20.0)
    sib_mask = sphere_mask(FINE, (*sib_xy, 40.0), 6.0)
    pelvis_mask = box_mask(FINE, (0, 0, 0), (pelvis_to_x, 100, 80))
    return [
        _fine_level("PTVn_4500", pelvis_mask, PELVIS, (0,)),
        _fine_level("PTVsb_6660", bed_mask, BED, (0, 1)),
        _fine_level("PTVp_7400", sib_mask, LOCAL_SIB, (0, 1)),
    ]


@pytest.mark.parametrize(
    ("pelvis_to_x", "share", "container"), [(40.5, 0.17, True), (35.5, 0.05, False)]
)
def test_a_sequential_boost_needs_a_tenth_of_it_inside(pelvis_to_x, share, container):
    """The bed's boost course does not treat the pelvic PTV: with 17 % of the bed inside
    it (the shipped atlas's share) the pelvic PTV is a container, with 5 % it is not."""
    levels = _pelvis_bed_sib(pelvis_to_x)
    pelvis, bed = levels[0].ptv.mask, levels[1].ptv.mask
    assert (pelvis & bed).sum() / bed.sum() == pytest.approx(share, abs=0.01)
    z = level_zones(levels, DOSE, AB)
    assert ("PTVn_4500" in z.containers) is container


def test_a_sib_half_out_of_the_bed_is_still_the_beds():
    """A SIB of the bed's courses, 49 % inside the bed and 33 % inside the pelvic PTV (a
    lesion at the bed's edge): the bed boosts the pelvic PTV, so the SIB is the bed's and
    the pelvic PTV away from it is governed by the bed's level (a second version of the
    rule made it a sequential boost of the pelvic PTV: 93 % of it at 74.9 Gy EQD2)."""
    levels = _pelvis_bed_sib(40.5, sib_xy=(42.0, 32.0))
    pelvis, bed, sib = (lv.ptv.mask for lv in levels)
    assert (sib & bed).sum() / sib.sum() == pytest.approx(0.49, abs=0.01)
    assert (sib & pelvis).sum() / sib.sum() == pytest.approx(0.33, abs=0.01)
    z = level_zones(levels, DOSE, AB)
    assert "PTVn_4500" in z.containers
    far = _on_dose(pelvis) & ~_on_dose(bed) & _far_from(sib, LEVEL_REACH_MM + 1.25)
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 1)


@pytest.mark.parametrize("node_x", [33.0, 28.0])
def test_a_sib_never_boosts_a_third_ptv(node_x):
    """A node given by the bed's boost course only, partly in the bed (its host) and partly
    in a pelvic PTV cropped around the bed (which the bed only abuts), split 66/34 and
    26/74: the node is the bed's and no boost of the pelvic PTV, which is no container (a
    rule tried on 2026-12-05 decided this by whether the node was nested in the bed). Under
    a tenth in the bed the node would have no host and be a boost of the pelvic PTV."""
    bed_mask = sphere_mask(FINE, (50.0, 50.0, 40.0), 20.0)
    node_mask = sphere_mask(FINE, (node_x, 50.0, 40.0), 9.0)
    pelvis_mask = box_mask(FINE, (2, 2, 2), (98, 98, 76)) & ~bed_mask
    in_bed = (node_mask & bed_mask).sum() / node_mask.sum()
    assert 0.2 < in_bed < 0.7
    levels = [
        _fine_level("PTVn_4500", pelvis_mask, PELVIS, (0,)),
        _fine_level("PTVsb_6660", bed_mask, BED, (0, 1)),
        _fine_level("PTVn1_7000", node_mask, ((70.0, 35),), (1,)),
    ]
    grid = ImageGrid(shape=(31, 40, 40), spacing_mm=(2.5,) * 3, origin_mm=(2.0, 2.0, 2.0))
    z = level_zones(levels, grid, AB)
    assert "PTVn_4500" not in z.containers
    far = z.footprints[0] & ~z.footprints[2]
    d = ndimage.distance_transform_edt(~(z.footprints[1] | z.footprints[2]), sampling=(2.5,) * 3)
    far &= d > LEVEL_REACH_MM
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 0)


@pytest.mark.parametrize(("pelvis_to_x", "bed_boosts_pelvis"), [(36.25, False), (37.5, True)])
def test_a_sib_in_the_bed_does_not_govern_the_pelvic_ptv_as_the_bed_crosses_a_threshold(
    pelvis_to_x, bed_boosts_pelvis
):
    """A SIB wholly in the bed, 26 % and 41 % of it in the pelvic PTV; the bed 7.8 % and
    10.7 % inside the pelvic PTV. Away from the bed the pelvic PTV is governed by its own
    level or by the bed's, never by the SIB's (a rule tried on 2026-12-05 put it at the
    SIB's 74.9 Gy EQD2 when the bed fell under a tenth)."""
    levels = _pelvis_bed_sib(pelvis_to_x, sib_xy=(39.0, 50.0))
    pelvis, bed, sib = (lv.ptv.mask for lv in levels)
    assert bool((pelvis & bed).sum() / bed.sum() >= 0.1) == bed_boosts_pelvis
    assert np.all(bed[sib]) and 0.25 < (pelvis & sib).sum() / sib.sum() < 0.45
    z = level_zones(levels, DOSE, AB)
    assert ("PTVn_4500" in z.containers) is bed_boosts_pelvis
    far = _on_dose(pelvis) & ~_on_dose(bed) & _far_from(bed, LEVEL_REACH_MM + 1.25)
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 1 if bed_boosts_pelvis else 0)


@pytest.mark.parametrize(("sib_x", "hosted"), [(31.0, False), (31.25, True)])
def test_a_sib_under_a_tenth_in_the_bed_is_a_boost_of_its_own(sib_x, hosted):
    """The threshold as designed: a level of the bed's courses wholly in the pelvic PTV and
    8.4 % in the bed has no host, so it is a sequential boost of the pelvic PTV, which it
    governs away from the bed; at 10.5 % in the bed it is the bed's SIB, and the bed's level
    governs there. A 0.25 mm move changes the level of most of the pelvic PTV (docs 4.5)."""
    levels = _pelvis_bed_sib(40.5, sib_xy=(sib_x, 36.0))
    pelvis, bed, sib = (lv.ptv.mask for lv in levels)
    in_bed = (sib & bed).sum() / sib.sum()
    assert bool(in_bed >= 0.1) == hosted and 0.05 < in_bed < 0.15 and np.all(pelvis[sib])
    z = level_zones(levels, DOSE, AB)
    far = _on_dose(pelvis) & ~_on_dose(bed) & _far_from(bed | sib, LEVEL_REACH_MM + 1.25)
    assert far.sum() > 0.5 * _on_dose(pelvis).sum()
    np.testing.assert_array_equal(z.governing[far], 1 if hosted else 2)


def test_a_sib_nested_in_the_pelvic_ptv_too_is_still_the_beds():
    """A SIB wholly in the bed and half in the pelvic PTV (the bed 17 % inside it): the SIB
    is the bed's (its only host), no boost of the pelvic PTV; the pelvic PTV away from the
    SIB is governed by the bed's level (it was the SIB's, 100 % of it)."""
    levels = _pelvis_bed_sib(40.5, sib_xy=(40.5, 50.0))
    pelvis, bed, sib = (lv.ptv.mask for lv in levels)
    assert np.all(bed[sib]) and (pelvis & sib).sum() / sib.sum() > 0.5
    z = level_zones(levels, DOSE, AB)
    assert "PTVn_4500" in z.containers
    far = _on_dose(pelvis) & ~_on_dose(bed) & _far_from(sib, LEVEL_REACH_MM + 1.25)
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 1)


@pytest.mark.parametrize(("pelvis_to_x", "nested"), [(53.0, True), (45.0, False)])
def test_a_sib_of_the_pelvic_course_is_a_boost_where_nested(pelvis_to_x, nested):
    """A 66.6 Gy level given by the pelvic PTV's own course (no sequential boost of it): a
    boost of the pelvic PTV when more than half of it lies inside, none when less."""
    levels = _pelvis_bed_sib(pelvis_to_x)[:2]
    one_course = _fine_level("PTVb_6660", levels[1].ptv.mask, ((66.6, 37),), (0,))
    pelvis, bed = levels[0].ptv.mask, one_course.ptv.mask
    assert bool((pelvis & bed).sum() / bed.sum() > 0.5) == nested
    z = level_zones([levels[0], one_course], DOSE, AB)
    assert ("PTVn_4500" in z.containers) is nested


def test_a_bed_mostly_inside_the_pelvic_ptv_is_nested_there():
    """The bed (courses 0, 1) 60 % inside the pelvic PTV (course 0): nested, so a boost;
    its courses are not the pelvic PTV's, so it is no SIB of it."""
    levels = _pelvis_bed_sib(53.0)
    pelvis, bed = levels[0].ptv.mask, levels[1].ptv.mask
    assert (pelvis & bed).sum() / bed.sum() == pytest.approx(0.6, abs=0.03)
    z = level_zones(levels[:2], DOSE, AB)
    assert z.containers == frozenset({"PTVn_4500"})
    away = _on_dose(pelvis) & ~_on_dose(bed) & _far_from(bed, LEVEL_REACH_MM + 1.25)
    np.testing.assert_array_equal(z.governing[away], 1)


@pytest.mark.parametrize("seed", range(4))
def test_the_shared_volume_is_counted_on_the_ptvs_grid(seed):
    """Random boxes and spheres, some cut by the grid's edge: the shared volume equals the
    count of common mask voxels."""
    rng = np.random.default_rng(seed)
    for _ in range(10):
        masks = [
            random_box_or_sphere(
                FINE,
                rng,
                corner_mm=(-10, 90),
                size_mm=(2, 40),
                centre_mm=(-5, 95),
                radius_mm=(2, 30),
            )
            for _ in range(2)
        ]
        if not (masks[0].any() and masks[1].any()):
            continue
        a, b = (Structure(f"S{k}", m, FINE, role="ptv") for k, m in enumerate(masks))
        expected = float((masks[0] & masks[1]).sum()) * FINE.voxel_volume_cc
        assert _shared_cc(a, b, None, None, DOSE) == pytest.approx(expected)


def test_a_sib_of_the_bed_is_no_sequential_boost_of_the_pelvic_ptv():
    """A SIB inside the bed, a fifth of it inside the pelvic PTV too: it is given by the
    bed's courses, so it is a boost of the bed (nested), not a sequential boost of the
    pelvic PTV. The pelvic PTV away from the SIB is governed by the bed's level (a first
    version of the sequential rule governed all of it at the SIB's 74.9 Gy EQD2)."""
    levels = _pelvis_bed_sib(40.5)
    pelvis, sib = levels[0].ptv.mask, levels[2].ptv.mask
    assert 0.1 < (pelvis & sib).sum() / sib.sum() < 0.5
    z = level_zones(levels, DOSE, AB)
    assert z.containers == frozenset({"PTVn_4500", "PTVsb_6660"})
    in_pelvis = _on_dose(pelvis) & ~_on_dose(levels[1].ptv.mask)
    far = in_pelvis & _far_from(sib, LEVEL_REACH_MM + 1.25)
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 1)


@pytest.mark.parametrize("offset_mm", [-0.625, 0.0, 0.625])
def test_a_ptv_that_only_abuts_a_boost_is_no_container_whatever_the_grid(offset_mm):
    """The pelvic PTV cropped around the bed shares no volume with it: whatever the dose
    grid's offset, it is no container, and away from the bed its own level governs (a share
    measured from dose-grid occupancies read 8-19 % of the bed inside it, on either side of
    the sequential threshold as the grid moved by 0.6 mm)."""
    bed_mask = sphere_mask(FINE, (50.0, 50.0, 40.0), 14.0)
    pelvis_mask = box_mask(FINE, (2, 2, 2), (98, 98, 76)) & ~bed_mask
    levels = [
        _fine_level("PTVn_4500", pelvis_mask, PELVIS, (0,)),
        _fine_level("PTVsb_6660", bed_mask, BED, (0, 1)),
    ]
    shape = (31, 40, 40)
    grid = ImageGrid(shape=shape, spacing_mm=(2.5,) * 3, origin_mm=(offset_mm + 2.0,) * 3)
    z = level_zones(levels, grid, AB)
    assert z.containers == frozenset()
    far = z.footprints[0] & (z.footprints[1] == 0)
    d = ndimage.distance_transform_edt(~z.footprints[1], sampling=grid.spacing_mm)
    far &= d > LEVEL_REACH_MM
    assert far.any()
    np.testing.assert_array_equal(z.governing[far], 0)


@pytest.mark.parametrize(("node_x", "container"), [(66.0, True), (74.0, False)])
def test_a_boost_of_the_same_course_must_be_nested(node_x, container):
    """A 62.5 Gy node of the bed's own courses, above the bed's 107 %: a container when
    more than half of it lies inside the bed, none when less."""
    bed_mask = sphere_mask(FINE, (50.0, 50.0, 40.0), 20.0)
    node_mask = sphere_mask(FINE, (node_x, 50.0, 40.0), 9.0)
    inside = (bed_mask & node_mask).sum() / node_mask.sum()
    assert bool(inside > 0.5) == container and 0.1 < inside < 0.9
    bed = _fine_level("PTVsb_6660", bed_mask, BED, (0, 1))
    node = _fine_level("PTVn1_6250", node_mask, ((62.5, 25),), (0,))
    z = level_zones([bed, node], DOSE, AB)
    assert ("PTVsb_6660" in z.containers) is container


def test_a_coarse_dose_grid_reaches_one_voxel_at_least():
    """On a dose grid coarser than the reach, the reach is the grid spacing: a voxel's face
    neighbour is within it."""
    coarse = ImageGrid(shape=(16, 20, 20), spacing_mm=(6.0, 6.0, 6.0), origin_mm=(0, 0, 0))
    bed_mask = sphere_mask(coarse, (60, 60, 48), 24.0)
    node_mask = sphere_mask(coarse, (90, 60, 48), 8.0)
    bed = TargetLevel(Structure("PTVsb_6660", bed_mask, coarse, role="ptv"), BED, ("imrt",) * 2)
    node = TargetLevel(Structure("PTVn1_6000", node_mask, coarse, role="ptv"), NODE, ("imrt",))
    z = level_zones([bed, node], coarse, AB)
    assert z.reach_mm == 6.0
    d = ndimage.distance_transform_edt(~node_mask, sampling=coarse.spacing_mm)
    ring = bed_mask & (d > LEVEL_REACH_MM) & (d <= 6.0)
    assert ring.any()
    np.testing.assert_array_equal(z.governing[ring], 1)
    np.testing.assert_array_equal(z.governing[bed_mask & (d > 6.0)], 0)


def _bed_and_node():
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    node_mask = sphere_mask(GRID, (72, 48, 40), 8.0)
    return _level("PTVsb_6660", bed_mask, BED), _level("PTVn1_6000", node_mask, NODE)


def test_near_maxima_read_each_part_on_its_own_voxels():
    """A dose of 100 Gy where the node's level governs and 50 Gy elsewhere: the bed's own
    part reads 50 Gy (its voxels' face neighbours are all at 50 Gy, the ring next to the
    node's voxels being read with the node), the node's part 100 Gy."""
    bed, node = _bed_and_node()
    z = level_zones([bed, node], GRID, AB)
    dose = np.where(z.governing == 1, 100.0, 50.0)
    whole = structure_on_dose_grid(bed.ptv, GRID)
    parts, unread = z.near_maxima(bed, dose, whole)
    assert unread == 0.0
    assert [p.levels for p in parts] == [(bed,), (node,)]
    assert parts[0].near_max_gy == pytest.approx(50.0, abs=0.02)  # histogram bins
    assert parts[1].near_max_gy == pytest.approx(100.0, abs=0.02)
    assert parts[0].volume_cc + parts[1].volume_cc == pytest.approx(bed.ptv.volume_cc)


def test_a_part_smaller_than_the_near_maximum_volume_is_not_read():
    bed, node = _bed_and_node()
    z = level_zones([bed, node], GRID, AB)
    dose = np.where(z.governing == 1, 100.0, 50.0)
    whole = structure_on_dose_grid(bed.ptv, GRID)
    [own, near] = z.near_maxima(bed, dose, whole)[0]
    # a near-maximum volume between the node part's and the bed part's
    volume = 0.5 * (near.volume_cc + own.volume_cc)
    assert near.volume_cc < volume < own.volume_cc
    parts, unread = z.near_maxima(bed, dose, whole, volume_cc=volume)
    assert [p.levels for p in parts] == [(bed,)] and unread == pytest.approx(near.volume_cc)
    # the whole target smaller than the volume: read whole against the highest level
    parts, unread = z.near_maxima(bed, dose, whole, volume_cc=2 * bed.ptv.volume_cc)
    assert [p.levels for p in parts] == [(node,)] and unread == 0.0
    assert parts[0].volume_cc == pytest.approx(bed.ptv.volume_cc)
    with pytest.raises(InvalidInputError, match="volume_cc"):
        z.near_maxima(bed, dose, whole, volume_cc=0.0)


def test_parts_of_one_scheme_are_read_together():
    """Two 60 Gy node boosts beside the bed: one part for both, named by both."""
    bed_mask = sphere_mask(GRID, (48, 48, 40), 20.0)
    a = _level("PTVn1_6000", sphere_mask(GRID, (72, 48, 40), 8.0), NODE)
    b = _level("PTVn2_6000", sphere_mask(GRID, (24, 48, 40), 8.0), NODE)
    bed = _level("PTVsb_6660", bed_mask, BED)
    z = level_zones([bed, a, b], GRID, AB)
    assert len(z.check_zones(bed)) == 3
    parts, _ = z.near_maxima(bed, np.full(GRID.shape, 60.0), structure_on_dose_grid(bed.ptv, GRID))
    assert [tuple(lv.name for lv in p.levels) for p in parts] == [
        ("PTVsb_6660",),
        ("PTVn1_6000", "PTVn2_6000"),
    ]


def test_ptvs_drawn_on_different_grids_share_what_their_occupancies_must():
    """The bed drawn on a grid 0.3 mm off the pelvic PTV's: their shared volume is the
    least the dose-grid occupancies allow, none for PTVs that only abut."""
    shifted = ImageGrid(shape=FINE.shape, spacing_mm=FINE.spacing_mm, origin_mm=(0.3, 0.3, 0.3))
    bed_mask = sphere_mask(shifted, (50.0, 50.0, 40.0), 14.0)
    z, y, x = FINE.axis_coordinates_mm()
    d2 = (z[:, None, None] - 40) ** 2 + (y[None, :, None] - 50) ** 2 + (x[None, None, :] - 50) ** 2
    pelvis_mask = box_mask(FINE, (2, 2, 2), (98, 98, 76)) & (d2 > 14.0**2)
    pelvis = _fine_level("PTVn_4500", pelvis_mask, PELVIS, (0,))
    bed = TargetLevel(
        Structure("PTVsb_6660", bed_mask, shifted, role="ptv"), BED, ("imrt",) * 2, (0, 1)
    )
    grid = ImageGrid(shape=(31, 40, 40), spacing_mm=(2.5,) * 3, origin_mm=(2.0, 2.0, 2.0))
    assert level_zones([pelvis, bed], grid, AB).containers == frozenset()
