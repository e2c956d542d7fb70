"""Tests of rtplan.atlas: the shipped parametric pelvis and user anatomy loaders."""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rtplan.atlas import (
    ATLAS_LANDMARKS,
    ATLAS_STRUCTURES,
    Atlas,
    atlas_from_label_maps,
    derive_landmarks,
    list_atlases,
    load_atlas,
    validate_anatomy,
)
from rtplan.errors import (
    AtlasNotFoundError,
    GeometryError,
    GridMismatchError,
    InvalidInputError,
    MissingStructureError,
    RtplanError,
)
from rtplan.grid import ImageGrid, resample_to_grid
from rtplan.structures import Structure, StructureSet

NAME = "male_pelvis_postop"
COARSE = (3.0, 2.5, 2.5)  # slice, row, col spacing (mm) used by most tests

BONES = (
    "Bone_Ilium_L",
    "Bone_Ilium_R",
    "Bone_Ischium_L",
    "Bone_Ischium_R",
    "PubicSymphys",
    "Sacrum",
    "Coccyx",
    "VB_L4",
    "VB_L5",
    "Femur_Head_L",
    "Femur_Head_R",
)
VESSELS = tuple(n for n in ATLAS_STRUCTURES if n.startswith(("A_", "V_")))
SOFT = (
    "Bladder",
    "Rectum",
    "Canal_Anal",
    "Colon_Sigmoid",
    "Spc_Bowel",
    "PenileBulb",
    "Levator_Ani",
    "Obturator_Int_L",
    "Obturator_Int_R",
    "Iliopsoas_L",
    "Iliopsoas_R",
    "ProstateBed",
)


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return load_atlas(NAME, spacing_mm=COARSE)


def _overlap(a: Structure, b: Structure) -> int:
    return int(np.count_nonzero(a.mask & b.mask))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _top_z(s: Structure) -> float:
    return s.bounds_mm[2][1] - s.grid.spacing_mm[0] / 2


def _bottom_z(s: Structure) -> float:
    return s.bounds_mm[2][0] + s.grid.spacing_mm[0] / 2


# ------------------------------------------------------------------ discovery, packaging


def test_list_atlases_and_package_data():
    assert NAME in list_atlases()
    folder = importlib.resources.files("rtplan.atlases") / NAME
    assert (folder / "atlas.toml").is_file()
    table = json.loads((folder / "hashes.json").read_text(encoding="utf-8"))
    assert "atlas.toml" in table


def test_unknown_atlas_names_the_shipped_ones():
    with pytest.raises(AtlasNotFoundError, match=NAME):
        load_atlas("no_such_atlas")


def test_modified_definition_fails_hash_check(tmp_path):
    src = importlib.resources.files("rtplan.atlases") / NAME
    dst = tmp_path / "mine"
    dst.mkdir()
    for f in ("atlas.toml", "hashes.json"):
        (dst / f).write_bytes((src / f).read_bytes())
    ok = load_atlas(dst, spacing_mm=(6.0, 5.0, 5.0), validate=False)  # unmodified copy loads
    assert ok.name == "mine" and "Bladder" in ok.structures
    text = (dst / "atlas.toml").read_text(encoding="utf-8")
    (dst / "atlas.toml").write_text(
        text.replace("radii = [48.0, 30.0, 30.0]", "radii = [48.0, 30.0, 31.0]")
    )
    with pytest.raises(RtplanError, match="SHA-256"):
        load_atlas(dst, spacing_mm=(6.0, 5.0, 5.0))


# ------------------------------------------------------------------ the default grid


def test_default_grid_geometry():
    # the default grid is derived without rasterising: check it through a shape-only build
    a = load_atlas(NAME, shape=(40, 64, 64), validate=False)
    g = a.grid
    assert g.shape == (40, 64, 64) and g.is_standard_orientation
    (x0, x1), (y0, y1), (z0, z1) = g.bounds_mm
    assert x1 - x0 == pytest.approx(500.0) and y1 - y0 == pytest.approx(500.0)  # edge to edge
    # covers L4 down to below the penile bulb
    assert z1 >= _top_z(a.structures["VB_L4"]) and z0 <= _bottom_z(a.structures["PenileBulb"])


def test_explicit_grid_must_be_axial_identity():
    flipped = ImageGrid(
        shape=(10, 20, 20),
        spacing_mm=(6.0, 5.0, 5.0),
        origin_mm=(50.0, 50.0, 0.0),
        direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
    )
    with pytest.raises(GeometryError, match="identity direction"):
        load_atlas(NAME, grid=flipped)


def test_explicit_grid_is_used_as_given():
    g = ImageGrid(shape=(30, 40, 50), spacing_mm=(4.0, 3.0, 3.0), origin_mm=(-75.0, -90.0, -60.0))
    a = load_atlas(NAME, grid=g, validate=False)
    assert a.grid is g and a.ct_hu.shape == g.shape
    assert a.structures["Bladder"].grid.equals(g)


def test_derive_landmarks_from_nothing(atlas):
    assert derive_landmarks(StructureSet(grid=atlas.grid)) == {}


# ------------------------------------------------------------------ contents and sizes


def test_all_required_structures_and_landmarks_present(atlas):
    assert atlas.missing() == []
    for name in ATLAS_STRUCTURES:
        assert not atlas.structures[name].is_empty, name
    assert set(ATLAS_LANDMARKS) <= set(atlas.landmarks)
    assert atlas.ct_hu.shape == atlas.grid.shape and atlas.ct_hu.dtype == np.float32


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [
        ("Bladder", 150.0, 300.0),  # CLINICAL.md section 9: 150-300 cc asked for the atlas
        ("Rectum", 50.0, 130.0),  # about 50-100 cc [U], rectal gas wall included
        ("Femur_Head_L", 65.0, 140.0),  # a 50 mm sphere is 65 cc, plus the neck
        ("Femur_Head_R", 65.0, 140.0),
        ("ProstateBed", 20.0, 80.0),
        ("PenileBulb", 3.0, 12.0),
        ("Spc_Bowel", 700.0, 3000.0),
    ],
)
def test_volumes_in_range(atlas, name, lo, hi):
    assert lo <= atlas.structures[name].volume_cc <= hi


def test_femoral_head_diameter(atlas):
    # the head's antero-posterior extent (the neck runs laterally, not beyond the head in y)
    for side in "LR":
        ap = atlas.structures[f"Femur_Head_{side}"].extent_mm[1]
        assert 46.0 <= ap <= 56.0  # about 50 mm (CLINICAL.md section 9)


