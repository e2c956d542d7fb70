"""The reference-plan store, resume logic, scoring and objectives of calibration/.

None of this needs pyRadPlan (only calibration/engine.py imports it): the store and the
scoring are tested on small grids with doses of closed form.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # calibration/ is not installed

from calibration import reference_plans, store
from calibration.objectives import (
    ObjectiveWeights,
    course_levels,
    course_structures,
    primary_level,
)
from calibration.plans import PLANS, load_plan_atlas, plan_by_id
from calibration.scoring import (
    DISTANCE_BIN_EDGES_MM,
    OAR_V_DOSES_GY,
    distance_metrics,
    dose_grid_for,
    mask_on_dose_grid,
    normalisation_factor,
    oar_metrics,
    signed_distance_mm,
    target_metrics,
)
from calibration.store import MetricRecord, ReferenceStore, StoreError
from rtplan.dvh import compute_dvh, structure_on_dose_grid
from rtplan.grid import ImageGrid
from rtplan.plan import Course, Target
from rtplan.structures import Structure

GRID = ImageGrid(shape=(8, 8, 16), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(1.25, 1.25, 1.25))


def _row(plan_id: str, metric: str = "V40Gy", value: float = 36.2) -> MetricRecord:
    return MetricRecord(plan_id, "atlas", "PBRT", "composite", "Rectum", metric, value, "%")


def _box(x0: int, x1: int, *, name: str = "PTV", role: str = "ptv") -> Structure:
    mask = np.zeros(GRID.shape, bool)
    mask[2:6, 2:6, x0:x1] = True
    return Structure(name, mask, GRID, role=role)


# ---------------------------------------------------------------------------- store
def test_store_round_trip(tmp_path: Path) -> None:
    s = ReferenceStore(tmp_path)
    assert s.stored_ids() == set() and s.rows() == []
    s.add_plan("a", {"option": "PBRT", "runtime_s": 1.5}, [_row("a"), _row("a", "V50Gy", 26.0)])
    s.add_plan("b", {"option": "PBRT+WPRT"}, [_row("b", value=53.0)])
    assert s.stored_ids() == {"a", "b"}
    assert list(s.plans()) == ["a", "b"]
    assert [r.value for r in s.rows("a")] == [36.2, 26.0]
    assert s.rows("b") == [_row("b", value=53.0)]
    payload = json.loads(s.json_path.read_text())
    assert payload["format_version"] == store.STORE_FORMAT_VERSION
    assert payload["plans"]["a"] == {"option": "PBRT", "runtime_s": 1.5}
    header = s.csv_path.read_text().splitlines()[0]
    assert header == ",".join(store.CSV_FIELDS)
    assert s.csv_path.stat().st_mode & 0o777 == 0o644
    assert s.json_path.stat().st_mode & 0o777 == 0o644


def test_store_replaces_a_plans_rows(tmp_path: Path) -> None:
    s = ReferenceStore(tmp_path)
    s.add_plan("a", {"n": 1}, [_row("a"), _row("a", "V50Gy")])
    s.add_plan("b", {"n": 2}, [_row("b")])
    s.add_plan("a", {"n": 3}, [_row("a", value=40.0)])
    assert [r.value for r in s.rows("a")] == [40.0]
    assert len(s.rows("b")) == 1
    assert s.plans()["a"] == {"n": 3}


def test_stale_rows_without_a_record_are_not_stored_and_are_replaced(tmp_path: Path) -> None:
    # a run killed between writing the CSV and the JSON leaves rows without a record
    s = ReferenceStore(tmp_path)
    s.add_plan("a", {"n": 1}, [_row("a")])
    store.atomic_write_text(s.csv_path, store._csv_text([*s.rows(), _row("b", value=99.0)]))
    assert s.stored_ids() == {"a"}
    assert [p.plan_id for p in reference_plans.pending_plans(s, ["pbrt__atlas"])] == ["pbrt__atlas"]
    s.add_plan("b", {"n": 2}, [_row("b", value=53.0)])
    assert [r.value for r in s.rows("b")] == [53.0]


def test_store_refuses_rows_of_another_plan_and_non_json_records(tmp_path: Path) -> None:
    s = ReferenceStore(tmp_path)
    s.add_plan("a", {"n": 1}, [_row("a")])
    before = (s.csv_path.read_text(), s.json_path.read_text())
    with pytest.raises(StoreError, match="other plans"):
        s.add_plan("b", {}, [_row("a")])
    with pytest.raises(StoreError, match="not JSON"):
        s.add_plan("b", {"x": float("nan")}, [_row("b")])
    with pytest.raises(StoreError, match="not JSON"):
        s.add_plan("b", {"x": object()}, [_row("b")])  # type: ignore[dict-item]
    assert (s.csv_path.read_text(), s.json_path.read_text()) == before


def test_concurrent_writers_lose_no_plan(tmp_path: Path) -> None:
    s = ReferenceStore(tmp_path)
    ids = [f"p{n}" for n in range(8)]
    threads = [
        threading.Thread(target=ReferenceStore(tmp_path).add_plan, args=(i, {}, [_row(i)]))
        for i in ids
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.stored_ids() == set(ids)
    assert sorted(r.plan_id for r in s.rows()) == ids


def test_metric_values_must_be_finite() -> None:
    with pytest.raises(StoreError, match="finite"):
        _row("a", value=float("inf"))


def test_a_failed_write_leaves_the_old_store_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ReferenceStore(tmp_path)
    s.add_plan("a", {"n": 1}, [_row("a")])
    before = (s.csv_path.read_text(), s.json_path.read_text())

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        s.add_plan("b", {"n": 2}, [_row("b")])
    monkeypatch.undo()
    assert (s.csv_path.read_text(), s.json_path.read_text()) == before
    assert sorted(os.listdir(tmp_path)) == sorted([store.CSV_NAME, store.JSON_NAME])
    assert s.stored_ids() == {"a"}


def test_store_refuses_files_it_cannot_read(tmp_path: Path) -> None:
    s = ReferenceStore(tmp_path)
    s.json_path.write_text('{"format_version": 99, "plans": {}}')
    with pytest.raises(StoreError, match="format_version 99"):
        s.stored_ids()
    s.json_path.write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        s.plans()
    s.csv_path.write_text("plan_id,value\n")
    with pytest.raises(StoreError, match="header"):
        s.rows()
    s.csv_path.write_text(",".join(store.CSV_FIELDS) + "\na,atlas,PBRT,c,R,V40Gy,high,%\n")
    with pytest.raises(StoreError, match="not a number"):
        s.rows()


# ---------------------------------------------------------------------------- resume
def test_plan_list_is_unique_and_in_priority_order() -> None:
    ids = [p.plan_id for p in PLANS]
    assert len(ids) == len(set(ids)) == 29
    assert [p.option for p in PLANS[:7]] == ["PBRT"] * 7
    assert [p.option for p in PLANS[7:11]] == ["PBRT+WPRT"] * 4
    assert ids[0] == "pbrt__atlas" and ids[7] == "wprt__atlas"
    # appended later: two more whole-pelvis plans, so that held-out option pairs exist, and
    # the node boost re-planned with its own objective change
    assert [p.option for p in PLANS[13:15]] == ["PBRT+WPRT"] * 2
    assert [p.weight_changes for p in PLANS if p.weight_changes] == [
        (("ptv_max_priority", 2000.0),)
    ] * 4
    # then the two boost options on two variants (held out), the node boosts' partners
    # under their objective set, and the local boost on three held-out anatomies
    assert [(p.option, p.case, bool(p.weight_changes)) for p in PLANS[16:23]] == [
        ("PBRT+WPRT+Nboost+ADT", "bladder0.5", True),
        ("PBRT+LRboost", "rectal1.8", False),
        ("PBRT+WPRT", "bladder0.5", True),
        ("PBRT+LRboost", "atlas", True),
        ("PBRT+LRboost", "scale0.85", False),
        ("PBRT+LRboost", "bladder2.0", False),
        ("PBRT+LRboost", "seed3", False),
    ]
    # last, the test set: three options on each of two new random anatomies
    assert [(p.option, p.case) for p in PLANS[23:]] == [
        (option, case)
        for case in ("seed5", "seed7")
        for option in ("PBRT", "PBRT+WPRT", "PBRT+LRboost")
    ]
    assert {p.anatomy.seed for p in PLANS[23:]} == {5, 7}
    # every plan under an objective change has a partner of another option under the same
    # change on its anatomy, so it takes part in the ranking (fit_model.ranking_agreement)
    for p in PLANS:
        if p.weight_changes:
            assert any(
                q.case == p.case and q.option != p.option and q.weight_changes == p.weight_changes
                for q in PLANS
            ), p.plan_id
    pbrt_cases = {p.case for p in PLANS if p.option == "PBRT"}
    wprt = [p for p in PLANS if p.option == "PBRT+WPRT"]
    assert {p.case for p in wprt} <= pbrt_cases  # option pairs on the same anatomy
    assert plan_by_id("pbrt__scale0.85").atlas_kwargs == {"scale": 0.85}
    assert plan_by_id("pbrt__atlas").atlas_kwargs == {}
    with pytest.raises(KeyError, match="no plan"):
        plan_by_id("nope")


def test_pending_plans_skip_stored_ones(tmp_path: Path) -> None:
    s = ReferenceStore(tmp_path)
    assert reference_plans.pending_plans(s) == list(PLANS)
    s.add_plan("pbrt__atlas", {}, [_row("pbrt__atlas")])
    pending = reference_plans.pending_plans(s)
    assert [p.plan_id for p in pending] == [p.plan_id for p in PLANS[1:]]
    only = ["wprt__atlas", "pbrt__atlas"]
    assert [p.plan_id for p in reference_plans.pending_plans(s, only)] == ["wprt__atlas"]
    with pytest.raises(KeyError, match="unknown plan ids"):
        reference_plans.pending_plans(s, ["pbrt__mars"])


def test_threads_are_set_before_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TQDM_DISABLE"):
        monkeypatch.delenv(var, raising=False)
    reference_plans._configure_environment(["--only", "pbrt__atlas", "--threads", "1"])
    assert os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert os.environ["TQDM_DISABLE"] == "1"
    assert reference_plans._thread_count(["--threads=3"]) == "3"
    assert reference_plans._thread_count(["--list"]) is None


def test_list_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ReferenceStore(tmp_path).add_plan("pbrt__atlas", {}, [_row("pbrt__atlas")])
    assert reference_plans.main(["--list", "--store", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PLANS)
    assert lines[0].split()[:2] == ["pbrt__atlas", "stored"]
    assert lines[1].split()[:3] == ["pbrt__scale0.85", "to", "do"]
    assert reference_plans.main(["--list", "--store", str(tmp_path), "--only", "x"]) == 2


# ---------------------------------------------------------------------------- scoring
def _linear_dose_gy(gy_per_mm: float) -> np.ndarray:
    x_mm = GRID.axis_coordinates_mm()[2]
    return np.broadcast_to(gy_per_mm * x_mm[None, None, :], GRID.shape).astype(np.float64)


def test_target_metrics_of_a_linear_dose() -> None:
    # a 20 mm box (x 10..30 mm) in a dose rising 2 Gy/mm: the dose is symmetric about 40 Gy
    ptv = _box(4, 12)
    dvh = compute_dvh(_linear_dose_gy(2.0), GRID, ptv)
    got = {m.metric: m.value for m in target_metrics(dvh, 40.0)}
    assert got["Dmean"] == pytest.approx(40.0, abs=1e-4)
    assert got["D50%"] == pytest.approx(40.0, abs=0.05)
    assert got["D50%[%Rx]"] == pytest.approx(100.0, abs=0.1)
    assert got["D98%"] < got["D95%"] < got["D50%"] < got["D2%"]
    assert got["V95%Rx"] == pytest.approx(100.0 * dvh.volume_at_dose_cc(38.0) / dvh.volume_cc)
    assert got["Volume"] == pytest.approx(ptv.volume_cc)


def test_oar_metrics_of_a_uniform_dose() -> None:
    organ = _box(4, 12, name="Spc_Bowel", role="organ")
    dvh = compute_dvh(np.full(GRID.shape, 42.0), GRID, organ)
    got = {(m.metric, m.unit): m.value for m in oar_metrics(dvh, bowel=True)}
    assert got[("Dmean", "Gy")] == pytest.approx(42.0)
    # dose-at-volume values are read off the DVH's dose bins (0.01-0.02 Gy wide)
    assert got[("D0.03cc", "Gy")] == pytest.approx(42.0, abs=0.05)
    assert got[("D2%", "Gy")] == pytest.approx(42.0, abs=0.05)
    for d in OAR_V_DOSES_GY:
        assert got[(f"V{d:g}Gy", "%")] == pytest.approx(100.0 if d < 42 else 0.0)
    assert got[("V45Gy[cc]", "cc")] == 0.0
    assert ("V45Gy[cc]", "cc") not in {(m.metric, m.unit) for m in oar_metrics(dvh, bowel=False)}


def test_normalisation_brings_d95_to_the_prescription() -> None:
    ptv = structure_on_dose_grid(_box(4, 12), GRID)
    dose = _linear_dose_gy(2.0)
    factor = normalisation_factor(dose, GRID, ptv, 66.6)
    d95 = compute_dvh(factor * dose, GRID, ptv).dose_at_volume_pct(95.0)
    assert d95 == pytest.approx(66.6, rel=1e-3)
    uniform = normalisation_factor(np.full(GRID.shape, 30.0), GRID, ptv, 60.0)
    assert uniform == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="cannot normalise"):
        normalisation_factor(np.zeros(GRID.shape), GRID, ptv, 60.0)


def test_signed_distance_of_a_slab() -> None:
    ptv = np.zeros(GRID.shape, bool)
    ptv[:, :, :4] = True  # voxel centres x = 1.25 .. 8.75 mm, surface at 10 mm
    signed = signed_distance_mm(ptv, GRID)
    x_mm = GRID.axis_coordinates_mm()[2]
    np.testing.assert_allclose(signed[3, 3], x_mm - 10.0)
    with pytest.raises(ValueError, match="empty"):
        signed_distance_mm(np.zeros(GRID.shape, bool), GRID)
    with pytest.raises(ValueError, match="fills the grid"):
        signed_distance_mm(np.ones(GRID.shape, bool), GRID)


def test_distance_metrics_of_a_dose_falling_with_distance() -> None:
    ptv = np.zeros(GRID.shape, bool)
    ptv[:, :, :4] = True
    signed = signed_distance_mm(ptv, GRID)
    dose = np.clip(60.0 - signed, 0.0, None)  # 60 Gy at the surface, 1 Gy/mm outside
    organ = structure_on_dose_grid(_box(4, 12, name="Rectum", role="organ"), GRID)
    got = {m.metric: m.value for m in distance_metrics(dose, organ, signed)}
    # organ voxel centres at 1.25, 3.75, ... 18.75 mm: one per bin from 0 to 20 mm
    for k in range(8):
        lo = 2.5 * k
        label = f"[{lo:.1f},{lo + 2.5:.1f})"
        assert got[f"dist_mean_Gy{label}"] == pytest.approx(60.0 - (lo + 1.25))
        assert got[f"dist_volume_cc{label}"] == pytest.approx(16 * GRID.voxel_volume_cc)
    assert "dist_mean_Gy[20.0,22.5)" not in got  # no organ there: no mean
    assert got["dist_volume_cc[20.0,22.5)"] == 0.0
    assert got["dist_volume_cc[60.0,inf)"] == 0.0
    total = sum(v for k, v in got.items() if k.startswith("dist_volume_cc"))
    assert total == pytest.approx(organ.total_volume_cc)
    assert len([k for k in got if k.startswith("dist_volume_cc")]) == len(DISTANCE_BIN_EDGES_MM) + 1


# ---------------------------------------------------------------------------- objectives
def _sib_course() -> Course:
    low = Target(_box(2, 14, name="PTV_low"), 45.0)
    high = Target(_box(7, 9, name="PTV_high"), 60.0)
    return Course("Pelvis", "imrt", 25, (low, high))


def test_levels_highest_first_and_primary_is_the_largest() -> None:
    levels = course_levels(_sib_course(), GRID)
    assert [lv.prescription_gy for lv in levels] == [60.0, 45.0]
    assert primary_level(levels).ptv.name == "PTV_low"


def test_course_structures_of_a_sib() -> None:
    body = np.ones(GRID.shape, bool)
    rectum = np.zeros(GRID.shape, bool)
    rectum[2:6, 6, :] = True  # crosses the targets
    w = ObjectiveWeights()
    levels, structures = course_structures(
        _sib_course(), {"Body": body, "Rectum": rectum}, GRID, weights=w
    )
    by_name = {s.name: s for s in structures}
    high_core = levels[0].core
    low_cover = by_name["PTV_45Gy_cover"].mask
    assert not (low_cover & high_core).any()  # lower level minus the higher one
    low_core = by_name["PTV_45Gy_core"].mask
    assert not low_core.any() or (signed_distance_mm(high_core, GRID)[low_core] > 5.0).all()
    targets = by_name["PTV_60Gy_cover"].mask | low_cover
    assert not (by_name["Rectum_opt"].mask & targets).any()
    assert by_name["Rectum_opt"].mask.any()
    # organ thresholds scale with the primary (45 Gy) level: 0.6 x 45 = 27 Gy
    assert [o.dose_gy for o in by_name["Rectum_opt"].objectives] == pytest.approx([27.0, 38.25])
    assert by_name["PTV_60Gy_cover"].objectives[0].dose_gy == 60.0
    assert not (by_name["Body_opt"].mask & targets).any()
    assert "Ring" not in by_name or not (by_name["Ring"].mask & targets).any()


def test_mask_on_dose_grid_keeps_voxels_at_least_half_occupied() -> None:
    fine = ImageGrid(shape=(4, 4, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    m = np.zeros(fine.shape, bool)
    m[0:2, 0:2, 0:2] = True  # fills dose voxel (0, 0, 0)
    m[2, 2:4, 2:4] = True  # half of dose voxel (1, 1, 1)
    m[2, 0, 2] = True  # an eighth of dose voxel (1, 0, 1)
    coarse = ImageGrid(shape=(2, 2, 2), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.5, 0.5, 0.5))
    got = mask_on_dose_grid(Structure("s", m, fine), coarse)
    assert sorted(zip(*np.nonzero(got))) == [(0, 0, 0), (1, 1, 1)]


# ---------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    ("gy_per_mm", "target", "acceptable"),
    [(0.0, 100.0, True), (0.35, None, True), (2.0, 98.0, False)],
)
def test_normalisation_lowers_d95_to_98_pct_for_hot_spots(
    gy_per_mm: float, target: float | None, acceptable: bool
) -> None:
    course = Course("PB", "imrt", 37, (Target(_box(4, 12), 66.6),))
    levels = course_levels(course, GRID)
    dose = 60.0 + _linear_dose_gy(gy_per_mm) - gy_per_mm * 20.0  # 60 Gy at x = 20 mm
    norm = reference_plans._normalise(dose, GRID, levels, 5.0)
    got = norm.record["target_pct_rx"]
    assert isinstance(got, float)
    if target is None:  # D2% above 110 % at D95% = 100 %: lowered, within 98-100 %
        assert 98.0 < got < 100.0
    else:
        assert got == pytest.approx(target)
    assert norm.acceptable is acceptable
    d2 = compute_dvh(norm.factor * dose, GRID, levels[0].ptv).dose_at_volume_pct(2.0)
    assert (d2 <= 1.1 * 66.6) is acceptable


@pytest.mark.slow
def test_rescore_renormalises_a_stored_plan_from_its_dose_file(tmp_path: Path) -> None:
    spec = plan_by_id("pbrt__scale0.85")
    atlas = load_plan_atlas(spec)
    grid = dose_grid_for(atlas)
    body = mask_on_dose_grid(atlas.structures["Body"], grid)
    dose = np.where(body, 64.0, 0.0)[None]  # as stored: normalised with factor 2
    path = tmp_path / f"{spec.plan_id}.npz"
    np.savez(path, doses_gy=dose.astype(np.float32), normalisation_factors=np.array([2.0]))
    course = {"name": "ProstateBed", "normalisation": {"factor": 2.0}}
    record = {
        "courses": [course],
        "objective_weights": ObjectiveWeights().as_json(),
        "dose_file": str(path),
    }
    store_ = ReferenceStore(tmp_path)
    store_.add_plan(spec.plan_id, record, [])
    reference_plans.rescore_plan(spec, store_, "test")
    got = store_.plans()[spec.plan_id]
    assert isinstance(got, dict) and isinstance(got["courses"], list)
    first = got["courses"][0]
    assert isinstance(first, dict) and isinstance(first["normalisation"], dict)
    norm = first["normalisation"]
    assert norm["factor"] == pytest.approx(2.0 * 66.6 / 64.0, rel=1e-3)
    assert norm["target_pct_rx"] == 100.0 and got["acceptable"] is True
    rows = {(r.structure, r.metric): r.value for r in store_.rows(spec.plan_id)}
    assert rows[("PTVsb_6660", "D95%")] == pytest.approx(66.6, abs=0.05)
    assert rows[("Rectum", "Dmean")] == pytest.approx(66.6, abs=0.05)
    with np.load(path) as stored:
        assert float(stored["doses_gy"].max()) == pytest.approx(66.6, rel=1e-4)
        assert stored["normalisation_factors"][0] == pytest.approx(norm["factor"], rel=1e-5)


def test_a_plan_changes_only_the_objective_weights_it_names() -> None:
    common = reference_plans.plan_weights(plan_by_id("nboost__atlas"))
    homog = reference_plans.plan_weights(plan_by_id("nboost_homog__atlas"))
    assert common == ObjectiveWeights()
    assert homog.ptv_max_priority == 2 * common.ptv_max_priority
    assert dataclasses.replace(homog, ptv_max_priority=common.ptv_max_priority) == common
    bad = dataclasses.replace(plan_by_id("pbrt__atlas"), weight_changes=(("no_such", 1.0),))
    with pytest.raises(TypeError):
        reference_plans.plan_weights(bad)
