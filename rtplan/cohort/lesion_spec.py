"""Lesions described by region and size, placed on an anatomy.

A cohort manifest can describe a patient's PSMA-positive lesions without any image: a
list of ``kind:site[@fraction][:size]`` items separated by ``;``, for example
``node:external_iliac_L:8mm;bone:VB_S1:12mm``. :func:`parse_lesion_items` reads such a
text and :func:`place_lesions` turns it into spherical GTVs on an
:class:`~rtplan.atlas.Atlas` (the shipped atlas or any anatomy with the structures the
sites need). Grammar::

    items    := item (";" item)*
    item     := kind ":" site ["@" fraction] [":" size "mm"]
    kind     := "local" | "node" | "bone"
    fraction := number in [0, 1]   height within the site's anchor structure
                                   (0 = its lowest slice, 1 = its highest)
    size     := number             lesion diameter in mm (3-50)

Sites (case-insensitive; ``_L`` / ``_R`` is the patient side):

=====  ==========================================================  ==================
kind   sites                                                       staged as
=====  ==========================================================  ==================
local  ``VUA`` (vesicourethral anastomosis), ``bladder_neck``        Tr (prostate bed)
node   ``external_iliac_L/R``, ``internal_iliac_L/R``,              N1 (EI, II, OB,
       ``obturator_L/R``, ``presacral``, ``perirectal_L/R``         PS, OP)
node   ``common_iliac_L/R``, ``paraaortic``, ``inguinal_L/R``       M1a (CI, RP, OE)
bone   any bone structure of the anatomy (``VB_S1``, ``Sacrum``,    M1b
       ``Bone_Ilium_R``, ``PubicSymphys``, ``Femur_Head_L``...)
=====  ==========================================================  ==================

Default diameters (tool defaults, as in the demo cases: typical of PSMA-positive
findings at salvage, not data): local 14 mm (1.4 cc), node 10 mm (0.5 cc), bone 16 mm
(2.1 cc).

Placement (all tool defaults): a node is a sphere next to its anchor structure (the
artery of its vessel region, the obturator internus, the anterior sacrum at S1-S2, the
rectum, the femoral head for inguinal nodes), at ``fraction`` of the anchor's
cranio-caudal extent (default: the middle, or the first height that works), tried
along the eight in-plane directions (the site's anatomical ones first) at 1-25 mm
from the anchor's surface. Each candidate is cut away from vessels, bones, muscles,
pelvic organs, the prostate bed and the lesions already placed and kept inside
``Body``; overlap with the bowel space counts half against it. Candidates along the
site's own directions come first, those that keep at least half of the sphere before
those that keep 30-50 %, nearest to the anchor first. Every item's first candidate is staged (one
:func:`rtplan.staging.stage` call for all); when one is not in its site's region (or
flagged uncertain), that item is placed again (away from all the others), taking the
first of its first 12 candidates that staging places in the region, so a lesion
specification stages as written. A local
recurrence is a sphere at the ``VUA`` landmark (3 mm posterior) or at the bed voxel
nearest the centre of ``ProstateBed`` at 85 % of its height (``bladder_neck``), cut
away from the rectum, anal canal, bladder and bone. A bone lesion is centred at the
point of the bone (not yet taken by an earlier lesion) farthest from its surface, on the
slice at ``fraction`` when given, and cut to the bone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._masks import Box, largest_component, union_in_box
from rtplan.atlas import Atlas
from rtplan.errors import InvalidInputError, MissingStructureError, RtplanError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesion, Lesions
from rtplan.staging import BONE_STRUCTURES
from rtplan.staging import stage as stage_lesions
from rtplan.structures import Structure

__all__ = [
    "BONE_PREFIXES",
    "DEFAULT_DIAMETER_MM",
    "LESION_KINDS",
    "LOCAL_SITES",
    "NODE_SITES",
    "LesionItem",
    "LesionPlacementError",
    "format_lesion_items",
    "lesion_item_problems",
    "parse_lesion_items",
    "place_lesions",
]

LesionKind = Literal["local", "node", "bone"]
#: The kinds of placed lesion.
LESION_KINDS: tuple[str, ...] = ("local", "node", "bone")

#: Default lesion diameter per kind, mm (tool defaults, as the demo cases).
DEFAULT_DIAMETER_MM: dict[str, float] = {"local": 14.0, "node": 10.0, "bone": 16.0}
_MIN_DIAMETER_MM = 3.0
_MAX_DIAMETER_MM = 50.0

#: Local-recurrence sites.
LOCAL_SITES: tuple[str, ...] = ("VUA", "bladder_neck")

#: Bone structure name prefixes accepted as bone sites (those of rtplan.staging).
BONE_PREFIXES: tuple[str, ...] = tuple(BONE_STRUCTURES)

BoolArray = npt.NDArray[np.bool_]
Vector = npt.NDArray[np.float64]

# LPS unit vectors in the axial plane: +x patient left, +y posterior.
_L = (1.0, 0.0)
_R = (-1.0, 0.0)
_P = (0.0, 1.0)
_A = (0.0, -1.0)


@dataclass(frozen=True)
class _NodeSite:
    """Where a node site is anchored and how it must stage."""

    anchor: tuple[str, ...]  # anchor structures (first present one is used)
    directions: tuple[tuple[float, float], ...]  # preferred in-plane directions, LPS x/y
    region_codes: tuple[str, ...]  # staging region codes that count as this site
    fraction: float  # default height within the anchor (0 bottom, 1 top)


def _sided(
    stem: str,
    anchor: str,
    directions: Sequence[tuple[str, ...]],
    codes: tuple[str, ...],
    fraction: float,
) -> dict[str, _NodeSite]:
    """Left and right versions of a site; directions are written for the left side."""
    out: dict[str, _NodeSite] = {}
    for side, lateral in (("L", 1.0), ("R", -1.0)):
        dirs = []
        for parts in directions:
            x = sum(lateral * (1.0 if p == "lat" else -1.0) for p in parts if p in ("lat", "med"))
            y = sum(1.0 if p == "post" else -1.0 for p in parts if p in ("post", "ant"))
            dirs.append((x, y))
        out[f"{stem}_{side}"] = _NodeSite((anchor.format(side=side),), tuple(dirs), codes, fraction)
    return out


#: Node sites: anchor structures, preferred directions, staging region codes.
NODE_SITES: dict[str, _NodeSite] = {
    **_sided(
        "external_iliac",
        "A_Iliac_Ext_{side}",
        (("lat",), ("lat", "post"), ("lat", "ant"), ("ant",)),
        ("EI",),
        0.5,
    ),
    **_sided(
        "internal_iliac",
        "A_Iliac_Int_{side}",
        (("lat", "post"), ("post",), ("lat",), ("med", "post")),
        ("II",),
        0.5,
    ),
    **_sided(
        "common_iliac",
        "A_Iliac_{side}",
        (("lat",), ("lat", "post"), ("lat", "ant"), ("ant",)),
        ("CI",),
        0.5,
    ),
    **_sided(
        "obturator",
        "Obturator_Int_{side}",
        (("med", "post"), ("med",), ("med", "ant")),
        ("OB",),
        0.7,
    ),
    **_sided(
        "perirectal",
        "Rectum",
        (("lat", "post"), ("lat",), ("post",)),
        ("OP",),
        0.6,
    ),
    **_sided(
        "inguinal",
        "Femur_Head_{side}",
        (("ant",), ("ant", "med"), ("ant", "lat")),
        ("OE",),
        0.5,
    ),
    "presacral": _NodeSite(
        ("VB_S1", "VB_S2", "Sacrum"), (_A, (0.7, -0.7), (-0.7, -0.7)), ("PS",), 0.5
    ),
    "paraaortic": _NodeSite(("A_Aorta",), (_L, (0.7, 0.7), _R, _A), ("RP",), 0.5),
}

_NODE_GAPS_MM = (1.0, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0, 25.0)
_GOOD_FRACTION = 0.5
_MAX_STAGED_CANDIDATES = 12
_MIN_FRACTION = 0.3
_FRACTION_TRIES = (0.0, 0.1, -0.1, 0.2, -0.2, 0.3, -0.3)
_LOCAL_POSTERIOR_SHIFT_MM = 3.0
_BLADDER_NECK_FRACTION = 0.85
_AVOID_PREFIXES = ("A_", "V_", *BONE_PREFIXES)
_AVOID_NAMES = (
    "Bladder",
    "Rectum",
    "Canal_Anal",
    "Colon_Sigmoid",
    "PenileBulb",
    "Urethra",
    "ProstateBed",
    "Obturator_Int_L",
    "Obturator_Int_R",
    "Iliopsoas_L",
    "Iliopsoas_R",
    "Levator_Ani",
)
_EIGHT = (_L, _R, _P, _A, (0.7, 0.7), (-0.7, 0.7), (0.7, -0.7), (-0.7, -0.7))


class LesionPlacementError(RtplanError, ValueError):
    """A lesion specification that cannot be placed on the anatomy (names the item)."""


# ============================================================================ grammar
@dataclass(frozen=True)
class LesionItem:
    """One lesion of a specification: what, where, how big.

    Parameters
    ----------
    kind : {"local", "node", "bone"}
        Local recurrence, lymph node or bone lesion.
    site : str
        Canonical site name (see the module table); for bone, a structure name.
    diameter_mm : float
        Sphere diameter in mm.
    fraction : float or None
        Height within the anchor structure (0 = lowest slice, 1 = highest); ``None``
        for the site's default.

    Examples
    --------
    >>> str(LesionItem("node", "external_iliac_L", 8.0))
    'node:external_iliac_L:8mm'
    """

    kind: str
    site: str
    diameter_mm: float
    fraction: float | None = None

    def __str__(self) -> str:
        at = "" if self.fraction is None else f"@{self.fraction:g}"
        return f"{self.kind}:{self.site}{at}:{self.diameter_mm:g}mm"


_SITE_LOOKUP: dict[str, str] = {
    **{s.lower(): s for s in NODE_SITES},
    **{s.lower(): s for s in LOCAL_SITES},
}
_ITEM_RE = re.compile(
    r"^(?P<kind>[A-Za-z]+):(?P<site>[A-Za-z0-9_]+)(?:@(?P<frac>[^:]*))?(?::(?P<size>.*))?$"
)
_SIZE_RE = re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)\s*mm$", re.IGNORECASE)


def _parse_item(text: str) -> tuple[LesionItem | None, str | None]:
    """One item, or the reason it is not one."""
    m = _ITEM_RE.match(text.strip())
    if m is None:
        return None, f"{text.strip()!r} is not kind:site[@fraction][:size mm]"
    kind = m["kind"].lower()
    if kind not in LESION_KINDS:
        return None, f"{text.strip()!r}: unknown kind {m['kind']!r} (use {', '.join(LESION_KINDS)})"
    site_in = m["site"]
    if kind == "bone":
        if not site_in.startswith(BONE_PREFIXES):
            return None, (
                f"{text.strip()!r}: {site_in!r} is not a bone structure (names starting "
                f"{', '.join(BONE_PREFIXES)})"
            )
        site = site_in
    else:
        site = _SITE_LOOKUP.get(site_in.lower(), "")
        allowed = NODE_SITES if kind == "node" else LOCAL_SITES
        if site not in allowed:
            return None, (
                f"{text.strip()!r}: unknown {kind} site {site_in!r} (use {', '.join(allowed)})"
            )
    fraction: float | None = None
    if m["frac"] is not None:
        if kind == "local":
            return None, f"{text.strip()!r}: a local site takes no @fraction"
        try:
            fraction = float(m["frac"])
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            return None, f"{text.strip()!r}: @fraction must be a number in [0, 1]"
    diameter = DEFAULT_DIAMETER_MM[kind]
    if m["size"] is not None:
        sm = _SIZE_RE.match(m["size"].strip())
        value = float(sm["num"]) if sm is not None else math.nan
        if not _MIN_DIAMETER_MM <= value <= _MAX_DIAMETER_MM:
            return None, (
                f"{text.strip()!r}: size must be a diameter of {_MIN_DIAMETER_MM:g}-"
                f"{_MAX_DIAMETER_MM:g} mm written like 8mm"
            )
        diameter = value
    return LesionItem(kind, site, diameter, fraction), None


def lesion_item_problems(text: str) -> tuple[tuple[LesionItem, ...], list[str]]:
    """Parse a lesion specification and list every problem in it.

    Parameters
    ----------
    text : str
        ``;``-separated items (see the module grammar).

    Returns
    -------
    items : tuple of LesionItem
        The items that parsed.
    problems : list of str
        One message per bad item (empty when all are fine).

    Examples
    --------
    >>> items, problems = lesion_item_problems("node:obturator_R;bone:VB_S9x@2")
    >>> [str(i) for i in items], len(problems)
    (['node:obturator_R:10mm'], 1)
    """
    parts = [p for p in text.split(";")]
    items: list[LesionItem] = []
    problems: list[str] = []
    if not any(p.strip() for p in parts):
        return (), ["an empty lesion specification (write none for no lesion)"]
    for part in parts:
        if not part.strip():
            problems.append("an empty item between two ';'")
            continue
        item, problem = _parse_item(part)
        if item is not None:
            items.append(item)
        else:
            problems.append(str(problem))
    return tuple(items), problems


def parse_lesion_items(text: str) -> tuple[LesionItem, ...]:
    """Parse a lesion specification such as ``"node:external_iliac_L:8mm;bone:VB_S1"``.

    Parameters
    ----------
    text : str
        ``;``-separated items (see the module grammar).

    Returns
    -------
    tuple of LesionItem

    Raises
    ------
    InvalidInputError
        Naming every bad item.

    Examples
    --------
    >>> [str(i) for i in parse_lesion_items("local:vua;node:Presacral@0.4:12mm")]
    ['local:VUA:14mm', 'node:presacral@0.4:12mm']
    """
    items, problems = lesion_item_problems(text)
    if problems:
        raise InvalidInputError(f"lesion specification {text!r}: " + "; ".join(problems))
    return items


def format_lesion_items(items: Iterable[LesionItem]) -> str:
    """The canonical text of items (``"none"`` when there are none).

    Examples
    --------
    >>> format_lesion_items([])
    'none'
    """
    text = ";".join(str(i) for i in items)
    return text or "none"


# ============================================================================ geometry
def _box_around(grid: ImageGrid, centre_mm: Vector, reach_mm: float) -> Box | None:
    """Index box covering ``reach_mm`` around an LPS point, clipped; None if outside."""
    idx = grid.lps_to_index(centre_mm)
    out = []
    for c, sp, n in zip(idx, grid.spacing_mm, grid.shape):
        half = math.ceil(reach_mm / sp) + 1
        lo = max(0, math.floor(c) - half)
        hi = min(n, math.ceil(c) + half + 1)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return (out[0], out[1], out[2])


def _sphere(grid: ImageGrid, box: Box, centre_mm: Vector, radius_mm: float) -> BoolArray:
    """Voxels of ``box`` whose centres lie within ``radius_mm`` of ``centre_mm``.

    At least the voxel nearest the centre, so a lesion smaller than a voxel is one voxel.
    """
    z_mm, y_mm, x_mm = grid.axis_coordinates_mm()
    cx, cy, cz = (float(c) for c in centre_mm)
    dz = ((z_mm[box[0]] - cz) ** 2)[:, None, None]
    dy = ((y_mm[box[1]] - cy) ** 2)[None, :, None]
    dx = ((x_mm[box[2]] - cx) ** 2)[None, None, :]
    d2 = dz + dy + dx
    inside: BoolArray = d2 <= radius_mm**2
    if not inside.any():
        nearest = np.unravel_index(int(np.argmin(d2)), d2.shape)
        inside[nearest] = True
    return inside


def _present(atlas: Atlas, names: Iterable[str]) -> list[Structure]:
    """The non-empty structures of ``names`` the anatomy has."""
    out = []
    for n in names:
        key = atlas.structures.resolve(n)
        if key is not None and not atlas.structures[key].is_empty:
            out.append(atlas.structures[key])
    return out


def _avoid_structures(atlas: Atlas) -> list[Structure]:
    names = [n for n in atlas.structures.names if n.startswith(_AVOID_PREFIXES)]
    return _present(atlas, [*names, *_AVOID_NAMES])


def _section(structure: Structure, fraction: float) -> tuple[int, Vector]:
    """Slice index at ``fraction`` of the structure's z extent and its section centre (LPS)."""
    bbox = structure.bbox
    if bbox is None:
        raise MissingStructureError(f"structure {structure.name!r} is empty")
    local = structure.cropped_mask
    rows = np.flatnonzero(local.any(axis=(1, 2)))
    # rows are in index order; map the fraction to height (z up) whatever the axis sign
    grid = structure.grid
    z_of = grid.index_to_lps(np.array([[r + bbox[0].start, 0, 0] for r in rows], float))[:, 2]
    order = np.argsort(z_of, kind="stable")
    k_local = int(rows[order[round(fraction * (len(rows) - 1))]])
    jj, ii = np.nonzero(local[k_local])
    idx = (k_local + bbox[0].start, jj.mean() + bbox[1].start, ii.mean() + bbox[2].start)
    return k_local + bbox[0].start, np.asarray(grid.index_to_lps(idx), float)


