"""The ranking check, the objective-set spread and the residual rows of
calibration/fit_model.py.

The ranking and the spread read only a case's anatomy, option name, objective set and
reference metrics, so the cases here are stand-ins with hand-set numbers whose agreements
are counted by hand.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from calibration import fit_model
from calibration.fit_model import (
    objective_changes,
    objective_set_spread,
    ranking_agreement,
    residual_table,
)
from calibration.objectives import ObjectiveWeights
from calibration.plans import plan_by_id
from calibration.store import JsonValue, StoreError
from rtplan.dose_estimate import DoseModelParameters

HOMOG: tuple[tuple[str, object], ...] = (("ptv_max_priority", 2000.0),)


def _case(
    plan_id: str,
    anatomy: str,
    option: str,
    ref: dict[str, float],
    objectives: tuple[tuple[str, object], ...] = (),
) -> Any:
    return SimpleNamespace(
        plan_id=plan_id,
        case=anatomy,
        option=SimpleNamespace(name=option),
        objectives=objectives,
        reference={("Rectum", m): v for m, v in ref.items()},
        ptvs={},
    )


def _estimates(plan_id: str, est: dict[str, float]) -> dict[str, float]:
    return {f"{plan_id}|Rectum|{m}": v for m, v in est.items()}


def test_pairs_of_one_anatomy_and_one_objective_set_are_ranked() -> None:
    a = _case("pbrt__x", "x", "PBRT", {"V40Gy": 40.0, "V65Gy": 10.0, "Dmean": 30.0})
    b = _case("wprt__x", "x", "PBRT+WPRT", {"V40Gy": 50.0, "V65Gy": 8.0, "Dmean": 30.5})
    est = {
        **_estimates("pbrt__x", {"V40Gy": 41.0, "V65Gy": 9.0, "Dmean": 29.0}),
        # V40 ranked alike (higher), V65 the other way; Dmean 0.5 Gy apart is a tie
        **_estimates("wprt__x", {"V40Gy": 47.0, "V65Gy": 9.5, "Dmean": 35.0}),
    }
    agreed, total, misses = ranking_agreement([a, b], est)
    assert (agreed, total) == (1, 2)
    assert misses == ["pbrt__x vs wprt__x: Rectum V65Gy"]
    # a 3-point tie band drops the 2-point V65 difference
    assert ranking_agreement([a, b], est, tie_points=3.0)[:2] == (1, 1)


def test_plans_of_different_anatomies_or_objective_sets_are_not_paired() -> None:
    a = _case("wprt__x", "x", "PBRT+WPRT", {"V70Gy": 10.0})
    b = _case("nboost_homog__x", "x", "Nboost", {"V70Gy": 6.0}, HOMOG)
    c = _case("lrboost__y", "y", "LRboost", {"V70Gy": 2.0})
    est = {
        **_estimates("wprt__x", {"V70Gy": 5.0}),
        **_estimates("nboost_homog__x", {"V70Gy": 5.0}),
        **_estimates("lrboost__y", {"V70Gy": 9.0}),
    }
    assert ranking_agreement([a, b, c], est) == (0, 0, [])
    # the node boost's partner under its own objective set is paired with it, and not with
    # the same option under the common set (another objective set, and the same option)
    d = _case("wprt_homog__x", "x", "PBRT+WPRT", {"V70Gy": 7.5}, HOMOG)
    est.update(_estimates("wprt_homog__x", {"V70Gy": 6.0}))
    assert ranking_agreement([a, b, c, d], est) == (1, 1, [])


def test_two_plans_of_one_option_are_never_a_pair() -> None:
    # a re-plan of one option under the same objectives: the estimate ties it by
    # construction, so counting it could only add a miss
    a = _case("pbrt__x", "x", "PBRT", {"V40Gy": 40.0})
    b = _case("pbrt_again__x", "x", "PBRT", {"V40Gy": 45.0})
    est = {**_estimates("pbrt__x", {"V40Gy": 42.0}), **_estimates("pbrt_again__x", {"V40Gy": 42.0})}
    assert ranking_agreement([a, b], est) == (0, 0, [])


def test_objective_set_spread_is_the_changed_set_minus_the_common_set() -> None:
    common = _case("wprt__x", "x", "PBRT+WPRT", {"V40Gy": 50.0, "V70Gy": 10.0})
    changed = _case("wprt_homog__x", "x", "PBRT+WPRT", {"V40Gy": 53.5, "V70Gy": 7.0}, HOMOG)
    other_option = _case("nboost_homog__x", "x", "Nboost", {"V40Gy": 60.0}, HOMOG)
    other_anatomy = _case("wprt_homog__y", "y", "PBRT+WPRT", {"V40Gy": 20.0}, HOMOG)
    expected = [
        ("wprt__x", "wprt_homog__x", "Rectum", "V40Gy", 3.5),
        ("wprt__x", "wprt_homog__x", "Rectum", "V70Gy", -3.0),
    ]
    # the direction does not depend on the order the plans come in
    for cases in (
        [common, changed, other_option, other_anatomy],
        [changed, other_anatomy, common, other_option],
    ):
        assert sorted(objective_set_spread(cases)) == expected


def test_the_objective_set_is_read_from_the_record_and_checked_against_the_plan_list() -> None:
    common = plan_by_id("nboost__atlas")
    homog = plan_by_id("nboost_homog__atlas")
    record_common: JsonValue = {"objective_weights": ObjectiveWeights().as_json()}
    record_homog: JsonValue = {
        "objective_weights": ObjectiveWeights(ptv_max_priority=2000.0).as_json()
    }
    assert objective_changes(common, record_common) == ()
    assert objective_changes(homog, record_homog) == HOMOG
    with pytest.raises(StoreError, match="the plan list says"):
        objective_changes(common, record_homog)
    with pytest.raises(StoreError, match="the plan list says"):
        objective_changes(homog, record_common)
    with pytest.raises(StoreError, match="no objective_weights"):
        objective_changes(common, {"acceptable": True})
    with pytest.raises(StoreError, match="objective_weights"):
        objective_changes(common, {"objective_weights": {"ring_priority": 100.0}})  # the rest
    not_a_number = {**ObjectiveWeights().as_json(), "ring_priority": "high"}
    with pytest.raises(StoreError, match="ring_priority"):
        objective_changes(common, {"objective_weights": not_a_number})


def test_a_metric_both_doses_put_at_zero_is_left_out_of_its_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bowel = ("Spc_Bowel", "V45Gy[cc]")
    # a prostate-bed plan: no 45 Gy in the bowel in either dose; two pelvic plans -10, -14 cc;
    # a plan the estimate gives 3 cc where the reference gives none
    cases = [
        _case("pbrt__x", "x", "PBRT", {}),
        _case("wprt__x", "x", "PBRT+WPRT", {}),
        _case("wprt__y", "y", "PBRT+WPRT", {}),
        _case("lrboost__y", "y", "PBRT+LRboost", {}),
    ]
    refs = {"pbrt__x": 0.0, "wprt__x": 200.0, "wprt__y": 150.0, "lrboost__y": 0.0}
    ests = {"pbrt__x": 0.0, "wprt__x": 190.0, "wprt__y": 136.0, "lrboost__y": 3.0}
    bulb = ("PenileBulb", "Dmean")  # reported after the bowel, present in the first plan
    for c in cases:
        c.reference = {bowel: refs[c.plan_id], ("Rectum", "Dmean"): 30.0, bulb: 10.0}
    monkeypatch.setattr(
        fit_model,
        "estimate_metrics",
        lambda case, params: {bowel: ests[case.plan_id], ("Rectum", "Dmean"): 31.0, bulb: 12.0},
    )
    rows, _ = residual_table(cases, DoseModelParameters())
    by_key = {(r.structure, r.metric): r for r in rows}
    # a zero in one dose only is an error like any other
    assert by_key[bowel].errors == (-10.0, -14.0, 3.0)
    assert by_key[bowel].bias == pytest.approx(-10.0)
    # every plan counts for the rectum's Dmean
    assert by_key[("Rectum", "Dmean")].errors == (1.0, 1.0, 1.0, 1.0)
    # rows come in the order of the reported metrics, not in the order plans first have them
    # (the first plan has no bowel row: the bowel would come after the penile bulb)
    assert [k for k in by_key] == [("Rectum", "Dmean"), bowel, bulb]
