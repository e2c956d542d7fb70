"""Tests for rtplan.staging on a synthetic pelvis-like atlas (boxes, spheres, tubes)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from phantoms import box_mask, sphere_mask

from rtplan.errors import GridMismatchError, MissingStructureError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesions, lesions_from_mask
from rtplan.staging import AtlasLike, Stage, StagingRules, check_atlas, stage
from rtplan.structures import Structure, StructureSet


def tube_mask(grid: ImageGrid, p0, p1, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the segment p0-p1 (LPS mm)."""
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    lo = grid.lps_to_nearest_index(np.minimum(a, b) - radius_mm) - 1
    hi = grid.lps_to_nearest_index(np.maximum(a, b) + radius_mm) + 2
    lo, hi = np.clip(lo, 0, grid.shape), np.clip(hi, 0, grid.shape)
    out = np.zeros(grid.shape, bool)
    if np.any(hi <= lo):
        return out
    sub = tuple(slice(int(u), int(v)) for u, v in zip(lo, hi))
    idx = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in sub), indexing="ij"), -1)
    pts = grid.index_to_lps(idx)
    ab = b - a
    t = np.clip(((pts - a) @ ab) / (ab @ ab), 0.0, 1.0)
    d = np.linalg.norm(pts - (a + t[..., None] * ab), axis=-1)
    out[sub] = d <= radius_mm
    return out


def ellipsoid_mask(grid, centre, radii):
    z, y, x = grid.axis_coordinates_mm()
    cx, cy, cz = centre
    rx, ry, rz = radii
    return (
        ((x[None, None, :] - cx) / rx) ** 2
        + ((y[None, :, None] - cy) / ry) ** 2
        + ((z[:, None, None] - cz) / rz) ** 2
    ) <= 1.0


# Geometry of the synthetic pelvis (LPS mm; +x left, +y posterior, +z superior; midline x=0)
PROMONTORY = (0.0, 40.0, 120.0)
BIFURCATION = (5.0, 20.0, 157.0)
CI_END = {"L": (40.0, 25.0, 120.0), "R": (-40.0, 25.0, 120.0)}
EI_END = {"L": (70.0, -40.0, 15.0), "R": (-70.0, -40.0, 15.0)}
II_END = {"L": (45.0, 45.0, 50.0), "R": (-45.0, 45.0, 50.0)}


def build_atlas():
    grid = ImageGrid(
        shape=(100, 60, 90), spacing_mm=(3.0, 3.0, 3.0), origin_mm=(-133.5, -88.5, -99)
    )
    s: dict[str, np.ndarray] = {}
    s["Body"] = ellipsoid_mask(grid, (0, 0, 50), (140, 95, 400))
    s["PubicSymphys"] = box_mask(grid, (-10, -70, -30), (10, -55, 0))
    for side, sign in (("L", 1), ("R", -1)):
        s[f"Femur_Head_{side}"] = sphere_mask(grid, (85 * sign, -20, -10), 22)
        s[f"Bone_Ilium_{side}"] = box_mask(
            grid, (min(95 * sign, 120 * sign), -40, 20), (max(95 * sign, 120 * sign), 40, 110)
        )
        s[f"Bone_Ischium_{side}"] = box_mask(
            grid, (min(70 * sign, 90 * sign), 0, -60), (max(70 * sign, 90 * sign), 30, -35)
        )
        s[f"Obturator_Int_{side}"] = box_mask(
            grid, (min(55 * sign, 63 * sign), -30, -35), (max(55 * sign, 63 * sign), 20, 30)
        )
        ci, ei, ii = CI_END[side], EI_END[side], II_END[side]
        s[f"A_Iliac_{side}"] = tube_mask(grid, BIFURCATION, ci, 6)
        s[f"V_Iliac_{side}"] = tube_mask(grid, (-12, 28, 157), np.add(ci, (-6 * sign, 8, 0)), 7)
        s[f"A_Iliac_Ext_{side}"] = tube_mask(grid, ci, ei, 4)
        s[f"V_Iliac_Ext_{side}"] = tube_mask(
            grid, np.add(ci, (-6 * sign, 8, 0)), np.add(ei, (-8 * sign, 6, 0)), 5
        )
        s[f"A_Iliac_Int_{side}"] = tube_mask(grid, ci, ii, 3)
        s[f"V_Iliac_Int_{side}"] = tube_mask(
            grid, np.add(ci, (-6 * sign, 8, 0)), np.add(ii, (0, 6, 0)), 4
        )
    s["VB_S1"] = box_mask(grid, (-40, 40, 90), (40, 70, 120))
    s["VB_S2"] = box_mask(grid, (-40, 40, 60), (40, 70, 89))
    s["VB_S3"] = box_mask(grid, (-40, 40, 30), (40, 70, 59))
    s["Sacrum"] = s["VB_S1"] | s["VB_S2"] | s["VB_S3"]
    s["Coccyx"] = box_mask(grid, (-10, 55, 0), (10, 70, 29))
    s["VB_L5"] = box_mask(grid, (-25, 30, 125), (25, 65, 155))
    s["VB_L4"] = box_mask(grid, (-25, 30, 160), (25, 65, 190))
    s["A_Aorta"] = tube_mask(grid, (5, 20, 157), (5, 20, 250), 8)
    s["V_Venacava_I"] = tube_mask(grid, (-20, 25, 157), (-20, 25, 250), 9)
    s["Bladder"] = ellipsoid_mask(grid, (0, -30, 25), (35, 25, 25))
    s["ProstateBed"] = box_mask(grid, (-15, -25, -25), (15, 5, 0))
    s["Rectum"] = tube_mask(grid, (0, 25, -40), (0, 25, 30), 12)
    roles = {"ProstateBed": "ctv", "Body": "external"}
    ss = StructureSet([Structure(n, m, grid, role=roles.get(n, "organ")) for n, m in s.items()])
    lm = {
        "SacralPromontory": PROMONTORY,
        "AorticBifurcation": BIFURCATION,
        "L4L5_Interspace": (0.0, 45.0, 157.0),
        "L5S1_Interspace": (0.0, 45.0, 122.0),
        "PubicSymphysis_Top": (0.0, -62.0, 0.0),
        "S3_Bottom": (0.0, 45.0, 30.0),
        "FemurHead_Top_L": (85.0, -20.0, 12.0),
        "FemurHead_Top_R": (-85.0, -20.0, 12.0),
    }
    return SimpleNamespace(name="synthetic", grid=grid, structures=ss, landmarks=lm, ct_hu=None)


