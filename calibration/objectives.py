"""The optimisation structures and objectives of one course, as a planner would set them.

Pure rtplan/numpy (no pyRadPlan): :mod:`calibration.engine` turns the
:class:`OptStructure` list into pyRadPlan VOIs, and the plan record stores it.

Per course, the targets are grouped into dose levels (targets of equal prescription
form one level; a simultaneous integrated boost has several). On the dose grid:

* **coverage** (squared underdosing below the level's prescription) on every voxel the
  level's PTV occupies more than :attr:`ObjectiveWeights.cover_occupancy` (10 %), minus
  the higher levels: rtplan scores the PTV with its fractional occupancy of the dose
  voxels, so its edge voxels count and must be covered;
* **homogeneity** (squared overdosing above :attr:`ObjectiveWeights.ptv_max_rel` x the
  prescription) on the voxels the PTV occupies at least half, minus the higher levels
  grown by :attr:`ObjectiveWeights.transition_mm` (the dose falls from the higher level
  there);
* **organs** outside every target of the course: rectum and bladder squared overdosing
  around 40 Gy (60 % of the primary level's prescription) and 85 %, bowel and sigmoid
  at 60 %, femoral heads and penile bulb at 45 %;
* a **ring** from :attr:`ObjectiveWeights.ring_inner_mm` to ``ring_outer_mm`` around the
  targets (squared overdosing above 75 %), and the **body** outside the targets (squared
  overdosing above 100 %, a hot-spot term).

Organ thresholds scale with the prescription of the course's primary level (the level of
largest PTV volume, the one the course is normalised to): 66.6 Gy for prostate-bed RT
puts the rectum terms at 40 and 57 Gy; a 45 Gy pelvic course at 27 and 38 Gy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from calibration.scoring import BOWEL_NAMES, OCCUPANCY_THRESHOLD, union_structure
from calibration.store import JsonValue
from rtplan.dvh import occupancy_on_grid
from rtplan.grid import ImageGrid
from rtplan.plan import Course
from rtplan.structures import Structure

__all__ = [
    "DoseLevel",
    "ObjectiveSpec",
    "ObjectiveWeights",
    "OptStructure",
    "VoiType",
    "course_levels",
    "course_structures",
    "describe_structures",
    "primary_level",
]

BoolArray = npt.NDArray[np.bool_]
VoiType = Literal["TARGET", "OAR", "HELPER", "EXTERNAL"]
ObjectiveKind = Literal["squared_underdosing", "squared_overdosing"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective term: squared under- or overdosing around a dose, with a priority.

    Parameters
    ----------
    kind : {"squared_underdosing", "squared_overdosing"}
        pyRadPlan's ``SquaredUnderdosing`` (penalises dose below ``dose_gy``) or
        ``SquaredOverdosing`` (dose above it); each is the mean squared deviation over the
        structure's voxels.
    dose_gy : float
        The reference dose of the course, Gy.
    priority : float
        The weight of the term.
    """

    kind: ObjectiveKind
    dose_gy: float
    priority: float


@dataclass(frozen=True, eq=False)
class OptStructure:
    """An optimisation structure on the dose grid with its objectives.

    Parameters
    ----------
    name : str
        Name (``"PTV_66.6Gy_cover"``, ``"Rectum_opt"``...).
    voi_type : {"TARGET", "OAR", "HELPER", "EXTERNAL"}
        pyRadPlan VOI type.
    mask : ndarray of bool, shape ``dose_grid.shape``
        The voxels it holds.
    objectives : tuple of ObjectiveSpec
        Its objective terms.
    derivation : str
        How it was made, for the plan record.
    """

    name: str
    voi_type: VoiType
    mask: BoolArray
    objectives: tuple[ObjectiveSpec, ...]
    derivation: str


