"""Tests of anatomy completion (rtplan.completion, rtplan.atlas.complete_anatomy), issue 14.

One clinical case (a seeded atlas variant written as DICOM with only the clinical subset
of structures under vendor-style names, plus a sacrum) is completed once per module on
the coarse grid (5 x 3 x 3 mm); the tests check what was derived against the variant's
full truth. The accuracy on the default grid is measured by benchmarks/bench_completion.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from clinical_cases import (
    CLINICAL_SUBSET,
    ClinicalCase,
    Variant,
    scanner_ct,
    write_clinical_case,
)
from scipy import ndimage

from rtplan.atlas import (
    ATLAS_LANDMARKS,
    ATLAS_STRUCTURES,
    Atlas,
    _completed_landmarks,
    atlas_from_dicom,
    atlas_from_label_maps,
    complete_anatomy,
    read_landmarks,
)
from rtplan.completion import (
    BoneRules,
    CompletionSettings,
    RegistrationSettings,
    body_from_ct,
    bone_mask_from_ct,
    levels_between,
    structures_to_derive,
)
from rtplan.completion._sitk import sitk
from rtplan.completion.core import BONE_NAMES, DERIVATION_SPLIT
from rtplan.completion.landmarks import carry_with_group, group_anchors
from rtplan.completion.registration import Registration
from rtplan.errors import InvalidInputError, RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet
from rtplan.volumes import ctv_pelvic_nodes, ctv_prostate_bed

COARSE = (5.0, 3.0, 3.0)
SUBSET = (*CLINICAL_SUBSET, "Sacrum")  # a user sacrum: the sacral levels go inside it
VARIANT = Variant("seed3", seed=3, vendor="monaco", shift_mm=(4.0, -150.0, -420.0))
#: A landmark given explicitly: it must be used as given, never derived.
GIVEN_CUT_END_SHIFT_MM = (0.0, 0.0, 3.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def mean_surface_distance_mm(a: np.ndarray, b: np.ndarray, grid: ImageGrid) -> float:
    """Symmetric mean distance between the surfaces of two masks (mm)."""

    def surface(m):
        return m & ~ndimage.binary_erosion(m)

    both = np.argwhere(a | b)
    lo, hi = np.maximum(both.min(axis=0) - 2, 0), both.max(axis=0) + 3
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    sa, sb = surface(a[box]), surface(b[box])
    da = ndimage.distance_transform_edt(~sb, sampling=grid.spacing_mm)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=grid.spacing_mm)[sb]
    return float(np.concatenate([da, db]).mean())


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> ClinicalCase:
    folder = tmp_path_factory.mktemp("clinical") / "case"
    return write_clinical_case(folder, VARIANT, spacing_mm=COARSE, subset=SUBSET)


#: Faster registration for the coarse test grid (the defaults serve the default grid).
FAST = CompletionSettings(
    registration=RegistrationSettings(
        affine_spacing_mm=8.0,
        deformable_spacing_mm=6.0,
        demons_iterations=(20, 20),
        rigid_iterations=100,
        affine_iterations=100,
    )
)


@pytest.fixture(scope="module")
def completed(case):
    """The case completed (fast settings), the warnings raised, and the given landmark."""
    cut_end = np.add(case.truth.landmarks["VasDeferens_CutEnd"], GIVEN_CUT_END_SHIFT_MM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        user = atlas_from_dicom(case.folder)
        atlas = complete_anatomy(
            user, landmarks={"VasDeferens_CutEnd": tuple(cut_end)}, settings=FAST
        )
    return atlas, [w for w in caught if issubclass(w.category, RtplanWarning)], cut_end


# ------------------------------------------------------------------ point 1: completion
def test_the_clinical_case_lacks_what_planning_needs(case):
    """Without completion the clinical set misses bones, vessels, muscles and landmarks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        user = atlas_from_dicom(case.folder)
    missing = user.missing()
    assert {"A_Iliac_Ext_L", "VB_S1", "PubicSymphys", "Obturator_Int_L"} <= set(missing)
    assert "VasDeferens_CutEnd" in missing


