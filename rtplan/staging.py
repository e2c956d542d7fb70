"""PROMISE miTNM staging of PSMA-positive lesions against an atlas, per lesion and patient.

Categories (CLINICAL.md section 3): a local recurrence in the prostate bed is **miTr**;
pelvic nodes are **miN** (V2: N1 = one region, N2 = two or more; V1: N1a / N1b) with
the nodal region internal iliac (II), external iliac (EI), obturator (OB), presacral
(PS) or other pelvic (OP); extrapelvic nodes are **miM1a** (retroperitoneal RP,
supradiaphragmatic SD, inguinal / other extrapelvic OE, and common iliac CI unless
``common_iliac="N"``); bone is **miM1b**; other organs are **miM1c**.

How a lesion is located (all distances are tool defaults in :class:`StagingRules`):

1. **Bone** (M1b): at least half of the lesion's voxels lie in the bone structures
   (``Bone_*``, ``Sacrum``, ``VB_*``, ``Femur_Head_*``, ``PubicSymphys``, ``Coccyx``).
2. **Prostate bed** (Tr): the centroid lies within 5 mm of ``ProstateBed``.
3. **Organ** (M1c): at least half of the lesion lies in a soft-tissue organ of
   :data:`M1C_ORGANS` (liver, lung, kidney, adrenal, bladder, rectum, sigmoid...).
4. **Nodes**, by the centroid, following the rule of thumb of CLINICAL.md section 3b
   (MUSIQ open-source code [V-3p], a heuristic, not a guideline):

   * the **pelvic brim** is the axial plane at the z level of the landmark
     ``"SacralPromontory"`` (falling back on the top of ``VB_S1`` / ``Sacrum``). The
     anatomical brim is oblique (promontory to the top of the symphysis); the level
     was chosen because the rule of thumb is written in levels ("cranial to the top of
     the sacrum") and because the external iliac vessels run along the oblique brim, so
     an oblique plane would call anterior external iliac nodes extrapelvic;
   * above the brim, up to the aortic bifurcation (landmark ``"AorticBifurcation"``,
     else ``"L4L5_Interspace"``; at L4, CLINICAL.md section 9) -> **CI**; above it ->
     **RP**; above the top of ``VB_T12`` when the atlas has it -> **SD**;
   * below the brim, caudal to the lowest hip bone (``Bone_Ilium_*``,
     ``Bone_Ischium_*``, ``PubicSymphys``) -> **OE**; at the femoral-head level and
     lateral to the medial edge of the femoral head, or in front of the pubic
     symphysis -> **OE** (inguinal when anterior to the femoral-head centre);
   * otherwise the nearest pelvic region within reach: EI / II = within 20 mm of the
     external / internal iliac arteries and veins; OB = within 18 mm of and medial to
     ``Obturator_Int_*`` on the lesion's side (Taylor's obturator strip is >= 18 mm
     wide, CLINICAL.md section 2c [V]); PS = within 20 mm of ``Sacrum`` / ``VB_S1``-
     ``VB_S3``, in front of the sacrum's mid-depth on the lesion's slice, within 20 mm
     of the midline and not below S3 (RTOG presacral S1-S3, CLINICAL.md section 9). A
     pelvic lesion in none of them is **OP** (perirectal when within 10 mm of the rectum;
     otherwise flagged "region uncertain").

The **common iliac** region is N in PROMISE V1's template [U] but M1a in the V2
calculators and the AJCC convention (CLINICAL.md section 3b [V-3p]); the default
``common_iliac="M1a"`` follows V2/AJCC. Patient strings follow the UCLA form
("T0N0M0", "TrN1M0", "T0N1M1b"; CLINICAL.md section 10a): ``N1`` stands for any nodal
involvement and M for the highest distant category; the PROMISE form is in
:attr:`Stage.detailed`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from rtplan._typing import FloatArray, Vec3
from rtplan._validation import check_choice
from rtplan.errors import GridMismatchError, InvalidInputError, MissingStructureError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesion, LesionRow, Lesions
from rtplan.structures import StructureSet

__all__ = [
    "BED_ADJACENT_ORGANS",
    "BONE_STRUCTURES",
    "CATEGORIES",
    "M1C_ORGANS",
    "OVERRIDES",
    "REGION_NAMES",
    "AtlasLike",
    "Stage",
    "StagingRules",
    "check_atlas",
    "stage",
]

#: Per-lesion miTNM categories, lowest to highest for M.
CATEGORIES: tuple[str, ...] = ("Tr", "N1", "M1a", "M1b", "M1c")

#: Values accepted in ``stage(..., overrides=)``: a category, or what the lesion is.
OVERRIDES: tuple[str, ...] = (*CATEGORIES, "local", "node", "bone", "organ")

#: PROMISE nodal region codes and their names.
REGION_NAMES: dict[str, str] = {
    "II": "internal iliac",
    "EI": "external iliac",
    "OB": "obturator",
    "PS": "presacral",
    "OP": "other pelvic",
    "CI": "common iliac",
    "RP": "retroperitoneal",
    "SD": "supradiaphragmatic",
    "OE": "other extrapelvic",
}
_M_CATEGORIES = ("M1a", "M1b", "M1c")
_PELVIC_CODES = ("II", "EI", "OB", "PS", "OP")
_M1A_CODES = ("RP", "SD", "OE")

#: Structures that count as bone (TG-263 names; prefixes ending in "_" match any suffix).
BONE_STRUCTURES: tuple[str, ...] = (
    "Bone_",
    "Sacrum",
    "VB_",
    "Femur_Head_",
    "Femur_",
    "PubicSymphys",
    "Coccyx",
)

#: Soft-tissue organs whose lesions are M1c (TG-263 name -> PROMISE V2 M1c site: hep, pul,
#: adrenal, brain, other; CLINICAL.md section 3b [V-3p]). Bladder, rectum and bowel count as
#: "other" unless the lesion is a local recurrence invading them (see
#: :data:`BED_ADJACENT_ORGANS`).
M1C_ORGANS: dict[str, str] = {
    "Liver": "hep",
    "Lung_L": "pul",
    "Lung_R": "pul",
    "Lungs": "pul",
    "Adrenal_L": "adrenal",
    "Adrenal_R": "adrenal",
    "Brain": "brain",
    "Kidney_L": "other",
    "Kidney_R": "other",
    "Spleen": "other",
    "Bladder": "other",
    "Rectum": "other",
    "Colon_Sigmoid": "other",
    "Colon": "other",
    "Bowel_Small": "other",
}

#: Organs next to the prostate bed: a lesion in them close to the bed is a local recurrence
#: invading the organ (miT4 in PROMISE V1 lists invasion of the bladder, rectum, levator
#: muscles and external sphincter; after prostatectomy such a lesion is miTr; CLINICAL.md 3a).
BED_ADJACENT_ORGANS: tuple[str, ...] = (
    "Bladder",
    "Rectum",
    "Canal_Anal",
    "Levator_Ani",
    "Urethra",
)

_EI_VESSELS = ("A_Iliac_Ext_L", "A_Iliac_Ext_R", "V_Iliac_Ext_L", "V_Iliac_Ext_R")
_II_VESSELS = ("A_Iliac_Int_L", "A_Iliac_Int_R", "V_Iliac_Int_L", "V_Iliac_Int_R")
_CI_VESSELS = ("A_Iliac_L", "A_Iliac_R", "V_Iliac_L", "V_Iliac_R")
_RP_VESSELS = ("A_Aorta", "V_Venacava_I")
_SACRUM = ("Sacrum", "VB_S1", "VB_S2", "VB_S3")
_HIP_BONES = (
    "Bone_Ilium_L",
    "Bone_Ilium_R",
    "Bone_Ischium_L",
    "Bone_Ischium_R",
    "PubicSymphys",
    "Bone_Pelvic",
)


@runtime_checkable
class AtlasLike(Protocol):
    """An anatomy: what staging and the volume builders read from an atlas.

    :class:`rtplan.atlas.Atlas` is one; any object with these three attributes is
    another (e.g. a user anatomy). :func:`check_atlas` checks an object at runtime.

    Attributes
    ----------
    grid : ImageGrid
        Geometry of every structure.
    structures : StructureSet
        Structures on ``grid``, TG-263 names.
    landmarks : mapping of str to (x, y, z)
        Named LPS points in mm (may be empty).
    """

    @property
    def grid(self) -> ImageGrid:
        """Geometry of every structure."""
        ...

    @property
    def structures(self) -> StructureSet:
        """Structures on :attr:`grid`, TG-263 names."""
        ...

    @property
    def landmarks(self) -> Mapping[str, Vec3]:
        """Named LPS points in mm."""
        ...


def check_atlas(atlas: object, *, name: str = "atlas") -> None:
    """Raise ``TypeError`` unless ``atlas`` is an anatomy (:class:`AtlasLike`).

    Parameters
    ----------
    atlas : object
        The value to check: it needs ``grid`` (ImageGrid), ``structures``
        (StructureSet) and ``landmarks`` (a mapping).
    name : str
        Name of the argument, for the message.

    Raises
    ------
    TypeError
        Naming the argument and what it lacks.

    Examples
    --------
    >>> check_atlas("pelvis")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: atlas must be an anatomy with grid, structures and landmarks (...); got a str ...
    """
    if not isinstance(atlas, AtlasLike):
        missing = [a for a in ("grid", "structures", "landmarks") if not hasattr(atlas, a)]
        raise TypeError(
            f"{name} must be an anatomy with grid, structures and landmarks (e.g. "
            f"rtplan.atlas.Atlas); got a {type(atlas).__name__} without {', '.join(missing)}"
        )
    parts: tuple[tuple[str, object, type], ...] = (
        ("grid", atlas.grid, ImageGrid),
        ("structures", atlas.structures, StructureSet),
        ("landmarks", atlas.landmarks, Mapping),
    )
    for attr, value, cls in parts:
        if not isinstance(value, cls):
            raise TypeError(f"{name}.{attr} must be a {cls.__name__}, got {type(value).__name__}")


@dataclass(frozen=True)
class StagingRules:
    """Distances and fractions used to locate lesions; all are tool defaults.

    Parameters
    ----------
    node_distance_mm : float
        A node belongs to a vessel region (EI, II; CI / RP for the "uncertain" flag) when
        its centroid lies within this distance of the vessels (tool default 20 mm: the
        7 mm RTOG vessel margin, CLINICAL.md section 2a, plus the radius of an enlarged
        node).
    obturator_distance_mm : float
        Reach of the obturator region medial to the obturator internus (18 mm, the
        width of Taylor's obturator strip, CLINICAL.md section 2c [V]).
    presacral_distance_mm : float
        Reach of the presacral region anterior to the sacrum (tool default 20 mm;
        the CTV strip is 10 mm, CLINICAL.md section 2c).
    presacral_half_width_mm : float
        How far from the midline a presacral node may lie (tool default 20 mm).
    bed_tolerance_mm : float
        A lesion whose centroid lies within this distance of ``ProstateBed`` is a local
        recurrence (tool default 5 mm, for registration and contouring uncertainty).
    perirectal_distance_mm : float
        An "other pelvic" node within this distance of the rectum is perirectal and not
        flagged uncertain (tool default 10 mm).
    local_invasion_mm : float
        A lesion lying in an organ next to the bed (:data:`BED_ADJACENT_ORGANS`) whose
        centroid is within this distance of ``ProstateBed`` is a local recurrence invading
        that organ, not an organ metastasis (tool default 20 mm: the bladder-neck /
        anastomosis region above the vesicourethral anastomosis).
    inside_fraction : float
        Fraction of a lesion's voxels that must lie in bone (or an organ) for it to be a
        bone (organ) lesion (tool default 0.5).
    midline_tolerance_mm : float
        A lesion whose centroid lies within this distance of the midline has side
        ``"midline"`` (tool default 5 mm).
    """

    node_distance_mm: float = 20.0
    obturator_distance_mm: float = 18.0
    presacral_distance_mm: float = 20.0
    presacral_half_width_mm: float = 20.0
    bed_tolerance_mm: float = 5.0
    perirectal_distance_mm: float = 10.0
    local_invasion_mm: float = 20.0
    inside_fraction: float = 0.5
    midline_tolerance_mm: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "node_distance_mm",
            "obturator_distance_mm",
            "presacral_distance_mm",
            "presacral_half_width_mm",
            "bed_tolerance_mm",
            "perirectal_distance_mm",
            "local_invasion_mm",
            "midline_tolerance_mm",
        ):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InvalidInputError(
                    f"StagingRules.{name} must be a distance >= 0 mm, got {v!r}"
                )
        f = self.inside_fraction
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise InvalidInputError(f"StagingRules.inside_fraction must be in (0, 1], got {f!r}")


# ---------------------------------------------------------------------------- atlas geometry
class _Geometry:
    """Cached geometric queries on an atlas: distances, levels, the midline."""

    def __init__(self, atlas: AtlasLike):
        self.grid: ImageGrid = atlas.grid
        self.ss: StructureSet = atlas.structures
        self.landmarks: dict[str, Vec3] = dict(atlas.landmarks)
        self._trees: dict[str, tuple[cKDTree, FloatArray] | None] = {}
        z_mm, y_mm, x_mm = self.grid.axis_coordinates_mm()
        self._axes = (z_mm, y_mm, x_mm)

    # -- structures
    def present(self, names: Iterable[str]) -> list[str]:
        """Stored names of the non-empty structures matching ``names`` (prefixes with _)."""
        out: list[str] = []
        for n in names:
            if n.endswith("_"):
                out.extend(k for k in self.ss if k.startswith(n) and not self.ss[k].is_empty)
            elif n in self.ss and not self.ss[n].is_empty:
                out.append(self.ss.resolve(n) or n)
        return list(dict.fromkeys(out))

    def _tree(self, name: str) -> tuple[cKDTree, FloatArray] | None:
        if name not in self._trees:
            s = self.ss[name]
            if s.is_empty:
                self._trees[name] = None
            else:
                local = np.asarray(s.cropped_mask)
                border = local & ~ndimage.binary_erosion(local, border_value=0)
                assert s.bbox is not None
                idx = np.argwhere(border) + [sl.start for sl in s.bbox]
                pts = self.grid.index_to_lps(idx)
                self._trees[name] = (cKDTree(pts), pts)
        return self._trees[name]

    def inside(self, point: np.ndarray, name: str) -> bool:
        idx = self.grid.lps_to_nearest_index(point)
        if not self.grid.contains_index(idx):
            return False
        s = self.ss[name]
        if s.bbox is None:
            return False
        local = idx - [sl.start for sl in s.bbox]
        if np.any(local < 0) or np.any(local >= s.cropped_mask.shape):
            return False
        return bool(s.cropped_mask[tuple(local)])

    def distance(self, point: np.ndarray, names: Sequence[str]) -> tuple[float, np.ndarray | None]:
        """Distance (mm) from a point to the nearest of ``names`` (0 inside) and that point."""
        best, near = math.inf, None
        for n in names:
            if self.inside(point, n):
                return 0.0, np.asarray(point, float)
            t = self._tree(n)
            if t is None:
                continue
            d, i = t[0].query(point)
            if d < best:
                best, near = float(d), t[1][i]
        return best, near

    def overlap(self, lesion: Lesion, names: Sequence[str]) -> dict[str, float]:
        """Fraction of the lesion's voxels inside each structure of ``names``."""
        s = lesion.structure
        assert s.bbox is not None
        idx = np.argwhere(s.cropped_mask) + [sl.start for sl in s.bbox]
        out: dict[str, float] = {}
        for n in names:
            st = self.ss[n]
            if st.bbox is None:
                continue
            local = idx - [sl.start for sl in st.bbox]
            ok = np.all((local >= 0) & (local < st.cropped_mask.shape), axis=1)
            if not np.any(ok):
                continue
            frac = np.count_nonzero(st.cropped_mask[tuple(local[ok].T)]) / len(idx)
            if frac > 0:
                out[n] = float(frac)
        return out

    def union_fraction(self, lesion: Lesion, names: Sequence[str]) -> float:
        """Fraction of the lesion's voxels inside the union of ``names``."""
        s = lesion.structure
        assert s.bbox is not None
        idx = np.argwhere(s.cropped_mask) + [sl.start for sl in s.bbox]
        hit = np.zeros(len(idx), bool)
        for n in names:
            st = self.ss[n]
            if st.bbox is None:
                continue
            local = idx - [sl.start for sl in st.bbox]
            ok = np.all((local >= 0) & (local < st.cropped_mask.shape), axis=1)
            hit[ok] |= st.cropped_mask[tuple(local[ok].T)]
        return float(hit.mean())

    def mid_depth_y(self, z: float, names: Sequence[str], x_mid: float, default: float) -> float:
        """Mean y of the voxels of ``names`` on the slice at ``z`` within 10 mm of ``x_mid``.

        "In front of the sacrum" means anterior to its mid-depth on the lesion's own slice
        (robust to the concave, overhanging anterior surface); ``default`` when the slice
        has no such voxel.
        """
        k = int(self.grid.lps_to_nearest_index((x_mid, 0.0, z))[0])
        if not 0 <= k < self.grid.shape[0]:
            return default
        _, y_mm, x_mm = self._axes
        cols = np.abs(x_mm - x_mid) <= 10.0
        ys: list[np.ndarray] = []
        for n in names:
            s = self.ss[n]
            if s.bbox is None or not s.bbox[0].start <= k < s.bbox[0].stop:
                continue
            plane = np.zeros(self.grid.shape[1:], bool)
            plane[s.bbox[1], s.bbox[2]] = s.cropped_mask[k - s.bbox[0].start]
            jj, _ = np.nonzero(plane & cols[None, :])
            ys.append(y_mm[jj])
        if not ys or not sum(len(v) for v in ys):
            return default
        return float(np.mean(np.concatenate(ys)))

    def z_range(self, names: Sequence[str]) -> tuple[float, float] | None:
        lo, hi = math.inf, -math.inf
        for n in self.present(names):
            (_, _), (_, _), (z0, z1) = self.ss[n].bounds_mm
            half = self.grid.spacing_mm[0] / 2
            lo, hi = min(lo, z0 + half), max(hi, z1 - half)
        return None if lo > hi else (lo, hi)

    def landmark_z(self, *keys: str) -> float | None:
        for k in keys:
            if k in self.landmarks:
                return float(self.landmarks[k][2])
        return None


@dataclass(frozen=True)
class _Levels:
    midline_x: float
    brim_z: float
    bifurcation_z: float | None
    sd_z: float | None
    lowest_hip_z: float | None
    s3_bottom_z: float | None
    femoral: dict[str, tuple[float, float, float]]  # side -> (medial x, centre y, top z)
    symphysis: tuple[float, float] | None  # (anterior y, top z)


def _levels(geo: _Geometry) -> tuple[_Levels, list[str]]:
    notes: list[str] = []
    lm = geo.landmarks
    if "SacralPromontory" in lm:
        mid = float(lm["SacralPromontory"][0])
    elif "PubicSymphysis_Top" in lm:
        mid = float(lm["PubicSymphysis_Top"][0])
    else:
        centres = [geo.ss[n].centroid_mm[0] for n in geo.present(("Sacrum", "PubicSymphys"))]
        mid = float(np.mean(centres)) if centres else float(geo.grid.center_mm[0])
    brim = geo.landmark_z("SacralPromontory")
    if brim is None:
        zr = geo.z_range(("VB_S1",)) or geo.z_range(("Sacrum",))
        if zr is None:
            raise MissingStructureError(
                "staging needs the pelvic brim: the landmark 'SacralPromontory' or a "
                "'VB_S1' / 'Sacrum' structure"
            )
        brim = zr[1]
        notes.append("pelvic brim taken at the top of the sacrum (no SacralPromontory landmark)")
    bif = geo.landmark_z("AorticBifurcation", "L4L5_Interspace")
    if bif is None:
        zr = geo.z_range(("A_Iliac_L", "A_Iliac_R"))
        bif = zr[1] if zr is not None else None
    if bif is None:
        notes.append(
            "no aortic bifurcation level (landmark, or common iliac arteries): every node "
            "above the brim is called common iliac"
        )
    zr = geo.z_range(("VB_T12",))
    sd = zr[1] if zr is not None else None
    zr = geo.z_range(_HIP_BONES)
    lowest = zr[0] if zr is not None else None
    s3 = geo.landmark_z("S3_Bottom")
    if s3 is None:
        zr = geo.z_range(("VB_S3",))
        s3 = zr[0] if zr is not None else None
    femoral: dict[str, tuple[float, float, float]] = {}
    for side in ("L", "R"):
        names = geo.present((f"Femur_Head_{side}",))
        if not names:
            continue
        s = geo.ss[names[0]]
        (x0, x1), _, (_, z1) = s.bounds_mm
        medial = x0 if side == "L" else x1  # left is +x: its medial edge is the low x
        top = geo.landmark_z(f"FemurHead_Top_{side}")
        femoral[side] = (medial, s.centroid_mm[1], z1 if top is None else top)
    sym = None
    if geo.present(("PubicSymphys",)):
        s = geo.ss["PubicSymphys"]
        _, (y0, _), (_, z1) = s.bounds_mm
        top = geo.landmark_z("PubicSymphysis_Top")
        sym = (y0, z1 if top is None else top)
    return _Levels(mid, brim, bif, sd, lowest, s3, femoral, sym), notes


# ---------------------------------------------------------------------------- per lesion
@dataclass
class _Located:
    category: str  # "Tr", "N", "CI", "M1a", "M1b", "M1c"
    region: str
    code: str
    uncertain: bool = False
    notes: list[str] = field(default_factory=list)


def _side(x: float, mid: float, tolerance_mm: float) -> str:
    if abs(x - mid) <= tolerance_mm:
        return "midline"
    return "L" if x > mid else "R"


def _classify_node(c: np.ndarray, geo: _Geometry, lv: _Levels, rules: StagingRules) -> _Located:
    x, y, z = c
    side = "L" if x > lv.midline_x else "R"
    if lv.sd_z is not None and z > lv.sd_z:
        return _Located("M1a", "supradiaphragmatic", "SD")
    if z > lv.brim_z:
        if lv.bifurcation_z is not None and z > lv.bifurcation_z:
            loc = _Located("M1a", REGION_NAMES["RP"], "RP")
            vessels = geo.present(_RP_VESSELS)
        else:
            loc = _Located("CI", REGION_NAMES["CI"], "CI")
            vessels = geo.present(_CI_VESSELS)
        if vessels:
            d, _ = geo.distance(c, vessels)
            if d > rules.node_distance_mm:
                loc.uncertain = True
                loc.notes.append(f"{d:.0f} mm from the {loc.region} vessels")
        return loc
    # below the brim: outside the bony pelvis?
    if lv.lowest_hip_z is not None and z < lv.lowest_hip_z:
        return _Located("M1a", "inguinal / other extrapelvic", "OE")
    fh = lv.femoral.get(side)
    if fh is not None:
        medial_x, centre_y, top_z = fh
        lateral = x > medial_x if side == "L" else x < medial_x
        if z <= top_z and lateral:
            name = "inguinal" if y < centre_y else "other extrapelvic"
            return _Located("M1a", name, "OE")
    if lv.symphysis is not None and z <= lv.symphysis[1] and y < lv.symphysis[0]:
        return _Located("M1a", "inguinal", "OE")
    # pelvic regions: nearest within reach
    scores: dict[str, float] = {}
    for code, names in (("EI", _EI_VESSELS), ("II", _II_VESSELS)):
        present = geo.present(names)
        if present:
            d, _ = geo.distance(c, present)
            if d <= rules.node_distance_mm:
                scores[code] = d
    obt = geo.present((f"Obturator_Int_{side}",))
    if obt:
        d, near = geo.distance(c, obt)
        if (
            near is not None
            and d <= rules.obturator_distance_mm
            and abs(x - lv.midline_x) < abs(near[0] - lv.midline_x)
        ):
            scores["OB"] = d
    sac = geo.present(_SACRUM)
    if sac and abs(x - lv.midline_x) <= rules.presacral_half_width_mm:
        d, near = geo.distance(c, sac)
        below_s3 = lv.s3_bottom_z is not None and z < lv.s3_bottom_z
        in_front = near is not None and y < geo.mid_depth_y(z, sac, lv.midline_x, near[1])
        if in_front and d <= rules.presacral_distance_mm and not below_s3:
            scores["PS"] = d
    if scores:
        code = min(scores, key=lambda k: (scores[k], _PELVIC_CODES.index(k)))
        return _Located("N", REGION_NAMES[code], code)
    rectum = geo.present(("Rectum",))
    if rectum:
        d, _ = geo.distance(c, rectum)
        if d <= rules.perirectal_distance_mm:
            return _Located("N", "other pelvic (perirectal)", "OP")
    return _Located(
        "N",
        REGION_NAMES["OP"],
        "OP",
        uncertain=True,
        notes=["pelvic soft-tissue lesion in no nodal region; staged N by level"],
    )


def _locate(
    lesion: Lesion,
    geo: _Geometry,
    lv: _Levels,
    rules: StagingRules,
    override: str | None,
) -> _Located:
    c = np.asarray(lesion.centroid_mm, float)
    bones = geo.present(BONE_STRUCTURES)
    organs = geo.present(M1C_ORGANS)
    bed = geo.present(("ProstateBed",))

    def bone_loc() -> _Located:
        ov = geo.overlap(lesion, bones) if bones else {}
        region = max(ov, key=lambda k: ov[k]) if ov else "bone"
        return _Located("M1b", region, "bone")

    def organ_loc() -> _Located:
        ov = geo.overlap(lesion, organs) if organs else {}
        if ov:
            name = max(ov, key=lambda k: ov[k])
            return _Located("M1c", name, M1C_ORGANS.get(name, "other"))
        return _Located("M1c", "organ", "other")

    if override is not None:
        if override in ("Tr", "local"):
            loc = _Located("Tr", "prostate bed", "bed")
        elif override in ("M1b", "bone"):
            loc = bone_loc()
        elif override in ("M1c", "organ"):
            loc = organ_loc()
        else:
            loc = _classify_node(c, geo, lv, rules)
            if override == "N1" and loc.category == "CI":
                loc.category = "N"
            elif override == "N1" and loc.category != "N":
                loc = _Located("N", "pelvic node", "OP")
            elif override == "M1a" and loc.category not in ("M1a", "CI"):
                loc = _Located("M1a", "extrapelvic node", "OE")
            if override == "M1a" and loc.category == "CI":
                loc.category = "M1a"
        if override != "node":
            loc.uncertain = False
        loc.notes.append(f"located by user override {override!r}")
        return loc

    bone_fraction = geo.union_fraction(lesion, bones) if bones else 0.0
    if bone_fraction >= rules.inside_fraction:
        return bone_loc()
    if bed:
        d, _ = geo.distance(c, bed)
        if d <= rules.bed_tolerance_mm:
            return _Located("Tr", "prostate bed", "bed")
    if organs:
        ov = geo.overlap(lesion, organs)
        if ov and max(ov.values()) >= rules.inside_fraction:
            organ = max(ov, key=lambda k: ov[k])
            if bed and organ in BED_ADJACENT_ORGANS:
                d, _ = geo.distance(c, bed)
                if d <= rules.local_invasion_mm:
                    loc = _Located("Tr", "prostate bed", "bed")
                    loc.notes.append(
                        f"local recurrence invading the {organ} ({d:.0f} mm from the bed)"
                    )
                    return loc
            return organ_loc()
    loc = _classify_node(c, geo, lv, rules)
    if bone_fraction > 0:
        loc.notes.append(f"{100 * bone_fraction:.0f}% of the lesion lies in bone")
    return loc


# ---------------------------------------------------------------------------- patient stage
@dataclass(frozen=True)
class Stage:
    """PROMISE miTNM stage of a patient, with the staged lesions.

    Attributes
    ----------
    t : {"T0", "Tr"}
        Local recurrence in the prostate bed.
    n : {"N0", "N1"}
        Any pelvic nodal involvement (N1 also for N1a/N1b/N2).
    m : {"M0", "M1a", "M1b", "M1c"}
        Highest distant category.
    string : str
        UCLA-form stage, ``t + n + m``: e.g. ``"T0N0M0"``, ``"TrN1M0"``, ``"T0N1M1b"``.
    detailed : str
        PROMISE form with regions, e.g. ``"miTr miN2(EI,OB) miM1a(RP) miM1b(uni)"``.
    ucla_group : {"T0N0M0", "TrN0M0", "N1M0", "M1"}
        Group of the UCLA 5-year study (CLINICAL.md section 10a).
    n_detail : str
        ``"N0"``, ``"N1"`` / ``"N2"`` (V2) or ``"N1a"`` / ``"N1b"`` (V1).
    nodal_regions : tuple of str
        Involved pelvic nodal regions (codes; with side when counted by side).
    m_categories : tuple of str
        Every distant category present, e.g. ``("M1a", "M1b")``.
    n_distant_lesions : int
        Number of M1 lesions.
    oligometastatic : bool
        True when there is at least one and at most ``max_oligo_lesions`` distant lesion.
    max_oligo_lesions : int
        The limit used.
    bone_pattern : str or None
        ``"uni"`` (1), ``"oligo"`` (2-3), ``"diss"`` (> 3 bone lesions), None without bone.
    lesions : Lesions
        The lesions with ``category``, ``region``, ``region_code``, ``side`` filled in.
    promise_version, common_iliac : str
        Options used.
    notes : tuple of str
        Assumptions made (fallback landmarks, uncertain regions).
    """

    t: str
    n: str
    m: str
    detailed: str
    n_detail: str
    nodal_regions: tuple[str, ...]
    m_categories: tuple[str, ...]
    n_distant_lesions: int
    oligometastatic: bool
    max_oligo_lesions: int
    bone_pattern: str | None
    lesions: Lesions
    promise_version: str
    common_iliac: str
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice(self.t, ("T0", "Tr"), name="Stage.t")
        check_choice(self.n, ("N0", "N1"), name="Stage.n")
        check_choice(self.m, ("M0", *_M_CATEGORIES), name="Stage.m")
        if not isinstance(self.lesions, Lesions):
            raise TypeError(
                f"Stage.lesions must be a Lesions collection, got {type(self.lesions).__name__}"
            )
        unstaged = [x.name for x in self.lesions if x.category not in CATEGORIES]
        if unstaged:
            raise InvalidInputError(
                f"Stage.lesions must be staged, with a category among {', '.join(CATEGORIES)}; "
                f"not so: {', '.join(unstaged)}"
            )

    @property
    def string(self) -> str:
        """UCLA-form stage string, e.g. ``"TrN1M0"``."""
        return f"{self.t}{self.n}{self.m}"

    @property
    def ucla_group(self) -> str:
        """``"T0N0M0"``, ``"TrN0M0"``, ``"N1M0"`` or ``"M1"`` (CLINICAL.md section 10a)."""
        if self.m != "M0":
            return "M1"
        if self.n == "N1":
            return "N1M0"
        return "TrN0M0" if self.t == "Tr" else "T0N0M0"

    @property
    def distant_lesions(self) -> list[Lesion]:
        """Lesions staged M1a / M1b / M1c (candidates for SBRT when oligometastatic)."""
        return [les for les in self.lesions if (les.category or "").startswith("M1")]

    def table(self) -> list[LesionRow]:
        """Per-lesion rows: id, name, category, region, side, volume_cc, SUVs, centroid.

        For export (CSV, report tables); code reads :attr:`lesions` and their attributes.
        """
        return self.lesions.table()

    def __str__(self) -> str:
        return self.string


def _as_lesions(lesions: object, grid: ImageGrid) -> Lesions:
    """``lesions`` as a collection on ``grid``, or raise naming the argument."""
    if isinstance(lesions, Lesions):
        les = lesions
    elif isinstance(lesions, Iterable) and not isinstance(lesions, (str, bytes, Mapping)):
        items = list(lesions)
        bad = sorted({type(x).__name__ for x in items if not isinstance(x, Lesion)})
        if bad:
            raise TypeError(f"lesions must hold Lesion objects, got {', '.join(bad)}")
        les = Lesions(items, grid=grid)
    else:
        raise TypeError(
            f"lesions must be a Lesions collection or an iterable of Lesion, got "
            f"{type(lesions).__name__}"
        )
    if not les.grid.equals(grid):
        raise GridMismatchError(
            f"lesions are on {les.grid.describe()} but the atlas is on {grid.describe()}; "
            "build them with target_grid=atlas.grid"
        )
    return les


def stage(
    lesions: Lesions | Iterable[Lesion],
    atlas: AtlasLike,
    *,
    common_iliac: Literal["N", "M1a"] = "M1a",
    promise_version: Literal["v1", "v2"] = "v2",
    max_oligo_lesions: int = 5,
    overrides: Mapping[str | int, str] | None = None,
    nodal_regions_by_side: bool = False,
    rules: StagingRules | None = None,
) -> Stage:
    """Stage lesions by PROMISE miTNM against an atlas (see the module notes for the rules).

    Parameters
    ----------
    lesions : Lesions or iterable of Lesion
        Lesions on ``atlas.grid`` (build them with ``target_grid=atlas.grid``).
    atlas : AtlasLike
        Anatomy with ``grid`` (ImageGrid), ``structures`` (StructureSet, TG-263 names) and
        ``landmarks`` (mapping of LPS points in mm), e.g. ``rtplan.atlas.load_atlas(...)``.
    common_iliac : {"M1a", "N"}
        Category of common iliac nodes. Default ``"M1a"``: the PROMISE V2 calculators and
        the AJCC convention (CLINICAL.md section 3b [V-3p]); ``"N"`` reads the V1
        template, where CI is a pelvic region [U].
    promise_version : {"v2", "v1"}
        Detailed N category: V2 N1 (one region) / N2 (>= 2); V1 N1a / N1b.
    max_oligo_lesions : int
        Most distant lesions still called oligometastatic. Default 5: SABR-COMET treated
        1-5 metastases (Palma et al., Lancet 2019; CLINICAL.md section 4d). STOMP and
        ORIOLE used <= 3.
    overrides : mapping, optional
        Lesion name (``"L2"``) or id (``2``) -> one of :data:`OVERRIDES`: a category
        (``"Tr"``, ``"N1"``, ``"M1a"``, ``"M1b"``, ``"M1c"``) or what the lesion is
        (``"local"``, ``"node"``, ``"bone"``, ``"organ"``; ``"organ"`` stages M1c,
        ``"node"`` skips the bone, bed and organ tests).
    nodal_regions_by_side : bool
        Count left and right of one region as two regions for N1/N2 (tool default
        False: regions are counted by type).
    rules : StagingRules, optional
        Distances and fractions (tool defaults).

    Returns
    -------
    Stage
        Patient stage and the staged lesions.

    Raises
    ------
    TypeError
        When ``lesions``, ``atlas``, ``overrides`` or ``rules`` is not of its type.
    GridMismatchError
        When the lesions are not on the atlas grid.
    MissingStructureError
        When the atlas has neither the ``SacralPromontory`` landmark nor a sacrum.
    ValueError
        On a bad option, or an override naming an unknown lesion.

    Examples
    --------
    No lesions is T0N0M0 whatever the atlas (the geometry is only read for lesions):

    >>> from types import SimpleNamespace
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(2, 2, 2), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0))
    >>> atlas = SimpleNamespace(grid=g, structures=StructureSet([], grid=g), landmarks={})
    >>> s = stage(Lesions([], grid=g), atlas)
    >>> s.string, s.ucla_group, s.detailed, s.oligometastatic
    ('T0N0M0', 'T0N0M0', 'miT0 miN0 miM0', False)
    """
    _check_stage_options(common_iliac, promise_version, max_oligo_lesions, rules)
    check_atlas(atlas)
    les = _as_lesions(lesions, atlas.grid)
    ov_map = _override_map(overrides, les)
    notes: list[str] = []
    staged: list[Lesion] = []
    if len(les):
        geo = _Geometry(atlas)
        lv, level_notes = _levels(geo)
        notes.extend(level_notes)
        notes.extend(_atlas_notes(geo))
        rules = StagingRules() if rules is None else rules
        staged = [
            _stage_lesion(lesion, geo, lv, rules, ov_map.get(lesion.name), common_iliac)
            for lesion in les
        ]
    return _patient_stage(
        Lesions(staged, grid=atlas.grid),
        common_iliac=common_iliac,
        promise_version=promise_version,
        max_oligo_lesions=int(max_oligo_lesions),
        by_side=nodal_regions_by_side,
        notes=notes,
    )


def _check_stage_options(
    common_iliac: object, promise_version: object, max_oligo_lesions: object, rules: object
) -> None:
    """The options of :func:`stage`, checked at the boundary (the message names each)."""
    check_choice(common_iliac, ("M1a", "N"), name="common_iliac")
    check_choice(promise_version, ("v2", "v1"), name="promise_version")
    if (
        isinstance(max_oligo_lesions, bool)
        or not isinstance(max_oligo_lesions, (int, np.integer))
        or max_oligo_lesions < 1
    ):
        raise InvalidInputError(
            f"max_oligo_lesions must be an integer >= 1, got {max_oligo_lesions!r}"
        )
    if rules is not None and not isinstance(rules, StagingRules):
        raise TypeError(f"rules must be a StagingRules, got {type(rules).__name__}")


def _override_map(overrides: object, les: Lesions) -> dict[str, str]:
    """Lesion name -> override, each override checked and its lesion found."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            "overrides must be a mapping of lesion name or id to one of "
            f"{', '.join(OVERRIDES)}, got {type(overrides).__name__}"
        )
    ov_map: dict[str, str] = {}
    for key, value in overrides.items():
        check_choice(value, OVERRIDES, name=f"override of lesion {key!r}")
        match = [x for x in les if x.name == key or x.id == key]
        if not match:
            raise InvalidInputError(f"override for unknown lesion {key!r}; lesions: {les.names}")
        ov_map[match[0].name] = value
    return ov_map


def _atlas_notes(geo: _Geometry) -> list[str]:
    """What the atlas lacks to recognise some categories."""
    notes = []
    if not geo.present(("ProstateBed",)):
        notes.append("atlas has no ProstateBed: local recurrence (Tr) cannot be recognised")
    if not geo.present(BONE_STRUCTURES):
        notes.append("atlas has no bone structures: bone lesions (M1b) cannot be recognised")
    return notes


def _stage_lesion(
    lesion: Lesion,
    geo: _Geometry,
    lv: _Levels,
    rules: StagingRules,
    override: str | None,
    common_iliac: str,
) -> Lesion:
    """A copy of the lesion with its category, region, side and notes filled in."""
    loc = _locate(lesion, geo, lv, rules, override)
    if loc.category == "CI":
        category = "N1" if common_iliac == "N" else "M1a"
    elif loc.category == "N":
        category = "N1"
    else:
        category = loc.category
    return lesion.with_staging(
        category=category,
        region=loc.region,
        region_code=loc.code,
        side=_side(lesion.centroid_mm[0], lv.midline_x, rules.midline_tolerance_mm),
        region_uncertain=loc.uncertain,
        notes=(
            *lesion.notes,
            *loc.notes,
            *(["region uncertain"] if loc.uncertain else []),
        ),
    )


def _patient_stage(
    les: Lesions,
    *,
    common_iliac: str,
    promise_version: str,
    max_oligo_lesions: int,
    by_side: bool,
    notes: list[str],
) -> Stage:
    cats = [x.category for x in les]
    t = "Tr" if "Tr" in cats else "T0"
    nodal = [x for x in les if x.category == "N1"]
    regions: list[str] = []
    for x in nodal:
        code = x.region_code or "OP"
        key = f"{code}-{x.side}" if by_side and x.side in ("L", "R") else code
        if key not in regions:
            regions.append(key)
    n_regions = len(regions)
    if n_regions == 0:
        n, n_detail = "N0", "N0"
    else:
        n = "N1"
        if promise_version == "v2":
            n_detail = "N1" if n_regions == 1 else "N2"
        else:
            n_detail = "N1a" if n_regions == 1 else "N1b"
    m_cats = tuple(c for c in _M_CATEGORIES if c in cats)
    m = m_cats[-1] if m_cats else "M0"
    distant = [x for x in les if (x.category or "").startswith("M1")]
    n_bone = sum(1 for x in les if x.category == "M1b")
    bone_pattern = None
    if n_bone:
        bone_pattern = "uni" if n_bone == 1 else "oligo" if n_bone <= 3 else "diss"

    def codes(cat: str) -> str:
        found = list(dict.fromkeys(x.region_code or "?" for x in les if x.category == cat))
        return ",".join(found)

    parts = [f"mi{t}"]
    parts.append(f"mi{n_detail}" + (f"({','.join(regions)})" if regions else ""))
    if not m_cats:
        parts.append("miM0")
    for cat in m_cats:
        if cat == "M1b":
            parts.append(f"miM1b({bone_pattern})")
        else:
            parts.append(f"mi{cat}({codes(cat)})")
    if any(x.region_uncertain for x in les):
        uncertain = [x.name for x in les if x.region_uncertain]
        notes = [*notes, f"region uncertain for {', '.join(uncertain)}"]
    return Stage(
        t=t,
        n=n,
        m=m,
        detailed=" ".join(parts),
        n_detail=n_detail,
        nodal_regions=tuple(regions),
        m_categories=m_cats,
        n_distant_lesions=len(distant),
        oligometastatic=1 <= len(distant) <= max_oligo_lesions,
        max_oligo_lesions=max_oligo_lesions,
        bone_pattern=bone_pattern,
        lesions=les,
        promise_version=promise_version,
        common_iliac=common_iliac,
        notes=tuple(notes),
    )
