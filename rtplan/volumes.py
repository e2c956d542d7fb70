"""Target volumes for each field option: prostate bed, pelvic nodes, boosts, SBRT.

Every margin, border and dose comes from a :class:`~rtplan.protocol.Protocol` (TOML, see
:mod:`rtplan.protocol`); nothing clinical is hard-coded here. The builders work on an
*anatomy*: any object with ``grid`` (:class:`~rtplan.grid.ImageGrid`), ``structures``
(:class:`~rtplan.structures.StructureSet`, TG-263 names) and ``landmarks`` (dict of
name -> LPS ``(x, y, z)`` mm), such as :class:`rtplan.atlas.Atlas`. Landmarks that are
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
:func:`suggest_options` lists the options worth comparing for a PROMISE miTNM stage, each
with its evidence line (CLINICAL.md sections 4b and 10a); :func:`build_options` builds
them as :class:`~rtplan.plan.FieldOption` objects. This is decision support for
comparing options, never a prescription: the options, doses and evidence lines are for
the treating team to weigh.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from rtplan._validation import as_mask, bounding_box, check_choice
from rtplan.errors import (
    GeometryError,
    InvalidInputError,
    MissingStructureError,
    ProtocolError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid, check_same_grid
from rtplan.margins import Margin, crop_away_from, expand, shrink
from rtplan.plan import Course, FieldOption, Target
from rtplan.protocol import Protocol, load_protocol
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
_MAX_NAME = 16


# ---------------------------------------------------------------------------- helpers
def _protocol(protocol: str | Protocol) -> Protocol:
    return load_protocol(protocol)


def _cgy(dose_gy: float) -> int:
    return round(dose_gy * 100)


def _tg263(name: str) -> str:
    """Shorten a target name to 16 characters by dropping underscores from the left."""
    while len(name) > _MAX_NAME and "_" in name:
        name = name.replace("_", "", 1)
    return name


def _quiet_expand(mask: np.ndarray, grid: ImageGrid, margin: Margin | float) -> np.ndarray:
    """Expansion for intermediate regions: clipped at the grid edge without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        return expand(mask, grid, margin, clip=True)


def _inplane(mm: float) -> Margin:
    return Margin(right=mm, left=mm, anterior=mm, posterior=mm)


def _closing(mask: np.ndarray, grid: ImageGrid, radius_mm: float) -> np.ndarray:
    if radius_mm <= 0 or not mask.any():
        return mask
    return mask | shrink(_quiet_expand(mask, grid, radius_mm), grid, radius_mm)


def _union(ss: StructureSet, names: Iterable[str], grid: ImageGrid) -> np.ndarray:
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


def _anatomy(atlas: Any) -> tuple[ImageGrid, StructureSet, dict[str, tuple[float, float, float]]]:
    try:
        ss = atlas.structures
        grid = atlas.grid
    except AttributeError:
        raise TypeError(
            "expected an anatomy with .grid, .structures and .landmarks (e.g. rtplan.atlas."
            f"Atlas), got {type(atlas).__name__}"
        ) from None
    landmarks = dict(getattr(atlas, "landmarks", None) or {})
    return grid, ss, landmarks


def _z_extent(ss: StructureSet, name: str, grid: ImageGrid) -> tuple[float, float] | None:
    key = ss.resolve(name)
    if key is None or ss[key].is_empty:
        return None
    lo, hi = ss[key].bounds_mm[2]
    half = grid.spacing_mm[0] / 2
    return (lo + half, hi - half)  # centres of the lowest and highest slices


