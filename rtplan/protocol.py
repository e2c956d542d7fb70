"""Treatment protocols: every margin, border, prescription and constraint, read from TOML.

A protocol is data, not code: a physicist edits a TOML file to change a margin, a
border, a dose or a constraint, and every value in the file carries its source. rtplan
ships protocols in the ``rtplan.protocols`` package (see :func:`list_protocols`);
:func:`load_protocol` reads a shipped one by name or any file by path, and checks it
(:meth:`Protocol.validate`).

Shipped protocols:

* ``nrg_salvage`` -- conventional fractionation: prostate bed 66.6 Gy / 37, whole pelvis
  45 Gy / 25 then a sequential prostate-bed boost (SPPORT), PSMA-positive nodes 60 Gy as a
  SIB in the pelvic course, local recurrence 74 Gy, SBRT 30 Gy / 5 (nodes) and 21 Gy / 3
  (bone); RTOG 0534 / QUANTEC / NRG 2021 / TG-101 constraints.
* ``hypo_salvage`` -- 25 fractions: prostate bed 62.5 Gy (NRG-GU003 HYPORT) with the pelvis
  50 Gy as a SIB, nodes 60 Gy, local recurrence 65 Gy; NRG 2021 moderately hypofractionated
  constraints.

Protocol file format
--------------------
A protocol is a TOML file with these tables (``[...]``) and keys; units are in the key
names (``_mm``, ``_gy``)::

    [protocol]                      # name, title, description, version, disclaimer
    name = "nrg_salvage"
    title = "Conventional salvage RT after prostatectomy (RTOG/NRG based)"

    [ctv.prostate_bed]              # RTOG 2010 (Michalski) borders
    source = "Michalski et al., IJROBP 2010;76:361"
    inferior_below_vua_mm = 10      # every key of the table takes the table's source
    lateral_halfwidth_mm = { value = 25, source = "tool default: ..." }  # or its own

    [ptv.pelvic_nodes]              # a PTV margin: `uniform`, or all six directions
    uniform = 7
    source = "tool default: upper end of 5-7 mm [U]"

    [ptv.prostate_bed]
    right = 7
    left = 7
    anterior = 7
    posterior = 5
    superior = 7
    inferior = 7
    source = "..."

    [prescription.prostate_bed]     # total dose (Gy) and fractions of a dose level
    dose_gy = 66.6
    fractions = 37
    source = "..."

    [[constraints]]                 # one table per OAR constraint
    structure = "Rectum"
    metric = "V65Gy"
    op = "<="
    limit = 35
    unit = "%"
    applies_to = "conventional"     # "conventional", "sbrt" or "all"
    source = "RTOG 0534 (SPPORT)"

**Sources.** Every value has a source: either the ``source`` key of its table, which
applies to all keys of that table, or an inline table ``{ value = ..., source = "..." }``
that overrides it for one key (an optional ``note`` is allowed in both places). A value
rtplan chose, with no guideline behind the exact number, has a source beginning with
``"tool default"`` (say which published value is nearest); :attr:`Protocol.tool_defaults`
lists them. Only ``[protocol]`` needs no source.

**Tables.**

``[ctv.prostate_bed]`` (RTOG 2010, Michalski): ``inferior_below_vua_mm``,
``superior_reference`` (``"vas_deferens"``: the ``VasDeferens_CutEnd`` landmark when the
anatomy has it, else the symphysis rule; or ``"pubic_symphysis"``),
``superior_above_symphysis_mm``, ``bladder_wall_band_mm`` (posterior bladder wall kept in
the CTV; the rest of the bladder is cropped), ``lateral_halfwidth_mm`` (half-width from
the midline standing in for the sacrorectogenitopubic fascia above the symphysis, and the
widest the CTV gets below it), ``lateral_above_symphysis``
(``"fascia"`` or ``"obturator_internus"``), ``mesorectal_offset_mm`` (posterior border
above the symphysis, mm anterior of the rectum's anterior surface), ``smoothing_mm``.

``[ctv.pelvic_nodes]`` (RTOG 2009, Lawton): ``vessel_margin_mm`` (in-plane, radial),
``superior_border`` (landmark ``"L5S1_Interspace"``; the NRG 2021 variant
``"L4L5_Interspace"`` or ``"AorticBifurcation"``), ``inferior_border``
(``"PubicSymphysis_Top"``), ``external_iliac_inferior`` (``"FemurHead_Top"``),
``presacral_depth_mm``, ``presacral_vertebrae`` (list of structures, e.g. VB_S1-VB_S3),
``presacral_halfwidth_mm`` (lateral limit of the presacral strip from the midline),
``obturator_strip_width_mm``, ``external_iliac_anterolateral_mm`` (Taylor's extra
anterolateral strip; 0 = off), ``crop_bone_mm``, ``crop_bowel_mm``, ``crop_bladder_mm``,
``crop_rectum_mm``, ``crop_muscle_mm``, ``smoothing_mm``.

``[ctv.local_boost]``, ``[ctv.node_boost]``, ``[ctv.sbrt]``: ``gtv_margin_mm``
(GTV -> CTV, uniform).

``[ptv.prostate_bed]``, ``[ptv.pelvic_nodes]``, ``[ptv.local_boost]``,
``[ptv.node_boost]``, ``[ptv.sbrt]``: CTV -> PTV margin in mm, ``uniform`` or all of
``right``, ``left``, ``anterior``, ``posterior``, ``superior``, ``inferior``.
``[ptv.evaluation]``: ``crop_from_body_mm`` (evaluation PTVs end this far inside Body).

``[prescription.prostate_bed]``, ``[prescription.pelvic_nodes]``,
``[prescription.sbrt_bone]``, ``[prescription.sbrt_node]``: ``dose_gy``, ``fractions``.
``[prescription.local_boost]``, ``[prescription.node_boost]``: ``dose_gy`` (total dose of
the boost; it is given as a simultaneous integrated boost in the course it joins).

``[technique]``: ``pelvic`` (``"imrt"`` or ``"3dcrt"``), ``wprt_mode``
(``"sequential"``: pelvic course then a prostate-bed boost course, as in SPPORT; or
``"sib"``: one course, the prostate bed and pelvis in the same fractions), and optionally
``boost_spare_organs`` (list of structures: boost PTVs minus these organs, the part taken
away planned at the course's lowest level; an organ the anatomy lacks is warned about).

``[staging]`` (optional): ``max_oligo_lesions`` (most distant lesions still called
oligometastatic; default 3, STOMP / ORIOLE) and ``min_mipsma_score`` (lowest miPSMA
expression score that counts, 0-3; default 2, PROMISE V2).

``[alpha_beta]``: ``<tissue> = <alpha/beta in Gy>``. ``[ntcp.<Structure>]``: ``model``
(``"lkb"``), ``parameter_set``, ``td50_gy``, ``m``, ``n``, ``endpoint``.

``[[constraints]]``: ``structure`` (a TG-263 name or a synonym rtplan knows, a target
name such as ``PTV_6660``, ``<OAR>_PRV<mm>``, or ``<OAR>-CTV``: the organ minus the
option's CTVs; a misspelt name is refused with the closest known names), ``metric``,
``op`` (``<``, ``<=``, ``>``, ``>=``), ``limit``, ``unit``, ``source``, optional
``applies_to`` (``"conventional"``, ``"sbrt"``, ``"all"``; default ``"all"``),
``fractions`` (SBRT tables per fraction number) and ``note``.

Metric strings
--------------
Constraints use the metric syntax of :func:`rtplan.dvh.parse_metric`:

==================  ===============================================  ==================
metric              meaning                                          ``unit``
==================  ===============================================  ==================
``V65Gy``           volume receiving at least 65 Gy                  ``%`` or ``cc``
``V95%Rx``          volume receiving at least 95 % of prescription   ``%`` or ``cc``
``D0.035cc``        minimum dose to the hottest 0.035 cc             ``Gy`` or ``%Rx``
``D95%``            minimum dose to the hottest 95 % of the volume   ``Gy`` or ``%Rx``
``Dmax``            near-maximum dose (D0.03cc in :mod:`rtplan.dvh`)  ``Gy`` or ``%Rx``
``Dmean``, ``Dmin`` mean and minimum dose                            ``Gy`` or ``%Rx``
==================  ===============================================  ==================

Doses in metrics are in Gy (decimals allowed: ``V46.5Gy``).

Examples
--------
>>> from rtplan.protocol import load_protocol, list_protocols
>>> "nrg_salvage" in list_protocols()
True
>>> p = load_protocol("nrg_salvage")
>>> p.value("ctv.pelvic_nodes.vessel_margin_mm")
7.0
>>> p.source("ctv.pelvic_nodes.vessel_margin_mm")[:17]
'RTOG consensus, L'
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeGuard

from rtplan.dvh import Constraint, LKBParameters
from rtplan.errors import ProtocolError
from rtplan.margins import Margin
from rtplan.structures import TG263_SYNONYMS, canonical_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "NtcpModel",
    "Prescription",
    "Protocol",
    "ProtocolConstraint",
    "ProtocolValue",
    "list_protocols",
    "load_protocol",
    "protocol_text",
]

_OPS = ("<", "<=", ">", ">=")
_UNITS = ("%", "cc", "Gy", "%Rx")
_APPLIES = ("conventional", "sbrt", "all")
_TOOL_DEFAULT = "tool default"
_MAX_MARGIN_MM = 50.0
_MAX_DOSE_GY = 120.0
#: Most fractions of a course (tool default): above every regimen rtplan's sources use (at
#: most 44 conventional fractions) and hyperfractionated schedules of two a day.
_MAX_FRACTIONS = 100
#: Deepest nesting of tables and arrays a protocol file may have (tool default; the format
#: needs 4: ``[ntcp.Rectum]`` with an inline ``{ value = ..., source = ... }`` table).
_MAX_DEPTH = 16

#: TG-263 names a constraint may name besides those of
#: :data:`rtplan.structures.TG263_SYNONYMS` (and their synonyms): the pelvic entries of
#: the TG-263 to SNOMED concept map @hl7_mcode_tg263 [V] (CLINICAL.md section 8).
_MORE_TG263_NAMES = (
    "Bladder_Wall",
    "Rectal_Wall",
    "Anus",
    "Bowel_Large",
    "Spc_Bowel_Small",
    "Femur_Joint_L",
    "Femur_Joint_R",
    "Femurs",
    "Penis",
    "SeminalVes_Prox",
    "SeminalVes_Dist",
    "Acetabulum_L",
    "Acetabulum_R",
    "VB_S4",
    "VB_S5",
    "SacralPlex",
    "BoneMarrow",
    "External",
    "Skin",
    "A_Femoral_L",
    "A_Femoral_R",
    "LN_Iliac_L",
    "LN_Iliac_R",
    "LN_Iliac_Ext_L",
    "LN_Iliac_Ext_R",
    "LN_Iliac_Int_L",
    "LN_Iliac_Int_R",
    "LN_Obturator_L",
    "LN_Obturator_R",
    "LN_Presacral_L",
    "LN_Presacral_R",
    "LN_Pelvics",
    "LN_Pelvic_L",
    "LN_Pelvic_R",
    "LN_Inguinofem_L",
    "LN_Inguinofem_R",
    "LN_Paraaortic",
)
#: A TG-263 target name (AAPM Report 263 section 8.2 @mayo2018_tg263): a target type, then
#: optional parts; or an organ at risk's planning risk volume, ``<OAR>_PRV<mm>``.
_TARGET_NAME = re.compile(r"^(GTV|CTV|ITV|PTV)([_!^.0-9A-Za-z-]*)$")
_PRV_NAME = re.compile(r"^(?P<organ>.+)_PRV\d{0,2}$")
#: An organ minus the option's CTVs, ``"Bladder-CTV"``, as :mod:`rtplan.compare` evaluates it.
_MINUS_CTV_NAME = re.compile(r"^\s*(?P<organ>.+?)\s*-\s*CTV\s*$", re.IGNORECASE)

#: A checked protocol value: a number (mm, Gy or a positive factor; float), a number of
#: fractions (int), a string or choice (str), or a list of structure names (tuple of str).
ProtocolValue = float | int | str | tuple[str, ...]


# ---------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class _Field:
    kind: str  # "mm", "gy", "positive", "fractions", "str", "choice", "str_list"
    required: bool = True
    choices: tuple[str, ...] = ()


def _mm(required: bool = True) -> _Field:
    return _Field("mm", required)


_CTV_BOOST = {"gtv_margin_mm": _mm()}
_DIRECTIONS = ("right", "left", "anterior", "posterior", "superior", "inferior")
_PTV = {d: _mm(False) for d in ("uniform", *_DIRECTIONS)}
_RX_FULL = {"dose_gy": _Field("gy"), "fractions": _Field("fractions")}
_RX_BOOST = {"dose_gy": _Field("gy")}

#: section path -> {key: field}. Sections absent from a file are reported as missing.
_SCHEMA: dict[str, dict[str, _Field]] = {
    "protocol": {
        "name": _Field("str"),
        "title": _Field("str"),
        "description": _Field("str", False),
        "version": _Field("str", False),
        "disclaimer": _Field("str", False),
    },
    "ctv.prostate_bed": {
        "inferior_below_vua_mm": _mm(),
        "superior_reference": _Field("choice", True, ("vas_deferens", "pubic_symphysis")),
        "superior_above_symphysis_mm": _mm(),
        "bladder_wall_band_mm": _mm(),
        "lateral_halfwidth_mm": _mm(),
        "lateral_above_symphysis": _Field("choice", False, ("fascia", "obturator_internus")),
        "mesorectal_offset_mm": _mm(),
        "smoothing_mm": _mm(False),
        "lateral_cap_mm": _mm(False),
    },
    "ctv.pelvic_nodes": {
        "vessel_margin_mm": _mm(),
        "superior_border": _Field(
            "choice", True, ("L5S1_Interspace", "L4L5_Interspace", "AorticBifurcation")
        ),
        "inferior_border": _Field("choice", True, ("PubicSymphysis_Top",)),
        "external_iliac_inferior": _Field("choice", True, ("FemurHead_Top",)),
        "presacral_depth_mm": _mm(),
        "presacral_vertebrae": _Field("str_list"),
        "presacral_halfwidth_mm": _mm(False),
        "obturator_strip_width_mm": _mm(),
        "external_iliac_anterolateral_mm": _mm(False),
        "crop_bone_mm": _mm(),
        "crop_bowel_mm": _mm(),
        "crop_bladder_mm": _mm(),
        "crop_rectum_mm": _mm(),
        "crop_muscle_mm": _mm(),
        "smoothing_mm": _mm(False),
    },
    "ctv.local_boost": _CTV_BOOST,
    "ctv.node_boost": _CTV_BOOST,
    "ctv.sbrt": _CTV_BOOST,
    "ptv.prostate_bed": _PTV,
    "ptv.pelvic_nodes": _PTV,
    "ptv.local_boost": _PTV,
    "ptv.node_boost": _PTV,
    "ptv.sbrt": _PTV,
    "ptv.evaluation": {"crop_from_body_mm": _mm()},
    "prescription.prostate_bed": _RX_FULL,
    "prescription.pelvic_nodes": _RX_FULL,
    "prescription.local_boost": _RX_BOOST,
    "prescription.node_boost": _RX_BOOST,
    "prescription.sbrt_bone": _RX_FULL,
    "prescription.sbrt_node": _RX_FULL,
    "technique": {
        "pelvic": _Field("choice", True, ("imrt", "3dcrt")),
        "wprt_mode": _Field("choice", True, ("sequential", "sib")),
        "boost_spare_organs": _Field("str_list", False),
    },
    "staging": {
        "max_oligo_lesions": _Field("count", False),
        "min_mipsma_score": _Field("score", False),
    },
}
#: Sections a protocol may leave out (their values then take the staging module's defaults).
_OPTIONAL_SECTIONS = ("staging",)
_GROUPS = ("ctv", "ptv", "prescription")
_TOP_LEVEL = (
    "protocol",
    *_GROUPS,
    "technique",
    "staging",
    "alpha_beta",
    "ntcp",
    "constraints",
)
_META = ("source", "note")
_NTCP_FIELDS = {
    "model": _Field("choice", True, ("lkb",)),
    "parameter_set": _Field("str"),
    "td50_gy": _Field("gy"),
    "m": _Field("positive"),
    "n": _Field("positive"),
    "endpoint": _Field("str", False),
    "alpha_beta_gy": _Field("positive", False),
    "caveat": _Field("str", False),
}
_CONSTRAINT_KEYS = (
    "structure",
    "metric",
    "op",
    "limit",
    "unit",
    "source",
    "applies_to",
    "fractions",
    "note",
)


# ---------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Prescription:
    """A dose level of a protocol.

    Parameters
    ----------
    dose_gy : float
        Total dose in Gy.
    fractions : int or None
        Number of fractions; ``None`` for a boost given in the fractions of its course.
    source : str
        Where the numbers come from.
    """

    dose_gy: float
    fractions: int | None
    source: str

    @property
    def dose_per_fraction_gy(self) -> float | None:
        """Dose per fraction in Gy, or ``None`` without a fraction number."""
        return None if self.fractions is None else self.dose_gy / self.fractions

    @property
    def dose_cgy(self) -> int:
        """Total dose in cGy, rounded (the TG-263 name suffix)."""
        return round(self.dose_gy * 100)


@dataclass(frozen=True)
class ProtocolConstraint(Constraint):
    """An OAR dose-volume constraint of a protocol, with the course it is meant for.

    A :class:`rtplan.dvh.Constraint`, so :func:`rtplan.dvh.evaluate_constraint` takes it.

    Parameters
    ----------
    structure, metric, op, limit, unit, source
        As :class:`rtplan.dvh.Constraint` (``"Rectum"``, ``"V65Gy"``, ``"<="``, ``35``,
        ``"%"``, ``"RTOG 0534"``).
    applies_to : {"conventional", "sbrt", "all"}
        Which courses the constraint is meant for.
    fractions : int or None
        For fraction-specific tables (TG-101): the number of fractions it is for.
    note : str
        Free text (e.g. the surrogate structure used).
    """

    applies_to: str = "all"
    fractions: int | None = None
    note: str = ""

    @property
    def text(self) -> str:
        """The limit as text, e.g. ``"<= 35 %"``."""
        return f"{self.op} {self.limit:g} {self.unit}"


@dataclass(frozen=True)
class NtcpModel:
    """An NTCP model choice for one structure (Lyman-Kutcher-Burman parameters).

    Parameters
    ----------
    structure : str
        TG-263 structure name.
    model : str
        ``"lkb"``.
    parameter_set : str
        Name of the parameter set, e.g. ``"QUANTEC rectum grade>=2"``.
    td50_gy, m, n : float
        LKB parameters: dose for 50 % complication (Gy, EQD2), slope, volume exponent.
    endpoint : str
        Clinical endpoint.
    source : str
        Source of the parameters.
    alpha_beta_gy : float
        alpha/beta (Gy) for converting the dose to EQD2 before the model.
    caveat : str
        Known weaknesses of the parameter set.
    """

    structure: str
    model: str
    parameter_set: str
    td50_gy: float
    m: float
    n: float
    endpoint: str
    source: str
    alpha_beta_gy: float = 3.0
    caveat: str = ""

    def to_lkb(self) -> LKBParameters:
        """The parameters as :class:`rtplan.dvh.LKBParameters` for :func:`rtplan.dvh.lkb_ntcp`."""
        return LKBParameters(
            self.td50_gy,
            self.m,
            self.n,
            self.endpoint,
            self.source,
            alpha_beta_gy=self.alpha_beta_gy,
            caveat=self.caveat,
        )


# ---------------------------------------------------------------------------- checks
def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_field(path: str, value: object, field: _Field) -> ProtocolValue:
    """Return the checked value of one leaf, or raise ProtocolError naming ``path``."""
    kind = field.kind
    if kind in ("mm", "gy", "positive"):
        if not _is_number(value):
            raise ProtocolError(f"{path}: expected a number, got {value!r}")
        v = float(value)
        if kind == "mm" and not 0 <= v <= _MAX_MARGIN_MM:
            raise ProtocolError(
                f"{path}: a margin or distance must be between 0 and {_MAX_MARGIN_MM:g} mm, "
                f"got {v:g}"
            )
        if kind == "gy" and not 0 < v <= _MAX_DOSE_GY:
            raise ProtocolError(f"{path}: a dose must be in (0, {_MAX_DOSE_GY:g}] Gy, got {v:g}")
        if kind == "positive" and not v > 0:
            raise ProtocolError(f"{path}: expected a positive number, got {v:g}")
        return v
    if kind == "fractions":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProtocolError(f"{path}: expected a positive whole number, got {value!r}")
        if value > _MAX_FRACTIONS:
            raise ProtocolError(
                f"{path}: a number of fractions must be between 1 and {_MAX_FRACTIONS} "
                f"(tool default), got {value}"
            )
        return int(value)
    if kind in ("count", "score"):
        high = 3 if kind == "score" else _MAX_FRACTIONS
        low = 0 if kind == "score" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ProtocolError(f"{path}: expected a whole number in {low}-{high}, got {value!r}")
        return int(value)
    if kind == "str":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ProtocolError(f"{path}: expected a non-empty string, got {value!r}")
        return value
    if kind == "choice":
        if not isinstance(value, str) or value not in field.choices:
            raise ProtocolError(
                f"{path}: expected one of {', '.join(map(repr, field.choices))}, got {value!r}"
            )
        return value
    if kind == "str_list":
        names = [s for s in value if isinstance(s, str) and s] if isinstance(value, list) else []
        if not names or not isinstance(value, list) or len(names) != len(value):
            raise ProtocolError(f"{path}: expected a non-empty list of strings, got {value!r}")
        return tuple(names)
    raise AssertionError(kind)  # pragma: no cover


def _as_float(path: str, value: ProtocolValue) -> float:
    """A checked value that must be a number, as float (raise naming ``path`` otherwise)."""
    if not _is_number(value):
        raise ProtocolError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _as_int(path: str, value: ProtocolValue) -> int:
    """A checked value that must be a whole number (a number of fractions)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{path}: expected a whole number, got {value!r}")
    return value