def _inside(structure: Structure, point_mm: Vector) -> bool:
    bbox = structure.bbox
    if bbox is None:
        return False
    idx = structure.grid.lps_to_nearest_index(point_mm) - [b.start for b in bbox]
    if np.any(idx < 0) or np.any(idx >= structure.cropped_mask.shape):
        return False
    return bool(structure.cropped_mask[tuple(idx)])


def _surface_distance_mm(structure: Structure, centre_mm: Vector, unit: Vector) -> float:
    """Distance from ``centre_mm`` along ``unit`` to where the structure ends (0 if outside)."""
    step = 0.5 * min(structure.grid.spacing_mm)
    d = 0.0
    while _inside(structure, centre_mm + (d + step) * unit) and d < 200.0:
        d += step
    return d


def _nearest_voxel_mm(structure: Structure, k_global: int, point_mm: Vector) -> Vector:
    """LPS centre of the structure's voxel on slice ``k_global`` nearest to ``point_mm``."""
    bbox = structure.bbox
    assert bbox is not None  # a section was found on this slice
    jj, ii = np.nonzero(structure.cropped_mask[k_global - bbox[0].start])
    idx = np.stack(
        [np.full(jj.shape, k_global, float), jj + bbox[1].start, ii + bbox[2].start], axis=1
    )
    pts = structure.grid.index_to_lps(idx)
    nearest: Vector = pts[int(np.argmin(((pts - point_mm) ** 2).sum(axis=1)))]
    return nearest