def landmark_z_mm(atlas: Any, name: str) -> float:
    """Height (LPS z, mm) of a landmark, from ``atlas.landmarks`` or derived from structures.

    Derivations used when the landmark is absent: ``PubicSymphysis_Top`` (top slice of
    ``PubicSymphys``), ``L5S1_Interspace`` / ``L4L5_Interspace`` (midway between the
    vertebral bodies), ``AorticBifurcation`` (lowest slice of ``A_Aorta``),
    ``FemurHead_Top_L/R`` (top of ``Femur_Head_L/R``), ``S3_Bottom`` (lowest slice of
    ``VB_S3``), ``PenileBulb_Top`` (top of ``PenileBulb``).

    Parameters
    ----------
    atlas : Atlas-like
        Anatomy with ``grid``, ``structures`` and ``landmarks``.
    name : str
        Landmark key, e.g. ``"L5S1_Interspace"``.

    Returns
    -------
    float
        z in mm.

    Raises
    ------
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
    grid, ss, landmarks = _anatomy(atlas)
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


def _landmark_xyz(atlas: Any, name: str) -> tuple[float, float, float] | None:
    _, _, landmarks = _anatomy(atlas)
    p = landmarks.get(name)
    return None if p is None else (float(p[0]), float(p[1]), float(p[2]))


def _z_between(grid: ImageGrid, lo_mm: float, hi_mm: float) -> np.ndarray:
    """Bool mask of the slices whose centre lies in [lo, hi] (half-slice tolerance)."""
    z = grid.axis_coordinates_mm()[0]
    tol = 1e-6
    sel = (z >= lo_mm - tol) & (z <= hi_mm + tol)
    out = np.zeros(grid.shape, bool)
    out[sel] = True
    return out


def _structure(name: str, mask: np.ndarray, grid: ImageGrid, role: str) -> Structure:
    return Structure(_tg263(name), mask, grid, role=role)


# ---------------------------------------------------------------------------- CTVs
def ctv_pelvic_nodes(
    atlas: Any, protocol: str | Protocol = "nrg_salvage", *, name: str | None = None
) -> Structure:
    """Elective pelvic nodal CTV per the RTOG 2009 consensus (Lawton et al.).

    Parameters
    ----------
    atlas : Atlas-like
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
    MissingStructureError
        When a vessel or a needed landmark is missing.
    GeometryError
        When the CTV comes out empty (vessels outside the borders).
    """
    proto = _protocol(protocol)
    p = proto.section("ctv.pelvic_nodes")
    grid, ss, _ = _anatomy(atlas)
    ss.require(
        [*_VESSELS_COMMON, *_VESSELS_EXT["L"], *_VESSELS_EXT["R"], *_VESSELS_INT],
        purpose="CTV_PelvicNodes (RTOG 2009 vessel-based CTV)",
    )
    z_sup = landmark_z_mm(atlas, p["superior_border"])
    z_inf = landmark_z_mm(atlas, p["inferior_border"])
    vm = p["vessel_margin_mm"]
    zcoord = grid.axis_coordinates_mm()[0]
    z_top_global = float(zcoord.max())

    region = _quiet_expand(_union(ss, _VESSELS_COMMON, grid), grid, _inplane(vm))
    region |= _quiet_expand(_union(ss, _VESSELS_INT, grid), grid, _inplane(vm))
    extra = p.get("external_iliac_anterolateral_mm", 0.0)
    for side in ("L", "R"):
        side_margin = Margin(
            right=vm + (extra if side == "R" else 0.0),
            left=vm + (extra if side == "L" else 0.0),
            anterior=vm + extra,
            posterior=vm,
        )
        ext = _quiet_expand(_union(ss, _VESSELS_EXT[side], grid), grid, side_margin)
        z_ext = landmark_z_mm(atlas, f"{p['external_iliac_inferior']}_{side}")
        region |= ext & _z_between(grid, z_ext, z_top_global)
    # presacral strip: anterior to the sacral vertebral bodies
    vb = _union(ss, p["presacral_vertebrae"], grid)
    if not vb.any():
        vb = _union(ss, ("Sacrum",), grid)
    if vb.any():
        strip = _quiet_expand(vb, grid, Margin(anterior=p["presacral_depth_mm"])) & ~vb
        half = p.get("presacral_halfwidth_mm")
        if half is not None:
            x_mid = float(np.mean(grid.axis_coordinates_mm()[2][vb.any(axis=(0, 1))]))
            strip &= (np.abs(grid.axis_coordinates_mm()[2] - x_mid) <= half)[None, None, :]
        region |= strip
    # obturator strip: medial to each obturator internus
    width = p["obturator_strip_width_mm"]
    for side, medial in (("L", Margin(right=width)), ("R", Margin(left=width))):
        key = ss.resolve(f"Obturator_Int_{side}")
        if key is not None and width > 0:
            obt = ss[key].mask
            region |= _quiet_expand(obt, grid, medial) & ~obt
    region &= _z_between(grid, z_inf, z_sup)
    region = _closing(region, grid, p.get("smoothing_mm", 0.0)) & _z_between(grid, z_inf, z_sup)
    region = _crop_organs(
        region,
        ss,
        grid,
        {
            _BONES: p["crop_bone_mm"],
            _BOWEL: p["crop_bowel_mm"],
            ("Bladder",): p["crop_bladder_mm"],
            _RECTUM: p["crop_rectum_mm"],
            _MUSCLES: p["crop_muscle_mm"],
        },
    )
    if not region.any():
        raise GeometryError(
            f"CTV_PelvicNodes is empty between z={z_inf:.1f} and {z_sup:.1f} mm; check the "
            "vessels and the landmarks"
        )
    if name is None:
        name = f"CTVn_{proto.prescription('pelvic_nodes').dose_cgy}"
    return _structure(name, region, grid, "ctv")


def _crop_organs(
    mask: np.ndarray,
    ss: StructureSet,
    grid: ImageGrid,
    groups: Mapping[tuple[str, ...], float],
) -> np.ndarray:
    for names, gap in groups.items():
        avoid = _union(ss, names, grid)
        if avoid.any():
            mask = crop_away_from(mask, avoid, grid, gap) if gap > 0 else mask & ~avoid
    body = _union(ss, ("Body",), grid)
    if body.any():
        mask &= body
    return mask


def _column_edge(mask2d: np.ndarray, y_mm: np.ndarray, *, posterior: bool) -> np.ndarray:
    """Per column: the most posterior (max y) or anterior (min y) y of the mask, else NaN."""
    yy = np.broadcast_to(y_mm[:, None], mask2d.shape)
    fill = -np.inf if posterior else np.inf
    vals = np.where(mask2d, yy, fill)
    edge = vals.max(axis=0) if posterior else vals.min(axis=0)
    edge = edge.astype(float)
    edge[~mask2d.any(axis=0)] = np.nan
    return edge


def _fill_columns(values: np.ndarray) -> np.ndarray:
    """Fill NaN columns with the nearest defined column (constant beyond the ends)."""
    ok = np.isfinite(values)
    if ok.all() or not ok.any():
        return values
    idx = np.arange(values.size)
    return np.interp(idx, idx[ok], values[ok])


def _nearest_defined(per_slice: dict[int, float], k: int) -> float | None:
    if k in per_slice:
        return per_slice[k]
    if not per_slice:
        return None
    nearest = min(per_slice, key=lambda kk: (abs(kk - k), kk))
    return per_slice[nearest]


def ctv_prostate_bed(
    atlas: Any, protocol: str | Protocol = "nrg_salvage", *, name: str | None = None
) -> Structure:
    """Prostate-bed CTV per the RTOG 2010 consensus (Michalski et al.).

    Built slice by slice as the region between the organs (see the module docstring for
    the borders), smoothed, and cropped from bone, rectum, muscle, bowel and the bladder
    except its posterior wall band above the symphysis.

    Parameters
    ----------
    atlas : Atlas-like
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
    MissingStructureError
        When a required organ or landmark is missing.
    GeometryError
        When the CTV comes out empty.
    ProtocolError
        When the superior border is not above the inferior one.
    """
    proto = _protocol(protocol)
    p = proto.section("ctv.prostate_bed")
    grid, ss, _ = _anatomy(atlas)
    ss.require(["Bladder", "Rectum", "PubicSymphys"], purpose="CTV_ProstateBed (RTOG 2010)")
    z_ps = landmark_z_mm(atlas, "PubicSymphysis_Top")
    vua = _landmark_xyz(atlas, "VUA")
    dz = grid.spacing_mm[0]
    if vua is not None:
        z_inf = vua[2] - p["inferior_below_vua_mm"]
    else:  # Michalski: if the VUA is not visible, the slice above the penile bulb
        try:
            z_inf = landmark_z_mm(atlas, "PenileBulb_Top") + dz
        except MissingStructureError:
            raise MissingStructureError(
                "CTV_ProstateBed needs the 'VUA' landmark (vesicourethral anastomosis) or, "
                "failing it, a 'PenileBulb' structure or 'PenileBulb_Top' landmark for its "
                "inferior border"
            ) from None
    cut_end = _landmark_xyz(atlas, "VasDeferens_CutEnd")
    if p["superior_reference"] == "vas_deferens" and cut_end is not None:
        z_sup = cut_end[2]
    else:
        z_sup = z_ps + p["superior_above_symphysis_mm"]
    if z_sup <= z_inf:
        raise ProtocolError(
            f"CTV_ProstateBed: superior border z={z_sup:.1f} mm is not above the inferior "
            f"border z={z_inf:.1f} mm; check the VUA / symphysis landmarks"
        )
    if vua is not None:
        x_mid = vua[0]
    else:
        x_mid = ss["PubicSymphys"].centroid_mm[0]

    z_mm, y_mm, x_mm = grid.axis_coordinates_mm()
    X = np.broadcast_to(x_mm[None, :], grid.shape[1:])
    Y = np.broadcast_to(y_mm[:, None], grid.shape[1:])
    bladder = ss["Bladder"].mask
    rectum = _union(ss, _RECTUM, grid)
    pubis = ss["PubicSymphys"].mask
    obturators = [_union(ss, (n,), grid) for n in ("Obturator_Int_L", "Obturator_Int_R")]
    muscles_lat = [_union(ss, ("Levator_Ani",), grid), *obturators]
    halfwidth = p["lateral_halfwidth_mm"]
    band = p["bladder_wall_band_mm"]
    offset = p["mesorectal_offset_mm"]
    lateral_rule = p.get("lateral_above_symphysis", "fascia")

    ks = [k for k in range(grid.shape[0]) if z_inf - 1e-6 <= z_mm[k] <= z_sup + 1e-6]
    central = np.abs(x_mm - x_mid) <= 20.0
    pubis_edge = {
        k: float(np.nanmax(e[central]))
        for k in range(grid.shape[0])
        if np.isfinite(e := _column_edge(pubis[k], y_mm, posterior=True))[central].any()
    }
    rect_front = {
        k: float(np.nanmin(e))
        for k in range(grid.shape[0])
        if np.isfinite(e := _column_edge(rectum[k], y_mm, posterior=False)).any()
    }
    bladder_back = {
        k: _fill_columns(_column_edge(bladder[k], y_mm, posterior=True))
        for k in ks
        if z_mm[k] > z_ps + 1e-6 and bladder[k].any()
    }
    region = np.zeros(grid.shape, bool)
    keep_band = np.zeros(grid.shape, bool)
    for k in ks:
        above = z_mm[k] > z_ps + 1e-6
        # posterior: anterior surface of the rectum, column by column
        post = _column_edge(rectum[k], y_mm, posterior=False)
        if np.isfinite(post).any():
            front = np.nanmin(post)
            # concave around the rectum's lateral aspects, at most halfway to its centre
            centre = float(y_mm[rectum[k].any(axis=1)].mean())
            post = np.where(np.isfinite(post), post, front)
            post = np.minimum(post, front + 0.5 * max(centre - front, 0.0))
        else:
            front = _nearest_defined(rect_front, k)
            if front is None:
                continue
            post = np.full(x_mm.shape, front)
        if above:
            post = post - offset
        # anterior
        if above and bladder_back:  # the bladder of this slice, or of the nearest one
            back = bladder_back.get(k)
            if back is None:
                back = bladder_back[min(bladder_back, key=lambda kk: (abs(kk - k), kk))]
            ant = back - band
            keep_band[k] = bladder[k] & (Y > ant[None, :])
        else:
            edge = _nearest_defined(pubis_edge, k)
            if edge is None:
                continue
            ant = np.full(x_mm.shape, edge)
            if bladder[k].any():  # a bladder neck below the PS: its posterior band only
                back = _column_edge(bladder[k], y_mm, posterior=True)
                ant = np.where(np.isfinite(back), np.maximum(ant, back - band), ant)
            keep_band[k] = bladder[k] & (Y > ant[None, :])
        # lateral
        use_muscle = not above or lateral_rule == "obturator_internus"
        lat = [m[k] for m in (muscles_lat if not above else obturators)]
        band_rows = (Y > ant[None, :]) & (Y < post[None, :])
        left_lim = np.full(y_mm.shape, x_mid + halfwidth)
        right_lim = np.full(y_mm.shape, x_mid - halfwidth)
        ml, mr = _medial_edges(lat, X, x_mid, halfwidth)
        if use_muscle and not above:  # muscles, never wider than the half-width
            left_lim, right_lim = np.minimum(left_lim, ml), np.maximum(right_lim, mr)
        elif use_muscle:
            left_lim, right_lim = ml, mr
        else:  # the fascia (a half-width), but never past the obturator internus
            left_lim, right_lim = np.minimum(left_lim, ml), np.maximum(right_lim, mr)
        region[k] = band_rows & (X < left_lim[:, None]) & (X > right_lim[:, None])
    z_range = _z_between(grid, z_inf, z_sup)
    region = _closing(region, grid, p.get("smoothing_mm", 0.0)) & z_range
    bladder_cut = bladder & ~keep_band
    region &= ~bladder_cut
    region = _crop_organs(
        region,
        ss,
        grid,
        {_BONES: 0.0, _RECTUM: 0.0, _MUSCLES: 0.0, _BOWEL: 0.0},
    )
    region = _largest_component(region)
    if not region.any():
        raise GeometryError(
            f"CTV_ProstateBed is empty between z={z_inf:.1f} and {z_sup:.1f} mm: the "
            "symphysis, rectum or bladder does not reach these levels; check the anatomy"
        )
    if name is None:
        name = f"CTVsb_{proto.prescription('prostate_bed').dose_cgy}"
    return _structure(name, region, grid, "ctv")


def _medial_edges(
    muscles: Sequence[np.ndarray], X: np.ndarray, x_mid: float, cap_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise medial edges (x, mm) of muscles left and right of the midline.

    Each muscle's edge is taken row by row and carried to the rows it does not reach
    (nearest row), then the most medial muscle wins; ``x_mid -+ cap_mm`` where no muscle.
    """
    ny = X.shape[0]
    left = np.full(ny, x_mid + cap_mm)
    right = np.full(ny, x_mid - cap_mm)
    found = [False, False]
    for m in muscles:
        for n, (side, fill, pick) in enumerate(
            ((X > x_mid, np.inf, np.min), (X < x_mid, -np.inf, np.max))
        ):
            part = m & side
            if not part.any():
                continue
            edge = pick(np.where(part, X, fill), axis=1)
            edge = _fill_columns(np.where(np.isfinite(edge), edge, np.nan))
            if n == 0:
                left = edge if not found[0] else np.minimum(left, edge)
            else:
                right = edge if not found[1] else np.maximum(right, edge)
            found[n] = True
    return left, right


