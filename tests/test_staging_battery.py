"""A staging battery: lesion scenarios placed by anatomy, each with its expected miTNM.

Every scenario is a set of spherical lesions placed relative to the anatomy of the shipped
atlas (coarse 5 x 3 x 3 mm grid): beside a vessel segment, in front of the sacrum, in the
prostate bed, in a bone... and staged twice: on the atlas itself, and on the same atlas
written to DICOM (CT series + RTSTRUCT) WITHOUT its ``ProstateBed`` structure and read
back with :func:`rtplan.atlas.atlas_from_dicom` (landmarks derived from the structures,
as for any TPS structure set). Both must give the expected stage.

Sources of the expected categories (CLINICAL.md sections):

* PROMISE miTNM, Eiber et al. 2018 (V1) and Seifert et al. 2023 (V2) (3a, 3b): Tr local
  recurrence; N pelvic nodes (II, EI, OB, PS, OP), N1 one region / N2 two or more; M1a
  extrapelvic nodes (common iliac in V2 / AJCC, retroperitoneal, inguinal); M1b bone;
  M1c organs.
* RTOG 2010 prostate-bed consensus, Michalski et al. 2010 (1a): the bed from 8-12 mm
  below the vesicourethral anastomosis up to the vas deferens cut end, between the
  rectum and the bladder / symphysis (VUA, bladder neck, retrovesical space, SV bed).
* Common iliac = from the aortic bifurcation to the iliac bifurcation (vessel anatomy;
  Lawton 2009, 2a: distal common iliac in the RTOG CTV).
* miPSMA expression score 0-1 reads negative (PROMISE V2, 3c).
* Oligometastatic = at most 3 distant lesions (STOMP, ORIOLE; 4d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from phantoms import sphere_mask

from rtplan.atlas import Atlas, atlas_from_dicom
from rtplan.lesions import Lesion, Lesions
from rtplan.staging import Stage, stage
from rtplan.structures import Structure

Point = tuple[float, float, float]

#: Structures a placed node must stay out of (bone, organs, vessels, muscles).
_SOLID_PREFIXES = (
    "Bone_",
    "VB_",
    "Femur_",
    "A_",
    "V_",
    "Iliopsoas",
    "Obturator",
    "Levator",
)
_SOLID = (
    "Sacrum",
    "Coccyx",
    "PubicSymphys",
    "Bladder",
    "Rectum",
    "Canal_Anal",
    "Colon_Sigmoid",
    "PenileBulb",
    "Urethra",
)
_SRC_PROMISE = "PROMISE miTNM (Eiber 2018; Seifert 2023), CLINICAL.md 3a-3b"
_SRC_BED = "RTOG 2010 bed (Michalski 2010), CLINICAL.md 1a; PROMISE miTr, 3a"
_SRC_CI = "common iliac from the aortic to the iliac bifurcation; M1a in PROMISE V2, 3b"
_SRC_MIPSMA = "PROMISE V2 miPSMA 0-1 reads negative, CLINICAL.md 3c"
_SRC_OLIGO = "STOMP / ORIOLE <= 3 metastases, CLINICAL.md 4d"


# ---------------------------------------------------------------------------- placement
def _section(atlas: Atlas, names: tuple[str, ...], z_mm: float) -> tuple[int, np.ndarray]:
    """Slice nearest ``z_mm`` and the centroid (LPS) of ``names`` on it."""
    g = atlas.grid
    k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - z_mm)))
    m = np.zeros(g.shape[1:], bool)
    for n in names:
        m |= atlas.structures[n].mask[k]
    jj, ii = np.nonzero(m)
    assert len(jj), f"{names} have no voxel at z={z_mm}"
    return k, np.asarray(g.index_to_lps([k, jj.mean(), ii.mean()]), float)


def _solid(atlas: Atlas) -> np.ndarray:
    ss = atlas.structures
    names = [n for n in ss.names if n.startswith(_SOLID_PREFIXES) or n in _SOLID]
    return np.any([ss[n].mask for n in names], axis=0)


def _beside(
    atlas: Atlas,
    solid: np.ndarray,
    names: tuple[str, ...],
    z_mm: float,
    directions: tuple[tuple[float, float], ...],
    radius_mm: float = 4.0,
) -> Point:
    """A node centre next to ``names`` at ``z_mm``: the first direction (x, y) whose sphere
    is clear of every solid structure, searched outwards from the section's centroid."""
    _, c = _section(atlas, names, z_mm)
    for dx, dy in directions:
        u = np.array([dx, dy, 0.0]) / np.hypot(dx, dy)
        for d in np.arange(6.0, 22.0, 1.0):
            p = c + d * u
            s = sphere_mask(atlas.grid, tuple(p), radius_mm)
            if s.any() and not (s & solid).any():
                return (float(p[0]), float(p[1]), float(p[2]))
    raise AssertionError(f"no free space beside {names} at z={z_mm}")


