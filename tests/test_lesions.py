"""Tests for rtplan.lesions: masks, label maps, structures and PET thresholding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from phantoms import sphere_mask

from rtplan.errors import GridMismatchError, InvalidMaskError, RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.lesions import (
    Lesion,
    LesionRow,
    Lesions,
    lesions_from_mask,
    lesions_from_pet,
    lesions_from_structures,
    mipsma_score,
    suv_peak,
)
from rtplan.structures import Structure, StructureSet


def sphere_cc(r_mm: float) -> float:
    return 4.0 / 3.0 * math.pi * r_mm**3 / 1000.0


# ---------------------------------------------------------------------------- masks
@pytest.fixture
def mgrid() -> ImageGrid:
    return ImageGrid(shape=(30, 40, 40), spacing_mm=(2.0, 1.5, 1.5), origin_mm=(-20.0, 5.0, -12.0))


def test_mask_components_become_lesions(mgrid):
    a = sphere_mask(mgrid, (-5.0, 20.0, 5.0), 6.0)
    b = sphere_mask(mgrid, (25.0, 45.0, 30.0), 8.0)
    les = lesions_from_mask(a | b, mgrid)
    assert len(les) == 2 and les.names == ["L1", "L2"]
    vols = sorted(x.volume_cc for x in les)
    assert vols[0] == pytest.approx(a.sum() * mgrid.voxel_volume_cc)
    assert vols[1] == pytest.approx(b.sum() * mgrid.voxel_volume_cc)
    assert vols[0] == pytest.approx(sphere_cc(6.0), rel=0.1)
    for x in les:
        assert x.structure.role == "gtv" and x.structure.name == x.name
        assert x.suv_max is None and x.mipsma_score is None and x.category is None
    centroids = sorted(x.centroid_mm for x in les)
    assert np.allclose(centroids[0], (-5.0, 20.0, 5.0), atol=0.5)
    assert np.allclose(centroids[1], (25.0, 45.0, 30.0), atol=0.5)
    assert les["L2"] is les[1]
    assert len(les[:1]) == 1 and isinstance(les[:1], Lesions)
    table = les.table()
    assert [r["name"] for r in table] == ["L1", "L2"]
    assert set(table[0]) >= {"id", "category", "region", "volume_cc", "suv_max", "centroid_mm"}
    lm = les.label_map()
    assert set(np.unique(lm).tolist()) == {0, 1, 2}
    assert les.to_structure_set().names == ["L1", "L2"]
    assert les.total_volume_cc == pytest.approx(sum(vols))


@pytest.mark.parametrize(("connectivity", "expected"), [(6, 2), (18, 2), (26, 1)])
def test_connectivity(mgrid, connectivity, expected):
    m = np.zeros(mgrid.shape, bool)
    m[10, 10, 10] = m[11, 11, 11] = True  # corner neighbours
    assert len(lesions_from_mask(m, mgrid, connectivity=connectivity)) == expected
    m2 = np.zeros(mgrid.shape, bool)
    m2[10, 10, 10] = m2[11, 11, 10] = True  # edge neighbours
    assert len(lesions_from_mask(m2, mgrid, connectivity=connectivity)) == (
        2 if connectivity == 6 else 1
    )


def test_min_volume_and_empty(mgrid):
    m = sphere_mask(mgrid, (0.0, 20.0, 10.0), 7.0)
    m[2, 2, 2] = True
    assert len(lesions_from_mask(m, mgrid)) == 2
    kept = lesions_from_mask(m, mgrid, min_volume_cc=0.5)
    assert len(kept) == 1 and kept[0].name == "L1"
    assert len(lesions_from_mask(np.zeros(mgrid.shape, np.uint8), mgrid)) == 0


def test_label_map_each_label_one_lesion(mgrid):
    labels = np.zeros(mgrid.shape, np.int16)
    labels[sphere_mask(mgrid, (0.0, 20.0, 10.0), 5.0)] = 7
    labels[sphere_mask(mgrid, (20.0, 40.0, 25.0), 5.0)] = 3
    labels[2, 2, 2] = 7  # label 7 is two pieces but one lesion
    les = lesions_from_mask(labels, mgrid)
    assert [x.source for x in les] == ["label 3", "label 7"]
    assert les[1].structure.voxel_count == np.count_nonzero(labels == 7)
    # an integer 0/1 array is a mask: components
    assert len(lesions_from_mask((labels > 0).astype(np.uint8), mgrid)) == 3
    assert len(lesions_from_mask((labels > 0).astype(np.uint8), mgrid, kind="labels")) == 1


def test_label_map_on_other_grid_is_resampled():
    fine = ImageGrid(shape=(40, 60, 60), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(-30, -30, -20))
    target = ImageGrid(shape=(18, 28, 28), spacing_mm=(2.5, 2.2, 2.2), origin_mm=(-31, -29, -21.5))
    labels = np.zeros(fine.shape, np.int32)
    c1, c2 = (-12.0, -5.0, 0.0), (12.0, 10.0, 4.0)
    labels[sphere_mask(fine, c1, 8.0)] = 1
    labels[sphere_mask(fine, c2, 6.0)] = 2
    labels[0, 0, 0] = 5  # a one-voxel lesion that falls between target voxels
    with pytest.warns(RtplanWarning, match="vanished"):
        les = lesions_from_mask(labels, fine, target_grid=target)
    assert les.grid is target and len(les) == 2
    assert all(x.grid is target for x in les)
    assert les[0].volume_cc == pytest.approx(sphere_cc(8.0), rel=0.1)
    assert les[1].volume_cc == pytest.approx(sphere_cc(6.0), rel=0.1)
    assert np.allclose(les[0].centroid_mm, c1, atol=1.2)
    assert np.allclose(les[1].centroid_mm, c2, atol=1.2)
    # nearest neighbour equals the direct rasterisation of the resampled label map
    from rtplan.grid import resample_to_grid

    direct = resample_to_grid(labels, fine, target, order=0)
    assert np.array_equal(les[0].mask, direct == 1)


def test_bad_mask_input(mgrid):
    with pytest.raises(InvalidMaskError, match="3-D"):
        lesions_from_mask(np.zeros((4, 4), bool), mgrid)
    with pytest.raises(InvalidMaskError, match="shape"):
        lesions_from_mask(np.zeros((3, 4, 5), bool), mgrid)
    neg = np.zeros(mgrid.shape, np.int8)
    neg[1, 1, 1] = -2
    with pytest.raises(InvalidMaskError, match="negative"):
        lesions_from_mask(neg, mgrid)
    frac = np.zeros(mgrid.shape)
    frac[1, 1, 1] = 0.5
    with pytest.raises(InvalidMaskError, match="non-integer"):
        lesions_from_mask(frac, mgrid)
    two = np.zeros(mgrid.shape, np.int8)
    two[1, 1, 1] = 2
    with pytest.raises(InvalidMaskError, match="kind='labels'"):
        lesions_from_mask(two, mgrid, kind="mask")
    with pytest.raises(ValueError, match="kind must be one of"):
        lesions_from_mask(two, mgrid, kind="blobs")
    with pytest.raises(ValueError, match="connectivity must be one of"):
        lesions_from_mask(two, mgrid, connectivity=8)
    with pytest.raises(ValueError, match="min_volume_cc"):
        lesions_from_mask(two, mgrid, min_volume_cc=-1)
    with pytest.raises(GridMismatchError):
        lesions_from_mask(two > 0, mgrid, suv=np.zeros((2, 2, 2)))


def test_lesions_collection_checks(mgrid):
    m = sphere_mask(mgrid, (0.0, 20.0, 10.0), 5.0)
    s = Structure("L1", m, mgrid, role="gtv")
    a = Lesion(id=1, name="L1", structure=s)
    with pytest.raises(ValueError, match="unique"):
        Lesions([a, a])
    with pytest.raises(ValueError, match="needs a grid"):
        Lesions([])
    other = ImageGrid(shape=mgrid.shape, spacing_mm=(2.0, 1.5, 1.5), origin_mm=(0, 0, 0))
    b = Lesion(id=2, name="L2", structure=Structure("L2", m, other, role="gtv"))
    with pytest.raises(GridMismatchError):
        Lesions([a, b])
    with pytest.raises(InvalidMaskError, match="empty"):
        Lesion(id=3, name="L3", structure=Structure("x", np.zeros(mgrid.shape, bool), mgrid))
    with pytest.raises(KeyError, match="L9"):
        Lesions([a])["L9"]


def test_lesions_from_structures(mgrid):
    a = Structure("GTV_node1", sphere_mask(mgrid, (0.0, 20.0, 10.0), 5.0), mgrid, role="gtv")
    b = Structure("GTV_bone", sphere_mask(mgrid, (20.0, 40.0, 25.0), 4.0), mgrid, role="gtv")
    empty = Structure("GTV_empty", np.zeros(mgrid.shape, bool), mgrid, role="gtv")
    ss = StructureSet([a, empty, b])
    with pytest.warns(RtplanWarning, match="GTV_empty"):
        les = lesions_from_structures(ss)
    assert les.names == ["L1", "L2"]
    assert [x.source for x in les] == ["ROI 'GTV_node1'", "ROI 'GTV_bone'"]
    assert les[0].volume_cc == pytest.approx(a.volume_cc)
    only = lesions_from_structures([a, b], names=["GTV_bone"])
    assert len(only) == 1 and only[0].volume_cc == pytest.approx(b.volume_cc)
    only_ss = lesions_from_structures(ss, names=["gtv_bone"])
    assert only_ss[0].source == "ROI 'GTV_bone'"
    with pytest.raises(KeyError, match="nope"):
        lesions_from_structures([a, b], names=["nope"])


# ---------------------------------------------------------------------------- PET phantom
BG = 0.5
R0 = 14.0  # mm, support of the parabolic lesion profile
# (centre (x, y, z) mm, amplitude A): SUV = BG + A (1 - r^2 / R0^2) inside R0
PET_LESIONS = [
    ((-30.0, -30.0, -20.0), 8.0),
    ((30.0, -30.0, 20.0), 15.0),
    ((-30.0, 30.0, 20.0), 25.0),
    ((30.0, 30.0, -20.0), 11.0),
]
LIVER_SUV = 2.5
BLOOD_SUV = 1.5
BLADDER_SUV = 40.0


def radius_at(threshold: float, amplitude: float) -> float:
    """Radius where the parabolic profile crosses ``threshold``."""
    return R0 * math.sqrt(1.0 - (threshold - BG) / amplitude)


@pytest.fixture(scope="module")
def pet():
    grid = ImageGrid(shape=(64, 64, 64), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(-64, -64, -64))
    z, y, x = grid.axis_coordinates_mm()
    suv = np.full(grid.shape, BG)
    for (cx, cy, cz), amp in PET_LESIONS:
        r2 = (
            (z[:, None, None] - cz) ** 2
            + (y[None, :, None] - cy) ** 2
            + (x[None, None, :] - cx) ** 2
        )
        inside = r2 < R0**2
        suv[inside] += amp * (1.0 - r2[inside] / R0**2)

    def box(lo, hi):
        return (
            ((z >= lo[2]) & (z <= hi[2]))[:, None, None]
            & ((y >= lo[1]) & (y <= hi[1]))[None, :, None]
            & ((x >= lo[0]) & (x <= hi[0]))[None, None, :]
        )

    bladder = box((-15, -15, -62), (15, 15, -46))
    liver = box((-40, -40, 46), (40, 40, 60))
    blood = box((-6, -6, -6), (6, 6, 6))
    suv[bladder] = BLADDER_SUV
    suv[liver] = LIVER_SUV
    suv[blood] = BLOOD_SUV
    return grid, suv, {"bladder": bladder, "liver": liver, "blood": blood}


def match(les, grid, which=None):
    """Map each phantom lesion index to the recovered lesion containing its centre."""
    out = {}
    for n, (c, _) in enumerate(PET_LESIONS):
        if which is not None and n not in which:
            continue
        k = tuple(grid.lps_to_nearest_index(c))
        hits = [x for x in les if x.mask[k]]
        assert len(hits) == 1, f"phantom lesion {n} not recovered"
        out[n] = hits[0]
    return out


def test_pet_fixed_threshold(pet):
    grid, suv, regions = pet
    thr = 3.0
    les = lesions_from_pet(suv, grid, method="fixed", threshold_suv=thr, exclude=regions["bladder"])
    assert len(les) == len(PET_LESIONS)
    for n, x in match(les, grid).items():
        amp = PET_LESIONS[n][1]
        assert x.volume_cc == pytest.approx(sphere_cc(radius_at(thr, amp)), rel=0.1)
        assert x.suv_max == pytest.approx(BG + amp)
        assert x.source.startswith("PET fixed")
    # ordered by decreasing SUVmax
    assert [x.suv_max for x in les] == sorted((x.suv_max for x in les), reverse=True)
    # the bladder is found as a lesion unless excluded
    assert (
        len(lesions_from_pet(suv, grid, method="fixed", threshold_suv=thr)) == len(PET_LESIONS) + 1
    )


@pytest.mark.parametrize("percent", [41.0, 50.0])
def test_pet_percent_of_suvmax(pet, percent):
    grid, suv, regions = pet
    les = lesions_from_pet(
        suv, grid, method="percent_max", percent=percent, exclude=regions["bladder"]
    )
    assert len(les) == len(PET_LESIONS)
    for n, x in match(les, grid).items():
        amp = PET_LESIONS[n][1]
        expected = sphere_cc(radius_at(percent / 100.0 * (BG + amp), amp))
        assert expected > 1.0
        assert x.volume_cc == pytest.approx(expected, rel=0.1)
        assert not x.notes


def test_pet_percent_grows_below_the_floor(pet):
    """The per-lesion threshold may lie below the candidate floor; the lesion grows to it."""
    grid, suv, regions = pet
    les = lesions_from_pet(
        suv, grid, method="percent_max", percent=25.0, floor_suv=8.0, exclude=regions["bladder"]
    )
    hot = match(les, grid)
    amp = PET_LESIONS[2][1]  # SUVmax 25.5: 25 % threshold 6.4 < floor 8
    assert hot[2].volume_cc == pytest.approx(sphere_cc(radius_at(0.25 * (BG + amp), amp)), rel=0.1)


def test_pet_percent_neighbourhood_limit(pet):
    grid, suv, regions = pet
    kw = {
        "method": "percent_max",
        "percent": 15.0,
        "floor_suv": 10.0,
        "exclude": regions["bladder"],
    }
    full = match(lesions_from_pet(suv, grid, **kw), grid, [2])[2]
    amp = PET_LESIONS[2][1]
    assert full.volume_cc == pytest.approx(sphere_cc(radius_at(0.15 * (BG + amp), amp)), rel=0.1)
    assert not full.notes
    # candidate radius 11 mm, 15 % radius 13 mm: a 1 mm neighbourhood cuts the lesion
    cut = match(lesions_from_pet(suv, grid, neighbourhood_mm=1.0, **kw), grid, [2])[2]
    assert cut.volume_cc < 0.9 * full.volume_cc
    assert any("neighbourhood limit" in note for note in cut.notes)


def test_pet_reference_threshold_and_mipsma(pet):
    grid, suv, regions = pet
    refs = {"liver": regions["liver"], "blood_pool": regions["blood"]}
    factor = 1.6
    les = lesions_from_pet(
        suv,
        grid,
        method="reference",
        references=refs,
        reference="liver",
        reference_factor=factor,
        exclude=regions["bladder"],
    )
    assert len(les) == len(PET_LESIONS)
    thr = factor * LIVER_SUV
    for n, x in match(les, grid).items():
        amp = PET_LESIONS[n][1]
        assert x.volume_cc == pytest.approx(sphere_cc(radius_at(thr, amp)), rel=0.1)
        # every lesion is above the liver and there is no parotid reference: score 2, capped
        assert x.mipsma_score == 2
        assert any("at least 2" in note for note in x.notes)
    with pytest.raises(ValueError, match="references\\['parotid'\\]"):
        lesions_from_pet(suv, grid, method="reference", references=refs, reference="parotid")
    # a parotid reference given as a number decides 2 vs 3
    refs3 = {**refs, "parotid": 12.0}
    les3 = lesions_from_pet(suv, grid, method="fixed", references=refs3, exclude=regions["bladder"])
    for x in les3:
        assert x.mipsma_score == (3 if x.suv_max > 12.0 else 2)


def test_pet_seeds_and_search_region(pet):
    grid, suv, regions = pet
    seeds = [PET_LESIONS[0][0], (PET_LESIONS[3][0][0] + 3.0, *PET_LESIONS[3][0][1:])]
    les = lesions_from_pet(suv, grid, method="fixed", seeds_mm=seeds)
    assert len(les) == 2
    got = sorted(round(x.suv_max, 3) for x in les)
    assert got == sorted([BG + PET_LESIONS[0][1], BG + PET_LESIONS[3][1]])
    with pytest.warns(RtplanWarning, match="no lesion within"):
        lesions_from_pet(suv, grid, method="fixed", seeds_mm=[(0.0, -60.0, 0.0)])
    x = grid.axis_coordinates_mm()[2]
    left = np.broadcast_to((x > 0)[None, None, :], grid.shape)
    les_left = lesions_from_pet(
        suv, grid, method="percent_max", search_region=left, exclude=regions["bladder"]
    )
    assert len(les_left) == 2
    assert all(x.centroid_mm[0] > 0 for x in les_left)


def test_pet_suv_stats(pet):
    grid, suv, regions = pet
    les = lesions_from_pet(suv, grid, method="fixed", exclude=regions["bladder"])
    x = match(les, grid)[2]
    amp = PET_LESIONS[2][1]
    # SUVpeak: mean of the parabolic profile over a 1 cc ball at the centre
    a = (3 * 1000.0 / (4 * math.pi)) ** (1 / 3)
    expected_peak = BG + amp * (1 - 0.6 * a**2 / R0**2)
    assert x.suv_peak == pytest.approx(expected_peak, rel=0.03)
    assert x.suv_mean < x.suv_peak < x.suv_max
    values = suv[x.mask]
    assert x.suv_mean == pytest.approx(values.mean())


def test_pet_on_other_target_grid(pet):
    grid, suv, regions = pet
    target = ImageGrid(shape=(40, 45, 45), spacing_mm=(3.0, 2.5, 2.5), origin_mm=(-58, -57, -61))
    les = lesions_from_pet(
        suv, grid, method="fixed", exclude=regions["bladder"], target_grid=target
    )
    assert les.grid is target and len(les) == 4
    native = lesions_from_pet(suv, grid, method="fixed", exclude=regions["bladder"])
    for a, b in zip(les, native):
        assert a.suv_max == b.suv_max  # statistics from the PET grid
        assert a.volume_cc == pytest.approx(b.volume_cc, rel=0.1)


def test_suv_peak_uniform_and_edge():
    g = ImageGrid(shape=(12, 12, 12), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0, 0, 0))
    suv = np.full(g.shape, 4.0)
    m = np.zeros(g.shape, bool)
    m[0, 0, 0] = True  # at the grid corner: only in-grid voxels count
    assert suv_peak(suv, m, g) == pytest.approx(4.0)
    suv[0, 0, 0] = 100.0
    peak = suv_peak(suv, m, g)
    assert 4.0 < peak < 100.0
    with pytest.raises(InvalidMaskError):
        suv_peak(suv, np.zeros(g.shape, bool), g)


@pytest.mark.parametrize(
    ("suv_max", "refs", "expected"),
    [
        (1.0, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0}, 0),
        (1.5, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0}, 0),
        (3.0, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0}, 1),
        (5.0, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0}, 1),
        (8.0, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0}, 2),
        (20.0, {"blood_pool": 1.5, "liver": 5.0, "parotid": 12.0}, 3),
        (3.0, {"liver": 5.0}, None),  # 0 or 1: no blood pool
        (8.0, {"liver": 5.0}, 2),
        (8.0, {"parotid": 12.0}, None),
        (1.0, {"blood_pool": 1.5}, 0),
    ],
)
def test_mipsma_score_table(suv_max, refs, expected):
    assert mipsma_score(suv_max, refs)[0] == expected


def test_bad_pet_input(pet):
    grid, suv, regions = pet
    with pytest.raises(ValueError, match="method must be one of 'fixed', 'percent_max'"):
        lesions_from_pet(suv, grid, method="otsu")
    for p in (0.0, 100.0, -5.0):
        with pytest.raises(ValueError, match="percent"):
            lesions_from_pet(suv, grid, method="percent_max", percent=p)
    with pytest.raises(ValueError, match="threshold_suv"):
        lesions_from_pet(suv, grid, method="fixed", threshold_suv=0.0)
    with pytest.raises(ValueError, match="reference"):
        lesions_from_pet(suv, grid, method="reference")
    with pytest.raises(GridMismatchError):
        lesions_from_pet(suv[:-1], grid)
    with pytest.raises(InvalidMaskError, match="exclude"):
        lesions_from_pet(suv, grid, exclude=np.zeros((3, 3, 3), bool))
    with pytest.raises(ValueError, match="reference region name"):
        lesions_from_pet(suv, grid, references={"kidney": regions["liver"]})
    bad = suv.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lesions_from_pet(bad, grid)


# ---------------------------------------------------------------------------- argument checks
def test_builders_refuse_a_grid_that_is_not_an_image_grid(mgrid, pet):
    m = sphere_mask(mgrid, (0.0, 20.0, 10.0), 5.0)
    with pytest.raises(TypeError, match="grid"):
        lesions_from_mask(m, mgrid.shape)
    with pytest.raises(TypeError, match="target_grid"):
        lesions_from_mask(m, mgrid, target_grid="atlas")
    with pytest.raises(TypeError, match="suv_grid"):
        lesions_from_mask(m, mgrid, suv=np.ones(mgrid.shape), suv_grid=mgrid.shape)
    with pytest.raises(TypeError, match="grid"):
        suv_peak(np.ones(mgrid.shape), m, None)
    with pytest.raises(TypeError, match="grid"):
        Lesions([], grid="atlas")
    grid, suv, _ = pet
    with pytest.raises(TypeError, match="grid"):
        lesions_from_pet(suv, "pet")
    with pytest.raises(TypeError, match="target_grid"):
        lesions_from_pet(suv, grid, target_grid=grid.shape)


def test_structures_and_references_of_the_wrong_type_are_refused(mgrid, pet):
    with pytest.raises(TypeError, match="structures"):
        lesions_from_structures("GTV_node1")
    s = Structure("GTV_node1", sphere_mask(mgrid, (0.0, 20.0, 10.0), 5.0), mgrid, role="gtv")
    with pytest.raises(TypeError, match="structures"):
        lesions_from_structures(s)
    grid, suv, regions = pet
    with pytest.raises(TypeError, match="references"):
        lesions_from_pet(suv, grid, references=[regions["liver"]])


def test_lesion_fields_and_staging_fields_are_checked(mgrid):
    s = Structure("L1", sphere_mask(mgrid, (0.0, 20.0, 10.0), 5.0), mgrid, role="gtv")
    with pytest.raises(TypeError, match="id"):
        Lesion(id="1", name="L1", structure=s)
    with pytest.raises(TypeError, match="name"):
        Lesion(id=1, name=1, structure=s)
    lesion = Lesion(id=1, name="L1", structure=s)
    staged = lesion.with_staging(category="N1", region="external iliac", notes=("x",))
    assert (staged.category, staged.region, staged.notes, staged.id) == (
        "N1",
        "external iliac",
        ("x",),
        1,
    )
    with pytest.raises(TypeError, match="id"):
        lesion.with_staging(id=5)
    assert set(staged.row()) == set(LesionRow.__annotations__)


def test_pet_lesions_are_checked_against_the_body_or_search_region(mgrid):
    hot = np.full(mgrid.shape, 6.0)
    region = np.zeros(mgrid.shape, bool)
    region[5:25, 5:35, 5:35] = True
    with pytest.raises(InvalidMaskError, match=r"100 % of the search region"):
        lesions_from_pet(hot, mgrid, method="fixed", threshold_suv=4.0, search_region=region)
    with pytest.raises(InvalidMaskError, match=r"% of the Body"):
        lesions_from_pet(hot, mgrid, method="fixed", threshold_suv=4.0, body=region)


def test_lesion_partly_outside_the_body_is_kept(mgrid):
    body = np.zeros(mgrid.shape, bool)
    body[:, :, :20] = True
    lesion = np.zeros(mgrid.shape, bool)
    lesion[10:14, 10:14, 17:22] = True  # 3 of its 5 columns inside
    (kept,) = lesions_from_mask(lesion, mgrid, body=body)
    assert kept.volume_cc == pytest.approx(lesion.sum() * mgrid.voxel_volume_cc)
    with pytest.raises(InvalidMaskError, match="empty"):
        lesions_from_mask(lesion, mgrid, body=np.zeros(mgrid.shape, bool))