def _largest_component(mask: np.ndarray) -> np.ndarray:
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
    if body is None or body.is_empty or crop_mm <= 0 or ptv.is_empty:
        return None
    grid = ptv.grid
    assert ptv.bbox is not None
    # only the body surface within crop_mm of the PTV matters: work in the padded bbox
    pad = [int(np.ceil(crop_mm / s)) + 1 for s in grid.spacing_mm]
    box = tuple(
        slice(max(b.start - w, 0), min(b.stop + w, n)) for b, w, n in zip(ptv.bbox, pad, grid.shape)
    )
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
    gtv_mask: np.ndarray | Structure,
    atlas: Any,
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
    atlas : Atlas-like
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
    GridMismatchError, InvalidMaskError
        When the lesion is not a mask on the anatomy's grid.
    """
    proto = _protocol(protocol)
    grid, ss, _ = _anatomy(atlas)
    check_choice(kind, ("local_boost", "node_boost", "sbrt_bone", "sbrt_node"), name="kind")
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
    gm = proto.value(f"ctv.{section}.gtv_margin_mm")
    ctv = _quiet_expand(gtv, grid, gm) if gm > 0 else gtv.copy()
    body = ss["Body"] if "Body" in ss else None
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
@dataclass(frozen=True)
class OptionSpec:
    """What a field option treats, before any volume is built.

    Parameters
    ----------
    name : str
        Label, e.g. ``"PBRT+WPRT"``.
    pelvis : bool
        Whole-pelvis (elective nodal) RT with the prostate bed.
    local_boost : tuple
        Lesion ids of PSMA-positive local recurrences boosted in the bed.
    node_boost : tuple
        Lesion ids of PSMA-positive pelvic nodes boosted (SIB in the pelvic course).
    sbrt_bone, sbrt_node : tuple
        Lesion ids treated with SBRT, each as its own course (bone, or extrapelvic node /
        other soft tissue).
    adt : bool
        ADT suggested with this option (reported, not dosed).
    description, evidence : str
        One-line description and the evidence line with its source.
    """

    name: str
    pelvis: bool = False
    local_boost: tuple[Any, ...] = ()
    node_boost: tuple[Any, ...] = ()
    sbrt_bone: tuple[Any, ...] = ()
    sbrt_node: tuple[Any, ...] = ()
    adt: bool = False
    description: str = ""
    evidence: str = ""

    def __post_init__(self) -> None:
        if self.node_boost and not self.pelvis:
            raise InvalidInputError(
                f"option {self.name!r}: a pelvic-node boost needs whole-pelvis RT (pelvis=True)"
            )
        for f in ("local_boost", "node_boost", "sbrt_bone", "sbrt_node"):
            object.__setattr__(self, f, tuple(getattr(self, f)))


def _category(row: Any) -> str:
    for attr in ("category", "mi_category", "tnm", "stage"):
        v = row.get(attr) if isinstance(row, Mapping) else getattr(row, attr, None)
        if isinstance(v, str) and v:
            return v
    return ""


def _row_attr(row: Any, *names: str) -> Any:
    for n in names:
        v = row.get(n) if isinstance(row, Mapping) else getattr(row, n, None)
        if v is not None:
            return v
    return None


def _row_id(row: Any) -> Any:
    v = _row_attr(row, "lesion_id", "id", "label", "name")
    if v is None:
        lesion = _row_attr(row, "lesion")
        if lesion is not None:
            v = _row_attr(lesion, "id", "label", "name")
    return v


def _lesion_groups(stage: Any) -> dict[str, list[Any]]:
    """Lesion ids grouped as local / node / bone / distant soft tissue from a stage."""
    rows = _row_attr(stage, "lesions", "rows", "table") or ()
    groups: dict[str, list[Any]] = {"local": [], "node": [], "bone": [], "soft": []}
    for row in rows:
        cat = _category(row).strip()
        low = cat.lower().removeprefix("mi")
        region = str(_row_attr(row, "region", "site") or "").lower()
        lid = _row_id(row)
        if lid is None:
            continue
        if low.startswith("t"):
            groups["local"].append(lid)
        elif low.startswith("n"):
            groups["node"].append(lid)
        elif low.startswith("m1b") or "bone" in region:
            groups["bone"].append(lid)
        elif low.startswith("m"):
            groups["soft"].append(lid)
    return groups


def _stage_parts(stage: Any) -> tuple[str, bool, bool, bool, bool]:
    """(label, has_local, has_nodes, has_mets, oligometastatic)."""
    text = str(_row_attr(stage, "ucla_group", "string") or "")
    t = str(_row_attr(stage, "t") or "")
    n = str(_row_attr(stage, "n") or "")
    m = str(_row_attr(stage, "m") or "")
    groups = _lesion_groups(stage)
    has_local = "r" in t.lower() or bool(groups["local"]) or text.lower().startswith("tr")
    has_nodes = (n not in ("", "N0", "0", "miN0")) or bool(groups["node"])
    has_mets = (m not in ("", "M0", "0", "miM0")) or bool(groups["bone"] or groups["soft"])
    oligo = bool(_row_attr(stage, "oligometastatic"))
    label = str(_row_attr(stage, "string") or text)
    return label, has_local, has_nodes, has_mets, oligo


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
    groups: Mapping[str, list[Any]],
    lr: bool,
    nb: bool,
    sbrt: bool,
    adt: bool,
    description: str,
    evidence: Sequence[str],
) -> OptionSpec:
    return OptionSpec(
        name=_spec_name(pelvis, lr and bool(groups["local"]), nb, sbrt, adt),
        pelvis=pelvis,
        local_boost=tuple(groups["local"]) if lr else (),
        node_boost=tuple(groups["node"]) if nb else (),
        sbrt_bone=tuple(groups["bone"]) if sbrt else (),
        sbrt_node=tuple(groups["soft"]) if sbrt else (),
        adt=adt,
        description=f"{description} {DISCLAIMER}",
        evidence="; ".join(evidence),
    )


def suggest_options(stage: Any, protocol: str | Protocol = "nrg_salvage") -> list[OptionSpec]:
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
    stage : Stage-like
        The object :func:`rtplan.staging.stage` returns: ``t``, ``n``, ``m``, ``string``,
        ``ucla_group``, ``oligometastatic`` and ``lesions`` rows with ``category`` (e.g.
        ``"Tr"``, ``"N1"``, ``"M1a"``, ``"M1b"``), ``region`` and a lesion id.
    protocol : str or Protocol
        The protocol the options will be built with (checked here).

    Returns
    -------
    list of OptionSpec
    """
    _protocol(protocol)
    label, has_local, has_nodes, has_mets, oligo = _stage_parts(stage)
    groups = _lesion_groups(stage)
    out: list[OptionSpec] = []
    if not has_nodes and not has_mets:
        if has_local:
            out.append(
                _spec(
                    pelvis=False,
                    groups=groups,
                    lr=True,
                    nb=False,
                    sbrt=False,
                    adt=False,
                    description=f"{label}: prostate bed with a boost to the local recurrence.",
                    evidence=[_EV_BOOST_LR, _EV_SPPORT],
                )
            )
            out.append(
                _spec(
                    pelvis=True,
                    groups=groups,
                    lr=True,
                    nb=False,
                    sbrt=False,
                    adt=False,
                    description=f"{label}: prostate bed with local boost plus elective pelvis.",
                    evidence=[_EV_UCLA_TR, _EV_SPPORT],
                )
            )
        else:
            out.append(
                _spec(
                    pelvis=False,
                    groups=groups,
                    lr=False,
                    nb=False,
                    sbrt=False,
                    adt=False,
                    description=f"{label}: prostate bed only.",
                    evidence=[_EV_SPPORT, _EV_UCLA_T0],
                )
            )
            out.append(
                _spec(
                    pelvis=True,
                    groups=groups,
                    lr=False,
                    nb=False,
                    sbrt=False,
                    adt=False,
                    description=f"{label}: prostate bed plus elective pelvis (SPPORT arm 3 "
                    "added short-term ADT).",
                    evidence=[_EV_SPPORT, _EV_UCLA_T0],
                )
            )
        return out
    # N1 and/or M1: ADT with every option (UCLA aHR 0.37 in N1/M1)
    local = " and a boost to the local recurrence" if has_local else ""
    adt_ev = [_EV_UCLA_ADT, _EV_SPPORT]
    if has_nodes:
        bases = [
            (
                True,
                True,
                f"prostate bed{local}, elective pelvis and a boost to the "
                "PSMA-positive nodes, with ADT",
                [_EV_NODE_BOOST, *adt_ev],
            ),
            (
                True,
                False,
                f"prostate bed{local} and elective pelvis without a node boost, with ADT",
                adt_ev,
            ),
        ]
    else:  # distant disease without pelvic nodes: the bed is the pelvic target
        bases = [(False, False, f"prostate bed{local}, with ADT", adt_ev)]
    if has_mets:
        pelvis, nb, text, ev = bases[0]
        if oligo and (groups["bone"] or groups["soft"]):
            out.append(
                _spec(
                    pelvis=pelvis,
                    groups=groups,
                    lr=has_local,
                    nb=nb,
                    sbrt=True,
                    adt=True,
                    description=f"{label} (oligometastatic): {text}, and SBRT to each metastasis.",
                    evidence=[_EV_SBRT, *ev],
                )
            )
            bases = bases[:1]
        else:
            text += ". Not oligometastatic: pelvic RT shown for comparison only"
            bases = [(pelvis, nb, text, ev)]
    for pelvis, nb, text, ev in bases:
        out.append(
            _spec(
                pelvis=pelvis,
                groups=groups,
                lr=has_local,
                nb=nb,
                sbrt=False,
                adt=True,
                description=f"{label}: {text}.",
                evidence=ev,
            )
        )
    return out