def test_vessel_calibres_and_lengths(atlas):
    def mean_diameter(name: str, length_mm: float) -> float:
        area = atlas.structures[name].volume_cc * 1000.0 / length_mm
        return 2.0 * np.sqrt(area / np.pi)

    bif = np.array(atlas.landmarks["AorticBifurcation"])
    for side in "LR":
        cia = atlas.structures[f"A_Iliac_{side}"]
        low = np.array(cia.centroid_mm) * 2 - bif  # centroid is mid-way along a straight tube
        length = float(np.linalg.norm(low - bif))
        assert 35.0 <= length <= 60.0  # about 4 cm
        assert 8.0 <= mean_diameter(f"A_Iliac_{side}", length) <= 13.0  # about 1 cm
        eia = atlas.structures[f"A_Iliac_Ext_{side}"]
        (_, _), (_, _), (z0, z1) = eia.bounds_mm
        path = z1 - z0  # lower bound of its length: it also runs forward
        assert 6.0 <= mean_diameter(f"A_Iliac_Ext_{side}", path * 1.25) <= 10.0


# ------------------------------------------------------------------ landmarks


def test_landmarks_agree_with_structures(atlas):
    derived = derive_landmarks(atlas.structures)
    sz = atlas.grid.spacing_mm[0]
    for key in (
        "PubicSymphysis_Top",
        "FemurHead_Top_L",
        "FemurHead_Top_R",
        "PenileBulb_Top",
        "AorticBifurcation",
        "S3_Bottom",
        "L4L5_Interspace",
        "L5S1_Interspace",
        "SacralPromontory",
    ):
        assert abs(derived[key][2] - atlas.landmarks[key][2]) <= sz + 0.5, key
    for key in ("PubicSymphysis_Top", "FemurHead_Top_L", "FemurHead_Top_R", "AorticBifurcation"):
        assert np.allclose(derived[key][:2], atlas.landmarks[key][:2], atol=3.0), key
    # the VUA estimate from the bladder neck lies within a few mm of the defined point
    assert abs(derived["VUA"][2] - atlas.landmarks["VUA"][2]) <= 2 * sz + 1


def _dome(grid: ImageGrid, centre_mm, radius_mm: float, *, pointed: bool = False) -> np.ndarray:
    """A sphere (or a cone of the same height, apex up) on ``grid``."""
    z, y, x = np.meshgrid(*grid.axis_coordinates_mm(), indexing="ij")
    r_xy = np.hypot(x - centre_mm[0], y - centre_mm[1])
    dz = z - centre_mm[2]
    if pointed:
        return (dz >= -radius_mm) & (dz <= radius_mm) & (r_xy <= (radius_mm - dz) / 2)
    return r_xy**2 + dz**2 <= radius_mm**2


def test_the_top_of_a_dome_is_found_between_slices():
    """The femoral-head rule finds a sphere's top within a fifth of a slice, wherever it falls.

    (The centre of the top slice, the old rule, is up to a whole slice below it.)
    """
    grid = ImageGrid(shape=(30, 60, 60), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(-30, -30, -40))
    for offset_mm in (0.05, 0.6, 1.25, 1.9, 2.45):  # from the top slice's centre
        top = 10.0 + offset_mm
        mask = _dome(grid, (0.0, 0.0, top - 22.0), 22.0)
        found = derive_landmarks(StructureSet([Structure("Femur_Head_L", mask, grid)]))
        assert abs(found["FemurHead_Top_L"][2] - top) <= 0.5, offset_mm


def test_a_top_that_is_not_a_dome_stays_at_the_top_slice():
    grid = ImageGrid(shape=(30, 60, 60), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(-30, -30, -40))
    mask = _dome(grid, (0.0, 0.0, -10.0), 20.0, pointed=True)  # a cone: apex at z = 10
    found = derive_landmarks(StructureSet([Structure("PenileBulb", mask, grid)]))
    s = Structure("PenileBulb", mask, grid)
    assert found["PenileBulb_Top"][2] == pytest.approx(_top_z(s))


@pytest.mark.parametrize("seed", [3, 4])
def test_variant_landmarks_on_a_surface_follow_its_size(seed):
    """A definition point on a structure's surface (its top) stays there in a variant.

    The variant changes the size of the bones and pelvic-floor groups; on a grid of
    0.2 mm slices the landmark lies within the slice above the structure's top slice.
    """
    variant = load_atlas(seed=seed, spacing_mm=COARSE)
    for key, name in (
        ("FemurHead_Top_L", "Femur_Head_L"),
        ("FemurHead_Top_R", "Femur_Head_R"),
        ("PenileBulb_Top", "PenileBulb"),
    ):
        x, y, z = variant.landmarks[key]
        fine = ImageGrid(
            shape=(40, 20, 20), spacing_mm=(0.2, 1.0, 1.0), origin_mm=(x - 10, y - 10, z - 4)
        )
        near = load_atlas(seed=seed, grid=fine, validate=False).structures[name]
        assert _top_z(near) <= z < _top_z(near) + 0.2, key


def test_landmark_relations(atlas):
    lm, ss = atlas.landmarks, atlas.structures
    assert lm["AorticBifurcation"][2] > _top_z(ss["VB_L5"])  # bifurcation above L5
    assert _bottom_z(ss["VB_L4"]) - 10 <= lm["AorticBifurcation"][2] <= _top_z(ss["VB_L4"])
    assert _top_z(ss["VB_L5"]) < lm["L4L5_Interspace"][2] < _bottom_z(ss["VB_L4"])
    assert _top_z(ss["VB_S1"]) < lm["L5S1_Interspace"][2] < _bottom_z(ss["VB_L5"])
    assert lm["PenileBulb_Top"][2] < lm["VUA"][2] < lm["PubicSymphysis_Top"][2]
    # RTOG: the superior PB border is 3-4 cm above the PS or the cut end of the vas
    assert 15.0 <= lm["VasDeferens_CutEnd"][2] - lm["PubicSymphysis_Top"][2] <= 40.0
    assert lm["VUA"][1] > lm["PubicSymphysis_Top"][1]  # VUA behind the symphysis
    body = ss["Body"].mask
    for key, p in lm.items():
        idx = atlas.grid.lps_to_nearest_index(p)
        assert atlas.grid.contains_index(idx), key
        assert body[tuple(idx)], key


# ------------------------------------------------------------------ anatomical relations


