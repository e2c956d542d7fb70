"""Target volumes for each field option: prostate bed, pelvic nodes, boosts, SBRT.

Every margin, border and dose comes from a :class:`~rtplan.protocol.Protocol` (TOML, see
:mod:`rtplan.protocol`); the few values a protocol cannot hold yet are module constants
with their source (:data:`MESORECTAL_MARGIN_MM`, :data:`ADT_SHORT_MONTHS`,
:data:`ADT_LONG_MONTHS`, :data:`ALPHA_BETA_PROSTATE_GY`). The builders work on an
*anatomy*, :class:`rtplan.staging.AtlasLike`: an object with ``grid``
(:class:`~rtplan.grid.ImageGrid`), ``structures`` (:class:`~rtplan.structures.StructureSet`,
TG-263 names) and ``landmarks`` (mapping of name -> LPS ``(x, y, z)`` mm), such as
:class:`rtplan.atlas.Atlas`. Landmarks that are missing are derived from the structures
where possible (:func:`landmark_z_mm`: e.g. ``PubicSymphysis_Top`` = the top of
``PubicSymphys``, ``L5S1_Interspace`` = between ``VB_L5`` and ``VB_S1``).

Volumes
-------
* :func:`ctv_prostate_bed` -- ``CTVsb_<cGy>``, RTOG 2010 consensus (Michalski et al.,
  IJROBP 2010;76:361): the prostate-bed region of :func:`rtplan.staging.prostate_bed_region`
  (its border table is there), the same region in which staging calls a lesion a local
  recurrence. Laterally, below the top of the symphysis, the CTV reaches the levator ani /
  obturator internus; a cap from the midline is only a protocol option
  (``lateral_cap_mm``).
* :func:`ctv_pelvic_nodes` -- ``CTVn_<cGy>``, RTOG 2009 consensus (Lawton et al., IJROBP
  2009;74:383) and its NRG 2021 update (Hall et al., IJROBP 2021;109:174): common,
  external and internal iliac vessels plus ``vessel_margin_mm`` in-plane (radial);
  presacral strip ``presacral_depth_mm`` in front of the anterior surface of
  ``presacral_vertebrae`` (S1-S3), at most ``presacral_halfwidth_mm`` from the midline
  and never in the sacral canal; obturator strip ``obturator_strip_width_mm`` medial to
  the obturator internus, and the same width of pelvic sidewall joining the external and
  internal iliac regions from the inferior border up to the iliac bifurcation (Taylor et
  al. 2005: obturator strip >= 18 mm along the sidewall); the external iliac region stops
  at the top of the femoral heads, the rest at the top of the pubic symphysis; superior
  border at the ``superior_border`` landmark (NRG 2021: L4/L5 interspace; RTOG 2009:
  L5/S1); cropped from bone, bowel loops (``Bowel``, ``Bowel_Small``, ``Bowel_Large``,
  ``Colon``, ``Colon_Sigmoid``; not the peritoneal space ``Spc_Bowel``, which is not
  bowel), bladder, rectum, muscle and the sacral canal. Node-positive adaptations:
  ``superior_border="AorticBifurcation"`` for common iliac disease, ``mesorectal=True``
  adds the mesorectum (``MESORECTAL_MARGIN_MM`` around the rectum) for a PSMA-positive
  perirectal node.
* boosts (:func:`boost_volumes`): a PSMA-positive local recurrence (``GTVp`` ->
  ``CTVp_<cGy>`` -> ``PTVp_<cGy>``), PSMA-positive nodes (``GTVn1`` ->
  ``CTVn1_<cGy>`` -> ``PTVn1_<cGy>``) and SBRT lesions (``GTV1`` = ``CTV1_<cGy>`` ->
  ``PTV1_<cGy>``).
* PTVs (:func:`ptv_from_ctv`): the CTV grown by the protocol margin (anisotropic allowed,
  clipped at the grid edge with a warning) and kept inside ``Body``; evaluation PTVs
  (:func:`evaluation_ptv`) end ``crop_from_body_mm`` inside the body surface and carry the
  TG-263 ``-xx`` suffix (only made when the crop removes something).

Names follow AAPM TG-263 (CLINICAL.md section 8): type, classifier (``sb`` surgical bed,
``n`` nodal, ``p`` primary), enumerator, then the total dose in cGy; at most 16 characters
and unique within an option. An adapted elective nodal CTV says so in its name
(``CTVnExt_4500``: extended to the aortic bifurcation; ``CTVnMR_4500``: with the
mesorectum).

Field options
-------------
:func:`suggest_options` lists the options worth comparing for a PROMISE miTNM stage
(:class:`rtplan.staging.Stage`), each with its evidence line (CLINICAL.md sections 4b, 4d
and 10a), its ADT duration (:attr:`OptionSpec.adt_duration`) and, once built, the EQD2 of
each prescription (:func:`prescription_eqd2`); :func:`build_options` builds them as
:class:`~rtplan.plan.FieldOption` objects. This is decision support for comparing
options, never a prescription: the options, doses and evidence lines are for the treating
team to weigh.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from rtplan._masks import (
    Box,
    bbox_of,
    closing,
    crop_organs,
    grown_box,
    named,
    quiet_expand,
    reach_voxels,
    slices_between,
    union_in_box,
    whole_box,
)
from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import (
    as_mask,
    bounding_box,
    check_choice,
    check_names,
    check_type,
    is_real,
)
from rtplan.dose_estimate import eqd2_gy
from rtplan.errors import (
    GeometryError,
    InvalidInputError,
    MissingStructureError,
    ProtocolError,
)
from rtplan.grid import ImageGrid, check_same_grid
from rtplan.lesions import Lesion, Lesions
from rtplan.margins import Margin, expand
from rtplan.plan import TECHNIQUES, Course, FieldOption, Target
from rtplan.protocol import Protocol, load_protocol
from rtplan.staging import (
    PERIRECTAL_REGION,
    AtlasLike,
    Stage,
    check_atlas,
    is_counted,
    landmark_z_mm,
    prostate_bed_region,
)
from rtplan.structures import Structure, StructureSet

__all__ = [
    "ADT_LONG_MONTHS",
    "ADT_SHORT_MONTHS",
    "ALPHA_BETA_PROSTATE_GY",
    "DISCLAIMER",
    "MESORECTAL_MARGIN_MM",
    "NODAL_SUPERIOR_BORDERS",
    "OptionSpec",
    "PrescriptionEQD2",
    "SkippedOption",
    "TargetOverlap",
    "boost_volumes",
    "build_option",
    "build_options",
    "build_options_partial",
    "ctv_pelvic_nodes",
    "ctv_prostate_bed",
    "evaluation_ptv",
    "landmark_z_mm",
    "option_volume_table",
    "prescription_eqd2",
    "ptv_from_ctv",
    "suggest_options",
    "target_overlaps",
]

#: Wording attached to every suggested option.
DISCLAIMER = (
    "Decision support for comparing options, not a prescription: the choice of field, dose "
    "and ADT rests with the treating team."
)

#: Short-term ADT (months) with salvage RT: SPPORT arm 2 and 3 STAD, 4-6 months starting
#: about 2 months before RT (Pollack et al., Lancet 2022; CLINICAL.md section 4b [V]).
ADT_SHORT_MONTHS: tuple[int, int] = (4, 6)

#: Long-term ADT (months): RADICALS-HD gave 24 months (vs 6) with postoperative RT, 10-year
#: metastasis-free survival 78.1 % vs 71.9 %, HR 0.773 (Parker et al., Lancet 2024;
#: @parker2024_radicals_hd [V-3p]); 18 months is the lower end in common use (tool default
#: [U]). No trial fixes the duration for PSMA-positive nodes or oligometastases.
ADT_LONG_MONTHS: tuple[int, int] = (18, 24)

#: alpha/beta of prostate cancer for the EQD2 of prescriptions: about 1.4-1.7 Gy, 1.5 Gy
#: used (review PMID 23482774; CLINICAL.md section 7 [V]); the protocol's
#: ``alpha_beta.prostate`` wins when the option is built.
ALPHA_BETA_PROSTATE_GY = 1.5

#: Mesorectal coverage added to the elective nodal CTV for a PSMA-positive perirectal node:
#: the rectum grown this far in-plane (tool default 10 mm, standing in for the mesorectal
#: fascia; the NRG 2021 atlas names perirectal nodes as optional in node-positive cases,
#: CLINICAL.md 2b [U]).
MESORECTAL_MARGIN_MM = 10.0

#: Superior borders of the elective nodal CTV (landmarks): RTOG 2009 (L5/S1), NRG 2021
#: (L4/L5; CLINICAL.md 2b [U]) and the aortic bifurcation (common iliac disease).
NODAL_SUPERIOR_BORDERS: tuple[str, ...] = (
    "L5S1_Interspace",
    "L4L5_Interspace",
    "AorticBifurcation",
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
#: Bowel loops (TG-263). The peritoneal space ``Spc_Bowel`` is not bowel: RTOG 2009 carves
#: bowel out of the nodal CTV (Lawton et al. 2009), not the space the loops may occupy.
_BOWEL = ("Bowel", "Bowel_Small", "Bowel_Large", "Colon", "Colon_Sigmoid")
_RECTUM = ("Rectum", "Canal_Anal")
_MUSCLES = ("Iliopsoas_L", "Iliopsoas_R", "Obturator_Int_L", "Obturator_Int_R", "Levator_Ani")
#: The sacral canal's contents when the anatomy has them (TG-263); the canal itself is
#: also found as the hole of the sacrum and vertebrae on each slice.
_CANAL = ("CaudaEquina", "SpinalCanal", "SpinalCord")
_SPINE = ("Sacrum", "VB_S1", "VB_S2", "VB_S3", "VB_L4", "VB_L5")
_VESSELS_COMMON = ("A_Iliac_L", "A_Iliac_R", "V_Iliac_L", "V_Iliac_R")
_VESSELS_EXT = {"L": ("A_Iliac_Ext_L", "V_Iliac_Ext_L"), "R": ("A_Iliac_Ext_R", "V_Iliac_Ext_R")}
_VESSELS_INT = {"L": ("A_Iliac_Int_L", "V_Iliac_Int_L"), "R": ("A_Iliac_Int_R", "V_Iliac_Int_R")}
_ALL_VESSELS = (
    *_VESSELS_COMMON,
    *_VESSELS_EXT["L"],
    *_VESSELS_EXT["R"],
    *_VESSELS_INT["L"],
    *_VESSELS_INT["R"],
)
_SIDEWALL = {
    side: (
        f"Bone_Ilium_{side}",
        f"Bone_Ischium_{side}",
        f"Obturator_Int_{side}",
        f"Iliopsoas_{side}",
    )
    for side in ("L", "R")
}
_BOOST_KINDS = ("local_boost", "node_boost", "sbrt_bone", "sbrt_node")
_MAX_NAME = 16

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


def _inplane(mm: float) -> Margin:
    return Margin(right=mm, left=mm, anterior=mm, posterior=mm)


def _body(atlas: AtlasLike) -> Structure | None:
    """The anatomy's ``Body`` structure, when it has one."""
    return atlas.structures["Body"] if "Body" in atlas.structures else None


