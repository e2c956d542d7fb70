"""Tests of rtplan.plan: intended dose levels and overlap resolution (boosts do not stack)."""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import sphere_mask

from rtplan.grid import ImageGrid
from rtplan.plan import Course, FieldOption, Target, resolve_overlaps, target_levels
from rtplan.structures import Structure

G = ImageGrid(shape=(30, 60, 60), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(-59.0, -59.0, -29.0))


def _ptv(name: str, centre, radius_mm: float) -> Structure:
    return Structure(name, sphere_mask(G, centre, radius_mm), G, role="ptv")


PELVIS = _ptv("PTVn_4500", (0.0, 0.0, 0.0), 40.0)
BED = _ptv("PTVsb_6660", (0.0, 0.0, 0.0), 15.0)
NODE = _ptv("PTVn1_6000", (16.0, 0.0, 0.0), 6.0)
RECTUM = Structure("Rectum", sphere_mask(G, (0.0, 14.0, 0.0), 6.0), G)


def _sequential() -> FieldOption:
    pelvic = Course(
        "Pelvis", "imrt", 25, (Target(PELVIS, 45.0), Target(BED, 45.0), Target(NODE, 60.0))
    )
    boost = Course("ProstateBedBoost", "imrt", 12, (Target(BED, 21.6),))
    return FieldOption("PBRT+WPRT+Nboost", (pelvic, boost))


def test_levels_sum_the_courses_and_rank_in_eqd2():
    levels = {lv.name: lv for lv in target_levels(_sequential())}
    assert levels["PTVsb_6660"].total_gy == pytest.approx(66.6)
    assert levels["PTVsb_6660"].parts == ((45.0, 25), (pytest.approx(21.6), 12))
    # 60 Gy / 25 outranks 66.6 Gy at 1.8 Gy per fraction at alpha/beta 1.5 Gy
    assert levels["PTVn1_6000"].eqd2_gy(1.5) > levels["PTVsb_6660"].eqd2_gy(1.5)
    assert levels["PTVn1_6000"].total_gy < levels["PTVsb_6660"].total_gy


def test_the_later_phase_is_cropped_by_higher_targets_of_earlier_courses():
    option = _sequential()
    resolved = resolve_overlaps(option, alpha_beta_gy=1.5)
    boost = resolved.courses[1].targets[0]
    assert boost.ptv.name == "PTV!sb_6660" and boost.cropped_from is BED
    assert boost.whole_ptv is BED
    assert not np.any(boost.ptv.mask & NODE.mask)
    assert np.array_equal(boost.ptv.mask | (BED.mask & NODE.mask), BED.mask)
    assert "PTVn1_6000" in boost.ptv.derivation
    # the first course (a SIB: voxel-wise maximum in the dose model) is left as it is
    assert resolved.courses[0] is option.courses[0]
    # the levels keep counting the cropped phase for the PTV as drawn
    assert {lv.name: lv.total_gy for lv in target_levels(resolved)}["PTVsb_6660"] == (
        pytest.approx(66.6)
    )
    assert resolve_overlaps(resolved, alpha_beta_gy=1.5) is resolved  # idempotent


def test_nothing_to_crop_returns_the_option_itself():
    option = FieldOption("PBRT", (Course("Bed", "imrt", 37, (Target(BED, 66.6),)),))
    assert resolve_overlaps(option, alpha_beta_gy=1.5) is option
    # a lower node level (1.8 Gy per fraction, below the bed in EQD2): the bed is not cropped
    pelvic = Course("Pelvis", "imrt", 25, (Target(PELVIS, 45.0), Target(NODE, 50.0)))
    boost = Course("Boost", "imrt", 12, (Target(BED, 21.6),))
    low = FieldOption("low", (pelvic, boost))
    assert resolve_overlaps(low, alpha_beta_gy=1.5) is low


