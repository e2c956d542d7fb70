"""Target volumes for each field option: prostate bed, pelvic nodes, boosts, SBRT.

Every margin, border and dose comes from a :class:`~rtplan.protocol.Protocol` (TOML, see
:mod:`rtplan.protocol`); nothing clinical is hard-coded here. The builders work on an
*anatomy*, :class:`rtplan.staging.AtlasLike`: an object with ``grid``
(:class:`~rtplan.grid.ImageGrid`), ``structures`` (:class:`~rtplan.structures.StructureSet`,
TG-263 names) and ``landmarks`` (mapping of name -> LPS ``(x, y, z)`` mm), such as
:class:`rtplan.atlas.Atlas`. Landmarks that are
missing are derived from the structures where possible (e.g. ``PubicSymphysis_Top`` = the
top of ``PubicSymphys``, ``L5S1_Interspace`` = between ``VB_L5`` and ``VB_S1``).

Volumes
-------
* :func:`ctv_prostate_bed` -- ``CTVsb_<cGy>``, RTOG 2010 consensus (Michalski et al.,
  IJROBP 2010;76:361): built slice by slice as the region between the organs, with the
  borders of that paper below and above the top of the pubic symphysis (PS):

  ========== ======================================= ===========================================
  border     below the top of the PS                 above the top of the PS
  ========== ======================================= ===========================================
  inferior   ``inferior_below_vua_mm`` below the     --
             VUA landmark (or the slice above the
             penile bulb when there is no VUA)
  superior   --                                      ``VasDeferens_CutEnd`` or
                                                     ``superior_above_symphysis_mm`` above the PS
  anterior   posterior edge of ``PubicSymphys``;     posterior ``bladder_wall_band_mm`` of the
             where the bladder neck reaches below    bladder (the band is kept in the CTV)
             the PS, its posterior band as above
  posterior  anterior surface of ``Rectum``          anterior surface of the rectum, moved
             (``Canal_Anal``), column by column,     ``mesorectal_offset_mm`` forward (stands in
             concave around its lateral aspects      for the mesorectal fascia)
             at most halfway to its centre
  lateral    medial edge of ``Levator_Ani`` /        ``lateral_halfwidth_mm`` from the midline
             ``Obturator_Int_L/R`` (row by row),     (stands in for the sacrorectogenitopubic
             at most ``lateral_halfwidth_mm``        fascia), or the obturator internus
             from the midline
  ========== ======================================= ===========================================

  then smoothed (closing by ``smoothing_mm``) and cropped from bone, rectum, muscle,
  bowel and the bladder except its posterior band.
* :func:`ctv_pelvic_nodes` -- ``CTVn_<cGy>``, RTOG 2009 consensus (Lawton et al., IJROBP
  2009;74:383): common, external and internal iliac vessels plus ``vessel_margin_mm``
  in-plane (radial); presacral strip ``presacral_depth_mm`` anterior to
  ``presacral_vertebrae`` (S1-S3), at most ``presacral_halfwidth_mm`` from the midline;
  obturator strip ``obturator_strip_width_mm`` medial to
  the obturator internus (Taylor et al. 2005); the external iliac region stops at the top
  of the femoral heads, the rest at the top of the pubic symphysis; superior border at the
  ``superior_border`` landmark (L5/S1 by default; the NRG 2021 variant L4/L5 or the aortic
  bifurcation); cropped from bone, bowel, bladder, rectum and muscle.
* boosts (:func:`boost_volumes`): a PSMA-positive local recurrence (``GTVp`` ->
  ``CTVp_<cGy>`` -> ``PTVp_<cGy>``), PSMA-positive pelvic nodes (``GTVn1`` ->
  ``CTVn1_<cGy>`` -> ``PTVn1_<cGy>``) and SBRT lesions (``GTV1`` = ``CTV1_<cGy>`` ->
  ``PTV1_<cGy>``).
* PTVs (:func:`ptv_from_ctv`): the CTV grown by the protocol margin (anisotropic allowed,
  clipped at the grid edge with a warning) and kept inside ``Body``; evaluation PTVs
  (:func:`evaluation_ptv`) end ``crop_from_body_mm`` inside the body surface and carry the
  TG-263 ``-xx`` suffix (only made when the crop removes something).

Names follow AAPM TG-263 (CLINICAL.md section 8): type, classifier (``sb`` surgical bed,
``n`` nodal, ``p`` primary), enumerator, then the total dose in cGy; at most 16 characters
and unique within an option.

Field options
-------------
:func:`suggest_options` lists the options worth comparing for a PROMISE miTNM stage
(:class:`rtplan.staging.Stage`), each with its evidence line (CLINICAL.md sections 4b and
10a); :func:`build_options` builds them as :class:`~rtplan.plan.FieldOption` objects. This
is decision support for comparing options, never a prescription: the options, doses and
evidence lines are for the treating team to weigh.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
from scipy import ndimage

from rtplan._typing import BoolMask, FloatArray, Vec3
from rtplan._validation import as_mask, bounding_box, check_choice, check_names, check_type
from rtplan.errors import (
    GeometryError,
    InvalidInputError,
    MissingStructureError,
    ProtocolError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid, check_same_grid
from rtplan.lesions import Lesion, Lesions
from rtplan.margins import Margin, crop_away_from, expand, shrink
from rtplan.plan import TECHNIQUES, Course, FieldOption, Target
from rtplan.protocol import Protocol, load_protocol
from rtplan.staging import AtlasLike, Stage, check_atlas
from rtplan.structures import Structure, StructureSet

__all__ = [
    "DISCLAIMER",
    "OptionSpec",
    "TargetOverlap",
    "boost_volumes",
    "build_option",
    "build_options",
    "ctv_pelvic_nodes",
    "ctv_prostate_bed",
    "evaluation_ptv",
    "landmark_z_mm",
    "option_volume_table",
    "ptv_from_ctv",
    "suggest_options",
    "target_overlaps",
]

#: Wording attached to every suggested option.
DISCLAIMER = (
    "Decision support for comparing options, not a prescription: the choice of field, dose "
    "and ADT rests with the treating team."
)

_BONES = (
    "Bone_Ilium_L",
    "Bone_Ilium_R",
    "Bone_Ischium_L",
    "Bone_Ischium_R",
    "Bone_Pelvic",
    "PubicSymphys",
    "Sacrum",
    "Coccyx",
    "VB_L4",
    "VB_L5",
    "VB_S1",
    "VB_S2",
    "VB_S3",
    "Femur_Head_L",
    "Femur_Head_R",
)
_BOWEL = ("Spc_Bowel", "Bowel", "Bowel_Small", "Bowel_Large", "Colon", "Colon_Sigmoid")
_RECTUM = ("Rectum", "Canal_Anal")
_MUSCLES = ("Iliopsoas_L", "Iliopsoas_R", "Obturator_Int_L", "Obturator_Int_R", "Levator_Ani")
_VESSELS_COMMON = ("A_Iliac_L", "A_Iliac_R", "V_Iliac_L", "V_Iliac_R")
_VESSELS_EXT = {"L": ("A_Iliac_Ext_L", "V_Iliac_Ext_L"), "R": ("A_Iliac_Ext_R", "V_Iliac_Ext_R")}
_VESSELS_INT = ("A_Iliac_Int_L", "A_Iliac_Int_R", "V_Iliac_Int_L", "V_Iliac_Int_R")
_BOOST_KINDS = ("local_boost", "node_boost", "sbrt_bone", "sbrt_node")
_MAX_NAME = 16
_T = TypeVar("_T")

#: (GTV, CTV, PTV) of one boost or SBRT lesion.
_Boost = tuple[Structure, Structure, Structure]


# ---------------------------------------------------------------------------- helpers
def _protocol(protocol: str | Path | Protocol) -> Protocol:
    check_type(
        protocol,
        (str, os.PathLike, Protocol),
        name="protocol",
        expected_text="a protocol name, a path to a protocol file or a Protocol",
    )
    return load_protocol(protocol)


def _cgy(dose_gy: float) -> int:
    return round(dose_gy * 100)


def _tg263(name: str) -> str:
    """Shorten a target name to 16 characters by dropping underscores from the left."""
    while len(name) > _MAX_NAME and "_" in name:
        name = name.replace("_", "", 1)
    return name


def _quiet_expand(mask: BoolMask, grid: ImageGrid, margin: Margin | float) -> BoolMask:
    """Expansion for intermediate regions: clipped at the grid edge without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        return expand(mask, grid, margin, clip=True)