def test_relations(atlas):
    ss = atlas.structures
    c = {n: np.array(ss[n].centroid_mm) for n in ss.names}
    assert c["Bladder"][1] < c["Rectum"][1]  # bladder anterior to rectum
    (bx0, bx1), _, _ = ss["Bladder"].bounds_mm
    assert ss["Femur_Head_L"].bounds_mm[0][0] > bx1  # femoral heads lateral to the bladder
    assert ss["Femur_Head_R"].bounds_mm[0][1] < bx0
    assert c["V_Venacava_I"][0] < c["A_Aorta"][0]  # IVC to the right of the aorta
    for side, sign in (("L", 1), ("R", -1)):
        assert sign * c[f"A_Iliac_{side}"][0] > 0 and sign * c[f"Femur_Head_{side}"][0] > 0
        # common iliac veins posterior to the arteries
        assert c[f"V_Iliac_{side}"][1] > c[f"A_Iliac_{side}"][1]
        # external iliac artery runs antero-laterally, the internal one posteriorly
        eia, iia = ss[f"A_Iliac_Ext_{side}"], ss[f"A_Iliac_Int_{side}"]
        assert c[f"A_Iliac_Ext_{side}"][1] < c[f"A_Iliac_Int_{side}"][1]
        lo = np.array(eia.grid.index_to_lps([eia.bbox[0].start, 0, 0]))[2]
        hi = np.array(eia.grid.index_to_lps([eia.bbox[0].stop - 1, 0, 0]))[2]
        bottom = np.argwhere(eia.cropped_mask[0]).mean(axis=0)
        top = np.argwhere(eia.cropped_mask[-1]).mean(axis=0)
        assert hi > lo and bottom[0] < top[0]  # row index smaller = more anterior at the bottom
        assert sign * (bottom[1] - top[1]) > 0  # and more lateral
        assert iia.bounds_mm[2][0] < atlas.landmarks["FemurHead_Top_L"][2] + 10
    assert c["Spc_Bowel"][2] > c["Bladder"][2] and c["Colon_Sigmoid"][2] > c["Bladder"][2]
    # the bed: behind the symphysis, in front of the rectum, below the bladder centre
    assert c["PubicSymphys"][1] < c["ProstateBed"][1] < c["Rectum"][1]
    assert c["ProstateBed"][2] < c["Bladder"][2]
    # vessels end at about the top of the femoral heads
    for side in "LR":
        low = _bottom_z(ss[f"A_Iliac_Ext_{side}"])
        assert abs(low - atlas.landmarks[f"FemurHead_Top_{side}"][2]) <= 12.0


def test_inside_body_and_no_forbidden_overlaps(atlas):
    ss = atlas.structures
    body = ss["Body"]
    for name in ATLAS_STRUCTURES:
        if name != "Body":
            assert _overlap(ss[name], body) == ss[name].voxel_count, name
    for v in VESSELS:
        for b in BONES:
            assert _overlap(ss[v], ss[b]) == 0, (v, b)
    groups = list(BONES) + list(VESSELS) + list(SOFT)
    for n, a in enumerate(groups):
        for b in groups[n + 1 :]:
            assert _overlap(ss[a], ss[b]) == 0, (a, b)
    assert validate_anatomy(atlas) == []


def test_validation_reports_overlap(atlas):
    ss = atlas.structures
    bad = StructureSet(
        [ss[n] for n in ss.names if n != "Rectum"]
        + [Structure("Rectum", ss["Rectum"].mask | ss["Bladder"].mask, atlas.grid)],
        grid=atlas.grid,
    )
    broken = Atlas(NAME, atlas.grid, atlas.ct_hu, bad, dict(atlas.landmarks))
    problems = validate_anatomy(broken, relations={"anterior": [["Rectum", "Bladder"]]})
    assert any("Bladder and Rectum overlap" in p for p in problems)
    assert any("Rectum is not anterior Bladder" in p for p in problems)
    assert validate_anatomy(atlas, relations={"anterior": [["Bladder", "Rectum"]]}) == []


def test_ct_numbers(atlas):
    ct, ss = atlas.ct_hu, atlas.structures
    outside = ~ss["Body"].mask
    assert np.median(ct[outside]) < -950  # air around the body
    med = {n: float(np.median(ct[ss[n].mask])) for n in ("Bladder", "Iliopsoas_L", "A_Aorta")}
    assert -10 < med["Bladder"] < 40 and 30 < med["Iliopsoas_L"] < 60 and 25 < med["A_Aorta"] < 55
    assert np.median(ct[ss["Femur_Head_L"].mask]) > 200
    assert ct[ss["Rectum"].mask].min() < -700  # gas in the rectum
    fat = ss["Body"].mask.copy()
    for n in ss.names:
        if n != "Body":
            fat &= ~ss[n].mask
    assert -130 < np.median(ct[fat]) < -40


# ------------------------------------------------------------------ grids, determinism


def test_two_grids_agree_within_voxel_tolerance():
    a = load_atlas(NAME, spacing_mm=(2.5, 2.0, 2.0))
    g = a.grid
    # a second grid: other spacing and an origin off by a fraction of a voxel
    fine = ImageGrid(
        shape=(int(g.extent_mm[0] / 2.0) + 1, int(g.extent_mm[1] / 1.6), int(g.extent_mm[2] / 1.6)),
        spacing_mm=(2.0, 1.6, 1.6),
        origin_mm=(g.origin_mm[0] + 0.37, g.origin_mm[1] - 0.41, g.origin_mm[2] + 0.9),
    )
    b = load_atlas(NAME, grid=fine)
    voxel = np.array(g.spacing_mm)
    for name in ATLAS_STRUCTURES:
        sa = a.structures[name]
        if sa.volume_cc < 5.0:
            continue
        sb = b.structures[name]
        # compare inside the union of both bounding boxes (in mm), padded by two voxels
        lo = np.minimum([r[0] for r in sa.bounds_mm], [r[0] for r in sb.bounds_mm])
        hi = np.maximum([r[1] for r in sa.bounds_mm], [r[1] for r in sb.bounds_mm])
        k0 = np.maximum(np.floor(g.lps_to_index(lo)).astype(int) - 2, 0)
        k1 = np.minimum(np.ceil(g.lps_to_index(hi)).astype(int) + 3, g.shape)
        box = tuple(slice(int(a0), int(a1)) for a0, a1 in zip(k0, k1))
        sub = g.crop(box)
        ma = sa.mask[box]
        mb = resample_to_grid(sb.cropped_mask, sb.grid.crop(sb.bbox), sub, order=0)
        assert np.count_nonzero(mb) == pytest.approx(sb.volume_cc / g.voxel_volume_cc, rel=0.15), (
            name
        )  # nothing of b fell outside the box
        # disagreements lie within one voxel of the other mask (but for a few voxels at the
        # thin rims of plates); the sacral levels are cut from the curved sacrum by axial
        # planes, so one slice more or less moves them by more than a voxel in-plane
        if not name.startswith("VB_S"):
            for x, y in ((ma, mb), (mb, ma)):
                grown = ndimage.binary_dilation(y, structure=np.ones((3, 3, 3), bool))
                assert np.count_nonzero(x & ~grown) <= max(5, 2e-3 * np.count_nonzero(x)), name
        # compact structures (6 V / S >= 38 mm) agree with Dice >= 0.95; thin ones (vessels,
        # the 5 mm levator shell, the sacral levels, vertebrae with their processes) lose
        # relatively more to the boundary voxels
        thickness = 6 * sa.volume_cc * 1000 / _surface_mm2(ma, voxel)
        assert _dice(ma, mb) >= (0.95 if thickness >= 38.0 else 0.80), name
        assert b.structures[name].volume_cc == pytest.approx(sa.volume_cc, rel=0.12), name