def _lesion_mask(lesions: Any, lesion_id: Any, grid: ImageGrid) -> np.ndarray:
    """Find a lesion by id in a collection and return its mask on ``grid``."""
    items: Iterable[Any]
    if lesions is None:
        raise MissingStructureError(f"lesion {lesion_id!r} is needed but no lesions were given")
    if isinstance(lesions, Mapping):
        if lesion_id in lesions:
            items = [lesions[lesion_id]]
        else:
            items = lesions.values()
    else:
        items = lesions
    for les in items:
        ids = {_row_attr(les, "id"), _row_attr(les, "name"), _row_attr(les, "label")}
        if lesion_id in ids or (isinstance(lesions, Mapping) and lesions.get(lesion_id) is les):
            m = _row_attr(les, "mask", "structure")
            if isinstance(m, Structure):
                return m.mask
            if m is not None:
                arr = np.asarray(m, bool)
                if arr.shape == grid.shape:
                    return arr
            raise InvalidInputError(f"lesion {lesion_id!r} has no mask on the anatomy's grid")
    raise MissingStructureError(f"no lesion with id {lesion_id!r} in the lesions given")


class _Cache:
    """Volumes shared by the options built together (same anatomy and protocol)."""

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}

    def get(self, key: Any, build: Any) -> Any:
        if key not in self.items:
            self.items[key] = build()
        return self.items[key]