def _unit(direction: tuple[float, float]) -> Vector:
    v = np.array([direction[0], direction[1], 0.0], float)
    out: Vector = v / np.linalg.norm(v)
    return out


# ============================================================================ placement
@dataclass
class _Candidate:
    fraction_kept: float
    order: int
    preferred: bool
    gap: int
    box: Box
    mask: BoolArray


def _gtv(name: str, local: BoolArray, box: Box, grid: ImageGrid) -> Structure:
    offset = (box[0].start, box[1].start, box[2].start)
    return Structure.from_cropped(name, local, offset, grid, role="gtv")


def _staged(structures: Sequence[Structure], atlas: Atlas) -> list[Lesion]:
    """Each structure staged as a lesion, in one :func:`rtplan.stage` call.

    Staging locates every lesion on its own (only the patient-level stage combines them),
    so candidates that overlap one another can be staged together.
    """
    lesions = [Lesion(id=n, name=f"C{n}", structure=s) for n, s in enumerate(structures, start=1)]
    return list(stage_lesions(Lesions(lesions, grid=atlas.grid), atlas).lesions)


def _in_site(staged: Lesion, codes: tuple[str, ...]) -> bool:
    return staged.region_code in codes and not staged.region_uncertain


def _node_candidates(
    atlas: Atlas,
    site: _NodeSite,
    anchor: Structure,
    fraction: float,
    radius_mm: float,
    taken: Sequence[Structure],
) -> list[_Candidate]:
    grid = atlas.grid
    _, centre0 = _section(anchor, fraction)
    directions = [*site.directions, *(d for d in _EIGHT if d not in site.directions)]
    reach = 60.0 + max(_NODE_GAPS_MM) + 2 * radius_mm
    box = _box_around(grid, centre0, reach)
    if box is None:
        return []
    body = union_in_box(_present(atlas, ["Body"]), box) if "Body" in atlas.structures else None
    avoid = union_in_box([*_avoid_structures(atlas), *taken], box)
    bowel = union_in_box(_present(atlas, ["Spc_Bowel"]), box)
    out: list[_Candidate] = []
    order = 0
    for direction in directions:
        unit = _unit(direction)
        surface = _surface_distance_mm(anchor, centre0, unit)
        for n_gap, gap in enumerate(_NODE_GAPS_MM):
            centre = centre0 + (surface + radius_mm + gap) * unit
            sub = _box_around(grid, centre, radius_mm)
            if sub is None:
                continue
            # the sub-box inside the search box (centres lie within `reach` of centre0)
            rel = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box))
            if any(r.start < 0 or r.stop > b.stop - b.start for r, b in zip(rel, box)):
                continue
            sphere = _sphere(grid, sub, centre, radius_mm)
            kept = sphere & ~avoid[rel]
            if body is not None:
                kept &= body[rel]
            n_sphere = int(sphere.sum())
            score = (float(kept.sum()) - 0.5 * float((kept & bowel[rel]).sum())) / n_sphere
            preferred = direction in site.directions
            out.append(_Candidate(score, order, preferred, n_gap, sub, largest_component(kept)))
            order += 1
    return out