def _between(atlas: Atlas, front: str, back: str, z_mm: float, x_mm: float = 0.0) -> Point:
    """Midway between the posterior edge of ``front`` and the anterior edge of ``back``."""
    g = atlas.grid
    k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - z_mm)))
    i = int(np.argmin(np.abs(g.axis_coordinates_mm()[2] - x_mm)))
    y = g.axis_coordinates_mm()[1]
    y_front = y[atlas.structures[front].mask[k, :, i]].max()
    y_back = y[atlas.structures[back].mask[k, :, i]].min()
    return (float(x_mm), float((y_front + y_back) / 2), float(g.axis_coordinates_mm()[0][k]))


def _deep_in(atlas: Atlas, name: str, z_mm: float | None = None) -> Point:
    """The point of ``name`` farthest from its surface (on the slice nearest ``z_mm``)."""
    from scipy import ndimage

    g = atlas.grid
    m = atlas.structures[name].mask
    if z_mm is not None:
        k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - z_mm)))
        keep = np.zeros_like(m)
        keep[k] = m[k]
        m = keep
    depth = ndimage.distance_transform_edt(m, sampling=g.spacing_mm)
    return tuple(float(v) for v in g.index_to_lps(np.unravel_index(np.argmax(depth), g.shape)))


# ---------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Spot:
    """One lesion: where (LPS mm), its radius and miPSMA score, and what it should be."""

    point: Point
    category: str
    code: str
    radius_mm: float = 4.0
    mipsma: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    spots: tuple[Spot, ...]
    stage: str  # UCLA-form patient stage
    source: str
    detailed: str | None = None
    oligo: bool | None = None
    uncertain: bool = False  # at least one lesion carries an UncertainCall
    options: dict[str, object] = field(default_factory=dict)