def build_option(
    spec: OptionSpec,
    atlas: Any,
    lesions: Any = None,
    protocol: str | Protocol = "nrg_salvage",
    *,
    _cache: _Cache | None = None,
) -> FieldOption:
    """Build the target volumes, courses and prescriptions of one option.

    Parameters
    ----------
    spec : OptionSpec
        What to treat (from :func:`suggest_options`, or written by hand).
    atlas : Atlas-like
        Anatomy with ``grid``, ``structures`` and ``landmarks``.
    lesions : iterable or mapping of Lesion-like, optional
        Lesions with an ``id`` (or ``name``) and a ``mask`` (Structure or bool array on the
        anatomy's grid); needed when the spec boosts or treats lesions.
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
    """
    proto = _protocol(protocol)
    cache = _cache or _Cache()
    grid, ss, _ = _anatomy(atlas)
    body = ss["Body"] if "Body" in ss else None
    key = (id(atlas), id(proto))

    def pb() -> tuple[Structure, Structure]:
        ctv = ctv_prostate_bed(atlas, proto)
        ptv = ptv_from_ctv(
            ctv, proto.ptv_margin("prostate_bed"), name=ctv.name.replace("CTV", "PTV", 1), body=body
        )
        return ctv, ptv

    def nodes() -> tuple[Structure, Structure]:
        ctv = ctv_pelvic_nodes(atlas, proto)
        ptv = ptv_from_ctv(
            ctv, proto.ptv_margin("pelvic_nodes"), name=ctv.name.replace("CTV", "PTV", 1), body=body
        )
        return ctv, ptv

    def lesion(kind: str, lid: Any, number: int | None) -> tuple[Structure, ...]:
        return boost_volumes(
            _lesion_mask(lesions, lid, grid), atlas, proto, kind=kind, number=number
        )

    rx_pb = proto.prescription("prostate_bed")
    rx_pn = proto.prescription("pelvic_nodes")
    rx_lr = proto.prescription("local_boost")
    rx_nb = proto.prescription("node_boost")
    assert rx_pb.fractions is not None and rx_pn.fractions is not None
    ctv_sb, ptv_sb = cache.get((key, "pb"), pb)
    lr = [
        cache.get(
            (key, "lr", lid, len(spec.local_boost)),
            lambda lid=lid, i=i: lesion(
                "local_boost", lid, None if len(spec.local_boost) == 1 else i
            ),
        )
        for i, lid in enumerate(spec.local_boost, start=1)
    ]
    nb = [
        cache.get((key, "nb", lid, i), lambda lid=lid, i=i: lesion("node_boost", lid, i))
        for i, lid in enumerate(spec.node_boost, start=1)
    ]
    pelvic_tech = proto.value("technique.pelvic")
    courses: list[Course] = []

    def tgt(vols: Sequence[Structure], dose: float) -> Target:
        g, c, p = vols
        return Target(p, dose, ctv=c, gtv=g)

    notes: list[str] = []
    if spec.pelvis:
        ctv_n, ptv_n = cache.get((key, "nodes"), nodes)
        for g_n, _, _ in nb:
            inside = np.count_nonzero(g_n.mask & ctv_n.mask) / max(g_n.voxel_count, 1)
            if inside < 0.5:
                notes.append(
                    f"{g_n.name} lies mostly outside {ctv_n.name} ({100 * inside:.0f}% inside)."
                )
        mode = proto.value("technique.wprt_mode")
        if mode == "sequential":
            c1 = [
                Target(ptv_n, rx_pn.dose_gy, ctv=ctv_n),
                Target(ptv_sb, rx_pn.dose_gy, ctv=ctv_sb),
            ]
            c1 += [tgt(v, rx_pn.dose_gy) for v in lr]
            c1 += [tgt(v, rx_nb.dose_gy) for v in nb]
            courses.append(Course("Pelvis", pelvic_tech, rx_pn.fractions, tuple(c1)))
            c2 = [Target(ptv_sb, rx_pb.dose_gy - rx_pn.dose_gy, ctv=ctv_sb)]
            c2 += [tgt(v, rx_lr.dose_gy - rx_pn.dose_gy) for v in lr]
            courses.append(
                Course(
                    "ProstateBedBoost", pelvic_tech, rx_pb.fractions - rx_pn.fractions, tuple(c2)
                )
            )
        else:
            c1 = [
                Target(ptv_sb, rx_pb.dose_gy, ctv=ctv_sb),
                Target(ptv_n, rx_pn.dose_gy, ctv=ctv_n),
            ]
            c1 += [tgt(v, rx_lr.dose_gy) for v in lr]
            c1 += [tgt(v, rx_nb.dose_gy) for v in nb]
            courses.append(Course("PelvisSIB", pelvic_tech, rx_pb.fractions, tuple(c1)))
    else:
        c1 = [Target(ptv_sb, rx_pb.dose_gy, ctv=ctv_sb)]
        c1 += [tgt(v, rx_lr.dose_gy) for v in lr]
        courses.append(Course("ProstateBed", pelvic_tech, rx_pb.fractions, tuple(c1)))
    n = 0
    for kind, ids in (("sbrt_bone", spec.sbrt_bone), ("sbrt_node", spec.sbrt_node)):
        rx = proto.prescription(kind)
        assert rx.fractions is not None
        for lid in ids:
            n += 1
            vols = cache.get(
                (key, kind, lid, n), lambda lid=lid, n=n, kind=kind: lesion(kind, lid, n)
            )
            courses.append(Course(f"SBRT_{n}", "sbrt", rx.fractions, (tgt(vols, rx.dose_gy),)))
    crop = proto.value("ptv.evaluation.crop_from_body_mm")
    extra = []
    seen: dict[str, Structure] = {}
    for c in courses:
        for t in c.targets:
            for s in (t.gtv, t.ctv, t.ptv):
                if s is None:
                    continue
                if s.name in seen and seen[s.name] is not s:
                    raise InvalidInputError(
                        f"option {spec.name!r}: two different volumes named {s.name!r}"
                    )
                seen[s.name] = s
    done: set[str] = set()
    for c in courses:
        for t in c.targets:
            if t.ptv.name in done:
                continue
            done.add(t.ptv.name)
            ev = cache.get((key, "eval", t.ptv.name), lambda t=t: evaluation_ptv(t.ptv, body, crop))
            if ev is not None:
                extra.append(ev)
    return FieldOption(
        name=spec.name,
        courses=tuple(courses),
        adt=spec.adt,
        description=" ".join([spec.description or DISCLAIMER, *notes]),
        evidence=spec.evidence,
        extra_structures=tuple(extra),
    )


