"""The scan in its clinical context: PSA, pathology, detection rate and published subgroups.

A PSMA PET stage means different things at different PSA values. At a PSA below
0.5 ng/mL, 68Ga-PSMA-11 PET found disease in 38 % of men with biochemical recurrence
(Fendler et al., JAMA Oncol 2019, @fendler2019): a negative scan (T0N0M0) there does not
exclude nodal disease. This module holds the optional clinical inputs
(:class:`ClinicalContext`), looks up the published detection rate at a PSA
(:func:`detection_rate`), writes what the scan's result means at that PSA
(:func:`scan_meaning`) and the published subgroups the patient falls in
(:func:`subgroup_lines`). It states published figures with their sources; it never makes
a new outcome prediction.

Detection rates (@fendler2019, 68Ga-PSMA-11, 635 patients; CLINICAL.md 10b [V]):

=================  ==============  =====
PSA (ng/mL)        detection rate  n
=================  ==============  =====
< 0.5              38 %            136
0.5 - < 1.0        57 %            79
1.0 - < 2.0        84 %            89
2.0 - < 5.0        86 %            158
>= 5.0             97 %            173
=================  ==============  =====

For 18F-DCFPyL only CONDOR's overall figures were read (@morris2021_condor: detection rate
59-66 %, correct localisation rate 84.8-87.0 %, median PSA 0.8 ng/mL); for 18F-rhPSMA-7.3
SPOTLIGHT's overall detection rate (@jani2023_spotlight: 83 %, median PSA 1.10 ng/mL);
for 18F-PSMA-1007 none. Where a tracer has no PSA-band data the 68Ga-PSMA-11 band is shown
and labelled as such.

Examples
--------
>>> ctx = ClinicalContext(psa_ng_ml=0.3, pathological_t="T3a", margin="r1")
>>> ctx.pathological_t, ctx.margin
('pT3a', 'R1')
>>> detection_rate(0.3).rate_text
'38 %'
>>> print(scan_meaning("T0N0M0", ctx)[0])  # doctest: +NORMALIZE_WHITESPACE
A negative PSMA PET (T0N0M0) at PSA 0.3 ng/mL does not exclude nodal disease: the
detection rate at this PSA is 38 % (68Ga-PSMA-11 PET, PSA < 0.5 ng/mL, n = 136;
Fendler et al., JAMA Oncol 2019).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rtplan.errors import InvalidInputError
from rtplan.references import short
from rtplan.tracers import get_tracer

__all__ = [
    "FENDLER2019_BANDS",
    "MARGIN_STATUSES",
    "PATHOLOGICAL_N",
    "PATHOLOGICAL_T",
    "ClinicalContext",
    "DetectionRate",
    "detection_rate",
    "grade_group_from_gleason",
    "grade_group_from_gleason_sum",
    "parse_gleason",
    "scan_meaning",
    "subgroup_lines",
]

PATHOLOGICAL_T: tuple[str, ...] = ("pT2", "pT2a", "pT2b", "pT2c", "pT3", "pT3a", "pT3b", "pT4")
PATHOLOGICAL_N: tuple[str, ...] = ("pN0", "pN1", "pNx")
MARGIN_STATUSES: tuple[str, ...] = ("R0", "R1")

# Plausibility limits of the inputs (tool defaults: they catch unit and typing errors, they
# are not clinical thresholds).
_PSA_MAX_NG_ML = 10_000.0
_PSADT_MAX_MONTHS = 1200.0
_MONTHS_SINCE_RP_MAX = 600.0

#: ``(low, high, rate %, n)`` PSA bands (ng/mL, low <= PSA < high) of @fendler2019.
FENDLER2019_BANDS: tuple[tuple[float, float, float, int], ...] = (
    (0.0, 0.5, 38.0, 136),
    (0.5, 1.0, 57.0, 79),
    (1.0, 2.0, 84.0, 89),
    (2.0, 5.0, 86.0, 158),
    (5.0, math.inf, 97.0, 173),
)


# ---------------------------------------------------------------------------- grading
def grade_group_from_gleason(primary: int, secondary: int) -> int:
    """ISUP grade group (1-5) from the primary and secondary Gleason patterns.

    Grade groups (ISUP 2014, @epstein2016_isup; "3+4 = 7 (Grade Group 2)",
    @epstein2017_gleason): Gleason <= 6 -> 1, 3+4 -> 2, 4+3 -> 3, 8 -> 4, 9-10 -> 5.

    Raises
    ------
    InvalidInputError
        If a pattern is not a whole number from 1 to 5.

    Examples
    --------
    >>> grade_group_from_gleason(3, 4), grade_group_from_gleason(4, 3)
    (2, 3)
    """
    for name, p in (("primary", primary), ("secondary", secondary)):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 5:
            raise InvalidInputError(
                f"Gleason {name} pattern must be a whole number from 1 to 5, got {p!r}"
            )
    total = primary + secondary
    if total == 7:
        return 2 if primary == 3 else 3
    return grade_group_from_gleason_sum(total)


def grade_group_from_gleason_sum(total: int) -> int:
    """ISUP grade group from a Gleason sum (2-10); a sum of 7 needs its patterns.

    Raises
    ------
    InvalidInputError
        If the sum is 7 (3+4 is grade group 2, 4+3 grade group 3) or outside 2-10.

    Examples
    --------
    >>> grade_group_from_gleason_sum(6), grade_group_from_gleason_sum(9)
    (1, 5)
    """
    if isinstance(total, bool) or not isinstance(total, int) or not 2 <= total <= 10:
        raise InvalidInputError(f"Gleason sum must be a whole number from 2 to 10, got {total!r}")
    if total == 7:
        raise InvalidInputError(
            "Gleason sum 7 does not fix the ISUP grade group: give the patterns "
            "(3+4 = grade group 2, 4+3 = grade group 3)"
        )
    if total <= 6:
        return 1
    return 4 if total == 8 else 5


_GLEASON_RE = re.compile(r"^\s*([1-5])\s*\+\s*([1-5])\s*(?:=\s*(\d+)\s*)?$")


def parse_gleason(text: str) -> int:
    """ISUP grade group from a Gleason score string: ``"4+3"``, ``"4+3=7"`` or a sum ``"8"``.

    Raises
    ------
    InvalidInputError
        If the text is not a Gleason score, its sum is wrong, or it is a bare 7.

    Examples
    --------
    >>> parse_gleason("4+3=7"), parse_gleason("8")
    (3, 4)
    """
    m = _GLEASON_RE.match(text)
    if m:
        primary, secondary = int(m.group(1)), int(m.group(2))
        if m.group(3) is not None and int(m.group(3)) != primary + secondary:
            raise InvalidInputError(
                f"Gleason score {text!r}: {primary}+{secondary} is not {m.group(3)}"
            )
        return grade_group_from_gleason(primary, secondary)
    if text.strip().isdigit():
        return grade_group_from_gleason_sum(int(text))
    raise InvalidInputError(
        f"Gleason score {text!r} is not understood; expected e.g. '4+3', '4+3=7' or a sum '8'"
    )


# ---------------------------------------------------------------------------- context
def _number(name: str, value: object, low: float, high: float, *, low_open: bool) -> float:
    """``value`` as a float in the range, or InvalidInputError naming ``name`` and the range."""
    opening = "(" if low_open else "["
    valid = f"{opening}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{name} must be a number in {valid}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > high or v < low or (low_open and v == low):
        raise InvalidInputError(f"{name} must be in {valid}, got {value!r}")
    return v


def _choice(name: str, value: object, valid: tuple[str, ...], prefix: str = "") -> str:
    """Normalise a staging string (case-insensitive, optional ``prefix``) to one of ``valid``."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
    key = value.strip().lower()
    if prefix and not key.startswith(prefix):
        key = prefix + key
    for v in valid:
        if v.lower() == key:
            return v
    raise InvalidInputError(f"{name} must be one of {', '.join(valid)}, got {value!r}")


