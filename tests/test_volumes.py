"""Tests of rtplan.volumes: CTV borders, distances, crops, PTVs, options."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from rtplan.errors import GeometryError, MissingStructureError, ProtocolError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesion, Lesions
from rtplan.plan import FieldOption
from rtplan.protocol import load_protocol
from rtplan.staging import Stage
from rtplan.structures import Structure, StructureSet
from rtplan.volumes import (
    DISCLAIMER,
    OptionSpec,
    boost_volumes,
    build_option,
    build_options,
    ctv_pelvic_nodes,
    ctv_prostate_bed,
    landmark_z_mm,
    option_volume_table,
    ptv_from_ctv,
    suggest_options,
    target_overlaps,
)

# ---------------------------------------------------------------------------- phantom
# A coarse box-and-tube male pelvis (LPS mm: +x left, +y posterior, +z superior). The
# numbers are geometry for the tests, not anatomy to rely on.
SPACING = (3.0, 2.5, 2.5)
PS_TOP = 0.0
PUBIS_POST_Y = -45.0
RECTUM_FRONT_Y = 10.0
VUA = (0.0, -20.0, -15.0)
VAS_END_Z = 33.0
L5S1 = 97.5
L4L5 = 127.5
LEVATOR_X = 22.0


def _grid() -> ImageGrid:
    return ImageGrid(shape=(67, 81, 97), spacing_mm=SPACING, origin_mm=(-120.0, -100.0, -51.0))


def _coords(grid):
    z, y, x = grid.axis_coordinates_mm()
    return z[:, None, None], y[None, :, None], x[None, None, :]


def _box(grid, x, y, z):
    Z, Y, X = _coords(grid)
    return (X >= x[0]) & (X <= x[1]) & (Y >= y[0]) & (Y <= y[1]) & (Z >= z[0]) & (Z <= z[1])


def _ellipsoid(grid, c, r):
    Z, Y, X = _coords(grid)
    return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1


def _tube(grid, z_range, x_of_z, y_of_z, radius):
    Z, Y, X = _coords(grid)
    z = Z[:, 0, 0]
    out = np.zeros(grid.shape, bool)
    for k, zz in enumerate(z):
        if z_range[0] <= zz <= z_range[1]:
            out[k] = (X[0] - x_of_z(zz)) ** 2 + (Y[0] - y_of_z(zz)) ** 2 <= radius**2
    return out


def _lin(z0, v0, z1, v1):
    return lambda z: v0 + (z - z0) * (v1 - v0) / (z1 - z0)


def make_phantom(landmarks: dict | None = None) -> SimpleNamespace:
    g = _grid()
    m: dict[str, np.ndarray] = {}
    Z, Y, X = _coords(g)
    m["Body"] = ((X / 150) ** 2 + ((Y - 5) / 100) ** 2 <= 1) & (Z > -1e9)
    m["PubicSymphys"] = _box(g, (-15, 15), (-60, PUBIS_POST_Y), (-40, PS_TOP))
    m["Bladder"] = _ellipsoid(g, (0, -30, 25), (35, 25, 24))
    m["Rectum"] = _tube(g, (-48, 60), lambda z: 0.0, lambda z: 25.0, 15.0)
    m["Levator_Ani"] = _box(g, (LEVATOR_X, 30), (-40, 40), (-50, -1)) | _box(
        g, (-30, -LEVATOR_X), (-40, 40), (-50, -1)
    )
    for s, sign in (("L", 1), ("R", -1)):
        xs = sorted((sign * 45, sign * 55))
        m[f"Obturator_Int_{s}"] = _box(g, xs, (-50, 10), (-30, 40))
        m[f"Femur_Head_{s}"] = _ellipsoid(g, (sign * 90, -10, -5), (20, 20, 20))
        m[f"Bone_Ilium_{s}"] = _box(g, sorted((sign * 72, sign * 95)), (-20, 50), (20, 100))
        m[f"Iliopsoas_{s}"] = _box(g, sorted((sign * 50, sign * 68)), (0, 40), (60, 140))
        m[f"A_Iliac_{s}"] = _tube(
            g, (95, 128), _lin(128, sign * 8, 95, sign * 35), _lin(128, 20, 95, 20), 5
        )
        m[f"V_Iliac_{s}"] = _tube(
            g, (95, 128), _lin(128, sign * 5, 95, sign * 28), _lin(128, 32, 95, 32), 5
        )
        m[f"A_Iliac_Ext_{s}"] = _tube(
            g, (5, 95), _lin(95, sign * 35, 5, sign * 52), _lin(95, 20, 5, -30), 4
        )
        m[f"V_Iliac_Ext_{s}"] = _tube(
            g, (5, 95), _lin(95, sign * 28, 5, sign * 45), _lin(95, 30, 5, -22), 5
        )
        m[f"A_Iliac_Int_{s}"] = _tube(
            g, (30, 95), _lin(95, sign * 35, 30, sign * 40), _lin(95, 20, 30, 45), 3
        )
        m[f"V_Iliac_Int_{s}"] = _tube(
            g, (30, 95), _lin(95, sign * 28, 30, sign * 36), _lin(95, 30, 30, 52), 4
        )
    m["VB_S1"] = _box(g, (-25, 25), (50, 75), (70, 95))
    m["VB_S2"] = _box(g, (-22, 22), (55, 80), (46, 69))
    m["VB_S3"] = _box(g, (-18, 18), (60, 85), (25, 45))
    m["VB_L5"] = _box(g, (-25, 25), (45, 70), (100, 125))
    m["VB_L4"] = _box(g, (-25, 25), (42, 67), (130, 145))
    m["Spc_Bowel"] = _box(g, (-40, 40), (-75, -12), (62, 145))
    m["Colon_Sigmoid"] = _tube(g, (61, 80), lambda z: -10.0, lambda z: 20.0, 10)
    m["PenileBulb"] = _ellipsoid(g, (0, -30, -45), (10, 10, 6))
    structures = StructureSet(
        [Structure(n, a, g, role="external" if n == "Body" else "organ") for n, a in m.items()],
        grid=g,
    )
    lm = {
        "PubicSymphysis_Top": (0.0, -50.0, PS_TOP),
        "VUA": VUA,
        "VasDeferens_CutEnd": (0.0, 0.0, VAS_END_Z),
        "L5S1_Interspace": (0.0, 60.0, L5S1),
        "L4L5_Interspace": (0.0, 60.0, L4L5),
        "FemurHead_Top_L": (90.0, -10.0, 15.0),
        "FemurHead_Top_R": (-90.0, -10.0, 15.0),
    }
    if landmarks is not None:
        lm = landmarks
    return SimpleNamespace(name="phantom", grid=g, structures=structures, landmarks=lm)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


@pytest.fixture(scope="module")
def protocol():
    return load_protocol("nrg_salvage")


@pytest.fixture(scope="module")
def ctv_n(phantom, protocol):
    return ctv_pelvic_nodes(phantom, protocol)


@pytest.fixture(scope="module")
def ctv_sb(phantom, protocol):
    return ctv_prostate_bed(phantom, protocol)


def _slices(s: Structure) -> np.ndarray:
    z = s.grid.axis_coordinates_mm()[0]
    return z[s.mask.any(axis=(1, 2))]


# ---------------------------------------------------------------------------- nodes
def _vessels(ss):
    names = [n for n in ss.names if n.startswith(("A_Iliac", "V_Iliac"))]
    return np.any([ss[n].mask for n in names], axis=0)


def test_ctv_nodes_name_role(ctv_n, protocol):
    assert ctv_n.name == f"CTVn_{protocol.prescription('pelvic_nodes').dose_cgy}" == "CTVn_4500"
    assert ctv_n.role == "ctv"


@pytest.mark.parametrize("margin_mm", [5.0, 7.0])
def test_ctv_nodes_keeps_distance_from_vessels(phantom, protocol, margin_mm):
    p = protocol.with_values(
        {
            "ctv.pelvic_nodes.vessel_margin_mm": margin_mm,
            "ctv.pelvic_nodes.presacral_depth_mm": 0,
            "ctv.pelvic_nodes.obturator_strip_width_mm": 0,
            "ctv.pelvic_nodes.smoothing_mm": 0,
        }
    )
    ctv = ctv_pelvic_nodes(phantom, p).mask
    ss, g = phantom.structures, phantom.grid
    vessels = _vessels(ss)
    avoid = np.zeros(g.shape, bool)
    for n in ss.names:
        if not n.startswith(("A_", "V_", "Body")):
            avoid |= ss[n].mask
    voxel = max(g.spacing_mm[1:])
    z = g.axis_coordinates_mm()[0]
    checked = 0
    for k in np.flatnonzero(ctv.any(axis=(1, 2))):
        if not vessels[k].any():
            continue
        d = ndimage.distance_transform_edt(~vessels[k], sampling=g.spacing_mm[1:])
        # nothing farther than the margin (within a voxel) ...
        assert d[ctv[k]].max() <= margin_mm + voxel, f"slice z={z[k]}"
        # ... and everything nearer than the margin less a voxel, bar organs, is in the CTV
        near = (d <= margin_mm - voxel) & ~avoid[k]
        if 30 < z[k] < L5S1:  # both inferior borders are below, the superior one above
            assert not (near & ~ctv[k]).any(), f"slice z={z[k]}"
        checked += 1
    assert checked > 10


def test_ctv_nodes_distance_measured_on_a_cross_section(phantom, protocol):
    # on the axial slice z = 80 mm, along the row through the left external iliac artery,
    # the CTV's lateral edge lies 7 mm lateral of the vessels' lateral edge
    ctv = ctv_pelvic_nodes(phantom, protocol.with_values({"ctv.pelvic_nodes.smoothing_mm": 0}))
    g, ss = phantom.grid, phantom.structures
    z_mm, y_mm, x_mm = g.axis_coordinates_mm()
    k = int(np.argmin(np.abs(z_mm - 80.0)))
    j = int(np.argmin(np.abs(y_mm - (20 + (80 - 95) * 50 / 90))))  # artery centre row
    vessels = (ss["A_Iliac_Ext_L"].mask | ss["V_Iliac_Ext_L"].mask | ss["A_Iliac_Int_L"].mask)[k, j]
    xs = x_mm[ctv.mask[k, j] & (x_mm > 0)]
    edge = x_mm[vessels].max()
    assert abs((xs.max() - edge) - 7.0) <= g.spacing_mm[2]


@pytest.mark.parametrize(("border", "z_mm"), [("L5S1_Interspace", L5S1), ("L4L5_Interspace", L4L5)])
def test_ctv_nodes_superior_border(phantom, protocol, border, z_mm):
    p = protocol.with_values({"ctv.pelvic_nodes.superior_border": border})
    top = _slices(ctv_pelvic_nodes(phantom, p)).max()
    assert z_mm - SPACING[0] < top <= z_mm


def test_nrg_variant_is_larger(phantom, protocol):
    rtog = protocol.with_values({"ctv.pelvic_nodes.superior_border": "L5S1_Interspace"})
    nrg = protocol.with_values({"ctv.pelvic_nodes.superior_border": "L4L5_Interspace"})
    assert ctv_pelvic_nodes(phantom, nrg).volume_cc > ctv_pelvic_nodes(phantom, rtog).volume_cc


def test_ctv_nodes_inferior_borders(phantom, ctv_n):
    g = phantom.grid
    bottom = _slices(ctv_n).min()
    assert PS_TOP <= bottom < PS_TOP + SPACING[0]
    # external iliac region stops at the top of the femoral heads
    z = g.axis_coordinates_mm()[0]
    ext = phantom.structures["A_Iliac_Ext_L"].mask
    below = (z < 15.0 - 1e-6) & ext.any(axis=(1, 2))
    for k in np.flatnonzero(below):
        assert not (ctv_n.mask[k] & ext[k]).any()


@pytest.mark.parametrize(
    "organs", [("Bone",), ("Spc_Bowel", "Colon_Sigmoid"), ("Bladder", "Rectum")]
)
def test_ctvs_do_not_overlap_organs(phantom, ctv_n, ctv_sb, organs):
    ss = phantom.structures
    names = [n for n in ss.names if n.startswith(organs) or n in organs]
    if organs == ("Bone",):
        names += ["PubicSymphys", "VB_S1", "VB_S2", "VB_S3", "VB_L4", "VB_L5", "Femur_Head_L"]
    avoid = np.any([ss[n].mask for n in names], axis=0)
    assert (ctv_n.mask & avoid).sum() == 0
    if organs != ("Bladder", "Rectum"):
        assert (ctv_sb.mask & avoid).sum() == 0
    else:  # the bed CTV keeps the posterior bladder-wall band above the symphysis only
        assert (ctv_sb.mask & ss["Rectum"].mask).sum() == 0


def test_ctv_nodes_presacral_and_obturator(phantom, protocol, ctv_n):
    ss, g = phantom.structures, phantom.grid
    y_mm = g.axis_coordinates_mm()[1]
    z = g.axis_coordinates_mm()[0]
    k = int(np.argmin(np.abs(z - 57.0)))  # S2 level
    vb = ss["VB_S2"].mask[k]
    front = y_mm[vb.any(axis=1)].min()
    col = g.shape[2] // 2  # midline
    ys = y_mm[ctv_n.mask[k, :, col]]
    assert ys.size and ys.max() < front and ys.min() >= front - 10 - SPACING[1]
    k = int(np.argmin(np.abs(z - 10.0)))  # obturator level: strip medial to the muscle
    x_mm = g.axis_coordinates_mm()[2]
    j = int(np.argmin(np.abs(y_mm + 20.0)))
    xs = x_mm[ctv_n.mask[k, j]]
    left = xs[xs > 0]
    assert left.size and 45 - 18 - SPACING[2] <= left.min() and left.max() < 45


def test_missing_vessel_is_named(protocol):
    ph = make_phantom()
    ss = StructureSet(
        [s for s in ph.structures.values() if s.name != "A_Iliac_Int_L"], grid=ph.grid
    )
    ph2 = SimpleNamespace(grid=ph.grid, structures=ss, landmarks=ph.landmarks)
    with pytest.raises(MissingStructureError, match="A_Iliac_Int_L"):
        ctv_pelvic_nodes(ph2, protocol)


def test_landmarks_derived_from_structures():
    ph = make_phantom(landmarks={})
    assert landmark_z_mm(ph, "PubicSymphysis_Top") == pytest.approx(-1.5 + 0 * PS_TOP, abs=3)
    l5s1 = landmark_z_mm(ph, "L5S1_Interspace")
    assert 94 <= l5s1 <= 101
    with pytest.raises(MissingStructureError, match="AorticBifurcation"):
        landmark_z_mm(ph, "AorticBifurcation")


# ---------------------------------------------------------------------------- bed
def test_ctv_bed_name(ctv_sb):
    assert ctv_sb.name == "CTVsb_6660" and ctv_sb.role == "ctv"


def test_ctv_bed_superior_inferior_at_landmarks(phantom, protocol, ctv_sb):
    zs = _slices(ctv_sb)
    z_inf = VUA[2] - protocol.value("ctv.prostate_bed.inferior_below_vua_mm")
    assert z_inf <= zs.min() < z_inf + SPACING[0]
    assert VAS_END_Z - SPACING[0] < zs.max() <= VAS_END_Z
    p = protocol.with_values({"ctv.prostate_bed.superior_reference": "pubic_symphysis"})
    zs2 = _slices(ctv_prostate_bed(phantom, p))
    z_sup = PS_TOP + protocol.value("ctv.prostate_bed.superior_above_symphysis_mm")
    assert z_sup - SPACING[0] < zs2.max() <= z_sup


def test_ctv_bed_without_vua_uses_penile_bulb(phantom, protocol):
    lm = dict(phantom.landmarks)
    del lm["VUA"]
    ph = SimpleNamespace(grid=phantom.grid, structures=phantom.structures, landmarks=lm)
    zs = _slices(ctv_prostate_bed(ph, protocol))
    bulb_top = landmark_z_mm(ph, "PenileBulb_Top")
    assert bulb_top < zs.min() <= bulb_top + 2 * SPACING[0]


def test_ctv_bed_anterior_posterior_lateral_below_symphysis(phantom, ctv_sb):
    g = phantom.grid
    z, y_mm, x_mm = g.axis_coordinates_mm()
    below = [k for k in np.flatnonzero(ctv_sb.mask.any(axis=(1, 2))) if z[k] < PS_TOP - 1e-6]
    assert len(below) >= 4
    for k in below:
        ys = y_mm[ctv_sb.mask[k].any(axis=1)]
        xs = x_mm[ctv_sb.mask[k].any(axis=0)]
        # anterior: posterior edge of the pubic bone; posterior: anterior rectal wall
        assert PUBIS_POST_Y < ys.min() <= PUBIS_POST_Y + SPACING[1] + 1e-6
        mid = ctv_sb.mask[k, :, np.argmin(np.abs(x_mm))]
        assert RECTUM_FRONT_Y - SPACING[1] <= y_mm[mid].max() < RECTUM_FRONT_Y
        # concave around the rectum, at most halfway from its front to its centre (y=25)
        assert ys.max() <= (RECTUM_FRONT_Y + 25.0) / 2
        if -50 <= z[k] <= -5:  # lateral: the levator ani
            assert xs.max() < LEVATOR_X and xs.min() > -LEVATOR_X
            assert xs.max() >= LEVATOR_X - 2 * SPACING[2]


def test_ctv_bed_above_symphysis_bladder_band(phantom, protocol, ctv_sb):
    g = phantom.grid
    z, y_mm, x_mm = g.axis_coordinates_mm()
    bladder = phantom.structures["Bladder"].mask
    band = protocol.value("ctv.prostate_bed.bladder_wall_band_mm")
    half = protocol.value("ctv.prostate_bed.lateral_halfwidth_mm")
    above = [k for k in np.flatnonzero(ctv_sb.mask.any(axis=(1, 2))) if z[k] > PS_TOP + 1e-6]
    assert len(above) >= 4
    inside = 0
    for k in above:
        both = ctv_sb.mask[k] & bladder[k]
        xs = x_mm[ctv_sb.mask[k].any(axis=0)]
        assert np.abs(xs).max() < half + 1e-6
        if not bladder[k].any():
            continue
        back = np.where(bladder[k], y_mm[:, None], -np.inf).max(axis=0)
        jj, ii = np.nonzero(both)
        assert np.all(y_mm[jj] >= back[ii] - band - 1e-6)
        inside += both.sum()
    assert inside > 0
    # at every level only the posterior band of the bladder is in the CTV
    for k in np.flatnonzero((ctv_sb.mask & bladder).any(axis=(1, 2))):
        back = np.where(bladder[k], y_mm[:, None], -np.inf).max(axis=0)
        jj, ii = np.nonzero(ctv_sb.mask[k] & bladder[k])
        assert np.all(y_mm[jj] >= back[ii] - band - 1e-6)
    thin = ctv_prostate_bed(
        phantom, protocol.with_values({"ctv.prostate_bed.bladder_wall_band_mm": 0})
    )
    assert not (thin.mask & bladder).any()


def test_bed_band_and_width_change_volume(phantom, protocol, ctv_sb):
    wider = protocol.with_values({"ctv.prostate_bed.lateral_halfwidth_mm": 35})
    assert ctv_prostate_bed(phantom, wider).volume_cc > ctv_sb.volume_cc
    thin = protocol.with_values({"ctv.prostate_bed.bladder_wall_band_mm": 5})
    assert ctv_prostate_bed(phantom, thin).volume_cc < ctv_sb.volume_cc


def test_phantom_volumes_plausible(ctv_sb, ctv_n):
    # the phantom is built to land in the published ranges (CLINICAL.md 1a, 2b)
    assert 60 <= ctv_sb.volume_cc <= 180
    assert 150 <= ctv_n.volume_cc <= 450


# ---------------------------------------------------------------------------- PTVs
def test_ptv_contains_ctv_and_anisotropic(phantom, protocol, ctv_sb):
    body = phantom.structures["Body"]
    ptv = ptv_from_ctv(ctv_sb, protocol.ptv_margin("prostate_bed"), name="PTVsb_6660", body=body)
    assert ptv.role == "ptv" and not (ctv_sb.mask & ~ptv.mask).any()
    y0, y1 = ctv_sb.bounds_mm[1]
    Y0, Y1 = ptv.bounds_mm[1]
    tol = max(SPACING)
    assert abs((Y1 - y1) - 5) <= tol and abs((y0 - Y0) - 7) <= tol  # posterior 5, anterior 7
    assert (Y1 - y1) < (y0 - Y0)


def test_changing_margin_in_toml_changes_volume(tmp_path, phantom, ctv_sb):
    from rtplan.protocols import __file__ as pkg

    text = open(pkg.replace("__init__.py", "nrg_salvage.toml"), encoding="utf-8").read()
    assert "posterior = 5\n" in text
    f = tmp_path / "narrow.toml"
    f.write_text(text.replace("posterior = 5\n", "posterior = 2\n"), encoding="utf-8")
    p0, p1 = load_protocol("nrg_salvage"), load_protocol(f)
    body = phantom.structures["Body"]
    v0 = ptv_from_ctv(ctv_sb, p0.ptv_margin("prostate_bed"), name="a", body=body).volume_cc
    v1 = ptv_from_ctv(ctv_sb, p1.ptv_margin("prostate_bed"), name="a", body=body).volume_cc
    assert v1 < v0
    g = tmp_path / "nodes5.toml"
    g.write_text(text.replace("vessel_margin_mm = 7", "vessel_margin_mm = 5"), encoding="utf-8")
    assert ctv_pelvic_nodes(phantom, g).volume_cc < ctv_pelvic_nodes(phantom, p0).volume_cc


def _lesion(grid, centre, radius, lid):
    Z, Y, X = _coords(grid)
    m = (X - centre[0]) ** 2 + (Y - centre[1]) ** 2 + (Z - centre[2]) ** 2 <= radius**2
    return Lesion(id=lid, name=f"L{lid}", structure=Structure(f"L{lid}", m, grid, role="gtv"))


@pytest.fixture(scope="module")
def lesions(phantom):
    g = phantom.grid
    return [
        _lesion(g, (0, -5, -10), 5, 1),  # local recurrence in the bed
        _lesion(g, (-38, 26, 60), 5, 2),  # right internal/external iliac node
        _lesion(g, (0, 70, 58), 6, 3),  # sacral bone lesion (S2)
        _lesion(g, (-20, 40, 128), 5, 4),  # para-aortic node (M1a)
    ]


def test_boost_volumes_names_and_nesting(phantom, protocol, lesions):
    gtv, ctv, ptv = boost_volumes(lesions[1].mask, phantom, protocol, kind="node_boost", number=1)
    assert (gtv.name, ctv.name, ptv.name) == ("GTVn1", "CTVn1_6000", "PTVn1_6000")
    assert not (gtv.mask & ~ctv.mask).any() and not (ctv.mask & ~ptv.mask).any()
    g2, c2, p2 = boost_volumes(lesions[2].mask, phantom, protocol, kind="sbrt_bone", number=2)
    assert (g2.name, c2.name, p2.name) == ("GTV2", "CTV2_2100", "PTV2_2100")
    assert np.array_equal(g2.mask, c2.mask)  # GTV = CTV for SBRT
    g3, c3, _ = boost_volumes(lesions[0].mask, phantom, protocol, kind="local_boost")
    assert (g3.name, c3.name) == ("GTVp", "CTVp_7400")


_STAGE_GRID = ImageGrid(shape=(1, 1, 8), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))


def _stage(string, t="T0", n="N0", m="M0", rows=(), oligo=False, max_oligo=5):
    """A Stage with lesions (id, category, region[, code]) of one voxel each (t+n+m)."""
    lesions = []
    for i, c, r, *code in rows:
        voxel = np.zeros(_STAGE_GRID.shape, bool)
        voxel[0, 0, i] = True
        gtv = Structure(f"L{i}", voxel, _STAGE_GRID, role="gtv")
        lesions.append(
            Lesion(
                id=i,
                name=f"L{i}",
                structure=gtv,
                category=c,
                region=r,
                region_code=next(iter(code), None),
            )
        )
    distant = [row[1] for row in rows if row[1].startswith("M1")]
    st = Stage(
        t=t,
        n=n,
        m=m,
        detailed=string,
        n_detail=n,
        nodal_regions=(),
        m_categories=tuple(dict.fromkeys(distant)),
        n_distant_lesions=len(distant),
        oligometastatic=oligo,
        max_oligo_lesions=max_oligo,
        bone_pattern=None,
        lesions=Lesions(lesions, grid=_STAGE_GRID),
        promise_version="v2",
        common_iliac="M1a",
    )
    assert st.string == string
    return st


STAGES = {
    "T0N0M0": _stage("T0N0M0"),
    "TrN0M0": _stage("TrN0M0", t="Tr", rows=[(1, "Tr", "prostate_bed")]),
    "TrN1M0": _stage(
        "TrN1M0", t="Tr", n="N1", rows=[(1, "Tr", "prostate_bed"), (2, "N1", "internal_iliac")]
    ),
    "T0N1M1b": _stage(
        "T0N1M1b",
        n="N1",
        m="M1b",
        rows=[(2, "N1", "internal_iliac"), (3, "M1b", "bone"), (4, "M1a", "retroperitoneal")],
        oligo=True,
    ),
}


def test_suggest_options_per_stage():
    names = {k: [o.name for o in suggest_options(s)] for k, s in STAGES.items()}
    assert names["T0N0M0"] == ["PBRT", "PBRT+STAD", "PBRT+WPRT"]
    assert names["TrN0M0"] == ["PBRT+LRboost", "PBRT+LRboost+STAD", "PBRT+WPRT+LRboost"]
    assert names["TrN1M0"] == ["PBRT+WPRT+LRboost+Nboost+ADT", "PBRT+WPRT+LRboost+ADT"]
    assert names["T0N1M1b"] == [
        "PBRT+WPRT+Nboost+SBRT+ADT",
        "PBRT+WPRT+Nboost+SBRT",
        "PBRT+WPRT+Nboost+ADT",
    ]
    for s in STAGES.values():
        for o in suggest_options(s):
            assert DISCLAIMER in o.description and "CLINICAL.md" in o.evidence
            assert o.adt == o.name.endswith(("+ADT", "+STAD"))
    tr = suggest_options(STAGES["TrN0M0"])
    assert "0.12" in tr[2].evidence
    assert "0.37" in suggest_options(STAGES["TrN1M0"])[0].evidence
    m1 = suggest_options(STAGES["T0N1M1b"])[0]
    assert m1.sbrt_bone == (3,) and m1.sbrt_node == (4,) and m1.node_boost == (2,)
    not_oligo = _stage("T0N0M1b", m="M1b", rows=[(3, "M1b", "bone")], oligo=False)
    assert [o.name for o in suggest_options(not_oligo)] == ["PBRT+ADT"]
    assert "Not oligometastatic" in suggest_options(not_oligo)[0].description
    oligo_n0 = _stage(
        "TrN0M1a", t="Tr", m="M1a", rows=[(1, "Tr", ""), (4, "M1a", "RP")], oligo=True
    )
    specs = suggest_options(oligo_n0)
    assert [o.name for o in specs] == [
        "PBRT+LRboost+SBRT+ADT",
        "PBRT+LRboost+SBRT",
        "PBRT+LRboost+ADT",
    ]
    assert specs[0].sbrt_node == (4,) and specs[0].local_boost == (1,) and not specs[0].pelvis


def test_option_spec_rejects_node_boost_without_pelvis():
    with pytest.raises(ValueError, match="whole-pelvis"):
        OptionSpec("x", node_boost=(1,))


@pytest.fixture(scope="module")
def options(phantom, lesions, protocol):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specs = [
            *suggest_options(STAGES["T0N0M0"]),
            *suggest_options(STAGES["TrN0M0"]),
            *suggest_options(STAGES["T0N1M1b"]),
        ]
        return build_options(specs, phantom, lesions, protocol)


def test_options_courses_and_doses(options, protocol):
    by = {o.name: o for o in options}
    assert all(isinstance(o, FieldOption) for o in options)
    pbrt = by["PBRT"]
    assert [(c.name, c.fractions) for c in pbrt.courses] == [("ProstateBed", 37)]
    wprt = by["PBRT+WPRT"]
    assert [(c.name, c.fractions) for c in wprt.courses] == [
        ("Pelvis", 25),
        ("ProstateBedBoost", 12),
    ]
    total: dict[str, float] = {}
    for t in by["PBRT+WPRT+LRboost"].targets:
        total[t.name] = total.get(t.name, 0) + t.prescription_gy
    assert total == pytest.approx({"PTVn_4500": 45.0, "PTVsb_6660": 66.6, "PTVp_7400": 74.0})
    m1 = by["PBRT+WPRT+Nboost+SBRT+ADT"]
    assert m1.adt
    sbrt = [c for c in m1.courses if c.technique == "sbrt"]
    assert [(c.fractions, c.targets[0].name, c.targets[0].prescription_gy) for c in sbrt] == [
        (3, "PTV1_2100", 21.0),
        (5, "PTV2_3000", 30.0),
    ]
    nb = [t for t in m1.courses[0].targets if t.name == "PTVn1_6000"]
    assert nb and nb[0].prescription_gy == 60.0 and m1.courses[0].fractions == 25


def test_options_names_unique_short_and_ptv_contains_ctv(options):
    for o in options:
        names = {}
        for t in o.targets:
            for s in (t.gtv, t.ctv, t.ptv):
                if s is not None:
                    assert len(s.name) <= 16
                    assert names.setdefault(s.name, s) is s
            if t.ctv is not None:
                assert not (t.ctv.mask & ~t.ptv.mask).any(), (o.name, t.name)


def test_sib_mode(phantom, lesions, protocol):
    p = protocol.with_values(
        {
            "technique.wprt_mode": "sib",
            "prescription.prostate_bed.dose_gy": 62.5,
            "prescription.prostate_bed.fractions": 25,
            "prescription.pelvic_nodes.dose_gy": 50.0,
            "prescription.local_boost.dose_gy": 65.0,
        }
    )
    spec = OptionSpec("PBRT+WPRT", pelvis=True)
    o = build_option(spec, phantom, lesions, p)
    assert len(o.courses) == 1 and o.courses[0].fractions == 25
    assert {t.name: t.prescription_gy for t in o.targets} == {"PTVsb_6250": 62.5, "PTVn_5000": 50.0}


def test_overlaps_and_table(options, phantom):
    o = next(o for o in options if o.name == "PBRT")
    ov = target_overlaps(o, phantom)
    assert {(x.target, x.organ) for x in ov} == {
        ("PTVsb_6660", "Rectum"),
        ("PTVsb_6660", "Bladder"),
    }
    for x in ov:
        organ = phantom.structures[x.organ]
        ptv = o.targets[0].ptv
        n = (organ.mask & ptv.mask).sum()
        assert x.overlap_cc == pytest.approx(n * phantom.grid.voxel_volume_cc)
        assert x.pct_of_organ == pytest.approx(100 * n / organ.voxel_count)
        assert 0 < x.pct_of_organ < 100
    rows = option_volume_table(o, phantom)
    assert [r["structure"] for r in rows] == ["CTVsb_6660", "PTVsb_6660"]
    assert rows[1]["total_dose_gy"] == 66.6 and "rectum_overlap_cc" in rows[1]


def test_lesion_missing_is_named(phantom, protocol):
    with pytest.raises(MissingStructureError, match="99"):
        build_option(OptionSpec("x", local_boost=(99,)), phantom, [], protocol)


# ---------------------------------------------------------------------------- shipped atlas
@pytest.fixture(scope="module")
def atlas_ctvs(protocol):
    from rtplan.atlas import load_atlas

    atlas = load_atlas("male_pelvis_postop", spacing_mm=(3.0, 2.5, 2.5))
    return atlas, ctv_prostate_bed(atlas, protocol), ctv_pelvic_nodes(atlas, protocol)


def test_shipped_atlas_volumes_in_published_ranges(atlas_ctvs):
    _, sb, n = atlas_ctvs
    # RTOG prostate-bed CTV 62-177 cc (CLINICAL.md 1a); post-op nodal CTV mean 302 cc (2b)
    assert 60 <= sb.volume_cc <= 180, sb.volume_cc
    assert 200 <= n.volume_cc <= 450, n.volume_cc


def test_shipped_atlas_borders_and_crops(atlas_ctvs, protocol):
    atlas, sb, n = atlas_ctvs
    ss, lm, dz = atlas.structures, atlas.landmarks, atlas.grid.spacing_mm[0]
    zs, zn = _slices(sb), _slices(n)
    z_inf = lm["VUA"][2] - protocol.value("ctv.prostate_bed.inferior_below_vua_mm")
    assert z_inf <= zs.min() < z_inf + dz
    assert lm["VasDeferens_CutEnd"][2] - dz < zs.max() <= lm["VasDeferens_CutEnd"][2]
    # the default protocol says NRG 2021: superior border at L4/L5 (issue 11)
    assert lm["L4L5_Interspace"][2] - dz < zn.max() <= lm["L4L5_Interspace"][2]
    assert lm["PubicSymphysis_Top"][2] <= zn.min() < lm["PubicSymphysis_Top"][2] + dz
    bone = [k for k in ss.names if k.startswith(("Bone_", "VB_", "Femur_"))]
    avoid = np.any(
        [ss[k].mask for k in [*bone, "PubicSymphys", "Sacrum", "Colon_Sigmoid"]],
        axis=0,
    )
    assert not (sb.mask & avoid).any() and not (n.mask & avoid).any()
    # the bowel bag (peritoneal space) is not bowel: the nodal CTV is not cropped from it
    assert not (sb.mask & ss["Spc_Bowel"].mask).any() and (n.mask & ss["Spc_Bowel"].mask).any()
    assert not (sb.mask & ss["Rectum"].mask).any()
    body = ss["Body"]
    for ctv, m in (
        (sb, protocol.ptv_margin("prostate_bed")),
        (n, protocol.ptv_margin("pelvic_nodes")),
    ):
        ptv = ptv_from_ctv(ctv, m, name="PTV", body=body)
        assert not (ctv.mask & ~ptv.mask).any()


def test_node_outside_elective_ctv_is_noted(phantom, lesions, protocol):
    specs = [
        OptionSpec("x", pelvis=True, node_boost=(4,)),
        OptionSpec("y", pelvis=True, node_boost=(2,)),
    ]
    o, o2 = build_options(specs, phantom, lesions, protocol)
    assert "GTVn1 lies mostly outside CTVn_4500" in o.description
    assert "outside" not in o2.description


def test_evaluation_ptv_near_the_skin(phantom, protocol):
    g = phantom.grid
    near_skin = _lesion(g, (0, -84, 100), 5, 5)  # the body surface is at y = -95 here
    o = build_option(OptionSpec("s", sbrt_node=(5,)), phantom, [near_skin], protocol)
    ptv = next(t.ptv for t in o.targets if t.name == "PTV1_3000")
    (ev,) = [s for s in o.extra_structures if s.name == "PTV1_3000-05"]
    assert 0 < ev.volume_cc < ptv.volume_cc and not (ev.mask & ~ptv.mask).any()
    body = phantom.structures["Body"].mask
    d = ndimage.distance_transform_edt(body, sampling=g.spacing_mm)
    assert d[ev.mask].min() >= 5.0 - max(g.spacing_mm)
    far = build_option(OptionSpec("p"), phantom, [], protocol)
    assert far.extra_structures == ()


def test_inconsistent_landmarks_raise(phantom, protocol):
    lm = dict(phantom.landmarks, VUA=(0.0, -20.0, 100.0))
    ph = SimpleNamespace(grid=phantom.grid, structures=phantom.structures, landmarks=lm)
    with pytest.raises(ProtocolError, match="superior border"):
        ctv_prostate_bed(ph, protocol)
    lm = dict(phantom.landmarks, L4L5_Interspace=(0.0, 0.0, -30.0))  # the default border
    ph = SimpleNamespace(grid=phantom.grid, structures=phantom.structures, landmarks=lm)
    with pytest.raises(GeometryError, match="CTV_PelvicNodes is empty"):
        ctv_pelvic_nodes(ph, protocol)


@pytest.mark.parametrize(
    ("key", "value", "grows"),
    [
        ("ctv.pelvic_nodes.external_iliac_anterolateral_mm", 10, True),
        ("ctv.pelvic_nodes.obturator_strip_width_mm", 25, True),
        ("ctv.pelvic_nodes.presacral_halfwidth_mm", 10, False),
        ("ctv.pelvic_nodes.presacral_depth_mm", 5, False),
    ],
)
def test_node_options_change_the_ctv(phantom, protocol, ctv_n, key, value, grows):
    v = ctv_pelvic_nodes(phantom, protocol.with_values({key: value})).volume_cc
    assert (v > ctv_n.volume_cc) if grows else (v < ctv_n.volume_cc)


def test_bed_lateral_to_obturator_internus(phantom, protocol, ctv_sb):
    p = protocol.with_values({"ctv.prostate_bed.lateral_above_symphysis": "obturator_internus"})
    wide = ctv_prostate_bed(phantom, p)
    assert wide.volume_cc > ctv_sb.volume_cc
    x_mm = phantom.grid.axis_coordinates_mm()[2]
    assert x_mm[wide.mask.any(axis=(0, 1))].max() < 45  # medial edge of Obturator_Int_L


def test_bed_without_vua_or_bulb_names_both(phantom, protocol):
    lm = {k: v for k, v in phantom.landmarks.items() if k != "VUA"}
    ss = StructureSet([s for s in phantom.structures.values() if s.name != "PenileBulb"])
    ph = SimpleNamespace(grid=phantom.grid, structures=ss, landmarks=lm)
    with pytest.raises(MissingStructureError, match="VUA.*PenileBulb"):
        ctv_prostate_bed(ph, protocol)


def test_user_anatomy_without_internal_iliac_vessels_is_reported_by_name(atlas_ctvs):
    """A TotalSegmentator-like anatomy has no internal iliac vessels: say which are missing."""
    atlas = atlas_ctvs[0]
    keep = [n for n in atlas.structures.names if not n.startswith(("A_Iliac_Int", "V_Iliac_Int"))]
    user = SimpleNamespace(
        name="user",
        grid=atlas.grid,
        ct_hu=atlas.ct_hu,
        structures=atlas.structures.select(keep),
        landmarks=dict(atlas.landmarks),
    )
    with pytest.raises(MissingStructureError) as err:
        ctv_pelvic_nodes(user)
    for name in ("A_Iliac_Int_L", "A_Iliac_Int_R", "V_Iliac_Int_L", "V_Iliac_Int_R"):
        assert name in str(err.value)
    # the prostate-bed CTV does not need them
    assert ctv_prostate_bed(user).volume_cc > 0


# ---------------------------------------------------------------------------- typed boundaries
@pytest.mark.parametrize("bad", ["TrN1M1b", None, {"t": "Tr", "n": "N1", "m": "M1b"}])
def test_suggest_options_needs_a_stage(bad):
    with pytest.raises(TypeError, match="stage must be a rtplan.staging.Stage"):
        suggest_options(bad)


@pytest.mark.parametrize("bad", ["foo", ["PBRT"], None, 3])
def test_build_options_needs_specs_or_a_stage(phantom, lesions, protocol, bad):
    with pytest.raises(TypeError, match="specs must be an OptionSpec"):
        build_options(bad, phantom, lesions, protocol)


def test_build_options_accepts_a_stage_a_spec_or_none(phantom, lesions, protocol):
    assert build_options([], phantom, lesions, protocol) == []
    (one,) = build_options(OptionSpec("PBRT"), phantom, lesions, protocol)
    assert one.name == "PBRT"
    staged = build_options(STAGES["T0N0M0"], phantom, lesions, protocol)
    assert [o.name for o in staged] == ["PBRT", "PBRT+STAD", "PBRT+WPRT"]


def test_builders_name_the_bad_argument(phantom, lesions, protocol):
    spec = OptionSpec("PBRT")
    with pytest.raises(TypeError, match="spec must be an OptionSpec"):
        build_option("PBRT", phantom, lesions, protocol)
    with pytest.raises(TypeError, match="atlas must be an anatomy"):
        build_options([spec], "male_pelvis", lesions, protocol)
    with pytest.raises(TypeError, match=r"atlas\.structures must be a StructureSet"):
        build_option(spec, SimpleNamespace(grid=phantom.grid, structures={}, landmarks={}))
    with pytest.raises(TypeError, match="lesions must be a Lesions collection"):
        build_options([spec], phantom, "L1", protocol)
    with pytest.raises(TypeError, match="lesions must be a Lesions collection"):
        build_options([spec], phantom, {1: lesions[0]}, protocol)
    with pytest.raises(TypeError, match="lesions must hold Lesion objects, got SimpleNamespace"):
        build_option(spec, phantom, [SimpleNamespace(id=1, mask=lesions[0].structure)])
    with pytest.raises(TypeError, match="protocol must be a protocol name"):
        build_options([spec], phantom, lesions, 5)
    with pytest.raises(TypeError, match="atlas must be an anatomy"):
        ctv_prostate_bed(None, protocol)
    with pytest.raises(TypeError, match="atlas must be an anatomy"):
        landmark_z_mm("male_pelvis", "VUA")
    with pytest.raises(TypeError, match="name must be a str"):
        landmark_z_mm(phantom, 3)


def test_lesion_ids_are_integers_and_unique(phantom, lesions, protocol):
    with pytest.raises(TypeError, match=r"OptionSpec\.local_boost must hold lesion ids"):
        OptionSpec("x", local_boost=("L1",))
    with pytest.raises(TypeError, match=r"OptionSpec\.sbrt_bone must be a tuple of lesion ids"):
        OptionSpec("x", sbrt_bone=3)
    with pytest.raises(TypeError, match=r"OptionSpec\.name must be a str"):
        OptionSpec(5)
    assert OptionSpec("x", sbrt_node=[np.int64(4)]).sbrt_node == (4,)
    twin = Lesion(id=1, name="L1bis", structure=lesions[0].structure)
    with pytest.raises(ValueError, match="same id 1"):
        build_option(OptionSpec("x", local_boost=(1,)), phantom, [lesions[0], twin], protocol)


def test_reporting_functions_check_their_arguments(options, phantom):
    o = options[0]
    with pytest.raises(TypeError, match="organs must be an iterable of names"):
        target_overlaps(o, phantom, organs="Rectum")
    with pytest.raises(TypeError, match="option must be a FieldOption"):
        target_overlaps("PBRT", phantom)
    with pytest.raises(TypeError, match="option must be a FieldOption"):
        option_volume_table(o.name)


def test_plan_objects_check_their_parts(ctv_sb):
    from rtplan.plan import Course, Target

    with pytest.raises(TypeError, match=r"Target\.ptv must be a Structure"):
        Target("PTVsb_6660", 66.6)
    with pytest.raises(TypeError, match=r"Target\.ctv must be a Structure or None"):
        Target(ctv_sb, 66.6, ctv="CTVsb")
    with pytest.raises(TypeError, match="a target of course 'Bed' must be a Target"):
        Course("Bed", "imrt", 37, ("PTVsb_6660",))
    with pytest.raises(TypeError, match="a course of option 'PBRT' must be a Course"):
        FieldOption("PBRT", ("ProstateBed",))


# ---------------------------------------------------------------------------- issue 11
@pytest.fixture(scope="module")
def coarse_nodes(coarse_atlas, protocol):
    return ctv_pelvic_nodes(coarse_atlas, protocol)


def _presacral_band(atlas, depth_mm=10.0, half_mm=25.0):
    """The band ``depth_mm`` deep in front of the anterior surface of S1-S3, column by
    column, within ``half_mm`` of the midline, without organs and bone."""
    g, ss = atlas.grid, atlas.structures
    _, y, x = g.axis_coordinates_mm()
    vb = ss["VB_S1"].mask | ss["VB_S2"].mask | ss["VB_S3"].mask
    Y = y[None, :, None]
    front = np.where(vb.any(axis=1), np.where(vb, Y, np.inf).min(axis=1), np.nan)
    band = (Y < front[:, None, :]) & (Y >= front[:, None, :] - depth_mm)
    band &= (np.abs(x) <= half_mm)[None, None, :]
    organs = [n for n in ss.names if n.startswith(("Bone_", "VB_", "A_", "V_"))]
    organs += ["Sacrum", "Rectum", "Colon_Sigmoid", "Bladder"]
    return band & ~np.any([ss[n].mask for n in organs], axis=0)


def test_presacral_band_s1_s3_is_covered(coarse_atlas, coarse_nodes):
    """Issue 11.3: the band in front of S1-S3 is CTV (>= 90 %), not cropped as bowel space."""
    band = _presacral_band(coarse_atlas)
    assert band.sum() > 20
    covered = (band & coarse_nodes.mask).sum() / band.sum()
    assert covered >= 0.90, covered


def test_sacral_canal_is_not_ctv(coarse_atlas, coarse_nodes):
    """Issue 11.3: the sacral canal (cauda equina) is not in the CTV: 0 cc."""
    ss = coarse_atlas.structures
    sacrum = ss["Sacrum"].mask
    canal = np.zeros_like(sacrum)
    for k in np.flatnonzero(sacrum.any(axis=(1, 2))):
        canal[k] = ndimage.binary_fill_holes(sacrum[k]) & ~sacrum[k]
    assert canal.sum() > 10
    assert (canal & coarse_nodes.mask).sum() == 0


def _fossa_point(atlas, side, k):
    """Obturator-fossa point on slice ``k``: midway between the external iliac vein and the
    internal iliac vessels, moved medially until 3 mm clear of muscle, bone and vessels."""
    g, ss = atlas.grid, atlas.structures
    z, y, x = g.axis_coordinates_mm()

    def centre(names):
        m = np.any([ss[n].mask[k] for n in names], axis=0)
        jj, ii = np.nonzero(m)
        return np.array([x[ii].mean(), y[jj].mean()])

    mid = (
        centre([f"V_Iliac_Ext_{side}"]) + centre([f"A_Iliac_Int_{side}", f"V_Iliac_Int_{side}"])
    ) / 2
    solid = np.any(
        [
            ss[n].mask[k]
            for n in ss.names
            if n.startswith(("Bone_", "A_", "V_", "Iliopsoas", "Obturator"))
        ],
        axis=0,
    )
    clear = ndimage.distance_transform_edt(~solid, sampling=g.spacing_mm[1:]) >= 3.0
    step = -1.0 if side == "L" else 1.0
    for d in np.arange(0.0, 30.0, 1.0):
        px, py = mid[0] + step * d, mid[1]
        j, i = int(np.argmin(np.abs(y - py))), int(np.argmin(np.abs(x - px)))
        if clear[j, i]:
            return j, i
    raise AssertionError(f"no obturator-fossa point on slice z={z[k]}")


@pytest.mark.parametrize("side", ["L", "R"])
def test_obturator_fossa_is_ctv_between_the_muscle_and_the_bifurcation(
    coarse_atlas, coarse_nodes, side
):
    """Issue 11.3: the sidewall strip joins the external and internal iliac regions: an
    obturator-fossa point at every level from the top of the obturator internus to the
    iliac bifurcation is in the CTV (where both regions exist: the external iliac region
    starts at the top of the femoral head, Lawton 2009)."""
    g, ss, lm = coarse_atlas.grid, coarse_atlas.structures, coarse_atlas.landmarks
    z = g.axis_coordinates_mm()[0]
    top_obt = z[ss[f"Obturator_Int_{side}"].mask.any(axis=(1, 2))].max()
    start = max(top_obt, lm[f"FemurHead_Top_{side}"][2])
    ext = ss[f"V_Iliac_Ext_{side}"].mask.any(axis=(1, 2))
    internal = (ss[f"A_Iliac_Int_{side}"].mask | ss[f"V_Iliac_Int_{side}"].mask).any(axis=(1, 2))
    levels = np.flatnonzero((z >= start) & ext & internal)
    assert len(levels) >= 10
    for k in levels:
        j, i = _fossa_point(coarse_atlas, side, k)
        assert coarse_nodes.mask[k, j, i], f"obturator fossa ({side}) at z={z[k]} not in the CTV"


def test_obturator_fossa_node_at_the_acetabular_roof_is_inside(coarse_atlas, coarse_nodes):
    g = coarse_atlas.grid
    z = g.axis_coordinates_mm()[0]
    k = int(np.argmin(np.abs(z - (coarse_atlas.landmarks["FemurHead_Top_L"][2] + 8.0))))
    j, i = _fossa_point(coarse_atlas, "L", k)
    node = sphere_mask_at(g, g.index_to_lps([k, j, i]), 4.0)
    assert (node & coarse_nodes.mask).sum() / node.sum() >= 0.5


def sphere_mask_at(grid, centre, radius_mm):
    Z, Y, X = _coords(grid)
    return (X - centre[0]) ** 2 + (Y - centre[1]) ** 2 + (Z - centre[2]) ** 2 <= radius_mm**2


def test_default_superior_border_follows_the_stated_source(coarse_atlas):
    """Issue 11.3: a protocol that says NRG 2021 defaults to NRG 2021 (L4/L5); RTOG 2009
    (L5/S1) stays as a named variant."""
    from rtplan.protocol import list_protocols

    key = "ctv.pelvic_nodes.superior_border"
    for name in list_protocols():
        p = load_protocol(name)
        says_nrg = "NRG 2021" in f"{p.title} {p.value('protocol.name')}" or name.startswith("nrg")
        border = p.value(key)
        if says_nrg:
            assert border == "L4L5_Interspace", name
            assert "hall2021" in p.source(key) or "NRG 2021" in p.source(key), name
        elif border == "L5S1_Interspace":
            assert "lawton2009" in p.source(key) or "Lawton" in p.source(key), name
    assert load_protocol("nrg_salvage").value(key) == "L4L5_Interspace"
    assert load_protocol("rtog2009_nodes").value(key) == "L5S1_Interspace"
    dz = coarse_atlas.grid.spacing_mm[0]
    for name, landmark in (
        ("nrg_salvage", "L4L5_Interspace"),
        ("rtog2009_nodes", "L5S1_Interspace"),
    ):
        top = _slices(ctv_pelvic_nodes(coarse_atlas, name)).max()
        assert coarse_atlas.landmarks[landmark][2] - dz < top <= coarse_atlas.landmarks[landmark][2]


def _node_beside(atlas, names, z_mm, offset):
    g = atlas.grid
    k = int(np.argmin(np.abs(g.axis_coordinates_mm()[0] - z_mm)))
    m = np.any([atlas.structures[n].mask[k] for n in names], axis=0)
    jj, ii = np.nonzero(m)
    return np.add(g.index_to_lps([k, jj.mean(), ii.mean()]), offset)


def test_node_positive_adaptations(coarse_atlas, protocol):
    """Issue 11.3: common iliac disease extends the field to the aortic bifurcation; a
    perirectal node adds the mesorectum. Without them the boost sits outside the CTV."""
    g = coarse_atlas.grid
    rtog = protocol.with_values({"ctv.pelvic_nodes.superior_border": "L5S1_Interspace"})
    ci = sphere_mask_at(g, _node_beside(coarse_atlas, ("A_Iliac_L",), 120.0, (12, 0, 0)), 4.0)
    plain = ctv_pelvic_nodes(coarse_atlas, rtog)
    ext = ctv_pelvic_nodes(coarse_atlas, rtog, superior_border="AorticBifurcation")
    assert ext.name == "CTVnExt_4500" and plain.name == "CTVn_4500"
    assert (ci & plain.mask).sum() == 0 and (ci & ext.mask).sum() >= 0.5 * ci.sum()
    top = _slices(ext).max()
    assert coarse_atlas.landmarks["AorticBifurcation"][2] - g.spacing_mm[0] < top
    rectal = sphere_mask_at(g, _node_beside(coarse_atlas, ("Rectum",), 20.0, (0, 22, 0)), 3.0)
    assert not (rectal & coarse_atlas.structures["Rectum"].mask).any()
    meso = ctv_pelvic_nodes(coarse_atlas, protocol, mesorectal=True)
    assert meso.name == "CTVnMR_4500"
    assert (rectal & meso.mask).sum() >= 0.5 * rectal.sum()
    assert (rectal & ctv_pelvic_nodes(coarse_atlas, protocol).mask).sum() < 0.5 * rectal.sum()
    assert not (meso.mask & coarse_atlas.structures["Rectum"].mask).any()
    with pytest.raises(ValueError, match="superior_border"):
        ctv_pelvic_nodes(coarse_atlas, protocol, superior_border="L3L4")


def test_options_adapt_the_nodal_ctv_to_the_nodes(coarse_atlas, protocol):
    """A staged perirectal node: the pelvic options cover the mesorectum; the boost is in."""
    from rtplan.staging import stage

    g = coarse_atlas.grid
    node = sphere_mask_at(g, _node_beside(coarse_atlas, ("Rectum",), 20.0, (0, 22, 0)), 3.0)
    les = Lesions([Lesion(id=1, name="L1", structure=Structure("L1", node, g))], grid=g)
    st = stage(les, coarse_atlas)
    assert st.lesions[0].region_code == "OP" and st.string == "T0N1M0"
    specs = suggest_options(st)
    assert all(s.mesorectal for s in specs if s.pelvis)
    built = build_option(specs[0], coarse_atlas, les, protocol)
    names = {t.ctv.name for t in built.targets if t.ctv is not None}
    assert "CTVnMR_4500" in names and "outside" not in built.description


def test_bed_lateral_border_is_the_muscle(atlas_ctvs, protocol):
    """Issue 11.4: below the top of the symphysis the bed CTV reaches the obturator
    internus / levator ani (no 25 mm cap); a cap is only a protocol option."""
    atlas, sb, _ = atlas_ctvs
    g, ss = atlas.grid, atlas.structures
    z, _, x = g.axis_coordinates_mm()
    ps = atlas.landmarks["PubicSymphysis_Top"][2]
    k = int(np.argmin(np.abs(z - (ps - 4.0))))
    muscle = ss["Obturator_Int_L"].mask[k] | ss["Levator_Ani"].mask[k]
    medial = x[muscle.any(axis=0) & (x > 0)].min()
    reach = x[sb.mask[k].any(axis=0)].max()
    assert reach >= medial - 2 * g.spacing_mm[2], (reach, medial)
    assert reach > 25.0 + g.spacing_mm[2]
    assert 62 <= sb.volume_cc <= 177  # RTOG CTV 62-177 cc (CLINICAL.md 1a)
    from dataclasses import replace

    from rtplan.staging import _bed_region, _BedRules

    capped, _ = _bed_region(atlas, replace(_BedRules.from_protocol(protocol), lateral_cap_mm=25.0))
    below = z < ps - 1e-6
    assert np.abs(x[capped[below].any(axis=(0, 1))]).max() <= 25.0 + 1e-6
    assert capped.sum() < sb.mask.sum()


_CI_ONLY = _stage(
    "T0N0M1a", m="M1a", rows=[(4, "M1a", "common iliac", "CI")], oligo=True, max_oligo=3
)
_BONE_OLIGO = _stage("T0N0M1b", m="M1b", rows=[(3, "M1b", "bone")], oligo=True, max_oligo=3)


def test_localised_options_add_short_term_adt():
    """Issue 11.6: T0N0M0 / TrN0M0 get PBRT + STAD (SPPORT arm 2, 4-6 months); the WPRT
    option says SPPORT's pelvic arm always had STAD."""
    for key in ("T0N0M0", "TrN0M0"):
        specs = {s.name: s for s in suggest_options(STAGES[key])}
        stad = next(s for s in specs.values() if s.name.endswith("+STAD"))
        assert (stad.adt, stad.adt_duration, stad.adt_months) == (True, "short-term", (4, 6))
        assert stad.adt_text == "short-term ADT, 4-6 months" and "SPPORT arm 2" in stad.evidence
        wprt = next(s for s in specs.values() if s.pelvis)
        assert "always had short-term ADT" in wprt.evidence and not wprt.adt
    n1 = suggest_options(STAGES["TrN1M0"])[0]
    assert (n1.adt_duration, n1.adt_months) == ("long-term", (18, 24))
    assert "RADICALS-HD" in n1.evidence


