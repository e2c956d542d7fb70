"""Tests of rtplan.dvh: DVH accuracy against closed forms, metrics, constraints, gEUD, NTCP."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from phantoms import sphere_mask
from scipy.optimize import brentq

from rtplan.dvh import (
    DVH,
    LKB_PARAMETERS,
    Constraint,
    compute_dvh,
    compute_dvhs,
    evaluate_constraint,
    geud_gy,
    lkb_ntcp,
    occupancy_on_grid,
    parse_constraint,
    parse_metric,
    restricted,
    structure_on_dose_grid,
)
from rtplan.errors import GeometryError, GridMismatchError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

CENTRE = (0.37, -0.21, 0.55)  # generic position (x, y, z) mm, not on a voxel centre


def _grids(radius_mm: float):
    """A 1 x 1 x 2.5 mm "CT" grid around the sphere and an offset 2.5 mm dose grid."""
    n_xy = int(2 * radius_mm) + 30
    n_z = int(2 * radius_mm / 2.5) + 10
    ct = ImageGrid(
        shape=(n_z, n_xy, n_xy),
        spacing_mm=(2.5, 1.0, 1.0),
        origin_mm=(-n_xy / 2 + 0.3, -n_xy / 2 + 0.1, -n_z * 1.25 + 0.7),
    )
    lo = [b[0] for b in ct.bounds_mm]
    dose_grid = ImageGrid(
        shape=(n_z + 2, int(n_xy / 2.5) + 2, int(n_xy / 2.5) + 2),
        spacing_mm=(2.5, 2.5, 2.5),
        origin_mm=(lo[0] - 0.9, lo[1] - 1.7, lo[2] - 1.0),
    )
    return ct, dose_grid


def _field(dose_grid: ImageGrid, kind: str, gradient: float = 1.0) -> np.ndarray:
    z, y, x = dose_grid.axis_coordinates_mm()
    cx, cy, cz = CENTRE
    zz, yy, xx = np.meshgrid(z - cz, y - cy, x - cx, indexing="ij")
    if kind == "linear_x":
        return 60.0 + gradient * xx
    if kind == "linear_z":
        return 60.0 + gradient * zz
    if kind == "linear_diag":
        return 60.0 + gradient * (xx + yy + zz) / math.sqrt(3)
    return 70.0 - gradient * np.sqrt(xx**2 + yy**2 + zz**2)  # radial


def _analytic(kind: str, radius: float, gradient: float = 1.0):
    """Fraction of the sphere at or above a dose, and its mean dose."""
    if kind.startswith("linear"):

        def frac(d):
            u = (d - 60.0) / gradient
            if u <= -radius:
                return 1.0
            if u >= radius:
                return 0.0
            h = radius - u
            return h * h * (3 * radius - h) / (4 * radius**3)

        return frac, 60.0

    def frac(d):
        r = (70.0 - d) / gradient
        return float(np.clip(r / radius, 0.0, 1.0) ** 3)

    return frac, 70.0 - 0.75 * gradient * radius


def _dose_at(frac, pct):
    return brentq(lambda d: frac(d) - pct / 100.0, -100.0, 300.0)


@pytest.mark.parametrize("kind", ["linear_x", "linear_z", "linear_diag", "radial"])
@pytest.mark.parametrize(("radius", "tol_pct"), [(30.0, 1.0), (10.0, 2.0)])
def test_dvh_matches_closed_form_sphere(kind, radius, tol_pct):
    ct, dose_grid = _grids(radius)
    s = Structure("S", sphere_mask(ct, CENTRE, radius), ct)
    dvh = compute_dvh(_field(dose_grid, kind), dose_grid, s)
    frac, mean = _analytic(kind, radius)
    assert dvh.mean_gy == pytest.approx(mean, rel=tol_pct / 100)
    for pct in (95, 5):
        assert dvh.dose_at_volume_pct(pct) == pytest.approx(_dose_at(frac, pct), rel=tol_pct / 100)
    # V at three dose levels (the analytic D80, D50, D20), compared in percentage points
    for pct in (80, 50, 20):
        level = _dose_at(frac, pct)
        assert abs(dvh.volume_at_dose_pct(level) - pct) <= tol_pct


@pytest.mark.parametrize(("radius", "tol", "each"), [(5.0, 0.05, False), (10.0, 0.02, True)])
def test_sphere_volume_through_dvh(radius, tol, each):
    """Volume of a sphere (mask on 1 x 1 x 2.5 mm) through the DVH, at random positions.

    The DVH keeps the mask's volume exactly; what remains is the mask's own sampling
    error. For r = 10 mm every position is within 2 %; for r = 5 mm (four 2.5 mm slices)
    the mask alone ranges about -8 .. +5 % with position (mean ~0), so the mean absolute
    error over positions is held to 5 %.
    """
    rng = np.random.default_rng(7)
    true_cc = 4 / 3 * math.pi * radius**3 / 1000
    ct, dose_grid = _grids(radius)
    dose = _field(dose_grid, "radial")
    errors = []
    for _ in range(12):
        c = tuple(np.array(CENTRE) + rng.uniform(-1.25, 1.25, 3))
        s = Structure("S", sphere_mask(ct, c, radius), ct)
        dvh = compute_dvh(dose, dose_grid, s)
        assert dvh.volume_cc == pytest.approx(s.volume_cc, rel=1e-5)  # conserved exactly
        assert dvh.cumulative_cc[0] == pytest.approx(s.volume_cc, rel=1e-5)
        errors.append(dvh.volume_cc / true_cc - 1)
    errors = np.abs(errors)
    assert errors.mean() <= tol
    if each:
        assert errors.max() <= tol


def test_occupancy_conserves_volume_and_is_exact_on_the_same_grid():
    ct, dose_grid = _grids(10.0)
    rng = np.random.default_rng(3)
    mask = sphere_mask(ct, CENTRE, 9.0) & (rng.random(ct.shape) < 0.7)
    s = Structure("blob", mask, ct)
    occ = occupancy_on_grid(s, dose_grid)
    assert occ.min() >= 0 and occ.max() <= 1
    assert occ.sum() * dose_grid.voxel_volume_cc == pytest.approx(s.volume_cc, rel=1e-5)
    same = occupancy_on_grid(s, ct)
    np.testing.assert_array_equal(same > 0.5, mask)
    np.testing.assert_allclose(same[mask], 1.0, atol=1e-6)


def test_reference_on_identical_grids():
    """On a dose grid equal to the CT grid the DVH approaches voxel sorting."""
    ct, _ = _grids(10.0)
    s = Structure("S", sphere_mask(ct, CENTRE, 10.0), ct)
    z, y, x = ct.axis_coordinates_mm()
    dose = 50 + 10 * np.sin(z / 9)[:, None, None] + 0.5 * x[None, None, :] + 0 * y[None, :, None]
    dvh = compute_dvh(dose, ct, s)
    ref = np.sort(dose[s.mask])[::-1]
    for pct in (10, 50, 90):
        ref_d = ref[int(len(ref) * pct / 100)]
        assert dvh.dose_at_volume_pct(pct) == pytest.approx(ref_d, abs=0.3)
    assert dvh.mean_gy == pytest.approx(ref.mean(), rel=1e-3)


def test_uniform_dose_metrics():
    ct, dose_grid = _grids(10.0)
    s = Structure("S", sphere_mask(ct, CENTRE, 10.0), ct)
    dvh = compute_dvh(np.full(dose_grid.shape, 42.0), dose_grid, s)
    for spec in ("D95%", "D5%", "Dmean", "Dmax", "Dmin", "D0.03cc", "D1cc"):
        assert dvh.metric(spec) == pytest.approx(42.0, abs=0.02)
    assert dvh.metric("V41.9Gy") == pytest.approx(100.0)
    assert dvh.metric("V42.1Gy") == pytest.approx(0.0)
    assert dvh.metric("V41Gy[cc]") == pytest.approx(s.volume_cc, rel=1e-5)
    assert dvh.metric("V95%Rx", prescription_gy=42.0) == pytest.approx(100.0)
    assert dvh.metric("D95%[%Rx]", prescription_gy=84.0) == pytest.approx(50.0, abs=0.05)
    _centres, dv = dvh.differential()
    assert dv.sum() == pytest.approx(dvh.volume_cc, rel=1e-6)
    assert np.all(np.diff(dvh.cumulative_cc) <= 1e-12)


def test_compute_dvhs_on_structure_set_and_resampled_reuse():
    ct, dose_grid = _grids(10.0)
    a = Structure("Bladder", sphere_mask(ct, CENTRE, 8.0), ct)
    b = Structure("Rectum", sphere_mask(ct, (5.0, 3.0, 2.0), 4.0), ct)
    dose = _field(dose_grid, "linear_x")
    out = compute_dvhs(dose, dose_grid, StructureSet([a, b]))
    assert list(out) == ["Bladder", "Rectum"]
    pre = structure_on_dose_grid(a, dose_grid)
    again = compute_dvh(dose, dose_grid, pre)
    np.testing.assert_allclose(again.cumulative_cc, out["Bladder"].cumulative_cc)
    assert pre.total_volume_cc == pytest.approx(a.volume_cc, rel=1e-5)
    assert pre.occupancy_array().sum() * dose_grid.voxel_volume_cc == pytest.approx(
        a.volume_cc, rel=1e-5
    )


# ---------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    ct, dose_grid = _grids(10.0)
    s = Structure("PTV_1", sphere_mask(ct, CENTRE, 5.0), ct)
    dose = _field(dose_grid, "radial")
    bad = dose.copy()
    bad[np.unravel_index(structure_on_dose_grid(s, dose_grid).flat_index[0], dose.shape)] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_dvh(bad, dose_grid, s)
    with pytest.raises(ValueError, match="negative"):
        compute_dvh(dose - 1000, dose_grid, s)
    with pytest.raises(GridMismatchError, match="shape"):
        compute_dvh(dose[:-1], dose_grid, s)
    small = ImageGrid(shape=(3, 3, 3), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(100, 100, 100))
    with pytest.raises(GeometryError, match="outside the dose grid"):
        compute_dvh(np.zeros(small.shape), small, s)
    other_for = ImageGrid(
        dose_grid.shape, dose_grid.spacing_mm, dose_grid.origin_mm, frame_of_reference_uid="1.2.3"
    )
    ct_for = ImageGrid(ct.shape, ct.spacing_mm, ct.origin_mm, frame_of_reference_uid="1.2.4")
    with pytest.raises(GridMismatchError, match="frame of reference"):
        compute_dvh(dose, other_for, Structure("S", s.mask, ct_for))
    pre = structure_on_dose_grid(s, dose_grid)
    shifted = ImageGrid(
        dose_grid.shape, dose_grid.spacing_mm, tuple(o + 1 for o in dose_grid.origin_mm)
    )
    with pytest.raises(GridMismatchError, match="resampled"):
        compute_dvh(dose, shifted, pre)
    with pytest.raises(GeometryError, match="empty"):
        compute_dvh(dose, dose_grid, Structure("E", np.zeros(ct.shape, bool), ct))


def test_dose_check_looks_at_the_structure_voxels_only():
    ct, dose_grid = _grids(10.0)
    s = structure_on_dose_grid(Structure("S", sphere_mask(ct, CENTRE, 9.0), ct), dose_grid)
    dose = _field(dose_grid, "radial")
    ref = compute_dvh(dose, dose_grid, s)
    corner = tuple(a for a, _ in s.box)  # in the structure's box, outside the sphere
    assert np.ravel_multi_index(corner, dose.shape) not in set(s.flat_index.tolist())
    for value in (np.nan, np.inf, -5.0):
        bad = dose.copy()
        bad[corner] = value
        got = compute_dvh(bad, dose_grid, s)
        assert np.array_equal(got.cumulative_cc, ref.cumulative_cc)
    bad = dose.copy()
    bad.reshape(-1)[s.flat_index[-1]] = -1.0  # a full voxel
    with pytest.raises(ValueError, match="negative"):
        compute_dvh(bad, dose_grid, s)


def test_fast_paths_match_voxel_by_voxel_samples(monkeypatch):
    """Full voxels evaluated on box runs, in chunks, agree with per-voxel gathers."""
    import rtplan.dvh as dvh_module

    ct, dose_grid = _grids(30.0)
    s = structure_on_dose_grid(Structure("S", sphere_mask(ct, CENTRE, 30.0), ct), dose_grid)
    z, y, x = dose_grid.axis_coordinates_mm()
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    dose = _field(dose_grid, "radial") + 0.02 * xx * yy + 5.0 * np.sin(zz / 7.0)
    dose = np.clip(dose, 0.0, None)
    fast = compute_dvh(dose, dose_grid, s)
    monkeypatch.setattr(dvh_module, "_SAMPLE_CHUNK", 1000)  # several chunks, mixed ones
    chunked = compute_dvh(dose, dose_grid, s)
    monkeypatch.setattr(dvh_module, "_FIELD_MIN_FILL", 10**9)  # every voxel by gathers
    gathered = compute_dvh(dose, dose_grid, s)
    monkeypatch.setattr(dvh_module, "_SAMPLE_CHUNK", 10**5)  # gathers in one chunk
    reference = compute_dvh(dose, dose_grid, s)
    for other in (fast, chunked, gathered):
        assert np.array_equal(other.dose_gy, reference.dose_gy)
        assert np.allclose(other.cumulative_cc, reference.cumulative_cc, rtol=0, atol=1e-6)
        assert other.mean_gy == pytest.approx(reference.mean_gy, abs=1e-5)
        assert other.min_gy == pytest.approx(reference.min_gy, abs=1e-5)
        assert other.max_gy == pytest.approx(reference.max_gy, abs=1e-5)


# ---------------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    ("text", "kind", "at", "at_unit", "unit"),
    [
        ("V65Gy", "V", 65.0, "Gy", "%"),
        ("V45Gy[cc]", "V", 45.0, "Gy", "cc"),
        ("v 95 %Rx", "V", 95.0, "%Rx", "%"),
        ("D0.03cc", "D", 0.03, "cc", "Gy"),
        ("D95%", "D", 95.0, "%", "Gy"),
        ("D95%[%Rx]", "D", 95.0, "%", "%Rx"),
        ("Dmean", "Dmean", None, "", "Gy"),
        ("DMAX", "Dmax", None, "", "Gy"),
        ("Dmin", "Dmin", None, "", "Gy"),
    ],
)
def test_parse_metric(text, kind, at, at_unit, unit):
    m = parse_metric(text)
    assert (m.kind, m.at, m.at_unit, m.unit) == (kind, at, at_unit, unit)


@pytest.mark.parametrize("text", ["", "V65", "D95Gy", "V45Gy[Gy]", "Dmean[cc]", "X12", "V-5Gy"])
def test_parse_metric_rejects(text):
    with pytest.raises(ValueError, match="metric"):
        parse_metric(text)


def _ramp_dvh():
    """10 cc with doses spread uniformly over 0-100 Gy."""
    d = np.linspace(0, 100, 10001)
    return DVH("R", d, 10.0 * (1 - d / 100), 10.0, 50.0, 0.0, 100.0)


@pytest.mark.parametrize(
    ("text", "value", "passed", "margin"),
    [
        ("V65Gy<=35%", 35.0, True, 0.0),
        ("V60Gy<35%", 40.0, False, -5.0),
        ("V50Gy<=6cc", 5.0, True, 1.0),
        ("Dmean<=52Gy", 50.0, True, 2.0),
        ("D50%>=55Gy", 50.0, False, -5.0),
        ("D95%>=4%Rx", 5.0, True, 1.0),
        ("Dmax>60Gy", 99.7, True, 39.7),
    ],
)
def test_constraints(text, value, passed, margin):
    c = parse_constraint(text, structure="R", source="test")
    r = evaluate_constraint(c, _ramp_dvh(), prescription_gy=100.0)
    assert r.value == pytest.approx(value, abs=0.05)
    assert r.passed is passed
    assert r.margin == pytest.approx(margin, abs=0.05)


def test_constraint_from_toml_fields_and_errors():
    c = Constraint("Spc_Bowel", "V45Gy", "<", 195, "cc", source="QUANTEC Kavanagh 2010")
    assert c.parsed.unit == "cc"
    assert "Spc_Bowel V45Gy < 195 cc" == c.describe()
    with pytest.raises(ValueError, match="op"):
        Constraint("R", "V65Gy", "=<", 35, "%")
    with pytest.raises(ValueError, match="Gy or %Rx"):
        Constraint("R", "Dmean", "<=", 35, "%")
    with pytest.raises(ValueError, match="cannot parse constraint"):
        parse_constraint("V65Gy is small", structure="R")
    with pytest.raises(ValueError, match="prescription"):
        evaluate_constraint(parse_constraint("D95%>=95%Rx", structure="R"), _ramp_dvh())


# ---------------------------------------------------------------------------- gEUD / NTCP
def test_geud_limits():
    dvh = _ramp_dvh()
    assert geud_gy(dvh, 1.0) == pytest.approx(dvh.mean_gy, rel=1e-3)
    assert geud_gy(dvh, 0.005) == pytest.approx(100.0, rel=0.03)
    assert geud_gy(dvh, 0.005) > geud_gy(dvh, 0.1) > geud_gy(dvh, 1.0)
    with pytest.raises(ValueError, match="positive"):
        geud_gy(dvh, 0.0)


def _uniform_dvh(dose):
    d = np.arange(0, dose + 1.0, 0.01)
    return DVH("U", d, np.where(d <= dose, 5.0, 0.0), 5.0, dose, dose, dose)


def test_lkb_ntcp_half_at_td50_and_monotone():
    p = LKB_PARAMETERS["Rectum"]
    assert (p.td50_gy, p.m, p.n) == (76.9, 0.13, 0.09)
    assert lkb_ntcp(_uniform_dvh(76.9), p) == pytest.approx(0.5, abs=0.01)
    values = [lkb_ntcp(_uniform_dvh(d), p) for d in (40, 60, 70, 76.9, 85, 100)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert values[0] < 0.01 and values[-1] > 0.95
    assert lkb_ntcp(_uniform_dvh(50.0), td50_gy=50.0, m=0.2, n=0.5) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="parameters"):
        lkb_ntcp(_uniform_dvh(50.0))


def test_zero_dose_and_float32_input():
    ct, dose_grid = _grids(10.0)
    s = Structure("S", sphere_mask(ct, CENTRE, 6.0), ct)
    dvh = compute_dvh(np.zeros(dose_grid.shape, np.float32), dose_grid, s)
    assert dvh.mean_gy == 0.0 and dvh.min_gy == 0.0
    assert dvh.metric("Dmax") <= 0.01 and dvh.metric("V0.02Gy") == 0.0
    assert dvh.volume_cc == pytest.approx(s.volume_cc, rel=1e-5)
    d32 = compute_dvh(_field(dose_grid, "radial").astype(np.float32), dose_grid, s)
    d64 = compute_dvh(_field(dose_grid, "radial"), dose_grid, s)
    assert d32.metric("D50%") == pytest.approx(d64.metric("D50%"), abs=0.011)


# ---------------------------------------------------------------------------- argument checks
def test_arguments_of_the_wrong_type_are_refused_by_name():
    ct, dose_grid = _grids(10.0)
    s = Structure("S", sphere_mask(ct, CENTRE, 6.0), ct)
    dose = np.zeros(dose_grid.shape)
    with pytest.raises(TypeError, match="structure"):
        compute_dvh(dose, dose_grid, sphere_mask(ct, CENTRE, 6.0))
    with pytest.raises(TypeError, match="dose_grid"):
        compute_dvh(dose, dose_grid.shape, s)
    with pytest.raises(TypeError, match="structures"):
        compute_dvhs(dose, dose_grid, s)
    with pytest.raises(TypeError, match="structure"):
        structure_on_dose_grid("Rectum", dose_grid)
    with pytest.raises(TypeError, match="dose_grid"):
        occupancy_on_grid(s, None)
    dvh = _ramp_dvh()
    with pytest.raises(TypeError, match="constraint"):
        evaluate_constraint("V65Gy<=35%", dvh)
    with pytest.raises(TypeError, match="dvh"):
        evaluate_constraint(parse_constraint("V65Gy<=35%", structure="R"), dvh.cumulative_cc)
    with pytest.raises(TypeError, match="dvh"):
        geud_gy({"R": dvh}, 0.5)
    with pytest.raises(TypeError, match="dvh"):
        lkb_ntcp(None, LKB_PARAMETERS["Rectum"])
    with pytest.raises(TypeError, match="parameters"):
        lkb_ntcp(dvh, {"td50_gy": 76.9, "m": 0.13, "n": 0.09})
    with pytest.raises(TypeError, match="constraint text"):
        parse_constraint(35, structure="R")


@pytest.mark.parametrize("partial", [False, True])
def test_near_maximum_stays_under_a_flat_top(partial):
    """A plateau ending in a cliff: no part of the DVH lies above the highest dose (issue 12).

    The linear dose model of a voxel, spread by its central-difference gradient, put the
    plateau's edge voxels up to half a cliff above the plateau; the spread is now limited
    to the range of the voxel and its neighbours.
    """
    g = ImageGrid(shape=(12, 12, 12), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(0.0, 0.0, 0.0))
    dose = np.full(g.shape, 40.0)
    dose[:, :, :6] = 70.0  # flat top, then a 30 Gy cliff
    mask = np.zeros(g.shape, bool)
    if partial:  # a structure finer than the dose grid, partly occupying its voxels
        fine = ImageGrid(shape=(24, 24, 24), spacing_mm=(1.25,) * 3, origin_mm=(-0.625,) * 3)
        fmask = np.zeros(fine.shape, bool)
        fmask[5:19, 5:19, 3:17] = True
        s = Structure("S", fmask, fine)
    else:
        mask[2:10, 2:10, 2:10] = True
        s = Structure("S", mask, g)
    dvh = compute_dvh(dose, g, s)
    assert dvh.dose_at_volume_cc(0.03) <= 70.0 + 0.01
    assert dvh.max_gy <= 70.0 + 0.01
    assert dvh.min_gy >= 40.0 - 0.01


@pytest.mark.parametrize("kind", ["linear_x", "radial"])
def test_parts_of_a_structure_add_up_to_its_dvh(kind):
    """A sphere split by a plane into two parts (restricted): at every dose the two parts'
    volumes add up to the whole's (each voxel is sampled with its neighbours' doses as in
    the whole, so the split changes no sample), and the parts' volumes to the sphere's."""
    ct, dose_grid = _grids(12.0)
    sphere = Structure("S", sphere_mask(ct, CENTRE, 12.0), ct)
    dose = _field(dose_grid, kind, gradient=2.0)
    whole = structure_on_dose_grid(sphere, dose_grid)
    x = dose_grid.axis_coordinates_mm()[2]
    left = np.broadcast_to(x[None, None, :] < CENTRE[0], dose_grid.shape)
    a, b = restricted(whole, left, name="S left"), restricted(whole, ~left)
    assert a.name == "S left" and b.name == "S"
    assert 0.3 < a.total_volume_cc / whole.total_volume_cc < 0.7
    assert a.total_volume_cc + b.total_volume_cc == pytest.approx(whole.total_volume_cc)
    assert a.n_partial + b.n_partial == whole.n_partial
    dvh, da, db = (compute_dvh(dose, dose_grid, s) for s in (whole, a, b))
    for d in np.linspace(dose.min(), 80.0, 25):
        assert da.volume_at_dose_cc(d) + db.volume_at_dose_cc(d) == pytest.approx(
            dvh.volume_at_dose_cc(d), abs=2e-3 * whole.total_volume_cc
        )
    assert restricted(whole, np.zeros(dose_grid.shape, bool)).flat_index.size == 0
    with pytest.raises(GridMismatchError, match="shape"):
        restricted(whole, left[:-1])


def test_an_empty_part_has_no_dvh():
    ct, dose_grid = _grids(8.0)
    whole = structure_on_dose_grid(Structure("S", sphere_mask(ct, CENTRE, 8.0), ct), dose_grid)
    empty = restricted(whole, np.zeros(dose_grid.shape, bool))
    with pytest.raises(GeometryError, match="no dose voxel"):
        compute_dvh(np.zeros(dose_grid.shape), dose_grid, empty)