@pytest.fixture(scope="module")
def atlas():
    return build_atlas()


# name: (centre mm, radius mm, expected category, expected region code)
PLACED = {
    "bed": ((0.0, -10.0, -12.0), 6.0, "Tr", "bed"),
    "EI_L": ((67.0, -7.5, 67.5), 5.0, "N1", "EI"),
    "II_R": ((-33.0, 30.0, 71.0), 5.0, "N1", "II"),
    "OB_L": ((45.0, 0.0, 0.0), 5.0, "N1", "OB"),
    "PS": ((0.0, 25.0, 75.0), 5.0, "N1", "PS"),
    "OP_perirectal": ((0.0, 5.0, 10.0), 4.0, "N1", "OP"),
    "OP_uncertain": ((-30.0, -10.0, 40.0), 4.0, "N1", "OP"),
    "CI_R": ((-35.0, 25.0, 135.0), 5.0, "M1a", "CI"),
    "RP": ((25.0, 20.0, 175.0), 5.0, "M1a", "RP"),
    "inguinal_L": ((90.0, -60.0, -5.0), 5.0, "M1a", "OE"),
    "below_hip": ((20.0, -40.0, -75.0), 5.0, "M1a", "OE"),
    "bone_ilium_L": ((107.0, 0.0, 60.0), 6.0, "M1b", "bone"),
    "bladder_organ": ((0.0, -30.0, 30.0), 6.0, "M1c", "other"),
}


def lesions_at(atlas, names):
    labels = np.zeros(atlas.grid.shape, np.int32)
    for n, name in enumerate(names, start=1):
        centre, radius, _, _ = PLACED[name]
        labels[sphere_mask(atlas.grid, centre, radius)] = n
    les = lesions_from_mask(labels, atlas.grid)
    assert len(les) == len(names)
    return les


@pytest.fixture(scope="module")
def all_staged(atlas):
    names = list(PLACED)
    st = stage(lesions_at(atlas, names), atlas)
    return dict(zip(names, st.lesions)), st


@pytest.mark.parametrize("name", list(PLACED))
def test_lesion_in_each_region(all_staged, name):
    by_name, _ = all_staged
    les = by_name[name]
    _, _, category, code = PLACED[name]
    assert (les.category, les.region_code) == (category, code), les.row()
    assert les.region_uncertain == (name == "OP_uncertain")


def test_regions_named(all_staged):
    by_name, _ = all_staged
    assert by_name["EI_L"].region == "external iliac" and by_name["EI_L"].side == "L"
    assert by_name["II_R"].side == "R"
    assert by_name["PS"].side == "midline"
    assert by_name["bone_ilium_L"].region == "Bone_Ilium_L"
    assert by_name["bladder_organ"].region == "Bladder"
    assert by_name["inguinal_L"].region == "inguinal"
    assert by_name["OP_perirectal"].region == "other pelvic (perirectal)"


def test_common_iliac_option(atlas):
    les = lesions_at(atlas, ["CI_R"])
    as_m = stage(les, atlas)  # default M1a (PROMISE V2 calculators, AJCC)
    assert as_m.lesions[0].category == "M1a" and as_m.string == "T0N0M1a"
    assert as_m.detailed == "miT0 miN0 miM1a(CI)"
    as_n = stage(les, atlas, common_iliac="N")
    assert as_n.lesions[0].category == "N1" and as_n.string == "T0N1M0"
    assert as_n.nodal_regions == ("CI",)


def test_brim_bounds_pelvic(atlas):
    """The same lateral soft-tissue position is N below the promontory level and CI above."""
    below = lesions_at(atlas, ["II_R"])
    assert stage(below, atlas).lesions[0].category == "N1"
    grid = atlas.grid
    for z, expected in ((PROMONTORY[2] - 6, "N1"), (PROMONTORY[2] + 6, "M1a")):
        m = sphere_mask(grid, (-45.0, 30.0, z), 4.0)
        st = stage(lesions_from_mask(m, grid), atlas)
        assert st.lesions[0].category == expected, (z, st.lesions[0].row())


