"""The demo cases: lesions placed from the atlas geometry, staged as intended; the demo run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rtplan.demo import DEMO_CASE_NAMES, Case, demo_cases, run_demo
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

SMALL_SPACING = (5.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def atlas():
    from rtplan.atlas import load_atlas

    return load_atlas("male_pelvis_postop", spacing_mm=SMALL_SPACING)


@pytest.fixture(scope="module")
def cases(atlas):
    return {c.name: c for c in demo_cases(atlas)}


def _vessel_and_bone(atlas) -> np.ndarray:
    out = np.zeros(atlas.grid.shape, bool)
    for name, s in atlas.structures.items():
        if name.startswith(("A_", "V_", "Bone_", "VB_")) or name in ("Sacrum", "PubicSymphys"):
            out |= s.mask
    return out


def test_four_cases_in_order(cases):
    assert tuple(cases) == DEMO_CASE_NAMES
    assert cases["T0N0M0"].gtvs == ()
    assert [len(c.gtvs) for c in cases.values()] == [0, 1, 2, 2]
    for c in cases.values():
        assert len(c.suv_max) == len(c.gtvs)
        assert all(g.role == "gtv" and not g.is_empty for g in c.gtvs)
        assert len({g.name for g in c.gtvs}) == len(c.gtvs)


def test_local_recurrence_at_the_vua(atlas, cases):
    (gtv,) = cases["TrN0M0"].gtvs
    assert 0.8 <= gtv.volume_cc <= 2.0
    vua = np.asarray(atlas.landmarks["VUA"])
    centroid = np.asarray(gtv.centroid_mm)
    assert np.linalg.norm(centroid - vua) < 8.0
    assert centroid[1] >= vua[1] - 1.0  # not anterior of the VUA (shifted posterior)
    assert not np.any(gtv.mask & atlas.structures["Rectum"].mask)


@pytest.mark.parametrize(
    ("case", "index", "vessel"),
    [("N1M0", 0, "A_Iliac_Ext_L"), ("N1M0", 1, "A_Iliac_Int_R"), ("M1b", 1, "A_Iliac_Int_L")],
)
def test_nodes_sit_next_to_their_vessel_outside_vessels_and_bone(atlas, cases, case, index, vessel):
    node = cases[case].gtvs[index]
    assert 0.3 <= node.volume_cc <= 1.0
    assert not np.any(node.mask & _vessel_and_bone(atlas))
    assert not np.any(node.mask & ~atlas.structures["Body"].mask)
    # the node's nearest vessel voxel is within a few mm of its surface
    v = atlas.structures[vessel]
    vessel_pts = atlas.grid.index_to_lps(np.argwhere(v.mask))
    centroid = np.asarray(node.centroid_mm)
    d_min = float(np.min(np.linalg.norm(vessel_pts - centroid, axis=1)))
    assert d_min < 12.0
    # on the vessel's side of the body
    side = np.sign(centroid[0] - atlas.grid.center_mm[0])
    assert side == (1.0 if vessel.endswith("_L") else -1.0)


def test_bone_lesion_inside_its_bone(atlas, cases):
    bone_gtv = cases["M1b"].gtvs[0]
    assert 1.0 <= bone_gtv.volume_cc <= 2.5
    host = {"GTVm_Ilium_R": "Bone_Ilium_R", "GTVm_S1": "VB_S1", "GTVm_Sacrum": "Sacrum"}
    bone = atlas.structures[host[bone_gtv.name]]
    assert not np.any(bone_gtv.mask & ~bone.mask)


def test_two_nodes_do_not_overlap_each_other_or_the_bone_lesion(cases):
    a, b = cases["N1M0"].gtvs
    assert not np.any(a.mask & b.mask)
    bone, node = cases["M1b"].gtvs
    assert not np.any(bone.mask & node.mask)


def test_label_map_and_suv_image(atlas, cases):
    case = cases["N1M0"]
    labels = case.label_map
    assert labels.shape == atlas.grid.shape
    for n, gtv in enumerate(case.gtvs, start=1):
        assert np.array_equal(labels == n, gtv.mask)
    suv = case.suv_image(atlas.grid)
    for gtv, peak in zip(case.gtvs, case.suv_max):
        assert float(suv[gtv.mask].max()) == pytest.approx(peak, rel=1e-6)
        assert float(suv[gtv.mask].min()) >= 0.5 * peak - 1e-6
    assert float(suv[labels == 0].max()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no lesion"):
        _ = cases["T0N0M0"].label_map


def _shifted(atlas, shift_mm):
    """The same anatomy with the whole patient translated by ``shift_mm`` (LPS)."""
    g = atlas.grid
    grid = ImageGrid(
        shape=g.shape,
        spacing_mm=g.spacing_mm,
        origin_mm=tuple(np.add(g.origin_mm, shift_mm)),
        direction=g.direction,
    )
    ss = StructureSet(
        [Structure(s.name, s.mask, grid, role=s.role) for s in atlas.structures.values()],
        grid=grid,
    )
    marks = {k: tuple(np.add(v, shift_mm)) for k, v in atlas.landmarks.items()}
    return SimpleNamespace(name=atlas.name, grid=grid, structures=ss, landmarks=marks)


def test_lesions_follow_the_anatomy_not_fixed_coordinates(atlas, cases):
    """Translating the patient by whole voxels translates every lesion by the same amount."""
    shift = np.multiply((2, -1, 3), atlas.grid.spacing_mm[::-1])  # (x, y, z) whole voxels
    moved = {c.name: c for c in demo_cases(_shifted(atlas, shift))}
    for name in DEMO_CASE_NAMES:
        for a, b in zip(cases[name].gtvs, moved[name].gtvs):
            assert a.name == b.name
            assert np.array_equal(a.cropped_mask, b.cropped_mask)
            assert np.allclose(np.subtract(b.centroid_mm, a.centroid_mm), shift, atol=1e-6)


def test_cases_are_staged_as_intended(atlas, cases):
    from rtplan import staging
    from rtplan.demo import case_lesions

    got = {}
    for name, case in cases.items():
        st = staging.stage(case_lesions(case, atlas), atlas)
        got[name] = st
        if case.expected_stage == "M1b":
            assert st.m == "M1b" and st.oligometastatic
        else:
            assert st.string == case.expected_stage
    assert got["N1M0"].nodal_regions  # both nodes are pelvic nodes
    cats = [les.category for les in got["M1b"].lesions]
    assert sorted(cats) == ["M1b", "N1"]


def test_case_lesions_carry_the_suv(atlas, cases):
    from rtplan.demo import case_lesions

    les = case_lesions(cases["M1b"], atlas)
    assert len(les) == 2
    assert [round(x.suv_max, 3) for x in les] == [round(v, 3) for v in cases["M1b"].suv_max]
    assert len(case_lesions(cases["T0N0M0"], atlas)) == 0


def test_case_is_frozen():
    c = Case("x", "t", "d", (), (), "T0N0M0")
    with pytest.raises(AttributeError):
        c.name = "y"  # type: ignore[misc]


def test_run_demo_unknown_case_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="T0N0M0, TrN0M0, N1M0, M1b"):
        run_demo(tmp_path / "d", cases=["T9"])
    assert list(tmp_path.iterdir()) == []


def test_run_demo_failure_leaves_no_folder(tmp_path, monkeypatch, atlas):
    """A failing step removes the partial output (nothing half-written)."""
    import rtplan.demo as demo_mod

    def boom(*args, **kwargs):
        raise RuntimeError("step failed")

    monkeypatch.setattr(demo_mod, "run_case", boom)
    with pytest.raises(RuntimeError, match="step failed"):
        run_demo(tmp_path / "d", spacing_mm=SMALL_SPACING, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_run_demo_hands_each_case_its_job_and_clears_them(tmp_path, monkeypatch, atlas):
    """The forked workers' state: one job per case while the run lasts, none after it."""
    import rtplan.demo as demo_mod

    seen = {}

    def stop(case, atlas_, folder, **kwargs):
        seen[case.name] = (sorted(demo_mod._JOBS), atlas_ is atlas)
        raise RuntimeError("stop")

    monkeypatch.setattr(demo_mod, "load_atlas", lambda name, spacing_mm=None: atlas)
    monkeypatch.setattr(demo_mod, "run_case", stop)
    with pytest.raises(RuntimeError, match="stop"):
        run_demo(tmp_path / "d", cases=["n1m0", "T0N0M0"], jobs=1, progress=False)
    assert seen == {"N1M0": (["N1M0", "T0N0M0"], True)}
    assert demo_mod._JOBS == {}
    assert list(tmp_path.iterdir()) == []