def _inplane(mm: float) -> Margin:
    return Margin(right=mm, left=mm, anterior=mm, posterior=mm)


def _closing(mask: BoolMask, grid: ImageGrid, radius_mm: float) -> BoolMask:
    if radius_mm <= 0 or not mask.any():
        return mask
    closed: BoolMask = mask | shrink(_quiet_expand(mask, grid, radius_mm), grid, radius_mm)
    return closed


def _union(ss: StructureSet, names: Iterable[str], grid: ImageGrid) -> BoolMask:
    out = np.zeros(grid.shape, bool)
    seen: set[str] = set()
    for n in names:
        key = ss.resolve(n)
        if key is not None and key not in seen:
            seen.add(key)
            s = ss[key]
            if s.bbox is not None:
                out[s.bbox] |= s.cropped_mask
    return out


def _body(atlas: AtlasLike) -> Structure | None:
    """The anatomy's ``Body`` structure, when it has one."""
    return atlas.structures["Body"] if "Body" in atlas.structures else None


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
    ``VB_S3``), ``PenileBulb_Top`` (top of ``PenileBulb``).

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
        When the landmark is absent and cannot be derived.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> g = ImageGrid(shape=(6, 4, 4), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> ps = np.zeros(g.shape, bool); ps[1:4, 1:3, 1:3] = True
    >>> anatomy = SimpleNamespace(grid=g, landmarks={"VUA": (0.0, 0.0, 1.0)},
    ...                           structures=StructureSet([Structure("PubicSymphys", ps, g)]))
    >>> landmark_z_mm(anatomy, "VUA"), landmark_z_mm(anatomy, "PubicSymphysis_Top")
    (1.0, 6.0)
    """
    check_atlas(atlas)
    check_type(name, str, name="name")
    grid, ss, landmarks = atlas.grid, atlas.structures, atlas.landmarks
    if name in landmarks:
        return float(landmarks[name][2])
    top = {
        "PubicSymphysis_Top": "PubicSymphys",
        "FemurHead_Top_L": "Femur_Head_L",
        "FemurHead_Top_R": "Femur_Head_R",
        "PenileBulb_Top": "PenileBulb",
    }
    bottom = {"AorticBifurcation": "A_Aorta", "S3_Bottom": "VB_S3"}
    between = {"L5S1_Interspace": ("VB_L5", "VB_S1"), "L4L5_Interspace": ("VB_L4", "VB_L5")}
    if name in top and (ext := _z_extent(ss, top[name], grid)) is not None:
        return ext[1]
    if name in bottom and (ext := _z_extent(ss, bottom[name], grid)) is not None:
        return ext[0]
    if name in between:
        upper, lower = (_z_extent(ss, n, grid) for n in between[name])
        if upper is not None and lower is not None:
            return (upper[0] + lower[1]) / 2
    raise MissingStructureError(
        f"landmark {name!r} is not in the anatomy's landmarks ({', '.join(landmarks) or 'none'}) "
        "and cannot be derived from its structures"
    )


def _landmark_xyz(atlas: AtlasLike, name: str) -> Vec3 | None:
    p = atlas.landmarks.get(name)
    return None if p is None else (float(p[0]), float(p[1]), float(p[2]))


def _z_between(grid: ImageGrid, lo_mm: float, hi_mm: float) -> BoolMask:
    """Bool mask of the slices whose centre lies in [lo, hi] (half-slice tolerance)."""
    z = grid.axis_coordinates_mm()[0]
    tol = 1e-6
    sel = (z >= lo_mm - tol) & (z <= hi_mm + tol)
    out = np.zeros(grid.shape, bool)
    out[sel] = True
    return out


def _structure(name: str, mask: BoolMask, grid: ImageGrid, role: str) -> Structure:
    return Structure(_tg263(name), mask, grid, role=role)


def _crop_organs(
    mask: BoolMask,
    ss: StructureSet,
    grid: ImageGrid,
    groups: Mapping[tuple[str, ...], float],
) -> BoolMask:
    for names, gap in groups.items():
        avoid = _union(ss, names, grid)
        if avoid.any():
            mask = crop_away_from(mask, avoid, grid, gap) if gap > 0 else mask & ~avoid
    body = _union(ss, ("Body",), grid)
    if body.any():
        mask &= body
    return mask


# ---------------------------------------------------------------------------- CTV nodes
@dataclass(frozen=True)
class _NodeRules:
    """The ``[ctv.pelvic_nodes]`` values of a protocol (mm, landmark and structure names)."""

    vessel_margin_mm: float
    superior_border: str
    inferior_border: str
    external_iliac_inferior: str
    external_iliac_anterolateral_mm: float
    presacral_vertebrae: tuple[str, ...]
    presacral_depth_mm: float
    presacral_halfwidth_mm: float | None
    obturator_strip_width_mm: float
    smoothing_mm: float
    crop_bone_mm: float
    crop_bowel_mm: float
    crop_bladder_mm: float
    crop_rectum_mm: float
    crop_muscle_mm: float

    @classmethod
    def from_protocol(cls, proto: Protocol) -> _NodeRules:
        def mm(key: str, default: float | None = None) -> float:
            return proto.number(f"ctv.pelvic_nodes.{key}", default)

        def text(key: str) -> str:
            return proto.text(f"ctv.pelvic_nodes.{key}")

        halfwidth = "ctv.pelvic_nodes.presacral_halfwidth_mm"
        return cls(
            vessel_margin_mm=mm("vessel_margin_mm"),
            superior_border=text("superior_border"),
            inferior_border=text("inferior_border"),
            external_iliac_inferior=text("external_iliac_inferior"),
            external_iliac_anterolateral_mm=mm("external_iliac_anterolateral_mm", 0.0),
            presacral_vertebrae=proto.names("ctv.pelvic_nodes.presacral_vertebrae"),
            presacral_depth_mm=mm("presacral_depth_mm"),
            presacral_halfwidth_mm=(
                None if proto.get(halfwidth) is None else proto.number(halfwidth)
            ),
            obturator_strip_width_mm=mm("obturator_strip_width_mm"),
            smoothing_mm=mm("smoothing_mm", 0.0),
            crop_bone_mm=mm("crop_bone_mm"),
            crop_bowel_mm=mm("crop_bowel_mm"),
            crop_bladder_mm=mm("crop_bladder_mm"),
            crop_rectum_mm=mm("crop_rectum_mm"),
            crop_muscle_mm=mm("crop_muscle_mm"),
        )

    @property
    def crops_mm(self) -> dict[tuple[str, ...], float]:
        """Organ groups cropped from the CTV, in order, and the gap kept from each (mm)."""
        return {
            _BONES: self.crop_bone_mm,
            _BOWEL: self.crop_bowel_mm,
            ("Bladder",): self.crop_bladder_mm,
            _RECTUM: self.crop_rectum_mm,
            _MUSCLES: self.crop_muscle_mm,
        }


def _vessel_regions(atlas: AtlasLike, rules: _NodeRules) -> BoolMask:
    """Common, internal and external iliac vessels grown in-plane by the vessel margin.

    The external iliac region of each side stops at the ``external_iliac_inferior``
    landmark of that side (the top of the femoral head).
    """
    grid, ss = atlas.grid, atlas.structures
    vm = rules.vessel_margin_mm
    z_top = float(grid.axis_coordinates_mm()[0].max())
    region = _quiet_expand(_union(ss, _VESSELS_COMMON, grid), grid, _inplane(vm))
    region |= _quiet_expand(_union(ss, _VESSELS_INT, grid), grid, _inplane(vm))
    extra = rules.external_iliac_anterolateral_mm
    for side in ("L", "R"):
        side_margin = Margin(
            right=vm + (extra if side == "R" else 0.0),
            left=vm + (extra if side == "L" else 0.0),
            anterior=vm + extra,
            posterior=vm,
        )
        ext = _quiet_expand(_union(ss, _VESSELS_EXT[side], grid), grid, side_margin)
        z_ext = landmark_z_mm(atlas, f"{rules.external_iliac_inferior}_{side}")
        region |= ext & _z_between(grid, z_ext, z_top)
    return region


def _presacral_strip(ss: StructureSet, grid: ImageGrid, rules: _NodeRules) -> BoolMask:
    """Strip ``presacral_depth_mm`` anterior to the sacral vertebral bodies (or the sacrum).

    At most ``presacral_halfwidth_mm`` from the vertebrae's mean x when that is set; empty
    without sacral structures.
    """
    vb = _union(ss, rules.presacral_vertebrae, grid)
    if not vb.any():
        vb = _union(ss, ("Sacrum",), grid)
    if not vb.any():
        return vb
    strip = _quiet_expand(vb, grid, Margin(anterior=rules.presacral_depth_mm)) & ~vb
    half = rules.presacral_halfwidth_mm
    if half is not None:
        x_mm = grid.axis_coordinates_mm()[2]
        x_mid = float(np.mean(x_mm[vb.any(axis=(0, 1))]))
        strip &= (np.abs(x_mm - x_mid) <= half)[None, None, :]
    return strip


def _obturator_strips(ss: StructureSet, grid: ImageGrid, width_mm: float) -> BoolMask:
    """Strips ``width_mm`` wide medial to each obturator internus present."""
    region = np.zeros(grid.shape, bool)
    for side, medial in (("L", Margin(right=width_mm)), ("R", Margin(left=width_mm))):
        key = ss.resolve(f"Obturator_Int_{side}")
        if key is not None and width_mm > 0:
            obt = ss[key].mask
            region |= _quiet_expand(obt, grid, medial) & ~obt
    return region


def ctv_pelvic_nodes(
    atlas: AtlasLike, protocol: str | Protocol = "nrg_salvage", *, name: str | None = None
) -> Structure:
    """Elective pelvic nodal CTV per the RTOG 2009 consensus (Lawton et al.).

    Parameters
    ----------
    atlas : AtlasLike
        Anatomy with ``grid``, ``structures`` (the iliac vessels ``A_Iliac_L/R``,
        ``V_Iliac_L/R``, ``A/V_Iliac_Ext_L/R``, ``A/V_Iliac_Int_L/R`` are required; bone,
        bowel, bladder, rectum and muscles are cropped out when present) and landmarks.
    protocol : str or Protocol
        Protocol name or object; reads ``[ctv.pelvic_nodes]``.
    name : str, optional
        Structure name; default ``CTVn_<pelvic dose in cGy>``.

    Returns
    -------
    Structure
        Role ``"ctv"``.

    Raises
    ------
    TypeError
        When ``atlas`` is not an anatomy or ``protocol`` not a protocol.
    MissingStructureError
        When a vessel or a needed landmark is missing.
    GeometryError
        When the CTV comes out empty (vessels outside the borders).
    """
    check_atlas(atlas)
    proto = _protocol(protocol)
    rules = _NodeRules.from_protocol(proto)
    grid, ss = atlas.grid, atlas.structures
    ss.require(
        [*_VESSELS_COMMON, *_VESSELS_EXT["L"], *_VESSELS_EXT["R"], *_VESSELS_INT],
        purpose="CTV_PelvicNodes (RTOG 2009 vessel-based CTV)",
    )
    z_sup = landmark_z_mm(atlas, rules.superior_border)
    z_inf = landmark_z_mm(atlas, rules.inferior_border)
    region = _vessel_regions(atlas, rules)
    region |= _presacral_strip(ss, grid, rules)
    region |= _obturator_strips(ss, grid, rules.obturator_strip_width_mm)
    region &= _z_between(grid, z_inf, z_sup)
    region = _closing(region, grid, rules.smoothing_mm) & _z_between(grid, z_inf, z_sup)
    region = _crop_organs(region, ss, grid, rules.crops_mm)
    if not region.any():
        raise GeometryError(
            f"CTV_PelvicNodes is empty between z={z_inf:.1f} and {z_sup:.1f} mm; check the "
            "vessels and the landmarks"
        )
    if name is None:
        name = f"CTVn_{proto.prescription('pelvic_nodes').dose_cgy}"
    return _structure(name, region, grid, "ctv")


# ---------------------------------------------------------------------------- CTV bed
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


@dataclass(frozen=True)
class _BedRules:
    """The ``[ctv.prostate_bed]`` values of a protocol (mm and choices)."""

    inferior_below_vua_mm: float
    superior_reference: str
    superior_above_symphysis_mm: float
    bladder_wall_band_mm: float
    lateral_halfwidth_mm: float
    lateral_above_symphysis: str
    mesorectal_offset_mm: float
    smoothing_mm: float

    @classmethod
    def from_protocol(cls, proto: Protocol) -> _BedRules:
        def mm(key: str, default: float | None = None) -> float:
            return proto.number(f"ctv.prostate_bed.{key}", default)

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
        )


@dataclass(frozen=True)
class _BedLevels:
    """Borders of the prostate-bed CTV: z levels and the midline (LPS mm)."""

    z_inf: float
    z_sup: float
    z_symphysis_top: float
    x_mid: float


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
        try:
            z_inf = landmark_z_mm(atlas, "PenileBulb_Top") + atlas.grid.spacing_mm[0]
        except MissingStructureError:
            raise MissingStructureError(
                "CTV_ProstateBed needs the 'VUA' landmark (vesicourethral anastomosis) or, "
                "failing it, a 'PenileBulb' structure or 'PenileBulb_Top' landmark for its "
                "inferior border"
            ) from None
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
    """What the prostate-bed CTV is drawn between on each slice.

    Attributes
    ----------
    y_mm, x_mm : ndarray of float
        Row and column coordinates (mm); ``Y``, ``X`` the same on a whole slice.
    bladder, rectum : ndarray of bool
        Full masks (the rectum includes the anal canal).
    lateral_below, lateral_above : tuple of ndarray of bool
        Muscles bounding the CTV laterally below the symphysis top (levator ani and
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
    """Organ masks and their reference edges, per slice, for the prostate-bed CTV."""
    grid, ss = atlas.grid, atlas.structures
    z_mm, y_mm, x_mm = grid.axis_coordinates_mm()
    bladder = ss["Bladder"].mask
    rectum = _union(ss, _RECTUM, grid)
    pubis = ss["PubicSymphys"].mask
    obturators = tuple(_union(ss, (n,), grid) for n in ("Obturator_Int_L", "Obturator_Int_R"))
    central = np.abs(x_mm - lv.x_mid) <= 20.0
    pubis_edge = {
        k: float(np.nanmax(e[central]))
        for k in range(grid.shape[0])
        if np.isfinite(e := _column_edge(pubis[k], y_mm, posterior=True))[central].any()
    }
    rectum_front = {
        k: float(np.nanmin(e))
        for k in range(grid.shape[0])
        if np.isfinite(e := _column_edge(rectum[k], y_mm, posterior=False)).any()
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
        lateral_below=(_union(ss, ("Levator_Ani",), grid), *obturators),
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


def _bed_lateral(
    pl: _BedPlanes, k: int, above: bool, x_mid: float, rules: _BedRules
) -> tuple[FloatArray, FloatArray]:
    """Left and right borders (x, mm, per row) on slice ``k``.

    Below the symphysis top: the medial edge of the levator ani / obturator internus, at
    most ``lateral_halfwidth_mm`` from the midline. Above it: the half-width (the fascia)
    but never past the obturator internus, or the obturator internus itself with
    ``lateral_above_symphysis = "obturator_internus"``.
    """
    halfwidth = rules.lateral_halfwidth_mm
    muscles = [m[k] for m in (pl.lateral_above if above else pl.lateral_below)]
    medial_left, medial_right = _medial_edges(muscles, pl.X, x_mid, halfwidth)
    if above and rules.lateral_above_symphysis == "obturator_internus":
        return medial_left, medial_right
    left = np.minimum(np.full(pl.y_mm.shape, x_mid + halfwidth), medial_left)
    right = np.maximum(np.full(pl.y_mm.shape, x_mid - halfwidth), medial_right)
    return left, right


def _bed_slice(
    pl: _BedPlanes, k: int, above: bool, lv: _BedLevels, rules: _BedRules
) -> tuple[BoolMask, BoolMask] | None:
    """The CTV on slice ``k`` and the bladder band it keeps; ``None`` when unbounded."""
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


def ctv_prostate_bed(
    atlas: AtlasLike, protocol: str | Protocol = "nrg_salvage", *, name: str | None = None
) -> Structure:
    """Prostate-bed CTV per the RTOG 2010 consensus (Michalski et al.).

    Built slice by slice as the region between the organs (see the module docstring for
    the borders), smoothed, and cropped from bone, rectum, muscle, bowel and the bladder
    except its posterior wall band above the symphysis.

    Parameters
    ----------
    atlas : AtlasLike
        Anatomy with ``Bladder``, ``Rectum`` and ``PubicSymphys`` (required),
        ``Levator_Ani``, ``Obturator_Int_L/R``, ``Canal_Anal`` (used when present), the
        landmarks ``VUA`` (else ``PenileBulb_Top``), ``PubicSymphysis_Top`` (else derived)
        and optionally ``VasDeferens_CutEnd``.
    protocol : str or Protocol
        Reads ``[ctv.prostate_bed]``.
    name : str, optional
        Default ``CTVsb_<prostate-bed dose in cGy>``.

    Returns
    -------
    Structure
        Role ``"ctv"``.

    Raises
    ------
    TypeError
        When ``atlas`` is not an anatomy or ``protocol`` not a protocol.
    MissingStructureError
        When a required organ or landmark is missing.
    GeometryError
        When the CTV comes out empty.
    ProtocolError
        When the superior border is not above the inferior one.
    """
    check_atlas(atlas)
    proto = _protocol(protocol)
    rules = _BedRules.from_protocol(proto)
    grid, ss = atlas.grid, atlas.structures
    ss.require(["Bladder", "Rectum", "PubicSymphys"], purpose="CTV_ProstateBed (RTOG 2010)")
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
    region = _closing(region, grid, rules.smoothing_mm) & _z_between(grid, lv.z_inf, lv.z_sup)
    region &= ~(planes.bladder & ~keep_band)
    region = _crop_organs(
        region,
        ss,
        grid,
        {_BONES: 0.0, _RECTUM: 0.0, _MUSCLES: 0.0, _BOWEL: 0.0},
    )
    region = _largest_component(region)
    if not region.any():
        raise GeometryError(
            f"CTV_ProstateBed is empty between z={lv.z_inf:.1f} and {lv.z_sup:.1f} mm: the "
            "symphysis, rectum or bladder does not reach these levels; check the anatomy"
        )
    if name is None:
        name = f"CTVsb_{proto.prescription('prostate_bed').dose_cgy}"
    return _structure(name, region, grid, "ctv")


def _medial_edges(
    muscles: Sequence[BoolMask], X: FloatArray, x_mid: float, cap_mm: float
) -> tuple[FloatArray, FloatArray]:
    """Row-wise medial edges (x, mm) of muscles left and right of the midline.

    Each muscle's edge is taken row by row and carried to the rows it does not reach
    (nearest row), then the most medial muscle wins; ``x_mid -+ cap_mm`` where no muscle.
    """
    ny = X.shape[0]
    left = np.full(ny, x_mid + cap_mm)
    right = np.full(ny, x_mid - cap_mm)
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


def _largest_component(mask: BoolMask) -> BoolMask:
    box = bounding_box(mask)
    if box is None:
        return mask
    labels, n = ndimage.label(mask[box])
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    out = np.zeros_like(mask)
    out[box] = labels == (int(np.argmax(sizes)) + 1)
    return out


# ---------------------------------------------------------------------------- PTVs
def ptv_from_ctv(
    ctv: Structure,
    margin: Margin | float,
    *,
    name: str,
    body: Structure | None = None,
) -> Structure:
    """PTV = CTV grown by a margin (clipped at the grid edge), kept inside the body.

    Parameters
    ----------
    ctv : Structure
        The CTV.
    margin : Margin or float
        CTV -> PTV margin in mm (a number is uniform).
    name : str
        PTV name (TG-263, e.g. ``"PTVsb_6660"``).
    body : Structure, optional
        External contour; the PTV is cut to it.

    Returns
    -------
    Structure
        Role ``"ptv"``; contains the CTV (inside the body).

    Raises
    ------
    TypeError
        When ``ctv`` or ``body`` is not a Structure.

    Warns
    -----
    RtplanWarning
        When the PTV reaches past the grid edge and is clipped.

    Examples
    --------
    >>> g = ImageGrid(shape=(5, 9, 9), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> one = np.zeros(g.shape, bool); one[2, 4, 4] = True
    >>> ctv = Structure("CTV1_3000", one, g, role="ctv")
    >>> ptv_from_ctv(ctv, Margin(left=2.0), name="PTV1_3000").voxel_count
    3
    >>> ptv_from_ctv(ctv, 0.0, name="PTV1_3000").voxel_count
    1
    """
    check_type(ctv, Structure, name="ctv")
    check_type(body, (Structure, type(None)), name="body", expected_text="a Structure or None")
    grown = expand(ctv.mask, ctv.grid, margin, clip=True, name=ctv.name)
    if body is not None and not body.is_empty:
        grown &= body.mask
    return _structure(name, grown, ctv.grid, "ptv")


def evaluation_ptv(ptv: Structure, body: Structure | None, crop_mm: float) -> Structure | None:
    """Evaluation PTV: the PTV cropped ``crop_mm`` inside the body surface.

    Returns ``None`` when there is no body or the crop removes nothing. The name gets the
    TG-263 crop suffix, e.g. ``PTVsb_6660-05``.

    Parameters
    ----------
    ptv : Structure
        The PTV.
    body : Structure or None
        External contour.
    crop_mm : float
        Distance kept from the body surface, mm (>= 0).

    Examples
    --------
    >>> g = ImageGrid(shape=(5, 9, 9), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> body = np.zeros(g.shape, bool); body[:, 1:8, 1:8] = True
    >>> ptv = np.zeros(g.shape, bool); ptv[2, 1:5, 4] = True
    >>> ev = evaluation_ptv(Structure("PTV_7000", ptv, g), Structure("Body", body, g), 2.0)
    >>> ev.name, ev.voxel_count
    ('PTV_7000-02', 2)
    >>> evaluation_ptv(Structure("PTV_7000", ptv, g), None, 2.0) is None
    True
    """
    check_type(ptv, Structure, name="ptv")
    check_type(body, (Structure, type(None)), name="body", expected_text="a Structure or None")
    if body is None or body.is_empty or crop_mm <= 0 or ptv.bbox is None:
        return None
    grid = ptv.grid
    # only the body surface within crop_mm of the PTV matters: work in the padded bbox
    pad = [int(np.ceil(crop_mm / s)) + 1 for s in grid.spacing_mm]
    k, j, i = (
        slice(max(b.start - w, 0), min(b.stop + w, n)) for b, w, n in zip(ptv.bbox, pad, grid.shape)
    )
    box = (k, j, i)
    outside = ~body.mask[box]
    if not outside.any():
        return None
    near_surface = _quiet_expand(outside, grid.crop(box), crop_mm)
    local = ptv.mask[box] & ~near_surface
    if np.count_nonzero(local) == ptv.voxel_count:
        return None
    cropped = np.zeros(grid.shape, bool)
    cropped[box] = local
    return _structure(f"{ptv.name}-{round(crop_mm):02d}", cropped, grid, "ptv")


# ---------------------------------------------------------------------------- boosts
def boost_volumes(
    gtv_mask: BoolMask | Structure,
    atlas: AtlasLike,
    protocol: str | Protocol = "nrg_salvage",
    *,
    kind: str,
    number: int | None = None,
    dose_gy: float | None = None,
) -> tuple[Structure, Structure, Structure]:
    """GTV -> CTV -> PTV of one boost or SBRT lesion.

    Parameters
    ----------
    gtv_mask : ndarray of bool or Structure
        The PSMA-positive lesion on the anatomy's grid.
    atlas : AtlasLike
        Anatomy (for the grid, ``Body`` and the bone crop).
    protocol : str or Protocol
        Reads ``[ctv.<kind>]``, ``[ptv.<kind>]`` and the dose for the name.
    kind : {"local_boost", "node_boost", "sbrt_bone", "sbrt_node"}
        Which boost: local recurrence (``GTVp``), pelvic node (``GTVn1``), SBRT lesion
        (``GTV1``; GTV = CTV unless ``[ctv.sbrt].gtv_margin_mm`` > 0).
    number : int, optional
        Enumerator in the name (TG-263); ``None`` for a single local recurrence.
    dose_gy : float, optional
        Total dose for the name suffix; default the protocol's.

    Returns
    -------
    (gtv, ctv, ptv) : tuple of Structure
        CTVs of local and nodal boosts are cropped from bone and kept in the body.

    Raises
    ------
    TypeError
        When ``atlas`` is not an anatomy or ``protocol`` not a protocol.
    GridMismatchError, InvalidMaskError
        When the lesion is not a mask on the anatomy's grid.
    """
    check_atlas(atlas)
    proto = _protocol(protocol)
    grid, ss = atlas.grid, atlas.structures
    check_choice(kind, _BOOST_KINDS, name="kind")
    if isinstance(gtv_mask, Structure):
        check_same_grid(gtv_mask.grid, grid, names=[gtv_mask.name, "the anatomy"])
        gtv = gtv_mask.mask
    else:
        gtv = as_mask(gtv_mask, grid, name=f"the {kind} lesion mask").copy()
    section = "sbrt" if kind.startswith("sbrt") else kind
    classifier = {"local_boost": "p", "node_boost": "n"}.get(kind, "")
    num = "" if number is None else str(number)
    dose = proto.prescription(kind).dose_gy if dose_gy is None else dose_gy
    suffix = f"{_cgy(dose)}"
    gm = proto.number(f"ctv.{section}.gtv_margin_mm")
    ctv = _quiet_expand(gtv, grid, gm) if gm > 0 else gtv.copy()
    body = _body(atlas)
    if section != "sbrt":
        bone = _union(ss, _BONES, grid)
        ctv = (ctv & ~bone) | gtv
    if body is not None and not body.is_empty:
        ctv &= body.mask
    g = _structure(f"GTV{classifier}{num}", gtv, grid, "gtv")
    c = _structure(f"CTV{classifier}{num}_{suffix}", ctv, grid, "ctv")
    ptv = ptv_from_ctv(
        c, proto.ptv_margin(section), name=f"PTV{classifier}{num}_{suffix}", body=body
    )
    return g, c, ptv


# ---------------------------------------------------------------------------- options


# ---------------------------------------------------------------------------- options
def _lesion_ids(value: object, *, name: str) -> tuple[int, ...]:
    """``value`` as a tuple of lesion ids (:attr:`rtplan.lesions.Lesion.id`, int)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a tuple of lesion ids (int), got {type(value).__name__}")
    ids = tuple(value)
    bad = [
        v for v in ids if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
    ]
    if bad:
        raise TypeError(f"{name} must hold lesion ids (int), got {bad[0]!r}")
    return tuple(int(v) for v in ids)


@dataclass(frozen=True)
class OptionSpec:
    """What a field option treats, before any volume is built.

    Parameters
    ----------
    name : str
        Label, e.g. ``"PBRT+WPRT"``.
    pelvis : bool
        Whole-pelvis (elective nodal) RT with the prostate bed.
    local_boost : tuple of int
        Lesion ids (:attr:`rtplan.lesions.Lesion.id`) of PSMA-positive local recurrences
        boosted in the bed.
    node_boost : tuple of int
        Lesion ids of PSMA-positive pelvic nodes boosted (SIB in the pelvic course).
    sbrt_bone, sbrt_node : tuple of int
        Lesion ids treated with SBRT, each as its own course (bone, or extrapelvic node /
        other soft tissue).
    adt : bool
        ADT suggested with this option (reported, not dosed).
    description, evidence : str
        One-line description and the evidence line with its source.

    Raises
    ------
    TypeError
        When the name is not a string or a lesion id not an integer.
    InvalidInputError
        When a node boost is asked for without whole-pelvis RT.
    """

    name: str
    pelvis: bool = False
    local_boost: tuple[int, ...] = ()
    node_boost: tuple[int, ...] = ()
    sbrt_bone: tuple[int, ...] = ()
    sbrt_node: tuple[int, ...] = ()
    adt: bool = False
    description: str = ""
    evidence: str = ""

    def __post_init__(self) -> None:
        check_type(self.name, str, name="OptionSpec.name")
        if self.node_boost and not self.pelvis:
            raise InvalidInputError(
                f"option {self.name!r}: a pelvic-node boost needs whole-pelvis RT (pelvis=True)"
            )
        for field_name, ids in (
            ("local_boost", self.local_boost),
            ("node_boost", self.node_boost),
            ("sbrt_bone", self.sbrt_bone),
            ("sbrt_node", self.sbrt_node),
        ):
            object.__setattr__(self, field_name, _lesion_ids(ids, name=f"OptionSpec.{field_name}"))


@dataclass(frozen=True)
class _LesionGroups:
    """Lesion ids of a stage by how they can be treated."""

    local: tuple[int, ...]  # local recurrences (Tr): prostate-bed boost
    node: tuple[int, ...]  # pelvic nodes (N1): node boost
    bone: tuple[int, ...]  # bone metastases (M1b): SBRT
    soft: tuple[int, ...]  # extrapelvic nodes and organ metastases (M1a, M1c): SBRT


def _group_lesions(stage: Stage) -> _LesionGroups:
    """Group the staged lesions by category (a lesion in a bone region counts as bone)."""
    local: list[int] = []
    node: list[int] = []
    bone: list[int] = []
    soft: list[int] = []
    for lesion in stage.lesions:
        category = lesion.category or ""
        if category == "Tr":
            local.append(lesion.id)
        elif category == "N1":
            node.append(lesion.id)
        elif category == "M1b" or "bone" in (lesion.region or "").lower():
            bone.append(lesion.id)
        elif category.startswith("M1"):
            soft.append(lesion.id)
    return _LesionGroups(tuple(local), tuple(node), tuple(bone), tuple(soft))


_EV_SPPORT = (
    "SPPORT (NRG/RTOG 0534): 5-y freedom from progression 71% PBRT vs 83% PBRT+STAD vs "
    "89% PLNRT+PBRT+STAD (ASTRO 2018 interim; CLINICAL.md 4b)"
)
_EV_UCLA_T0 = (
    "UCLA PSMA-guided SRT (Nikitas et al., JNCCN 2026): WPRT did not improve PFS in "
    "T0N0M0 (CLINICAL.md 10a)"
)
_EV_UCLA_TR = (
    "UCLA PSMA-guided SRT (Nikitas et al., JNCCN 2026): WPRT improved PFS in TrN0M0, "
    "aHR 0.12, P = .035 (CLINICAL.md 10a)"
)
_EV_UCLA_ADT = (
    "UCLA PSMA-guided SRT (Nikitas et al., JNCCN 2026): ADT improved PFS in N1/M1, "
    "aHR 0.37 (CLINICAL.md 10a)"
)
_EV_BOOST_LR = (
    "Boost of a PSMA-positive local recurrence: typical 72-76 Gy, unverified (CLINICAL.md 4a); "
    "PSMA-guided intensification phase 2 (NCT03525288): prostate-bed boost in 15 patients"
)
_EV_NODE_BOOST = (
    "PSMA-positive pelvic nodes: elective pelvis 45-50 Gy with PET-positive regions boosted up "
    "to 60 Gy (multicentre PSMA SRT, EMUC 2021; CLINICAL.md 4a)"
)
_EV_SBRT = (
    "Metastasis-directed SBRT for oligometastases: STOMP (ADT-free survival 21 vs 13 mo, HR "
    "0.60), ORIOLE (progression at 6 mo 19% vs 61%) (CLINICAL.md 4d)"
)


def _spec_name(pelvis: bool, lr: bool, nb: bool, sbrt: bool, adt: bool) -> str:
    parts = ["PBRT"]
    if pelvis:
        parts.append("WPRT")
    if lr:
        parts.append("LRboost")
    if nb:
        parts.append("Nboost")
    if sbrt:
        parts.append("SBRT")
    if adt:
        parts.append("ADT")
    return "+".join(parts)


def _spec(
    *,
    pelvis: bool,
    groups: _LesionGroups,
    lr: bool,
    nb: bool,
    sbrt: bool,
    adt: bool,
    description: str,
    evidence: Sequence[str],
) -> OptionSpec:
    return OptionSpec(
        name=_spec_name(pelvis, lr and bool(groups.local), nb, sbrt, adt),
        pelvis=pelvis,
        local_boost=groups.local if lr else (),
        node_boost=groups.node if nb else (),
        sbrt_bone=groups.bone if sbrt else (),
        sbrt_node=groups.soft if sbrt else (),
        adt=adt,
        description=f"{description} {DISCLAIMER}",
        evidence="; ".join(evidence),
    )


def _options_localised(label: str, groups: _LesionGroups, has_local: bool) -> list[OptionSpec]:
    """N0M0: the prostate bed (with a local boost for Tr), without and with the pelvis."""
    if has_local:
        texts = (
            "prostate bed with a boost to the local recurrence.",
            "prostate bed with local boost plus elective pelvis.",
        )
        evidence = ((_EV_BOOST_LR, _EV_SPPORT), (_EV_UCLA_TR, _EV_SPPORT))
    else:
        texts = (
            "prostate bed only.",
            "prostate bed plus elective pelvis (SPPORT arm 3 added short-term ADT).",
        )
        evidence = ((_EV_SPPORT, _EV_UCLA_T0), (_EV_SPPORT, _EV_UCLA_T0))
    return [
        _spec(
            pelvis=pelvis,
            groups=groups,
            lr=has_local,
            nb=False,
            sbrt=False,
            adt=False,
            description=f"{label}: {text}",
            evidence=ev,
        )
        for pelvis, text, ev in zip((False, True), texts, evidence, strict=True)
    ]


class _PelvicOption(NamedTuple):
    """The pelvic part of an option for N1 / M1: fields, node boost, text and evidence."""

    pelvis: bool
    node_boost: bool
    text: str
    evidence: tuple[str, ...]


def _pelvic_options(has_local: bool, has_nodes: bool) -> list[_PelvicOption]:
    """With nodes: WPRT with and without a node boost; without: the bed. All with ADT."""
    local = " and a boost to the local recurrence" if has_local else ""
    adt_ev = (_EV_UCLA_ADT, _EV_SPPORT)
    if not has_nodes:  # distant disease without pelvic nodes: the bed is the pelvic target
        return [_PelvicOption(False, False, f"prostate bed{local}, with ADT", adt_ev)]
    return [
        _PelvicOption(
            True,
            True,
            f"prostate bed{local}, elective pelvis and a boost to the PSMA-positive nodes, "
            "with ADT",
            (_EV_NODE_BOOST, *adt_ev),
        ),
        _PelvicOption(
            True,
            False,
            f"prostate bed{local} and elective pelvis without a node boost, with ADT",
            adt_ev,
        ),
    ]


def _options_spread(
    label: str,
    groups: _LesionGroups,
    *,
    has_local: bool,
    has_nodes: bool,
    has_mets: bool,
    oligometastatic: bool,
) -> list[OptionSpec]:
    """N1 and/or M1: ADT with every option (UCLA aHR 0.37 in N1/M1), SBRT when oligo."""
    out: list[OptionSpec] = []
    bases = _pelvic_options(has_local, has_nodes)
    if has_mets:
        first = bases[0]
        if oligometastatic and (groups.bone or groups.soft):
            out.append(
                _spec(
                    pelvis=first.pelvis,
                    groups=groups,
                    lr=has_local,
                    nb=first.node_boost,
                    sbrt=True,
                    adt=True,
                    description=f"{label} (oligometastatic): {first.text}, and SBRT to each "
                    "metastasis.",
                    evidence=[_EV_SBRT, *first.evidence],
                )
            )
            bases = bases[:1]
        else:
            text = f"{first.text}. Not oligometastatic: pelvic RT shown for comparison only"
            bases = [first._replace(text=text)]
    for base in bases:
        out.append(
            _spec(
                pelvis=base.pelvis,
                groups=groups,
                lr=has_local,
                nb=base.node_boost,
                sbrt=False,
                adt=True,
                description=f"{label}: {base.text}.",
                evidence=base.evidence,
            )
        )
    return out


def suggest_options(stage: Stage, protocol: str | Protocol = "nrg_salvage") -> list[OptionSpec]:
    """The field options worth comparing for a PSMA PET stage, with their evidence.

    Decision support for comparison, never a prescription (see :data:`DISCLAIMER`).

    ============== ===============================================================
    stage          options
    ============== ===============================================================
    T0N0M0         PBRT; PBRT + WPRT (SPPORT; UCLA: no PFS gain from WPRT in T0N0M0)
    TrN0M0         PBRT + local-recurrence boost; the same + WPRT (UCLA aHR 0.12)
    N1 (M0)        PBRT + WPRT + ADT, with and without a PSMA-node boost (UCLA ADT
                   aHR 0.37); a local boost is added when there is a local recurrence
    M1 oligo       the pelvic option (N1: WPRT + node boost; N0: PBRT; + local boost
                   for Tr) + SBRT to each metastasis + ADT, and the same without SBRT
    M1 (not oligo) the pelvic option + ADT, for comparison only
    ============== ===============================================================

    Parameters
    ----------
    stage : Stage
        The stage :func:`rtplan.staging.stage` returns: its ``t``, ``n``, ``m`` and
        ``oligometastatic``, and its lesions by ``category`` (``"Tr"``, ``"N1"``,
        ``"M1a"``, ``"M1b"``, ``"M1c"``; a lesion whose ``region`` names a bone counts as
        bone) and ``id``.
    protocol : str or Protocol
        The protocol the options will be built with (checked here).

    Returns
    -------
    list of OptionSpec

    Raises
    ------
    TypeError
        When ``stage`` is not a :class:`~rtplan.staging.Stage` or ``protocol`` not a
        protocol.
    """
    check_type(
        stage,
        Stage,
        name="stage",
        expected_text="a rtplan.staging.Stage (from rtplan.staging.stage)",
    )
    _protocol(protocol)
    groups = _group_lesions(stage)
    has_local = stage.t == "Tr" or bool(groups.local)
    has_nodes = stage.n != "N0" or bool(groups.node)
    has_mets = stage.m != "M0" or bool(groups.bone or groups.soft)
    if not has_nodes and not has_mets:
        return _options_localised(stage.string, groups, has_local)
    return _options_spread(
        stage.string,
        groups,
        has_local=has_local,
        has_nodes=has_nodes,
        has_mets=has_mets,
        oligometastatic=stage.oligometastatic,
    )


# ---------------------------------------------------------------------------- building
def _lesions_by_id(lesions: object) -> dict[int, Lesion] | None:
    """The ``lesions`` argument of the builders as id -> lesion (``None`` when not given)."""
    if lesions is None:
        return None
    if isinstance(lesions, (str, bytes, Mapping)) or not isinstance(lesions, Iterable):
        raise TypeError(
            "lesions must be a Lesions collection, an iterable of Lesion or None, got "
            f"{type(lesions).__name__}"
        )
    items = list(lesions)
    bad = sorted({type(x).__name__ for x in items if not isinstance(x, Lesion)})
    if bad:
        raise TypeError(f"lesions must hold Lesion objects, got {', '.join(bad)}")
    by_id: dict[int, Lesion] = {}
    for lesion in items:
        if lesion.id in by_id:
            raise InvalidInputError(
                f"lesions {by_id[lesion.id].name!r} and {lesion.name!r} have the same id "
                f"{lesion.id}; option specs refer to lesions by id"
            )
        by_id[lesion.id] = lesion
    return by_id


def _course_fractions(proto: Protocol, dose_level: str) -> int:
    """Fractions of a course's dose level (``prostate_bed``, ``pelvic_nodes``, ``sbrt_*``)."""
    fractions = proto.prescription(dose_level).fractions
    if fractions is None:
        raise ProtocolError(f"{proto.name}: prescription.{dose_level}.fractions is required")
    return fractions


def _target(vols: _Boost, dose_gy: float) -> Target:
    gtv, ctv, ptv = vols
    return Target(ptv, dose_gy, ctv=ctv, gtv=gtv)


def _pelvic_courses(
    proto: Protocol,
    bed: tuple[Structure, Structure],
    nodes: tuple[Structure, Structure] | None,
    local: Sequence[_Boost],
    node: Sequence[_Boost],
) -> list[Course]:
    """The conventional courses: the bed alone, or with the pelvis (sequential or SIB).

    ``bed`` and ``nodes`` are (CTV, PTV) pairs; ``nodes`` is ``None`` without the pelvis.
    With ``technique.wprt_mode = "sequential"`` a pelvic course (PTVn and PTVsb at the
    pelvic dose, node boosts as SIB) then a prostate-bed boost course (local boosts as
    SIB); with ``"sib"`` one course at the prostate-bed fractionation.
    """
    technique = check_choice(proto.text("technique.pelvic"), TECHNIQUES, name="technique.pelvic")
    ctv_sb, ptv_sb = bed
    rx_pb = proto.prescription("prostate_bed").dose_gy
    rx_lr = proto.prescription("local_boost").dose_gy
    fx_pb = _course_fractions(proto, "prostate_bed")
    if nodes is None:
        targets = [Target(ptv_sb, rx_pb, ctv=ctv_sb), *(_target(v, rx_lr) for v in local)]
        return [Course("ProstateBed", technique, fx_pb, tuple(targets))]
    ctv_n, ptv_n = nodes
    rx_pn = proto.prescription("pelvic_nodes").dose_gy
    rx_nb = proto.prescription("node_boost").dose_gy
    fx_pn = _course_fractions(proto, "pelvic_nodes")
    boosts = [*(_target(v, rx_lr) for v in local), *(_target(v, rx_nb) for v in node)]
    if proto.text("technique.wprt_mode") != "sequential":
        first = [Target(ptv_sb, rx_pb, ctv=ctv_sb), Target(ptv_n, rx_pn, ctv=ctv_n), *boosts]
        return [Course("PelvisSIB", technique, fx_pb, tuple(first))]
    pelvis = [
        Target(ptv_n, rx_pn, ctv=ctv_n),
        Target(ptv_sb, rx_pn, ctv=ctv_sb),
        *(_target(v, rx_pn) for v in local),
        *(_target(v, rx_nb) for v in node),
    ]
    boost = [
        Target(ptv_sb, rx_pb - rx_pn, ctv=ctv_sb),
        *(_target(v, rx_lr - rx_pn) for v in local),
    ]
    return [
        Course("Pelvis", technique, fx_pn, tuple(pelvis)),
        Course("ProstateBedBoost", technique, fx_pb - fx_pn, tuple(boost)),
    ]


def _outside_notes(node: Sequence[_Boost], ctv_n: Structure) -> list[str]:
    """A note for each boosted node lying mostly (> 50 %) outside the elective nodal CTV."""
    notes = []
    for gtv, _, _ in node:
        inside = np.count_nonzero(gtv.mask & ctv_n.mask) / max(gtv.voxel_count, 1)
        if inside < 0.5:
            notes.append(
                f"{gtv.name} lies mostly outside {ctv_n.name} ({100 * inside:.0f}% inside)."
            )
    return notes


def _check_unique_names(option: str, courses: Sequence[Course]) -> None:
    """Raise when two different volumes of an option share a name."""
    seen: dict[str, Structure] = {}
    for c in courses:
        for t in c.targets:
            for s in (t.gtv, t.ctv, t.ptv):
                if s is None:
                    continue
                if s.name in seen and seen[s.name] is not s:
                    raise InvalidInputError(
                        f"option {option!r}: two different volumes named {s.name!r}"
                    )
                seen[s.name] = s


class _OptionBuilder:
    """Builds options on one anatomy and protocol, each shared volume once.

    Parameters
    ----------
    atlas : AtlasLike
        The anatomy.
    protocol : Protocol
        Margins, borders and doses.
    lesions : dict of int to Lesion, or None
        The lesions the specs refer to, by id (``None``: none were given).
    """

    def __init__(
        self, atlas: AtlasLike, protocol: Protocol, lesions: Mapping[int, Lesion] | None
    ) -> None:
        self.atlas = atlas
        self.protocol = protocol
        self.lesions = lesions
        self.body = _body(atlas)
        self._elective: dict[str, tuple[Structure, Structure]] = {}
        self._boosts: dict[tuple[str, int, int], _Boost] = {}
        self._evaluation: dict[str, Structure | None] = {}

    def elective(self, target: str) -> tuple[Structure, Structure]:
        """(CTV, PTV) of ``"prostate_bed"`` or ``"pelvic_nodes"``."""
        if target not in self._elective:
            build = ctv_prostate_bed if target == "prostate_bed" else ctv_pelvic_nodes
            ctv = build(self.atlas, self.protocol)
            ptv = ptv_from_ctv(
                ctv,
                self.protocol.ptv_margin(target),
                name=ctv.name.replace("CTV", "PTV", 1),
                body=self.body,
            )
            self._elective[target] = (ctv, ptv)
        return self._elective[target]

    def lesion(self, lesion_id: int) -> Lesion:
        """The lesion with this id, or raise naming it."""
        if self.lesions is None:
            raise MissingStructureError(f"lesion {lesion_id!r} is needed but no lesions were given")
        if lesion_id not in self.lesions:
            raise MissingStructureError(f"no lesion with id {lesion_id!r} in the lesions given")
        return self.lesions[lesion_id]

    def boost(self, kind: str, lesion_id: int, number: int | None, *, key: int) -> _Boost:
        """GTV, CTV and PTV of a lesion, remembered under ``(kind, lesion_id, key)``.

        ``key`` is the enumerator for node boosts and SBRT, and the number of local
        boosts of the option for a local boost (so a local recurrence keeps its name
        across the options that boost the same number of them).
        """
        cache_key = (kind, lesion_id, key)
        if cache_key not in self._boosts:
            self._boosts[cache_key] = boost_volumes(
                self.lesion(lesion_id).structure,
                self.atlas,
                self.protocol,
                kind=kind,
                number=number,
            )
        return self._boosts[cache_key]

    def evaluation(self, ptv: Structure, crop_mm: float) -> Structure | None:
        """The evaluation PTV of ``ptv`` (remembered by name), or None."""
        if ptv.name not in self._evaluation:
            self._evaluation[ptv.name] = evaluation_ptv(ptv, self.body, crop_mm)
        return self._evaluation[ptv.name]

    def sbrt_courses(self, spec: OptionSpec) -> list[Course]:
        """One ``"sbrt"`` course per SBRT lesion, bone lesions first, numbered from 1."""
        courses: list[Course] = []
        n = 0
        for kind, ids in (("sbrt_bone", spec.sbrt_bone), ("sbrt_node", spec.sbrt_node)):
            rx = self.protocol.prescription(kind)
            fractions = _course_fractions(self.protocol, kind)
            for lesion_id in ids:
                n += 1
                vols = self.boost(kind, lesion_id, n, key=n)
                courses.append(Course(f"SBRT_{n}", "sbrt", fractions, (_target(vols, rx.dose_gy),)))
        return courses

    def evaluation_ptvs(self, courses: Sequence[Course]) -> list[Structure]:
        """Evaluation PTVs of the options' PTVs, each PTV once, where the crop changes it."""
        crop_mm = self.protocol.number("ptv.evaluation.crop_from_body_mm")
        out: list[Structure] = []
        done: set[str] = set()
        for c in courses:
            for t in c.targets:
                if t.ptv.name in done:
                    continue
                done.add(t.ptv.name)
                ev = self.evaluation(t.ptv, crop_mm)
                if ev is not None:
                    out.append(ev)
        return out

    def option(self, spec: OptionSpec) -> FieldOption:
        """Build the volumes, courses and prescriptions of one option."""
        n_local = len(spec.local_boost)
        bed = self.elective("prostate_bed")
        local = [
            self.boost("local_boost", lid, None if n_local == 1 else i, key=n_local)
            for i, lid in enumerate(spec.local_boost, start=1)
        ]
        node = [
            self.boost("node_boost", lid, i, key=i)
            for i, lid in enumerate(spec.node_boost, start=1)
        ]
        notes: list[str] = []
        nodes = None
        if spec.pelvis:
            nodes = self.elective("pelvic_nodes")
            notes = _outside_notes(node, nodes[0])
        courses = _pelvic_courses(self.protocol, bed, nodes, local, node)
        courses += self.sbrt_courses(spec)
        _check_unique_names(spec.name, courses)
        return FieldOption(
            name=spec.name,
            courses=tuple(courses),
            adt=spec.adt,
            description=" ".join([spec.description or DISCLAIMER, *notes]),
            evidence=spec.evidence,
            extra_structures=tuple(self.evaluation_ptvs(courses)),
        )


def build_option(
    spec: OptionSpec,
    atlas: AtlasLike,
    lesions: Lesions | Iterable[Lesion] | None = None,
    protocol: str | Protocol = "nrg_salvage",
) -> FieldOption:
    """Build the target volumes, courses and prescriptions of one option.

    Parameters
    ----------
    spec : OptionSpec
        What to treat (from :func:`suggest_options`, or written by hand).
    atlas : AtlasLike
        Anatomy with ``grid``, ``structures`` and ``landmarks``.
    lesions : Lesions or iterable of Lesion, optional
        The lesions the spec refers to by :attr:`~rtplan.lesions.Lesion.id`, on the
        anatomy's grid; needed when the spec boosts or treats lesions.
    protocol : str or Protocol
        Margins, borders and doses.

    Returns
    -------
    FieldOption
        Courses: with ``technique.wprt_mode = "sequential"`` a pelvic course (PTVn and
        PTVsb at the pelvic dose, node boosts as SIB) then a prostate-bed boost course
        (with the local boost as SIB); with ``"sib"`` one course. PBRT alone is one
        course. Each SBRT lesion is its own ``"sbrt"`` course. Evaluation PTVs (cropped
        from the body surface) are in ``extra_structures`` when they differ.

    Raises
    ------
    TypeError
        When ``spec``, ``atlas``, ``lesions`` or ``protocol`` is not of its type.
    MissingStructureError
        When a lesion the spec refers to is not among ``lesions``.
    """
    check_type(spec, OptionSpec, name="spec", expected_text="an OptionSpec")
    check_atlas(atlas)
    proto = _protocol(protocol)
    return _OptionBuilder(atlas, proto, _lesions_by_id(lesions)).option(spec)


def _as_specs(specs: object, proto: Protocol) -> list[OptionSpec]:
    """The ``specs`` argument of :func:`build_options` as a list of OptionSpec."""
    if isinstance(specs, OptionSpec):
        return [specs]
    if isinstance(specs, Stage):
        return suggest_options(specs, proto)
    if isinstance(specs, Sequence) and not isinstance(specs, str):
        items = list(specs)
        if all(isinstance(s, OptionSpec) for s in items):
            return [s for s in items if isinstance(s, OptionSpec)]
    raise TypeError(
        "specs must be an OptionSpec, a sequence of OptionSpec (rtplan.volumes.suggest_options) "
        f"or a Stage, got {type(specs).__name__} {specs!r:.60}"
    )


def build_options(
    specs: OptionSpec | Sequence[OptionSpec] | Stage,
    atlas: AtlasLike,
    lesions: Lesions | Iterable[Lesion] | None = None,
    protocol: str | Protocol = "nrg_salvage",
) -> list[FieldOption]:
    """Build several options on one anatomy, sharing the volumes they have in common.

    Parameters
    ----------
    specs : OptionSpec, sequence of OptionSpec, or Stage
        Options to build; a stage is first passed to :func:`suggest_options`.
    atlas : AtlasLike
        Anatomy.
    lesions : Lesions or iterable of Lesion, optional
        The lesions the specs refer to by id.
    protocol : str or Protocol
        Margins, borders and doses.

    Returns
    -------
    list of FieldOption

    Raises
    ------
    TypeError
        When ``specs``, ``atlas``, ``lesions`` or ``protocol`` is not of its type.
    """
    proto = _protocol(protocol)
    spec_list = _as_specs(specs, proto)
    check_atlas(atlas)
    builder = _OptionBuilder(atlas, proto, _lesions_by_id(lesions))
    return [builder.option(s) for s in spec_list]


# ---------------------------------------------------------------------------- reporting
@dataclass(frozen=True)
class TargetOverlap:
    """Overlap of a target volume with an organ.

    Attributes
    ----------
    target, organ : str
        Names.
    overlap_cc : float
        Volume in both, cc.
    pct_of_organ, pct_of_target : float
        The overlap as a percentage of the organ's and of the target's volume.
    """

    target: str
    organ: str
    overlap_cc: float
    pct_of_organ: float
    pct_of_target: float


def target_overlaps(
    option: FieldOption, atlas: AtlasLike, organs: Sequence[str] = ("Rectum", "Bladder")
) -> list[TargetOverlap]:
    """Overlap of each PTV of an option with each organ (cc and %).

    Parameters
    ----------
    option : FieldOption
    atlas : AtlasLike
        Anatomy holding the organs.
    organs : sequence of str
        Organ names; missing ones are skipped.

    Returns
    -------
    list of TargetOverlap
        One per (PTV, organ present), PTVs in course order, each PTV once.

    Raises
    ------
    TypeError
        When ``option``, ``atlas`` or ``organs`` is not of its type.
    """
    check_type(option, FieldOption, name="option")
    check_atlas(atlas)
    check_names(organs, name="organs")
    ss = atlas.structures
    out = []
    done: set[str] = set()
    for t in option.targets:
        if t.ptv.name in done:
            continue
        done.add(t.ptv.name)
        pm = t.ptv.mask
        for organ in organs:
            if organ not in ss or ss[organ].is_empty:
                continue
            o = ss[organ]
            n = int(np.count_nonzero(pm & o.mask))
            cc = n * t.ptv.grid.voxel_volume_cc
            out.append(
                TargetOverlap(
                    t.ptv.name,
                    o.name,
                    cc,
                    100.0 * n / max(o.voxel_count, 1),
                    100.0 * n / max(t.ptv.voxel_count, 1),
                )
            )
    return out


def option_volume_table(
    option: FieldOption, atlas: AtlasLike | None = None
) -> list[dict[str, str | float | None]]:
    """One row per target volume of an option: name, role, volume, total dose, overlaps.

    Parameters
    ----------
    option : FieldOption
    atlas : AtlasLike, optional
        When given, PTV rows get ``rectum_overlap_cc`` / ``_pct`` and
        ``bladder_overlap_cc`` / ``_pct`` (percent of the organ).

    Returns
    -------
    list of dict
        Keys ``option``, ``structure``, ``role`` (str), ``volume_cc``, ``total_dose_gy``
        (summed over courses, physical dose; None for a volume without prescription) and
        the overlap keys (float).

    Raises
    ------
    TypeError
        When ``option`` or ``atlas`` is not of its type.
    """
    check_type(option, FieldOption, name="option")
    totals: dict[str, float] = {}
    vols: dict[str, Structure] = {}
    for t in option.targets:
        totals[t.ptv.name] = totals.get(t.ptv.name, 0.0) + t.prescription_gy
        for s in (t.gtv, t.ctv, t.ptv):
            if s is not None:
                vols.setdefault(s.name, s)
    overlaps: dict[tuple[str, str], TargetOverlap] = {}
    if atlas is not None:
        for overlap in target_overlaps(option, atlas):
            overlaps[(overlap.target, overlap.organ.lower())] = overlap
    rows = []
    for name, s in vols.items():
        row: dict[str, str | float | None] = {
            "option": option.name,
            "structure": name,
            "role": s.role,
            "volume_cc": round(s.volume_cc, 2),
            "total_dose_gy": round(totals[name], 2) if name in totals else None,
        }
        for organ in ("rectum", "bladder"):
            o = overlaps.get((name, organ))
            if o is not None:
                row[f"{organ}_overlap_cc"] = round(o.overlap_cc, 2)
                row[f"{organ}_overlap_pct"] = round(o.pct_of_organ, 1)
        rows.append(row)
    return rows