@pytest.mark.parametrize(
    ("names", "string", "group"),
    [
        ([], "T0N0M0", "T0N0M0"),
        (["bed"], "TrN0M0", "TrN0M0"),
        (["EI_L"], "T0N1M0", "N1M0"),
        (["bed", "OB_L"], "TrN1M0", "N1M0"),
        (["EI_L", "bone_ilium_L"], "T0N1M1b", "M1"),
        (["RP"], "T0N0M1a", "M1"),
        (["RP", "bone_ilium_L", "bladder_organ"], "T0N0M1c", "M1"),
        (["bed", "inguinal_L"], "TrN0M1a", "M1"),
    ],
)
def test_patient_strings(atlas, names, string, group):
    les = lesions_at(atlas, names) if names else Lesions([], grid=atlas.grid)
    st = stage(les, atlas)
    assert st.string == string and str(st) == string
    assert st.ucla_group == group
    assert len(st.table()) == len(names)


def test_detailed_v1_v2(atlas):
    les = lesions_at(atlas, ["bed", "EI_L", "OB_L", "bone_ilium_L"])
    v2 = stage(les, atlas)
    assert v2.n_detail == "N2" and v2.nodal_regions == ("EI", "OB")
    assert v2.detailed == "miTr miN2(EI,OB) miM1b(uni)"
    v1 = stage(les, atlas, promise_version="v1")
    assert v1.n_detail == "N1b" and v1.string == v2.string == "TrN1M1b"
    one = stage(lesions_at(atlas, ["EI_L"]), atlas, promise_version="v1")
    assert one.n_detail == "N1a" and one.detailed == "miT0 miN1a(EI) miM0"


def test_regions_counted_by_side(atlas):
    grid = atlas.grid
    m = sphere_mask(grid, (67.0, -7.5, 67.5), 5.0) | sphere_mask(grid, (-67.0, -7.5, 67.5), 5.0)
    les = lesions_from_mask(m, grid)
    assert stage(les, atlas).n_detail == "N1"
    by_side = stage(les, atlas, nodal_regions_by_side=True)
    assert by_side.n_detail == "N2" and set(by_side.nodal_regions) == {"EI-L", "EI-R"}


def test_oligometastatic_count(atlas):
    grid = atlas.grid
    centres = [(107.0, 0.0, z) for z in (35.0, 65.0, 95.0)] + [
        (-107.0, 0.0, z) for z in (35.0, 65.0, 95.0)
    ]
    labels = np.zeros(grid.shape, np.int32)
    for n, c in enumerate(centres, start=1):
        labels[sphere_mask(grid, c, 5.0)] = n
    six = lesions_from_mask(labels, grid)
    st = stage(six, atlas)
    assert st.m == "M1b" and st.n_distant_lesions == 6
    assert st.oligometastatic is False and st.bone_pattern == "diss"
    assert stage(six, atlas, max_oligo_lesions=6).oligometastatic is True
    three = six[:3]
    st3 = stage(three, atlas)
    assert st3.oligometastatic is True and st3.bone_pattern == "oligo"
    assert st3.detailed == "miT0 miN0 miM1b(oligo)"
    assert len(st3.distant_lesions) == 3
    # nodes and local recurrence are not distant lesions
    st_n = stage(lesions_at(atlas, ["bed", "EI_L"]), atlas)
    assert st_n.n_distant_lesions == 0 and st_n.oligometastatic is False


def test_overrides(atlas):
    les = lesions_at(atlas, ["OP_uncertain", "EI_L", "bone_ilium_L"])
    st = stage(les, atlas, overrides={"L1": "organ", 2: "M1a", "L3": "node"})
    a, b, c = st.lesions
    assert a.category == "M1c" and not a.region_uncertain
    assert b.category == "M1a"
    assert c.category == "N1"  # the bone test is skipped for a node override
    assert all(any("override" in note for note in x.notes) for x in st.lesions)
    assert st.m == "M1c" and st.string == "T0N1M1c"
    assert stage(les[:1], atlas, overrides={"L1": "local"}).string == "TrN0M0"
    # an N1 override holds whatever the common iliac option says
    ci = lesions_at(atlas, ["CI_R"])
    assert stage(ci, atlas, overrides={"L1": "N1"}).string == "T0N1M0"
    assert stage(ci, atlas, overrides={"L1": "N1"}).lesions[0].region_code == "CI"
    with pytest.raises(ValueError, match="unknown lesion"):
        stage(les, atlas, overrides={"L9": "organ"})
    with pytest.raises(ValueError, match="override of lesion"):
        stage(les, atlas, overrides={"L1": "lung"})


def test_fallbacks_without_landmarks(atlas):
    atlas = SimpleNamespace(grid=atlas.grid, structures=atlas.structures, landmarks={})
    les = lesions_at(atlas, ["EI_L", "CI_R", "RP", "PS"])
    st = stage(les, atlas)
    cats = [(x.category, x.region_code) for x in st.lesions]
    assert cats == [("N1", "EI"), ("M1a", "CI"), ("M1a", "RP"), ("N1", "PS")]
    assert any("top of the sacrum" in note for note in st.notes)