def _scenarios(atlas: Atlas) -> list[Scenario]:
    lm, ss = atlas.landmarks, atlas.structures
    solid = _solid(atlas)
    vua, ps, vas = lm["VUA"], lm["PubicSymphysis_Top"][2], lm["VasDeferens_CutEnd"][2]
    promontory, aortic = lm["SacralPromontory"][2], lm["AorticBifurcation"][2]
    iliac_bif = {s: ss[f"A_Iliac_{s}"].bounds_mm[2][0] + 2.5 for s in ("L", "R")}
    lateral = {"L": ((1, 0), (1, 1), (1, -1)), "R": ((-1, 0), (-1, 1), (-1, -1))}

    def spot(p: Point, cat: str, code: str, radius_mm: float = 4.0) -> Spot:
        return Spot(p, cat, code, radius_mm=radius_mm)

    tr_vua = spot((vua[0], vua[1] + 6.0, vua[2]), "Tr", "bed")
    tr_apex = spot((vua[0], vua[1] + 4.0, vua[2] - 6.0), "Tr", "bed")
    tr_neck = spot((0.0, vua[1] + 2.0, ps - 8.0), "Tr", "bed")
    tr_retrovesical = spot(_between(atlas, "Bladder", "Rectum", ps + 12.0), "Tr", "bed")
    tr_sv_bed = spot(_between(atlas, "Bladder", "Rectum", vas - 8.0), "Tr", "bed", radius_mm=3.0)
    tr_lateral = spot((12.0, vua[1] + 2.0, vua[2] + 4.0), "Tr", "bed")
    ei = {
        s: spot(_beside(atlas, solid, (f"A_Iliac_Ext_{s}", f"V_Iliac_Ext_{s}"), 60.0,
                        lateral[s]), "N1", "EI")
        for s in ("L", "R")
    }  # fmt: skip
    ii_low = {
        s: spot(_beside(atlas, solid, (f"A_Iliac_Int_{s}", f"V_Iliac_Int_{s}"), 45.0,
                        ((0, 1), *lateral[s])), "N1", "II")
        for s in ("L", "R")
    }  # fmt: skip
    # the example: internal iliac node below the iliac bifurcation but above the
    # promontory level, inside the elective CTV -> N1(II), not M1a(CI)
    ii_high = spot(
        _beside(atlas, solid, ("A_Iliac_Int_R", "V_Iliac_Int_R"), promontory + 4.0,
                ((0, 1), (-1, 1), (-1, 0))),
        "N1", "II",
    )  # fmt: skip
    obt = {s: spot(_medial_to_obturator(atlas, solid, s, ps + 5.0), "N1", "OB") for s in "LR"}
    _, s1 = _section(atlas, ("VB_S1",), promontory - 15.0)
    presacral = spot((0.0, _front_of(atlas, "VB_S1", promontory - 15.0) - 6.0,
                      float(s1[2])), "N1", "PS")  # fmt: skip
    perirectal = spot(
        _beside(atlas, solid, ("Rectum",), ps + 20.0, ((1, 0.5), (1, 0), (1, 1))), "N1", "OP"
    )
    ci_upper = spot(
        _beside(atlas, solid, ("A_Iliac_L", "V_Iliac_L"), aortic - 12.0, ((1, 0), (1, -1))),
        "M1a",
        "CI",
    )
    ci_lower = spot(
        _beside(atlas, solid, ("A_Iliac_R", "V_Iliac_R"), iliac_bif["R"] + 12.0,
                ((-1, 0), (-1, -1), (0, -1))),
        "M1a", "CI",
    )  # fmt: skip
    ci_at_bifurcation = spot(
        _beside(atlas, solid, ("A_Iliac_L",), iliac_bif["L"] + 2.0, ((1, -1), (1, 0), (0, -1))),
        "?",
        "?",
    )
    rp_aortic = spot(_beside(atlas, solid, ("A_Aorta",), aortic + 18.0, ((1, 0), (1, -1))),
                     "M1a", "RP")  # fmt: skip
    rp_caval = spot(_beside(atlas, solid, ("V_Venacava_I",), aortic + 25.0, ((-1, 0), (-1, -1))),
                    "M1a", "RP")  # fmt: skip
    fh = {s: ss[f"Femur_Head_{s}"].centroid_mm for s in ("L", "R")}
    fh_front = {s: ss[f"Femur_Head_{s}"].bounds_mm[1][0] for s in ("L", "R")}
    inguinal = {s: spot((fh[s][0], fh_front[s] - 12.0, fh[s][2]), "M1a", "OE") for s in ("L", "R")}
    bone_ilium = spot(_deep_in(atlas, "Bone_Ilium_L"), "M1b", "bone", radius_mm=5.0)
    bone_sacrum = spot(_deep_in(atlas, "VB_S1", promontory - 12.0), "M1b", "bone")
    bone_l5 = spot(_deep_in(atlas, "VB_L5"), "M1b", "bone", radius_mm=5.0)
    bone_femur = spot(_deep_in(atlas, "Femur_Head_R"), "M1b", "bone", radius_mm=5.0)
    bone_ischium = spot(_deep_in(atlas, "Bone_Ischium_R"), "M1b", "bone", radius_mm=4.0)
    top = ss["Bladder"].bounds_mm[2][1]
    bladder_dome = spot((0.0, -30.0, top - 12.0), "M1c", "other", radius_mm=5.0)
    sigmoid = spot(_deep_in(atlas, "Colon_Sigmoid", 100.0), "M1c", "other", radius_mm=4.0)

    def one(name: str, s: Spot, stage: str, src: str = _SRC_PROMISE, **kw) -> Scenario:
        return Scenario(name, (s,), stage, src, **kw)

    return [
        one("Tr at the vesicourethral anastomosis", tr_vua, "TrN0M0", _SRC_BED),
        one("Tr at the apex, below the VUA", tr_apex, "TrN0M0", _SRC_BED),
        one("Tr at the bladder neck", tr_neck, "TrN0M0", _SRC_BED),
        one("Tr in the retrovesical space", tr_retrovesical, "TrN0M0", _SRC_BED),
        one("Tr in the seminal-vesicle bed", tr_sv_bed, "TrN0M0", _SRC_BED),
        one("Tr lateral in the bed (left)", tr_lateral, "TrN0M0", _SRC_BED),
        one("external iliac node, left", ei["L"], "T0N1M0", detailed="miT0 miN1(EI) miM0"),
        one("external iliac node, right", ei["R"], "T0N1M0"),
        one("internal iliac node, left", ii_low["L"], "T0N1M0", detailed="miT0 miN1(II) miM0"),
        one("internal iliac node, right", ii_low["R"], "T0N1M0"),
        one("internal iliac node above the promontory level", ii_high, "T0N1M0", _SRC_CI),
        one("obturator node, left", obt["L"], "T0N1M0", detailed="miT0 miN1(OB) miM0"),
        one("obturator node, right", obt["R"], "T0N1M0"),
        one("presacral node at S1", presacral, "T0N1M0", detailed="miT0 miN1(PS) miM0"),
        one("perirectal node", perirectal, "T0N1M0", detailed="miT0 miN1(OP) miM0"),
        one("common iliac node, upper end", ci_upper, "T0N0M1a", _SRC_CI,
            detailed="miT0 miN0 miM1a(CI)", oligo=True),
        one("common iliac node, lower end", ci_lower, "T0N0M1a", _SRC_CI),
        one("common iliac node read as N (V1 template)", ci_upper, "T0N1M0", _SRC_CI,
            options={"common_iliac": "N"}),
        one("node at the iliac bifurcation", ci_at_bifurcation, "T0N0M1a|T0N1M0", _SRC_CI,
            uncertain=True),
        one("para-aortic node", rp_aortic, "T0N0M1a", detailed="miT0 miN0 miM1a(RP)"),
        one("paracaval node", rp_caval, "T0N0M1a"),
        one("inguinal node, left", inguinal["L"], "T0N0M1a", detailed="miT0 miN0 miM1a(OE)"),
        one("inguinal node, right", inguinal["R"], "T0N0M1a"),
        one("bone: ilium", bone_ilium, "T0N0M1b", detailed="miT0 miN0 miM1b(uni)"),
        one("bone: sacrum S1", bone_sacrum, "T0N0M1b"),
        one("bone: L5 vertebra", bone_l5, "T0N0M1b"),
        one("bone: femoral head", bone_femur, "T0N0M1b"),
        one("bone: ischium", bone_ischium, "T0N0M1b"),
        one("viscera: bladder dome", bladder_dome, "T0N0M1c"),
        one("viscera: sigmoid colon", sigmoid, "T0N0M1c"),
        Scenario("mixed: Tr and an external iliac node", (tr_vua, ei["L"]), "TrN1M0", _SRC_BED),
        Scenario("mixed: two nodal regions", (ei["L"], obt["R"]), "T0N1M0", _SRC_PROMISE,
                 detailed="miT0 miN2(EI,OB) miM0"),
        Scenario("mixed: Tr, node, bone", (tr_retrovesical, ii_low["L"], bone_ilium),
                 "TrN1M1b", _SRC_PROMISE, oligo=True),
        Scenario("oligometastatic: 3 bone lesions", (bone_ilium, bone_l5, bone_femur),
                 "T0N0M1b", _SRC_OLIGO, detailed="miT0 miN0 miM1b(oligo)", oligo=True),
        Scenario("not oligometastatic: 4 distant lesions",
                 (bone_ilium, bone_l5, bone_femur, rp_aortic), "T0N0M1b", _SRC_OLIGO,
                 oligo=False),
        Scenario("miPSMA 1 node is not counted", (Spot(ei["L"].point, "N1", "EI", mipsma=1),),
                 "T0N0M0", _SRC_MIPSMA),
        Scenario("miPSMA 2 node counts", (Spot(ei["L"].point, "N1", "EI", mipsma=2),),
                 "T0N1M0", _SRC_MIPSMA),
        Scenario("miPSMA 1 bone lesion beside a counted Tr",
                 (tr_vua, Spot(bone_ilium.point, "M1b", "bone", 5.0, mipsma=1)),
                 "TrN0M0", _SRC_MIPSMA),
    ]  # fmt: skip