def _as_str(path: str, value: ProtocolValue) -> str:
    """A checked value that must be a string (a name or a choice)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{path}: expected a string, got {value!r}")
    return value


def _source_of(path: str, section: Mapping[str, object]) -> str | None:
    src = section.get("source")
    if src is None:
        return None
    if not isinstance(src, str) or not src.strip():
        raise ProtocolError(f"{path}.source: expected a non-empty string, got {src!r}")
    return src


def _check_section(
    path: str,
    section: object,
    fields: Mapping[str, _Field],
    values: dict[str, ProtocolValue],
    sources: dict[str, str],
    *,
    needs_source: bool = True,
) -> None:
    if not isinstance(section, Mapping):
        raise ProtocolError(f"{path}: expected a table, got {section!r}")
    for key in section:
        if key not in fields and key not in _META:
            raise ProtocolError(
                f"unknown key {path}.{key} (valid keys: {', '.join([*fields, *_META])})"
            )
    if "note" in section and not isinstance(section["note"], str):
        raise ProtocolError(f"{path}.note: expected a string")
    table_source = _source_of(path, section)
    for key, field in fields.items():
        leaf = f"{path}.{key}"
        if key not in section:
            if field.required:
                what = "dose" if field.kind == "gy" else "value"
                raise ProtocolError(f"missing {what}: {leaf} is required")
            continue
        raw = section[key]
        source = table_source
        if isinstance(raw, Mapping):
            for k in raw:
                if k not in ("value", *_META):
                    raise ProtocolError(f"unknown key {leaf}.{k} (valid keys: value, source, note)")
            if "value" not in raw:
                raise ProtocolError(f"missing value: {leaf}.value is required in an inline table")
            source = _source_of(leaf, raw) or table_source
            raw = raw["value"]
        values[leaf] = _check_field(leaf, raw, field)
        if source is None and needs_source:
            raise ProtocolError(
                f"{leaf}: no source; give [{path}] a `source` or write "
                f'{key} = {{ value = ..., source = "..." }} (start with "tool default" for a '
                "value rtplan chose)"
            )
        if source is not None:
            sources[leaf] = source


def _get(data: Mapping[str, object], dotted: str) -> object:
    node: object = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _known_structure_names() -> list[str]:
    """The TG-263 names a constraint may name (synonyms aside), for suggestions."""
    return sorted({*TG263_SYNONYMS, *_MORE_TG263_NAMES})


def _is_known_structure(name: str) -> bool:
    """True for a name a constraint may carry.

    A TG-263 name or a synonym rtplan knows, a target name, or a name derived from a known
    one (``<OAR>_PRV<mm>``, ``<OAR>-CTV``).
    """
    if canonical_name(name) is not None or name in _MORE_TG263_NAMES:
        return True
    if _TARGET_NAME.match(name):
        return True
    derived = _PRV_NAME.match(name) or _MINUS_CTV_NAME.match(name)
    return derived is not None and _is_known_structure(derived.group("organ"))


def _check_structure_name(path: str, name: str) -> str:
    """``name``, or an error naming ``path`` and suggesting the closest known name.

    A constraint on a name no structure set carries would never be evaluated, so it is
    refused here rather than silently dropped at plan time.
    """
    if _is_known_structure(name):
        return name
    close = difflib.get_close_matches(name, _known_structure_names(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ProtocolError(
        f"{path}: unknown structure {name!r} (not a TG-263 name, a synonym rtplan knows, a "
        f"target name, or <OAR>_PRV<mm> or <OAR>-CTV of a known one){hint}"
    )


def _check_constraint(n: int, c: object) -> ProtocolConstraint:
    """Check the ``n``-th ``[[constraints]]`` table and build its constraint."""
    path = f"constraints[{n}]"
    if not isinstance(c, Mapping):
        raise ProtocolError(f"{path}: expected a table, got {c!r}")
    for key in c:
        if key not in _CONSTRAINT_KEYS:
            raise ProtocolError(
                f"unknown key {path}.{key} (valid keys: {', '.join(_CONSTRAINT_KEYS)})"
            )
    for key in ("structure", "metric", "op", "limit", "unit", "source"):
        if key not in c:
            raise ProtocolError(f"missing value: {path}.{key} is required")

    def text(key: str, field: _Field, value: object) -> str:
        return _as_str(f"{path}.{key}", _check_field(f"{path}.{key}", value, field))

    structure = text("structure", _Field("str"), c["structure"])
    metric = c["metric"]
    path = f"constraints[{n}] ({structure} {metric})"
    _check_structure_name(f"{path}.structure", structure)
    if not isinstance(metric, str):
        raise ProtocolError(f"{path}.metric: expected a string, got {metric!r}")
    op = text("op", _Field("choice", True, _OPS), c["op"])
    limit = c["limit"]
    if not _is_number(limit) or limit < 0:
        raise ProtocolError(f"{path}.limit: expected a number >= 0, got {limit!r}")
    unit = text("unit", _Field("choice", True, _UNITS), c["unit"])
    if unit == "%" and limit > 100:
        raise ProtocolError(f"{path}.limit: a percentage must be <= 100")
    source = text("source", _Field("str"), c["source"])
    applies = text("applies_to", _Field("choice", True, _APPLIES), c.get("applies_to", "all"))
    fx = c.get("fractions")
    fractions = None
    if fx is not None:
        fractions = _as_int(
            f"{path}.fractions", _check_field(f"{path}.fractions", fx, _Field("fractions"))
        )
    note = c.get("note", "")
    if not isinstance(note, str):
        raise ProtocolError(f"{path}.note: expected a string")
    try:
        return ProtocolConstraint(
            structure,
            metric,
            op,
            float(limit),
            unit,
            source,
            applies_to=applies,
            fractions=fractions,
            note=note,
        )
    except ValueError as exc:
        raise ProtocolError(f"{path}.metric/unit: {exc}") from None


# ---------------------------------------------------------------------------- Protocol
class Protocol:
    """A treatment protocol: margins, borders, prescriptions, constraints, with sources.

    Build one with :func:`load_protocol`; the constructor takes the parsed TOML mapping.
    Values are looked up by dotted key path (``"ptv.prostate_bed.posterior"``).

    Parameters
    ----------
    data : mapping
        The parsed TOML document (see the module docstring for its format).
    name : str, optional
        Name to show; default ``data["protocol"]["name"]``.
    path : str, optional
        File the protocol was read from, for messages.

    Notes
    -----
    The protocol is checked on construction (:meth:`validate`); it is immutable
    afterwards (:meth:`with_values` returns a modified copy).
    """

    def __init__(
        self,
        data: Mapping[str, Any],  # the parsed TOML document: any TOML value until checked
        *,
        name: str | None = None,
        path: str | None = None,
    ) -> None:
        where = f" in {path}" if path else ""
        _check_depth(data, where)
        self._data: dict[str, Any] = copy.deepcopy(dict(data))  # TOML document, as read
        self.path = path
        self._values: dict[str, ProtocolValue] = {}
        self._sources: dict[str, str] = {}
        self._constraints: tuple[ProtocolConstraint, ...] = ()
        self._ntcp: dict[str, NtcpModel] = {}
        self.validate()
        self.name: str = name or _as_str("protocol.name", self._values["protocol.name"])

    # -------------------------------------------------------------- validation
    def validate(self) -> Protocol:
        """Check the whole protocol; return it, or raise naming the first bad key.

        Checks: unknown keys, missing sections and values (doses), types, ranges
        (margins 0-50 mm, doses in (0, 120] Gy, 1-100 fractions, tool defaults), a
        source for every value, constraint syntax, the structure names of constraints
        and NTCP models (a TG-263 name or a synonym rtplan knows, a target name, or
        ``<OAR>_PRV<mm>`` / ``<OAR>-CTV``; an unknown one is named with the closest known
        names), and the
        consistency of the fractionation.

        Raises
        ------
        ProtocolError
            Naming the key path, e.g. ``"margins ... ptv.pelvic_nodes.posterior"``.
        """
        where = f" in {self.path}" if self.path else ""
        try:
            self._validate()
        except ProtocolError as exc:
            raise ProtocolError(f"{exc}{where}") from None
        return self

    def _validate(self) -> None:
        data = self._data
        values: dict[str, ProtocolValue] = {}
        sources: dict[str, str] = {}
        for key in data:
            if key not in _TOP_LEVEL:
                raise ProtocolError(f"unknown key {key} (valid: {', '.join(_TOP_LEVEL)})")
        for group in _GROUPS:
            node = data.get(group, {})
            if not isinstance(node, Mapping):
                raise ProtocolError(f"{group}: expected a table, got {node!r}")
            valid = [s.split(".", 1)[1] for s in _SCHEMA if s.startswith(group + ".")]
            for key in node:
                if key not in valid:
                    raise ProtocolError(f"unknown key {group}.{key} (valid: {', '.join(valid)})")
        for section, fields in _SCHEMA.items():
            node = _get(data, section)
            if node is _MISSING:
                if section in _OPTIONAL_SECTIONS:
                    continue
                raise ProtocolError(f"missing table [{section}]")
            _check_section(
                section, node, fields, values, sources, needs_source=section != "protocol"
            )
            if section.startswith("ptv.") and section != "ptv.evaluation":
                self._check_ptv(section, values)
        self._check_alpha_beta(data.get("alpha_beta", {}), values, sources)
        self._ntcp = self._check_ntcp(data.get("ntcp", {}), values, sources)
        self._constraints = self._check_constraints(data.get("constraints", []))
        self._check_fractionation(values)
        self._values, self._sources = values, sources

    @staticmethod
    def _check_ptv(section: str, values: Mapping[str, ProtocolValue]) -> None:
        dirs = list(_DIRECTIONS)
        has = [d for d in dirs if f"{section}.{d}" in values]
        if f"{section}.uniform" in values:
            if has:
                raise ProtocolError(
                    f"{section}: give either `uniform` or the six directions, not both "
                    f"(found uniform and {', '.join(has)})"
                )
        elif len(has) != len(dirs):
            missing = [d for d in dirs if d not in has]
            raise ProtocolError(
                f"missing value: {section}.{missing[0]} is required (give `uniform` or all of "
                f"{', '.join(dirs)})"
            )

    @staticmethod
    def _check_alpha_beta(
        node: object, values: dict[str, ProtocolValue], sources: dict[str, str]
    ) -> None:
        if not isinstance(node, Mapping):
            raise ProtocolError(f"alpha_beta: expected a table, got {node!r}")
        fields = {k: _Field("positive") for k in node if k not in _META}
        _check_section("alpha_beta", node, fields, values, sources)

    @staticmethod
    def _check_ntcp(
        node: object, values: dict[str, ProtocolValue], sources: dict[str, str]
    ) -> dict[str, NtcpModel]:
        if not isinstance(node, Mapping):
            raise ProtocolError(f"ntcp: expected a table, got {node!r}")
        out = {}
        for structure, sec in node.items():
            path = f"ntcp.{structure}"
            _check_structure_name(path, structure)
            _check_section(path, sec, _NTCP_FIELDS, values, sources)
            out[structure] = NtcpModel(
                structure=structure,
                model=_as_str(f"{path}.model", values[f"{path}.model"]),
                parameter_set=_as_str(f"{path}.parameter_set", values[f"{path}.parameter_set"]),
                td50_gy=_as_float(f"{path}.td50_gy", values[f"{path}.td50_gy"]),
                m=_as_float(f"{path}.m", values[f"{path}.m"]),
                n=_as_float(f"{path}.n", values[f"{path}.n"]),
                endpoint=_as_str(f"{path}.endpoint", values.get(f"{path}.endpoint", "")),
                source=sources[f"{path}.td50_gy"],
                alpha_beta_gy=_as_float(
                    f"{path}.alpha_beta_gy", values.get(f"{path}.alpha_beta_gy", 3.0)
                ),
                caveat=_as_str(f"{path}.caveat", values.get(f"{path}.caveat", "")),
            )
        return out

    @staticmethod
    def _check_constraints(node: object) -> tuple[ProtocolConstraint, ...]:
        if not isinstance(node, list):
            raise ProtocolError(f"constraints: expected an array of tables, got {node!r}")
        return tuple(_check_constraint(n, c) for n, c in enumerate(node))

    @staticmethod
    def _check_fractionation(values: Mapping[str, ProtocolValue]) -> None:
        def dose(path: str) -> float:
            return _as_float(path, values[path])

        def fractions(path: str) -> int:
            return _as_int(path, values[path])

        pb_d = dose("prescription.prostate_bed.dose_gy")
        pb_n = fractions("prescription.prostate_bed.fractions")
        pn_d = dose("prescription.pelvic_nodes.dose_gy")
        pn_n = fractions("prescription.pelvic_nodes.fractions")
        mode = values["technique.wprt_mode"]
        if mode == "sequential" and not (pb_n > pn_n and pb_d > pn_d):
            raise ProtocolError(
                "prescription.pelvic_nodes: with technique.wprt_mode = 'sequential' the pelvic "
                f"course ({pn_d:g} Gy / {pn_n}) must have fewer fractions and less dose than "
                f"the prostate bed ({pb_d:g} Gy / {pb_n})"
            )
        if mode == "sib" and pb_n != pn_n:
            raise ProtocolError(
                "prescription.pelvic_nodes.fractions: with technique.wprt_mode = 'sib' it must "
                f"equal prescription.prostate_bed.fractions ({pb_n}), got {pn_n}"
            )
        if dose("prescription.local_boost.dose_gy") <= pb_d:
            raise ProtocolError(
                f"prescription.local_boost.dose_gy: must exceed the prostate-bed dose ({pb_d:g} Gy)"
            )
        nb = dose("prescription.node_boost.dose_gy")
        if nb <= pn_d:
            raise ProtocolError(
                f"prescription.node_boost.dose_gy: must exceed the pelvic dose ({pn_d:g} Gy)"
            )

    # -------------------------------------------------------------- access
    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        return f"Protocol({self.name!r}{where})"

    @property
    def title(self) -> str:
        """One-line title of the protocol."""
        return self.text("protocol.title")

    @property
    def data(self) -> dict[str, Any]:  # the TOML document: any TOML value
        """A deep copy of the parsed TOML document."""
        return copy.deepcopy(self._data)

    def keys(self) -> list[str]:
        """Dotted paths of all values (constraints excluded), in file order."""
        return list(self._values)

    def value(self, path: str) -> ProtocolValue:
        """The value at a dotted key path, e.g. ``"ctv.pelvic_nodes.vessel_margin_mm"``.

        Distances, doses and factors are floats, fraction numbers ints, names and choices
        strings, lists of structure names tuples of strings. :meth:`number`, :meth:`text`
        and :meth:`names` return one of these kinds, typed.

        Raises
        ------
        ProtocolError
            If the path is not a value of this protocol (absent optional keys included).
        """
        try:
            return self._values[path]
        except KeyError:
            raise ProtocolError(f"{self.name}: no value {path!r} in the protocol") from None

    def get(self, path: str, default: ProtocolValue | None = None) -> ProtocolValue | None:
        """The value at ``path``, or ``default`` when the (optional) key is absent."""
        return self._values.get(path, default)

    def number(self, path: str, default: float | None = None) -> float:
        """The number at ``path`` (mm, Gy, a factor or a fraction number) as a float.

        Parameters
        ----------
        path : str
            Dotted key path, e.g. ``"ctv.pelvic_nodes.vessel_margin_mm"``.
        default : float, optional
            Returned when the (optional) key is absent; without it an absent key raises.

        Raises
        ------
        ProtocolError
            If the key is absent (and no default is given) or its value is not a number.

        Examples
        --------
        >>> p = load_protocol("nrg_salvage")
        >>> p.number("ctv.pelvic_nodes.vessel_margin_mm"), p.number("ctv.no_such_mm", 0.0)
        (7.0, 0.0)
        """
        if default is not None and path not in self._values:
            return default
        return _as_float(path, self.value(path))

    def text(self, path: str, default: str | None = None) -> str:
        """The string (a name or a choice) at ``path``.

        Parameters
        ----------
        path : str
            Dotted key path, e.g. ``"technique.wprt_mode"``.
        default : str, optional
            Returned when the (optional) key is absent; without it an absent key raises.

        Raises
        ------
        ProtocolError
            If the key is absent (and no default is given) or its value is not a string.

        Examples
        --------
        >>> load_protocol("nrg_salvage").text("ctv.pelvic_nodes.superior_border")
        'L4L5_Interspace'
        """
        if default is not None and path not in self._values:
            return default
        return _as_str(path, self.value(path))

    def names(self, path: str) -> tuple[str, ...]:
        """The list of structure names at ``path``, e.g. ``"ctv.pelvic_nodes.presacral_vertebrae"``.

        Raises
        ------
        ProtocolError
            If the key is absent or its value is not a list of names.

        Examples
        --------
        >>> load_protocol("nrg_salvage").names("ctv.pelvic_nodes.presacral_vertebrae")
        ('VB_S1', 'VB_S2', 'VB_S3')
        """
        value = self.value(path)
        if not isinstance(value, tuple):
            raise ProtocolError(f"{path}: expected a list of names, got {value!r}")
        return value

    def source(self, path: str) -> str:
        """The source of the value at ``path`` (``""`` for [protocol] metadata)."""
        self.value(path)
        return self._sources.get(path, "")

    def is_tool_default(self, path: str) -> bool:
        """Whether the value at ``path`` is marked as a tool default."""
        return self.source(path).strip().lower().startswith(_TOOL_DEFAULT)

    @property
    def tool_defaults(self) -> list[str]:
        """Dotted paths of every value whose source is a tool default."""
        return [p for p in self._values if self.is_tool_default(p)]

    def rows(self) -> list[tuple[str, ProtocolValue, str]]:
        """``(path, value, source)`` for every value, for a report table."""
        return [(p, v, self._sources.get(p, "")) for p, v in self._values.items()]

    def section(self, section: str) -> dict[str, ProtocolValue]:
        """The values of one table, keyed by their short name (e.g. ``"ctv.pelvic_nodes"``)."""
        prefix = section + "."
        out = {p[len(prefix) :]: v for p, v in self._values.items() if p.startswith(prefix)}
        if not out:
            raise ProtocolError(f"{self.name}: no table [{section}] in the protocol")
        return out

    def ptv_margin(self, target: str) -> Margin:
        """The CTV -> PTV :class:`~rtplan.margins.Margin` of ``target`` (a ``[ptv.*]`` table)."""
        prefix = f"ptv.{target}"
        self.section(prefix)  # raises naming the table when it is absent
        if f"{prefix}.uniform" in self._values:
            return Margin.uniform(self.number(f"{prefix}.uniform"))
        return Margin(**{d: self.number(f"{prefix}.{d}") for d in _DIRECTIONS})

    def prescription(self, name: str) -> Prescription:
        """The dose level ``name`` (a ``[prescription.*]`` table)."""
        prefix = f"prescription.{name}"
        self.section(prefix)  # raises naming the table when it is absent
        fractions = self.get(f"{prefix}.fractions")
        return Prescription(
            dose_gy=self.number(f"{prefix}.dose_gy"),
            fractions=None if fractions is None else _as_int(f"{prefix}.fractions", fractions),
            source=self._sources[f"{prefix}.dose_gy"],
        )

    @property
    def constraints(self) -> tuple[ProtocolConstraint, ...]:
        """All OAR constraints, in file order."""
        return self._constraints

    def constraints_for(
        self, technique: str = "conventional", *, fractions: int | None = None
    ) -> list[ProtocolConstraint]:
        """Constraints meant for a kind of course.

        Parameters
        ----------
        technique : {"conventional", "sbrt"}
            ``"imrt"``/``"3dcrt"`` count as conventional.
        fractions : int, optional
            For SBRT: keep only fraction-specific constraints of this fraction number
            (and those without one).
        """
        kind = "sbrt" if technique == "sbrt" else "conventional"
        out = []
        for c in self._constraints:
            if c.applies_to not in (kind, "all"):
                continue
            if fractions is not None and c.fractions is not None and c.fractions != fractions:
                continue
            out.append(c)
        return out

    @property
    def ntcp_models(self) -> dict[str, NtcpModel]:
        """Structure name -> NTCP model choice."""
        return dict(self._ntcp)

    @property
    def alpha_beta_gy(self) -> dict[str, float]:
        """Tissue -> alpha/beta in Gy (``[alpha_beta]``)."""
        return {
            p.split(".", 1)[1]: _as_float(p, v)
            for p, v in self._values.items()
            if p.startswith("alpha_beta.")
        }

    def with_values(
        self, changes: Mapping[str, object], *, source: str = "user override"
    ) -> Protocol:
        """A copy with some values replaced, re-validated.

        Parameters
        ----------
        changes : mapping of str to value
            Dotted key path -> new value (a number, string or list of strings, as in the
            TOML file), e.g. ``{"ptv.sbrt.uniform": 3}``.
        source : str
            Source recorded for the changed values.

        Examples
        --------
        >>> key = "ctv.pelvic_nodes.vessel_margin_mm"
        >>> p = load_protocol("nrg_salvage").with_values({key: 5})
        >>> p.value(key), p.source(key)
        (5.0, 'user override')
        """
        data = copy.deepcopy(self._data)
        for path, new in changes.items():
            *parents, leaf = path.split(".")
            node = data
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[leaf] = {"value": new, "source": source}
        return Protocol(data, name=self.name, path=self.path)


def _check_depth(data: object, where: str) -> None:
    """Refuse a document nested deeper than :data:`_MAX_DEPTH` (checked without recursion)."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children: list[object] = []
        if isinstance(node, Mapping):
            children = list(node.values())
        elif isinstance(node, list):
            children = list(node)
        if children and depth >= _MAX_DEPTH:
            raise ProtocolError(
                f"the protocol{where} is nested more than {_MAX_DEPTH} tables or arrays deep; "
                "a protocol needs at most 4"
            )
        stack.extend((child, depth + 1) for child in children)