def test_missing_structures_noted(atlas):
    keep = [n for n in atlas.structures.names if n not in ("ProstateBed",)]
    partial = SimpleNamespace(
        grid=atlas.grid, structures=atlas.structures.select(keep), landmarks=atlas.landmarks
    )
    st = stage(lesions_at(atlas, ["bed"]), partial)
    assert st.t == "T0"
    assert any("ProstateBed" in note for note in st.notes)
    nothing = SimpleNamespace(
        grid=atlas.grid, structures=StructureSet([], grid=atlas.grid), landmarks={}
    )
    with pytest.raises(MissingStructureError, match="SacralPromontory"):
        stage(lesions_at(atlas, ["bed"]), nothing)


def test_bad_staging_input(atlas):
    les = lesions_at(atlas, ["bed"])
    with pytest.raises(ValueError, match="common_iliac must be one of"):
        stage(les, atlas, common_iliac="N1")
    with pytest.raises(ValueError, match="promise_version"):
        stage(les, atlas, promise_version="v3")
    with pytest.raises(ValueError, match="max_oligo_lesions"):
        stage(les, atlas, max_oligo_lesions=0)
    with pytest.raises(ValueError, match="node_distance_mm"):
        StagingRules(node_distance_mm=-1)
    with pytest.raises(ValueError, match="inside_fraction"):
        StagingRules(inside_fraction=0)
    with pytest.raises(TypeError, match="structures"):
        stage(les, SimpleNamespace(grid=atlas.grid))
    other = ImageGrid(shape=(10, 10, 10), spacing_mm=(3, 3, 3), origin_mm=(0, 0, 0))
    m = np.zeros(other.shape, bool)
    m[5, 5, 5] = True
    with pytest.raises(GridMismatchError, match="target_grid=atlas.grid"):
        stage(lesions_from_mask(m, other), atlas)


def test_rules_change_the_answer(atlas):
    """A node 12 mm lateral to the external iliac vessels leaves EI when the reach is 5 mm."""
    les = lesions_at(atlas, ["EI_L"])
    assert stage(les, atlas).lesions[0].region_code == "EI"
    tight = stage(les, atlas, rules=StagingRules(node_distance_mm=5.0))
    assert tight.lesions[0].region_code == "OP" and tight.lesions[0].region_uncertain


# ---------------------------------------------------------------------------- shipped atlas
@pytest.fixture(scope="module")
def shipped():
    from rtplan.atlas import load_atlas

    return load_atlas("male_pelvis_postop", spacing_mm=(5, 3, 3))


def _slice_point(atlas, name, z_mm):
    """The voxel of ``name`` nearest its centroid on the slice nearest ``z_mm``."""
    g = atlas.grid
    k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - z_mm)))
    idx = np.argwhere(atlas.structures[name].mask[k])
    assert len(idx), f"{name} has no voxel at z={z_mm}"
    j, i = idx[np.argmin(((idx - idx.mean(0)) ** 2).sum(1))]
    return tuple(g.index_to_lps([k, j, i]))


def _in_organ(atlas, mask):
    from rtplan.staging import M1C_ORGANS

    return [
        n for n in M1C_ORGANS if n in atlas.structures and (atlas.structures[n].mask & mask).any()
    ]


def _shipped_points(atlas):
    from scipy import ndimage

    ss, g, lm = atlas.structures, atlas.grid, atlas.landmarks
    brim, bif = lm["SacralPromontory"][2], lm["AorticBifurcation"][2]
    bed = ss["ProstateBed"]
    pts = {"Tr": (_slice_point(atlas, "ProstateBed", bed.centroid_mm[2]), "Tr", "bed")}
    ext = ss["A_Iliac_Ext_L"].bounds_mm[2]
    pts["EI"] = (_slice_point(atlas, "A_Iliac_Ext_L", sum(ext) / 2), "N1", "EI")
    itn = ss["A_Iliac_Int_R"].bounds_mm[2]
    pts["II"] = (_slice_point(atlas, "A_Iliac_Int_R", sum(itn) / 2), "N1", "II")
    pts["CI"] = (_slice_point(atlas, "A_Iliac_L", (brim + bif) / 2), "CI", "CI")
    aorta_top = ss["A_Aorta"].bounds_mm[2][1]
    pts["RP"] = (_slice_point(atlas, "A_Aorta", (bif + aorta_top) / 2), "M1a", "RP")
    ilium = ss["Bone_Ilium_L"].mask
    depth = ndimage.distance_transform_edt(ilium, sampling=g.spacing_mm)
    pts["bone"] = (
        tuple(g.index_to_lps(np.unravel_index(np.argmax(depth), g.shape))),
        "M1b",
        "bone",
    )
    # obturator node medial to the obturator internus, above the top of the symphysis (below
    # it the prostate bed reaches the muscle, RTOG 2010, and the call would be uncertain)
    obt = ss["Obturator_Int_L"]
    _, oy, _ = obt.centroid_mm
    pts["OB"] = (
        (obt.bounds_mm[0][0] - 6.0, oy + 14.0, lm["PubicSymphysis_Top"][2] + 5.0),
        "N1",
        "OB",
    )
    fh = ss["Femur_Head_L"]
    fx, _, fz = fh.centroid_mm
    pts["inguinal"] = ((fx, fh.bounds_mm[1][0] - 15.0, fz), "M1a", "OE")
    # presacral: the first point 5-10 mm in front of the sacrum at S1-S3, outside any organ
    sac = ss["Sacrum"].mask
    zs = g.axis_coordinates_mm()[0]
    i_mid = int(np.argmin(np.abs(g.axis_coordinates_mm()[2] - lm["SacralPromontory"][0])))
    for k in np.flatnonzero((zs > lm["S3_Bottom"][2] + 5) & (zs < brim - 5)):
        front = np.flatnonzero(sac[k, :, i_mid])
        if not len(front):
            continue
        for dy in (5.0, 7.0, 10.0):
            p = tuple(np.add(g.index_to_lps([k, front[0], i_mid]), (0.0, -dy, 0.0)))
            if not _in_organ(atlas, sphere_mask(g, p, 4.0)):
                pts["PS"] = (p, "N1", "PS")
                break
        if "PS" in pts:
            break
    assert "PS" in pts, "no presacral space free of organs in the shipped atlas"
    return pts