def _medial_to_obturator(atlas: Atlas, solid: np.ndarray, side: str, z_mm: float) -> Point:
    """A node 7 mm medial to the obturator internus, in its posterior half (obturator fossa
    behind the bladder, above the top of the symphysis)."""
    g = atlas.grid
    k, c = _section(atlas, (f"Obturator_Int_{side}",), z_mm)
    x = g.axis_coordinates_mm()[2][atlas.structures[f"Obturator_Int_{side}"].mask[k].any(axis=0)]
    edge = x.min() if side == "L" else x.max()
    sign = -1.0 if side == "L" else 1.0
    for dy in (14.0, 10.0, 6.0, 18.0):
        p = (float(edge + sign * 7.0), float(c[1] + dy), float(c[2]))
        if not (sphere_mask(g, p, 4.0) & solid).any():
            return p
    raise AssertionError(f"no free space medial to Obturator_Int_{side}")


def _front_of(atlas: Atlas, name: str, z_mm: float) -> float:
    """The most anterior y of ``name`` near the midline on the slice nearest ``z_mm``."""
    g = atlas.grid
    k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - z_mm)))
    i = int(np.argmin(np.abs(g.axis_coordinates_mm()[2])))
    ys = g.axis_coordinates_mm()[1][atlas.structures[name].mask[k, :, i]]
    return float(ys.min())