@dataclass(frozen=True)
class ClinicalContext:
    """Clinical inputs that set a PSMA PET stage in context; every field is optional.

    Parameters
    ----------
    psa_ng_ml : float, optional
        PSA at the time of the PET, ng/mL, in [0, 10000].
    psa_doubling_time_months : float, optional
        PSA doubling time, months, in (0, 1200].
    pathological_t : str, optional
        pT of the prostatectomy: ``pT2``, ``pT2a``-``pT2c``, ``pT3``, ``pT3a``, ``pT3b``,
        ``pT4`` (the ``p`` may be left out; case is ignored).
    pathological_n : str, optional
        ``pN0``, ``pN1`` or ``pNx``.
    margin : str, optional
        Surgical margin status ``R0`` or ``R1``.
    isup_grade_group : int, optional
        ISUP grade group 1-5 (see :func:`parse_gleason` for Gleason scores).
    months_since_prostatectomy : float, optional
        Time from prostatectomy to the PET, months, in [0, 600].

    Raises
    ------
    InvalidInputError
        Naming the field and its valid values or range.

    Notes
    -----
    The numeric limits are plausibility checks (tool defaults), not clinical thresholds.
    """

    psa_ng_ml: float | None = None
    psa_doubling_time_months: float | None = None
    pathological_t: str | None = None
    pathological_n: str | None = None
    margin: str | None = None
    isup_grade_group: int | None = None
    months_since_prostatectomy: float | None = None

    def __post_init__(self) -> None:
        checked: dict[str, object] = {}
        if self.psa_ng_ml is not None:
            checked["psa_ng_ml"] = _number(
                "psa_ng_ml (PSA at PET, ng/mL)", self.psa_ng_ml, 0.0, _PSA_MAX_NG_ML, low_open=False
            )
        if self.psa_doubling_time_months is not None:
            checked["psa_doubling_time_months"] = _number(
                "psa_doubling_time_months",
                self.psa_doubling_time_months,
                0.0,
                _PSADT_MAX_MONTHS,
                low_open=True,
            )
        if self.months_since_prostatectomy is not None:
            checked["months_since_prostatectomy"] = _number(
                "months_since_prostatectomy",
                self.months_since_prostatectomy,
                0.0,
                _MONTHS_SINCE_RP_MAX,
                low_open=False,
            )
        if self.pathological_t is not None:
            checked["pathological_t"] = _choice(
                "pathological_t", self.pathological_t, PATHOLOGICAL_T, "p"
            )
        if self.pathological_n is not None:
            checked["pathological_n"] = _choice(
                "pathological_n", self.pathological_n, PATHOLOGICAL_N, "p"
            )
        if self.margin is not None:
            checked["margin"] = _choice("margin", self.margin, MARGIN_STATUSES)
        g = self.isup_grade_group
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= 5:
                raise InvalidInputError(
                    f"isup_grade_group must be a whole number from 1 to 5, got {g!r}"
                )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> ClinicalContext:  # Any: table cells
        """A context from a mapping such as a manifest row (strings or numbers; ``""`` = absent).

        Keys are the field names; ``gleason`` (``"4+3"``) may stand in for
        ``isup_grade_group``. Unknown keys are refused.

        Raises
        ------
        InvalidInputError
            On an unknown key, a number that does not parse, or a value out of range.

        Examples
        --------
        >>> ClinicalContext.from_mapping({"psa_ng_ml": "0.4", "gleason": "4+3", "margin": ""})
        ClinicalContext(psa_ng_ml=0.4, psa_doubling_time_months=None, pathological_t=None, \
pathological_n=None, margin=None, isup_grade_group=3, months_since_prostatectomy=None)
        """
        names = {f.name for f in fields(cls)}
        unknown = [k for k in row if k not in names and k != "gleason"]
        if unknown:
            raise InvalidInputError(
                f"unknown clinical input(s) {', '.join(map(repr, unknown))}; valid: "
                f"{', '.join(sorted([*names, 'gleason']))}"
            )
        values: dict[str, Any] = {}  # Any: parsed cells of mixed type
        for key, raw in row.items():
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            if key == "gleason":
                grade = parse_gleason(str(raw))
                if "isup_grade_group" in values and values["isup_grade_group"] != grade:
                    raise InvalidInputError(
                        f"gleason {raw!r} is grade group {grade}, but isup_grade_group is "
                        f"{values['isup_grade_group']}"
                    )
                values["isup_grade_group"] = grade
            elif key in ("pathological_t", "pathological_n", "margin"):
                values[key] = str(raw)
            elif key == "isup_grade_group":
                values[key] = _as_int(key, raw)
            else:
                values[key] = _as_float(key, raw)
        return cls(**values)

    @property
    def is_empty(self) -> bool:
        """True when no field is given."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def lines(self) -> list[str]:
        """The given inputs as short report lines (empty when nothing is given).

        Examples
        --------
        >>> ClinicalContext(psa_ng_ml=0.35, pathological_t="pT3b", pathological_n="pN0").lines()
        ['PSA at PET 0.35 ng/mL', 'pT3b pN0']
        """
        out = []
        if self.psa_ng_ml is not None:
            out.append(f"PSA at PET {self.psa_ng_ml:g} ng/mL")
        if self.psa_doubling_time_months is not None:
            out.append(f"PSA doubling time {self.psa_doubling_time_months:g} months")
        pathology = " ".join(
            v for v in (self.pathological_t, self.pathological_n, self.margin) if v
        )
        if pathology:
            out.append(pathology)
        if self.isup_grade_group is not None:
            out.append(f"ISUP grade group {self.isup_grade_group}")
        if self.months_since_prostatectomy is not None:
            out.append(f"{self.months_since_prostatectomy:g} months after prostatectomy")
        return out


def _as_float(name: str, raw: object) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    try:
        return float(str(raw).strip())
    except ValueError:
        raise InvalidInputError(f"{name} must be a number, got {raw!r}") from None


def _as_int(name: str, raw: object) -> int:
    value = _as_float(name, raw)
    if not value.is_integer():
        raise InvalidInputError(f"{name} must be a whole number from 1 to 5, got {raw!r}")
    return int(value)


# ---------------------------------------------------------------------------- detection rate
@dataclass(frozen=True)
class DetectionRate:
    """A published PSMA PET detection rate (patients with at least one lesion found).

    Attributes
    ----------
    psa_ng_ml : float
        The PSA looked up (ng/mL).
    tracer : str
        The tracer asked about.
    data_tracer : str
        The tracer of the study the figure comes from (differs from ``tracer`` when the
        tracer has no data of its own).
    band : str
        The PSA band of the figure, e.g. ``"PSA < 0.5 ng/mL"``, or the study population
        when the figure is not by PSA.
    rate_low_pct, rate_high_pct : float
        The rate in percent; a range across readers when they differ.
    n_patients : int or None
        Patients in the band (or study).
    reference : str
        Key of the source in rtplan/references.toml.
    by_psa : bool
        True when the figure is for the PSA band, False when it is the study's overall rate.
    note : str
        What else the source says that matters here.
    """

    psa_ng_ml: float
    tracer: str
    data_tracer: str
    band: str
    rate_low_pct: float
    rate_high_pct: float
    n_patients: int | None
    reference: str
    by_psa: bool
    note: str = ""

    @property
    def rate_text(self) -> str:
        """``"38 %"`` or ``"59-66 %"``."""
        if self.rate_low_pct == self.rate_high_pct:
            return f"{self.rate_low_pct:g} %"
        return f"{self.rate_low_pct:g}-{self.rate_high_pct:g} %"

    @property
    def text(self) -> str:
        """The rate with its band, study size and source, for a report."""
        n = f", n = {self.n_patients}" if self.n_patients is not None else ""
        return f"{self.rate_text} ({self.data_tracer} PET, {self.band}{n}; {short(self.reference)})"


def _band_label(low: float, high: float) -> str:
    if low == 0.0:
        return f"PSA < {high:g} ng/mL"
    if math.isinf(high):
        return f"PSA >= {low:g} ng/mL"
    return f"PSA {low:g}-<{high:g} ng/mL"


def _fendler(psa_ng_ml: float, tracer: str) -> DetectionRate:
    for low, high, rate, n in FENDLER2019_BANDS:
        if low <= psa_ng_ml < high:
            return DetectionRate(
                psa_ng_ml=psa_ng_ml,
                tracer=tracer,
                data_tracer="68Ga-PSMA-11",
                band=_band_label(low, high),
                rate_low_pct=rate,
                rate_high_pct=rate,
                n_patients=n,
                reference="fendler2019",
                by_psa=True,
                note="per-patient PPV 0.84 against histopathology (@fendler2019)",
            )
    raise AssertionError(psa_ng_ml)  # pragma: no cover - the bands cover [0, inf)


def detection_rate(psa_ng_ml: float, tracer: str = "68Ga-PSMA-11") -> DetectionRate:
    """The published PSMA PET detection rate that applies at a PSA, for a tracer.

    * 68Ga-PSMA-11: the PSA band of @fendler2019 (table in the module docstring).
    * 18F-DCFPyL: CONDOR's overall detection rate, 59-66 % (median PSA 0.8 ng/mL,
      @morris2021_condor); no PSA-band rates were read.
    * 18F-rhPSMA-7.3: SPOTLIGHT's overall detection rate, 83 % (median PSA 1.10 ng/mL,
      @jani2023_spotlight).
    * 18F-PSMA-1007: no data in rtplan's references; the 68Ga-PSMA-11 band is returned
      (``data_tracer`` says so).

    Parameters
    ----------
    psa_ng_ml : float
        PSA at the PET, ng/mL (>= 0).
    tracer : str
        A tracer name or alias (:data:`rtplan.tracers.TRACER_NAMES`).

    Raises
    ------
    InvalidInputError
        On a PSA that is negative or not a number, or an unknown tracer.

    Examples
    --------
    >>> [detection_rate(p).rate_text for p in (0.49, 0.5, 0.99, 1.0, 4.99, 5.0)]
    ['38 %', '57 %', '57 %', '84 %', '86 %', '97 %']
    >>> detection_rate(0.3, "Pylarify").rate_text
    '59-66 %'
    """
    psa = _number("psa_ng_ml (PSA at PET, ng/mL)", psa_ng_ml, 0.0, _PSA_MAX_NG_ML, low_open=False)
    name = get_tracer(tracer).name
    if name == "18F-DCFPyL":
        return DetectionRate(
            psa_ng_ml=psa,
            tracer=name,
            data_tracer=name,
            band="all PSA levels in CONDOR (median 0.8, range 0.2-98.4 ng/mL)",
            rate_low_pct=59.0,
            rate_high_pct=66.0,
            n_patients=208,
            reference="morris2021_condor",
            by_psa=False,
            note="correct localisation rate 84.8-87.0 %; no PSA-band rates read",
        )
    if name == "18F-rhPSMA-7.3":
        return DetectionRate(
            psa_ng_ml=psa,
            tracer=name,
            data_tracer=name,
            band="all PSA levels in SPOTLIGHT (median 1.10, range 0.03-135 ng/mL)",
            rate_low_pct=83.0,
            rate_high_pct=83.0,
            n_patients=389,
            reference="jani2023_spotlight",
            by_psa=False,
            note="majority read; no PSA-band rates read",
        )
    return _fendler(psa, name)


# ---------------------------------------------------------------------------- stage meaning
_STAGE_RE = re.compile(r"^(?:(T0|Tr))?(?:(N0|N1))?(?:(M0|M1[abc]?))?$")


def _stage_parts(stage_string: str) -> tuple[str, str, str]:
    """``(t, n, m)`` of a UCLA-form stage (``"TrN1M0"``, ``"T0N1M1b"``, ``"N1M0"``, ``"M1"``)."""
    text = stage_string.strip() if isinstance(stage_string, str) else ""
    m = _STAGE_RE.match(text)
    if not text or m is None or not any(m.groups()):
        raise InvalidInputError(
            f"stage {stage_string!r} is not a PSMA PET stage; expected e.g. 'T0N0M0', "
            "'TrN0M0', 'T0N1M0', 'TrN1M1b' (or the UCLA groups 'N1M0', 'M1')"
        )
    t, n, mm = m.groups()
    return t or "", n or "", mm or ""


def _ucla_group(t: str, n: str, m: str) -> str:
    if m.startswith("M1"):
        return "M1"
    if n == "N1":
        return "N1M0"
    return "TrN0M0" if t == "Tr" else "T0N0M0"


def _tracer_note(rate: DetectionRate, psa: float) -> str:
    """A sentence on the tracer's own figure when the PSA band is another tracer's."""
    own = detection_rate(psa, rate.tracer)
    if own.by_psa:
        return (
            f"No detection-rate data for {rate.tracer} are in rtplan's references; the "
            f"{rate.data_tracer} figure is shown."
        )
    return (
        f"For {own.tracer}, the detection rate over {own.band} was {own.rate_text} "
        f"({short(own.reference)}); no PSA-band rates for it are in rtplan's references, so "
        f"the {rate.data_tracer} band is shown."
    )


def scan_meaning(
    stage_string: str, context: ClinicalContext, tracer: str = "68Ga-PSMA-11"
) -> list[str]:
    """Plain sentences on what the PSMA PET result means at the patient's PSA.

    Parameters
    ----------
    stage_string : str
        UCLA-form stage, e.g. ``"T0N0M0"`` (``rtplan.staging.Stage.string``).
    context : ClinicalContext
        The clinical inputs; without a PSA only that fact is stated.
    tracer : str
        The PET tracer.

    Returns
    -------
    list of str
        Sentences for the report, each citing its source; published figures only.

    Raises
    ------
    InvalidInputError
        On a stage string that is not a PSMA PET stage, or an unknown tracer.
    """
    t, n, m = _stage_parts(stage_string)
    name = get_tracer(tracer).name
    psa = context.psa_ng_ml
    if psa is None:
        return [
            "PSA at PET not given: the PSMA PET detection rate at this patient's PSA cannot "
            "be stated."
        ]
    band = _fendler(psa, name)
    at = f"the detection rate at this PSA is {band.text}"
    negative = _ucla_group(t, n, m) == "T0N0M0"
    out = []
    if negative:
        out.append(
            f"A negative PSMA PET ({stage_string}) at PSA {psa:g} ng/mL does not exclude "
            f"nodal disease: {at}."
        )
    else:
        out.append(f"PSMA PET was positive ({stage_string}) at PSA {psa:g} ng/mL; {at}.")
        if n == "N0":
            out.append(
                "No PSMA-positive node was seen; at this PSA that does not exclude nodal disease."
            )
        out.append(
            f"Per-patient positive predictive value 0.84 against histopathology "
            f"({short('fendler2019')}, 68Ga-PSMA-11)."
        )
    if name != band.data_tracer:
        out.append(_tracer_note(band, psa))
    return out


def subgroup_lines(stage_string: str, context: ClinicalContext) -> list[str]:
    """Evidence lines of the published subgroups the stage and PSA place the patient in.

    * UCLA 5-year PSMA-guided SRT series (@nikitas2026_ucla): the stage group's share,
      and the group's published PFS or adjusted hazard ratios.
    * PSA >= 0.3 ng/mL: the subgroup of the phase 2 trial of PSMA PET-guided SRT
      intensification (NCT03525288, @belliveau2025_psmaisrt) with FFS HR 0.17.
    * N0M0 on PET with PSA 0.1-2.0 ng/mL and no given pathology outside pT2-pT3, pN0/pNx:
      the SPPORT eligibility and its interim 5-year FFP per arm (@pollack2019_spport_interim).

    These restate published figures for the group; they are not a prediction for the
    patient.

    Raises
    ------
    InvalidInputError
        On a stage string that is not a PSMA PET stage.

    Examples
    --------
    >>> lines = subgroup_lines("TrN0M0", ClinicalContext(psa_ng_ml=0.5))
    >>> "aHR 0.12" in lines[0], "HR 0.17" in lines[1]
    (True, True)
    """
    t, n, m = _stage_parts(stage_string)
    group = _ucla_group(t, n, m)
    psa = context.psa_ng_ml
    ucla = short("nikitas2026_ucla")
    share = {
        "T0N0M0": "40.7 % (n = 46)",
        "TrN0M0": "16.8 % (n = 19)",
        "N1M0": "28.3 % (n = 32)",
        "M1": "14.2 % (n = 16)",
    }[group]
    finding = {
        "T0N0M0": "2-/5-year PFS 78.3 % / 62.4 %; whole-pelvis RT did not improve PFS in T0N0M0",
        "TrN0M0": "whole-pelvis RT improved PFS in TrN0M0 (aHR 0.12, P = .035)",
        "N1M0": "ADT improved PFS in N1/M1 (aHR 0.37)",
        "M1": "ADT improved PFS in N1/M1 (aHR 0.37)",
    }[group]
    line = (
        f"UCLA 5-year PSMA-guided SRT series ({ucla}; 113 patients after prostatectomy, "
        f"median PSA at PET 0.4 ng/mL): {group} was {share} of patients; {finding}."
    )
    if psa is not None:
        line += f" This patient's PSA at PET: {psa:g} ng/mL."
    out = [line]
    if psa is not None and psa >= 0.3:
        out.append(
            f"PSA >= 0.3 ng/mL: in the randomised phase 2 trial of PSMA PET-guided SRT "
            f"intensification (NCT03525288, 18F-DCFPyL; {short('belliveau2025_psmaisrt')}), "
            "failure-free survival in the PSA >= 0.3 ng/mL subgroup favoured PSMA-guided "
            "intensification (HR 0.17, 95 % CI 0.04-0.79)."
        )
    spport = _spport_line(n, m, context)
    if spport:
        out.append(spport)
    return out


def _spport_line(n: str, m: str, context: ClinicalContext) -> str:
    """The SPPORT line when nothing given falls outside its eligibility, else ``""``."""
    psa = context.psa_ng_ml
    if psa is None or not 0.1 <= psa <= 2.0 or n == "N1" or m.startswith("M1"):
        return ""
    pt, pn = context.pathological_t, context.pathological_n
    if pt is not None and not pt.startswith(("pT2", "pT3")):
        return ""
    if pn == "pN1":
        return ""
    given = ", ".join(v for v in (f"PSA {psa:g} ng/mL", pt, pn) if v)
    return (
        f"{given}: within the SPPORT (NRG/RTOG 0534) eligibility (PSA 0.1-2.0 ng/mL after "
        "prostatectomy, pT2-pT3, Gleason <= 9, N0/Nx; "
        f"{short('pollack2022_spport')}); interim 5-year freedom from progression 71.1 % "
        "(PBRT) / 82.7 % (PBRT + short-term ADT) / 89.1 % (pelvic nodes + PBRT + short-term "
        f"ADT) ({short('pollack2019_spport_interim')})."
    )