def _surface_mm2(mask: np.ndarray, spacing) -> float:
    """Surface area estimate from voxel faces (overestimates smooth surfaces by ~1.5)."""
    sz, sy, sx = spacing
    faces = 0.0
    for axis, area in ((0, sy * sx), (1, sz * sx), (2, sz * sy)):
        faces += np.count_nonzero(np.diff(mask.astype(np.int8), axis=axis)) * area
    return faces / 1.5


def test_deterministic_build(atlas):
    again = load_atlas(NAME, spacing_mm=COARSE)
    assert np.array_equal(atlas.ct_hu, again.ct_hu)
    for n in atlas.structures.names:
        assert np.array_equal(atlas.structures[n].mask, again.structures[n].mask), n
    assert atlas.landmarks == again.landmarks


def test_the_ct_is_painted_once_on_its_first_read(monkeypatch):
    """Building never paints the CT (planning reads only structures); reading it does."""
    import rtplan.atlas as atlas_module

    calls = []
    paint = atlas_module._paint

    def counted(*args):
        calls.append(1)
        return paint(*args)

    monkeypatch.setattr(atlas_module, "_paint", counted)
    a = load_atlas(NAME, spacing_mm=(5.0, 4.0, 4.0), seed=2)
    assert calls == []
    ct = a.ct_hu
    assert len(calls) == 1 and a.ct_hu is ct and ct.dtype == np.float32
    assert ct.shape == a.grid.shape and ct.flags.writeable
    # copies, pickles and replaced fields carry the same CT, painted on the way if needed
    for make in (
        copy.copy,
        lambda b: pickle.loads(pickle.dumps(b)),
        lambda b: dataclasses.replace(b, name="other"),
    ):
        assert np.array_equal(make(load_atlas(NAME, spacing_mm=(5.0, 4.0, 4.0), seed=2)).ct_hu, ct)
    # threads reading it at once paint it once
    t = load_atlas(NAME, spacing_mm=(5.0, 4.0, 4.0), seed=2)
    before = len(calls)
    with ThreadPoolExecutor(4) as pool:
        cts = list(pool.map(lambda _: t.ct_hu, range(8)))
    assert len(calls) == before + 1 and all(c is cts[0] for c in cts)
    with pytest.raises(AttributeError, match="no attribute 'not_a_field'"):
        t.not_a_field  # noqa: B018


# ------------------------------------------------------------------ variants


def test_scale_variant(atlas):
    big = load_atlas(NAME, spacing_mm=COARSE, scale=1.1)
    for n in ("Bladder", "Femur_Head_L", "Sacrum", "Spc_Bowel"):
        ratio = big.structures[n].volume_cc / atlas.structures[n].volume_cc
        assert ratio == pytest.approx(1.1**3, rel=0.1), n
    center = np.array([0.0, 0.0, 50.0])
    for key in ("PubicSymphysis_Top", "AorticBifurcation", "FemurHead_Top_L"):
        expected = center + 1.1 * (np.array(atlas.landmarks[key]) - center)
        assert np.allclose(big.landmarks[key], expected, atol=1e-6), key
    assert big.grid.extent_mm[0] > atlas.grid.extent_mm[0]  # the field grows with the patient
    assert validate_anatomy(big) == []


@pytest.mark.parametrize("bad", [0.5, 1.6, float("nan")])
def test_scale_out_of_range(bad):
    with pytest.raises(ValueError, match="scale"):
        load_atlas(NAME, spacing_mm=COARSE, scale=bad)


def test_bladder_filling_variant(atlas):
    full = load_atlas(NAME, spacing_mm=COARSE, bladder_filling=1.5)
    v0, v1 = atlas.structures["Bladder"].volume_cc, full.structures["Bladder"].volume_cc
    assert 1.3 <= v1 / v0 <= 1.55  # grows by the filling, a little less where organs cut it
    # it grows from its neck: the bottom stays, the dome rises
    assert _bottom_z(full.structures["Bladder"]) == pytest.approx(
        _bottom_z(atlas.structures["Bladder"]), abs=COARSE[0]
    )
    assert _top_z(full.structures["Bladder"]) > _top_z(atlas.structures["Bladder"]) + 5
    # bones are untouched, the bowel gives way
    assert np.array_equal(full.structures["Sacrum"].mask, atlas.structures["Sacrum"].mask)
    assert full.structures["Spc_Bowel"].volume_cc < atlas.structures["Spc_Bowel"].volume_cc
    empty = load_atlas(NAME, spacing_mm=COARSE, bladder_filling=0.6)
    assert empty.structures["Bladder"].volume_cc / v0 == pytest.approx(0.6, rel=0.1)


def test_rectal_filling_variant(atlas):
    wide = load_atlas(NAME, spacing_mm=COARSE, rectal_filling=1.5)
    r0, r1 = atlas.structures["Rectum"].volume_cc, wide.structures["Rectum"].volume_cc
    assert 1.25 <= r1 / r0 <= 1.6
    assert np.array_equal(
        wide.structures["Femur_Head_L"].mask, atlas.structures["Femur_Head_L"].mask
    )
    # the bed shrinks where the rectum bulges forward
    assert wide.structures["ProstateBed"].volume_cc <= atlas.structures["ProstateBed"].volume_cc
    assert validate_anatomy(wide) == []


def test_seeded_variants_valid_distinct_and_reproducible(atlas):
    built = {}
    for seed in (1, 2):
        v = load_atlas(NAME, spacing_mm=COARSE, seed=seed)  # raises if invalid
        assert v.missing() == [] and validate_anatomy(v) == []
        assert v.parameters["seed"] == seed and "group_shift_mm" in v.parameters
        built[seed] = v
    vols = [v.structures["Bladder"].volume_cc for v in built.values()]
    assert len(set(vols)) == 2 and atlas.structures["Bladder"].volume_cc not in vols
    assert built[1].landmarks["VUA"] != built[2].landmarks["VUA"]
    again = load_atlas(NAME, spacing_mm=COARSE, seed=2)
    assert np.array_equal(again.ct_hu, built[2].ct_hu)
    for n in again.structures.names:
        assert np.array_equal(again.structures[n].mask, built[2].structures[n].mask), n


def test_extreme_variant_is_refused_or_valid():
    # a valid request either builds a valid atlas or raises GeometryError naming the problem
    try:
        a = load_atlas(NAME, spacing_mm=COARSE, bladder_filling=2.5, rectal_filling=2.5)
    except GeometryError as exc:
        assert "not anatomically valid" in str(exc)
    else:
        assert validate_anatomy(a) == []


# ------------------------------------------------------------------ missing structures


def test_require_names_every_missing_item(atlas):
    ss = atlas.structures
    partial = StructureSet([ss["Body"], ss["Bladder"]], grid=atlas.grid)
    a = Atlas("partial", atlas.grid, atlas.ct_hu, partial, {"VUA": atlas.landmarks["VUA"]})
    missing = a.missing()
    assert "Rectum" in missing and "A_Iliac_L" in missing and "L5S1_Interspace" in missing
    assert "Bladder" not in missing and "VUA" not in missing
    with pytest.raises(MissingStructureError) as err:
        a.require(
            ["Bladder", "Rectum", "PubicSymphys"], ["VUA", "PubicSymphysis_Top"], purpose="PB"
        )
    msg = str(err.value)
    assert "Rectum" in msg and "PubicSymphys" in msg and "PubicSymphysis_Top" in msg
    assert "Bladder, " not in msg.split("missing")[0]
    a.require(["bladder"], ["VUA"])  # synonyms accepted, nothing missing: no error