def _fractions(default: float, given: float | None) -> list[float]:
    if given is not None:
        return [given]
    return [min(1.0, max(0.0, default + d)) for d in _FRACTION_TRIES]


def _place_node(
    atlas: Atlas,
    item: LesionItem,
    name: str,
    taken: Sequence[Structure],
    *,
    checked: bool,
) -> Structure:
    site = NODE_SITES[item.site]
    anchors = _present(atlas, site.anchor)
    if not anchors:
        raise LesionPlacementError(
            f"lesion {item}: the anatomy has no {' or '.join(site.anchor)} to place it by"
        )
    anchor = anchors[0]
    radius = item.diameter_mm / 2.0
    tried = 0
    for fraction in _fractions(site.fraction, item.fraction):
        cands = _node_candidates(atlas, site, anchor, fraction, radius, taken)
        usable = [c for c in cands if c.fraction_kept >= _MIN_FRACTION and c.mask.any()]
        # the site's own directions first; within them spheres at least half kept before
        # the others, nearest to the anchor first (then in the order of the directions)
        usable.sort(
            key=lambda c: (not c.preferred, c.fraction_kept < _GOOD_FRACTION, c.gap, c.order)
        )
        gtvs = [_gtv(name, c.mask, c.box, atlas.grid) for c in usable[:_MAX_STAGED_CANDIDATES]]
        tried += len(gtvs)
        if not gtvs:
            continue
        if not checked:
            return gtvs[0]
        for gtv, staged in zip(gtvs, _staged(gtvs, atlas)):
            if _in_site(staged, site.region_codes):
                return gtv
    raise LesionPlacementError(
        f"lesion {item}: found no free space next to {anchor.name} that stages as "
        f"{'/'.join(site.region_codes)} in anatomy {atlas.name!r} ({tried} candidates tried)"
    )