def test_shipped_atlas_each_region(shipped):
    pts = _shipped_points(shipped)
    g = shipped.grid
    labels = np.zeros(g.shape, np.int32)
    for n, (p, _, _) in enumerate(pts.values(), start=1):
        m = sphere_mask(g, p, 4.0)
        assert not _in_organ(shipped, m) or n == 1, f"lesion {list(pts)[n - 1]} is in an organ"
        labels[m & (labels == 0)] = n
    les = lesions_from_mask(labels, g)
    assert len(les) == len(pts)
    for common_iliac in ("M1a", "N"):
        st = stage(les, shipped, common_iliac=common_iliac)
        for (name, (_, cat, code)), lesion in zip(pts.items(), st.lesions):
            expected = ("N1" if common_iliac == "N" else "M1a") if cat == "CI" else cat
            assert (lesion.category, lesion.region_code) == (expected, code), (name, lesion.row())
            assert not lesion.region_uncertain, (name, lesion.row())
        assert st.t == "Tr" and st.n == "N1"
        assert st.m == "M1b"
    # an organ override of the local recurrence stages M1c
    st = stage(les, shipped, overrides={"L1": "organ"})
    assert st.lesions[0].category == "M1c" and st.t == "T0" and st.m == "M1c"


def test_supradiaphragmatic_above_t12(atlas):
    """With a VB_T12 structure, soft tissue above its top is SD; without it, RP."""
    grid = atlas.grid
    t12 = Structure("VB_T12", box_mask(grid, (-25, 30, 180), (25, 65, 190)), grid)
    ss = atlas.structures.select(atlas.structures.names)
    ss.add(t12)
    with_t12 = SimpleNamespace(grid=grid, structures=ss, landmarks=atlas.landmarks)
    m = sphere_mask(grid, (20.0, 20.0, 197.0), 4.0)
    les = lesions_from_mask(m, grid)
    sd = stage(les, with_t12).lesions[0]
    assert (sd.category, sd.region_code) == ("M1a", "SD")
    assert stage(les, atlas).lesions[0].region_code == "RP"


@pytest.mark.parametrize("above_vua_mm", [12.0, 18.0])
def test_lesion_at_the_bladder_neck_is_a_local_recurrence(shipped, above_vua_mm):
    """A lesion in the bladder just above the anastomosis invades it locally: Tr, not M1c."""
    x, y, z = shipped.landmarks["VUA"]
    m = sphere_mask(shipped.grid, (x, y, z + above_vua_mm), 5.0)
    assert (m & shipped.structures["Bladder"].mask).sum() >= 0.5 * m.sum()
    st = stage(lesions_from_mask(m, shipped.grid), shipped)
    lesion = st.lesions[0]
    assert (lesion.category, st.string) == ("Tr", "TrN0M0")
    assert any("invading the Bladder" in n for n in lesion.notes)
    # far from the bed (the bladder dome) the same organ gives M1c
    top = shipped.structures["Bladder"].bounds_mm[2][1]
    dome = sphere_mask(shipped.grid, (x, y + 10.0, top - 12.0), 5.0)
    assert stage(lesions_from_mask(dome, shipped.grid), shipped).lesions[0].category == "M1c"


# ---------------------------------------------------------------------------- typed boundaries
def test_check_atlas_names_what_is_missing(atlas):
    check_atlas(atlas)
    assert isinstance(atlas, AtlasLike)
    with pytest.raises(TypeError, match="atlas must be an anatomy.*without structures, landmarks"):
        check_atlas(SimpleNamespace(grid=atlas.grid))
    with pytest.raises(TypeError, match=r"anatomy\.landmarks must be a Mapping, got list"):
        check_atlas(
            SimpleNamespace(grid=atlas.grid, structures=atlas.structures, landmarks=[]),
            name="anatomy",
        )
    with pytest.raises(TypeError, match=r"atlas\.grid must be a ImageGrid, got tuple"):
        check_atlas(SimpleNamespace(grid=(1, 2, 3), structures=atlas.structures, landmarks={}))