def test_atlas_from_dicom_completes_on_request(case, monkeypatch):
    """complete=True hands the anatomy and the explicit landmarks to complete_anatomy."""
    import rtplan.atlas

    calls = []

    def fake(anatomy, *, landmarks=None, progress=None):
        calls.append((anatomy, landmarks))
        return anatomy

    monkeypatch.setattr(rtplan.atlas, "complete_anatomy", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        user = atlas_from_dicom(case.folder, complete=True, landmarks={"VUA": [1, 2, 3]})
    assert calls and calls[0][0] is user
    assert calls[0][1] == {"VUA": (1.0, 2.0, 3.0)}
    assert user.landmarks["VUA"] == (1.0, 2.0, 3.0)
    assert "VUA" not in user.landmark_derivations


def test_completion_derives_every_structure_and_landmark_planning_needs(completed):
    atlas, _, _ = completed
    assert atlas.missing() == []
    assert set(ATLAS_LANDMARKS) <= set(atlas.landmarks)


def test_user_structures_win_and_are_not_marked(case, completed):
    atlas, _, _ = completed
    for name in SUBSET:
        s = atlas.structures[name]
        assert not s.derived, name
        assert np.array_equal(s.mask, case.truth.structures[name].mask), name


def test_every_derived_structure_is_marked_and_listed_in_a_warning(completed):
    atlas, caught, _ = completed
    derived = [n for n in ATLAS_STRUCTURES if n not in SUBSET]
    for name in derived:
        assert atlas.structures[name].derived, name
        assert atlas.structures[name].derivation
    assert list(atlas.derived_structures) == [n for n in atlas.structures if n in derived]
    text = " ".join(str(w.message) for w in caught)
    assert "anatomy completion derived" in text
    for name in derived:
        assert name in text
    kinds = {kind for kind, _, _ in atlas.derivations()}
    assert kinds == {"structure", "landmark"}
    assert atlas.parameters["completion"]["derived_structures"] == list(atlas.derived_structures)


def test_no_derived_structure_overlaps_a_user_structure(completed):
    atlas, _, _ = completed
    user = np.zeros(atlas.grid.shape, bool)
    for name in SUBSET:
        if name not in ("Body", "Sacrum"):
            user |= atlas.structures[name].mask
    for name, s in atlas.structures.items():
        if s.derived and name not in ("VB_S1", "VB_S2", "VB_S3"):
            assert not (s.mask & user).any(), name
            assert not (s.mask & atlas.structures["Sacrum"].mask).any(), name
    levels = [atlas.structures[n].mask for n in ("VB_S1", "VB_S2", "VB_S3")]
    sacrum = atlas.structures["Sacrum"].mask
    assert all(not (m & ~sacrum).any() for m in levels)  # the levels lie in the user's sacrum


def test_explicit_landmarks_override_derivation(completed):
    atlas, _, cut_end = completed
    assert atlas.landmarks["VasDeferens_CutEnd"] == pytest.approx(tuple(cut_end))
    assert "VasDeferens_CutEnd" not in atlas.landmark_derivations
    assert "VUA" in atlas.landmark_derivations


def test_read_landmarks_from_toml(tmp_path):
    f = tmp_path / "landmarks.toml"
    f.write_text("[landmarks]\nVUA = [0.0, -40.0, -25.5]\nS3_Bottom = [0, 52, 30]\n")
    assert read_landmarks(f) == {"VUA": (0.0, -40.0, -25.5), "S3_Bottom": (0.0, 52.0, 30.0)}
    f.write_text("VUA = [0.0, -40.0]\n")
    with pytest.raises(InvalidInputError, match="VUA"):
        read_landmarks(f)


# ------------------------------------------------------------------ accuracy (coarse grid)
def test_derived_bones_follow_the_ct(case, completed):
    """Every derived bone, sacral levels included, has Dice >= 0.9 with the truth."""
    atlas, _, _ = completed
    for name in (*BONE_NAMES, "VB_S1", "VB_S2", "VB_S3"):
        if name in SUBSET:
            continue
        assert dice(atlas.structures[name].mask, case.truth.structures[name].mask) >= 0.9, name


def test_iliac_vessels_lie_within_5_mm(case, completed):
    atlas, _, _ = completed
    for name in ATLAS_STRUCTURES:
        if name.startswith(("A_Iliac", "V_Iliac")):
            msd = mean_surface_distance_mm(
                atlas.structures[name].mask, case.truth.structures[name].mask, atlas.grid
            )
            assert msd <= 5.0, (name, msd)


def test_landmarks_lie_within_one_slice(case, completed):
    atlas, _, _ = completed
    slice_mm = atlas.grid.spacing_mm[0]
    for key, p in case.truth.landmarks.items():
        if key == "VasDeferens_CutEnd":  # given explicitly, 3 mm off on purpose
            continue
        assert abs(atlas.landmarks[key][2] - p[2]) <= slice_mm, key


def test_targets_from_the_completed_anatomy_match_the_full_truth(case, completed):
    atlas, _, _ = completed
    moved = dict(atlas.landmarks)
    moved["VasDeferens_CutEnd"] = case.truth.landmarks["VasDeferens_CutEnd"]
    ours = Atlas(
        name="ours",
        grid=atlas.grid,
        ct_hu=atlas.ct_hu,
        structures=atlas.structures,
        landmarks=moved,
    )
    truth = Atlas(
        name="truth",
        grid=atlas.grid,
        ct_hu=atlas.ct_hu,
        structures=StructureSet(
            [
                Structure.from_cropped(
                    s.name,
                    s.cropped_mask,
                    (s.bbox[0].start, s.bbox[1].start, s.bbox[2].start),
                    atlas.grid,
                    role=s.role,
                )
                for s in case.truth.structures.values()
                if s.bbox is not None
            ]
        ),
        landmarks=dict(case.truth.landmarks),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)  # PTV-free: no clipping warnings
        assert dice(ctv_prostate_bed(ours).mask, ctv_prostate_bed(truth).mask) >= 0.85
        assert dice(ctv_pelvic_nodes(ours).mask, ctv_pelvic_nodes(truth).mask) >= 0.85


def test_completion_records_its_time_and_registration(completed):
    atlas, _, _ = completed
    rec = atlas.parameters["completion"]
    assert rec["reference"] == "male_pelvis_postop"
    assert {"rigid", "affine", "demons"} <= set(rec["registration_metrics"])
    assert rec["seconds"]["total"] < 60.0
    assert "Bladder" in rec["shared_organs"]


# ------------------------------------------------------------------ point 7: truncated scans
def test_a_landmark_carried_outside_the_scan_is_refused():
    grid = ImageGrid(shape=(10, 4, 4), spacing_mm=(5.0, 3.0, 3.0), origin_mm=(0.0, 0.0, 100.0))
    aorta = np.zeros(grid.shape, bool)
    aorta[0:4, 1:3, 1:3] = True  # reaches the bottom slice: its bottom is cut
    user = Atlas(
        name="cut",
        grid=grid,
        ct_hu=np.zeros(grid.shape, np.float32),
        structures=StructureSet([Structure("A_Aorta", aorta, grid)]),
        landmarks={},
    )
    outside = {"AorticBifurcation": (0.0, 0.0, 80.0)}  # below the first slice (z = 100)
    points, how, refused = _completed_landmarks(user, user.structures, outside, {})
    assert "AorticBifurcation" not in points
    assert "outside the scan" in refused["AorticBifurcation"]
    inside = {"AorticBifurcation": (0.0, 0.0, 112.0)}
    points, how, refused = _completed_landmarks(user, user.structures, inside, {})
    assert points["AorticBifurcation"][2] == 112.0
    assert "cut by the scan's edge" in how["AorticBifurcation"]
    assert "AorticBifurcation" not in refused


# ------------------------------------------------------------------ building blocks
def test_body_and_bones_from_ct_thresholds():
    grid = ImageGrid(shape=(4, 20, 20), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    ct = np.full(grid.shape, -1000.0, np.float32)
    ct[:, 2:18, 2:18] = 0.0  # patient
    ct[:, 5:15, 5:15] = 700.0  # a bone ring ...
    ct[:, 7:13, 7:13] = 250.0  # ... with marrow
    ct[:, 9:11, 9:11] = 20.0  # ... and a canal of soft tissue
    body = body_from_ct(ct, grid)
    assert body.sum() == 4 * 16 * 16
    bone = bone_mask_from_ct(ct, grid, body=body)
    assert bone[:, 8, 8].all() and not bone[:, 9, 9].any()  # marrow in, canal out
    assert not bone_mask_from_ct(ct, grid, body=body, rules=BoneRules(threshold_hu=800.0)).any()


def test_levels_are_stacked_slabs_between_their_planes():
    region = np.ones((10, 2, 2), bool)
    z = np.arange(10) * 2.0
    out = levels_between(region, z, {"S1": (15.0, 40.0), "S2": (11.0, 15.0)})
    assert out["S1"][:, 0, 0].tolist() == [False] * 8 + [True] * 2
    assert out["S2"][:, 0, 0].tolist() == [False] * 6 + [True] * 2 + [False] * 2


def test_bowel_loops_stand_in_for_the_bowel_bag():
    g = ImageGrid(shape=(2, 2, 2), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    ss = StructureSet([Structure("Bowel_Small", np.ones(g.shape, bool), g)])
    assert structures_to_derive(ss, ["Spc_Bowel", "Colon_Sigmoid"]) == ["Colon_Sigmoid"]


def test_complete_anatomy_checks_its_arguments(coarse_atlas):
    with pytest.raises(TypeError, match="anatomy"):
        complete_anatomy("not an atlas")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="VUA"):
        complete_anatomy(coarse_atlas, landmarks={"VUA": (0.0, float("nan"), 1.0)})
    with pytest.raises(TypeError, match="settings"):
        complete_anatomy(coarse_atlas, settings="fast")  # type: ignore[arg-type]
    assert isinstance(CompletionSettings().bones, BoneRules)


def test_a_dicom_folder_is_needed(tmp_path: Path):
    with pytest.raises(Exception, match="does not exist"):
        atlas_from_dicom(tmp_path / "nowhere", complete=True)


# ------------------------------------------------------------------ landmarks with their group
def test_pelvic_floor_landmarks_are_carried_with_the_penile_bulb(case, completed):
    """VUA follows the given penile bulb (same variation group), within half a slice."""
    atlas, _, _ = completed
    assert atlas.landmark_derivations["VUA"] == "atlas landmark carried with the given PenileBulb"
    slice_mm = atlas.grid.spacing_mm[0]
    assert abs(atlas.landmarks["VUA"][2] - case.truth.landmarks["VUA"][2]) <= slice_mm / 2


def _translation(shift_mm):
    """A registration whose every part maps a patient point p to the atlas point p + shift."""
    t = sitk.TranslationTransform(3, tuple(float(v) for v in shift_mm))
    return Registration(transform=t, linear=t, metrics={}, seconds={}, shared_organs=())


def _box_structure(name, grid, k0, k1):
    mask = np.zeros(grid.shape, bool)
    mask[k0:k1, 3:6, 3:6] = True
    return Structure(name, mask, grid)


def test_a_landmark_moves_with_its_group_beyond_the_affine_part():
    grid = ImageGrid(shape=(20, 10, 10), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    reference = StructureSet([_box_structure("PenileBulb", grid, 4, 8)])
    reg = _translation((0.0, 0.0, -6.0))  # the atlas lies 6 mm below the patient
    # the patient's bulb sits 4 mm (two slices) higher than the affine part puts it
    patient = StructureSet([_box_structure("PenileBulb", grid, 9, 13)])
    points = {"VUA": (6.0, 8.0, 20.0), "S3_Bottom": (6.0, 8.0, 30.0)}
    anchors = group_anchors(
        {"PenileBulb": "pelvic_floor", "VUA": "pelvic_floor", "S3_Bottom": "bones"},
        points,
        ["PenileBulb"],
    )
    assert anchors == {"VUA": ("PenileBulb",)}
    out = carry_with_group(reg, reference, points, patient, anchors)
    assert out["VUA"][1] == ("PenileBulb",)
    assert out["VUA"][0] == pytest.approx((6.0, 8.0, 20.0 + 6.0 + 4.0))
    # an anchor cut by the scan's edge is not used
    cut = StructureSet([_box_structure("PenileBulb", grid, 15, 20)])
    assert carry_with_group(reg, reference, points, cut, anchors) == {}


def test_bone_groups_and_ungiven_groups_have_no_anchors():
    groups = {
        "Femur_Head_L": "bones",
        "FemurHead_Top_L": "bones",
        "A_Aorta": "vessels",
        "AorticBifurcation": "vessels",
    }
    assert group_anchors(groups, ["FemurHead_Top_L", "AorticBifurcation"], ["Femur_Head_L"]) == {}


# ------------------------------------------------------------------ combined labels
def _nifti(array: np.ndarray, grid: ImageGrid):
    """An [k, j, i] LPS identity-grid array as a NIfTI image with a positive RAS affine."""
    nib = pytest.importorskip("nibabel", reason="nibabel (extra 'nifti') reads label maps")
    data = np.ascontiguousarray(np.transpose(array[:, ::-1, ::-1], (2, 1, 0)))
    _, ny, nx = grid.shape
    sz, sy, sx = grid.spacing_mm
    x0, y0, z0 = grid.origin_mm
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(x0 + (nx - 1) * sx), -(y0 + (ny - 1) * sy), z0]
    return nib.Nifti1Image(data, affine)


#: TotalSegmentator classes written for the label-map case, and the truth they hold.
TS_COMBINED = {
    "iliac_artery_left": ("A_Iliac_L", "A_Iliac_Ext_L"),
    "iliac_artery_right": ("A_Iliac_R", "A_Iliac_Ext_R"),
    "iliac_vena_left": ("V_Iliac_L", "V_Iliac_Ext_L"),
    "iliac_vena_right": ("V_Iliac_R", "V_Iliac_Ext_R"),
    "urinary_bladder": ("Bladder",),
    "rectum": ("Rectum",),
}


def test_combined_iliac_labels_are_split_at_the_derived_bifurcation(case, tmp_path):
    """TotalSegmentator's common+external iliac labels: every voxel kept, split by segment."""
    truth = case.truth
    for cls, names in TS_COMBINED.items():
        mask = np.zeros(truth.grid.shape, bool)
        for n in names:
            mask |= truth.structures[n].mask
        _nifti(mask.astype(np.uint8), truth.grid).to_filename(tmp_path / f"{cls}.nii.gz")
    ct = np.round(scanner_ct(truth, seed=3)).astype(np.int16)
    _nifti(ct, truth.grid).to_filename(tmp_path / "ct.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        user = atlas_from_label_maps(tmp_path)
        assert user.parameters["combined_labels"]["A_Iliac_L"] == ["A_Iliac_L", "A_Iliac_Ext_L"]
        done = complete_anatomy(user, settings=FAST)
    assert done.parameters["completion"]["split_labels"] == [
        "A_Iliac_L",
        "A_Iliac_R",
        "V_Iliac_L",
        "V_Iliac_R",
    ]
    assert "combined_labels" not in done.parameters  # split once, not again
    for cls, names in TS_COMBINED.items():
        if len(names) == 1:
            continue
        given = user.structures[names[0]].mask
        upper, lower = (done.structures[n] for n in names)
        assert upper.derivation == lower.derivation == DERIVATION_SPLIT
        assert np.array_equal(upper.mask | lower.mask, given), cls  # every voxel kept
        assert not (upper.mask & lower.mask).any(), cls
        for s in (upper, lower):
            assert dice(s.mask, truth.structures[s.name].mask) >= 0.8, s.name
