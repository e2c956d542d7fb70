"""PROMISE miTNM staging of PSMA-positive lesions against an atlas, per lesion and patient.

Categories (CLINICAL.md section 3): a local recurrence in the prostate bed is **miTr**;
pelvic nodes are **miN** (V2: N1 = one region, N2 = two or more; V1: N1a / N1b) with
the nodal region internal iliac (II), external iliac (EI), obturator (OB), presacral
(PS) or other pelvic (OP); extrapelvic nodes are **miM1a** (retroperitoneal RP,
supradiaphragmatic SD, inguinal / other extrapelvic OE, and common iliac CI unless
``common_iliac="N"``); bone is **miM1b**; other organs are **miM1c**.

How a lesion is located (all distances are tool defaults in :class:`StagingRules`):

1. **PSMA expression** (PROMISE V2, CLINICAL.md section 3c [V-3p]): a lesion whose miPSMA
   expression score is 0 or 1 (uptake at or below the liver) reads negative. It is
   located like any other lesion but its category is ``"not counted (miPSMA <score>)"``
   and it drives neither the stage nor the options (``min_mipsma_score`` changes the
   threshold). A lesion without a score (no PET) counts.
2. **Bone** (M1b): at least half of the lesion's voxels lie in the bone structures
   (``Bone_*``, ``Sacrum``, ``VB_*``, ``Femur_Head_*``, ``PubicSymphys``, ``Coccyx``).
3. **Prostate bed** (Tr): the centroid lies in the prostate-bed region, the region
   :func:`prostate_bed_region` builds with the RTOG 2010 bed-CTV rules of the protocol
   (Michalski et al. 2010: vesicourethral anastomosis, bladder neck, retrovesical space /
   seminal-vesicle bed up to the vas deferens cut end, between the rectum and the
   bladder / symphysis; PROMISE miTr = local recurrence after prostatectomy, CLINICAL.md
   sections 1a and 3a), united with a ``ProstateBed`` structure when the anatomy has one.
   It exists for every anatomy that can build a bed CTV, so a TPS structure set without
   ``ProstateBed`` recognises local recurrences too. A lesion lying mostly in the bladder,
   rectum, anal canal, levator ani or urethra within ``local_invasion_mm`` of that region
   is a local recurrence invading the organ (miT4 lists these organs, CLINICAL.md 3a).
4. **Organ** (M1c): at least half of the lesion lies in a soft-tissue organ of
   :data:`M1C_ORGANS` (liver, lung, kidney, adrenal, bladder, rectum, sigmoid...).
5. **Nodes**, by the centroid and the vessel segment the node lies along:

   * with common, external and internal iliac vessels (``A/V_Iliac_*``,
     ``A/V_Iliac_Ext_*``, ``A/V_Iliac_Int_*``) the nearest vessel segment within
     ``node_distance_mm`` names the region: the common iliac vessels (from the aortic
     bifurcation to the iliac bifurcation of each side) -> **CI**, external -> **EI**,
     internal -> **II**, aorta / inferior vena cava -> **RP**; the obturator (within 18 mm
     of and medial to ``Obturator_Int_*``; Taylor's obturator strip, CLINICAL.md 2c [V])
     and presacral regions (in front of S1-S3; CLINICAL.md 2a) compete by distance. A
     pelvic node is therefore never common iliac because of its height alone. Without
     the external / internal split (e.g. TotalSegmentator, whose iliac arteries hold the
     common and external segments together) the rule of thumb of CLINICAL.md 3b is used
     (MUSIQ open-source code [V-3p]): above the axial plane of the sacral promontory CI;
   * above the aortic bifurcation (landmark ``"AorticBifurcation"``, else
     ``"L4L5_Interspace"``; at L4, CLINICAL.md section 9) -> **RP**; above the top of
     ``VB_T12`` when the atlas has it -> **SD**;
   * below the pelvic brim, caudal to the lowest hip bone (``Bone_Ilium_*``,
     ``Bone_Ischium_*``, ``PubicSymphys``) -> **OE**; at the femoral-head level and
     lateral to the medial edge of the femoral head, or in front of the pubic symphysis
     -> **OE** (inguinal when anterior to the femoral-head centre);
   * a pelvic lesion in none of the regions is **OP** (perirectal when within 10 mm of
     the rectum; otherwise flagged "region uncertain").

**Uncertain calls.** A lesion near the border of two categories or regions is staged by
where its centroid lies and carries an :class:`UncertainCall` (in :attr:`Stage.uncertain`,
with both candidates; ``region_uncertain`` and a note on the lesion): within
``bed_border_mm`` of the prostate-bed region's border with a nodal region on the other
side (Tr vs N1(OP/PS/OB...)), within ``junction_mm`` of the iliac bifurcation level of
its side (CI vs EI/II) or of the aortic bifurcation level (CI vs RP).

The **common iliac** region is N in PROMISE V1's template [U] but M1a in the V2
calculators and the AJCC convention (CLINICAL.md section 3b [V-3p]); the default
``common_iliac="M1a"`` follows V2/AJCC. Patient strings follow the UCLA form
("T0N0M0", "TrN1M0", "T0N1M1b"; CLINICAL.md section 10a): ``N1`` stands for any nodal
involvement and M for the highest distant category; the PROMISE form is in
:attr:`Stage.detailed`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from rtplan._masks import closing, crop_organs, largest_component, slices_between, union_of
from rtplan._memo import IdentityMemo
from rtplan._typing import BoolMask, FloatArray, Vec3
from rtplan._validation import bounding_box, check_choice, check_type
from rtplan.errors import (
    GridMismatchError,
    InvalidInputError,
    MissingStructureError,
    ProtocolError,
)
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesion, LesionRow, Lesions
from rtplan.protocol import Protocol as TreatmentProtocol
from rtplan.protocol import list_protocols, load_protocol
from rtplan.structures import StructureSet

__all__ = [
    "BED_ADJACENT_ORGANS",
    "BONE_STRUCTURES",
    "CATEGORIES",
    "M1C_ORGANS",
    "MIN_MIPSMA_SCORE",
    "NOT_COUNTED",
    "OLIGOMETASTATIC_MAX_LESIONS",
    "OVERRIDES",
    "PERIRECTAL_REGION",
    "REGION_NAMES",
    "AtlasLike",
    "Stage",
    "StagingRules",
    "UncertainCall",
    "bed_region_missing",
    "check_atlas",
    "is_counted",
    "landmark_z_mm",
    "prostate_bed_region",
    "stage",
]

#: Per-lesion miTNM categories, lowest to highest for M.
CATEGORIES: tuple[str, ...] = ("Tr", "N1", "M1a", "M1b", "M1c")

#: Category prefix of a lesion that reads negative and is not counted, e.g.
#: ``"not counted (miPSMA 1)"`` (see :data:`MIN_MIPSMA_SCORE`).
NOT_COUNTED = "not counted"

#: Lowest miPSMA expression score that reads positive: PROMISE V2 reads scores 0 (uptake
#: <= blood pool) and 1 (<= liver) as negative, 2 and 3 as positive (Seifert et al., Eur
#: Urol 2023, via open-source calculators; CLINICAL.md section 3c [V-3p]).
MIN_MIPSMA_SCORE = 2

#: Most distant lesions still called oligometastatic: STOMP (Ost et al., J Clin Oncol
#: 2018) and ORIOLE (Phillips et al., JAMA Oncol 2020), the trials of metastasis-directed
#: therapy to defer ADT, both enrolled men with at most 3 metastases (CLINICAL.md 4d [V]).
#: SABR-COMET treated 1-5 (any primary); pass ``max_oligo_lesions=5`` to follow it.
OLIGOMETASTATIC_MAX_LESIONS = 3

#: Region name of an "other pelvic" node next to the rectum (perirectal / mesorectal).
PERIRECTAL_REGION = "other pelvic (perirectal)"

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
_PELVIC_CODES = ("II", "EI", "OB", "PS", "OP", "CI", "RP")

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

_EI_VESSELS = {"L": ("A_Iliac_Ext_L", "V_Iliac_Ext_L"), "R": ("A_Iliac_Ext_R", "V_Iliac_Ext_R")}
_II_VESSELS = {"L": ("A_Iliac_Int_L", "V_Iliac_Int_L"), "R": ("A_Iliac_Int_R", "V_Iliac_Int_R")}
_CI_VESSELS = {"L": ("A_Iliac_L", "V_Iliac_L"), "R": ("A_Iliac_R", "V_Iliac_R")}
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
_SIDES = ("L", "R")
_T = TypeVar("_T")


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


def is_counted(lesion: Lesion) -> bool:
    """Whether a staged lesion drives the stage (its category is one of :data:`CATEGORIES`).

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> from rtplan.structures import Structure
    >>> g = ImageGrid(shape=(1, 1, 1), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0))
    >>> s = Structure("L1", np.ones(g.shape, bool), g)
    >>> is_counted(Lesion(id=1, name="L1", structure=s, category="N1"))
    True
    >>> is_counted(Lesion(id=1, name="L1", structure=s, category="not counted (miPSMA 1)"))
    False
    """
    return lesion.category in CATEGORIES


@dataclass(frozen=True)
class StagingRules:
    """Distances and fractions used to locate lesions; all are tool defaults.

    Parameters
    ----------
    node_distance_mm : float
        A node belongs to a vessel segment (CI, EI, II, RP) when its centroid lies within
        this distance of the vessels (tool default 20 mm: the 7 mm RTOG vessel margin,
        CLINICAL.md section 2a, plus the radius of an enlarged node).
    obturator_distance_mm : float
        Reach of the obturator region medial to the obturator internus (18 mm, the
        width of Taylor's obturator strip, CLINICAL.md section 2c [V]).
    presacral_distance_mm : float
        Reach of the presacral region anterior to the sacrum (tool default 20 mm;
        the CTV strip is 10 mm, CLINICAL.md section 2c).
    presacral_half_width_mm : float
        How far from the midline a presacral node may lie (tool default 20 mm).
    bed_tolerance_mm : float
        A lesion whose centroid lies outside the prostate-bed region but within this
        distance of it, with no nodal region to call it, is a local recurrence (tool
        default 5 mm, for registration and contouring uncertainty).
    bed_border_mm : float
        Width of the band on either side of the prostate-bed region's border where a
        lesion that a nodal region could also claim is flagged uncertain (tool default
        5 mm).
    junction_mm : float
        A node whose centroid lies within this height of the iliac bifurcation of its
        side (CI vs EI / II) or of the aortic bifurcation (CI vs RP) is flagged uncertain
        (tool default 5 mm: "a few mm", about the radius of a small node).
    perirectal_distance_mm : float
        An "other pelvic" node within this distance of the rectum is perirectal and not
        flagged uncertain (tool default 10 mm).
    local_invasion_mm : float
        A lesion lying in an organ next to the bed (:data:`BED_ADJACENT_ORGANS`) whose
        centroid is within this distance of the prostate-bed region is a local recurrence
        invading that organ, not an organ metastasis (tool default 10 mm: the region
        already holds the posterior bladder wall and the bladder neck).
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
    bed_border_mm: float = 5.0
    junction_mm: float = 5.0
    perirectal_distance_mm: float = 10.0
    local_invasion_mm: float = 10.0
    inside_fraction: float = 0.5
    midline_tolerance_mm: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "node_distance_mm",
            "obturator_distance_mm",
            "presacral_distance_mm",
            "presacral_half_width_mm",
            "bed_tolerance_mm",
            "bed_border_mm",
            "junction_mm",
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


# ---------------------------------------------------------------------------- mask helpers


def _z_extent(ss: StructureSet, name: str, grid: ImageGrid) -> tuple[float, float] | None:
    key = ss.resolve(name)
    if key is None or ss[key].is_empty:
        return None
    lo, hi = ss[key].bounds_mm[2]
    half = grid.spacing_mm[0] / 2
    return (lo + half, hi - half)  # centres of the lowest and highest slices


def landmark_z_mm(atlas: AtlasLike, name: str) -> float:
    """Height (LPS z, mm) of a landmark, from ``atlas.landmarks`` or derived from structures.

    Derivations used when the landmark is absent: ``PubicSymphysis_Top`` (top slice of
    ``PubicSymphys``), ``L5S1_Interspace`` / ``L4L5_Interspace`` (midway between the
    vertebral bodies), ``AorticBifurcation`` (lowest slice of ``A_Aorta``),
    ``FemurHead_Top_L/R`` (top of ``Femur_Head_L/R``), ``S3_Bottom`` (lowest slice of
    ``VB_S3``), ``PenileBulb_Top`` (top of ``PenileBulb``), ``IliacBifurcation_L/R``
    (lowest slice of the common iliac artery ``A_Iliac_L/R``). A structure that reaches
    the scan's top slice (for a landmark at its top) or bottom slice (at its bottom) is cut
    by the scan edge: the landmark is not derived from it.

    Parameters
    ----------
    atlas : AtlasLike
        Anatomy with ``grid``, ``structures`` and ``landmarks``.
    name : str
        Landmark key, e.g. ``"L5S1_Interspace"``.

    Returns
    -------
    float
        z in mm.

    Raises
    ------
    TypeError
        When ``atlas`` is not an anatomy or ``name`` not a string.
    MissingStructureError
        When the landmark is absent and cannot be derived (the message says when the
        structure is cut by the scan edge).

    Examples
    --------
    >>> from rtplan.structures import Structure
    >>> g = ImageGrid(shape=(6, 4, 4), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> ps = np.zeros(g.shape, bool); ps[1:4, 1:3, 1:3] = True
    >>> from types import SimpleNamespace
    >>> anatomy = SimpleNamespace(grid=g, landmarks={"VUA": (0.0, 0.0, 1.0)},
    ...                           structures=StructureSet([Structure("PubicSymphys", ps, g)]))
    >>> landmark_z_mm(anatomy, "VUA"), landmark_z_mm(anatomy, "PubicSymphysis_Top")
    (1.0, 6.0)
    """
    check_atlas(atlas)
    check_type(name, str, name="name")
    z = _derived_landmark_z(atlas, name)
    if z is None:
        cut = _cut_by_scan_edge(atlas, name)
        raise MissingStructureError(
            f"landmark {name!r} is not in the anatomy's landmarks "
            f"({', '.join(atlas.landmarks) or 'none'}) and cannot be derived from its structures"
            + (f": {cut}" if cut else "")
        )
    return z


_TOP_OF = {
    "PubicSymphysis_Top": "PubicSymphys",
    "FemurHead_Top_L": "Femur_Head_L",
    "FemurHead_Top_R": "Femur_Head_R",
    "PenileBulb_Top": "PenileBulb",
}
_BOTTOM_OF = {
    "AorticBifurcation": "A_Aorta",
    "S3_Bottom": "VB_S3",
    "IliacBifurcation_L": "A_Iliac_L",
    "IliacBifurcation_R": "A_Iliac_R",
}
_BETWEEN = {"L5S1_Interspace": ("VB_L5", "VB_S1"), "L4L5_Interspace": ("VB_L4", "VB_L5")}


def _derived_landmark_z(atlas: AtlasLike, name: str) -> float | None:
    """The z of a landmark given or derived (see :func:`landmark_z_mm`), ``None`` if neither."""
    grid, ss = atlas.grid, atlas.structures
    if name in atlas.landmarks:
        return float(atlas.landmarks[name][2])
    if _cut_by_scan_edge(atlas, name):
        return None
    if name in _TOP_OF and (ext := _z_extent(ss, _TOP_OF[name], grid)) is not None:
        return ext[1]
    if name in _BOTTOM_OF and (ext := _z_extent(ss, _BOTTOM_OF[name], grid)) is not None:
        return ext[0]
    if name in _BETWEEN:
        upper, lower = (_z_extent(ss, n, grid) for n in _BETWEEN[name])
        if upper is not None and lower is not None:
            return (upper[0] + lower[1]) / 2
    return None


def _cut_by_scan_edge(atlas: AtlasLike, name: str) -> str:
    """Why a landmark at the top (bottom) of a structure cannot be derived, or ``""``.

    When the structure reaches the scan's top (bottom) slice, its true top (bottom) lies
    outside the scan: the edge slice would be taken for the landmark silently.
    """
    grid, ss = atlas.grid, atlas.structures
    z = grid.axis_coordinates_mm()[0]
    edges = {"top": float(z.max()), "bottom": float(z.min())}
    for table, end, pick in ((_TOP_OF, "top", 1), (_BOTTOM_OF, "bottom", 0)):
        organ = table.get(name)
        ext = None if organ is None else _z_extent(ss, organ, grid)
        if ext is not None and abs(ext[pick] - edges[end]) < 0.5 * grid.spacing_mm[0]:
            return (
                f"{organ} reaches the {end} slice of the scan, so its {end} (the landmark) "
                "lies outside the scan; give the landmark explicitly"
            )
    return ""


def _landmark_xyz(atlas: AtlasLike, name: str) -> Vec3 | None:
    p = atlas.landmarks.get(name)
    return None if p is None else (float(p[0]), float(p[1]), float(p[2]))


# ---------------------------------------------------------------------------- prostate bed
#: Bone, rectum, muscle and bowel structures cropped from the prostate-bed region.
_BED_BONES = (
    "Bone_Ilium_L",
    "Bone_Ilium_R",
    "Bone_Ischium_L",
    "Bone_Ischium_R",
    "Bone_Pelvic",
    "PubicSymphys",
    "Sacrum",
    "Coccyx",
    "Femur_Head_L",
    "Femur_Head_R",
)
_BED_RECTUM = ("Rectum", "Canal_Anal")
_BED_MUSCLES = (
    "Iliopsoas_L",
    "Iliopsoas_R",
    "Obturator_Int_L",
    "Obturator_Int_R",
    "Levator_Ani",
)
#: Bowel loops (TG-263 ``Bowel``, ``Bowel_Small``, ``Bowel_Large``, ``Colon``,
#: ``Colon_Sigmoid``); the peritoneal space ``Spc_Bowel`` is not bowel and is not cropped.
_BED_BOWEL = ("Bowel", "Bowel_Small", "Bowel_Large", "Colon", "Colon_Sigmoid")
#: What the prostate-bed region needs: organs, and one of the inferior-border references.
_BED_ORGANS = ("Bladder", "Rectum", "PubicSymphys")


def _column_edge(mask2d: BoolMask, y_mm: FloatArray, *, posterior: bool) -> FloatArray:
    """Per column: the most posterior (max y) or anterior (min y) y of the mask, else NaN."""
    yy = np.broadcast_to(y_mm[:, None], mask2d.shape)
    fill = -np.inf if posterior else np.inf
    vals = np.where(mask2d, yy, fill)
    edge: FloatArray = (vals.max(axis=0) if posterior else vals.min(axis=0)).astype(float)
    edge[~mask2d.any(axis=0)] = np.nan
    return edge


def _fill_columns(values: FloatArray) -> FloatArray:
    """Fill NaN columns with the nearest defined column (constant beyond the ends)."""
    ok = np.isfinite(values)
    if ok.all() or not ok.any():
        return values
    idx = np.arange(values.size)
    filled: FloatArray = np.interp(idx, idx[ok], values[ok])
    return filled


def _nearest_slice(per_slice: Mapping[int, _T], k: int) -> _T | None:
    """The value of slice ``k``, else of the nearest slice that has one (lower on a tie)."""
    if k in per_slice:
        return per_slice[k]
    if not per_slice:
        return None
    nearest = min(per_slice, key=lambda kk: (abs(kk - k), kk))
    return per_slice[nearest]


def _as_protocol(protocol: str | Path | TreatmentProtocol) -> TreatmentProtocol:
    check_type(
        protocol,
        (str, os.PathLike, TreatmentProtocol),
        name="protocol",
        expected_text="a protocol name, a path to a protocol file or a Protocol",
    )
    if isinstance(protocol, str) and protocol in _shipped_names():
        return _shipped_protocol(protocol)
    return load_protocol(protocol)


@functools.cache
def _shipped_names() -> frozenset[str]:
    return frozenset(list_protocols())


@functools.cache
def _shipped_protocol(name: str) -> TreatmentProtocol:
    """A shipped protocol by name, read once (shipped files are package data)."""
    return load_protocol(name)


@dataclass(frozen=True)
class _BedRules:
    """The ``[ctv.prostate_bed]`` values of a protocol (mm and choices).

    ``lateral_cap_mm`` caps the distance from the midline below the top of the symphysis
    (``None``: the levator ani / obturator internus border of RTOG 2010, no cap).
    """

    inferior_below_vua_mm: float
    superior_reference: str
    superior_above_symphysis_mm: float
    bladder_wall_band_mm: float
    lateral_halfwidth_mm: float
    lateral_above_symphysis: str
    mesorectal_offset_mm: float
    smoothing_mm: float
    lateral_cap_mm: float | None = None

    @classmethod
    def from_protocol(cls, proto: TreatmentProtocol) -> _BedRules:
        def mm(key: str, default: float | None = None) -> float:
            return proto.number(f"ctv.prostate_bed.{key}", default)

        cap = "ctv.prostate_bed.lateral_cap_mm"
        return cls(
            inferior_below_vua_mm=mm("inferior_below_vua_mm"),
            superior_reference=proto.text("ctv.prostate_bed.superior_reference"),
            superior_above_symphysis_mm=mm("superior_above_symphysis_mm"),
            bladder_wall_band_mm=mm("bladder_wall_band_mm"),
            lateral_halfwidth_mm=mm("lateral_halfwidth_mm"),
            lateral_above_symphysis=proto.text(
                "ctv.prostate_bed.lateral_above_symphysis", "fascia"
            ),
            mesorectal_offset_mm=mm("mesorectal_offset_mm"),
            smoothing_mm=mm("smoothing_mm", 0.0),
            lateral_cap_mm=None if proto.get(cap) is None else proto.number(cap),
        )


@dataclass(frozen=True)
class _BedLevels:
    """Borders of the prostate-bed region: z levels and the midline (LPS mm)."""

    z_inf: float
    z_sup: float
    z_symphysis_top: float
    x_mid: float


def bed_region_missing(atlas: AtlasLike) -> list[str]:
    """What the anatomy lacks to build the prostate-bed region (empty: it can be built).

    The region (and the bed CTV) needs ``Bladder``, ``Rectum`` and ``PubicSymphys``, and
    for its inferior border the ``VUA`` landmark or a ``PenileBulb`` (structure or
    ``PenileBulb_Top`` landmark).

    Parameters
    ----------
    atlas : AtlasLike
        The anatomy.

    Returns
    -------
    list of str
        Names of what is missing, e.g. ``["Rectum", "VUA or PenileBulb"]``.
    """
    check_atlas(atlas)
    ss = atlas.structures
    missing = [n for n in _BED_ORGANS if n not in ss or ss[n].is_empty]
    if "VUA" not in atlas.landmarks and _derived_landmark_z(atlas, "PenileBulb_Top") is None:
        missing.append("VUA or PenileBulb")
    return missing


def _bed_levels(atlas: AtlasLike, rules: _BedRules) -> _BedLevels:
    """Inferior and superior borders, the top of the symphysis and the midline.

    Inferior: ``inferior_below_vua_mm`` below the VUA, or the slice above the penile bulb
    without a VUA (Michalski). Superior: the vas deferens cut end, or
    ``superior_above_symphysis_mm`` above the symphysis. Midline: the VUA's x, else the
    symphysis centroid's.
    """
    ss = atlas.structures
    z_ps = landmark_z_mm(atlas, "PubicSymphysis_Top")
    vua = _landmark_xyz(atlas, "VUA")
    if vua is not None:
        z_inf = vua[2] - rules.inferior_below_vua_mm
    else:  # Michalski: if the VUA is not visible, the slice above the penile bulb
        bulb = _derived_landmark_z(atlas, "PenileBulb_Top")
        if bulb is None:
            raise MissingStructureError(
                "CTV_ProstateBed needs the 'VUA' landmark (vesicourethral anastomosis) or, "
                "failing it, a 'PenileBulb' structure or 'PenileBulb_Top' landmark for its "
                "inferior border"
            )
        z_inf = bulb + atlas.grid.spacing_mm[0]
    cut_end = _landmark_xyz(atlas, "VasDeferens_CutEnd")
    if rules.superior_reference == "vas_deferens" and cut_end is not None:
        z_sup = cut_end[2]
    else:
        z_sup = z_ps + rules.superior_above_symphysis_mm
    if z_sup <= z_inf:
        raise ProtocolError(
            f"CTV_ProstateBed: superior border z={z_sup:.1f} mm is not above the inferior "
            f"border z={z_inf:.1f} mm; check the VUA / symphysis landmarks"
        )
    x_mid = vua[0] if vua is not None else ss["PubicSymphys"].centroid_mm[0]
    return _BedLevels(z_inf, z_sup, z_ps, x_mid)


@dataclass(frozen=True)
class _BedPlanes:
    """What the prostate-bed region is drawn between on each slice.

    Attributes
    ----------
    y_mm, x_mm : ndarray of float
        Row and column coordinates (mm); ``Y``, ``X`` the same on a whole slice.
    bladder, rectum : ndarray of bool
        Full masks (the rectum includes the anal canal).
    lateral_below, lateral_above : tuple of ndarray of bool
        Muscles bounding the region laterally below the symphysis top (levator ani and
        obturator internus) and above it (obturator internus).
    pubis_edge : dict of int to float
        Slice -> posterior edge (y, mm) of the symphysis near the midline.
    rectum_front : dict of int to float
        Slice -> anterior surface (y, mm) of the rectum.
    bladder_back : dict of int to ndarray of float
        Slice above the symphysis -> posterior edge (y, mm) of the bladder per column.
    """

    y_mm: FloatArray
    x_mm: FloatArray
    Y: FloatArray
    X: FloatArray
    bladder: BoolMask
    rectum: BoolMask
    lateral_below: tuple[BoolMask, ...]
    lateral_above: tuple[BoolMask, ...]
    pubis_edge: dict[int, float]
    rectum_front: dict[int, float]
    bladder_back: dict[int, FloatArray]


def _bed_planes(atlas: AtlasLike, lv: _BedLevels, slices: Sequence[int]) -> _BedPlanes:
    """Organ masks and their reference edges, per slice, for the prostate-bed region."""
    grid, ss = atlas.grid, atlas.structures
    z_mm, y_mm, x_mm = grid.axis_coordinates_mm()
    bladder = ss["Bladder"].mask
    rectum = union_of(ss, _BED_RECTUM, grid)
    pubis = ss["PubicSymphys"].mask
    obturators = tuple(union_of(ss, (n,), grid) for n in ("Obturator_Int_L", "Obturator_Int_R"))
    central = np.abs(x_mm - lv.x_mid) <= 20.0
    pubis_edge = {
        int(k): float(np.nanmax(e[central]))
        for k in np.flatnonzero(pubis.any(axis=(1, 2)))
        if np.isfinite(e := _column_edge(pubis[k], y_mm, posterior=True))[central].any()
    }
    rectum_front = {
        int(k): float(np.nanmin(_column_edge(rectum[k], y_mm, posterior=False)))
        for k in np.flatnonzero(rectum.any(axis=(1, 2)))
    }
    bladder_back = {
        k: _fill_columns(_column_edge(bladder[k], y_mm, posterior=True))
        for k in slices
        if z_mm[k] > lv.z_symphysis_top + 1e-6 and bladder[k].any()
    }
    return _BedPlanes(
        y_mm=y_mm,
        x_mm=x_mm,
        Y=np.broadcast_to(y_mm[:, None], grid.shape[1:]),
        X=np.broadcast_to(x_mm[None, :], grid.shape[1:]),
        bladder=bladder,
        rectum=rectum,
        lateral_below=(union_of(ss, ("Levator_Ani",), grid), *obturators),
        lateral_above=obturators,
        pubis_edge=pubis_edge,
        rectum_front=rectum_front,
        bladder_back=bladder_back,
    )


def _bed_posterior(pl: _BedPlanes, k: int) -> FloatArray | None:
    """Posterior border (y, mm, per column) on slice ``k``: the anterior rectal surface.

    Concave around the rectum's lateral aspects, at most halfway to its centre; the
    nearest slice's front where the rectum is absent; ``None`` without any rectum.
    """
    rectum = pl.rectum[k]
    post = _column_edge(rectum, pl.y_mm, posterior=False)
    if np.isfinite(post).any():
        front = np.nanmin(post)
        centre = float(pl.y_mm[rectum.any(axis=1)].mean())
        post = np.where(np.isfinite(post), post, front)
        return np.minimum(post, front + 0.5 * max(centre - front, 0.0))
    nearest = _nearest_slice(pl.rectum_front, k)
    return None if nearest is None else np.full(pl.x_mm.shape, nearest)


def _bed_anterior(
    pl: _BedPlanes, k: int, above: bool, band_mm: float
) -> tuple[FloatArray, BoolMask] | None:
    """Anterior border (y, mm, per column) on slice ``k`` and the bladder band kept there.

    Above the symphysis top: ``band_mm`` in front of the bladder's posterior wall (of the
    nearest slice with bladder). Below: the posterior edge of the symphysis, or the
    posterior band of a bladder neck reaching below it. ``None`` without either.
    """
    bladder = pl.bladder[k]
    back = _nearest_slice(pl.bladder_back, k) if above else None
    if back is not None:
        ant = back - band_mm
    else:
        edge = _nearest_slice(pl.pubis_edge, k)
        if edge is None:
            return None
        ant = np.full(pl.x_mm.shape, edge)
        if bladder.any():  # a bladder neck below the PS: its posterior band only
            neck = _column_edge(bladder, pl.y_mm, posterior=True)
            ant = np.where(np.isfinite(neck), np.maximum(ant, neck - band_mm), ant)
    keep_band: BoolMask = bladder & (pl.Y > ant[None, :])
    return ant, keep_band


def _medial_edges(
    muscles: Sequence[BoolMask], X: FloatArray, x_mid: float, fallback_mm: float
) -> tuple[FloatArray, FloatArray]:
    """Row-wise medial edges (x, mm) of muscles left and right of the midline.

    Each muscle's edge is taken row by row and carried to the rows it does not reach
    (nearest row), then the most medial muscle wins; ``x_mid -+ fallback_mm`` on a side
    without muscle.
    """
    ny = X.shape[0]
    left = np.full(ny, x_mid + fallback_mm)
    right = np.full(ny, x_mid - fallback_mm)
    found_left = found_right = False
    for m in muscles:
        part = m & (X > x_mid)
        if part.any():
            edge = _fill_columns(_finite_or_nan(np.where(part, X, np.inf).min(axis=1)))
            left = edge if not found_left else np.minimum(left, edge)
            found_left = True
        part = m & (X < x_mid)
        if part.any():
            edge = _fill_columns(_finite_or_nan(np.where(part, X, -np.inf).max(axis=1)))
            right = edge if not found_right else np.maximum(right, edge)
            found_right = True
    return left, right


def _finite_or_nan(values: FloatArray) -> FloatArray:
    return np.where(np.isfinite(values), values, np.nan)


def _bed_lateral(
    pl: _BedPlanes, k: int, above: bool, x_mid: float, rules: _BedRules
) -> tuple[FloatArray, FloatArray]:
    """Left and right borders (x, mm, per row) on slice ``k``.

    Below the symphysis top: the medial edge of the levator ani / obturator internus
    (RTOG 2010), capped at ``lateral_cap_mm`` from the midline only when the protocol
    sets that option; ``lateral_halfwidth_mm`` on a side without either muscle. Above
    it: the half-width (the fascia) but never past the obturator internus, or the
    obturator internus itself with ``lateral_above_symphysis = "obturator_internus"``.
    """
    halfwidth = rules.lateral_halfwidth_mm
    muscles = [m[k] for m in (pl.lateral_above if above else pl.lateral_below)]
    medial_left, medial_right = _medial_edges(muscles, pl.X, x_mid, halfwidth)
    if above and rules.lateral_above_symphysis == "obturator_internus":
        return medial_left, medial_right
    cap = halfwidth if above else rules.lateral_cap_mm
    if cap is None:
        return medial_left, medial_right
    left = np.minimum(np.full(pl.y_mm.shape, x_mid + cap), medial_left)
    right = np.maximum(np.full(pl.y_mm.shape, x_mid - cap), medial_right)
    return left, right


def _bed_slice(
    pl: _BedPlanes, k: int, above: bool, lv: _BedLevels, rules: _BedRules
) -> tuple[BoolMask, BoolMask] | None:
    """The region on slice ``k`` and the bladder band it keeps; ``None`` when unbounded."""
    post = _bed_posterior(pl, k)
    if post is None:
        return None
    if above:
        post = post - rules.mesorectal_offset_mm
    anterior = _bed_anterior(pl, k, above, rules.bladder_wall_band_mm)
    if anterior is None:
        return None
    ant, keep_band = anterior
    left, right = _bed_lateral(pl, k, above, lv.x_mid, rules)
    rows = (pl.Y > ant[None, :]) & (pl.Y < post[None, :])
    region: BoolMask = rows & (pl.X < left[:, None]) & (pl.X > right[:, None])
    return region, keep_band


#: The last prostate-bed regions drawn: one planning run draws the same region several
#: times (the lesion check, each :func:`stage` call, the bed CTV), 0.3 s each on a
#: 512 x 512 CT. Keyed by the structures (identity), grid, landmark values and rules.
_BED_MEMO: IdentityMemo[tuple[BoolMask, _BedLevels]] = IdentityMemo(2)


def _bed_region(atlas: AtlasLike, rules: _BedRules) -> tuple[BoolMask, _BedLevels]:
    """The prostate-bed region of ``atlas`` under ``rules`` and its levels (read-only)."""
    structures = tuple(atlas.structures.values())
    landmarks = tuple(
        sorted((str(k), tuple(float(c) for c in v)) for k, v in atlas.landmarks.items())
    )
    values = (atlas.grid, landmarks, rules)
    found = _BED_MEMO.get(structures, values)
    if found is None:
        found = _draw_bed_region(atlas, rules)
        found[0].flags.writeable = False  # shared: callers get copies or read it
        _BED_MEMO.put(structures, values, found)
    return found


def _draw_bed_region(atlas: AtlasLike, rules: _BedRules) -> tuple[BoolMask, _BedLevels]:
    """Draw the prostate-bed region of ``atlas`` under ``rules`` (may be empty)."""
    grid, ss = atlas.grid, atlas.structures
    ss.require(list(_BED_ORGANS), purpose="CTV_ProstateBed (RTOG 2010)")
    lv = _bed_levels(atlas, rules)
    z_mm = grid.axis_coordinates_mm()[0]
    slices = [k for k in range(grid.shape[0]) if lv.z_inf - 1e-6 <= z_mm[k] <= lv.z_sup + 1e-6]
    planes = _bed_planes(atlas, lv, slices)
    region = np.zeros(grid.shape, bool)
    keep_band = np.zeros(grid.shape, bool)
    for k in slices:
        drawn = _bed_slice(planes, k, z_mm[k] > lv.z_symphysis_top + 1e-6, lv, rules)
        if drawn is not None:
            region[k], keep_band[k] = drawn
    region = closing(region, grid, rules.smoothing_mm)
    region[~slices_between(grid, lv.z_inf, lv.z_sup)] = False
    box = bounding_box(region)
    if box is None:
        return region, lv
    # the rest only removes voxels: done on the region's box
    local = region[box] & ~(planes.bladder[box] & ~keep_band[box])
    local = crop_organs(
        local,
        ss,
        grid,
        {_BED_BONES: 0.0, _BED_RECTUM: 0.0, _BED_MUSCLES: 0.0, _BED_BOWEL: 0.0},
        box=box,
    )
    region = np.zeros(grid.shape, bool)
    region[box] = local
    return largest_component(region), lv


def prostate_bed_region(
    atlas: AtlasLike, protocol: str | Path | TreatmentProtocol = "nrg_salvage"
) -> BoolMask:
    """The prostate bed as the RTOG 2010 consensus draws its CTV (Michalski et al. 2010).

    The region the bed CTV (:func:`rtplan.volumes.ctv_prostate_bed`) is and the region
    in which :func:`stage` calls a lesion a local recurrence (miTr). Built slice by slice
    between the organs, with the borders of ``[ctv.prostate_bed]`` below and above the
    top of the pubic symphysis (PS):

    ========== ======================================= ===========================================
    border     below the top of the PS                 above the top of the PS
    ========== ======================================= ===========================================
    inferior   ``inferior_below_vua_mm`` below the     --
               VUA landmark (or the slice above the
               penile bulb when there is no VUA)
    superior   --                                      ``VasDeferens_CutEnd`` or
                                                       ``superior_above_symphysis_mm`` above the PS
    anterior   posterior edge of ``PubicSymphys``;     posterior ``bladder_wall_band_mm`` of the
               where the bladder neck reaches below    bladder (the band is kept)
               the PS, its posterior band as above
    posterior  anterior surface of ``Rectum``          anterior surface of the rectum, moved
               (``Canal_Anal``), column by column,     ``mesorectal_offset_mm`` forward (stands in
               concave around its lateral aspects      for the mesorectal fascia)
               at most halfway to its centre
    lateral    medial edge of ``Levator_Ani`` /        ``lateral_halfwidth_mm`` from the midline
               ``Obturator_Int_L/R`` (row by row);     (stands in for the sacrorectogenitopubic
               a cap at ``lateral_cap_mm`` from the    fascia), or the obturator internus
               midline only when the protocol sets it
    ========== ======================================= ===========================================

    then smoothed (closing by ``smoothing_mm``), cropped from bone, rectum, muscle, bowel
    loops and the bladder except its posterior band, and reduced to its largest piece.

    Parameters
    ----------
    atlas : AtlasLike
        Anatomy with ``Bladder``, ``Rectum`` and ``PubicSymphys`` (required),
        ``Levator_Ani``, ``Obturator_Int_L/R``, ``Canal_Anal`` (used when present), the
        landmarks ``VUA`` (else ``PenileBulb_Top`` / a ``PenileBulb``),
        ``PubicSymphysis_Top`` (else derived) and optionally ``VasDeferens_CutEnd``.
    protocol : str, path or Protocol
        Reads ``[ctv.prostate_bed]``.

    Returns
    -------
    ndarray of bool, shape ``atlas.grid.shape``
        May be empty when the organs do not reach the borders.

    Raises
    ------
    TypeError
        When ``atlas`` is not an anatomy or ``protocol`` not a protocol.
    MissingStructureError
        When a required organ or landmark is missing (see :func:`bed_region_missing`).
    ProtocolError
        When the superior border is not above the inferior one.
    """
    check_atlas(atlas)
    rules = _BedRules.from_protocol(_as_protocol(protocol))
    return _bed_region(atlas, rules)[0].copy()


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

    def inside(self, point: FloatArray, name: str) -> bool:
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

    def distance(self, point: FloatArray, names: Sequence[str]) -> tuple[float, FloatArray | None]:
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
        ys: list[FloatArray] = []
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
    by_segment: dict[str, bool]  # side -> common / external / internal iliac vessels present
    iliac_bifurcation_z: dict[str, float]  # side -> level of the iliac bifurcation


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
    by_segment, iliac_bif = _vessel_segments(geo)
    if not all(by_segment.values()):
        sides = [s for s in _SIDES if not by_segment[s]]
        notes.append(
            f"no common / external / internal iliac vessel split on side {', '.join(sides)}: "
            "common iliac nodes there are called by the pelvic-brim plane (rule of thumb)"
        )
    lv = _Levels(
        mid,
        brim,
        bif,
        sd,
        lowest,
        s3,
        _femoral_levels(geo),
        _symphysis_level(geo),
        by_segment,
        iliac_bif,
    )
    return lv, notes


def _vessel_segments(geo: _Geometry) -> tuple[dict[str, bool], dict[str, float]]:
    """Per side: whether the three iliac segments are present, and the iliac bifurcation z.

    The bifurcation is the ``IliacBifurcation_<side>`` landmark, else the lowest slice of
    the common iliac artery (where the external and internal iliac arteries start).
    """
    by_segment: dict[str, bool] = {}
    bifurcation: dict[str, float] = {}
    for side in _SIDES:
        groups = (_CI_VESSELS[side], _EI_VESSELS[side], _II_VESSELS[side])
        by_segment[side] = all(geo.present(g) for g in groups)
        z = geo.landmark_z(f"IliacBifurcation_{side}")
        if z is None:
            zr = geo.z_range((f"A_Iliac_{side}",))
            z = None if zr is None else zr[0]
        if z is not None:
            bifurcation[side] = z
    return by_segment, bifurcation


def _femoral_levels(geo: _Geometry) -> dict[str, tuple[float, float, float]]:
    femoral: dict[str, tuple[float, float, float]] = {}
    for side in _SIDES:
        names = geo.present((f"Femur_Head_{side}",))
        if not names:
            continue
        s = geo.ss[names[0]]
        (x0, x1), _, (_, z1) = s.bounds_mm
        medial = x0 if side == "L" else x1  # left is +x: its medial edge is the low x
        top = geo.landmark_z(f"FemurHead_Top_{side}")
        femoral[side] = (medial, s.centroid_mm[1], z1 if top is None else top)
    return femoral


def _symphysis_level(geo: _Geometry) -> tuple[float, float] | None:
    if not geo.present(("PubicSymphys",)):
        return None
    s = geo.ss["PubicSymphys"]
    _, (y0, _), (_, z1) = s.bounds_mm
    top = geo.landmark_z("PubicSymphysis_Top")
    return (y0, z1 if top is None else top)


class _BedDistance:
    """Signed distance (mm) from a point to the prostate-bed region: negative inside.

    Distances are exact to about half a voxel (voxel-centre distance transforms) and
    known within ``reach_mm`` of the region; farther points are ``inf`` away.
    """

    def __init__(self, mask: BoolMask, grid: ImageGrid, reach_mm: float) -> None:
        box = bounding_box(mask)
        assert box is not None
        pad = [math.ceil(reach_mm / s) + 1 for s in grid.spacing_mm]
        self.start = np.array([max(b.start - p, 0) for b, p in zip(box, pad)])
        stop = [min(b.stop + p, n) for b, p, n in zip(box, pad, grid.shape)]
        local = mask[tuple(slice(a, b) for a, b in zip(self.start, stop))]
        self.local = local
        self.grid = grid
        self.half_voxel = 0.5 * min(grid.spacing_mm)

    # The transforms are computed at the first point inside the box: most lesions
    # (nodes, bone) lie far from the bed and never need them.
    @functools.cached_property
    def outside(self) -> FloatArray:
        """Distance (mm) of each voxel of the box outside the region to the region."""
        return np.asarray(
            ndimage.distance_transform_edt(~self.local, sampling=self.grid.spacing_mm), float
        )

    @functools.cached_property
    def depth(self) -> FloatArray:
        """Distance (mm) of each voxel of the box inside the region to its outside."""
        return np.asarray(
            ndimage.distance_transform_edt(self.local, sampling=self.grid.spacing_mm), float
        )

    def __call__(self, point: FloatArray) -> float:
        idx = self.grid.lps_to_nearest_index(point) - self.start
        if np.any(idx < 0) or np.any(idx >= self.local.shape):
            return math.inf
        k = tuple(int(i) for i in idx)
        if self.local[k]:
            return -max(float(self.depth[k]) - self.half_voxel, 0.0)
        return max(float(self.outside[k]) - self.half_voxel, 0.0)


def _bed_distance(
    atlas: AtlasLike, geo: _Geometry, proto: TreatmentProtocol, rules: StagingRules
) -> tuple[_BedDistance | None, list[str]]:
    """The local-recurrence region (derived bed united with ``ProstateBed``) and notes."""
    notes: list[str] = []
    region = np.zeros(atlas.grid.shape, bool)
    missing = bed_region_missing(atlas)
    if not missing:
        region |= _bed_region(atlas, _BedRules.from_protocol(proto))[0]
    given = geo.present(("ProstateBed",))
    if given:
        region |= geo.ss[given[0]].mask
    if missing and not given:
        notes.append(
            "atlas has no ProstateBed and cannot build the prostate-bed region (missing "
            f"{', '.join(missing)}): local recurrence (Tr) cannot be recognised"
        )
    elif missing:
        notes.append(
            f"prostate bed (Tr) taken from the ProstateBed structure only (missing "
            f"{', '.join(missing)} to derive it)"
        )
    elif not given:
        notes.append(
            "prostate bed (Tr) derived from the anatomy with the RTOG 2010 bed-CTV rules "
            f"of protocol {proto.name!r} (no ProstateBed structure)"
        )
    if not region.any():
        return None, notes
    reach = max(rules.bed_tolerance_mm, rules.bed_border_mm, rules.local_invasion_mm) + 5.0
    return _BedDistance(region, atlas.grid, reach), notes


# ---------------------------------------------------------------------------- per lesion
@dataclass
class _Located:
    category: str  # "Tr", "N", "CI", "M1a", "M1b", "M1c"
    region: str
    code: str
    uncertain: bool = False
    notes: list[str] = field(default_factory=list)
    alternative: tuple[str, str] | None = None  # (category, code) of the other candidate
    reason: str = ""

    def flag(self, alternative: tuple[str, str], reason: str) -> None:
        """Mark the call uncertain between this category and ``alternative``."""
        self.uncertain = True
        self.alternative = alternative
        self.reason = reason


def _side(x: float, mid: float, tolerance_mm: float) -> str:
    if abs(x - mid) <= tolerance_mm:
        return "midline"
    return "L" if x > mid else "R"


def _node(code: str) -> _Located:
    """A node located in the region ``code`` (CI and RP keep their own category)."""
    category = {"CI": "CI", "RP": "M1a"}.get(code, "N")
    return _Located(category, REGION_NAMES[code], code)


def _retroperitoneal(c: FloatArray, geo: _Geometry, lv: _Levels, rules: StagingRules) -> _Located:
    """A node above the aortic bifurcation: RP (uncertain CI vs RP near the bifurcation)."""
    loc = _node("RP")
    vessels = geo.present(_RP_VESSELS)
    if vessels:
        d, _ = geo.distance(c, vessels)
        if d > rules.node_distance_mm:
            loc.uncertain = True
            loc.notes.append(f"{d:.0f} mm from the {loc.region} vessels")
    assert lv.bifurcation_z is not None
    dz = float(c[2]) - lv.bifurcation_z
    ci = geo.present((*_CI_VESSELS["L"], *_CI_VESSELS["R"]))
    if dz <= rules.junction_mm and ci and geo.distance(c, ci)[0] <= rules.node_distance_mm:
        loc.flag(("CI", "CI"), f"{dz:.0f} mm above the aortic bifurcation")
    return loc


def _extrapelvic(c: FloatArray, lv: _Levels, side: str) -> _Located | None:
    """OE below the hip bones, lateral at the femoral heads, or in front of the symphysis."""
    x, y, z = (float(v) for v in c)
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
    return None


def _region_distances(
    c: FloatArray, geo: _Geometry, lv: _Levels, rules: StagingRules, side: str
) -> dict[str, float]:
    """Distance (mm) to each nodal region within its reach (vessel segments, OB, PS)."""
    x, y, z = (float(v) for v in c)
    groups: dict[str, tuple[str, ...]] = {
        "EI": (*_EI_VESSELS["L"], *_EI_VESSELS["R"]),
        "II": (*_II_VESSELS["L"], *_II_VESSELS["R"]),
    }
    if lv.by_segment[side]:
        groups["CI"] = (*_CI_VESSELS["L"], *_CI_VESSELS["R"])
        groups["RP"] = _RP_VESSELS
    scores: dict[str, float] = {}
    for code, names in groups.items():
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
    return scores


def _flag_iliac_junction(
    loc: _Located, c: FloatArray, geo: _Geometry, lv: _Levels, rules: StagingRules, side: str
) -> None:
    """Flag CI vs EI / II for a node within ``junction_mm`` of its side's iliac bifurcation."""
    z_bif = lv.iliac_bifurcation_z.get(side)
    if z_bif is None or loc.code not in ("CI", "EI", "II") or not lv.by_segment[side]:
        return
    dz = float(c[2]) - z_bif
    if abs(dz) > rules.junction_mm:
        return
    where = f"{abs(dz):.0f} mm {'above' if dz > 0 else 'below'} the {side} iliac bifurcation"
    if loc.code != "CI":
        loc.flag(("CI", "CI"), where)
        return
    d_ei, _ = geo.distance(c, geo.present(_EI_VESSELS[side]))
    d_ii, _ = geo.distance(c, geo.present(_II_VESSELS[side]))
    other = "EI" if d_ei <= d_ii else "II"
    loc.flag(("N", other), where)


def _common_iliac_by_plane(c: FloatArray, geo: _Geometry, rules: StagingRules) -> _Located:
    """Above the brim without a vessel to go by: common iliac, uncertain when far from it."""
    loc = _node("CI")
    vessels = geo.present((*_CI_VESSELS["L"], *_CI_VESSELS["R"]))
    if vessels:
        d, _ = geo.distance(c, vessels)
        if d > rules.node_distance_mm:
            loc.uncertain = True
            loc.notes.append(f"{d:.0f} mm from the {loc.region} vessels")
    return loc


def _classify_node(c: FloatArray, geo: _Geometry, lv: _Levels, rules: StagingRules) -> _Located:
    x, _, z = (float(v) for v in c)
    side = "L" if x > lv.midline_x else "R"
    if lv.sd_z is not None and z > lv.sd_z:
        return _Located("M1a", "supradiaphragmatic", "SD")
    if lv.bifurcation_z is not None and z > lv.bifurcation_z:
        return _retroperitoneal(c, geo, lv, rules)
    above_brim = z > lv.brim_z
    if above_brim and not lv.by_segment[side]:
        return _common_iliac_by_plane(c, geo, rules)
    if not above_brim and (outside := _extrapelvic(c, lv, side)) is not None:
        return outside
    scores = _region_distances(c, geo, lv, rules, side)
    if scores:
        code = min(scores, key=lambda k: (scores[k], _PELVIC_CODES.index(k)))
        loc = _node(code)
        _flag_iliac_junction(loc, c, geo, lv, rules, side)
        if code == "CI" and lv.bifurcation_z is not None:
            dz = lv.bifurcation_z - z
            if dz <= rules.junction_mm and "RP" in scores:
                loc.flag(("M1a", "RP"), f"{dz:.0f} mm below the aortic bifurcation")
        return loc
    if above_brim:
        return _common_iliac_by_plane(c, geo, rules)
    rectum = geo.present(("Rectum",))
    if rectum:
        d, _ = geo.distance(c, rectum)
        if d <= rules.perirectal_distance_mm:
            return _Located("N", PERIRECTAL_REGION, "OP")
    return _Located(
        "N",
        REGION_NAMES["OP"],
        "OP",
        uncertain=True,
        notes=["pelvic soft-tissue lesion in no nodal region; staged N by level"],
    )


def _is_nodal_region(loc: _Located) -> bool:
    """Whether a node call names a region (not the "in no nodal region" fallback)."""
    return loc.category in ("N", "CI") and not (loc.code == "OP" and loc.uncertain)


def _in_front_of_rectum(c: FloatArray, geo: _Geometry) -> bool:
    """Whether the point lies in front of the rectum on its slice, within its width.

    The space between the rectum and the bladder / symphysis is the prostate bed, not the
    mesorectum: a lesion there is not a perirectal node candidate.
    """
    names = geo.present(("Rectum", "Canal_Anal"))
    if not names:
        return False
    k = int(geo.grid.lps_to_nearest_index(c)[0])
    if not 0 <= k < geo.grid.shape[0]:
        return False
    _, y_mm, x_mm = geo._axes
    section = np.zeros(geo.grid.shape[1:], bool)
    for n in names:
        s = geo.ss[n]
        if s.bbox is not None and s.bbox[0].start <= k < s.bbox[0].stop:
            section[s.bbox[1], s.bbox[2]] |= s.cropped_mask[k - s.bbox[0].start]
    if not section.any():
        return False
    cols = section.any(axis=0)
    x, y = float(c[0]), float(c[1])
    return bool(x_mm[cols].min() <= x <= x_mm[cols].max() and y < y_mm[section.any(axis=1)].min())


def _local(notes: Sequence[str] = ()) -> _Located:
    return _Located("Tr", "prostate bed", "bed", notes=list(notes))


def _at_bed_border(
    c: FloatArray,
    geo: _Geometry,
    lv: _Levels,
    rules: StagingRules,
    d_bed: float,
) -> _Located:
    """Tr or a node for a lesion whose centroid lies within the border band of the bed.

    Inside the region: Tr, flagged when a nodal region would also claim the lesion.
    Outside but within ``bed_tolerance_mm``: the nodal region when there is one (flagged
    Tr as the other candidate), else Tr (flagged with the node call as the other).
    """
    node = _classify_node(c, geo, lv, rules)
    if node.code == "OP" and _in_front_of_rectum(c, geo):
        node = _Located("N", REGION_NAMES["OP"], "OP", uncertain=True)
    where = (
        f"{-d_bed:.0f} mm inside the prostate-bed region's border"
        if d_bed <= 0
        else f"{d_bed:.0f} mm outside the prostate-bed region"
    )
    if d_bed <= 0:
        loc = _local()
        if _is_nodal_region(node) and -d_bed < rules.bed_border_mm:
            loc.flag((node.category, node.code), where)
        return loc
    if _is_nodal_region(node):
        node.flag(("Tr", "bed"), where)
        return node
    loc = _local()
    loc.flag((node.category, node.code), where)
    return loc


def _override(
    lesion: Lesion, geo: _Geometry, lv: _Levels, rules: StagingRules, override: str
) -> _Located:
    """Where the user says the lesion is (see :data:`OVERRIDES`)."""
    c = np.asarray(lesion.centroid_mm, float)
    if override in ("Tr", "local"):
        loc = _local()
    elif override in ("M1b", "bone"):
        loc = _bone(lesion, geo)
    elif override in ("M1c", "organ"):
        loc = _organ(lesion, geo)
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
        loc.alternative = None
    loc.notes.append(f"located by user override {override!r}")
    return loc


def _bone(lesion: Lesion, geo: _Geometry) -> _Located:
    bones = geo.present(BONE_STRUCTURES)
    ov = geo.overlap(lesion, bones) if bones else {}
    region = max(ov, key=lambda k: ov[k]) if ov else "bone"
    return _Located("M1b", region, "bone")


def _organ(lesion: Lesion, geo: _Geometry) -> _Located:
    organs = geo.present(M1C_ORGANS)
    ov = geo.overlap(lesion, organs) if organs else {}
    if ov:
        name = max(ov, key=lambda k: ov[k])
        return _Located("M1c", name, M1C_ORGANS.get(name, "other"))
    return _Located("M1c", "organ", "other")


def _main_organ(lesion: Lesion, geo: _Geometry, rules: StagingRules) -> str | None:
    """The organ of :data:`M1C_ORGANS` holding ``inside_fraction`` of the lesion, if any."""
    organs = geo.present(M1C_ORGANS)
    ov = geo.overlap(lesion, organs) if organs else {}
    if not ov or max(ov.values()) < rules.inside_fraction:
        return None
    return max(ov, key=lambda k: ov[k])


def _locate(
    lesion: Lesion,
    geo: _Geometry,
    lv: _Levels,
    rules: StagingRules,
    override: str | None,
    bed: _BedDistance | None,
) -> _Located:
    if override is not None:
        return _override(lesion, geo, lv, rules, override)
    c = np.asarray(lesion.centroid_mm, float)
    bones = geo.present(BONE_STRUCTURES)
    bone_fraction = geo.union_fraction(lesion, bones) if bones else 0.0
    if bone_fraction >= rules.inside_fraction:
        return _bone(lesion, geo)
    d_bed = math.inf if bed is None else bed(c)
    organ = _main_organ(lesion, geo, rules)
    invasion: list[str] = []
    if organ in BED_ADJACENT_ORGANS and d_bed <= rules.local_invasion_mm:
        where = "in" if d_bed <= 0 else f"{d_bed:.0f} mm from"
        invasion.append(f"local recurrence invading the {organ} ({where} the prostate-bed region)")
    if d_bed <= 0 and (-d_bed >= rules.bed_border_mm or invasion):
        return _local(invasion)
    if organ is not None:
        return _local(invasion) if invasion else _organ(lesion, geo)
    if d_bed <= rules.bed_tolerance_mm:
        loc = _at_bed_border(c, geo, lv, rules, d_bed)
    else:
        loc = _classify_node(c, geo, lv, rules)
    if bone_fraction > 0:
        loc.notes.append(f"{100 * bone_fraction:.0f}% of the lesion lies in bone")
    return loc


# ---------------------------------------------------------------------------- patient stage
@dataclass(frozen=True)
class UncertainCall:
    """A lesion near the border of two categories or regions, with both candidates.

    Attributes
    ----------
    lesion_id : int
        :attr:`rtplan.lesions.Lesion.id` of the lesion.
    lesion_name : str
        Its name, e.g. ``"L2"``.
    chosen : str
        What the lesion was staged as (where its centroid lies): ``"Tr"``, ``"N1(EI)"``,
        ``"M1a(CI)"``...
    alternative : str
        The other candidate, in the same form.
    reason : str
        Why, e.g. ``"3 mm outside the prostate-bed region"``.
    """

    lesion_id: int
    lesion_name: str
    chosen: str
    alternative: str
    reason: str

    @property
    def text(self) -> str:
        """One line for tables, e.g. ``"L2: N1(OP) or Tr (3 mm outside the ...)"``."""
        return f"{self.lesion_name}: {self.chosen} or {self.alternative} ({self.reason})"


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
        The limit used (default :data:`OLIGOMETASTATIC_MAX_LESIONS`).
    bone_pattern : str or None
        ``"uni"`` (1), ``"oligo"`` (2-3), ``"diss"`` (> 3 bone lesions), None without bone.
    lesions : Lesions
        The lesions with ``category``, ``region``, ``region_code``, ``side`` filled in;
        the category of a lesion that reads negative is ``"not counted (miPSMA <score>)"``.
    promise_version, common_iliac : str
        Options used.
    notes : tuple of str
        Assumptions made (fallback landmarks, derived regions, uncertain calls).
    uncertain : tuple of UncertainCall
        Lesions near the border of two categories or regions, with both candidates.
    min_mipsma_score : int
        Lowest miPSMA expression score counted (default :data:`MIN_MIPSMA_SCORE`).
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
    uncertain: tuple[UncertainCall, ...] = ()
    min_mipsma_score: int = MIN_MIPSMA_SCORE

    def __post_init__(self) -> None:
        check_choice(self.t, ("T0", "Tr"), name="Stage.t")
        check_choice(self.n, ("N0", "N1"), name="Stage.n")
        check_choice(self.m, ("M0", *_M_CATEGORIES), name="Stage.m")
        if not isinstance(self.lesions, Lesions):
            raise TypeError(
                f"Stage.lesions must be a Lesions collection, got {type(self.lesions).__name__}"
            )
        unstaged = [
            x.name
            for x in self.lesions
            if x.category not in CATEGORIES and not (x.category or "").startswith(NOT_COUNTED)
        ]
        if unstaged:
            raise InvalidInputError(
                f"Stage.lesions must be staged, with a category among {', '.join(CATEGORIES)} "
                f"or {NOT_COUNTED!r}; not so: {', '.join(unstaged)}"
            )
        object.__setattr__(self, "uncertain", tuple(self.uncertain))
        for call in self.uncertain:
            check_type(call, UncertainCall, name="an item of Stage.uncertain")

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
        return [les for les in self.lesions if les.category in _M_CATEGORIES]

    @property
    def counted_lesions(self) -> list[Lesion]:
        """The lesions that drive the stage (category among :data:`CATEGORIES`)."""
        return [les for les in self.lesions if is_counted(les)]

    @property
    def not_counted_lesions(self) -> list[Lesion]:
        """Lesions that read negative (miPSMA below :attr:`min_mipsma_score`)."""
        return [les for les in self.lesions if not is_counted(les)]

    def uncertain_call(self, lesion_id: int) -> UncertainCall | None:
        """The :class:`UncertainCall` of a lesion (by id), or ``None`` when it is certain."""
        return next((u for u in self.uncertain if u.lesion_id == lesion_id), None)

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
    max_oligo_lesions: int | None = None,
    min_mipsma_score: int | None = None,
    overrides: Mapping[str | int, str] | None = None,
    nodal_regions_by_side: bool = False,
    rules: StagingRules | None = None,
    protocol: str | Path | TreatmentProtocol = "nrg_salvage",
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
    max_oligo_lesions : int, optional
        Most distant lesions still called oligometastatic. Default: the protocol's
        ``staging.max_oligo_lesions``, else :data:`OLIGOMETASTATIC_MAX_LESIONS` (3: STOMP
        and ORIOLE enrolled <= 3 metastases). SABR-COMET treated 1-5.
    min_mipsma_score : int, optional
        Lowest miPSMA expression score (0-3) that counts; lesions with a lower score stay
        in the lesion table as ``"not counted (miPSMA <score>)"`` and drive neither the
        stage nor the options. Default :data:`MIN_MIPSMA_SCORE` (2: PROMISE V2 reads 0-1
        as negative), or the protocol's ``staging.min_mipsma_score``. Lesions without a
        score (no PET) always count.
    overrides : mapping, optional
        Lesion name (``"L2"``) or id (``2``) -> one of :data:`OVERRIDES`: a category
        (``"Tr"``, ``"N1"``, ``"M1a"``, ``"M1b"``, ``"M1c"``) or what the lesion is
        (``"local"``, ``"node"``, ``"bone"``, ``"organ"``; ``"organ"`` stages M1c,
        ``"node"`` skips the bone, bed and organ tests). An overridden lesion counts
        whatever its miPSMA score.
    nodal_regions_by_side : bool
        Count left and right of one region as two regions for N1/N2 (tool default
        False: regions are counted by type).
    rules : StagingRules, optional
        Distances and fractions (tool defaults).
    protocol : str, path or Protocol
        Whose ``[ctv.prostate_bed]`` rules draw the prostate-bed region (Tr); default
        ``"nrg_salvage"`` (RTOG 2010).

    Returns
    -------
    Stage
        Patient stage and the staged lesions.

    Raises
    ------
    TypeError
        When ``lesions``, ``atlas``, ``overrides``, ``rules`` or ``protocol`` is not of
        its type.
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
    proto = _as_protocol(protocol)
    if max_oligo_lesions is None:
        max_oligo_lesions = int(
            proto.number("staging.max_oligo_lesions", OLIGOMETASTATIC_MAX_LESIONS)
        )
    if min_mipsma_score is None:
        min_mipsma_score = int(proto.number("staging.min_mipsma_score", MIN_MIPSMA_SCORE))
    _check_stage_options(common_iliac, promise_version, max_oligo_lesions, rules)
    _check_score(min_mipsma_score)
    check_atlas(atlas)
    les = _as_lesions(lesions, atlas.grid)
    ov_map = _override_map(overrides, les)
    notes: list[str] = []
    staged: list[Lesion] = []
    calls: list[UncertainCall] = []
    if len(les):
        geo = _Geometry(atlas)
        lv, level_notes = _levels(geo)
        notes.extend(level_notes)
        rules = StagingRules() if rules is None else rules
        bed, bed_notes = _bed_distance(atlas, geo, proto, rules)
        notes.extend(bed_notes)
        notes.extend(_atlas_notes(geo))
        for lesion in les:
            override = ov_map.get(lesion.name)
            loc = _locate(lesion, geo, lv, rules, override, bed)
            staged_lesion, call = _stage_lesion(lesion, loc, lv, rules, common_iliac)
            if override is None and _reads_negative(lesion, min_mipsma_score):
                staged_lesion, call = _not_counted(staged_lesion), None
            staged.append(staged_lesion)
            if call is not None:
                calls.append(call)
    return _patient_stage(
        Lesions(staged, grid=atlas.grid),
        common_iliac=common_iliac,
        promise_version=promise_version,
        max_oligo_lesions=int(max_oligo_lesions),
        min_mipsma_score=int(min_mipsma_score),
        by_side=nodal_regions_by_side,
        notes=notes,
        uncertain=tuple(calls),
    )


def _check_score(min_mipsma_score: object) -> None:
    if (
        isinstance(min_mipsma_score, bool)
        or not isinstance(min_mipsma_score, (int, np.integer))
        or not 0 <= min_mipsma_score <= 3
    ):
        raise InvalidInputError(
            f"min_mipsma_score must be a miPSMA expression score 0-3, got {min_mipsma_score!r}"
        )


def _reads_negative(lesion: Lesion, min_mipsma_score: int) -> bool:
    return lesion.mipsma_score is not None and lesion.mipsma_score < min_mipsma_score


def _not_counted(lesion: Lesion) -> Lesion:
    """The staged lesion marked as reading negative (its location kept in the notes)."""
    would_be = f"{lesion.category}({lesion.region_code})" if lesion.category else "?"
    return lesion.with_staging(
        category=f"{NOT_COUNTED} (miPSMA {lesion.mipsma_score})",
        region_uncertain=False,
        notes=(
            *lesion.notes,
            f"reads negative (miPSMA {lesion.mipsma_score}, PROMISE V2): would be {would_be}",
        ),
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
    if not geo.present(BONE_STRUCTURES):
        notes.append("atlas has no bone structures: bone lesions (M1b) cannot be recognised")
    return notes


def _mitnm(category: str, code: str, common_iliac: str) -> str:
    """A located category as a miTNM candidate: ``"Tr"``, ``"N1(EI)"``, ``"M1a(CI)"``."""
    if category == "Tr":
        return "Tr"
    if category == "CI":
        return f"{'N1' if common_iliac == 'N' else 'M1a'}(CI)"
    if category == "N":
        return f"N1({code})"
    return f"{category}({code})"


def _stage_lesion(
    lesion: Lesion,
    loc: _Located,
    lv: _Levels,
    rules: StagingRules,
    common_iliac: str,
) -> tuple[Lesion, UncertainCall | None]:
    """A copy of the lesion with its category, region, side and notes, and its doubt."""
    if loc.category == "CI":
        category = "N1" if common_iliac == "N" else "M1a"
    elif loc.category == "N":
        category = "N1"
    else:
        category = loc.category
    call = None
    doubt: list[str] = []
    if loc.alternative is not None:
        call = UncertainCall(
            lesion_id=lesion.id,
            lesion_name=lesion.name,
            chosen=_mitnm(loc.category, loc.code, common_iliac),
            alternative=_mitnm(*loc.alternative, common_iliac),
            reason=loc.reason,
        )
        doubt.append(f"uncertain: {call.chosen} or {call.alternative} ({call.reason})")
    elif loc.uncertain:
        doubt.append("region uncertain")
    staged = lesion.with_staging(
        category=category,
        region=loc.region,
        region_code=loc.code,
        side=_side(lesion.centroid_mm[0], lv.midline_x, rules.midline_tolerance_mm),
        region_uncertain=loc.uncertain,
        notes=(*lesion.notes, *loc.notes, *doubt),
    )
    return staged, call


def _patient_stage(
    les: Lesions,
    *,
    common_iliac: str,
    promise_version: str,
    max_oligo_lesions: int,
    min_mipsma_score: int,
    by_side: bool,
    notes: list[str],
    uncertain: tuple[UncertainCall, ...],
) -> Stage:
    counted = [x for x in les if is_counted(x)]
    cats = [x.category for x in counted]
    t = "Tr" if "Tr" in cats else "T0"
    nodal = [x for x in counted if x.category == "N1"]
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
    distant = [x for x in counted if x.category in _M_CATEGORIES]
    n_bone = sum(1 for x in counted if x.category == "M1b")
    bone_pattern = None
    if n_bone:
        bone_pattern = "uni" if n_bone == 1 else "oligo" if n_bone <= 3 else "diss"

    def codes(cat: str) -> str:
        found = list(dict.fromkeys(x.region_code or "?" for x in counted if x.category == cat))
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
    notes = [*notes, *(f"uncertain: {u.text}" for u in uncertain)]
    vague = [x.name for x in counted if x.region_uncertain and _call_of(uncertain, x) is None]
    if vague:
        notes.append(f"region uncertain for {', '.join(vague)}")
    negative = [x for x in les if not is_counted(x)]
    if negative:
        listed = ", ".join(f"{x.name} ({x.category})" for x in negative)
        notes.append(
            f"not counted (miPSMA below {min_mipsma_score}; PROMISE V2 reads 0-1 as "
            f"negative): {listed}"
        )
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
        uncertain=uncertain,
        min_mipsma_score=min_mipsma_score,
    )


def _call_of(uncertain: Sequence[UncertainCall], lesion: Lesion) -> UncertainCall | None:
    """The call of ``lesion`` among ``uncertain``, or ``None``."""
    return next((u for u in uncertain if u.lesion_id == lesion.id), None)