def test_oligometastatic_options_without_adt_and_without_the_bed():
    """Issue 11.6: MDT without ADT (STOMP, ORIOLE, cut-off 3) and SBRT alone for T0N0M1."""
    specs = {s.name: s for s in suggest_options(_BONE_OLIGO)}
    assert list(specs) == ["PBRT+SBRT+ADT", "PBRT+SBRT", "SBRT", "PBRT+ADT"]
    alone = specs["SBRT"]
    assert not alone.prostate_bed and not alone.adt and alone.sbrt_bone == (3,)
    assert "STOMP" in specs["PBRT+SBRT"].evidence and "ORIOLE" in specs["PBRT+SBRT"].evidence
    assert "<= 3 distant lesions" in specs["PBRT+SBRT+ADT"].evidence
    # with a local recurrence the bed is treated: no SBRT-alone option
    tr = _stage("TrN0M1b", t="Tr", m="M1b", rows=[(1, "Tr", ""), (3, "M1b", "bone")], oligo=True)
    assert "SBRT" not in [s.name for s in suggest_options(tr)]


def test_common_iliac_only_disease_gets_an_extended_field():
    specs = {s.name: s for s in suggest_options(_CI_ONLY)}
    efrt = specs["PBRT+EFRT+Nboost+ADT"]
    assert efrt.pelvis and efrt.superior_border == "AorticBifurcation" and efrt.node_boost == (4,)
    assert "aortic bifurcation" in efrt.description and "Meijer" in efrt.evidence
    assert "SBRT" in specs and "PBRT+SBRT" in specs  # the node is also oligometastatic


