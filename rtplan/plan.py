"""Plan description value objects shared by the volume builders, the dose model and reports.

A :class:`FieldOption` (e.g. "PBRT+WPRT") is a list of :class:`Course` objects delivered
one after the other (a pelvic course, a sequential prostate-bed boost, an SBRT course);
each course has one or more :class:`Target` dose levels (simultaneous integrated boosts
are several targets in one course).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from rtplan._typing import BoolMask
from rtplan._validation import check_choice, check_type
from rtplan.errors import InvalidInputError
from rtplan.structures import Structure

__all__ = [
    "TECHNIQUES",
    "Course",
    "FieldOption",
    "Target",
    "TargetLevel",
    "Technique",
    "resolve_overlaps",
    "target_levels",
]

Technique = Literal["imrt", "3dcrt", "sbrt"]
TECHNIQUES: tuple[Technique, ...] = ("imrt", "3dcrt", "sbrt")


@dataclass(frozen=True)
class Target:
    """One dose level of a course: a PTV with its prescription.

    Parameters
    ----------
    ptv : Structure
        The planning target volume (role ``"ptv"``) the prescription covers.
    prescription_gy : float
        Total prescribed dose of this course to the PTV, in Gy (> 0).
    ctv : Structure, optional
        The CTV the PTV was grown from (for coverage reporting).
    gtv : Structure, optional
        The GTV (PSMA-positive lesion) the CTV was grown from, if any.
    cropped_from : Structure, optional
        The PTV as drawn, when :attr:`ptv` is the part of it this course doses (a later
        phase's PTV cropped by higher targets, see :func:`resolve_overlaps`). Coverage and
        hot spots are evaluated on :attr:`whole_ptv`.
    """

    ptv: Structure
    prescription_gy: float
    ctv: Structure | None = None
    gtv: Structure | None = None
    cropped_from: Structure | None = None

    def __post_init__(self) -> None:
        check_type(self.ptv, Structure, name="Target.ptv")
        for name, s in (("ctv", self.ctv), ("gtv", self.gtv), ("cropped_from", self.cropped_from)):
            check_type(
                s,
                (Structure, type(None)),
                name=f"Target.{name}",
                expected_text="a Structure or None",
            )
        rx = float(self.prescription_gy)
        if not rx > 0 or rx != rx:
            raise InvalidInputError(
                f"prescription_gy of target {self.ptv.name!r} must be a positive number, "
                f"got {self.prescription_gy!r}"
            )
        object.__setattr__(self, "prescription_gy", rx)

    @property
    def name(self) -> str:
        """Name of the PTV."""
        return self.ptv.name

    @property
    def whole_ptv(self) -> Structure:
        """The PTV as drawn: :attr:`cropped_from` when set, else :attr:`ptv`."""
        return self.ptv if self.cropped_from is None else self.cropped_from


@dataclass(frozen=True)
class Course:
    """A series of fractions delivered with one technique to one or more dose levels.

    Parameters
    ----------
    name : str
        e.g. ``"Pelvis"``, ``"Boost"``, ``"SBRT_1"``.
    technique : {"imrt", "3dcrt", "sbrt"}
        Delivery technique the dose estimate models ("imrt" covers IMRT and VMAT).
    fractions : int
        Number of fractions (> 0); every target of the course gets its dose in these.
    targets : tuple of Target
        Dose levels, any order; several levels form a simultaneous integrated boost.
    """

    name: str
    technique: Technique
    fractions: int
    targets: tuple[Target, ...]

    def __post_init__(self) -> None:
        check_type(self.name, str, name="Course.name")
        check_choice(self.technique, TECHNIQUES, name=f"technique of course {self.name!r}")
        if int(self.fractions) != self.fractions or self.fractions < 1:
            raise InvalidInputError(f"fractions of course {self.name!r} must be a positive integer")
        if not self.targets:
            raise InvalidInputError(f"course {self.name!r} has no target")
        object.__setattr__(self, "targets", tuple(self.targets))
        for t in self.targets:
            check_type(t, Target, name=f"a target of course {self.name!r}")

    def dose_per_fraction_gy(self, target: Target) -> float:
        """Dose per fraction of one target of this course, in Gy."""
        return target.prescription_gy / self.fractions


@dataclass(frozen=True)
class FieldOption:
    """A named treatment option to compare: its courses, ADT flag and evidence line.

    Parameters
    ----------
    name : str
        Short label used as a table column, e.g. ``"PBRT"``, ``"PBRT+WPRT"``.
    courses : tuple of Course
        Courses delivered in sequence; their doses add (in EQD2 for the composite).
    adt : bool
        Androgen deprivation suggested with this option (reported, not dosed).
    description : str
        One line for the report.
    evidence : str
        The evidence line with its source, e.g. the UCLA aHR for WPRT.
    extra_structures : tuple of Structure
        Further structures of the option (evaluation PTVs) for the report and RTSTRUCT.
    """

    name: str
    courses: tuple[Course, ...]
    adt: bool = False
    description: str = ""
    evidence: str = ""
    extra_structures: tuple[Structure, ...] = field(default=())

    def __post_init__(self) -> None:
        check_type(self.name, str, name="FieldOption.name")
        if not self.courses:
            raise InvalidInputError(f"option {self.name!r} has no course")
        object.__setattr__(self, "courses", tuple(self.courses))
        for c in self.courses:
            check_type(c, Course, name=f"a course of option {self.name!r}")

    @property
    def targets(self) -> list[Target]:
        """All targets of all courses, in order."""
        return [t for c in self.courses for t in c.targets]

    @property
    def techniques(self) -> frozenset[str]:
        """The techniques of its courses (``"imrt"``, ``"3dcrt"``, ``"sbrt"``)."""
        return frozenset(c.technique for c in self.courses)


# ---------------------------------------------------------------------------- dose levels
def _eqd2(dose_gy: float, fractions: int, alpha_beta_gy: float) -> float:
    """``EQD2 = D (d + a/b) / (2 + a/b)`` of a scalar dose, Gy.

    The formula of :func:`rtplan.dose_estimate.eqd2_gy` (which imports this module).
    """
    return dose_gy * (dose_gy / fractions + alpha_beta_gy) / (2.0 + alpha_beta_gy)


@dataclass(frozen=True)
class TargetLevel:
    """The intended dose of one PTV (as drawn) over the courses of an option.

    Parameters
    ----------
    ptv : Structure
        The PTV as drawn (:attr:`Target.whole_ptv`).
    parts : tuple of (float, int)
        ``(dose_gy, fractions)`` that each course treating the PTV prescribes to it, in
        course order.
    techniques : tuple of str
        Technique of each of those courses.
    courses : tuple of int
        Index (in the option) of each of those courses; empty when not known.
    """

    ptv: Structure
    parts: tuple[tuple[float, int], ...]
    techniques: tuple[str, ...]
    courses: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """Name of the PTV."""
        return self.ptv.name

    @property
    def total_gy(self) -> float:
        """Physical prescription summed over the courses, Gy."""
        return sum(d for d, _ in self.parts)

    @property
    def is_sbrt(self) -> bool:
        """Whether every course treating the PTV is an SBRT course."""
        return all(t == "sbrt" for t in self.techniques)

    @property
    def doses_per_fraction_gy(self) -> tuple[float, ...]:
        """Dose per fraction of each part, Gy."""
        return tuple(d / n for d, n in self.parts)

    def eqd2_gy(self, alpha_beta_gy: float) -> float:
        """The intended level as EQD2 (Gy): each course's part converted and summed.

        Examples
        --------
        >>> import numpy as np
        >>> from rtplan.grid import ImageGrid
        >>> g = ImageGrid(shape=(1, 1, 1), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
        >>> p = Structure("PTVn1_6000", np.ones((1, 1, 1), bool), g, role="ptv")
        >>> round(TargetLevel(p, ((60.0, 25),), ("imrt",)).eqd2_gy(1.5), 2)
        66.86
        """
        return sum(_eqd2(d, n, alpha_beta_gy) for d, n in self.parts)

    def scale_giving_eqd2(self, eqd2_gy: float, alpha_beta_gy: float) -> float:
        """The factor ``x`` by which every course's part of the level gives ``eqd2_gy``.

        The positive root of ``sum EQD2(x D, n) = eqd2_gy`` over the parts ``(D, n)``:
        ``A x^2 + B x = eqd2_gy (2 + a/b)`` with ``A = sum D^2 / n`` and ``B = a/b sum D``.
        An EQD2 read back as a fraction of the physical prescription: a voxel that gets
        ``x`` times its prescription from every course has ``x`` whatever the basis, so a
        physical limit such as 107 % applies to it as written.

        Parameters
        ----------
        eqd2_gy : float
            EQD2 (Gy, >= 0).
        alpha_beta_gy : float
            alpha/beta (Gy, > 0).

        Raises
        ------
        InvalidInputError
            A negative or non-finite ``eqd2_gy``, a non-positive ``alpha_beta_gy``, or a
            level without a dose.

        Examples
        --------
        >>> import numpy as np
        >>> from rtplan.grid import ImageGrid
        >>> g = ImageGrid(shape=(1, 1, 1), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
        >>> p = Structure("PTVsb_6660", np.ones((1, 1, 1), bool), g, role="ptv")
        >>> lv = TargetLevel(p, ((45.0, 25), (21.6, 12)), ("imrt", "imrt"))
        >>> hot = _eqd2(1.07 * 45.0, 25, 1.5) + _eqd2(1.07 * 21.6, 12, 1.5)
        >>> round(hot / lv.eqd2_gy(1.5), 3), round(lv.scale_giving_eqd2(hot, 1.5), 6)
        (1.111, 1.07)
        >>> mixed = TargetLevel(p, ((45.0, 25), (16.0, 2)), ("imrt", "sbrt"))
        >>> hot = _eqd2(1.07 * 45.0, 25, 1.5) + _eqd2(1.07 * 16.0, 2, 1.5)
        >>> round(mixed.scale_giving_eqd2(hot, 1.5), 6), mixed.scale_giving_eqd2(0.0, 1.5)
        (1.07, 0.0)
        """
        if not (math.isfinite(eqd2_gy) and eqd2_gy >= 0):
            raise InvalidInputError(f"eqd2_gy must be a finite number >= 0, got {eqd2_gy!r}")
        if not (math.isfinite(alpha_beta_gy) and alpha_beta_gy > 0):
            raise InvalidInputError(f"alpha_beta_gy must be > 0, got {alpha_beta_gy!r}")
        if not any(d > 0 for d, _ in self.parts):
            raise InvalidInputError(f"{self.name} has no dose to scale")
        a = sum(d * d / n for d, n in self.parts)
        b = alpha_beta_gy * sum(d for d, _ in self.parts)
        c = eqd2_gy * (2.0 + alpha_beta_gy)
        # the positive root of a x^2 + b x - c, written without cancellation for small c
        return 2.0 * c / (b + math.sqrt(b * b + 4.0 * a * c))


def _fraction_inside(part: Structure, whole: Structure) -> float:
    """Fraction of the voxels of ``part`` inside ``whole`` (0 on different grids)."""
    if not part.grid.equals(whole.grid):
        return 0.0
    return float(part.shared_voxel_count(whole)) / max(part.voxel_count, 1)


def _earlier_credit(ptv: Structure, earlier: Sequence[Course]) -> list[tuple[float, int, str, int]]:
    """``(dose, fractions, technique, course index)`` earlier conventional courses give a PTV.

    A sequential boost's PTV that lies at least half inside a PTV of an earlier
    conventional course gets that course's (highest such) prescription.
    """
    out: list[tuple[float, int, str, int]] = []
    for n, course in enumerate(earlier):
        if course.technique == "sbrt":
            continue
        rx = [
            t.prescription_gy for t in course.targets if _fraction_inside(ptv, t.whole_ptv) >= 0.5
        ]
        if rx:
            out.append((max(rx), course.fractions, course.technique, n))
    return out


def target_levels(option: FieldOption) -> list[TargetLevel]:
    """The intended level of every PTV of an option (as drawn), in order of appearance.

    A PTV treated by several courses (a sequential boost) gets the sum of their
    prescriptions; a later phase's cropped PTV (:attr:`Target.cropped_from`) counts for
    the PTV it was cropped from. A conventional PTV first treated by a later course and
    lying at least half inside a PTV of an earlier conventional course (a boost nested
    in the elective volume) is credited with that earlier prescription too.

    Raises
    ------
    TypeError
        If ``option`` is not a :class:`FieldOption`.
    """
    check_type(option, FieldOption, name="option")
    order: dict[str, Structure] = {}
    first: dict[str, int] = {}
    parts: dict[str, list[tuple[float, int]]] = {}
    techniques: dict[str, list[str]] = {}
    indices: dict[str, list[int]] = {}
    for n, course in enumerate(option.courses):
        in_course: dict[str, float] = {}
        for t in course.targets:
            whole = t.whole_ptv
            order.setdefault(whole.name, whole)
            first.setdefault(whole.name, n)
            in_course[whole.name] = max(in_course.get(whole.name, 0.0), t.prescription_gy)
        for name, rx in in_course.items():
            parts.setdefault(name, []).append((rx, course.fractions))
            techniques.setdefault(name, []).append(course.technique)
            indices.setdefault(name, []).append(n)
    for name, ptv in order.items():
        if "sbrt" in techniques[name]:
            continue
        credit = _earlier_credit(ptv, option.courses[: first[name]])
        parts[name] = [(d, n) for d, n, _, _ in credit] + parts[name]
        techniques[name] = [tech for _, _, tech, _ in credit] + techniques[name]
        indices[name] = [i for _, _, _, i in credit] + indices[name]
    return [
        TargetLevel(ptv, tuple(parts[name]), tuple(techniques[name]), tuple(indices[name]))
        for name, ptv in order.items()
    ]


def _cropped_name(whole: str) -> str:
    """TG-263 name of a PTV with higher-dose PTVs removed: ``PTVsb_6660`` -> ``PTV!sb_6660``."""
    if whole.startswith("PTV") and not whole.startswith("PTV!"):
        return "PTV!" + whole[3:]
    return whole if whole.endswith("!") else whole + "!"


def _without(mask: BoolMask, grid_of: Structure, others: Sequence[Structure]) -> BoolMask:
    """``mask`` minus the structures of ``others`` on the same grid as ``grid_of``."""
    out = mask.copy()
    for o in others:
        if o.grid.equals(grid_of.grid):
            out &= ~o.mask
    return out


@dataclass(frozen=True)
class _LevelIndex:
    """Intended EQD2 of each PTV (as drawn) of an option."""

    eqd2_gy: dict[str, float]
    ptvs: dict[str, Structure]

    def higher_than(self, name: str, candidates: Sequence[Target]) -> list[Structure]:
        """PTVs (as drawn) of ``candidates`` whose intended level exceeds that of ``name``."""
        mine = self.eqd2_gy[name]
        out: dict[str, Structure] = {}
        for u in candidates:
            other = u.whole_ptv.name
            if other != name and self.eqd2_gy[other] > mine * (1 + 1e-9) + 1e-9:
                out.setdefault(other, self.ptvs[other])
        return list(out.values())


def _crop_target(
    t: Target, higher: Sequence[Structure], spare: Sequence[Structure], is_boost: bool
) -> tuple[Target | None, BoolMask | None]:
    """The target without ``higher`` (and, for a boost, without ``spare``).

    Returns the target to dose (``None`` when nothing is left) and the part taken away
    for sparing (``None`` when none), which the caller plans at a lower level.
    """
    whole = t.whole_ptv
    mask = _without(t.ptv.mask, t.ptv, higher)
    spared: BoolMask | None = None
    if is_boost and spare:
        kept = _without(mask, t.ptv, spare)
        spared = mask & ~kept
        mask = kept
        if not spared.any():
            spared = None
    n_kept = int(np.count_nonzero(mask))
    if n_kept == t.ptv.voxel_count:
        return t, spared
    if n_kept == 0:
        return None, spared
    removed = [s.name for s in higher] + ([s.name for s in spare] if spared is not None else [])
    ptv = Structure(
        _cropped_name(whole.name),
        mask,
        t.ptv.grid,
        role="ptv",
        derivation=f"{whole.name} minus {', '.join(removed)} (rtplan.plan.resolve_overlaps)",
    )
    return replace(t, ptv=ptv, cropped_from=whole), spared


def _lower_level_target(
    course: Course, t: Target, spared: BoolMask, kept: Sequence[Target]
) -> Target | None:
    """A target at the course's lowest level for the spared part of a boost not yet covered."""
    low = min(u.prescription_gy for u in course.targets)
    rest = spared.copy()
    for u in kept:
        if u.prescription_gy <= low * (1 + 1e-9) and u.ptv.grid.equals(t.ptv.grid):
            rest &= ~u.ptv.mask
    if not rest.any():
        return None
    whole = t.whole_ptv
    ptv = Structure(
        f"{_cropped_name(whole.name)}^low",
        rest,
        t.ptv.grid,
        role="ptv",
        derivation=f"part of {whole.name} inside spared organs, planned at {low:g} Gy",
    )
    return Target(ptv, low, ctv=t.ctv, gtv=t.gtv, cropped_from=whole)


def resolve_overlaps(
    option: FieldOption,
    *,
    alpha_beta_gy: float,
    spare: Sequence[Structure] = (),
) -> FieldOption:
    """The option with its targets cropped so that boosts do not stack.

    Where targets of different courses overlap, planners crop the later phase's PTV by the
    earlier courses' PTVs of a higher intended level, so that a voxel gets the level of
    the highest target covering it (``PTVsb_6660`` of a sequential prostate-bed boost
    course becomes ``PTV!sb_6660``, TG-263 "PTV!": a PTV with higher-dose PTVs removed).
    Levels are compared as EQD2 with ``alpha_beta_gy`` (a 60 Gy / 25 node boost, EQD2
    66.9 Gy at 1.5 Gy, outranks a 66.6 Gy bed at 1.8 Gy per fraction, EQD2 62.8 Gy).
    Within one course, several levels are a simultaneous integrated boost and stay as they
    are (the dose model gives a voxel the highest of them).

    Parameters
    ----------
    option : FieldOption
        The option as built (:func:`rtplan.volumes.build_option`).
    alpha_beta_gy : float
        alpha/beta (Gy) of the targets (prostate cancer) for comparing dose levels.
    spare : sequence of Structure
        Organs that boost PTVs (targets above their course's lowest level) are cropped by
        ("PTV minus OAR"); the part taken away is planned at the course's lowest level
        (a new target when no lower-level target of the course covers it). Only when the
        protocol asks for it; default none.

    Returns
    -------
    FieldOption
        The same option when nothing overlaps; else a copy whose later-phase targets carry
        the cropped PTVs (:attr:`Target.cropped_from` names the PTV as drawn). A course
        left with no target is dropped and the description says so. Applying it twice
        changes nothing more.

    Raises
    ------
    TypeError
        If ``option`` is not a :class:`FieldOption` or ``spare`` holds a non-Structure.
    ValueError
        If ``alpha_beta_gy`` is not a positive number.
    """
    check_type(option, FieldOption, name="option")
    ab = float(alpha_beta_gy)
    if not (math.isfinite(ab) and ab > 0):
        raise InvalidInputError(f"alpha_beta_gy must be a positive number of Gy, got {ab!r}")
    for s in spare:
        check_type(s, Structure, name="a structure of spare")
    levels = target_levels(option)
    index = _LevelIndex(
        {lv.name: lv.eqd2_gy(ab) for lv in levels}, {lv.name: lv.ptv for lv in levels}
    )
    courses: list[Course] = []
    dropped: list[str] = []
    changed = False
    for i, course in enumerate(option.courses):
        earlier = [t for c in option.courses[:i] for t in c.targets]
        low = min(t.prescription_gy for t in course.targets)
        kept: list[Target] = []
        spared_parts: list[tuple[Target, BoolMask]] = []
        for t in course.targets:
            higher = index.higher_than(t.whole_ptv.name, earlier)
            is_boost = t.prescription_gy > low * (1 + 1e-9)
            new, spared = _crop_target(t, higher, spare, is_boost)
            changed = changed or new is not t
            if new is not None:
                kept.append(new)
            if spared is not None:
                spared_parts.append((t, spared))
        for t, spared in spared_parts:
            extra = _lower_level_target(course, t, spared, kept)
            if extra is not None:
                kept.append(extra)
                changed = True
        if len(kept) == len(course.targets) and all(a is b for a, b in zip(kept, course.targets)):
            courses.append(course)
        elif kept:
            courses.append(replace(course, targets=tuple(kept)))
        else:
            dropped.append(course.name)
    if not changed and not dropped:
        return option
    if not courses:
        raise InvalidInputError(f"option {option.name!r}: every course lies inside higher targets")
    description = option.description
    if dropped:
        description += (
            f" Course(s) {', '.join(dropped)} dropped: their targets lie inside higher-dose "
            "targets of earlier courses."
        )
    return replace(option, courses=tuple(courses), description=description.strip())