def test_stage_names_the_bad_argument(atlas):
    les = lesions_at(atlas, ["bed"])
    with pytest.raises(TypeError, match="lesions must be a Lesions collection"):
        stage("L1", atlas)
    with pytest.raises(TypeError, match="lesions must hold Lesion objects, got Structure"):
        stage([les[0].structure], atlas)
    with pytest.raises(TypeError, match="atlas must be an anatomy"):
        stage(les, None)
    with pytest.raises(TypeError, match="overrides must be a mapping"):
        stage(les, atlas, overrides=["L1"])
    with pytest.raises(TypeError, match="rules must be a StagingRules"):
        stage(les, atlas, rules={"node_distance_mm": 10})
    # a list of lesions is accepted like a collection
    assert stage(list(les), atlas).string == stage(les, atlas).string


def test_stage_is_checked_when_built(atlas):
    st = stage(lesions_at(atlas, ["bed", "EI_L"]), atlas)
    fields = {f: getattr(st, f) for f in Stage.__dataclass_fields__}
    assert Stage(**fields) == st
    with pytest.raises(ValueError, match="Stage.t must be one of"):
        Stage(**{**fields, "t": "T1"})
    with pytest.raises(ValueError, match="Stage.m must be one of"):
        Stage(**{**fields, "m": "M1"})
    with pytest.raises(TypeError, match="Stage.lesions must be a Lesions collection"):
        Stage(**{**fields, "lesions": list(st.lesions)})
    unstaged = lesions_at(atlas, ["bed"])
    with pytest.raises(ValueError, match="must be staged.*not so: L1"):
        Stage(**{**fields, "lesions": unstaged})


# ---------------------------------------------------------------------------- issue 11
def _sphere_lesions(atlas, spots):
    """Lesions at (centre, radius[, miPSMA score]) spots, ids from 1."""
    from rtplan.lesions import Lesion

    out = []
    for n, spot in enumerate(spots, start=1):
        centre, radius, *score = spot
        m = sphere_mask(atlas.grid, centre, radius)
        gtv = Structure(f"L{n}", m, atlas.grid, role="gtv")
        out.append(Lesion(id=n, name=f"L{n}", structure=gtv, mipsma_score=next(iter(score), None)))
    return Lesions(out, grid=atlas.grid)


def _without(atlas, *names):
    keep = [n for n in atlas.structures.names if n not in names]
    return SimpleNamespace(
        grid=atlas.grid, structures=atlas.structures.select(keep), landmarks=dict(atlas.landmarks)
    )


def _between_bladder_and_rectum(atlas, z_mm):
    g = atlas.grid
    z, y, x = g.axis_coordinates_mm()
    k, i = int(np.argmin(np.abs(z - z_mm))), int(np.argmin(np.abs(x)))
    front = y[atlas.structures["Bladder"].mask[k, :, i]].max()
    back = y[atlas.structures["Rectum"].mask[k, :, i]].min()
    return (0.0, float((front + back) / 2), float(z[k]))


def test_local_recurrence_recognised_without_a_prostate_bed_structure(shipped):
    """Issue 11.1: a vesicourethral-anastomosis recurrence on anatomy without ProstateBed."""
    anatomy = _without(shipped, "ProstateBed")
    x, y, z = shipped.landmarks["VUA"]
    st = stage(_sphere_lesions(anatomy, [((x, y + 6.0, z), 4.0)]), anatomy)
    assert (st.lesions[0].category, st.string) == ("Tr", "TrN0M0")
    assert any("derived from the anatomy" in n for n in st.notes)


@pytest.mark.parametrize("where", ["retrovesical", "seminal-vesicle bed"])
def test_retrovesical_and_sv_bed_lesions_are_local_recurrences(shipped, where):
    """Issue 11.1: inside the bed CTV rtplan builds (up to the vas cut end): Tr, not N1(OP)."""
    lm = shipped.landmarks
    z = lm["PubicSymphysis_Top"][2] + 12.0 if where == "retrovesical" else 20.0
    for anatomy in (shipped, _without(shipped, "ProstateBed")):
        centre = _between_bladder_and_rectum(shipped, z)
        st = stage(_sphere_lesions(anatomy, [(centre, 3.0)]), anatomy)
        assert (st.lesions[0].category, st.string, st.uncertain) == ("Tr", "TrN0M0", ()), centre


def test_tr_region_is_the_bed_ctv(shipped):
    """The local-recurrence region is drawn by the bed-CTV rules (one region, two uses)."""
    from rtplan.staging import prostate_bed_region
    from rtplan.volumes import ctv_prostate_bed

    region = prostate_bed_region(shipped)
    assert np.array_equal(region, ctv_prostate_bed(shipped).mask)
    z = shipped.grid.axis_coordinates_mm()[0][region.any(axis=(1, 2))]
    assert z.max() >= shipped.landmarks["VasDeferens_CutEnd"][2] - shipped.grid.spacing_mm[0]