def test_option_spec_checks_its_new_parts():
    with pytest.raises(ValueError, match="treats nothing"):
        OptionSpec("x", prostate_bed=False)
    with pytest.raises(ValueError, match="prostate bed"):
        OptionSpec("x", prostate_bed=False, pelvis=True, sbrt_bone=(1,))
    with pytest.raises(ValueError, match="adt=True"):
        OptionSpec("x", adt_duration="short-term")
    with pytest.raises(ValueError, match="adt_duration"):
        OptionSpec("x", adt=True, adt_duration="forever")
    with pytest.raises(ValueError, match="whole-pelvis"):
        OptionSpec("x", mesorectal=True)
    with pytest.raises(TypeError, match="prostate_bed"):
        OptionSpec("x", prostate_bed="no")
    assert OptionSpec("x", adt=True).adt_text == "ADT (duration not stated)"
    assert OptionSpec("x").adt_months is None and OptionSpec("x").adt_text == "no ADT"


def test_prescriptions_in_eqd2(phantom, lesions, protocol):
    """Issue 11.6: each target prescription with its EQD2 (alpha/beta 1.5): 66.6/37 is
    62.8 Gy, 62.5/25 is 71.4 Gy; sequential courses add in EQD2."""
    from rtplan.volumes import prescription_eqd2

    conventional = build_option(OptionSpec("PBRT"), phantom, lesions, protocol)
    (row,) = prescription_eqd2(conventional)
    assert (row.ptv, row.physical_gy, round(row.eqd2_gy, 1)) == ("PTVsb_6660", 66.6, 62.8)
    assert "62.8 Gy EQD2" in conventional.description
    hypo = load_protocol("hypo_salvage")
    (row,) = prescription_eqd2(build_option(OptionSpec("PBRT"), phantom, lesions, hypo))
    assert (row.ptv, round(row.eqd2_gy, 1)) == ("PTVsb_6250", 71.4)
    assert row.schedule == "62.5 Gy / 25 fx"
    wprt = build_option(OptionSpec("PBRT+WPRT", pelvis=True), phantom, lesions, protocol)
    rows = {r.ptv: r for r in prescription_eqd2(wprt)}
    assert rows["PTVsb_6660"].schedule == "45 Gy / 25 fx + 21.6 Gy / 12 fx"
    assert rows["PTVsb_6660"].physical_gy == pytest.approx(66.6)
    assert rows["PTVn_4500"].eqd2_gy == pytest.approx(45 * (1.8 + 1.5) / 3.5)
    assert rows["PTVsb_6660"].eqd2_gy == pytest.approx(45 * 3.3 / 3.5 + 21.6 * (1.8 + 1.5) / 3.5)
    with pytest.raises(TypeError, match="option must be a FieldOption"):
        prescription_eqd2("PBRT")


