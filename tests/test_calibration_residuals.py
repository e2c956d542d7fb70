"""The calibration table shipped in rtplan/model_calibration.toml is reproduced from the
stored reference plans (calibration/reference_metrics.csv) and the current dose model."""

from __future__ import annotations

import pytest

from calibration.fit_model import TRAINING, acceptable_ids, load_cases, residual_table
from calibration.store import ReferenceStore
from rtplan.dose_estimate import DoseModelParameters
from rtplan.sparing import CALIBRATION

STORE = ReferenceStore("calibration")


def test_every_stored_plan_is_training_or_held_out_and_the_toml_says_how_many():
    stored = acceptable_ids(STORE)
    assert stored, "calibration/ holds no acceptable reference plan"
    held = stored - set(TRAINING)
    n_max = max((u.n for u in CALIBRATION.uncertainties), default=0)
    assert n_max <= len(held)
    assert str(len(held)) in CALIBRATION.source


def test_residual_table_is_reproduced_from_the_stored_plans():
    held = [i for i in acceptable_ids(STORE) if i not in TRAINING]
    if not held:
        pytest.fail("no held-out reference plan: the calibration has no residual table")
    rows, _ = residual_table(load_cases(STORE, held), DoseModelParameters())
    recomputed = {(r.structure, r.metric.replace("[cc]", ""), r.unit): r for r in rows}
    assert CALIBRATION.uncertainties
    for u in CALIBRATION.uncertainties:
        r = recomputed[(u.structure, u.metric, u.unit)]
        assert r.n == u.n
        assert r.bias == pytest.approx(u.bias, abs=2e-3), u
        assert r.spread == pytest.approx(u.spread, abs=2e-3), u