def _just_outside_the_bed_beside_the_rectum(atlas):
    """A voxel 2-4 mm outside the bed region, lateral to the rectum, clear of organs."""
    from scipy import ndimage

    from rtplan.staging import prostate_bed_region

    g = atlas.grid
    bed = prostate_bed_region(atlas)
    d = ndimage.distance_transform_edt(~bed, sampling=g.spacing_mm)
    rectum = atlas.structures["Rectum"].mask
    near_rectum = ndimage.distance_transform_edt(~rectum, sampling=g.spacing_mm) <= 8.0
    solid = np.any(
        [atlas.structures[n].mask for n in atlas.structures.names if n not in ("Body",)], axis=0
    )
    x = g.axis_coordinates_mm()[2]
    ok = (d >= 2.0) & (d <= 4.5) & near_rectum & ~solid & (np.abs(x) > 15)[None, None, :]
    ok &= ~ndimage.binary_dilation(solid, iterations=1)
    idx = np.argwhere(ok)
    assert len(idx), "no point just outside the bed beside the rectum"
    return tuple(g.index_to_lps(idx[len(idx) // 2]))


def test_bed_border_lesion_is_uncertain_with_both_candidates(shipped):
    """Issue 11.1: Tr vs N1(OP) near the bed border: an explicit flag with both candidates."""
    centre = _just_outside_the_bed_beside_the_rectum(shipped)
    st = stage(_sphere_lesions(shipped, [(centre, 2.0)]), shipped)
    (call,) = st.uncertain
    assert {call.chosen, call.alternative} == {"N1(OP)", "Tr"}, call
    assert call.lesion_id == 1 and call.lesion_name == "L1" and "prostate-bed" in call.reason
    assert st.uncertain_call(1) is call and st.uncertain_call(2) is None
    lesion = st.lesions[0]
    assert lesion.region_uncertain and any(n.startswith("uncertain: ") for n in lesion.notes)
    assert any(call.text in n for n in st.notes)


def test_internal_iliac_node_above_the_promontory_level_is_pelvic(shipped):
    """Issue 11.2: below the iliac bifurcation, beside the internal iliac vessels: N1(II)."""
    g = shipped.grid
    z_ps = shipped.landmarks["SacralPromontory"][2]
    k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - (z_ps + 4.0))))
    assert g.axis_coordinates_mm()[0][k] > z_ps
    vessels = (
        shipped.structures["A_Iliac_Int_R"].mask[k] | shipped.structures["V_Iliac_Int_R"].mask[k]
    )
    jj, ii = np.nonzero(vessels)
    x, y, z = g.index_to_lps([k, jj.mean(), ii.mean()])
    st = stage(_sphere_lesions(shipped, [((x, y + 12.0, z), 4.0)]), shipped)
    assert (st.lesions[0].category, st.lesions[0].region_code) == ("N1", "II"), st.lesions[0].row()
    assert st.string == "T0N1M0" and not st.uncertain


def test_common_iliac_by_vessel_segment(shipped):
    """Issue 11.2: along the common iliac vessels CI; at the iliac bifurcation uncertain."""
    ss = shipped.structures
    bif = ss["A_Iliac_L"].bounds_mm[2][0] + shipped.grid.spacing_mm[0] / 2
    mid = _slice_point(shipped, "A_Iliac_L", bif + 15.0)
    at_bif = _slice_point(shipped, "A_Iliac_L", bif)
    les = _sphere_lesions(shipped, [(np.add(mid, (12.0, 0, 0)), 4.0)])
    st = stage(les, shipped)
    assert (st.lesions[0].category, st.lesions[0].region_code, st.uncertain) == ("M1a", "CI", ())
    assert stage(les, shipped, common_iliac="N").string == "T0N1M0"
    st = stage(_sphere_lesions(shipped, [(np.add(at_bif, (10.0, -4.0, 0)), 4.0)]), shipped)
    (call,) = st.uncertain
    assert "M1a(CI)" in (call.chosen, call.alternative)
    assert {call.chosen, call.alternative} - {"M1a(CI)"} <= {"N1(EI)", "N1(II)"}
    assert "iliac bifurcation" in call.reason


def test_common_iliac_falls_back_on_the_brim_without_the_vessel_split(shipped):
    """Without external / internal iliac vessels the plane rule applies, and says so."""
    anatomy = _without(
        shipped,
        *[
            n
            for n in shipped.structures.names
            if n.startswith(("A_Iliac_", "V_Iliac_")) and n[-6:-2] in ("_Ext", "_Int")
        ],
    )
    mid = _slice_point(shipped, "A_Iliac_L", 120.0)
    st = stage(_sphere_lesions(anatomy, [(np.add(mid, (12.0, 0, 0)), 4.0)]), anatomy)
    assert st.lesions[0].region_code == "CI"
    assert any("pelvic-brim plane" in n for n in st.notes)


def test_mipsma_score_below_two_is_not_counted(shipped):
    """Issue 11.5: a score-1 node stays in the table, marked, and drives nothing."""
    from rtplan.volumes import suggest_options

    ei = _slice_point(shipped, "A_Iliac_Ext_L", 60.0)
    spots = [(np.add(ei, (14.0, 0, 0)), 4.0, 1)]
    st = stage(_sphere_lesions(shipped, spots), shipped)
    lesion = st.lesions[0]
    assert lesion.category == "not counted (miPSMA 1)" and lesion.region_code == "EI"
    assert lesion.row()["category"] == "not counted (miPSMA 1)"
    assert (st.string, st.detailed) == ("T0N0M0", "miT0 miN0 miM0")
    assert st.not_counted_lesions == [lesion] and st.counted_lesions == []
    assert any("not counted" in n and "L1" in n for n in st.notes)
    specs = suggest_options(st)
    assert [o.name for o in specs] == ["PBRT", "PBRT+STAD", "PBRT+WPRT"]
    assert not any(o.node_boost for o in specs)
    # the threshold is an option of the stage; a score of 2 (> liver) counts
    assert stage(_sphere_lesions(shipped, spots), shipped, min_mipsma_score=1).string == "T0N1M0"
    spots2 = [(np.add(ei, (14.0, 0, 0)), 4.0, 2)]
    assert stage(_sphere_lesions(shipped, spots2), shipped).string == "T0N1M0"


