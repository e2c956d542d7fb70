"""Plan description value objects shared by the volume builders, the dose model and reports.

A :class:`FieldOption` (e.g. "PBRT+WPRT") is a list of :class:`Course` objects delivered
one after the other (a pelvic course, a sequential prostate-bed boost, an SBRT course);
each course has one or more :class:`Target` dose levels (simultaneous integrated boosts
are several targets in one course).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rtplan._validation import check_choice, check_type
from rtplan.errors import InvalidInputError
from rtplan.structures import Structure

__all__ = ["TECHNIQUES", "Course", "FieldOption", "Target", "Technique"]

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
    """

    ptv: Structure
    prescription_gy: float
    ctv: Structure | None = None
    gtv: Structure | None = None

    def __post_init__(self) -> None:
        check_type(self.ptv, Structure, name="Target.ptv")
        for name, s in (("ctv", self.ctv), ("gtv", self.gtv)):
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
        The evidence line with its source (CLINICAL.md), e.g. the UCLA aHR for WPRT.
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