def _structure(name: str, mask: BoolMask, grid: ImageGrid, role: str) -> Structure:
    return Structure(_tg263(name), mask, grid, role=role)


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


@dataclass(frozen=True)
class _Work:
    """The index box of the grid a nodal CTV is built on, and what the build reads there.

    Every mask of the build is an array of ``box``'s shape. The box holds whole each
    structure that is grown or measured (see :func:`_work_box`), so each step gives there
    the whole-grid result, at the cost of the box. The coordinates are the grid's,
    sliced, so every comparison with a landmark is the whole-grid one.
    """

    grid: ImageGrid
    ss: StructureSet
    box: Box
    sub: ImageGrid  # grid.crop(box): the geometry of the work arrays, for margins
    z_mm: FloatArray
    y_mm: FloatArray
    x_mm: FloatArray
    z_top_mm: float  # the grid's highest slice

    @classmethod
    def on(cls, atlas: AtlasLike, box: Box) -> _Work:
        grid = atlas.grid
        z_mm, y_mm, x_mm = grid.axis_coordinates_mm()
        return cls(
            grid=grid,
            ss=atlas.structures,
            box=box,
            sub=grid.crop(box),
            z_mm=z_mm[box[0]],
            y_mm=y_mm[box[1]],
            x_mm=x_mm[box[2]],
            z_top_mm=float(z_mm.max()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        k, j, i = (b.stop - b.start for b in self.box)
        return (k, j, i)

    def union(self, names: Iterable[str]) -> BoolMask:
        """Union of the named structures (synonyms resolved) in the box."""
        return union_in_box(named(self.ss, names), self.box)

    def slices(self, lo_mm: float, hi_mm: float) -> BoolMask:
        """The slices of the box between two heights, shape ``(nk, 1, 1)`` to broadcast."""
        sel: BoolMask = slices_between(self.grid, lo_mm, hi_mm)[self.box[0], None, None]
        return sel

    def on_grid(self, local: Box) -> Box:
        """An index box of the work arrays as an index box of the grid."""
        k, j, i = (slice(a.start + b.start, a.stop + b.start) for a, b in zip(local, self.box))
        return (k, j, i)


def _sacral_vertebrae(ss: StructureSet, rules: _NodeRules) -> list[Structure]:
    """The bones the presacral strip lies in front of: ``presacral_vertebrae``, else Sacrum."""
    vertebrae = named(ss, rules.presacral_vertebrae)
    if bbox_of(vertebrae) is None:
        return named(ss, ("Sacrum",))
    return vertebrae


def _work_box(ss: StructureSet, grid: ImageGrid, rules: _NodeRules, mesorectal: bool) -> Box:
    """The box a nodal CTV is built on (a :class:`_Work`): where every step is exact.

    Each structure that is grown (the vessels, the obturator internus, the rectum for the
    mesorectum) or measured whole (the sacral vertebrae: midline and anterior surface)
    lies in it with the reach of its margin around it (:func:`rtplan._masks.reach_voxels`),
    so its expansion is neither cut nor clipped; the CTV before smoothing lies there too
    (it is made of those), and the reach of the closing is added around all of it. The
    organs cropped away and the sacral canal are read on their own boxes
    (:func:`rtplan._masks.crop_organs`, :func:`_sacral_canal`), so they need no room.
    """
    vessel_mm = rules.vessel_margin_mm + max(rules.external_iliac_anterolateral_mm, 0.0)
    width_mm = rules.obturator_strip_width_mm
    sources = [
        (named(ss, _ALL_VESSELS), _inplane(vessel_mm)),
        (named(ss, ("Obturator_Int_L", "Obturator_Int_R")), _inplane(max(width_mm, 0.0))),
        (_sacral_vertebrae(ss, rules), _inplane(rules.presacral_depth_mm)),
    ]
    if mesorectal:
        sources.append((named(ss, ("Rectum",)), _inplane(MESORECTAL_MARGIN_MM)))
    boxes = [
        grown_box(b, reach_voxels(grid, margin), grid.shape)
        for structures, margin in sources
        if (b := bbox_of(structures)) is not None
    ]
    if not boxes:
        return whole_box(grid)
    k, j, i = (
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
    )
    return grown_box((k, j, i), reach_voxels(grid, rules.smoothing_mm), grid.shape)


@dataclass(frozen=True)
class _VesselRegions:
    """The vessels grown by the margin: common iliac, and per side external and internal."""

    common: BoolMask
    external: dict[str, BoolMask]
    internal: dict[str, BoolMask]

    @property
    def union(self) -> BoolMask:
        out = self.common.copy()
        for part in (*self.external.values(), *self.internal.values()):
            out |= part
        return out


def _vessel_regions(atlas: AtlasLike, rules: _NodeRules, work: _Work) -> _VesselRegions:
    """Common, internal and external iliac vessels grown in-plane by the vessel margin.

    The external iliac region of each side stops at the ``external_iliac_inferior``
    landmark of that side (the top of the femoral head). Masks of ``work``'s box.
    """
    vm = rules.vessel_margin_mm
    common = quiet_expand(work.union(_VESSELS_COMMON), work.sub, _inplane(vm))
    extra = rules.external_iliac_anterolateral_mm
    external: dict[str, BoolMask] = {}
    internal: dict[str, BoolMask] = {}
    for side in ("L", "R"):
        side_margin = Margin(
            right=vm + (extra if side == "R" else 0.0),
            left=vm + (extra if side == "L" else 0.0),
            anterior=vm + extra,
            posterior=vm,
        )
        ext = quiet_expand(work.union(_VESSELS_EXT[side]), work.sub, side_margin)
        z_ext = landmark_z_mm(atlas, f"{rules.external_iliac_inferior}_{side}")
        external[side] = ext & work.slices(z_ext, work.z_top_mm)
        internal[side] = quiet_expand(work.union(_VESSELS_INT[side]), work.sub, _inplane(vm))
    return _VesselRegions(common, external, internal)


def _presacral_strip(work: _Work, rules: _NodeRules) -> BoolMask:
    """Strip ``presacral_depth_mm`` deep in front of the sacral vertebral bodies' surface.

    Column by column on each slice of ``presacral_vertebrae`` (else ``Sacrum``), from the
    most anterior bone voxel forward, so nothing behind the anterior surface (the sacral
    canal, the foramina) is in it; at most ``presacral_halfwidth_mm`` from the
    vertebrae's mean x when that is set; empty without sacral structures. A mask of
    ``work``'s box (which holds the vertebrae whole).
    """
    vb = union_in_box(_sacral_vertebrae(work.ss, rules), work.box)
    if not vb.any():
        return vb
    Y = work.y_mm[None, :, None]
    levels = np.flatnonzero(vb.any(axis=(1, 2)))
    zs = slice(int(levels[0]), int(levels[-1]) + 1)  # only the slices with sacral bone
    has = vb[zs].any(axis=1)  # [slice, column]
    front = np.where(has, np.where(vb[zs], Y, np.inf).min(axis=1), np.nan)  # y of the surface
    depth = rules.presacral_depth_mm
    strip: BoolMask = np.zeros(work.shape, bool)
    strip[zs] = (Y < front[:, None, :]) & (Y >= front[:, None, :] - depth)
    half = rules.presacral_halfwidth_mm
    if half is not None:
        x_mid = float(np.mean(work.x_mm[vb.any(axis=(0, 1))]))
        strip &= (np.abs(work.x_mm - x_mid) <= half)[None, None, :]
    return strip


def _obturator_strips(work: _Work, width_mm: float) -> BoolMask:
    """Strips ``width_mm`` wide medial to each obturator internus present (``work``'s box)."""
    region = np.zeros(work.shape, bool)
    for side, medial in (("L", Margin(right=width_mm)), ("R", Margin(left=width_mm))):
        key = work.ss.resolve(f"Obturator_Int_{side}")
        if key is not None and width_mm > 0:
            obt = union_in_box([work.ss[key]], work.box)
            region |= quiet_expand(obt, work.sub, medial) & ~obt
    return region


def _hull_2d(mask2d: BoolMask) -> BoolMask:
    """The filled convex hull of a 2-D mask (voxel centres); the mask itself when flat."""
    pts = np.argwhere(mask2d).astype(float)
    if len(pts) < 3:
        return mask2d
    try:
        hull = ConvexHull(pts)
    except QhullError:  # all points on a line: nothing to fill between them
        return mask2d
    lo = pts.min(axis=0).astype(int)
    hi = pts.max(axis=0).astype(int) + 1
    jj, ii = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
    grid_pts = np.stack([jj.ravel(), ii.ravel()], axis=1).astype(float)
    inside = np.all(grid_pts @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
    out = mask2d.copy()
    out[lo[0] : hi[0], lo[1] : hi[1]] |= inside.reshape(jj.shape)
    return out


def _sidewall_bridges(
    atlas: AtlasLike,
    work: _Work,
    vessels: _VesselRegions,
    obturator: BoolMask,
    z_inf: float,
    width_mm: float,
) -> BoolMask:
    """The pelvic sidewall between the external and internal iliac regions, per side.

    On each slice from ``z_inf`` up to the side's iliac bifurcation: the convex hull of
    that side's external iliac, internal iliac and obturator regions, within ``width_mm``
    of the sidewall (``Bone_Ilium``, ``Bone_Ischium``, ``Obturator_Int``, ``Iliopsoas``
    of the side, when present). This is the obturator fossa / sidewall strip of Lawton
    2009 and Taylor et al. 2005 (>= 18 mm along the sidewall, CLINICAL.md 2a, 2c) that
    joins the two vessel islands. A mask of ``work``'s box.
    """
    ss, z_mm, x_mm = work.ss, work.z_mm, work.x_mm
    out = np.zeros(work.shape, bool)
    x_mid = float(np.mean(x_mm[vessels.union.any(axis=(0, 1))]))
    for side in ("L", "R"):
        on_side = (x_mm > x_mid) if side == "L" else (x_mm < x_mid)
        parts = vessels.external[side] | vessels.internal[side] | (obturator & on_side)
        try:
            z_top = landmark_z_mm(atlas, f"IliacBifurcation_{side}")
        except MissingStructureError:
            z_top = work.z_top_mm
        parts &= ((z_mm >= z_inf - 1e-6) & (z_mm <= z_top + 1e-6))[:, None, None]
        box = bounding_box(parts)
        if box is None:
            continue
        local = out[box]
        walls = [ss[key] for n in _SIDEWALL[side] if (key := ss.resolve(n)) is not None]
        near_wall = _near_in_plane(walls, work.grid, work.on_grid(box), width_mm)
        for k in np.flatnonzero(parts[box].any(axis=(1, 2))):
            hull = _hull_2d(parts[box][k])  # the hull stays inside the box
            local[k] |= hull if near_wall is None else hull & near_wall[k]
    return out


def _near_in_plane(
    structures: Sequence[Structure], grid: ImageGrid, box: Box, width_mm: float
) -> BoolMask | None:
    """The union of ``structures`` grown ``width_mm`` in-plane, on ``box`` only.

    Only what lies within ``width_mm`` of the box (in-plane) can reach it, so the union
    is taken and grown on the box padded by that much, not on the whole grid. None when
    the structures are absent or empty there.
    """

    def widened(b: slice, axis: int) -> slice:
        p = math.ceil(width_mm / grid.spacing_mm[axis]) + 1
        return slice(max(b.start - p, 0), min(b.stop + p, grid.shape[axis]))

    padded: Box = (box[0], widened(box[1], 1), widened(box[2], 2))
    mask = union_in_box(structures, padded)
    if not mask.any():
        return None
    grown = quiet_expand(mask, grid.crop(padded), _inplane(width_mm))
    near: BoolMask = grown[
        :,
        box[1].start - padded[1].start : box[1].stop - padded[1].start,
        box[2].start - padded[2].start : box[2].stop - padded[2].start,
    ]
    return near


def _sacral_canal(ss: StructureSet, grid: ImageGrid, box: Box | None = None) -> BoolMask:
    """The spinal / sacral canal: named structures, and the holes of the sacrum and spine.

    A hole is found slice by slice (2-D hole filling of the bone minus the bone). A mask
    of ``box`` (default: the whole grid); the holes are still found on the bone's whole
    slices.
    """
    if box is None:
        box = whole_box(grid)
    canal = union_in_box(named(ss, _CANAL), box)
    spine = named(ss, _SPINE)
    bone_box = bbox_of(spine)
    if bone_box is None:
        return canal
    # Fill in the bone's in-plane box plus one empty voxel around it: the background
    # outside the bone stays connected to the border, so the holes are the same as on
    # the whole slice, at the cost of the box only.
    rows = slice(max(bone_box[1].start - 1, 0), min(bone_box[1].stop + 1, grid.shape[1]))
    cols = slice(max(bone_box[2].start - 1, 0), min(bone_box[2].stop + 1, grid.shape[2]))
    ks = slice(max(bone_box[0].start, box[0].start), min(bone_box[0].stop, box[0].stop))
    # where the bone's planes and the box meet in-plane, in each one's indices
    rr = slice(max(rows.start, box[1].start), min(rows.stop, box[1].stop))
    cc = slice(max(cols.start, box[2].start), min(cols.stop, box[2].stop))
    if ks.stop <= ks.start or rr.stop <= rr.start or cc.stop <= cc.start:
        return canal
    bone = union_in_box(spine, (ks, rows, cols))
    src = (
        slice(rr.start - rows.start, rr.stop - rows.start),
        slice(cc.start - cols.start, cc.stop - cols.start),
    )
    dst = (
        slice(rr.start - box[1].start, rr.stop - box[1].start),
        slice(cc.start - box[2].start, cc.stop - box[2].start),
    )
    for n, k in enumerate(range(ks.start, ks.stop)):
        plane = np.zeros((rows.stop - rows.start + 2, cols.stop - cols.start + 2), bool)
        plane[1:-1, 1:-1] = bone[n]
        holes = np.asarray(ndimage.binary_fill_holes(plane), bool)[1:-1, 1:-1] & ~bone[n]
        canal[k - box[0].start][dst] |= holes[src]
    return canal


def _mesorectum(atlas: AtlasLike, work: _Work, z_inf: float, margin_mm: float) -> BoolMask:
    """The rectum grown ``margin_mm`` in-plane, without the rectum, from ``z_inf`` up.

    A mask of ``work``'s box (which holds the rectum and its margin when this is asked).
    """
    rectum = work.union(("Rectum",))
    if not rectum.any():
        raise MissingStructureError(
            "mesorectal coverage of the nodal CTV needs a 'Rectum' structure"
        )
    grown = quiet_expand(rectum, work.sub, _inplane(margin_mm)) & ~rectum
    levels: BoolMask = np.asarray(rectum.any(axis=(1, 2)), bool)
    out: BoolMask = grown & work.slices(z_inf, work.z_top_mm) & levels[:, None, None]
    return out


def _node_ctv_name(
    proto: Protocol, rules: _NodeRules, superior_border: str | None, mesorectal: bool
) -> str:
    tags = ""
    if superior_border is not None and superior_border != rules.superior_border:
        tags += "Ext"
    if mesorectal:
        tags += "MR"
    return f"CTVn{tags}_{proto.prescription('pelvic_nodes').dose_cgy}"


def ctv_pelvic_nodes(
    atlas: AtlasLike,
    protocol: str | Protocol = "nrg_salvage",
    *,
    name: str | None = None,
    superior_border: str | None = None,
    mesorectal: bool = False,
) -> Structure:
    """Elective pelvic nodal CTV per the RTOG 2009 / NRG 2021 consensus.

    Parameters
    ----------
    atlas : AtlasLike
        Anatomy with ``grid``, ``structures`` (the iliac vessels ``A_Iliac_L/R``,
        ``V_Iliac_L/R``, ``A/V_Iliac_Ext_L/R``, ``A/V_Iliac_Int_L/R`` are required; bone,
        bowel loops, bladder, rectum, muscles and the sacral canal are cropped out when
        present) and landmarks.
    protocol : str or Protocol
        Protocol name or object; reads ``[ctv.pelvic_nodes]``.
    name : str, optional
        Structure name; default ``CTVn_<pelvic dose in cGy>`` (``CTVnExt_``,
        ``CTVnMR_``, ``CTVnExtMR_`` when adapted).
    superior_border : str, optional
        Node-positive adaptation: a landmark of :data:`NODAL_SUPERIOR_BORDERS` replacing
        the protocol's superior border, e.g. ``"AorticBifurcation"`` for common iliac
        disease.
    mesorectal : bool
        Node-positive adaptation: add the mesorectum (:data:`MESORECTAL_MARGIN_MM` around
        the rectum, from the inferior border up) for a PSMA-positive perirectal node.

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
    if superior_border is not None:
        check_choice(superior_border, NODAL_SUPERIOR_BORDERS, name="superior_border")
    check_type(mesorectal, bool, name="mesorectal")
    grid, ss = atlas.grid, atlas.structures
    ss.require(
        list(_ALL_VESSELS),
        purpose="CTV_PelvicNodes (RTOG 2009 vessel-based CTV)",
    )
    z_sup = landmark_z_mm(atlas, superior_border or rules.superior_border)
    z_inf = landmark_z_mm(atlas, rules.inferior_border)
    # built on the box that holds it (and what it is made of), not on the whole grid
    work = _Work.on(atlas, _work_box(ss, grid, rules, mesorectal))
    levels = work.slices(z_inf, z_sup)
    vessels = _vessel_regions(atlas, rules, work)
    obturator = _obturator_strips(work, rules.obturator_strip_width_mm)
    region = vessels.union | obturator
    region |= _presacral_strip(work, rules)
    region |= _sidewall_bridges(
        atlas, work, vessels, obturator, z_inf, rules.obturator_strip_width_mm
    )
    region &= levels
    region = closing(region, work.sub, rules.smoothing_mm) & levels
    if mesorectal:
        region |= _mesorectum(atlas, work, z_inf, MESORECTAL_MARGIN_MM) & levels
    region = crop_organs(region, ss, grid, rules.crops_mm, box=work.box)
    region &= ~_sacral_canal(ss, grid, work.box)
    if not region.any():
        raise GeometryError(
            f"CTV_PelvicNodes is empty between z={z_inf:.1f} and {z_sup:.1f} mm; check the "
            "vessels and the landmarks"
        )
    if name is None:
        name = _node_ctv_name(proto, rules, superior_border, mesorectal)
    return _from_box(name, region, work.box, grid, "ctv")


# ---------------------------------------------------------------------------- CTV bed
def ctv_prostate_bed(
    atlas: AtlasLike, protocol: str | Protocol = "nrg_salvage", *, name: str | None = None
) -> Structure:
    """Prostate-bed CTV per the RTOG 2010 consensus (Michalski et al.).

    The region :func:`rtplan.staging.prostate_bed_region` draws (its docstring has the
    border table): between the organs slice by slice, laterally the levator ani /
    obturator internus below the top of the symphysis (a cap from the midline only with
    the protocol option ``lateral_cap_mm``), smoothed, and cropped from bone, rectum,
    muscle, bowel loops and the bladder except its posterior wall band above the
    symphysis. Staging calls a lesion in the same region a local recurrence.

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
    region = prostate_bed_region(atlas, proto)
    if not region.any():
        raise GeometryError(
            "CTV_ProstateBed is empty: the symphysis, rectum or bladder does not reach the "
            "levels of its borders; check the anatomy and the VUA / symphysis landmarks"
        )
    if name is None:
        name = f"CTVsb_{proto.prescription('prostate_bed').dose_cgy}"
    return _structure(name, region, atlas.grid, "ctv")


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
    grid = ctv.grid
    box = _margin_box(ctv, margin)
    if box is None:  # the PTV may reach the grid edge (and warn): grow it on the grid
        grown = expand(ctv.mask, grid, margin, clip=True, name=ctv.name)
        if body is not None and not body.is_empty:
            grown &= body.mask
        return _structure(name, grown, grid, "ptv")
    local = expand(union_in_box([ctv], box), grid.crop(box), margin, clip=True, name=ctv.name)
    if body is not None and not body.is_empty:
        local &= union_in_box([body], box)
    return _from_box(name, local, box, grid, "ptv")


def _margin_box(s: Structure, margin: Margin | float) -> Box | None:
    """The box of ``s`` grown by the reach of ``margin``, when it lies inside the grid.

    There the expansion is the whole-grid one. None when ``s`` is empty, the box meets
    the grid edge (where the expansion may be clipped, with a warning) or the margin is
    not a valid one (the expansion reports it).
    """
    if s.bbox is None:
        return None
    if isinstance(margin, Margin):
        reach = reach_voxels(s.grid, margin)
    elif is_real(margin) and math.isfinite(float(margin)) and float(margin) >= 0:
        reach = reach_voxels(s.grid, float(margin))
    else:
        return None
    inside = all(
        b.start - int(r) >= 0 and b.stop + int(r) <= n
        for b, r, n in zip(s.bbox, reach, s.grid.shape)
    )
    return grown_box(s.bbox, reach, s.grid.shape) if inside else None


def _from_box(name: str, local: BoolMask, box: Box, grid: ImageGrid, role: str) -> Structure:
    """A structure (TG-263 name) from its mask on an index box of ``grid``."""
    start = (box[0].start, box[1].start, box[2].start)
    return Structure.from_cropped(_tg263(name), local, start, grid, role=role)


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
    outside = ~union_in_box([body], box)
    if not outside.any():
        return None
    near_surface = quiet_expand(outside, grid.crop(box), crop_mm)
    local = union_in_box([ptv], box) & ~near_surface
    if np.count_nonzero(local) == ptv.voxel_count:
        return None
    return _from_box(f"{ptv.name}-{round(crop_mm):02d}", local, box, grid, "ptv")


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
        lesion = gtv_mask
    else:
        full = as_mask(gtv_mask, grid, name=f"the {kind} lesion mask")
        lesion = Structure("GTV", full, grid, role="gtv")
    section = "sbrt" if kind.startswith("sbrt") else kind
    classifier = {"local_boost": "p", "node_boost": "n"}.get(kind, "")
    num = "" if number is None else str(number)
    dose = proto.prescription(kind).dose_gy if dose_gy is None else dose_gy
    suffix = f"{_cgy(dose)}"
    gm = proto.number(f"ctv.{section}.gtv_margin_mm")
    # on the lesion's box grown by the margin's reach: the expansion there is the
    # whole-grid one (clipped, quietly, only where the box meets the grid edge)
    box = whole_box(grid)
    if lesion.bbox is not None:
        box = grown_box(lesion.bbox, reach_voxels(grid, gm), grid.shape)
    gtv = union_in_box([lesion], box)
    ctv = quiet_expand(gtv, grid.crop(box), gm) if gm > 0 else gtv.copy()
    body = _body(atlas)
    if section != "sbrt":
        bone = union_in_box(named(ss, _BONES), box)
        ctv = (ctv & ~bone) | gtv
    if body is not None and not body.is_empty:
        ctv &= union_in_box([body], box)
    g = _from_box(f"GTV{classifier}{num}", gtv, box, grid, "gtv")
    c = _from_box(f"CTV{classifier}{num}_{suffix}", ctv, box, grid, "ctv")
    ptv = ptv_from_ctv(
        c, proto.ptv_margin(section), name=f"PTV{classifier}{num}_{suffix}", body=body
    )
    return g, c, ptv


# ---------------------------------------------------------------------------- options
#: ADT durations an option can carry: short-term (:data:`ADT_SHORT_MONTHS`) or long-term
#: (:data:`ADT_LONG_MONTHS`).
AdtDuration = Literal["short-term", "long-term"]
_ADT_DURATIONS: tuple[AdtDuration, ...] = ("short-term", "long-term")


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
        Lesion ids of PSMA-positive nodes boosted (SIB in the pelvic course).
    sbrt_bone, sbrt_node : tuple of int
        Lesion ids treated with SBRT, each as its own course (bone, or extrapelvic node /
        other soft tissue).
    adt : bool
        ADT suggested with this option (reported, not dosed).
    description, evidence : str
        One-line description and the evidence line with its source.
    prostate_bed : bool
        Prostate-bed RT (default True); False only for SBRT alone.
    adt_duration : {"short-term", "long-term"} or None
        How long the ADT runs (:data:`ADT_SHORT_MONTHS`, :data:`ADT_LONG_MONTHS`); None
        when not stated or without ADT.
    superior_border : str or None
        Superior border of the elective nodal CTV replacing the protocol's (one of
        :data:`NODAL_SUPERIOR_BORDERS`), e.g. ``"AorticBifurcation"`` for common iliac
        disease; needs ``pelvis``.
    mesorectal : bool
        Add the mesorectum to the elective nodal CTV (PSMA-positive perirectal node);
        needs ``pelvis``.

    Raises
    ------
    TypeError
        When the name is not a string, a lesion id not an integer or a flag not a bool.
    InvalidInputError
        When the parts do not fit: a node boost or an adaptation without whole-pelvis RT,
        a local boost or the pelvis without the prostate bed, an option that treats
        nothing, a duration without ADT.
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
    prostate_bed: bool = True
    adt_duration: AdtDuration | None = None
    superior_border: str | None = None
    mesorectal: bool = False

    def __post_init__(self) -> None:
        check_type(self.name, str, name="OptionSpec.name")
        for flag in ("pelvis", "adt", "prostate_bed", "mesorectal"):
            check_type(getattr(self, flag), bool, name=f"OptionSpec.{flag}")
        for field_name, ids in (
            ("local_boost", self.local_boost),
            ("node_boost", self.node_boost),
            ("sbrt_bone", self.sbrt_bone),
            ("sbrt_node", self.sbrt_node),
        ):
            object.__setattr__(self, field_name, _lesion_ids(ids, name=f"OptionSpec.{field_name}"))
        if self.adt_duration is not None:
            check_choice(self.adt_duration, _ADT_DURATIONS, name="OptionSpec.adt_duration")
        if self.superior_border is not None:
            check_choice(
                self.superior_border, NODAL_SUPERIOR_BORDERS, name="OptionSpec.superior_border"
            )
        problem = self._inconsistency()
        if problem:
            raise InvalidInputError(f"option {self.name!r}: {problem}")

    def _inconsistency(self) -> str:
        """What does not fit together, or ``""``."""
        if self.node_boost and not self.pelvis:
            return "a pelvic-node boost needs whole-pelvis RT (pelvis=True)"
        if (self.superior_border is not None or self.mesorectal) and not self.pelvis:
            return "a nodal CTV adaptation needs whole-pelvis RT (pelvis=True)"
        if not self.prostate_bed and (self.pelvis or self.local_boost):
            return "whole-pelvis RT and a local boost need the prostate bed (prostate_bed=True)"
        if not self.prostate_bed and not (self.sbrt_bone or self.sbrt_node):
            return "treats nothing: without the prostate bed it needs SBRT lesions"
        if self.adt_duration is not None and not self.adt:
            return "an ADT duration needs adt=True"
        return ""

    @property
    def adt_months(self) -> tuple[int, int] | None:
        """ADT duration as (shortest, longest) months, or ``None`` (no ADT / not stated)."""
        if not self.adt or self.adt_duration is None:
            return None
        return ADT_SHORT_MONTHS if self.adt_duration == "short-term" else ADT_LONG_MONTHS

    @property
    def adt_text(self) -> str:
        """The ADT of the option for a table cell, e.g. ``"short-term ADT, 4-6 months"``."""
        if not self.adt:
            return "no ADT"
        months = self.adt_months
        if months is None:
            return "ADT (duration not stated)"
        return f"{self.adt_duration} ADT, {months[0]}-{months[1]} months"


@dataclass(frozen=True)
class _LesionGroups:
    """Counted lesion ids of a stage by how they can be treated."""

    local: tuple[int, ...]  # local recurrences (Tr): prostate-bed boost
    node: tuple[int, ...]  # pelvic nodes (N1): node boost
    bone: tuple[int, ...]  # bone metastases (M1b): SBRT
    soft: tuple[int, ...]  # extrapelvic nodes and organ metastases (M1a, M1c): SBRT
    common_iliac: tuple[int, ...] = ()  # nodes in the common iliac region (N1 or M1a)
    perirectal: tuple[int, ...] = ()  # perirectal / mesorectal pelvic nodes

    @property
    def distant(self) -> tuple[int, ...]:
        return (*self.bone, *self.soft)

    @property
    def common_iliac_only(self) -> bool:
        """True when every distant lesion is a common iliac node (and there is one)."""
        return bool(self.soft) and not self.bone and set(self.soft) <= set(self.common_iliac)


def _group_lesions(stage: Stage) -> _LesionGroups:
    """Group the counted lesions by category (a lesion in a bone region counts as bone).

    Lesions that read negative (:func:`rtplan.staging.is_counted` False) drive nothing.
    """
    local: list[int] = []
    node: list[int] = []
    bone: list[int] = []
    soft: list[int] = []
    for lesion in stage.lesions:
        if not is_counted(lesion):
            continue
        category = lesion.category or ""
        if category == "Tr":
            local.append(lesion.id)
        elif category == "N1":
            node.append(lesion.id)
        elif category == "M1b" or "bone" in (lesion.region or "").lower():
            bone.append(lesion.id)
        elif category.startswith("M1"):
            soft.append(lesion.id)
    counted = [x for x in stage.lesions if is_counted(x)]
    common_iliac = tuple(x.id for x in counted if x.region_code == "CI")
    perirectal = tuple(
        x.id for x in counted if x.category == "N1" and x.region == PERIRECTAL_REGION
    )
    return _LesionGroups(
        tuple(local), tuple(node), tuple(bone), tuple(soft), common_iliac, perirectal
    )


_EV_SPPORT = (
    "SPPORT (NRG/RTOG 0534): 5-y freedom from progression 71% PBRT vs 83% PBRT+STAD vs "
    "89% PLNRT+PBRT+STAD (ASTRO 2018 interim; CLINICAL.md 4b)"
)
_EV_STAD = (
    "SPPORT arm 2: PBRT + short-term ADT (STAD, 4-6 months), 5-y freedom from progression "
    "83% vs 71% with PBRT alone (ASTRO 2018 interim; CLINICAL.md 4b)"
)
_EV_SPPORT_PELVIS = (
    "SPPORT's pelvic arm (PLNRT + PBRT) always had short-term ADT (STAD, 4-6 months): 89% "
    "5-y freedom from progression; no SPPORT arm gave pelvic RT without ADT (CLINICAL.md 4b)"
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
_EV_MDT_NO_ADT = (
    "STOMP (<= 3 metastases) and ORIOLE (1-3 metastases) tested metastasis-directed therapy "
    "to defer ADT: ADT-free survival 21 vs 13 mo, HR 0.60 (STOMP); progression at 6 mo 19% "
    "vs 61% (ORIOLE) (CLINICAL.md 4d)"
)
_EV_SBRT_ONLY = (
    "No PSMA-positive disease in the bed or the pelvis: STOMP and ORIOLE treated the "
    "metastases only (CLINICAL.md 4d)"
)
_EV_EFRT = (
    "Common iliac nodes: the commonest site outside the RTOG 2009 field (proximal common "
    "iliac 30%, Meijer 2013) and 16.4% of PSMA-positive nodes after prostatectomy (Trapp "
    "2023); elective field extended to the aortic bifurcation with a node boost "
    "(CLINICAL.md 2d)"
)
_EV_MESORECTAL = (
    "Perirectal nodes: 7.8% of PSMA-positive nodes after prostatectomy (Trapp 2023), "
    "pararectal 25% of the nodes outside the RTOG CTV (Meijer 2013); mesorectum added to the "
    "elective field (CLINICAL.md 2d)"
)
_EV_ADT = {
    "short-term": "ADT short-term, 4-6 months: SPPORT STAD (CLINICAL.md 4b)",
    "long-term": (
        "ADT long-term, 18-24 months: RADICALS-HD, 24 vs 6 months with postoperative RT, "
        "10-y metastasis-free survival 78.1% vs 71.9%, HR 0.77 (Parker et al., Lancet 2024); "
        "no trial fixes the duration for PSMA-positive nodes or oligometastases"
    ),
}


def _ev_sbrt(max_oligo_lesions: int) -> str:
    return (
        f"Metastasis-directed SBRT for oligometastases (here <= {max_oligo_lesions} distant "
        "lesions; STOMP and ORIOLE enrolled <= 3, SABR-COMET 1-5): STOMP (ADT-free survival "
        "21 vs 13 mo, HR 0.60), ORIOLE (progression at 6 mo 19% vs 61%) (CLINICAL.md 4d)"
    )


@dataclass(frozen=True)
class _Case:
    """A stage seen by the option rules: its lesion groups and the adaptations it asks."""

    label: str
    groups: _LesionGroups
    has_local: bool
    has_nodes: bool
    has_mets: bool
    oligometastatic: bool
    max_oligo_lesions: int

    @property
    def superior_border(self) -> str | None:
        """The aortic bifurcation when a pelvic (N1) node is in the common iliac region."""
        nodal_ci = set(self.groups.common_iliac) & set(self.groups.node)
        return "AorticBifurcation" if nodal_ci else None

    @property
    def mesorectal(self) -> bool:
        return bool(self.groups.perirectal)


def _spec_name(
    *,
    bed: bool,
    pelvis: bool,
    extended: bool,
    lr: bool,
    nb: bool,
    sbrt: bool,
    adt: AdtDuration | None,
) -> str:
    parts = ["PBRT"] if bed else []
    if pelvis:
        parts.append("EFRT" if extended else "WPRT")
    if lr:
        parts.append("LRboost")
    if nb:
        parts.append("Nboost")
    if sbrt:
        parts.append("SBRT")
    if adt is not None:
        parts.append("STAD" if adt == "short-term" else "ADT")
    return "+".join(parts)


def _spec(
    case: _Case,
    *,
    pelvis: bool,
    nb: bool,
    sbrt: bool,
    adt: AdtDuration | None,
    description: str,
    evidence: Sequence[str],
    bed: bool = True,
    superior_border: str | None = None,
    extra_boost: tuple[int, ...] = (),
) -> OptionSpec:
    """One option of ``case``; the nodal adaptations of the case apply to its pelvis."""
    groups = case.groups
    lr = bed and case.has_local
    border = (superior_border or case.superior_border) if pelvis else None
    mesorectal = pelvis and case.mesorectal
    evidence = list(evidence)
    if border is not None:
        evidence.append(_EV_EFRT)
    if mesorectal:
        evidence.append(_EV_MESORECTAL)
    if adt is not None:
        evidence.append(_EV_ADT[adt])
    return OptionSpec(
        name=_spec_name(
            bed=bed,
            pelvis=pelvis,
            extended=border is not None,
            lr=lr and bool(groups.local),
            nb=nb,
            sbrt=sbrt,
            adt=adt,
        ),
        pelvis=pelvis,
        local_boost=groups.local if lr else (),
        node_boost=(*groups.node, *extra_boost) if nb else (),
        sbrt_bone=groups.bone if sbrt else (),
        sbrt_node=groups.soft if sbrt else (),
        adt=adt is not None,
        description=f"{description} {DISCLAIMER}",
        evidence="; ".join(dict.fromkeys(evidence)),
        prostate_bed=bed,
        adt_duration=adt,
        superior_border=border,
        mesorectal=mesorectal,
    )


def _options_localised(case: _Case) -> list[OptionSpec]:
    """N0M0: the bed (with a local boost for Tr), the same with STAD, and with the pelvis."""
    label = case.label
    if case.has_local:
        bed, ev_bed, ev_pelvis = (
            "prostate bed with a boost to the local recurrence",
            (_EV_BOOST_LR, _EV_SPPORT),
            (_EV_UCLA_TR, _EV_SPPORT_PELVIS),
        )
    else:
        bed, ev_bed, ev_pelvis = (
            "prostate bed only",
            (_EV_SPPORT, _EV_UCLA_T0),
            (_EV_SPPORT_PELVIS, _EV_UCLA_T0),
        )
    return [
        _spec(
            case,
            pelvis=False,
            nb=False,
            sbrt=False,
            adt=None,
            description=f"{label}: {bed}.",
            evidence=ev_bed,
        ),
        _spec(
            case,
            pelvis=False,
            nb=False,
            sbrt=False,
            adt="short-term",
            description=f"{label}: {bed}, with short-term ADT (SPPORT arm 2).",
            evidence=(_EV_STAD, *ev_bed),
        ),
        _spec(
            case,
            pelvis=True,
            nb=False,
            sbrt=False,
            adt=None,
            description=f"{label}: {bed} plus elective pelvis (SPPORT's pelvic arm added "
            "short-term ADT).",
            evidence=ev_pelvis,
        ),
    ]


class _PelvicOption(NamedTuple):
    """The pelvic part of an option for N1 / M1: fields, node boost, text and evidence."""

    pelvis: bool
    node_boost: bool
    text: str
    evidence: tuple[str, ...]


def _pelvic_options(case: _Case) -> list[_PelvicOption]:
    """With nodes: WPRT with and without a node boost; without: the bed."""
    local = " and a boost to the local recurrence" if case.has_local else ""
    adt_ev = (_EV_UCLA_ADT, _EV_SPPORT)
    if not case.has_nodes:  # distant disease without pelvic nodes: the bed is the pelvic target
        return [_PelvicOption(False, False, f"prostate bed{local}", adt_ev)]
    field = "pelvis" if case.superior_border is None else "pelvis to the aortic bifurcation"
    return [
        _PelvicOption(
            True,
            True,
            f"prostate bed{local}, elective {field} and a boost to the PSMA-positive nodes",
            (_EV_NODE_BOOST, *adt_ev),
        ),
        _PelvicOption(
            True, False, f"prostate bed{local} and elective {field} without a node boost", adt_ev
        ),
    ]


def _oligo_options(case: _Case, first: _PelvicOption) -> list[OptionSpec]:
    """Oligometastatic M1: pelvic + SBRT with and without ADT; SBRT alone for T0N0M1."""
    label, sbrt_ev = case.label, _ev_sbrt(case.max_oligo_lesions)
    out = [
        _spec(
            case,
            pelvis=first.pelvis,
            nb=first.node_boost,
            sbrt=True,
            adt="long-term",
            description=f"{label} (oligometastatic): {first.text}, SBRT to each metastasis, "
            "with ADT.",
            evidence=(sbrt_ev, *first.evidence),
        ),
        _spec(
            case,
            pelvis=first.pelvis,
            nb=first.node_boost,
            sbrt=True,
            adt=None,
            description=f"{label} (oligometastatic): {first.text} and SBRT to each metastasis, "
            "without ADT (metastasis-directed therapy to defer ADT).",
            evidence=(_EV_MDT_NO_ADT, sbrt_ev, first.evidence[0]),
        ),
    ]
    if not case.has_local and not case.has_nodes:
        out.append(
            _spec(
                case,
                bed=False,
                pelvis=False,
                nb=False,
                sbrt=True,
                adt=None,
                description=f"{label} (oligometastatic): SBRT to each metastasis only, no "
                "prostate-bed RT and no ADT.",
                evidence=(_EV_SBRT_ONLY, _EV_MDT_NO_ADT, sbrt_ev),
            )
        )
    return out


def _extended_field(case: _Case) -> OptionSpec:
    """Common-iliac-only distant disease: the pelvis to the aortic bifurcation, nodes boosted."""
    local = " and a boost to the local recurrence" if case.has_local else ""
    return _spec(
        case,
        pelvis=True,
        nb=True,
        sbrt=False,
        adt="long-term",
        superior_border="AorticBifurcation",
        extra_boost=tuple(i for i in case.groups.soft if i not in case.groups.node),
        description=f"{case.label} (common iliac nodes only): prostate bed{local}, elective "
        "pelvis extended to the aortic bifurcation and a boost to the PSMA-positive nodes, "
        "with ADT.",
        evidence=(_EV_NODE_BOOST, _EV_UCLA_ADT),
    )


def _options_spread(case: _Case) -> list[OptionSpec]:
    """N1 and/or M1: ADT with the pelvic options (UCLA aHR 0.37 in N1/M1), SBRT when oligo."""
    out: list[OptionSpec] = []
    bases = _pelvic_options(case)
    if case.has_mets:
        first = bases[0]
        if case.oligometastatic and case.groups.distant:
            out.extend(_oligo_options(case, first))
        else:
            text = f"{first.text}. Not oligometastatic: pelvic RT shown for comparison only"
            first = first._replace(text=text)
        if case.groups.common_iliac_only:
            out.append(_extended_field(case))
        bases = [first]
    for base in bases:
        out.append(
            _spec(
                case,
                pelvis=base.pelvis,
                nb=base.node_boost,
                sbrt=False,
                adt="long-term",
                description=f"{case.label}: {base.text}, with ADT.",
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
    T0N0M0         PBRT; PBRT + STAD (SPPORT arm 2); PBRT + WPRT (SPPORT's pelvic
                   arm had STAD; UCLA: no PFS gain from WPRT in T0N0M0)
    TrN0M0         PBRT + local-recurrence boost, without and with STAD; the same
                   + WPRT (UCLA aHR 0.12)
    N1 (M0)        PBRT + WPRT + long-term ADT, with and without a PSMA-node boost
                   (UCLA ADT aHR 0.37); a local boost for a local recurrence
    M1 oligo       the pelvic option (N1: WPRT + node boost; N0: PBRT; + local boost
                   for Tr) + SBRT to each metastasis, with and without ADT (STOMP,
                   ORIOLE); SBRT alone for T0N0M1; the pelvic option + ADT
    M1 (not oligo) the pelvic option + ADT, for comparison only
    CI nodes only  also PBRT + elective pelvis extended to the aortic bifurcation
                   (EFRT) + node boost + ADT
    ============== ===============================================================

    Oligometastatic is the stage's :attr:`~rtplan.staging.Stage.oligometastatic` (at most
    :attr:`~rtplan.staging.Stage.max_oligo_lesions` distant lesions, default 3 as in STOMP
    and ORIOLE); the SBRT evidence line states the cut-off. Node-positive adaptations of
    the elective nodal CTV follow the nodes: a pelvic node in the common iliac region
    (``common_iliac="N"``) extends the field to the aortic bifurcation (``EFRT``), a
    perirectal node adds the mesorectum. Each option carries its ADT duration
    (:attr:`OptionSpec.adt_duration`: short-term 4-6 months, long-term 18-24 months).

    Parameters
    ----------
    stage : Stage
        The stage :func:`rtplan.staging.stage` returns: its ``t``, ``n``, ``m`` and
        ``oligometastatic``, and its counted lesions by ``category`` (``"Tr"``, ``"N1"``,
        ``"M1a"``, ``"M1b"``, ``"M1c"``; a lesion whose ``region`` names a bone counts as
        bone), ``region_code`` and ``id``. Lesions that read negative drive nothing.
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
    case = _Case(
        label=stage.string,
        groups=groups,
        has_local=stage.t == "Tr" or bool(groups.local),
        has_nodes=stage.n != "N0" or bool(groups.node),
        has_mets=stage.m != "M0" or bool(groups.distant),
        oligometastatic=stage.oligometastatic,
        max_oligo_lesions=stage.max_oligo_lesions,
    )
    if not case.has_nodes and not case.has_mets:
        return _options_localised(case)
    return _options_spread(case)


# ---------------------------------------------------------------------------- EQD2
@dataclass(frozen=True)
class PrescriptionEQD2:
    """The prescription of one PTV of an option, physical and in EQD2.

    Attributes
    ----------
    ptv : str
        PTV name.
    physical_gy : float
        Total physical prescription over the option's courses, Gy.
    eqd2_gy : float
        The same in equivalent dose in 2 Gy fractions, summed course by course, Gy.
    alpha_beta_gy : float
        alpha/beta used, Gy.
    schedule : str
        The courses that make it up, e.g. ``"45 Gy / 25 fx + 21.6 Gy / 12 fx"``.
    """

    ptv: str
    physical_gy: float
    eqd2_gy: float
    alpha_beta_gy: float
    schedule: str

    @property
    def text(self) -> str:
        """E.g. ``"PTVsb_6250: 62.5 Gy / 25 fx = 71.4 Gy EQD2"``."""
        return f"{self.ptv}: {self.schedule} = {self.eqd2_gy:.1f} Gy EQD2"


def _eqd2_rows(courses: Sequence[Course], alpha_beta_gy: float) -> list[PrescriptionEQD2]:
    physical: dict[str, float] = {}
    eqd2: dict[str, float] = {}
    parts: dict[str, list[str]] = {}
    for c in courses:
        for t in c.targets:
            physical[t.name] = physical.get(t.name, 0.0) + t.prescription_gy
            eqd2[t.name] = eqd2.get(t.name, 0.0) + float(
                eqd2_gy(t.prescription_gy, c.fractions, alpha_beta_gy)
            )
            parts.setdefault(t.name, []).append(f"{t.prescription_gy:g} Gy / {c.fractions} fx")
    return [
        PrescriptionEQD2(
            ptv=name,
            physical_gy=round(physical[name], 4),
            eqd2_gy=round(eqd2[name], 4),
            alpha_beta_gy=alpha_beta_gy,
            schedule=" + ".join(parts[name]),
        )
        for name in physical
    ]


def prescription_eqd2(
    option: FieldOption, alpha_beta_gy: float = ALPHA_BETA_PROSTATE_GY
) -> list[PrescriptionEQD2]:
    """The EQD2 of each target prescription of an option, beside its physical dose.

    ``EQD2 = D (d + a/b) / (2 + a/b)`` per course, summed over the courses that treat the
    PTV, so schedules compare honestly: 62.5 Gy / 25 is 71.4 Gy EQD2 and 66.6 Gy / 37 is
    62.8 Gy EQD2 at alpha/beta 1.5 Gy.

    Parameters
    ----------
    option : FieldOption
    alpha_beta_gy : float
        alpha/beta in Gy; default :data:`ALPHA_BETA_PROSTATE_GY` (1.5 Gy).

    Returns
    -------
    list of PrescriptionEQD2
        One per PTV, in course order.

    Raises
    ------
    TypeError
        When ``option`` is not a FieldOption.

    Examples
    --------
    >>> g = ImageGrid(shape=(1, 1, 1), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0))
    >>> ptv = Structure("PTVsb_6250", np.ones(g.shape, bool), g, role="ptv")
    >>> hypo = FieldOption("PBRT", (Course("ProstateBed", "imrt", 25, (Target(ptv, 62.5),)),))
    >>> [row.text for row in prescription_eqd2(hypo)]
    ['PTVsb_6250: 62.5 Gy / 25 fx = 71.4 Gy EQD2']
    """
    check_type(option, FieldOption, name="option")
    return _eqd2_rows(option.courses, float(alpha_beta_gy))


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
        overlap = (
            0
            if gtv.bbox is None
            else np.count_nonzero(gtv.cropped_mask & union_in_box([ctv_n], gtv.bbox))
        )
        inside = overlap / max(gtv.voxel_count, 1)
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
        self._elective: dict[tuple[str, str | None, bool], tuple[Structure, Structure]] = {}
        self._boosts: dict[tuple[str, int, int], _Boost] = {}
        self._evaluation: dict[str, Structure | None] = {}

    def elective(
        self, target: str, *, superior_border: str | None = None, mesorectal: bool = False
    ) -> tuple[Structure, Structure]:
        """(CTV, PTV) of ``"prostate_bed"`` or ``"pelvic_nodes"`` (with its adaptations)."""
        key = (target, superior_border, mesorectal)
        if key not in self._elective:
            if target == "prostate_bed":
                ctv = ctv_prostate_bed(self.atlas, self.protocol)
            else:
                ctv = ctv_pelvic_nodes(
                    self.atlas,
                    self.protocol,
                    superior_border=superior_border,
                    mesorectal=mesorectal,
                )
            ptv = ptv_from_ctv(
                ctv,
                self.protocol.ptv_margin(target),
                name=ctv.name.replace("CTV", "PTV", 1),
                body=self.body,
            )
            self._elective[key] = (ctv, ptv)
        return self._elective[key]

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

    @property
    def alpha_beta_gy(self) -> float:
        """The protocol's ``alpha_beta.prostate``, else :data:`ALPHA_BETA_PROSTATE_GY`."""
        return self.protocol.alpha_beta_gy.get("prostate", ALPHA_BETA_PROSTATE_GY)

    def option(self, spec: OptionSpec) -> FieldOption:
        """Build the volumes, courses and prescriptions of one option."""
        n_local = len(spec.local_boost)
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
            nodes = self.elective(
                "pelvic_nodes", superior_border=spec.superior_border, mesorectal=spec.mesorectal
            )
            notes = _outside_notes(node, nodes[0])
        courses: list[Course] = []
        if spec.prostate_bed:
            bed = self.elective("prostate_bed")
            courses = _pelvic_courses(self.protocol, bed, nodes, local, node)
        courses += self.sbrt_courses(spec)
        _check_unique_names(spec.name, courses)
        ab = self.alpha_beta_gy
        eqd2 = "; ".join(row.text for row in _eqd2_rows(courses, ab))
        return FieldOption(
            name=spec.name,
            courses=tuple(courses),
            adt=spec.adt,
            description=" ".join(
                [
                    spec.description or DISCLAIMER,
                    f"ADT: {spec.adt_text}.",
                    f"Prescriptions (EQD2, alpha/beta {ab:g} Gy): {eqd2}.",
                    *notes,
                ]
            ),
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


@dataclass(frozen=True)
class SkippedOption:
    """An option that could not be built on this anatomy, and why.

    Attributes
    ----------
    name : str
        The option's name (:attr:`OptionSpec.name`).
    reason : str
        The error, naming the structures or landmarks the anatomy lacks.
    """

    name: str
    reason: str

    @property
    def text(self) -> str:
        """One line, e.g. ``"PBRT+WPRT: missing structures: A_Iliac_Int_L"``."""
        return f"{self.name}: {self.reason}"


def build_options_partial(
    specs: OptionSpec | Sequence[OptionSpec] | Stage,
    atlas: AtlasLike,
    lesions: Lesions | Iterable[Lesion] | None = None,
    protocol: str | Protocol = "nrg_salvage",
) -> tuple[list[FieldOption], list[SkippedOption]]:
    """Build each option on its own: those the anatomy allows, and the others with the reason.

    As :func:`build_options`, but an option whose structures or landmarks the anatomy lacks
    (:class:`~rtplan.errors.MissingStructureError`) is skipped and listed instead of ending
    the run, so a clinical structure set without, say, the iliac vessels still gives the
    prostate-bed options.

    Returns
    -------
    options : list of FieldOption
        The options built, in the order of ``specs``.
    skipped : list of SkippedOption
        The options not built, each with the error that names what is missing.

    Raises
    ------
    TypeError
        When ``specs``, ``atlas``, ``lesions`` or ``protocol`` is not of its type.
    """
    proto = _protocol(protocol)
    spec_list = _as_specs(specs, proto)
    check_atlas(atlas)
    builder = _OptionBuilder(atlas, proto, _lesions_by_id(lesions))
    built: list[FieldOption] = []
    skipped: list[SkippedOption] = []
    for spec in spec_list:
        try:
            built.append(builder.option(spec))
        except MissingStructureError as exc:  # this option only: the others go on
            skipped.append(SkippedOption(spec.name, str(exc)))
    return built, skipped


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