def test_new_stage_options_are_checked(atlas):
    les = lesions_at(atlas, ["bed"])
    with pytest.raises(ValueError, match="min_mipsma_score"):
        stage(les, atlas, min_mipsma_score=4)
    with pytest.raises(TypeError, match="protocol"):
        stage(les, atlas, protocol=3)
    st = stage(les, atlas)
    fields = {f: getattr(st, f) for f in Stage.__dataclass_fields__}
    with pytest.raises(TypeError, match="Stage.uncertain"):
        Stage(**{**fields, "uncertain": ("L1: Tr or N1",)})


def test_oligometastatic_cut_off_is_three_lesions(atlas):
    """Issue 11.6: STOMP and ORIOLE enrolled <= 3 metastases: the default cut-off is 3."""
    from rtplan.staging import OLIGOMETASTATIC_MAX_LESIONS

    assert OLIGOMETASTATIC_MAX_LESIONS == 3
    grid = atlas.grid
    labels = np.zeros(grid.shape, np.int32)
    for n, z in enumerate((35.0, 65.0, 95.0, 50.0), start=1):
        labels[sphere_mask(grid, (107.0 if n < 4 else -107.0, 0.0, z), 5.0)] = n
    four = lesions_from_mask(labels, grid)
    assert stage(four, atlas).oligometastatic is False
    assert stage(four[:3], atlas).oligometastatic is True
    assert stage(four, atlas, max_oligo_lesions=5).oligometastatic is True


def test_bed_region_is_drawn_once_and_redrawn_when_the_anatomy_changes(shipped, monkeypatch):
    """One planning run shares one bed region; a new organ, landmark or rule draws anew."""
    from rtplan import staging
    from rtplan.staging import prostate_bed_region

    staging._BED_MEMO.clear()
    draws = []
    draw = staging._draw_bed_region

    def counted(atlas, rules):
        draws.append(rules)
        return draw(atlas, rules)

    monkeypatch.setattr(staging, "_draw_bed_region", counted)
    first = prostate_bed_region(shipped)
    first[...] = False  # the caller's copy: mutating it changes nothing shared
    again = prostate_bed_region(shipped)
    assert len(draws) == 1 and again.any()
    stage(_sphere_lesions(shipped, [(_between_bladder_and_rectum(shipped, 20.0), 3.0)]), shipped)
    assert len(draws) == 1

    # the same organs with a smaller bladder: a different anatomy, a different region
    ss = shipped.structures
    bladder = ss["Bladder"]
    smaller = Structure(
        "Bladder",
        bladder.mask & (np.arange(bladder.grid.shape[0]) < 20)[:, None, None],
        bladder.grid,
    )
    other = SimpleNamespace(
        grid=shipped.grid,
        structures=StructureSet([smaller if s.name == "Bladder" else s for s in ss.values()]),
        landmarks=dict(shipped.landmarks),
    )
    prostate_bed_region(other)
    assert len(draws) == 2
    moved = SimpleNamespace(
        grid=shipped.grid, structures=ss, landmarks={**shipped.landmarks, "VUA": (0.0, 0.0, 0.0)}
    )
    moved_region = prostate_bed_region(moved)
    assert len(draws) == 3 and not np.array_equal(moved_region, again)
    prostate_bed_region(shipped, "hypo_salvage")
    assert len(draws) in (3, 4)  # same rules as nrg_salvage's bed -> shared, else drawn
    assert np.array_equal(prostate_bed_region(shipped), again)


@pytest.mark.parametrize(
    ("landmark", "organ", "edge"),
    [("PubicSymphysis_Top", "PubicSymphys", "top"), ("AorticBifurcation", "A_Aorta", "bottom")],
)
def test_landmark_from_a_structure_cut_by_the_scan_edge_is_refused(landmark, organ, edge):
    """Issue 14.7: a structure reaching the top (bottom) slice does not give its top (bottom)."""
    from rtplan.staging import landmark_z_mm

    g = ImageGrid(shape=(8, 6, 6), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    inside, cut = np.zeros(g.shape, bool), np.zeros(g.shape, bool)
    inside[2:6, 2:4, 2:4] = True
    if edge == "top":
        cut[4:8, 2:4, 2:4] = True
    else:
        cut[0:4, 2:4, 2:4] = True

    def anatomy(mask):
        return SimpleNamespace(
            grid=g, landmarks={}, structures=StructureSet([Structure(organ, mask, g)])
        )

    expected = 12.5 if edge == "top" else 5.0  # centre of the top / bottom slice inside
    assert landmark_z_mm(anatomy(inside), landmark) == expected
    with pytest.raises(MissingStructureError, match=f"reaches the {edge} slice"):
        landmark_z_mm(anatomy(cut), landmark)