def _place_local(
    atlas: Atlas,
    item: LesionItem,
    name: str,
    taken: Sequence[Structure],
    *,
    checked: bool,
) -> Structure:
    grid = atlas.grid
    radius = item.diameter_mm / 2.0
    if item.site == "VUA":
        if "VUA" not in atlas.landmarks:
            raise LesionPlacementError(f"lesion {item}: the anatomy has no 'VUA' landmark")
        centre = np.add(atlas.landmarks["VUA"], (0.0, _LOCAL_POSTERIOR_SHIFT_MM, 0.0))
    else:
        beds = _present(atlas, ["ProstateBed"])
        if not beds:
            raise LesionPlacementError(f"lesion {item}: the anatomy has no ProstateBed")
        centre = _nearest_voxel_mm(beds[0], *_section(beds[0], _BLADDER_NECK_FRACTION))
    box = _box_around(grid, np.asarray(centre, float), radius)
    if box is None:
        raise LesionPlacementError(f"lesion {item}: its centre lies outside the grid")
    sphere = _sphere(grid, box, np.asarray(centre, float), radius)
    bones = [n for n in atlas.structures.names if n.startswith(BONE_PREFIXES)]
    avoid = union_in_box(
        [*_present(atlas, ["Rectum", "Canal_Anal", "Bladder", *bones]), *taken], box
    )
    kept = largest_component(sphere & ~avoid)
    if not kept.any():
        raise LesionPlacementError(f"lesion {item}: no free soft tissue at the {item.site}")
    gtv = _gtv(name, kept, box, grid)
    if checked and _staged([gtv], atlas)[0].category != "Tr":
        raise LesionPlacementError(
            f"lesion {item}: placed at the {item.site} it does not stage as a local recurrence "
            f"in anatomy {atlas.name!r}"
        )
    return gtv