def build_options(
    specs_or_stage: Any,
    atlas: Any,
    lesions: Any = None,
    protocol: str | Protocol = "nrg_salvage",
) -> list[FieldOption]:
    """Build several options on one anatomy, sharing the volumes they have in common.

    Parameters
    ----------
    specs_or_stage : sequence of OptionSpec, or a Stage
        Options to build; a stage is first passed to :func:`suggest_options`.
    atlas : Atlas-like
        Anatomy.
    lesions : iterable or mapping of Lesion-like, optional
        The lesions the specs refer to by id.
    protocol : str or Protocol
        Margins, borders and doses.

    Returns
    -------
    list of FieldOption
    """
    proto = _protocol(protocol)
    if isinstance(specs_or_stage, OptionSpec):
        specs: list[OptionSpec] = [specs_or_stage]
    elif isinstance(specs_or_stage, Sequence) and all(
        isinstance(s, OptionSpec) for s in specs_or_stage
    ):
        specs = list(specs_or_stage)
    else:
        specs = suggest_options(specs_or_stage, proto)
    cache = _Cache()
    return [build_option(s, atlas, lesions, proto, _cache=cache) for s in specs]


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
    option: FieldOption, atlas: Any, organs: Sequence[str] = ("Rectum", "Bladder")
) -> list[TargetOverlap]:
    """Overlap of each PTV of an option with each organ (cc and %).

    Parameters
    ----------
    option : FieldOption
    atlas : Atlas-like
        Anatomy holding the organs.
    organs : sequence of str
        Organ names; missing ones are skipped.

    Returns
    -------
    list of TargetOverlap
        One per (PTV, organ present), PTVs in course order, each PTV once.
    """
    _, ss, _ = _anatomy(atlas)
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


