import numpy as np
import pytest
from phantoms import aniso_grid, box_mask, random_box_or_sphere, sphere_mask

from rtplan.errors import GridMismatchError, InvalidMaskError, MissingStructureError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet, canonical_name


@pytest.mark.parametrize(
    "spelling, tg263",
    [
        ("bladder", "Bladder"),
        ("BLADDER", "Bladder"),
        ("Urinary Bladder", "Bladder"),
        ("Femoral Head L", "Femur_Head_L"),
        ("femur_left", "Femur_Head_L"),
        ("Femoral-Head-R", "Femur_Head_R"),
        ("iliac_artery_left", "A_Iliac_L"),
        ("iliac_vena_right", "V_Iliac_R"),
        ("bowel bag", "Spc_Bowel"),
        ("Penile Bulb", "PenileBulb"),
    ],
)
def test_synonyms_map_to_tg263(spelling, tg263):
    assert canonical_name(spelling) == tg263


def test_unknown_names_are_not_guessed():
    assert canonical_name("Liver metastasis 3") is None
    assert canonical_name("") is None


def test_structure_volume_centroid_and_extent_of_a_box():
    g = aniso_grid()
    lo, hi = (-10.0, 10.0, -20.0), (-1.0, 20.0, 0.0)
    m = box_mask(g, lo, hi)
    s = Structure("Box", m, g)
    assert s.volume_cc == pytest.approx(m.sum() * 2.5 * 0.98 * 0.98 / 1000)
    idx = np.argwhere(m).mean(axis=0)
    np.testing.assert_allclose(s.centroid_mm, g.index_to_lps(idx))
    # extent: voxel count along each axis times spacing
    k, j, i = (np.flatnonzero(m.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    assert s.extent_mm == pytest.approx((len(i) * 0.98, len(j) * 0.98, len(k) * 2.5))
    (x0, x1), _, _ = s.bounds_mm
    assert x0 <= lo[0] + 0.98 and x1 >= hi[0] - 0.98


def test_structure_stores_the_cropped_mask_and_rebuilds_the_full_one():
    g = aniso_grid()
    m = sphere_mask(g, g.center_mm, 6.0)
    s = Structure("GTVn1", m, g, role="gtv")
    assert np.array_equal(s.mask, m)
    assert s.cropped_mask.size < m.size / 10
    assert not s.cropped_mask.flags.writeable
    m[:] = False  # changing the input does not change the structure
    assert s.voxel_count > 0
    assert s.interpreted_type == "GTV"
    with pytest.raises(AttributeError):
        s.name = "x"


def test_empty_structure():
    g = aniso_grid()
    s = Structure("Empty", np.zeros(g.shape, bool), g)
    assert s.is_empty and s.volume_cc == 0.0 and s.bbox is None
    assert np.isnan(s.centroid_mm).all()
    assert not s.mask.any()


def test_structure_refuses_bad_input():
    g = aniso_grid()
    with pytest.raises(InvalidMaskError, match="shape"):
        Structure("A", np.zeros((2, 2, 2), bool), g)
    with pytest.raises(InvalidMaskError, match="0 and 1"):
        Structure("A", np.full(g.shape, 0.5), g)
    with pytest.raises(ValueError, match="role"):
        Structure("A", np.zeros(g.shape, bool), g, role="tumour")
    ones = np.zeros(g.shape, np.uint8)
    ones[1, 1, 1] = 1
    assert Structure("A", ones, g).voxel_count == 1


def test_structure_set_lookup_order_and_missing():
    g = aniso_grid()
    m = sphere_mask(g, g.center_mm, 5.0)
    ss = StructureSet(
        [Structure("Bladder", m, g), Structure("Femur_Head_L", m, g), Structure("GTV_1", m, g)]
    )
    assert ss.names == ["Bladder", "Femur_Head_L", "GTV_1"]
    assert ss["urinary bladder"].name == "Bladder"
    assert ss["BLADDER"].name == "Bladder"
    assert ss["femur_left"].name == "Femur_Head_L"
    assert ss["gtv 1"].name == "GTV_1"
    assert "Rectum" not in ss
    with pytest.raises(MissingStructureError, match="Rectum"):
        ss["Rectum"]
    with pytest.raises(MissingStructureError, match="Rectum, PenileBulb"):
        ss.require(["Bladder", "Rectum", "PenileBulb"], purpose="the prostate-bed CTV")
    with pytest.raises(ValueError, match="already"):
        ss.add(Structure("bladder", m, g))
    ss.add(Structure("bladder", m & False, g), replace=True)
    assert ss["Bladder"].is_empty


def test_structure_set_refuses_another_grid():
    g = aniso_grid()
    other = ImageGrid(shape=g.shape, spacing_mm=g.spacing_mm, origin_mm=(0, 0, 0))
    ss = StructureSet([Structure("A", np.zeros(g.shape, bool), g)])
    with pytest.raises(GridMismatchError):
        ss.add(Structure("B", np.zeros(g.shape, bool), other))


def test_from_cropped_equals_the_full_mask_construction():
    g = aniso_grid()
    m = sphere_mask(g, g.center_mm, 6.0)
    k, j, i = (np.flatnonzero(m.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box = (slice(k[0] - 1, k[-1] + 2), slice(j[0] - 2, j[-1] + 1), slice(i[0], i[-1] + 3))
    s = Structure.from_cropped("S", m[box], (box[0].start, box[1].start, box[2].start), g)
    ref = Structure("S", m, g)
    assert s.bbox == ref.bbox
    assert np.array_equal(s.mask, m)
    assert s.grid is g and s.volume_cc == ref.volume_cc
    empty = Structure.from_cropped("E", np.zeros((2, 2, 2), bool), (0, 0, 0), g)
    assert empty.is_empty
    with pytest.raises(InvalidMaskError, match="does not fit"):
        Structure.from_cropped("X", np.ones((3, 3, 3), bool), (g.shape[0] - 1, 0, 0), g)


def test_structure_pickles_for_multiprocessing():
    import pickle

    g = aniso_grid()
    s = Structure("CTVsb_6660", sphere_mask(g, g.center_mm, 6.0), g, role="ctv")
    t = pickle.loads(pickle.dumps(s))
    assert t.name == s.name and t.role == "ctv" and t.grid == g
    assert np.array_equal(t.mask, s.mask)


# ------------------------------------------------------------------ argument checks


def test_structure_needs_an_image_grid():
    g = aniso_grid()
    with pytest.raises(TypeError, match="grid of structure 'A'"):
        Structure("A", np.zeros(g.shape, bool), g.shape)
    with pytest.raises(TypeError, match="grid of structure 'A'"):
        Structure.from_cropped("A", np.ones((1, 1, 1), bool), (0, 0, 0), "grid")


def test_structure_color_must_be_numbers():
    g = aniso_grid()
    with pytest.raises(TypeError, match="color"):
        Structure("A", np.zeros(g.shape, bool), g, color="red")
    with pytest.raises(ValueError, match="color"):
        Structure("A", np.zeros(g.shape, bool), g, color=(0, 0, 300))
    assert Structure("A", np.zeros(g.shape, bool), g, color=[1, 2, 3]).color == (1, 2, 3)


def test_structure_set_holds_structures_on_an_image_grid():
    g = aniso_grid()
    s = Structure("A", np.zeros(g.shape, bool), g)
    with pytest.raises(TypeError, match=r"structures\[1\]"):
        StructureSet([s, "B"])
    with pytest.raises(TypeError, match="grid"):
        StructureSet(grid=g.shape)
    with pytest.raises(TypeError, match="structure"):
        StructureSet([s]).add("B")
    assert StructureSet([s]).grid is g
    assert StructureSet(grid=g).names == []


def test_names_are_strings():
    g = aniso_grid()
    ss = StructureSet([Structure("Bladder", np.zeros(g.shape, bool), g)])
    with pytest.raises(TypeError, match="name"):
        canonical_name(3)
    with pytest.raises(TypeError, match="name"):
        ss[3]
    # a single name is not a list of names (it used to be read letter by letter)
    with pytest.raises(TypeError, match="names"):
        ss.require("Bladder")
    with pytest.raises(TypeError, match="names"):
        ss.select("Bladder")
    assert ss.select(["bladder"]).names == ["Bladder"]


def test_by_role_refuses_an_unknown_role():
    g = aniso_grid()
    ss = StructureSet([Structure("GTV", np.zeros(g.shape, bool), g, role="gtv")])
    assert [s.name for s in ss.by_role("gtv")] == ["GTV"]
    with pytest.raises(ValueError, match="role"):
        ss.by_role("tumour")


# ------------------------------------------------------------------ issue 14: names and marks
@pytest.mark.parametrize(
    "spelling, tg263",
    [
        # Eclipse / RayStation / Monaco / Pinnacle style spellings (docs/completion.md)
        ("Femoral Head Lt", "Femur_Head_L"),
        ("Femoral Head Rt", "Femur_Head_R"),
        ("FemoralHead_L", "Femur_Head_L"),
        ("Fem_Head_R", "Femur_Head_R"),
        ("LT FEMORAL HEAD", "Femur_Head_L"),
        ("Femur_Head_(R)", "Femur_Head_R"),
        ("FemHead_Lt", "Femur_Head_L"),
        ("BowelBag", "Spc_Bowel"),
        ("Bowel_Bag", "Spc_Bowel"),
        ("Bowel_Small", "Bowel_Small"),
        ("SmallBowel", "Bowel_Small"),
        ("Bowel Loops", "Bowel"),
        ("PenileBulb", "PenileBulb"),
        ("Bulb_Penis", "PenileBulb"),
        ("Rectum_wall", "Rectal_Wall"),
        ("Bladder_Wall", "Bladder_Wall"),
        ("BODY", "Body"),
        ("External", "Body"),
        ("Patient Outline", "Body"),
        ("AnalCanal", "Canal_Anal"),
        ("SigmoidColon", "Colon_Sigmoid"),
        ("Ext Iliac A Lt", "A_Iliac_Ext_L"),
        ("Int_Iliac_V_Rt", "V_Iliac_Int_R"),
        ("PubicSymphysis", "PubicSymphys"),
    ],
)
def test_vendor_spellings_map_to_tg263(spelling, tg263):
    assert canonical_name(spelling) == tg263


@pytest.mark.parametrize("spelling", ["Rectum_wall", "Rectal Wall", "Bladder_Wall", "Rectum_PRV"])
def test_a_wall_or_prv_is_not_the_organ(spelling):
    """A wall (or a PRV) is a different structure: never mapped to the whole organ."""
    assert canonical_name(spelling) not in ("Rectum", "Bladder")


def test_laterality_words_do_not_invent_structures():
    assert canonical_name("Lt") is None
    assert canonical_name("Left") is None
    assert canonical_name("Liver Lt") is None  # no left-sided liver in TG-263


def test_a_structure_says_whether_it_was_derived():
    g = aniso_grid()
    m = sphere_mask(g, g.center_mm, 6.0)
    given = Structure("Sacrum", m, g)
    assert not given.derived and given.derivation == ""
    derived = Structure("Sacrum", m, g, derivation="bone from CT HU, labelled by atlas")
    assert derived.derived and derived.derivation.startswith("bone from CT")
    assert derived.renamed("VB_S1").derivation == derived.derivation
    assert Structure.from_cropped("S", m[:2], (0, 0, 0), g, derivation="x").derived
    import pickle

    assert pickle.loads(pickle.dumps(derived)).derivation == derived.derivation
    with pytest.raises(TypeError, match="derivation"):
        Structure("Sacrum", m, g, derivation=True)


def test_tg263_exclamation_and_caret_names_are_distinct_structures():
    """``PTV!sb_6660`` (higher-dose PTVs removed) is not ``PTVsb_6660``; ``^`` counts too."""
    g = aniso_grid()
    a = Structure("PTVsb_6660", sphere_mask(g, g.center_mm, 8.0), g, role="ptv")
    b = Structure("PTV!sb_6660", sphere_mask(g, g.center_mm, 5.0), g, role="ptv")
    c = Structure("PTVsb_6660^Dr1", sphere_mask(g, g.center_mm, 4.0), g, role="ptv")
    ss = StructureSet([a, b, c])
    assert ss.names == ["PTVsb_6660", "PTV!sb_6660", "PTVsb_6660^Dr1"]
    assert ss["ptv!sb_6660"] is b and ss["PTV_sb_6660"] is a and ss["ptvsb6660^dr1"] is c


def test_shared_voxel_count_is_the_count_of_common_voxels():
    """Spheres and boxes, some cut by the grid's edge, some apart: the count of voxels in
    both masks; none with an empty structure; another grid refused."""
    g = ImageGrid(shape=(20, 30, 30), spacing_mm=(2.0, 1.5, 1.5), origin_mm=(0.0, 0.0, 0.0))
    rng = np.random.default_rng(3)
    for _ in range(30):
        masks = [
            random_box_or_sphere(
                g, rng, corner_mm=(-5, 45), size_mm=(1, 25), centre_mm=(-5, 45), radius_mm=(1, 15)
            )
            for _ in range(2)
        ]
        a, b = Structure("A", masks[0], g), Structure("B", masks[1], g)
        assert a.shared_voxel_count(b) == int((masks[0] & masks[1]).sum())
        assert b.shared_voxel_count(a) == a.shared_voxel_count(b)
    empty = Structure("E", np.zeros(g.shape, bool), g)
    full = Structure("F", np.ones(g.shape, bool), g)
    assert empty.shared_voxel_count(full) == 0 and full.shared_voxel_count(full) == full.voxel_count
    other = ImageGrid(shape=g.shape, spacing_mm=g.spacing_mm, origin_mm=(0.5, 0.0, 0.0))
    with pytest.raises(GridMismatchError, match="different grids"):
        full.shared_voxel_count(Structure("O", np.ones(g.shape, bool), other))