def _place_bone(atlas: Atlas, item: LesionItem, name: str, taken: Sequence[Structure]) -> Structure:
    grid = atlas.grid
    key = atlas.structures.resolve(item.site)
    if key is None:
        lower = {n.lower(): n for n in atlas.structures.names}
        key = lower.get(item.site.lower())
    if key is None or atlas.structures[key].is_empty:
        bones = [n for n in atlas.structures.names if n.startswith(BONE_PREFIXES)]
        raise LesionPlacementError(
            f"lesion {item}: the anatomy has no bone {item.site!r} (it has {', '.join(bones)})"
        )
    bone = atlas.structures[key]
    bbox = bone.bbox
    assert bbox is not None  # not empty, checked above
    free = bone.cropped_mask & ~union_in_box(taken, bbox)
    if not free.any():
        raise LesionPlacementError(f"lesion {item}: no free bone left in {key}")
    depth = ndimage.distance_transform_edt(np.pad(free, 1), sampling=grid.spacing_mm)
    depth = np.asarray(depth, float)[1:-1, 1:-1, 1:-1]
    if item.fraction is not None:
        k_global, _ = _section(bone, item.fraction)
        keep = np.zeros(depth.shape, bool)
        keep[k_global - bbox[0].start] = True
        depth = np.where(keep, depth, 0.0)
    peak = np.unravel_index(int(np.argmax(depth)), depth.shape)
    centre = np.asarray(grid.index_to_lps([p + sl.start for p, sl in zip(peak, bbox)]), float)
    radius = item.diameter_mm / 2.0
    box = _box_around(grid, centre, radius)
    assert box is not None  # the centre is a voxel of the bone
    lesion = _sphere(grid, box, centre, radius) & union_in_box([bone], box)
    lesion &= ~union_in_box(taken, box)
    if not lesion.any():
        raise LesionPlacementError(f"lesion {item}: no free bone left in {key}")
    return _gtv(name, largest_component(lesion), box, grid)