# ------------------------------------------------------------------ label maps (NIfTI)


def _nib():
    return pytest.importorskip("nibabel", reason="nibabel (extra 'nifti') reads label maps")


def _to_ras_ijk(mask: np.ndarray, grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    """An rtplan [k, j, i] LPS identity-grid array as NIfTI data with a positive RAS affine."""
    data = np.transpose(mask[:, ::-1, ::-1], (2, 1, 0))  # i -> patient right, j -> anterior
    _, ny, nx = grid.shape
    sz, sy, sx = grid.spacing_mm
    x0, y0, z0 = grid.origin_mm
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(x0 + (nx - 1) * sx), -(y0 + (ny - 1) * sy), z0]
    return np.ascontiguousarray(data), affine


TS_CLASSES = {
    "urinary_bladder": "Bladder",
    "iliac_artery_left": "A_Iliac_L",
    "iliac_vena_right": "V_Iliac_R",
    "hip_left": "Bone_Ilium_L",
    "hip_right": "Bone_Ilium_R",
    "sacrum": "Sacrum",
    "vertebrae_L5": "VB_L5",
    "vertebrae_L4": "VB_L4",
    "aorta": "A_Aorta",
    "femur_left": "Femur_Head_L",
}


@pytest.fixture(scope="module")
def ts_source(atlas):
    """Source masks for the label maps: hips = ilium + ischium + pubic half (TS style)."""
    ss = atlas.structures
    x = atlas.grid.axis_coordinates_mm()[2]
    ps = ss["PubicSymphys"].mask
    hips = {
        "hip_left": ss["Bone_Ilium_L"].mask | ss["Bone_Ischium_L"].mask | (ps & (x >= 0)),
        "hip_right": ss["Bone_Ilium_R"].mask | ss["Bone_Ischium_R"].mask | (ps & (x < 0)),
    }
    out = {}
    for cls, tg in TS_CLASSES.items():
        out[cls] = hips[cls] if cls in hips else ss[tg].mask
    return out


def test_label_maps_one_file_per_class(tmp_path, atlas, ts_source):
    nib = _nib()
    for cls, mask in ts_source.items():
        data, affine = _to_ras_ijk(mask.astype(np.uint8), atlas.grid)
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{cls}.nii.gz")
    data, affine = _to_ras_ijk(np.zeros(atlas.grid.shape, np.uint8), atlas.grid)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "spleen.nii.gz")  # empty class
    ct, affine = _to_ras_ijk(np.round(atlas.ct_hu).astype(np.int16), atlas.grid)
    nib.save(nib.Nifti1Image(ct, affine), tmp_path / "ct.nii.gz")

    user = load_atlas(tmp_path)  # dispatches to atlas_from_label_maps
    assert user.grid.equals(atlas.grid) and user.grid.is_standard_orientation
    assert np.allclose(user.ct_hu, np.round(atlas.ct_hu), atol=0.5)
    for cls, tg in TS_CLASSES.items():
        assert tg in user.structures.names, cls
        if tg != "Femur_Head_L":
            assert np.array_equal(user.structures[tg].mask, ts_source[cls]), tg
    assert "spleen" not in user.structures
    # LPS orientation: the left artery is on the patient's left, the bladder where it was
    assert user.structures["A_Iliac_L"].centroid_mm[0] > 0
    assert np.allclose(
        user.structures["Bladder"].centroid_mm, atlas.structures["Bladder"].centroid_mm
    )
    # femur cropped to head and neck; symphysis derived from the hip bones
    assert _top_z(user.structures["Femur_Head_L"]) == _top_z(atlas.structures["Femur_Head_L"])
    ps = user.structures["PubicSymphys"]
    assert abs(_top_z(ps) - atlas.landmarks["PubicSymphysis_Top"][2]) <= COARSE[0] + 0.5
    assert (
        abs(user.landmarks["PubicSymphysis_Top"][2] - atlas.landmarks["PubicSymphysis_Top"][2])
        <= COARSE[0] + 0.5
    )
    assert (
        abs(user.landmarks["L4L5_Interspace"][2] - atlas.landmarks["L4L5_Interspace"][2])
        <= COARSE[0]
    )
    assert (
        abs(user.landmarks["AorticBifurcation"][2] - atlas.landmarks["AorticBifurcation"][2])
        <= COARSE[0] + 1
    )
    # what later steps need but is missing is reported by name
    missing = user.missing()
    for name in ("Rectum", "ProstateBed", "A_Iliac_Ext_L", "VasDeferens_CutEnd", "S3_Bottom"):
        assert name in missing
    assert "Bladder" not in missing and "PubicSymphysis_Top" not in missing
    assert user.parameters["missing"] == missing
    with pytest.raises(MissingStructureError, match="Rectum"):
        user.require(["Bladder", "Rectum"])


def test_label_maps_multilabel_with_json(tmp_path, atlas, ts_source):
    nib = _nib()
    label = np.zeros(atlas.grid.shape, np.uint8)
    names = {}
    for n, cls in enumerate(("urinary_bladder", "sacrum", "iliac_artery_left"), start=1):
        label[ts_source[cls]] = n
        names[str(n)] = cls
    data, affine = _to_ras_ijk(label, atlas.grid)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "segmentation.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps(names))
    user = atlas_from_label_maps(tmp_path)
    assert set(user.structures.names) == {"Bladder", "Sacrum", "A_Iliac_L"}
    assert np.array_equal(user.structures["Sacrum"].mask, ts_source["sacrum"])
    assert user.ct_hu.shape == atlas.grid.shape  # a pseudo-CT without a CT file
    assert np.median(user.ct_hu[ts_source["sacrum"]]) > 200


def test_label_maps_errors(tmp_path, atlas):
    nib = _nib()
    with pytest.raises(AtlasNotFoundError):
        atlas_from_label_maps(tmp_path)
    a = np.zeros((4, 5, 6), np.uint8)
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "bladder.nii.gz")
    nib.save(nib.Nifti1Image(a[:, :, :5], np.eye(4)), tmp_path / "rectum.nii.gz")
    with pytest.raises(GeometryError, match="share one grid"):
        atlas_from_label_maps(tmp_path)


def test_user_folder_refuses_variation(tmp_path, atlas):
    nib = _nib()
    data, affine = _to_ras_ijk(atlas.structures["Bladder"].mask.astype(np.uint8), atlas.grid)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "urinary_bladder.nii.gz")
    with pytest.raises(ValueError, match="seed"):
        load_atlas(tmp_path, seed=3)


# ------------------------------------------------------------------ DICOM (needs dicom_io)