@dataclass(frozen=True)
class ObjectiveWeights:
    """The objective set: priorities and thresholds (relative to the primary level's Rx).

    Chosen on the atlas's prostate-bed plan (30 mm cutoff, normalised to D95% = 100 %),
    where five sets were tried: covering only the voxels the PTV occupies at least half
    left the PTV edge cold (raw D95% 96 %) and, after normalisation, D2% at 110-113 %;
    covering every voxel the PTV occupies more than 10 % with a doubled coverage priority
    and overdosing above 102 % gave D98% 97 %, D50% 103 %, D2% 107 %. Across the sets the
    rectum V40Gy moved between 33 and 39 % and V50Gy between 25 and 30 %; doubling the
    rectum and bladder priorities moved their V40Gy by 1-2 points only.
    """

    cover_occupancy: float = 0.1
    cover_priority: float = 2000.0
    ptv_max_rel: float = 1.02
    ptv_max_priority: float = 1000.0
    transition_mm: float = 5.0
    rectum_rel: tuple[float, float] = (0.6, 0.85)
    rectum_priority: tuple[float, float] = (100.0, 300.0)
    bladder_rel: tuple[float, float] = (0.6, 0.85)
    bladder_priority: tuple[float, float] = (50.0, 200.0)
    bowel_rel: float = 0.6
    bowel_priority: float = 100.0
    femur_rel: float = 0.45
    femur_priority: float = 50.0
    penile_bulb_rel: float = 0.45
    penile_bulb_priority: float = 30.0
    ring_inner_mm: float = 5.0
    ring_outer_mm: float = 25.0
    ring_rel: float = 0.75
    ring_priority: float = 100.0
    body_rel: float = 1.0
    body_priority: float = 300.0

    def as_json(self) -> dict[str, JsonValue]:
        """The weights as a JSON object (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, obj: Mapping[str, JsonValue]) -> ObjectiveWeights:
        """The weights :meth:`as_json` wrote.

        Raises
        ------
        ValueError
            When a weight is missing or not a number (or a pair of numbers).

        Examples
        --------
        >>> w = ObjectiveWeights(ring_priority=50.0)
        >>> ObjectiveWeights.from_json(w.as_json()) == w
        True
        """

        def num(key: str) -> float:
            value = obj.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"objective weight {key} = {value!r} is not a number")
            return float(value)

        def pair(key: str) -> tuple[float, float]:
            value = obj.get(key)
            if not (isinstance(value, list) and len(value) == 2):
                raise ValueError(f"objective weight {key} = {value!r} is not a pair")
            low, high = value
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
                raise ValueError(f"objective weight {key} = {value!r} is not a pair of numbers")
            return (float(low), float(high))

        return cls(
            cover_occupancy=num("cover_occupancy"),
            cover_priority=num("cover_priority"),
            ptv_max_rel=num("ptv_max_rel"),
            ptv_max_priority=num("ptv_max_priority"),
            transition_mm=num("transition_mm"),
            rectum_rel=pair("rectum_rel"),
            rectum_priority=pair("rectum_priority"),
            bladder_rel=pair("bladder_rel"),
            bladder_priority=pair("bladder_priority"),
            bowel_rel=num("bowel_rel"),
            bowel_priority=num("bowel_priority"),
            femur_rel=num("femur_rel"),
            femur_priority=num("femur_priority"),
            penile_bulb_rel=num("penile_bulb_rel"),
            penile_bulb_priority=num("penile_bulb_priority"),
            ring_inner_mm=num("ring_inner_mm"),
            ring_outer_mm=num("ring_outer_mm"),
            ring_rel=num("ring_rel"),
            ring_priority=num("ring_priority"),
            body_rel=num("body_rel"),
            body_priority=num("body_priority"),
        )


@dataclass(frozen=True, eq=False)
class DoseLevel:
    """The targets of one prescription in a course.

    Parameters
    ----------
    prescription_gy : float
        The course's dose to these targets, Gy.
    ptv : Structure
        The union of their PTVs (on the CT grid), named ``PTV_<Rx>Gy``, or the PTV itself
        when there is one.
    ptv_names : tuple of str
        The PTVs of the level.
    occupancy : ndarray of float32, shape ``dose_grid.shape``
        Fraction of every dose voxel the level's PTV occupies.
    """

    prescription_gy: float
    ptv: Structure
    ptv_names: tuple[str, ...]
    occupancy: npt.NDArray[np.float32]

    @property
    def core(self) -> BoolArray:
        """Dose voxels the PTV occupies at least :data:`OCCUPANCY_THRESHOLD`."""
        return np.asarray(self.occupancy >= OCCUPANCY_THRESHOLD)

    def cover(self, min_occupancy: float) -> BoolArray:
        """Dose voxels the PTV occupies more than ``min_occupancy``."""
        return np.asarray(self.occupancy > min_occupancy)


def course_levels(course: Course, dose_grid: ImageGrid) -> list[DoseLevel]:
    """The dose levels of a course, highest prescription first.

    Examples
    --------
    >>> from rtplan.plan import Target
    >>> g = ImageGrid(shape=(1, 1, 4), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> m = np.zeros(g.shape, bool); m[..., :2] = True
    >>> t = Target(Structure("PTV_A", m, g, role="ptv"), 60.0)
    >>> [lv.prescription_gy for lv in course_levels(Course("C", "imrt", 30, (t,)), g)]
    [60.0]
    """
    by_rx: dict[float, list[Structure]] = {}
    for t in course.targets:
        ptvs = by_rx.setdefault(round(t.prescription_gy, 4), [])
        if all(p.name != t.ptv.name for p in ptvs):
            ptvs.append(t.ptv)
    levels = []
    for rx in sorted(by_rx, reverse=True):
        ptvs = by_rx[rx]
        ptv = ptvs[0] if len(ptvs) == 1 else union_structure(f"PTV_{rx:g}Gy", ptvs, role="ptv")
        levels.append(
            DoseLevel(
                prescription_gy=rx,
                ptv=ptv,
                ptv_names=tuple(p.name for p in ptvs),
                occupancy=occupancy_on_grid(ptv, dose_grid),
            )
        )
    return levels


def primary_level(levels: Sequence[DoseLevel]) -> DoseLevel:
    """The level of largest PTV volume (ties: the higher dose): the course's normalisation."""
    return max(levels, key=lambda lv: (lv.ptv.volume_cc, lv.prescription_gy))


def _grown(mask: BoolArray, dose_grid: ImageGrid, margin_mm: float) -> BoolArray:
    """``mask`` grown by ``margin_mm`` (Euclidean, voxel centres)."""
    if not mask.any():
        return mask.copy()
    dist = ndimage.distance_transform_edt(~mask, sampling=dose_grid.spacing_mm)
    return np.asarray(dist <= margin_mm)


def _ring(core: BoolArray, dose_grid: ImageGrid, inner_mm: float, outer_mm: float) -> BoolArray:
    dist = ndimage.distance_transform_edt(~core, sampling=dose_grid.spacing_mm)
    return np.asarray((dist > inner_mm) & (dist <= outer_mm))


def _target_structures(
    levels: Sequence[DoseLevel], dose_grid: ImageGrid, w: ObjectiveWeights
) -> list[OptStructure]:
    out: list[OptStructure] = []
    higher = np.zeros(dose_grid.shape, bool)
    for lv in levels:
        rx = lv.prescription_gy
        cover = lv.cover(w.cover_occupancy) & ~higher
        core = lv.core & ~_grown(higher, dose_grid, w.transition_mm)
        names = "+".join(lv.ptv_names)
        out.append(
            OptStructure(
                f"PTV_{rx:g}Gy_cover",
                "TARGET",
                cover,
                (ObjectiveSpec("squared_underdosing", rx, w.cover_priority),),
                f"dose voxels {names} occupies more than {w.cover_occupancy:g}, "
                "minus higher levels",
            )
        )
        out.append(
            OptStructure(
                f"PTV_{rx:g}Gy_core",
                "TARGET",
                core,
                (ObjectiveSpec("squared_overdosing", w.ptv_max_rel * rx, w.ptv_max_priority),),
                f"dose voxels {names} occupies at least {OCCUPANCY_THRESHOLD:g}, minus higher "
                f"levels grown by {w.transition_mm:g} mm",
            )
        )
        higher |= lv.core
    return out


def _organ_terms(rx: float, w: ObjectiveWeights) -> dict[str, tuple[ObjectiveSpec, ...]]:
    """Objective terms by organ name (organs absent from the anatomy are skipped)."""

    def over(rel: float, priority: float) -> ObjectiveSpec:
        return ObjectiveSpec("squared_overdosing", rel * rx, priority)

    terms: dict[str, tuple[ObjectiveSpec, ...]] = {
        "Rectum": tuple(over(r, p) for r, p in zip(w.rectum_rel, w.rectum_priority)),
        "Bladder": tuple(over(r, p) for r, p in zip(w.bladder_rel, w.bladder_priority)),
        "Colon_Sigmoid": (over(w.bowel_rel, w.bowel_priority),),
        "Femur_Head_L": (over(w.femur_rel, w.femur_priority),),
        "Femur_Head_R": (over(w.femur_rel, w.femur_priority),),
        "PenileBulb": (over(w.penile_bulb_rel, w.penile_bulb_priority),),
    }
    for name in BOWEL_NAMES:
        terms[name] = (over(w.bowel_rel, w.bowel_priority),)
    return terms


def course_structures(
    course: Course,
    organ_masks: Mapping[str, BoolArray],
    dose_grid: ImageGrid,
    *,
    weights: ObjectiveWeights | None = None,
) -> tuple[list[DoseLevel], list[OptStructure]]:
    """The dose levels and the optimisation structures of one course.

    Parameters
    ----------
    course : Course
        The course (its targets on the CT grid).
    organ_masks : mapping of str to ndarray of bool
        Organ masks on the dose grid (:func:`calibration.scoring.mask_on_dose_grid`); must
        hold ``"Body"``.
    dose_grid : ImageGrid
        The dose grid.
    weights : ObjectiveWeights, optional
        The objective set; default :class:`ObjectiveWeights()`.

    Returns
    -------
    levels : list of DoseLevel
        Highest prescription first.
    structures : list of OptStructure
        Target terms per level, then organs, ring and body; empty structures left out.
    """
    w = ObjectiveWeights() if weights is None else weights
    levels = course_levels(course, dose_grid)
    rx = primary_level(levels).prescription_gy
    structures = _target_structures(levels, dose_grid, w)
    targets = np.zeros(dose_grid.shape, bool)
    core = np.zeros(dose_grid.shape, bool)
    for lv in levels:
        targets |= lv.cover(w.cover_occupancy)
        core |= lv.core
    body = organ_masks["Body"]
    for name, terms in _organ_terms(rx, w).items():
        if name in organ_masks:
            structures.append(
                OptStructure(
                    f"{name}_opt",
                    "OAR",
                    organ_masks[name] & ~targets,
                    terms,
                    f"{name} outside the course's targets",
                )
            )
    ring = _ring(core, dose_grid, w.ring_inner_mm, w.ring_outer_mm) & body & ~targets
    structures.append(
        OptStructure(
            "Ring",
            "HELPER",
            ring,
            (ObjectiveSpec("squared_overdosing", w.ring_rel * rx, w.ring_priority),),
            f"{w.ring_inner_mm:g}-{w.ring_outer_mm:g} mm around the course's targets, in Body",
        )
    )
    structures.append(
        OptStructure(
            "Body_opt",
            "EXTERNAL",
            body & ~targets,
            (ObjectiveSpec("squared_overdosing", w.body_rel * rx, w.body_priority),),
            "Body outside the course's targets (hot-spot term)",
        )
    )
    return levels, [s for s in structures if s.mask.any()]


def describe_structures(structures: Sequence[OptStructure]) -> list[JsonValue]:
    """The optimisation structures as JSON (name, type, voxels, derivation, objectives)."""
    out: list[JsonValue] = []
    for s in structures:
        objectives: list[JsonValue] = [
            {"kind": o.kind, "dose_gy": round(o.dose_gy, 4), "priority": o.priority}
            for o in s.objectives
        ]
        out.append(
            {
                "name": s.name,
                "voi_type": s.voi_type,
                "voxels": int(s.mask.sum()),
                "derivation": s.derivation,
                "objectives": objectives,
            }
        )
    return out