# ---------------------------------------------------------------------------- loading
def _shipped() -> dict[str, Traversable]:
    root = resources.files("rtplan.protocols")
    return {p.name[: -len(".toml")]: p for p in root.iterdir() if p.name.endswith(".toml")}


def list_protocols() -> list[str]:
    """Names of the protocols shipped with rtplan, sorted.

    Examples
    --------
    >>> "nrg_salvage" in list_protocols()
    True
    """
    return sorted(_shipped())


def _protocol_source(name_or_path: str | Path) -> tuple[str, str]:
    """TOML text of a shipped protocol or a file, and where it came from."""
    shipped = _shipped()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        res = shipped[name_or_path]
        return res.read_text(encoding="utf-8"), f"rtplan.protocols/{res.name}"
    path = Path(name_or_path)
    if not path.is_file():
        raise ProtocolError(
            f"no protocol {str(name_or_path)!r}: not a shipped protocol "
            f"({', '.join(sorted(shipped))}) and not a file"
        )
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None


def protocol_text(name_or_path: str | Path) -> str:
    """The TOML text of a shipped protocol (by name) or of a protocol file.

    Use it to start your own protocol from a shipped one (``rtplan protocol show --toml``).

    Examples
    --------
    >>> protocol_text("nrg_salvage").lstrip().startswith(("#", "["))
    True
    """
    return _protocol_source(name_or_path)[0]


def load_protocol(name_or_path: str | Path | Protocol) -> Protocol:
    """Read and check a protocol: a shipped one by name, or a TOML file by path.

    Parameters
    ----------
    name_or_path : str or path or Protocol
        A name from :func:`list_protocols` (e.g. ``"nrg_salvage"``), a path to a
        ``.toml`` file, or a :class:`Protocol` (returned as is).

    Returns
    -------
    Protocol

    Raises
    ------
    ProtocolError
        If there is no such protocol, the file is not valid TOML, or a value is unknown,
        missing, of the wrong type or out of range (the message names the key path).
    """
    if isinstance(name_or_path, Protocol):
        return name_or_path
    text, where = _protocol_source(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:  # the parser recurses once per nested array or inline table
        raise ProtocolError(
            f"{where} is nested too deeply to be a protocol (more than {_MAX_DEPTH} tables or "
            "arrays)"
        ) from None
    return Protocol(data, path=where)