def _dicom_io():
    from rtplan import dicom_io

    return dicom_io


def test_export_ct_round_trip(tmp_path):
    dicom_io = _dicom_io()
    a = load_atlas(NAME, spacing_mm=(6.0, 5.0, 5.0))
    folder = a.export_ct(tmp_path / "ct")
    files = sorted(Path(folder).glob("*"))
    assert len([f for f in files if f.is_file()]) == a.grid.shape[0]
    back = dicom_io.read_ct_series(folder)
    assert back.grid.equals(a.grid, atol_mm=1e-3)
    assert np.allclose(back.hu, a.ct_hu, atol=1.0)  # stored as integers


def _write_rtstruct(ct_folder: Path, path: Path, rois: dict[str, list[np.ndarray]]) -> None:
    """A minimal RTSTRUCT (built from scratch) referencing the CT in ``ct_folder``."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cts = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(ct_folder.iterdir())]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, kw, getattr(cts[0], kw))
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    ref = Dataset()
    ref.FrameOfReferenceUID = cts[0].FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ssroi, contours, obs = [], [], []
    for n, (name, polys) in enumerate(rois.items(), start=1):
        r = Dataset()
        r.ROINumber, r.ROIName = n, name
        r.ReferencedFrameOfReferenceUID = cts[0].FrameOfReferenceUID
        r.ROIGenerationAlgorithm = "MANUAL"
        ssroi.append(r)
        c = Dataset()
        c.ReferencedROINumber = n
        c.ROIDisplayColor = [255, 0, 0]
        seq = []
        for poly in polys:
            cd = Dataset()
            cd.ContourGeometricType = "CLOSED_PLANAR"
            cd.NumberOfContourPoints = len(poly)
            cd.ContourData = [f"{v:.3f}" for v in np.asarray(poly).ravel()]
            seq.append(cd)
        c.ContourSequence = Sequence(seq)
        contours.append(c)
        o = Dataset()
        o.ObservationNumber, o.ReferencedROINumber = n, n
        o.RTROIInterpretedType, o.ROIInterpreter = "ORGAN", ""
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ssroi)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(obs)
    ds.save_as(path, enforce_file_format=True)


def test_ct_and_rtstruct_fixture_loads_as_atlas(tmp_path):
    dicom_io = _dicom_io()
    grid = ImageGrid(
        shape=(10, 40, 40), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(-40.0, -40.0, -15.0)
    )
    hu = np.full(grid.shape, -100.0, np.float32)
    ct_folder = dicom_io.write_ct_series(
        hu,
        grid,
        tmp_path / "ct",
        patient_name="TEST^PHANTOM",
        patient_id="T0",
        series_description="test",
    )
    ct_folder = Path(ct_folder)
    # shuffle the slice file names (unsorted slices)
    files = sorted(f for f in ct_folder.iterdir() if f.is_file())
    rng = np.random.default_rng(0)
    for n, f in enumerate(rng.permutation(len(files))):
        files[f].rename(ct_folder / f"x{n:03d}.dcm")
    z = grid.axis_coordinates_mm()[0]

    def square(half, zz, cx=0.0, cy=0.0):
        return np.array(
            [
                [cx - half, cy - half, zz],
                [cx + half, cy - half, zz],
                [cx + half, cy + half, zz],
                [cx - half, cy + half, zz],
            ]
        )

    # a bladder with a hole (two contours on one slice), slices listed out of order
    bladder = [np.vstack([square(15, zz)]) for zz in z[[5, 3, 4]]] + [square(5, z[4])]
    pubic = [square(6, zz, cy=-25) for zz in z[[1, 2]]]
    _write_rtstruct(
        ct_folder, tmp_path / "rs.dcm", {"Urinary Bladder": bladder, "pubic symphysis": pubic}
    )
    user = load_atlas_from_dicom(ct_folder, tmp_path / "rs.dcm")
    assert "Bladder" in user.structures and "PubicSymphys" in user.structures
    b = user.structures["Bladder"]
    k4 = 4
    assert b.mask[k4].sum() < b.mask[3].sum()  # the hole is empty
    assert b.mask[3].sum() > 0 and b.mask[5].sum() > 0
    assert user.landmarks["PubicSymphysis_Top"][2] == pytest.approx(z[2])
    assert "Rectum" in user.missing()
    # the same folder through load_atlas, with the RTSTRUCT among the CT slices
    (tmp_path / "rs.dcm").rename(ct_folder / "rs.dcm")
    again = load_atlas(ct_folder)
    assert np.array_equal(again.structures["Bladder"].mask, b.mask)
    assert again.grid.equals(grid)


def load_atlas_from_dicom(ct_folder: Path, rs: Path) -> Atlas:
    from rtplan.atlas import atlas_from_dicom

    return atlas_from_dicom(ct_folder, rtstruct=rs)


def test_dicom_folder_without_rtstruct_is_reported(tmp_path):
    dicom_io = _dicom_io()
    from rtplan.atlas import atlas_from_dicom
    from rtplan.errors import DicomInputError

    grid = ImageGrid(shape=(3, 8, 8), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    folder = dicom_io.write_ct_series(
        np.zeros(grid.shape, np.float32),
        grid,
        tmp_path / "ct",
        patient_name="TEST^PHANTOM",
        patient_id="T0",
        series_description="t",
    )
    with pytest.raises(DicomInputError, match="RTSTRUCT"):
        atlas_from_dicom(folder)


# ------------------------------------------------------------------ the definition format

_SOLIDS_TOML = """
[atlas]
name = "solids"
default_fov_mm = [160.0, 160.0]
default_z_range_mm = [-60.0, 60.0]
noise_hu = 0.0

[[structure]]
name = "Body"
role = "external"
hu = 0.0
shapes = [{ type = "box", min = [-75.0, -75.0, -55.0], max = [75.0, 75.0, 55.0] }]

[[structure]]
name = "Sphere"
hu = 100.0
shapes = [{ type = "ellipsoid", center = [-40.0, -40.0, 0.0], radii = [15.0, 15.0, 15.0] }]

[[structure]]
name = "Tilted"
shapes = [
  { type = "ellipsoid", center = [40, 40, 0], radii = [20, 8, 12], rotate_deg = [20, 10, 35] },
]

[[structure]]
name = "Capsule"
shapes = [{ type = "tube", points = [[-40, 30, -30], [-40, 30, 30]], radius = 8.0, spline = false }]

[[structure]]
name = "Wall"
shapes = [{ type = "econe", z = [-40, 40], center = [30, -30], radii = [20, 20], thickness = 5.0 }]