def test_sbrt_alone_builds_without_the_bed(phantom, lesions, protocol):
    o = build_option(
        OptionSpec("SBRT", prostate_bed=False, sbrt_bone=(3,)), phantom, lesions, protocol
    )
    assert [c.technique for c in o.courses] == ["sbrt"] and not o.adt
    assert "no ADT" in o.description


@pytest.mark.parametrize("centre_col", [12, 4])  # in the middle, and touching the grid edge
def test_sacral_canal_is_the_hole_of_the_bone_ring(centre_col):
    """The canal is the enclosed hole of the bone on each slice, also at the grid's edge."""
    from rtplan.volumes import _sacral_canal

    g = ImageGrid(shape=(3, 20, 24), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    jj, ii = np.mgrid[0:20, 0:24]
    r = np.hypot(jj - 10, ii - centre_col)
    ring = (r >= 3) & (r <= 5)
    bone = np.zeros(g.shape, bool)
    bone[1] = ring
    canal = _sacral_canal(StructureSet([Structure("Sacrum", bone, g)]), g)
    hole = r < 3
    assert np.array_equal(canal[1], hole) and not canal[0].any() and not canal[2].any()
    assert np.array_equal(canal[1], ndimage.binary_fill_holes(ring) & ~ring)
    # a ring broken by the grid edge encloses nothing
    cut = np.zeros(g.shape, bool)
    cut[1] = ring & (ii >= centre_col)
    open_canal = _sacral_canal(StructureSet([Structure("Sacrum", cut, g)]), g)
    assert not open_canal.any()
    # on a box (also one cutting through the ring), the holes of the whole slices there
    ss = StructureSet([Structure("Sacrum", bone, g)])
    for box in [
        (slice(1, 2), slice(8, 15), slice(centre_col - 1, 24)),
        (slice(0, 3), slice(0, 9), slice(0, 10)),
    ]:
        assert np.array_equal(_sacral_canal(ss, g, box), canal[box])


def _target_masks(options):
    out = {}
    for o in options:
        for c in o.courses:
            for t in c.targets:
                for s in (t.gtv, t.ctv, t.ptv):
                    if s is not None:
                        out[(o.name, c.name, s.name)] = s.mask
        for s in o.extra_structures:
            out[(o.name, "extra", s.name)] = s.mask
    return out


def test_volumes_built_on_boxes_equal_the_whole_grid_build(coarse_atlas, protocol, monkeypatch):
    """Targets are built on boxes around them; with boxes as large as the grid (nothing
    cropped) every volume is the same, also with crop gaps and the nodal adaptations."""
    import rtplan.volumes as volumes
    from rtplan.cohort.lesion_spec import parse_lesion_items, place_lesions
    from rtplan.staging import stage

    atlas = coarse_atlas
    items = parse_lesion_items("local:VUA;node:perirectal_L:8mm;node:external_iliac_R:10mm")
    lesions = place_lesions(items, atlas)
    gaps = protocol.with_values(
        {
            "ctv.pelvic_nodes.crop_bone_mm": 3,
            "ctv.pelvic_nodes.crop_bowel_mm": 5,
            "ctv.pelvic_nodes.smoothing_mm": 4,
        }
    )

    def build():
        options = build_options(stage(lesions, atlas), atlas, lesions, protocol)
        nodes = ctv_pelvic_nodes(atlas, gaps, superior_border="AorticBifurcation", mesorectal=True)
        return {**_target_masks(options), ("nodes", nodes.name): nodes.mask}

    on_boxes = build()
    monkeypatch.setattr(volumes, "reach_voxels", lambda grid, margin: np.full(3, 10**6))
    on_grid = build()
    assert on_boxes.keys() == on_grid.keys() and len(on_boxes) > 10
    for key, mask in on_boxes.items():
        assert np.array_equal(mask, on_grid[key]), key