_SHORT = {
    "external_iliac": "EI",
    "internal_iliac": "II",
    "common_iliac": "CI",
    "obturator": "OB",
    "perirectal": "OP",
    "inguinal": "OE",
    "presacral": "PS",
    "paraaortic": "RP",
}


def _gtv_name(item: LesionItem, n: int) -> str:
    """TG-263-style GTV name: GTVp (local), GTVn (node), GTVm (bone), numbered."""
    if item.kind == "local":
        return f"GTVp{n}"
    if item.kind == "node":
        return f"GTVn{n}"
    return f"GTVm{n}"


def place_lesions(items: Sequence[LesionItem], atlas: Atlas) -> Lesions:
    """Place the lesions of a specification on an anatomy.

    Parameters
    ----------
    items : sequence of LesionItem
        From :func:`parse_lesion_items`; placed in order, each avoiding the earlier.
    atlas : Atlas
        The anatomy (structures and landmarks the sites need, see the module notes).

    Returns
    -------
    Lesions
        ``L1``, ``L2``... in item order (their GTV structures have the same names); each
        lesion's ``source`` is ``"placed <item> (GTVp<n>)"``, with ``GTVp`` (local),
        ``GTVn`` (node) or ``GTVm`` (bone) numbered per kind.

    Raises
    ------
    LesionPlacementError
        When a site's anchor is missing or no position stages as the site.

    Examples
    --------
    >>> from rtplan.atlas import load_atlas
    >>> atlas = load_atlas("male_pelvis_postop", spacing_mm=(5.0, 4.0, 4.0))
    >>> lesions = place_lesions(parse_lesion_items("node:internal_iliac_R"), atlas)
    >>> stage_lesions(lesions, atlas).string
    'T0N1M0'
    >>> len(place_lesions((), atlas))
    0
    """
    if not items:
        return Lesions([], grid=atlas.grid)
    # first try: each item's first candidate, all staged in one call; staging is the
    # expensive part, and the first candidate is almost always right
    gtvs = _place_all(items, atlas, checked=False)
    staged = _staged(gtvs, atlas)
    for n, item in enumerate(items):
        if not _matches(item, staged[n]):
            others = gtvs[:n] + gtvs[n + 1 :]
            gtvs[n] = _place_one(atlas, item, f"L{n + 1}", others, checked=True)
    counts = {"local": 0, "node": 0, "bone": 0}
    lesions: list[Lesion] = []
    for n, (item, gtv) in enumerate(zip(items, gtvs), start=1):
        counts[item.kind] += 1
        source = f"placed {item} ({_gtv_name(item, counts[item.kind])})"
        lesions.append(Lesion(id=n, name=f"L{n}", structure=gtv, source=source))
    return Lesions(lesions, grid=atlas.grid)


def _place_one(
    atlas: Atlas,
    item: LesionItem,
    name: str,
    taken: Sequence[Structure],
    *,
    checked: bool,
) -> Structure:
    """Place one item away from ``taken``; ``checked``: staged until it is in its site."""
    if item.kind == "node":
        return _place_node(atlas, item, name, taken, checked=checked)
    if item.kind == "local":
        return _place_local(atlas, item, name, taken, checked=checked)
    return _place_bone(atlas, item, name, taken)


def _place_all(items: Sequence[LesionItem], atlas: Atlas, *, checked: bool) -> list[Structure]:
    """Place the items in order, each avoiding the earlier."""
    placed: list[Structure] = []
    for n, item in enumerate(items, start=1):
        placed.append(_place_one(atlas, item, f"L{n}", placed, checked=checked))
    return placed


def _matches(item: LesionItem, staged: Lesion) -> bool:
    """Whether a staged lesion is where its item says."""
    if item.kind == "node":
        return _in_site(staged, NODE_SITES[item.site].region_codes)
    return staged.category == ("Tr" if item.kind == "local" else "M1b")