[[structure]]
name = "Shell"
exclude = [{ name = "Sphere", gap_mm = 5.0 }]
shapes = [
  { type = "ellipsoid", center = [-40.0, -40.0, 0.0], radii = [25.0, 25.0, 25.0] },
  { type = "halfspace", op = "intersect", point = [0.0, 0.0, 0.0], normal = [0.0, 0.0, 1.0] },
]
"""


def _write_def(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "atlas.toml").write_text(text, encoding="utf-8")
    return folder


def test_solids_have_their_analytic_volumes(tmp_path):
    a = load_atlas(_write_def(tmp_path / "solids", _SOLIDS_TOML), spacing_mm=1.0, validate=False)
    ss = a.structures
    pi = np.pi
    # analytic volume (mm^3) of each solid grown by d mm (d < 0: shrunk); the rasterised
    # volume must lie between the solid shrunk and grown by half a voxel diagonal
    expected = {
        "Sphere": lambda d: 4 / 3 * pi * (15 + d) ** 3,
        "Tilted": lambda d: 4 / 3 * pi * (20 + d) * (8 + d) * (12 + d),
        "Capsule": lambda d: pi * (8 + d) ** 2 * 60 + 4 / 3 * pi * (8 + d) ** 3,
        "Wall": lambda d: pi * ((20 + d) ** 2 - (15 - d) ** 2) * (80 + 2 * d),
        "Shell": lambda d: 0.5 * 4 / 3 * pi * ((25 + d) ** 3 - (20 - d) ** 3),
    }
    half_diag = 0.5 * np.sqrt(3.0)
    for name, vol in expected.items():
        v = ss[name].volume_cc * 1000
        assert vol(-half_diag) <= v <= vol(half_diag), name
        assert v == pytest.approx(vol(0.0), rel=0.05), name
    assert ss["Sphere"].centroid_mm == pytest.approx((-40.0, -40.0, 0.0), abs=0.05)
    assert np.all(a.ct_hu[ss["Sphere"].mask] == 100.0) and np.all(
        a.ct_hu[~ss["Body"].mask] == -1000
    )
    assert _overlap(ss["Shell"], ss["Sphere"]) == 0


def test_definition_typos_are_reported(tmp_path):
    bad = _SOLIDS_TOML.replace('name = "Shell"\nexclude', 'name = "Shell"\nexlude')
    with pytest.raises(RtplanError, match="exlude"):
        load_atlas(_write_def(tmp_path / "a", bad), spacing_mm=4.0)
    bad = _SOLIDS_TOML.replace("radius = 8.0, spline", "radiuss = 8.0, spline")
    with pytest.raises(RtplanError, match="radiuss"):
        load_atlas(_write_def(tmp_path / "b", bad), spacing_mm=4.0)
    bad = _SOLIDS_TOML.replace('type = "box"', 'type = "cube"')
    with pytest.raises(RtplanError, match="cube"):
        load_atlas(_write_def(tmp_path / "c", bad), spacing_mm=4.0)
    bad = _SOLIDS_TOML.replace('exclude = [{ name = "Sphere"', 'exclude = [{ name = "Later"')
    with pytest.raises(RtplanError, match="Later"):
        load_atlas(_write_def(tmp_path / "d", bad), spacing_mm=4.0)


def test_definition_values_of_the_wrong_type_are_reported(tmp_path):
    # each of these used to load: a string read as a number, a string as true, a tube
    # without a radius as an empty structure
    cases = {
        "a": ("hu = 100.0", 'hu = "100"', "hu"),
        "b": ('name = "Capsule"', 'name = "Capsule"\nexport = "no"', "export"),
        "c": ("radius = 8.0, spline", "spline", "radius"),
        "d": ("radii = [15.0, 15.0, 15.0]", 'radii = ["15", "15", "15"]', "radii"),
    }
    for folder, (old, new, key) in cases.items():
        bad = _SOLIDS_TOML.replace(old, new)
        assert bad != _SOLIDS_TOML
        with pytest.raises(RtplanError, match=key):
            load_atlas(_write_def(tmp_path / folder, bad), spacing_mm=4.0, validate=False)


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"spacing_mm": "3"}, "spacing_mm"),
        ({"shape": (40.5, 64, 64)}, "shape"),
        ({"grid": (40, 64, 64)}, "grid"),
        ({"scale": "1.1"}, "scale"),
        ({"bladder_filling": True}, "bladder_filling"),
        ({"seed": True}, "seed"),
        ({"validate": "no"}, "validate"),
    ],
)
def test_load_atlas_checks_argument_types(kwargs, name):
    with pytest.raises(TypeError, match=name):
        load_atlas(NAME, **kwargs)


def test_load_atlas_refuses_a_name_that_is_not_a_string():
    with pytest.raises(TypeError, match="name_or_path"):
        load_atlas(123)


def test_load_atlas_refuses_a_spacing_of_two_numbers():
    with pytest.raises(GeometryError, match="spacing_mm"):
        load_atlas(NAME, spacing_mm=(3.0, 2.5))


def test_atlas_checks_its_parts(atlas):
    with pytest.raises(TypeError, match="structures"):
        Atlas(NAME, atlas.grid, atlas.ct_hu, {}, {})
    with pytest.raises(GridMismatchError, match="ct_hu"):
        Atlas(NAME, atlas.grid, atlas.ct_hu[1:], atlas.structures, {})
    with pytest.raises(TypeError, match="structures"):
        atlas.missing("Bladder")  # one name, not a list of names


def test_validate_anatomy_and_derive_landmarks_check_their_arguments(atlas):
    with pytest.raises(TypeError, match="atlas"):
        validate_anatomy(atlas.structures)
    with pytest.raises(InvalidInputError, match="anterior"):
        validate_anatomy(atlas, relations={"anterior": ["Bladder"]})
    with pytest.raises(InvalidInputError, match="volume_cc"):
        validate_anatomy(atlas, relations={"volume_cc": {"Bladder": "big"}})
    with pytest.raises(TypeError, match="structures"):
        derive_landmarks({"Bladder": atlas.structures["Bladder"]})


def test_label_map_arguments_are_checked(tmp_path):
    with pytest.raises(TypeError, match="labels"):
        atlas_from_label_maps(tmp_path, labels={"1": "urinary_bladder"})
    with pytest.raises(InvalidInputError, match="femur_head_length_mm"):
        atlas_from_label_maps(tmp_path, femur_head_length_mm=-5.0)
    from rtplan.atlas import atlas_from_dicom

    with pytest.raises(TypeError, match="folder"):
        atlas_from_dicom(123)


def _ct_folder_with_rtstruct(tmp_path: Path) -> Path:
    dicom_io = _dicom_io()
    grid = ImageGrid(shape=(3, 8, 8), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(-8.0, -8.0, 0.0))
    folder = Path(
        dicom_io.write_ct_series(
            np.zeros(grid.shape, np.float32),
            grid,
            tmp_path / "ct",
            patient_name="TEST^PHANTOM",
            patient_id="T0",
            series_description="t",
        )
    )
    z = grid.axis_coordinates_mm()[0]
    square = np.array([[-4.0, -4.0, z[1]], [4.0, -4.0, z[1]], [4.0, 4.0, z[1]], [-4.0, 4.0, z[1]]])
    _write_rtstruct(folder, folder / "rs.dcm", {"Bladder": [square]})
    return folder


def test_files_that_are_not_dicom_are_skipped_when_looking_for_the_rtstruct(tmp_path):
    from rtplan.atlas import atlas_from_dicom

    folder = _ct_folder_with_rtstruct(tmp_path)
    (folder / "README.txt").write_text("not DICOM", encoding="utf-8")
    (folder / "empty").write_bytes(b"")
    assert "Bladder" in atlas_from_dicom(folder).structures


def test_a_real_error_while_looking_for_the_rtstruct_is_not_silenced(tmp_path, monkeypatch):
    import pydicom

    from rtplan.atlas import atlas_from_dicom

    folder = _ct_folder_with_rtstruct(tmp_path)
    real = pydicom.dcmread

    def broken(path, *args, **kwargs):
        if Path(path).name == "rs.dcm":
            raise RuntimeError("disk on fire")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", broken)
    # it used to be taken for a non-DICOM file and reported as "no RTSTRUCT"
    with pytest.raises(RuntimeError, match="disk on fire"):
        atlas_from_dicom(folder)


# ------------------------------------------------------------------ issue 14: DICOM parity


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _ball(atlas: Atlas, name: str, radius_mm: float) -> np.ndarray:
    z, y, x = atlas.grid.axis_coordinates_mm()
    cx, cy, cz = atlas.structures[name].centroid_mm
    return (
        ((x[None, None, :] - cx) ** 2 + (y[None, :, None] - cy) ** 2) + (z[:, None, None] - cz) ** 2
    ) <= radius_mm**2


def test_the_full_atlas_exported_to_dicom_reads_back_the_same(tmp_path, coarse_atlas):
    """Landmarks (POINT ROIs), targets and stage are those of the atlas in memory."""
    from rtplan.atlas import atlas_from_dicom
    from rtplan.lesions import lesions_from_mask
    from rtplan.staging import stage
    from rtplan.volumes import ctv_pelvic_nodes, ctv_prostate_bed

    a = coarse_atlas
    back = atlas_from_dicom(a.export_dicom(tmp_path / "atlas", uid_seed="parity"))
    assert set(back.landmarks) == set(a.landmarks)
    for key, p in a.landmarks.items():
        assert back.landmarks[key] == pytest.approx(p, abs=1e-3), key
    assert back.landmark_derivations == {} and back.derived_structures == {}
    assert back.missing() == []
    for name, s in a.structures.items():
        assert np.array_equal(back.structures[name].mask, s.mask), name
    assert _dice(ctv_prostate_bed(back).mask, ctv_prostate_bed(a).mask) >= 0.98
    assert _dice(ctv_pelvic_nodes(back).mask, ctv_pelvic_nodes(a).mask) >= 0.98
    lesions = _ball(a, "A_Iliac_Ext_L", 6.0) | _ball(a, "ProstateBed", 5.0)
    here = stage(lesions_from_mask(lesions, a.grid), a)
    there = stage(lesions_from_mask(lesions, back.grid), back)
    assert there.string == here.string
    assert [les.category for les in there.lesions] == [les.category for les in here.lesions]


def test_derivation_marks_survive_a_dicom_round_trip(tmp_path, coarse_atlas):
    from rtplan.atlas import atlas_from_dicom

    a = coarse_atlas
    ss = StructureSet(
        [s.with_derivation("test rule") if n == "VB_S1" else s for n, s in a.structures.items()],
        grid=a.grid,
    )
    marked = Atlas(
        name="marked",
        grid=a.grid,
        ct_hu=a.ct_hu,
        structures=ss,
        landmarks=dict(a.landmarks),
        landmark_derivations={"VUA": "atlas landmark carried by registration"},
    )
    assert marked.derivations() == [
        ("structure", "VB_S1", "test rule"),
        ("landmark", "VUA", "atlas landmark carried by registration"),
    ]
    back = atlas_from_dicom(marked.export_dicom(tmp_path / "marked"))
    assert back.derived_structures == {"VB_S1": "test rule"}
    assert back.landmark_derivations == {"VUA": "atlas landmark carried by registration"}
    with pytest.raises(FileExistsError):
        marked.export_dicom(tmp_path / "marked")


def test_landmark_derivations_must_name_landmarks(coarse_atlas):
    a = coarse_atlas
    with pytest.raises(InvalidInputError, match="Nowhere"):
        Atlas(
            name="x",
            grid=a.grid,
            ct_hu=a.ct_hu,
            structures=a.structures,
            landmarks={},
            landmark_derivations={"Nowhere": "rule"},
        )


# ------------------------------------------------------------------ issue 14: truncated scans


def _scan(atlas: Atlas, z_min_mm: float, z_max_mm: float) -> StructureSet:
    """The atlas's structures on the slices between two heights (a shorter scan)."""
    z = atlas.grid.axis_coordinates_mm()[0]
    ks = np.flatnonzero((z >= z_min_mm) & (z <= z_max_mm))
    crop = (slice(int(ks[0]), int(ks[-1]) + 1), slice(None), slice(None))
    grid = atlas.grid.crop(crop)
    return StructureSet(
        [Structure(n, s.mask[crop], grid, role=s.role) for n, s in atlas.structures.items()],
        grid=grid,
    )