def test_run_demo_two_cases_in_two_workers(tmp_path):
    summary = run_demo(
        tmp_path / "d",
        spacing_mm=SMALL_SPACING,
        dose_spacing_mm=4.0,
        cases=["M1b", "T0N0M0"],
        jobs=2,
        progress=False,
    )
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["M1b", "T0N0M0"]
    assert [c.name for c in summary.cases] == ["M1b", "T0N0M0"]
    for case in summary.cases:
        folder = tmp_path / "d" / case.name
        names = sorted(p.name for p in folder.iterdir())
        assert "ct" in names and "report.html" in names
        assert {"metrics.csv", "metrics.json"} <= set(names)
        assert len([n for n in names if n.startswith("RS_")]) == 1
        rd = [n for n in names if n.startswith("RD_")]
        assert len(rd) == len(case.options) >= 2
        table = json.loads((folder / "metrics.json").read_text())
        assert table["options"] == case.options
        assert case.bytes_written > 0 and case.folder == tmp_path / "d" / case.name
    m1b, t0 = summary.cases
    assert m1b.stage.endswith("M1b") and t0.stage == "T0N0M0"
    assert any("SBRT" in option for option in m1b.options)
    # the CT series is the same files in both cases (hard links) and counted once on disk
    ct_a = sorted((tmp_path / "d" / "M1b" / "ct").iterdir())
    ct_b = sorted((tmp_path / "d" / "T0N0M0" / "ct").iterdir())
    assert [p.name for p in ct_a] == [p.name for p in ct_b]
    assert ct_a[0].read_bytes() == ct_b[0].read_bytes()
    assert summary.disk_bytes < summary.bytes_written
    # the workers' step timings come back to the parent
    assert summary.jobs == 2
    names = [name for name, _ in summary.timings]
    assert names.count("writing RTSTRUCT") == 2 and "building atlas" in names
    assert len(summary.cpu_timings) == len(summary.timings)
    assert "M1b" in summary.text() and summary.seconds > 0