def test_sparing_crops_boosts_and_plans_the_overlap_at_the_course_low_level():
    node = _ptv("PTVn2_6000", (0.0, 18.0, 0.0), 7.0)  # outside the elective PTV? no: inside
    outside = _ptv("PTVn3_6000", (0.0, 54.0, 0.0), 5.0)
    rect = Structure("Rectum", sphere_mask(G, (0.0, 52.0, 0.0), 4.0), G)
    pelvic = Course(
        "Pelvis", "imrt", 25, (Target(PELVIS, 45.0), Target(node, 60.0), Target(outside, 60.0))
    )
    option = FieldOption("nodes", (pelvic,))
    resolved = resolve_overlaps(option, alpha_beta_gy=1.5, spare=(RECTUM, rect))
    names = [t.ptv.name for t in resolved.courses[0].targets]
    assert "PTV!n2_6000" in names and "PTV!n3_6000" in names
    assert "PTV!n3_6000^low" in names  # outside the 45 Gy PTV: planned at 45 Gy
    low = next(t for t in resolved.courses[0].targets if t.ptv.name == "PTV!n3_6000^low")
    assert low.prescription_gy == 45.0 and low.cropped_from is outside
    assert np.array_equal(low.ptv.mask, outside.mask & rect.mask & ~PELVIS.mask)
    elective = resolved.courses[0].targets[0]
    assert elective.ptv is PELVIS  # the elective level is not cropped


def test_bad_arguments():
    with pytest.raises(TypeError, match="option"):
        resolve_overlaps("PBRT", alpha_beta_gy=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha_beta_gy"):
        resolve_overlaps(_sequential(), alpha_beta_gy=0.0)
    with pytest.raises(TypeError, match="spare"):
        resolve_overlaps(_sequential(), alpha_beta_gy=1.5, spare=("Rectum",))  # type: ignore[arg-type]


def test_a_boost_nested_in_an_earlier_elective_ptv_is_credited_with_it():
    pelvic = Course("Pelvis", "imrt", 25, (Target(PELVIS, 45.0),))
    boost = Course("Boost", "imrt", 12, (Target(BED, 21.6),))
    levels = {lv.name: lv for lv in target_levels(FieldOption("seq", (pelvic, boost)))}
    bed = levels["PTVsb_6660"]
    assert bed.total_gy == pytest.approx(66.6) and bed.courses == (0, 1)
    assert levels["PTVn_4500"].courses == (0,)
    # an SBRT target is never credited with the elective dose around it
    sbrt = Course("SBRT_1", "sbrt", 3, (Target(_ptv("PTV1_2100", (0.0, 0.0, 0.0), 5.0), 21.0),))
    levels = {lv.name: lv for lv in target_levels(FieldOption("s", (pelvic, sbrt)))}
    assert levels["PTV1_2100"].parts == ((21.0, 3),) and levels["PTV1_2100"].is_sbrt


def test_scale_giving_eqd2_inverts_the_eqd2_of_a_scaled_prescription_and_refuses_nonsense():
    from rtplan.errors import InvalidInputError
    from rtplan.plan import TargetLevel

    g = ImageGrid(shape=(1, 1, 1), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    ptv = Structure("PTVsb_6660", np.ones((1, 1, 1), bool), g, role="ptv")
    level = TargetLevel(ptv, ((45.0, 25), (21.6, 12), (8.0, 1)), ("imrt", "imrt", "sbrt"))
    for ab in (1.5, 3.0, 10.0):
        for x in (0.5, 1.0, 1.07, 1.3):
            # EQD2 = D (D/n + a/b) / (2 + a/b), by hand for each part scaled by x
            eqd2 = sum(x * d * (x * d / n + ab) / (2 + ab) for d, n in level.parts)
            assert level.scale_giving_eqd2(eqd2, ab) == pytest.approx(x, rel=1e-12)
    bad = ((-1.0, 1.5), (float("nan"), 1.5), (float("inf"), 1.5), (60.0, 0.0), (60.0, -3.0))
    for eqd2, ab in bad:
        with pytest.raises(InvalidInputError):
            level.scale_giving_eqd2(eqd2, ab)
    with pytest.raises(InvalidInputError, match="no dose"):
        TargetLevel(ptv, ((0.0, 25),), ("imrt",)).scale_giving_eqd2(60.0, 1.5)


def test_an_option_names_the_techniques_of_its_courses():
    g = ImageGrid(shape=(4, 4, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    ptv = Structure("PTV", np.ones((4, 4, 4), bool), g, role="ptv")
    imrt = Course("C1", "imrt", 25, (Target(ptv, 45.0),))
    sbrt = Course("C2", "sbrt", 3, (Target(ptv, 24.0),))
    assert FieldOption("A", (imrt,)).techniques == {"imrt"}
    assert FieldOption("B", (imrt, sbrt, imrt)).techniques == {"imrt", "sbrt"}