def test_a_landmark_on_a_structure_cut_by_the_scan_edge_is_refused(atlas):
    from rtplan.errors import RtplanWarning

    through_hips = _scan(atlas, -60.0, 10.0)  # ends inside the femoral heads (tops at 17)
    with pytest.warns(RtplanWarning, match="FemurHead_Top_L.*cut by the scan's edge"):
        found = derive_landmarks(through_hips)
    assert "FemurHead_Top_L" not in found and "FemurHead_Top_R" not in found
    assert "PubicSymphysis_Top" in found  # the symphysis lies wholly inside the scan
    above_bifurcation = _scan(atlas, 145.0, 180.0)  # starts above the bifurcation (137)
    with pytest.warns(RtplanWarning, match="AorticBifurcation"):
        found = derive_landmarks(above_bifurcation)
    assert "AorticBifurcation" not in found


def test_user_anatomy_lists_the_landmarks_it_refused(tmp_path, atlas):
    from rtplan.atlas import atlas_from_dicom
    from rtplan.errors import RtplanWarning

    ss = _scan(atlas, -60.0, 10.0)
    z = atlas.grid.axis_coordinates_mm()[0]
    keep = (z >= -60.0) & (z <= 10.0)
    short = Atlas(
        name="short",
        grid=ss.grid,
        ct_hu=atlas.ct_hu[keep],
        structures=ss,
        landmarks={},
    )
    folder = short.export_dicom(tmp_path / "short")
    with pytest.warns(RtplanWarning, match="FemurHead_Top_L"):
        back = atlas_from_dicom(folder)
    assert "FemurHead_Top_L" not in back.landmarks
    assert "cut by the scan's edge" in back.parameters["refused_landmarks"]["FemurHead_Top_L"]
    assert "FemurHead_Top_L" in back.missing()