def _lesions(atlas: Atlas, spots: tuple[Spot, ...]) -> Lesions:
    out = []
    for n, s in enumerate(spots, start=1):
        m = sphere_mask(atlas.grid, s.point, s.radius_mm)
        out.append(
            Lesion(
                id=n,
                name=f"L{n}",
                structure=Structure(f"L{n}", m, atlas.grid, role="gtv"),
                mipsma_score=s.mipsma,
            )
        )
    return Lesions(out, grid=atlas.grid)


# ---------------------------------------------------------------------------- anatomies
@pytest.fixture(scope="module")
def dicom_atlas(coarse_atlas, tmp_path_factory):
    """The coarse atlas exported to DICOM without ProstateBed and read back."""
    from rtplan.dicom_io import write_ct_series, write_rtstruct

    folder = tmp_path_factory.mktemp("battery") / "ct"
    write_ct_series(coarse_atlas.ct_hu, coarse_atlas.grid, folder, uid_seed="battery")
    kept = [coarse_atlas.structures[n] for n in coarse_atlas.structures.names]
    kept = [s for s in kept if s.name != "ProstateBed"]
    write_rtstruct(kept, folder, folder / "RS.dcm", uid_seed="battery", allow_input_folder=True)
    read = atlas_from_dicom(folder)
    assert "ProstateBed" not in read.structures
    assert "VasDeferens_CutEnd" not in read.landmarks
    return read


@pytest.fixture(scope="module")
def scenarios(coarse_atlas):
    return _scenarios(coarse_atlas)


def _check(st: Stage, sc: Scenario, where: str) -> None:
    label = f"{sc.name} on {where}: {st.detailed}; {[x.row() for x in st.lesions]}"
    assert st.string in sc.stage.split("|"), label
    if sc.detailed is not None:
        assert st.detailed == sc.detailed, label
    if sc.oligo is not None:
        assert st.oligometastatic is sc.oligo, label
    assert bool(st.uncertain) is sc.uncertain, (label, st.uncertain)
    for s, lesion in zip(sc.spots, st.lesions):
        if s.mipsma is not None and s.mipsma < 2:
            assert lesion.category == f"not counted (miPSMA {s.mipsma})", label
            continue
        if s.category == "?":
            continue
        category = "N1" if sc.options.get("common_iliac") == "N" and s.code == "CI" else s.category
        assert (lesion.category, lesion.region_code) == (category, s.code), label


def test_battery_has_at_least_30_scenarios_with_sources(scenarios):
    assert len(scenarios) >= 30
    assert all(sc.source for sc in scenarios)
    assert len({sc.name for sc in scenarios}) == len(scenarios)


@pytest.fixture(scope="module")
def on_atlas(coarse_atlas, scenarios):
    return [stage(_lesions(coarse_atlas, sc.spots), coarse_atlas, **sc.options) for sc in scenarios]


def test_battery_on_the_atlas(on_atlas, scenarios):
    for st, sc in zip(on_atlas, scenarios):
        _check(st, sc, "the atlas")


def test_battery_on_dicom_without_prostate_bed(dicom_atlas, on_atlas, scenarios):
    """The same anatomy from DICOM, without ProstateBed: the same stage for every scenario."""
    for same, sc in zip(on_atlas, scenarios):
        st = stage(_lesions(dicom_atlas, sc.spots), dicom_atlas, **sc.options)
        _check(st, sc, "DICOM without ProstateBed")
        assert (st.string, st.detailed) == (same.string, same.detailed), sc.name