def option_volume_table(option: FieldOption, atlas: Any | None = None) -> list[dict[str, Any]]:
    """One row per target volume of an option: name, role, volume, total dose, overlaps.

    Parameters
    ----------
    option : FieldOption
    atlas : Atlas-like, optional
        When given, PTV rows get ``rectum_overlap_cc`` / ``_pct`` and
        ``bladder_overlap_cc`` / ``_pct`` (percent of the organ).

    Returns
    -------
    list of dict
        Keys ``option``, ``structure``, ``role``, ``volume_cc``, ``total_dose_gy`` (summed
        over courses, physical dose) and the overlap keys.
    """
    totals: dict[str, float] = {}
    vols: dict[str, Structure] = {}
    for t in option.targets:
        totals[t.ptv.name] = totals.get(t.ptv.name, 0.0) + t.prescription_gy
        for s in (t.gtv, t.ctv, t.ptv):
            if s is not None:
                vols.setdefault(s.name, s)
    ov = {}
    if atlas is not None:
        for o in target_overlaps(option, atlas):
            ov[(o.target, o.organ.lower())] = o
    rows = []
    for name, s in vols.items():
        row: dict[str, Any] = {
            "option": option.name,
            "structure": name,
            "role": s.role,
            "volume_cc": round(s.volume_cc, 2),
            "total_dose_gy": round(totals[name], 2) if name in totals else None,
        }
        for organ in ("rectum", "bladder"):
            o = ov.get((name, organ))
            if o is not None:
                row[f"{organ}_overlap_cc"] = round(o.overlap_cc, 2)
                row[f"{organ}_overlap_pct"] = round(o.pct_of_organ, 1)
        rows.append(row)
    return rows
