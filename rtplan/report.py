"""The comparative plan report: one self-contained HTML file per case.

:func:`write_report` turns a :class:`~rtplan.compare.Comparison` into an HTML page that a
physicist reads in a browser or prints to PDF:

* an "at a glance" summary (per option: targets and prescriptions, number of failed
  constraints, the key OAR metrics and NTCP),
* the case (inputs, PROMISE miTNM stage, lesion table),
* the options side by side (courses, targets with volumes and prescriptions, ADT,
  evidence) and the full metric table with every protocol constraint marked pass / fail
  together with the headroom to its limit,
* overlaid cumulative DVHs, one small panel per structure, one colour per option,
* axial, coronal and sagittal planes through the highest-dose PTV of each option, with the
  CT, the CTV / PTV outlines, a dose colour-wash and isodose lines,
* the dose model and its limits, the protocol with its sources, the rtplan version and
  the date,
* the references: every ``@key`` citation of the sources, notes and evidence lines is
  written as its short form with a number, and listed in full (from
  ``rtplan/references.toml``) at the end, with what the evidence tags mean.

Every metric row says which dose it is of (its basis: the courses treating a target, the
composite physical or EQD2 dose with its alpha/beta, one SBRT course), and carries the
protocol's note beside its limit.

The page needs no network access: the stylesheet is inlined, the plots are embedded as
``data:`` URIs (SVG for the DVHs, PNG for the images) and no font or script is loaded.
A print stylesheet (A4 landscape, a page break before each section) makes it print to
PDF cleanly.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import matplotlib
import numpy as np
import numpy.typing as npt
from contourpy import contour_generator
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator
from matplotlib.typing import ColorType
from scipy import ndimage

from rtplan._io import atomic_write_text
from rtplan._typing import BoolMask, FloatArray, Vec3
from rtplan._validation import check_type
from rtplan.atlas import Atlas
from rtplan.context import ClinicalContext, scan_meaning, subgroup_lines
from rtplan.dvh import DVH
from rtplan.errors import RtplanError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesion, Lesions
from rtplan.plan import Course, FieldOption, target_levels
from rtplan.protocol import Protocol
from rtplan.references import reference
from rtplan.sparing import CALIBRATION
from rtplan.staging import Stage
from rtplan.structures import Structure
from rtplan.volumes import prescription_eqd2

if TYPE_CHECKING:  # rtplan.compare imports this module (Comparison.write_report)
    from rtplan.compare import Comparison, MetricRow, OptionResult

__all__ = ["render_report", "write_report"]

#: Line colours of the options (DVHs, swatches); red and green are left to pass / fail.
OPTION_COLORS: tuple[str, ...] = (
    "#1f5fbf",  # blue
    "#e07b00",  # orange
    "#7b3fb5",  # purple
    "#11998e",  # teal
    "#8c564b",  # brown
    "#d4489a",  # pink
    "#555555",  # grey
    "#9a9a00",  # olive
)

#: CT display window (HU): width 400, level 40 (soft tissue).
CT_WINDOW_HU: tuple[float, float] = (40.0 - 200.0, 40.0 + 200.0)

#: The fixed paragraph on what the dose estimate is (and is not); :func:`_model_limits`
#: adds what the estimate did in the organs.
MODEL_LIMITS = (
    "The doses in this report are an estimate from a fast analytic model, made to compare "
    "field options with each other. They are not a treatment plan and not a dose "
    "calculation: there is no beam arrangement, no optimisation, no heterogeneity "
    "correction and no delivery uncertainty beyond the PTV margins. Real plans differ, "
    "especially where targets and organs overlap or lie close together. Every number must "
    "be checked in a treatment planning system by the treating team before any clinical "
    "decision."
)


def _has_imrt(comparison: Comparison) -> bool:
    """Whether some option of the comparison has an IMRT/VMAT course."""
    return any("imrt" in r.option.techniques for r in comparison.results)


def _sparing_sentence(comparison: Comparison) -> str:
    """What the estimate did in the organs: calibrated sparing, none, or no IMRT course."""
    if not _has_imrt(comparison):
        return (
            "No option has an IMRT/VMAT course: SBRT doses fall off with the distance to "
            "each PTV, as steeply as puts R50% at a fraction (0.9 by default) of the RTOG "
            "0813/0915 limit for its volume, and 3D-CRT is a box of static fields; neither "
            "models an optimiser's organ sparing."
        )
    if not comparison.spared_organs:
        return (
            "The estimate has no OAR sparing here: IMRT/VMAT doses fall off with the "
            "distance to each PTV only, so organs next to a PTV get more intermediate dose "
            "than an optimised plan would give them."
        )
    return (
        "IMRT/VMAT doses fall off with the distance to each PTV and are lowered in the "
        f"organs an optimiser is told to spare ({', '.join(comparison.spared_organs)}) by "
        "the sparing and hold terms listed in the model description above (the shipped "
        "terms are fitted on plans optimised with an open planning engine, pyRadPlan; "
        "docs/dose_model.md section 4.7); SBRT and 3D-CRT courses are not spared. Where an "
        "estimated organ metric shows a \u00b1, it is that calibration's spread on "
        "held-out plans; a planner who weighs an organ differently gets other numbers."
    )


def _model_limits(comparison: Comparison) -> str:
    """The report's statement of the dose model's limits, for this comparison.

    :data:`MODEL_LIMITS` and a sentence on the organs: the calibrated sparing and hold
    when the estimate applied them (``comparison.spared_organs``), otherwise that there
    was none.
    """
    return f"{MODEL_LIMITS} {_sparing_sentence(comparison)}"


_PASS_MARK = "\u2713"  # check mark
_FAIL_MARK = "\u2717"  # ballot x
_MISSING = "\u2014"  # em dash

_DVH_MAX_POINTS = 240
_IMAGE_DPI = 90
_DVH_MAX_PANELS = 24
_DVH_FORMAT = "svg"
_IMAGE_WIDTH_IN = 13.0
_MAX_PLANE_PIXELS = 360  # CT pixels per plane axis (the images are ~350 px high)

# at-a-glance key metrics: (label, structure candidates, metric candidates, group or None)
_KEY_METRICS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str | None], ...] = (
    ("Rectum V65Gy", ("Rectum",), ("V65Gy",), None),
    ("Bladder V65Gy", ("Bladder",), ("V65Gy",), None),
    ("Bowel V45Gy", ("Spc_Bowel", "Bowel", "Bowel_Small", "Bag_Bowel"), ("V45Gy",), None),
    ("NTCP rectum", ("Rectum",), ("NTCP",), "NTCP"),
    ("NTCP bowel", ("Spc_Bowel", "Bowel", "Bowel_Small", "Bag_Bowel"), ("NTCP",), "NTCP"),
)

# outline colours on the images (chosen to stand out on the CT and the dose wash)
_PTV_COLOR = "#ffffff"
_CTV_COLOR = "#ff3df5"
_GTV_COLOR = "#ff3df5"
_MAX_ISODOSE_LINES = 5
_WASH_FROM = 0.3  # dose colour-wash from this fraction of the highest prescription
_OAR_OUTLINES = ("Rectum", "Bladder", "Spc_Bowel", "Bowel", "Colon_Sigmoid")
#: Outline colours of the organs on the images: distinct from each other and from the
#: target outlines (white, magenta); organs are dotted, isodose lines solid.
_OAR_COLORS: dict[str, str] = {
    "Rectum": "#ff8c00",
    "Bladder": "#ffe600",
    "Spc_Bowel": "#00e5ff",
    "Bowel": "#00e5ff",
    "Colon_Sigmoid": "#66ff66",
}

_ScalarT = TypeVar("_ScalarT", bound=np.generic)


# ---------------------------------------------------------------------------- contract
def _check_comparison(comparison: Comparison) -> None:
    """Check the parts of ``comparison`` the report reads against their contract types.

    Raises
    ------
    TypeError
        Naming the attribute (``comparison.stage``...) that is not of its contract type.
    """
    check_type(
        comparison.atlas, Atlas, name="comparison.atlas", expected_text="an rtplan.atlas.Atlas"
    )
    check_type(
        comparison.protocol,
        Protocol,
        name="comparison.protocol",
        expected_text="an rtplan.protocol.Protocol",
    )
    check_type(
        comparison.stage,
        (Stage, type(None)),
        name="comparison.stage",
        expected_text="an rtplan.staging.Stage or None",
    )
    check_type(
        comparison.lesions,
        (Lesions, type(None)),
        name="comparison.lesions",
        expected_text="an rtplan.lesions.Lesions or None",
    )


def _dvh_curve(dvh: DVH) -> tuple[FloatArray, FloatArray]:
    """The cumulative DVH of ``dvh`` as ``(dose_gy, volume_pct)`` arrays."""
    dose = np.asarray(dvh.dose_gy, dtype=np.float64)
    vol = np.asarray(dvh.cumulative_pct, dtype=np.float64)
    return dose, vol


def _thin_curve(
    dose: FloatArray, vol: FloatArray, n: int = _DVH_MAX_POINTS
) -> tuple[FloatArray, FloatArray]:
    """At most ``n`` points of a curve (uniform in dose), keeping its end points."""
    if dose.size <= n:
        return dose, vol
    grid = np.linspace(dose[0], dose[-1], n)
    return grid, np.interp(grid, dose, vol)


# ---------------------------------------------------------------------------- formatting
def _esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# ---- citations ----------------------------------------------------------------------------
# Free text (sources, notes, evidence lines) cites rtplan/references.toml by ``@key``: the
# report writes each key as its short citation with a number, and lists the full citations
# at the end (see _numbered_citations). Pointers to the developers' fact sheet (a file the
# reader does not have) are taken out.
_KEY = re.compile(r"@([a-z][a-z0-9_]*[a-z0-9])")
_MARK = "\u27e6{}\u27e7"  # placeholder of a citation in escaped HTML, numbered at the end
_MARKED = re.compile("\u27e6([a-z][a-z0-9_]*[a-z0-9])\u27e7")
_FACT_SHEET = re.compile(
    r"(?:as recalled in\s+)?CLINICAL\.md(?:\s+section)?(?:\s+\d+[a-z]?(?:\s*[-/]\s*\d+[a-z]?)*)?"
)
_TIDY = (
    (re.compile(r"\(\s*[;,]?\s*\)"), ""),
    (re.compile(r"\(\s*[;,]\s*"), "("),
    (re.compile(r"\s*[;,]\s*\)"), ")"),
    (re.compile(r"\(\s*(\[[^\]]*\])\s*\)"), r"\1"),
    (re.compile(r"\s+([.,;])"), r"\1"),
    (re.compile(r"\s{2,}"), " "),
)

#: What the evidence tags in the sources mean.
EVIDENCE_TAGS = (
    ("[V]", "the number was read in the source named"),
    (
        "[V-3p]",
        "the number comes from a third-party transcription (open-source code or a secondary "
        "table citing the primary paper); the primary paper was not read",
    ),
    ("[U]", "unverified: from memory or convention; check it before relying on it"),
    (
        "tool default",
        "a value rtplan chose where no guideline fixes the number; the nearest published "
        "value is named",
    ),
)


def _without_fact_sheet(text: str) -> str:
    """``text`` without pointers to the developers' fact sheet, punctuation tidied."""
    if "CLINICAL" not in text:
        return text
    out = _FACT_SHEET.sub("", text)
    for pattern, repl in _TIDY:
        out = pattern.sub(repl, out)
    return out.strip()


def _prose(value: object) -> str:
    """Escaped free text with its ``@key`` citations marked for numbering."""
    text = _without_fact_sheet("" if value is None else str(value))
    parts = _KEY.split(text)  # text, key, text, key, ...
    out = []
    for i, part in enumerate(parts):
        out.append(_MARK.format(part) if i % 2 else _esc(part))
    return "".join(out)


def _short_citation(key: str) -> str:
    """In-line form of a cited key (the key itself when references.toml lacks it)."""
    try:
        return reference(key).short
    except RtplanError:
        return "@" + key


def _numbered_citations(body: str) -> tuple[str, list[str]]:
    """Replace the citation marks of ``body`` by numbered links; the keys in number order."""
    order: dict[str, int] = {}

    def link(m: re.Match[str]) -> str:
        key = m.group(1)
        n = order.setdefault(key, len(order) + 1)
        return f'<span class="cite" data-ref="{key}">{_esc(_short_citation(key))}&nbsp;[{n}]</span>'

    return _MARKED.sub(link, body), list(order)


def _references_section(keys: Sequence[str]) -> str:
    """The full citations of the cited keys, numbered, and what the evidence tags mean."""
    out = ['<section id="references">', "<h2>References</h2>"]
    if keys:
        out.append('<ol class="references">')
        for key in keys:
            try:
                ref = reference(key)
            except RtplanError:
                out.append(f'<li id="ref-{key}">{_esc(key)}: not in rtplan/references.toml</li>')
                continue
            checked = _KEY.sub(lambda m: _short_citation(m.group(1)), ref.verified)
            tag = f' <span class="tag">What was read: {_esc(_without_fact_sheet(checked))}.</span>'
            out.append(f'<li id="ref-{key}">{_esc(ref.citation)}{tag if checked else ""}</li>')
        out.append("</ol>")
    else:
        out.append('<p class="note">No source is cited.</p>')
    tags = "; ".join(f"<b>{_esc(tag)}</b>: {_esc(meaning)}" for tag, meaning in EVIDENCE_TAGS)
    out.append(f'<p class="note" id="evidence-tags">Evidence tags in the sources: {tags}.</p>')
    out.append("</section>")
    return "\n".join(out)


def _finite(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is ``None``, NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _format_value(value: float | None, unit: str = "") -> str:
    """A metric value as shown in the tables: one decimal, two below 1 (NTCP, small %).

    ``None`` or NaN gives an em dash.
    """
    v = _finite(value)
    if v is None:
        return _MISSING
    if v != 0 and abs(v) < 1:
        return f"{v:.2f}"
    return f"{v:.1f}"


def _format_headroom(value: float | None) -> str:
    """Signed headroom to a limit (``+2.3``, ``-1.5``); empty when unknown."""
    v = _finite(value)
    if v is None:
        return ""
    text = f"{abs(v):.2f}" if v != 0 and abs(v) < 1 else f"{abs(v):.1f}"
    return ("+" if v >= 0 else "\u2212") + text


def _format_gy(value: float) -> str:
    return f"{value:.4g}"


def _norm_metric(text: str) -> str:
    return re.sub(r"\s+|\[.*?\]", "", text).lower()


def _norm_name(text: str) -> str:
    return re.sub(r"[\s_]+", "", text).lower()


# ---------------------------------------------------------------------------- content helpers
@dataclass(frozen=True)
class _TargetInfo:
    course: str
    technique: str
    fractions: int
    ptv: str  # the PTV as drawn
    dosed: str  # the PTV this course doses (a cropped later phase: "PTV!sb_6660")
    prescription_gy: float
    ptv_cc: float
    ctv: str | None
    ctv_cc: float | None
    gtv: str | None
    gtv_cc: float | None


def _targets(option: FieldOption) -> list[_TargetInfo]:
    """One entry per target of each course of ``option``, in course order."""
    return [
        _TargetInfo(
            course=course.name,
            technique=course.technique,
            fractions=course.fractions,
            ptv=t.whole_ptv.name,
            dosed=t.ptv.name,
            prescription_gy=t.prescription_gy,
            ptv_cc=t.whole_ptv.volume_cc,
            ctv=None if t.ctv is None else t.ctv.name,
            ctv_cc=None if t.ctv is None else t.ctv.volume_cc,
            gtv=None if t.gtv is None else t.gtv.name,
            gtv_cc=None if t.gtv is None else t.gtv.volume_cc,
        )
        for course in option.courses
        for t in course.targets
    ]


def _overlap_fraction(part: Structure, whole: Structure) -> float:
    """Fraction of the voxels of ``part`` that lie inside ``whole`` (same grid), else 0."""
    if part.is_empty or whole.is_empty:
        return 0.0
    if part.grid is not whole.grid and not part.grid.equals(whole.grid):
        return 1.0 if _contains_point(whole, part.centroid_mm) else 0.0
    return float(part.shared_voxel_count(whole)) / part.voxel_count


def _contains_point(structure: Structure, point_mm: Sequence[float]) -> bool:
    """Whether the voxel of ``structure`` nearest to ``point_mm`` (LPS) is inside it."""
    bbox = structure.bbox
    if bbox is None or any(math.isnan(float(c)) for c in point_mm):
        return False
    k, j, i = (int(v) for v in structure.grid.lps_to_nearest_index(point_mm))
    local = structure.cropped_mask
    k, j, i = k - bbox[0].start, j - bbox[1].start, i - bbox[2].start
    inside = 0 <= k < local.shape[0] and 0 <= j < local.shape[1] and 0 <= i < local.shape[2]
    return bool(inside and local[k, j, i])


def _course_credit_gy(course: Course, ptv: Structure) -> float:
    """Prescription (Gy) that ``course`` adds to ``ptv`` (0 when none).

    The highest prescription among the course's targets whose PTV is ``ptv`` or holds at
    least half of it.
    """
    best = 0.0
    for t in course.targets:
        rx = t.prescription_gy
        if not math.isfinite(rx):
            continue
        if t.whole_ptv.name == ptv.name or _overlap_fraction(ptv, t.whole_ptv) >= 0.5:
            best = max(best, rx)
    return best


def _ptv_totals(option: FieldOption) -> list[tuple[Structure, float]]:
    """``(PTV structure, total prescription in Gy)`` for every PTV of the option.

    A course adds to a PTV the highest prescription among its targets whose PTV is this
    one or holds at least half of it: a PTV nested in the PTV of another course (a
    sequential boost) or of another level (a SIB) is credited with that dose too.
    """
    ptvs: dict[str, Structure] = {}
    for t in option.targets:
        ptvs.setdefault(t.whole_ptv.name, t.whole_ptv)
    return [
        (ptv, sum((_course_credit_gy(course, ptv) for course in option.courses), 0.0))
        for ptv in ptvs.values()
    ]


def _total_rx_by_ptv(option: FieldOption) -> dict[str, float]:
    """PTV name -> total prescription over all courses (Gy), see :func:`_ptv_totals`."""
    return {p.name: rx for p, rx in _ptv_totals(option)}


def _main_ptv(option: FieldOption) -> Structure | None:
    """The PTV with the highest total prescription (ties: the smallest), or ``None``."""
    best: Structure | None = None
    key: tuple[float, float] | None = None
    for ptv, rx in _ptv_totals(option):
        if ptv.is_empty:
            continue
        k = (round(rx, 6), -ptv.volume_cc)
        if key is None or k > key:
            best, key = ptv, k
    return best


def _failed_rows(rows: Sequence[MetricRow], option: str) -> list[MetricRow]:
    return [r for r in rows if r.status.get(option) == "fail"]


def _checked_rows(rows: Sequence[MetricRow], option: str) -> list[MetricRow]:
    return [r for r in rows if r.status.get(option) in ("pass", "fail")]


def _is_ntcp_row(row: MetricRow) -> bool:
    return row.group.upper() == "NTCP" or _norm_metric(row.metric).startswith("ntcp")


def _find_key_row(
    rows: Sequence[MetricRow],
    structures: tuple[str, ...],
    metrics: tuple[str, ...],
    group: str | None,
) -> MetricRow | None:
    """The first row of the first structure candidate that has the metric (or NTCP)."""
    names = [_norm_name(s) for s in structures]
    wanted = [_norm_metric(m) for m in metrics]
    for want_name in names:  # preference order of the structure candidates
        for r in rows:
            if _norm_name(r.structure) != want_name:
                continue
            is_ntcp = _is_ntcp_row(r)
            if group == "NTCP":
                if is_ntcp:
                    return r
                continue
            if not is_ntcp and _norm_metric(r.metric) in wanted:
                return r
    return None


def _option_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: OPTION_COLORS[i % len(OPTION_COLORS)] for i, n in enumerate(names)}


def _imported(comparison: Comparison) -> list[OptionResult]:
    """The columns whose dose is imported (a planning system's), in order."""
    return [r for r in comparison.results if r.is_imported]


def _dose_tag(comparison: Comparison, name: str) -> str:
    """The mark under a column's name: ``estimated``, or ``imported: <file>``."""
    table = comparison.table
    kind = table.dose_source(name)
    return f'<span class="hr dose-{kind}">{_esc(table.dose_label(name))}</span>'


def _column_head(comparison: Comparison, name: str, colors: dict[str, str]) -> str:
    """A column header's content: swatch, name and where its dose comes from."""
    return f"{_swatch(colors.get(name, '#888'))}{_esc(name)}{_dose_tag(comparison, name)}"


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


# ---------------------------------------------------------------------------- figures
def _fig_to_data_uri(fig: Figure, fmt: str, dpi: int = _IMAGE_DPI) -> str:
    """The figure as a base64 ``data:`` URI (no tight bounding box: layouts are fixed)."""
    buf = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Date": None})
    else:  # fast zlib level: the images are photographs of CT, compression gains little
        fig.savefig(buf, format=fmt, dpi=dpi, pil_kwargs={"compress_level": 3})
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# a DVH panel: (structure, line style) of each curve
_Panel = list[tuple[str, str]]


def _target_panels(comparison: Comparison, have: dict[str, None]) -> list[_Panel]:
    """One panel per target: its PTV solid, CTV dashed, GTV dotted; highest total dose first."""
    targets: list[tuple[float, int, _TargetInfo]] = []
    for r in comparison.results:
        totals = _total_rx_by_ptv(r.option)
        for t in _targets(r.option):
            targets.append((-totals.get(t.ptv, t.prescription_gy), len(targets), t))
    panels: list[_Panel] = []
    used: set[str] = set()
    for _, _, t in sorted(targets, key=lambda x: (x[0], x[1])):
        if t.ptv in used:
            continue
        panel = [
            (n, ls)
            for n, ls in ((t.ptv, "-"), (t.ctv, "--"), (t.gtv, ":"))
            if n and n in have and n not in used
        ]
        if panel:
            panels.append(panel)
            used.update(n for n, _ in panel)
    return panels


def _dvh_panels(comparison: Comparison) -> list[_Panel]:
    """DVH panels: each a list of ``(structure, line style)``.

    One panel per target (its PTV solid, CTV dashed, GTV dotted; highest total dose
    first), then one per other structure of the table, in table order. Structures without
    a DVH are left out.
    """
    have: dict[str, None] = {}
    for r in comparison.results:
        for name in r.dvhs:
            if not name.startswith("PTV!"):  # a later phase's cropped PTV: its PTV has a panel
                have[name] = None
    if not have:
        return []
    panels = _target_panels(comparison, have)
    used = {n for panel in panels for n, _ in panel}
    rest = [row.structure for row in comparison.table.rows]
    if not any(n in have and n not in used for n in rest):
        rest = list(have)  # the table names no other structure with a DVH: show them all
    for n in rest:
        if n in have and n not in used:
            panels.append([(n, "-")])
            used.add(n)
    return panels[:_DVH_MAX_PANELS]


_LIMIT_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)")
_V_METRIC = re.compile(r"^\s*V\s*(\d+(?:\.\d+)?)\s*Gy", re.IGNORECASE)
_D_METRIC = re.compile(r"^\s*D\s*(\d+(?:\.\d+)?)\s*%", re.IGNORECASE)


def _limit_markers(comparison: Comparison, structure: str) -> list[tuple[float, float, str, str]]:
    """``(dose_gy, volume_pct, label, marker)`` points of the dose-volume limits of a structure.

    ``V<d>Gy <= x %`` and ``D<x>% <= d Gy`` limits of rows on the composite physical dose,
    the dose the DVHs show. Limits in cc are left out (the axis is in %; they are in the
    table), as are rows on another dose (EQD2, one SBRT course) and other metrics.
    """
    out = []
    for row in comparison.table.rows:
        if row.structure != structure or not row.limit or row.not_evaluated:
            continue
        if row.group != "OAR" or row.basis not in ("", _BASIS_PHYSICAL):
            continue
        m = _LIMIT_NUMBER.search(row.limit)
        if m is None:
            continue
        limit = float(m.group(1))
        marker = "^" if row.limit.lstrip().startswith(">") else "v"
        vm, dm = _V_METRIC.match(row.metric), _D_METRIC.match(row.metric)
        if vm and row.unit == "%":
            out.append((float(vm.group(1)), limit, row.metric, marker))
        elif dm and row.unit == "Gy":
            out.append((limit, float(dm.group(1)), row.metric, marker))
    return [p for p in out if 0 <= p[1] <= 100]


def _dvh_axes(n_panels: int, legend_labels: Sequence[str]) -> tuple[Figure, list[Axes], int, int]:
    """Figure with ``n_panels`` shared-axes panels (up to 4 a row) and room for the legend.

    Returns the figure, the panels, the number of panel columns and of legend columns.
    """
    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    # fixed layout in inches (no tight_layout / tight bbox: each costs a full draw)
    pw, ph, left, right, bottom, gap_w, gap_h = 2.9, 1.75, 0.55, 0.1, 0.42, 0.2, 0.42
    width = left + right + ncols * pw + (ncols - 1) * gap_w
    leg_cols = _legend_columns(legend_labels, width, font_pt=9.0)
    top = 0.3 + math.ceil(len(legend_labels) / leg_cols) * 0.24
    height = top + bottom + nrows * ph + (nrows - 1) * gap_h
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(
        nrows,
        ncols,
        squeeze=False,
        sharex=True,
        sharey=True,
        gridspec_kw={
            "left": left / width,
            "right": 1 - right / width,
            "bottom": bottom / height,
            "top": 1 - top / height,
            "wspace": gap_w / pw,
            "hspace": gap_h / ph,
        },
    )
    flat: list[Axes] = list(axes.ravel())  # row by row
    return fig, flat, ncols, leg_cols


def _same_dose_groups(comparison: Comparison) -> list[list[str]]:
    """Options whose total doses are identical (e.g. with and without ADT), in groups."""
    groups: list[list[OptionResult]] = []
    for r in comparison.results:
        for g in groups:
            if g[0].dose_gy.shape == r.dose_gy.shape and np.array_equal(g[0].dose_gy, r.dose_gy):
                g.append(r)
                break
        else:
            groups.append([r])
    return [[r.name for r in g] for g in groups]


def _panel_is_identical(
    comparison: Comparison, panel: _Panel, groups: Sequence[Sequence[str]]
) -> bool:
    """Whether options of different doses draw the same curves on this panel."""
    if len(groups) < 2:
        return False
    for name, _ in panel:
        curves = [comparison.result(g[0]).dvhs.get(name) for g in groups]
        present = [c for c in curves if c is not None]
        if len(present) < 2:
            return False
        d0, v0 = _dvh_curve(present[0])
        for c in present[1:]:
            d, v = _dvh_curve(c)
            grid = np.linspace(0.0, max(float(d0[-1]), float(d[-1])), 200)
            if not np.allclose(np.interp(grid, d0, v0), np.interp(grid, d, v), atol=0.05):
                return False
    return True


def _dvh_dose_max_gy(comparison: Comparison, panels: Sequence[_Panel]) -> float:
    """Upper end of the dose axis (Gy): the highest dose of any curve above 0.05 %, rounded up."""
    dmax = 0.0
    for r in comparison.results:
        for panel in panels:
            for name, _ in panel:
                dvh = r.dvhs.get(name)
                if dvh is not None:
                    d, v = _dvh_curve(dvh)
                    nz = d[v > 0.05]
                    if nz.size:
                        dmax = max(dmax, float(nz.max()))
    return max(5.0, 5.0 * math.ceil(dmax * 1.03 / 5.0))


def _set_dvh_scales(ax: Axes, dmax: float) -> None:
    """Axis limits and (few) ticks, shared by every panel."""
    ax.set_xlim(0, dmax)
    ax.set_ylim(0, 102)
    # few ticks: tick objects are most of the drawing time of small multiples
    step = 10.0 if dmax <= 50 else 20.0
    ax.xaxis.set_major_locator(FixedLocator(np.arange(0.0, dmax + 0.1, step).tolist()))
    ax.yaxis.set_major_locator(FixedLocator([0.0, 25.0, 50.0, 75.0, 100.0]))


def _draw_dvh_curves(
    ax: Axes, comparison: Comparison, panel: _Panel, colors: dict[str, str]
) -> set[str]:
    """The curves of one panel, one colour per option; returns the line styles used."""
    styles: set[str] = set()
    for name, ls in panel:
        for i, r in enumerate(comparison.results):
            dvh = r.dvhs.get(name)
            if dvh is None:
                continue
            d, v = _thin_curve(*_dvh_curve(dvh))
            # later options thinner, so that identical curves still show every colour
            lw = max(2.4 - 0.5 * i, 0.9)
            ax.plot(d, v, color=colors[r.name], lw=lw, ls=ls)
            styles.add(ls)
    return styles


# a label box on a DVH panel, in data units: (left, bottom, right, top)
_Box = tuple[float, float, float, float]


def _overlap(a: _Box, b: _Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(
    points: Sequence[tuple[float, float, str]], dose_max_gy: float
) -> list[tuple[float, float, str, str, str] | None]:
    """Positions of marker labels that do not overlap each other, or ``None`` (no room).

    For each ``(dose, volume %, text)``: ``(x, y, text, ha, va)`` in data units, trying
    above-right, below-right, above-left and below-left of the marker; label sizes are
    estimated from the text length at 6.5 pt on a 2.9 x 1.75 inch panel.
    """
    gy_per_char = dose_max_gy / 2.9 * (0.55 * 6.5 / 72)
    pct_high = 102 / 1.75 * (6.5 / 72) * 1.3
    placed: list[_Box] = []
    out: list[tuple[float, float, str, str, str] | None] = []
    for dose, vol, text in points:
        w = len(text) * gy_per_char
        dx, dy = 0.012 * dose_max_gy, 2.0
        choice = None
        for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            x0 = dose + dx if sx > 0 else dose - dx - w
            y0 = vol + dy if sy > 0 else vol - dy - pct_high
            box = (x0, y0, x0 + w, y0 + pct_high)
            if box[0] < 0 or box[2] > dose_max_gy or box[1] < 0 or box[3] > 102:
                continue
            if any(_overlap(box, b) for b in placed):
                continue
            placed.append(box)
            choice = (x0, y0, text, "left", "bottom")
            break
        out.append(choice)
    return out


def _draw_limit_markers(ax: Axes, comparison: Comparison, panel: _Panel, dmax: float) -> None:
    """Mark the dose-volume limits of the panel's structures (see :func:`_limit_markers`).

    Labels are placed where they overlap no other label (:func:`_place_labels`); a marker
    without room for its label keeps the marker only (its row is in the table).
    """
    points = []
    for name, _ in panel:
        for dose_gy, vol_pct, met, marker in _limit_markers(comparison, name):
            ax.plot(
                [dose_gy],
                [vol_pct],
                marker=marker,
                ms=5.5,
                color="#222222",
                ls="none",
                zorder=5,
                clip_on=False,
            )
            points.append((dose_gy, vol_pct, met))
    for spot in _place_labels(points, dmax):
        if spot is not None:
            x, y, text, ha, va = spot
            ax.text(x, y, text, fontsize=6.5, color="#222222", ha=ha, va=va, zorder=6)


def _dvh_legend_handles(
    comparison: Comparison,
    colors: dict[str, str],
    styles_used: set[str],
    groups: Sequence[Sequence[str]],
) -> list[Line2D]:
    """The options' colours (an option with another's dose says so), line styles if mixed."""
    same = {name: g[0] for g in groups for name in g[1:]}
    handles = [
        Line2D(
            [],
            [],
            color=colors[r.name],
            lw=2,
            label=r.name + (f" (= {same[r.name]})" if r.name in same else ""),
        )
        for r in comparison.results
    ]
    if len(styles_used) > 1:
        handles += [
            Line2D([], [], color="#333333", lw=1.3, ls=ls, label=lab)
            for ls, lab in (("-", "PTV / organ"), ("--", "CTV"), (":", "GTV"))
            if ls in styles_used
        ]
    return handles


def _dvh_figure(comparison: Comparison, colors: dict[str, str]) -> str | None:
    """Small multiples of cumulative DVHs as a ``data:`` URI, or ``None`` without DVHs."""
    fig = _dvh_figure_object(comparison, colors)
    return None if fig is None else _fig_to_data_uri(fig, _DVH_FORMAT)


def _dvh_figure_object(comparison: Comparison, colors: dict[str, str]) -> Figure | None:
    """The DVH figure: one panel per target or structure, one colour per option.

    Within a target panel the PTV is solid, the CTV dashed and the GTV dotted. A panel
    whose curves are the same for options of different doses says so in its title; an
    option with the same dose as another says so in the legend (its curves lie under
    the other's).
    """
    panels = _dvh_panels(comparison)
    if not panels:
        return None
    groups = _same_dose_groups(comparison)
    have = {n for r in comparison.results for n in r.dvhs}
    styles_used = {ls for panel in panels for name, ls in panel if name in have}
    handles = _dvh_legend_handles(comparison, colors, styles_used, groups)
    fig, axes, ncols, leg_cols = _dvh_axes(len(panels), [str(h.get_label()) for h in handles])
    dmax = _dvh_dose_max_gy(comparison, panels)
    _set_dvh_scales(axes[0], dmax)
    for n, panel in enumerate(panels):
        ax = axes[n]
        _draw_dvh_curves(ax, comparison, panel, colors)
        title = " / ".join(name for name, _ in panel)
        if _panel_is_identical(comparison, panel, groups):
            title += " (same in every option)"
        ax.set_title(
            title, fontsize=8 if len(title) > 30 else 8.5, pad=2, loc="left", fontweight="bold"
        )
        _draw_limit_markers(ax, comparison, panel, dmax)
        ax.grid(True, lw=0.4, alpha=0.5)
        bottom_row = n + ncols >= len(panels)
        ax.tick_params(
            labelsize=7, length=2, pad=1, labelbottom=bottom_row, labelleft=n % ncols == 0
        )
        if n % ncols == 0:
            ax.set_ylabel("Volume (%)", fontsize=8)
        if bottom_row:
            ax.set_xlabel("Dose (Gy)", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=leg_cols,
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    return fig


# ---- planes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plane:
    """A display plane: ascending row / column coordinates (mm) and a fixed normal position.

    ``axes`` are LPS axis numbers (0 = x, 1 = y, 2 = z) of rows, columns and normal.
    """

    view: str
    rows_mm: FloatArray
    cols_mm: FloatArray
    normal_mm: float
    axes: tuple[int, int, int]
    label: str = ""

    @property
    def extent(self) -> tuple[float, float, float, float]:
        def edges(c: FloatArray) -> tuple[float, float]:
            h = float(c[1] - c[0]) if c.size > 1 else 1.0
            return float(c[0]) - h / 2, float(c[-1]) + h / 2

        c0, c1 = edges(self.cols_mm)
        r0, r1 = edges(self.rows_mm)
        return (c0, c1, r0, r1)


_VIEWS = {  # view -> (row LPS axis, column LPS axis, normal LPS axis)
    "axial": (1, 0, 2),
    "coronal": (2, 0, 1),
    "sagittal": (2, 1, 0),
}
_LPS_TO_ARRAY = {0: 2, 1: 1, 2: 0}  # LPS axis (x, y, z) -> array axis (k=0, j=1, i=2)


def _axis_coords(grid: ImageGrid, lps_axis: int) -> FloatArray:
    coords: FloatArray = grid.axis_coordinates_mm()[_LPS_TO_ARRAY[lps_axis]]
    return coords


def _fractional_index(grid: ImageGrid, lps_axis: int, coords_mm: FloatArray) -> FloatArray:
    """Fractional array index along one axis of ``grid`` for coordinates in mm."""
    c = _axis_coords(grid, lps_axis)
    if c.size == 1:
        step = grid.spacing_mm[_LPS_TO_ARRAY[lps_axis]] * grid.axis_signs[_LPS_TO_ARRAY[lps_axis]]
    else:
        step = float(c[1] - c[0])
    return (np.asarray(coords_mm, dtype=float) - float(c[0])) / step


def _display_window(comparison: Comparison, grid: ImageGrid) -> list[FloatArray]:
    """Coordinates (x, y, z, ascending, mm) of the CT voxels to display: the body + 10 mm."""
    coords = [np.sort(_axis_coords(grid, a)) for a in range(3)]
    atlas = comparison.atlas
    structures = atlas.structures
    body = next((structures[n] for n in ("Body", "External") if n in structures), None)
    if body is not None and not body.is_empty:
        bounds = body.bounds_mm
        for a in range(2):  # crop x and y only; keep the whole z range
            lo, hi = bounds[a][0] - 10.0, bounds[a][1] + 10.0
            keep = (coords[a] >= lo) & (coords[a] <= hi)
            if np.count_nonzero(keep) >= 2:
                coords[a] = coords[a][keep]
    return coords


def _subsample(window: list[FloatArray], max_pixels: int = _MAX_PLANE_PIXELS) -> list[FloatArray]:
    """Every n-th coordinate so that no axis has more than ``max_pixels`` pixels."""
    return [c[:: max(1, math.ceil(c.size / max_pixels))] for c in window]


def _make_plane(
    view: str,
    window: list[FloatArray],
    centre_mm: Sequence[float],
    normal_window: list[FloatArray] | None = None,
) -> _Plane:
    """The plane of ``view`` through the voxel centre nearest to ``centre_mm``.

    ``window`` gives the pixel coordinates (x, y, z); ``normal_window`` (default
    ``window``) the coordinates the plane position is chosen from.
    """
    r, c, n = _VIEWS[view]
    normal_coords = (normal_window or window)[n]
    normal = float(normal_coords[np.argmin(np.abs(normal_coords - centre_mm[n]))])
    return _Plane(view, window[r], window[c], normal, (r, c, n))


def _sample_nearest(
    array: npt.NDArray[_ScalarT],
    grid: ImageGrid,
    plane: _Plane,
    offset: Sequence[int] = (0, 0, 0),
    fill: float = 0,
) -> npt.NDArray[_ScalarT]:
    """Nearest-neighbour sample of ``array`` at the plane's pixel centres.

    ``array`` lies on ``grid`` starting at array index ``offset`` (a cropped mask);
    pixels outside it get ``fill``.
    """
    r_ax, c_ax, n_ax = plane.axes
    idx = {}
    valid = {}
    for lps_axis, coords in (
        (r_ax, plane.rows_mm),
        (c_ax, plane.cols_mm),
        (n_ax, np.array([plane.normal_mm])),
    ):
        arr_axis = _LPS_TO_ARRAY[lps_axis]
        i = np.rint(_fractional_index(grid, lps_axis, coords)).astype(np.int64) - offset[arr_axis]
        ok = (i >= 0) & (i < array.shape[arr_axis])
        idx[arr_axis] = np.clip(i, 0, max(array.shape[arr_axis] - 1, 0))
        valid[arr_axis] = ok
    if array.size == 0 or not valid[_LPS_TO_ARRAY[n_ax]].any():
        return np.full((plane.rows_mm.size, plane.cols_mm.size), fill, dtype=array.dtype)
    sub = array[np.ix_(idx[0], idx[1], idx[2])]
    ok = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    sub = np.where(ok, sub, fill)
    # sub is [k, j, i]; reorder to (rows, cols) of the plane
    order = [_LPS_TO_ARRAY[r_ax], _LPS_TO_ARRAY[c_ax], _LPS_TO_ARRAY[n_ax]]
    return np.transpose(sub, order)[:, :, 0]


def _sample_linear(array: npt.ArrayLike, grid: ImageGrid, plane: _Plane) -> FloatArray:
    """Trilinear sample of ``array`` on ``grid`` at the plane's pixel centres (0 outside)."""
    r_ax, c_ax, n_ax = plane.axes
    fr = _fractional_index(grid, r_ax, plane.rows_mm)
    fc = _fractional_index(grid, c_ax, plane.cols_mm)
    fn = float(_fractional_index(grid, n_ax, np.array([plane.normal_mm]))[0])
    rr, cc = np.meshgrid(fr, fc, indexing="ij")
    coords = np.empty((3, *rr.shape))
    coords[_LPS_TO_ARRAY[r_ax]] = rr
    coords[_LPS_TO_ARRAY[c_ax]] = cc
    coords[_LPS_TO_ARRAY[n_ax]] = fn
    sampled: FloatArray = ndimage.map_coordinates(
        np.asarray(array, dtype=np.float32),
        coords,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return sampled


def _structure_plane(structure: Structure, plane: _Plane) -> BoolMask | None:
    """The structure's mask on the plane, or ``None`` when it does not cross it."""
    bbox = structure.bbox
    if bbox is None:
        return None
    offset = tuple(s.start for s in bbox)
    mask: BoolMask = structure.cropped_mask
    m = _sample_nearest(mask, structure.grid, plane, offset, fill=False)
    return m if m.any() else None


def _draw_contour(
    ax: Axes,
    plane: _Plane,
    values: npt.ArrayLike,
    level: float,
    color: ColorType,
    lw: float,
    ls: str,
) -> None:
    """Draw the ``level`` contour of a plane array.

    contourpy and one LineCollection: far cheaper than ``Axes.contour`` for a few lines.
    """
    gen = contour_generator(plane.cols_mm, plane.rows_mm, np.asarray(values, dtype=np.float64))
    # the default line type (Separate) gives one (n, 2) array of points per line
    segments = cast("list[FloatArray]", gen.lines(level))
    lines = [seg for seg in segments if len(seg) > 1]
    if lines:
        ax.add_collection(
            LineCollection(lines, colors=[color], linewidths=lw, linestyles=ls, zorder=3),
            autolim=False,
        )


@dataclass(frozen=True, eq=False)
class _Isodose:
    """An isodose line: its dose, what it is a percentage of, and the dose it is drawn on.

    ``dose_gy`` is the physical dose of the courses the percentage refers to (the courses
    that treat the target), so that 95 % of a 21 Gy SBRT prescription is drawn on the SBRT
    course's own dose, not on the sum of every course.
    """

    level_gy: float
    label: str
    dose_gy: FloatArray


def _isodose_lines(result: OptionResult) -> list[_Isodose]:
    """95 % of each target's total prescription on the dose of its courses, 50 % of the highest.

    Lines closer than 4 % of the highest level to a line of the same dose are merged; at
    most :data:`_MAX_ISODOSE_LINES`.
    """
    option = result.option
    levels = sorted(target_levels(option), key=lambda lv: -lv.total_gy)
    lines: list[_Isodose] = []
    if not levels:
        return lines
    top = levels[0].total_gy
    for lv, pct in [(lv, 95) for lv in levels] + [(levels[0], 50)]:
        idx = lv.courses or tuple(range(len(option.courses)))
        names = [option.courses[i].name for i in idx]
        if all(n in result.course_doses_gy for n in names):
            dose = np.sum([result.course_doses_gy[n] for n in names], axis=0)
            on = " + ".join(names)
        else:  # a result without per-course doses: the total is all there is
            dose, on = np.asarray(result.dose_gy, dtype=np.float64), "total dose"
        level = pct / 100.0 * lv.total_gy
        same = [x for x in lines if np.array_equal(x.dose_gy, dose)]
        if any(abs(x.level_gy - level) <= 0.04 * top for x in same):
            continue
        label = f"{level:.1f} Gy: {pct} % of {lv.name} ({on})"
        lines.append(_Isodose(level, label, dose))
    return lines[:_MAX_ISODOSE_LINES]


def _image_centre(result: OptionResult, ct_grid: ImageGrid) -> tuple[Vec3, Structure | None]:
    """Centre of the images of an option: the centroid of its highest-dose PTV.

    Without a PTV, the hottest dose voxel; without dose, the CT centre. Returns the centre
    (LPS mm) and the PTV (or ``None``).
    """
    ptv = _main_ptv(result.option)
    if ptv is not None:
        return ptv.centroid_mm, ptv
    dose = result.dose_gy
    if dose.size and np.max(dose) > 0:
        k = np.unravel_index(int(np.argmax(dose)), dose.shape)
        x, y, z = (float(v) for v in result.dose_grid.index_to_lps(k))
        return (x, y, z), None
    return ct_grid.center_mm, None


# a target outline on the images: (structure, colour, line style, line width)
_Outline = tuple[Structure, str, str, float]


def _target_outlines(option: FieldOption) -> list[_Outline]:
    """PTV, CTV and GTV outlines of every target (each structure once)."""
    outlines: list[_Outline] = []
    seen: set[str] = set()
    for t in option.targets:
        for s, col, ls, lw in (
            (t.ptv, _PTV_COLOR, "-", 1.3),
            (t.ctv, _CTV_COLOR, "--", 1.1),
            (t.gtv, _GTV_COLOR, "-", 0.8),
        ):
            if s is not None and not s.is_empty and s.name not in seen:
                seen.add(s.name)
                outlines.append((s, col, ls, lw))
    return outlines


def _oar_outlines(atlas: Atlas, exclude: Iterable[str]) -> list[Structure]:
    """The organs of :data:`_OAR_OUTLINES` the anatomy has (non-empty, not in ``exclude``)."""
    seen = set(exclude)
    oars: list[Structure] = []
    for name in _OAR_OUTLINES:
        if name not in atlas.structures:
            continue
        s = atlas.structures[name]
        if s.name not in seen and not s.is_empty:
            seen.add(s.name)
            oars.append(s)
    return oars


def _unseen_ptvs(option: FieldOption, planes: Sequence[_Plane], limit: int = 3) -> list[Structure]:
    """PTVs of the option that none of ``planes`` crosses (e.g. a distant SBRT target)."""
    out = []
    for ptv, _ in sorted(_ptv_totals(option), key=lambda x: -x[1]):
        if ptv.is_empty:
            continue
        if all(_structure_plane(ptv, p) is None for p in planes):
            out.append(ptv)
    return out[:limit]


def _three_planes(window: list[FloatArray], centre: Sequence[float]) -> list[_Plane]:
    display = _subsample(window)
    return [_make_plane(v, display, centre, window) for v in ("axial", "coronal", "sagittal")]


# ---- dose images ------------------------------------------------------------------------
_Rect = tuple[float, float, float, float]  # (left, bottom, width, height), figure fraction


@dataclass(frozen=True)
class _DoseDisplay:
    """How the dose of one option is shown: colour scale and isodose lines.

    ``scale_gy`` is the highest total prescription (else the highest dose, else 1 Gy);
    the colour-wash (of the total physical dose) starts at :data:`_WASH_FROM` of it.
    ``lines`` are the isodose lines (:class:`_Isodose`), each drawn in ``colors[i]``.
    """

    scale_gy: float
    norm: Normalize
    cmap: Colormap
    lines: list[_Isodose]
    colors: list[tuple[float, float, float, float]]


def _dose_display(result: OptionResult, dose_gy: FloatArray) -> _DoseDisplay:
    rx_total = _total_rx_by_ptv(result.option)
    rx_max = max(rx_total.values()) if rx_total else None
    dmax = float(np.max(dose_gy)) if dose_gy.size else 0.0
    scale = rx_max or dmax or 1.0
    vmax = 1.08 * max(scale, dmax if dmax < 1.5 * scale else scale)
    lines = _isodose_lines(result)
    cmap = matplotlib.colormaps["jet"]
    colors = [cmap(min(line.level_gy / vmax, 1.0)) for line in lines]
    return _DoseDisplay(scale, Normalize(0.0, vmax), cmap, lines, colors)


@dataclass(frozen=True)
class _ImageContent:
    """What the planes of one option show: CT, dose, target outlines and OARs."""

    ct_hu: npt.NDArray[np.float32]
    ct_grid: ImageGrid
    dose_gy: FloatArray
    dose_grid: ImageGrid
    display: _DoseDisplay
    outlines: list[_Outline]
    oars: list[Structure]


def _image_content(comparison: Comparison, result: OptionResult) -> _ImageContent:
    atlas = comparison.atlas
    outlines = _target_outlines(result.option)
    dose = np.asarray(result.dose_gy)
    return _ImageContent(
        ct_hu=np.asarray(atlas.ct_hu, dtype=np.float32),
        ct_grid=atlas.grid,
        dose_gy=dose,
        dose_grid=result.dose_grid,
        display=_dose_display(result, dose),
        outlines=outlines,
        oars=_oar_outlines(atlas, (s.name for s, _, _, _ in outlines)),
    )


_LEGEND_FONT_PT = 7.5


def _legend_columns(
    labels: Sequence[str], width_in: float, *, font_pt: float = _LEGEND_FONT_PT
) -> int:
    """Columns of a legend of ``labels`` that fit in ``width_in`` (at least 1)."""
    char_in = 0.6 * font_pt / 72.0  # mean glyph width of the sans-serif font, generous
    item_in = max(len(s) for s in labels) * char_in + 0.5  # handle, gaps and padding
    return max(1, min(len(labels), int((width_in - 0.2) / item_in)))


def _image_layout(
    planes: Sequence[_Plane], max_height_in: float, legend_labels: Sequence[str] = ("",)
) -> tuple[Figure, list[_Rect], _Rect, int]:
    """Figure with panels of equal height side by side, a colour bar, a legend below.

    The bottom margin holds every row of the legend. Returns the figure, the rectangle
    of each plane's panel, that of the colour bar and the legend's number of columns.
    """
    ratios = []
    for p in planes:
        e = p.extent
        ratios.append(abs(e[1] - e[0]) / max(abs(e[3] - e[2]), 1e-6))
    # fixed layout in inches
    gap, cbar_w, cbar_lab, top, left = 0.08, 0.14, 0.55, 0.28, 0.04
    fixed = left + len(planes) * gap + cbar_w + cbar_lab
    height = float(np.clip((_IMAGE_WIDTH_IN - fixed) / sum(ratios), 2.2, max_height_in))
    width = fixed + height * sum(ratios)
    ncol = _legend_columns(legend_labels, width)
    rows = math.ceil(len(legend_labels) / ncol)
    bottom = 0.14 + rows * 0.19
    fig_h = height + top + bottom
    fig = Figure(figsize=(width, fig_h))
    rects = []
    x = left
    for ratio in ratios:
        rects.append((x / width, bottom / fig_h, height * ratio / width, height / fig_h))
        x += height * ratio + gap
    cbar_rect = (x / width, bottom / fig_h, cbar_w / width, height / fig_h)
    return fig, rects, cbar_rect, ncol


def _draw_ct_and_dose(ax: Axes, p: _Plane, content: _ImageContent) -> None:
    """CT (W400/L40), dose colour-wash and isodose lines on one plane."""
    ext = p.extent
    display = content.display
    ct_plane = _sample_nearest(content.ct_hu, content.ct_grid, p, fill=-1000.0)
    ax.imshow(
        ct_plane,
        cmap="gray",
        vmin=CT_WINDOW_HU[0],
        vmax=CT_WINDOW_HU[1],
        extent=ext,
        origin="lower",
        interpolation="bilinear",
    )
    d_plane = _sample_linear(content.dose_gy, content.dose_grid, p)
    wash = np.ma.masked_less(d_plane, _WASH_FROM * display.scale_gy)
    ax.imshow(
        wash,
        cmap=display.cmap,
        norm=display.norm,
        alpha=0.32,
        extent=ext,
        origin="lower",
        interpolation="bilinear",
    )
    sampled: dict[int, FloatArray] = {id(content.dose_gy): d_plane}
    for line, color in zip(display.lines, display.colors):
        key = id(line.dose_gy)
        if key not in sampled:
            sampled[key] = _sample_linear(line.dose_gy, content.dose_grid, p)
        plane = sampled[key]
        if plane.size and float(plane.max()) >= line.level_gy:
            _draw_contour(ax, p, plane, line.level_gy, color, 1.0, "-")


def _draw_outlines(ax: Axes, p: _Plane, content: _ImageContent) -> tuple[list[str], bool]:
    """OAR (dotted, own colours) and target outlines on one plane.

    Returns the names of the OARs drawn and whether a GTV was drawn.
    """
    drawn_oars: list[str] = []
    has_gtv = False
    for s in content.oars:
        m = _structure_plane(s, p)
        if m is not None:
            _draw_contour(ax, p, m, 0.5, _oar_color(s), 1.1, ":")
            drawn_oars.append(s.name)
    for s, col, ls, lw in content.outlines:
        m = _structure_plane(s, p)
        if m is not None:
            _draw_contour(ax, p, m, 0.5, col, lw, ls)
            has_gtv = has_gtv or s.role == "gtv"
    return drawn_oars, has_gtv


def _label_plane(ax: Axes, p: _Plane) -> None:
    """Limits, orientation, title and side letters (R / L, A / P) of one plane's panel."""
    ext = p.extent
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    if p.view == "axial":
        ax.invert_yaxis()  # anterior at the top
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    where = f"{'xyz'[p.axes[2]]} = {p.normal_mm:.1f} mm"
    title = f"{p.label}: {p.view} ({where})" if p.label else f"{p.view} ({where})"
    ax.set_title(title, fontsize=9, pad=3)
    sides = {"axial": ("R", "L"), "coronal": ("R", "L"), "sagittal": ("A", "P")}[p.view]
    for xpos, letter, ha in ((0.01, sides[0], "left"), (0.99, sides[1], "right")):
        ax.text(
            xpos,
            0.5,
            letter,
            transform=ax.transAxes,
            color="white",
            fontsize=8,
            ha=ha,
            va="center",
            fontweight="bold",
        )


def _draw_colorbar(fig: Figure, rect: _Rect, display: _DoseDisplay) -> None:
    """Dose colour bar (Gy) with the isodose levels marked."""
    cax = fig.add_axes(rect)
    cb = fig.colorbar(ScalarMappable(norm=display.norm, cmap=display.cmap), cax=cax)
    cb.set_label("Dose (Gy)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    for line in display.lines:
        cb.ax.axhline(line.level_gy, color="black", lw=0.8)


def _image_legend_handles(
    display: _DoseDisplay, has_gtv: bool, oars: Sequence[Structure]
) -> list[Line2D]:
    """Legend entries: outlines, isodose lines (what each is of) and each OAR in its colour."""
    handles = [
        Line2D([], [], color=_PTV_COLOR, lw=1.5, label="PTV"),
        Line2D([], [], color=_CTV_COLOR, lw=1.3, ls="--", label="CTV"),
    ]
    if has_gtv:
        handles.append(Line2D([], [], color=_GTV_COLOR, lw=1.0, label="GTV"))
    handles += [
        Line2D([], [], color=color, lw=1.6, label=line.label)
        for line, color in zip(display.lines, display.colors)
    ]
    handles += [Line2D([], [], color=_oar_color(s), lw=1.4, ls=":", label=s.name) for s in oars]
    return handles


def _oar_color(structure: Structure) -> ColorType:
    """Outline colour of an organ: :data:`_OAR_COLORS`, else the structure's own."""
    if structure.name in _OAR_COLORS:
        return _OAR_COLORS[structure.name]
    r, g, b = structure.color
    return (r / 255, g / 255, b / 255)


def _image_legend(fig: Figure, handles: Sequence[Line2D], ncol: int) -> None:
    """Legend below the panels, in ``ncol`` columns (the layout left room for its rows)."""
    leg = fig.legend(
        handles=list(handles),
        loc="lower center",
        ncol=ncol,
        fontsize=_LEGEND_FONT_PT,
        frameon=True,
        bbox_to_anchor=(0.5, 0.0),
        borderaxespad=0.1,
        handlelength=1.6,
        columnspacing=1.2,
    )
    leg.get_frame().set_facecolor("#5a5f69")
    leg.get_frame().set_edgecolor("none")
    for text in leg.get_texts():
        text.set_color("white")


def _option_images(
    comparison: Comparison,
    result: OptionResult,
    window: list[FloatArray],
    planes: Sequence[_Plane] | None = None,
    *,
    max_height_in: float = 4.8,
) -> str:
    """Axial, coronal and sagittal images of one option as a PNG ``data:`` URI.

    CT (W400/L40), dose colour-wash, isodose lines, PTV/CTV/GTV and OAR outlines;
    ``planes`` default to the planes through the centroid of the highest-dose PTV.
    """
    fig = _option_images_figure(comparison, result, window, planes, max_height_in=max_height_in)
    return _fig_to_data_uri(fig, "png")


def _option_images_figure(
    comparison: Comparison,
    result: OptionResult,
    window: list[FloatArray],
    planes: Sequence[_Plane] | None = None,
    *,
    max_height_in: float = 4.8,
) -> Figure:
    """The figure of :func:`_option_images` (for tests of its layout)."""
    content = _image_content(comparison, result)
    if planes is None:
        planes = _three_planes(window, _image_centre(result, content.ct_grid)[0])
    shown = [s for s in content.oars if any(_structure_plane(s, p) is not None for p in planes)]
    has_gtv = any(
        s.role == "gtv" and any(_structure_plane(s, p) is not None for p in planes)
        for s, _, _, _ in content.outlines
    )
    handles = _image_legend_handles(content.display, has_gtv, shown)
    labels = [str(h.get_label()) for h in handles]
    fig, rects, cbar_rect, ncol = _image_layout(planes, max_height_in, labels)
    for rect, p in zip(rects, planes):
        ax = fig.add_axes(rect)
        _draw_ct_and_dose(ax, p, content)
        _draw_outlines(ax, p, content)
        _label_plane(ax, p)
    _draw_colorbar(fig, cbar_rect, content.display)
    _image_legend(fig, handles, ncol)
    return fig


# ---------------------------------------------------------------------------- HTML pieces
def _rtplan_version() -> str:
    import rtplan  # the package imports this module: read its version when rendering

    return rtplan.__version__


def _ct_grid_text(grid: ImageGrid) -> str:
    """``"nx × ny × nz voxels of sx × sy × sz mm (x × y × z)"``."""
    sp = grid.spacing_mm
    return (
        f"{grid.shape[2]} \u00d7 {grid.shape[1]} \u00d7 "
        f"{grid.shape[0]} voxels of {sp[2]:.3g} \u00d7 {sp[1]:.3g} "
        f"\u00d7 {sp[0]:.3g} mm (x \u00d7 y \u00d7 z)"
    )


def _inputs_table(comparison: Comparison) -> str:
    """The inputs of the case: anatomy, CT grid, structures, protocol and options."""
    atlas = comparison.atlas
    protocol = comparison.protocol
    rows: list[tuple[str, str]] = [
        ("Case", _esc(comparison.case)),
        ("Anatomy", _esc(atlas.name)),
        ("CT grid", _esc(_ct_grid_text(atlas.grid))),
    ]
    n_structures = len(atlas.structures)
    if n_structures:
        rows.append(("Structures", f"{n_structures} in the anatomy"))
    rows.append(("Protocol", _esc(protocol.name)))
    rows.append(("Options compared", _esc(", ".join(comparison.options))))
    parts = ['<div><h3>Inputs</h3><table class="kv">']
    parts += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    parts.append("</table></div>")
    return "\n".join(parts)


#: How the stage code of the report relates to the PROMISE miTNM string.
STAGE_FORMS = (
    "Stage code in the UCLA form (@nikitas2026_ucla): N1 stands for any pelvic nodal "
    "involvement and M for the highest distant category. The PROMISE miTNM string "
    "(@seifert2023_promise2) counts nodal regions: miN1 one region, miN2 two or more."
)


def _stage_headline(stage: Stage) -> str:
    """``"T0N1M0 (PROMISE miTNM: miT0 miN2(OB,OP) miM0)"``: both forms, never only one."""
    if stage.detailed and stage.detailed != stage.string:
        return f"{stage.string} (PROMISE miTNM: {stage.detailed})"
    return stage.string


def _stage_facts(stage: Stage) -> list[tuple[str, str]]:
    """Label and text of the stage details shown under the stage code."""
    kv: list[tuple[str, str]] = []
    if stage.detailed and stage.detailed != stage.string:
        kv.append(("PROMISE miTNM", stage.detailed))
    kv.append(("UCLA group", stage.ucla_group))
    n_dist = stage.n_distant_lesions
    extra = f" ({n_dist} distant lesion{'s' if n_dist != 1 else ''})" if n_dist else ""
    kv.append(("Oligometastatic", ("yes" if stage.oligometastatic else "no") + extra))
    optional: tuple[tuple[str, object], ...] = (
        ("Nodal regions", stage.nodal_regions),
        ("Distant", stage.m_categories),
        ("Bone pattern", stage.bone_pattern),
        ("PROMISE version", stage.promise_version),
    )
    kv += [(label, _fmt_plain(v)) for label, v in optional if not _is_blank(v)]
    return kv


def _stage_block(stage: Stage | None) -> str:
    """The PROMISE miTNM stage: code, details and the notes of staging (``<div>`` left open)."""
    parts = ["<div><h3>Stage (PSMA PET, PROMISE miTNM)</h3>"]
    if stage is None:
        parts.append('<p class="note">No stage was given.</p>')
    else:
        code = stage.string
        parts.append(f'<p class="stage-line">Stage <span class="code">{_esc(code)}</span></p>')
        parts.append(f'<p class="note" id="stage-forms">{_prose(STAGE_FORMS)}</p>')
        parts.append('<table class="kv">')
        parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _stage_facts(stage)]
        parts.append("</table>")
        if stage.notes:
            parts.append('<ul class="sources">')
            parts += [f"<li>{_prose(n)}</li>" for n in stage.notes]
            parts.append("</ul>")
    return "\n".join(parts)


def _stage_section(comparison: Comparison) -> str:
    stage = comparison.stage
    parts = ['<section id="case">', "<h2>Case</h2>", '<div class="two-col">']
    parts.append(_inputs_table(comparison))
    parts.append(_stage_block(stage))
    parts.append("</div></div>")
    parts.append(_lesion_table(comparison))
    parts.append("</section>")
    return "\n".join(parts)


def _fmt_plain(v: object) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return _format_value(v)
    if isinstance(v, (tuple, list)):
        return ", ".join(_fmt_plain(x) for x in v)
    return str(v)


def _fmt_number(v: float | None, small: int = 2) -> str:
    f = _finite(v)
    if f is None:
        return _MISSING
    return f"{f:.{small}f}" if f != 0 and abs(f) < 1 else f"{f:.1f}"


def _is_blank(v: object) -> bool:
    return v is None or v == "" or v == () or v == []


# ---- lesion table -------------------------------------------------------------------------
# Numbers are shown as in Lesion.row(): volume to 0.001 cc, SUVs to 0.01, centroid to 0.1 mm.
def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt_region(lesion: Lesion) -> str:
    text = _fmt_plain(lesion.region)
    side = lesion.side
    if side and side not in text:
        text = f"{text} ({side})" if text else side
    if lesion.region_uncertain:
        text += " (uncertain)"
    return text


def _lesion_centroid(lesion: Lesion) -> str:
    x, y, z = lesion.centroid_mm
    return _fmt_plain((round(x, 1), round(y, 1), round(z, 1)))


@dataclass(frozen=True)
class _LesionColumn:
    """A column of the lesion table, shown when ``shown`` holds for any lesion."""

    header: str
    numeric: bool
    cell: Callable[[Lesion], str]
    shown: Callable[[Lesion], bool]


def _always(lesion: Lesion) -> bool:
    return True


_LESION_COLUMNS: tuple[_LesionColumn, ...] = (
    _LesionColumn("Lesion", False, lambda les: _fmt_plain(les.name or les.id), _always),
    _LesionColumn(
        "miTNM",
        False,
        lambda les: _fmt_plain(les.category),
        lambda les: not _is_blank(les.category),
    ),
    _LesionColumn(
        "Region",
        False,
        _fmt_region,
        lambda les: not (_is_blank(les.region) and _is_blank(les.side)),
    ),
    _LesionColumn(
        "Volume (cc)", True, lambda les: _fmt_number(_rounded(les.volume_cc, 3)), _always
    ),
    _LesionColumn(
        "SUVmax",
        True,
        lambda les: _fmt_number(_rounded(les.suv_max, 2)),
        lambda les: les.suv_max is not None,
    ),
    _LesionColumn(
        "SUVpeak",
        True,
        lambda les: _fmt_number(_rounded(les.suv_peak, 2)),
        lambda les: les.suv_peak is not None,
    ),
    _LesionColumn(
        "miPSMA",
        True,
        lambda les: _fmt_plain(les.mipsma_score),
        lambda les: les.mipsma_score is not None,
    ),
    _LesionColumn("Centroid x, y, z (mm)", True, _lesion_centroid, _always),
    _LesionColumn(
        "Notes",
        False,
        lambda les: _without_fact_sheet("; ".join(les.notes)),
        lambda les: bool("; ".join(les.notes)),
    ),
)


def _lesions_of(comparison: Comparison) -> list[Lesion]:
    """The staged lesions (of the stage), else the lesions of the comparison, else none."""
    stage = comparison.stage
    if stage is not None:
        return list(stage.lesions)
    lesions = comparison.lesions
    return [] if lesions is None else list(lesions)


def _skipped_list(comparison: Comparison) -> str:
    """The options that could not be built on this anatomy, each with what it lacks."""
    if not comparison.skipped:
        return ""
    items = "".join(f"<li>{_esc(s.text)}</li>" for s in comparison.skipped)
    return (
        '<h3 id="skipped">Options not built on this anatomy</h3>'
        '<p class="note">Suggested for this stage, but the anatomy lacks what they need; '
        "the options above were compared without them.</p>"
        f'<ul class="sources">{items}</ul>'
    )


def _eqd2_cell(option: FieldOption) -> str:
    """One line per PTV: its physical prescription and its EQD2, so schedules compare."""
    return "".join(
        f'<div class="keep"><b>{_esc(p.ptv)}</b> {_esc(p.schedule)} = '
        f"{_format_gy(p.eqd2_gy)} Gy EQD2</div>"
        for p in prescription_eqd2(option)
    )


def _uncertain_list(comparison: Comparison) -> str:
    """The lesions near the border of two categories, with both candidates."""
    stage = comparison.stage
    if stage is None or not stage.uncertain:
        return ""
    items = "".join(f"<li>{_esc(u.text)}</li>" for u in stage.uncertain)
    return (
        '<p class="note">Near the border of two categories (staged as the first; '
        f'check the images):</p><ul id="uncertain">{items}</ul>'
    )


def _lesion_table(comparison: Comparison) -> str:
    lesions = _lesions_of(comparison)
    if not lesions:
        return (
            '<h3>Lesions</h3><p class="note">No PSMA-positive lesion '
            "(no target beyond the standard volumes).</p>"
        )
    cols = [c for c in _LESION_COLUMNS if any(c.shown(les) for les in lesions)]
    out = ['<h3>Lesions</h3><table id="lesions"><thead><tr>']
    for c in cols:
        cls = ' class="num"' if c.numeric else ""
        out.append(f"<th{cls}>{_esc(c.header)}</th>")
    out.append("</tr></thead><tbody>")
    for les in lesions:
        out.append("<tr>")
        for c in cols:
            cls = ' class="num"' if c.numeric else ""
            out.append(f"<td{cls}>{_esc(c.cell(les))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    out.append(_uncertain_list(comparison))
    return "".join(out)


# ---- options ------------------------------------------------------------------------------
def _targets_short(option: FieldOption) -> str:
    """One line per PTV: its prescription per course and the total (highest first)."""
    totals = _total_rx_by_ptv(option)
    by_ptv: dict[str, list[_TargetInfo]] = {}
    for t in _targets(option):
        by_ptv.setdefault(t.ptv, []).append(t)
    lines = []
    for name, ts in sorted(by_ptv.items(), key=lambda kv: -totals.get(kv[0], 0.0)):
        parts = " + ".join(f"{_format_gy(t.prescription_gy)} Gy / {t.fractions} fx" for t in ts)
        total = totals.get(name)
        if total is not None and (len(ts) > 1 or abs(total - ts[0].prescription_gy) > 1e-6):
            parts += f" \u2192 {_format_gy(total)} Gy"
        lines.append(f'<div class="keep"><b>{_esc(name)}</b> {parts}</div>')
    return "".join(lines)


def _targets_long(option: FieldOption) -> str:
    """One line per target and course: prescription, course, technique and volumes."""
    totals = _total_rx_by_ptv(option)
    lines = []
    for t in _targets(option):
        text = f"<b>{_esc(t.ptv)}</b> {_format_gy(t.prescription_gy)} Gy / {t.fractions} fx"
        if t.dosed != t.ptv:
            text += f" (dosed as {_esc(t.dosed)}: without the higher targets)"
        total = totals.get(t.ptv)
        if total is not None and abs(total - t.prescription_gy) > 1e-6:
            text += f" (total {_format_gy(total)} Gy)"
        text += f' <span class="note">{_esc(t.course)}, {_esc(t.technique.upper())}</span>'
        vol = [] if _finite(t.ptv_cc) is None else [f"PTV {t.ptv_cc:.1f} cc"]
        if t.ctv:
            vol.append(f"{_esc(t.ctv)} {_format_value(t.ctv_cc)} cc")
        if t.gtv:
            vol.append(f"{_esc(t.gtv)} {_format_value(t.gtv_cc)} cc")
        if vol:
            text += '<span class="hr">' + " \u00b7 ".join(vol) + "</span>"
        lines.append(f'<div class="keep">{text}</div>')
    return "".join(lines)


def _targets_cell(option: FieldOption, *, volumes: bool) -> str:
    """Targets of an option as HTML lines.

    Short form (``volumes=False``), one line per PTV: its prescription per course and
    the total, e.g. ``PTV_6660 45 Gy / 25 fx + 21.6 Gy / 12 fx = 66.6 Gy``. Long form, one
    line per target and course with the course, technique and volumes.
    """
    return _targets_long(option) if volumes else _targets_short(option)


def _fails_only_in(
    rows: Sequence[MetricRow], option: str, options: Sequence[str]
) -> list[MetricRow]:
    """Rows that ``option`` fails and no other option fails (they pass, or it does not apply)."""
    return [
        r
        for r in _failed_rows(rows, option)
        if not any(r.status.get(o) == "fail" for o in options if o != option)
    ]


def _failed_by_all(rows: Sequence[MetricRow], options: Sequence[str]) -> list[MetricRow]:
    """Rows every option fails (with more than one option)."""
    if len(options) < 2:
        return []
    return [r for r in rows if all(r.status.get(o) == "fail" for o in options)]


def _limit_value(row: MetricRow) -> float | None:
    m = _LIMIT_NUMBER.search(row.limit or "")
    return None if m is None else float(m.group(1))


def _relative_headroom_pct(row: MetricRow, option: str) -> float | None:
    """Headroom as a percentage of the limit (negative when failing), or ``None``."""
    h = _finite(row.headroom.get(option))
    lim = _limit_value(row)
    if h is None or lim is None or lim == 0:
        return None
    return 100.0 * h / abs(lim)


def _worst_headroom_cell(
    rows: Sequence[MetricRow], option: str, shared: Sequence[MetricRow] = ()
) -> str:
    """Glance cell: the checked constraint with the least headroom (relative to its limit).

    Constraints every option fails (``shared``, listed in a row of their own) are left out,
    so the cell shows where this option stands apart.
    """
    skip = {id(r) for r in shared}
    scored = [
        (v, r)
        for r in _checked_rows(rows, option)
        if id(r) not in skip and (v := _relative_headroom_pct(r, option)) is not None
    ]
    if not scored:
        return f'<td data-option="{_esc(option)}">{_MISSING}</td>'
    v, r = min(scored, key=lambda x: x[0])
    status = r.status.get(option) or ""
    head = _format_headroom(r.headroom.get(option))
    return (
        f'<td class="{status}" data-option="{_esc(option)}"><b>{_esc(r.label)}</b> '
        f"{_esc(head)} ({v:+.0f} % of the limit)"
        f'<span class="hr">{_esc(r.basis)}</span></td>'
    )


def _constraints_cell(rows: Sequence[MetricRow], option: str, options: Sequence[str]) -> str:
    """Glance cell: how many checked constraints the option fails, and which set it apart.

    Listed: the constraints it fails that some other option does not fail ("only here"
    when no other option fails it; the others pass it or it does not apply to them).
    """
    failed = _failed_rows(rows, option)
    checked = _checked_rows(rows, option)
    cls = "fail" if failed else "pass"
    mark = _FAIL_MARK if failed else _PASS_MARK
    only = {id(r) for r in _fails_only_in(rows, option, options)}
    apart = [r for r in failed if any(r.status.get(o) != "fail" for o in options if o != option)]
    names = "".join(
        f'<span class="hr">{"only here" if id(f) in only else "not in every option"}: '
        f"{_esc(f.label)} ({_format_headroom(f.headroom.get(option))})</span>"
        for f in apart
    )
    return (
        f'<td class="{cls}" data-failed="{len(failed)}" data-option="{_esc(option)}">'
        f'<span class="badge {cls}">{mark} {len(failed)} of {len(checked)} failed</span>'
        f"{names}</td>"
    )


def _coverage_cell(coverage: Sequence[MetricRow], option: str) -> str:
    """Glance cell: the lowest V95%Rx of the option's PTVs, with the PTV named."""
    vals = [(v, r.structure) for r in coverage if (v := _finite(r.values.get(option))) is not None]
    if not vals:
        return f'<td class="num" data-option="{_esc(option)}">{_MISSING}</td>'
    v, name = min(vals)
    return (
        f'<td class="num" data-option="{_esc(option)}"><span class="v">'
        f'{_format_value(v)}</span><span class="hr">{_esc(name)}</span></td>'
    )


def _glance_section(comparison: Comparison, colors: dict[str, str]) -> str:
    rows = comparison.table.rows
    names = comparison.options
    out = [
        '<section id="glance">',
        "<h2>At a glance</h2>",
        '<table id="glance-table" class="wide"><thead><tr><th></th>',
    ]
    for name in names:
        out.append(f'<th data-option="{_esc(name)}">{_column_head(comparison, name, colors)}</th>')
    out.append("</tr></thead><tbody>")

    def row(label: str, cells: Iterable[str], attrs: str = "") -> None:
        out.append(f"<tr{attrs}><th>{label}</th>{''.join(cells)}</tr>")

    results = comparison.results
    row("Targets (Rx)", (f"<td>{_targets_cell(r.option, volumes=False)}</td>" for r in results))
    row("ADT", (f"<td>{'yes' if r.option.adt else 'no'}</td>" for r in results))
    hot = next((r for r in rows if r.group == "Plan"), None)
    if hot is not None:
        row(
            f'Hot spot [{_esc(hot.unit)}]<span class="hr">{_esc(hot.limit or "")}; '
            f"{_esc(hot.basis)}</span>",
            [_value_cell(hot, n) for n in names],
            ' id="glance-hot-spot"',
        )
    row(
        'Constraints<span class="hr">failed, and those not failed by every option</span>',
        [_constraints_cell(rows, n, names) for n in names],
        ' id="glance-failed"',
    )
    shared = _failed_by_all(rows, names)
    row(
        'Worst headroom<span class="hr">least room to its limit, of the constraints not '
        "failed by every option</span>",
        [_worst_headroom_cell(rows, n, shared) for n in names],
        ' id="glance-worst"',
    )
    span = f' colspan="{len(names)}"'
    if shared:
        labels = ", ".join(r.label for r in shared)
        row(
            "Failed by every option",
            [f'<td class="fail"{span}>{_esc(labels)}</td>'],
            ' id="glance-shared"',
        )
    missing = [r for r in rows if r.not_evaluated]
    if missing:
        items = sorted({f"{r.structure or r.metric}: {r.note}" for r in missing})
        row(
            "Not evaluated",
            [f'<td class="nev"{span}>{_esc("; ".join(items))}</td>'],
            ' id="glance-not-evaluated"',
        )
    coverage = [
        r
        for r in rows
        if r.group.lower().startswith("target") and _norm_metric(r.metric) == "v95%rx"
    ]
    if coverage:
        row(
            'PTV coverage [%]<span class="hr">lowest V95%Rx</span>',
            [_coverage_cell(coverage, n) for n in names],
            ' id="glance-coverage" data-row="PTV coverage"',
        )
    for label, structs, metrics, group in _KEY_METRICS:
        krow = _find_key_row(rows, structs, metrics, group)
        if krow is None:
            continue
        cells = [_value_cell(krow, n) for n in names]
        unit = f" [{krow.unit}]" if krow.unit else ""
        lim = f'<span class="hr">{_esc(krow.limit)}</span>' if krow.limit else ""
        row(f"{_esc(label)}{_esc(unit)}{lim}", cells, f' data-row="{_esc(krow.label)}"')
    out.append("</tbody></table>")
    out.append(
        f'<p class="note">{_PASS_MARK} meets the protocol limit, {_FAIL_MARK} fails it; '
        "the signed number under a value is the headroom to the limit in the row's unit "
        "(negative: by how much it fails); the worst headroom is the constraint closest "
        "to (or furthest over) its limit, relative to the limit. Estimated doses, not a "
        f"treatment plan. {_glance_organ_sentence(comparison)}"
        f"{_imported_sentence(comparison)}</p>"
    )
    out.append("</section>")
    return "\n".join(out)


def _glance_organ_sentence(comparison: Comparison) -> str:
    """How far to trust the estimated organ values against their limits (IMRT options)."""
    if not _has_imrt(comparison):
        return ""
    if not comparison.spared_organs:
        return (
            "The estimate has no OAR sparing here: intermediate-dose metrics (V40-V50) of "
            "organs next to an IMRT/VMAT PTV (rectum, bladder) are pessimistic and fail more "
            "often than an optimised plan would; compare them between options rather than "
            "with the limit."
        )
    return (
        "Organ values of IMRT/VMAT options are estimated with the calibrated sparing; "
        "where an estimated organ metric in the metrics table shows a \u00b1, that is the "
        "calibration's spread on held-out plans: a value closer to its limit than that may "
        "pass or fail in a real plan."
    )


def _imported_sentence(comparison: Comparison) -> str:
    """A sentence on the imported columns (``""`` when there is none)."""
    if not _imported(comparison):
        return ""
    return (
        " Columns marked <i>imported</i> hold a planning system's dose (the file under the "
        "column's name), resampled to rtplan's dose grid and evaluated on the same "
        "structures; the model's limits do not apply to them."
    )


def _uncertainty_mark(row: MetricRow, option: str, estimated: Collection[str]) -> str:
    """The calibration spread of an estimated metric (``""`` when it has none).

    Only rows on the composite physical dose: the calibration compares physical doses. An
    estimate of exactly 0 (no voxel at a V metric's dose) carries none: the calibration's
    rows leave out plans that estimate and reference both put at zero, and in the reference
    plans an estimate of 0 came with a reference of 0 or under 1 cc (docs/dose_model.md 4.7).
    """
    if option not in estimated or row.basis != _BASIS_PHYSICAL or row.group != "OAR":
        return ""
    u = CALIBRATION.uncertainty(row.structure, row.metric, row.unit)
    value = _finite(row.values.get(option))
    if u is None or value is None or value == 0.0:
        return ""
    title = (
        f"estimate minus optimised reference plans, held-out anatomies: median {u.bias:+.1f}, "
        f"root-mean-square {u.spread:.1f} {u.unit}, n={u.n} (docs/dose_model.md 4.7)"
    )
    return f'<span class="unc" title="{_esc(title)}">{_esc(u.text)}</span>'


def _value_cell(row: MetricRow, option: str, estimated: Collection[str] = ()) -> str:
    value = row.values.get(option)
    status = row.status.get(option)
    if status == _NOT_EVALUATED:
        return (
            f'<td class="num nev" data-option="{_esc(option)}" data-status="{status}">'
            f'<span class="v">not evaluated</span></td>'
        )
    text = _format_value(value, row.unit)
    cls = ["num"]
    mark = ""
    hr = ""
    if status in ("pass", "fail") and _finite(value) is not None:
        cls.append(status)
        mark = f'<span class="mark">{_PASS_MARK if status == "pass" else _FAIL_MARK}</span>'
        h = _format_headroom(row.headroom.get(option))
        if h:
            hr = f'<span class="hr">{h}</span>'
    st = f' data-status="{status}"' if status else ""
    unc = _uncertainty_mark(row, option, estimated)
    return (
        f'<td class="{" ".join(cls)}" data-option="{_esc(option)}"{st}>'
        f'<span class="v">{text}</span>{unc}{mark}{hr}</td>'
    )


def _options_section(comparison: Comparison, colors: dict[str, str]) -> str:
    results = comparison.results
    out = [
        '<section id="options" class="page">',
        "<h2>Options side by side</h2>",
        '<table id="options-table" class="wide"><thead><tr><th></th>',
    ]
    for r in results:
        out.append(f"<th>{_column_head(comparison, r.name, colors)}</th>")
    out.append("</tr></thead><tbody>")

    def row(label: str, cells: Iterable[str]) -> None:
        out.append(f"<tr><th>{label}</th>{''.join(cells)}</tr>")

    row("Description", (f"<td>{_prose(r.option.description)}</td>" for r in results))
    course_cells = []
    for r in results:
        lines = [
            f"{_esc(c.name)}: {_esc(c.technique.upper())}, {c.fractions} fx"
            for c in r.option.courses
        ]
        course_cells.append(f"<td>{'<br>'.join(lines)}</td>")
    row("Courses", course_cells)
    row(
        "Targets, Rx, volumes",
        (f"<td>{_targets_cell(r.option, volumes=True)}</td>" for r in results),
    )
    row(
        "Prescription EQD2 (\u03b1/\u03b2 1.5 Gy)",
        (f"<td>{_eqd2_cell(r.option)}</td>" for r in results),
    )
    row("ADT", (f"<td>{'yes' if r.option.adt else 'no'}</td>" for r in results))
    row(
        "Evidence",
        (f'<td class="evidence">{_prose(r.option.evidence or _MISSING)}</td>' for r in results),
    )
    out.append("</tbody></table>")
    out.append(_skipped_list(comparison))
    out.append(_metrics_table(comparison, colors))
    out.append("</section>")
    return "\n".join(out)


_NOT_EVALUATED = "not evaluated"  # rtplan.compare.NOT_EVALUATED (compare imports this module)
_BASIS_PHYSICAL = "composite physical"  # rtplan.compare.BASIS_PHYSICAL

_GROUP_TITLES = {
    "Target": "Targets: coverage (courses treating each target) and hot spots",
    "Plan": "Plan: the worst target hot spot of each option",
    "OAR": "Organs at risk against the protocol constraints",
    "OAR (SBRT course)": "Organs at risk: SBRT constraints on each SBRT course's own dose",
    "OAR (SBRT composite)": (
        "Organs at risk: SBRT maximum-dose limits on the sum of every course, as EQD2 "
        "(TG-101's volume limits describe an SBRT course alone and are checked per course "
        "above; the composite's volumes are judged by the conventional limits)"
    ),
    "NTCP": "NTCP (LKB model)",
}


def _calibration_sentence(shown: bool) -> str:
    """What the \u00b1 after an estimated organ metric means (``""`` when none is shown)."""
    if not (shown and CALIBRATION.uncertainties):
        return ""
    return (
        "The \u00b1 after an estimated organ metric is the root-mean-square difference "
        "between the estimate and IMRT plans optimised with pyRadPlan on held-out anatomies "
        "(n plans), on the composite physical dose of options with an IMRT/VMAT course; EQD2 "
        "rows, imported doses and other options carry none. The model and its calibration: "
        f"docs/dose_model.md section 4.7 ({_esc(CALIBRATION.source)})."
    )


def _metrics_table(comparison: Comparison, colors: dict[str, str]) -> str:
    table = comparison.table
    options = list(table.options)
    out = [
        "<h3>Dose-volume metrics and constraints</h3>",
        '<table id="metrics" class="wide"><thead><tr><th>Structure</th><th>Metric</th>'
        '<th class="basis">Dose (basis)</th><th>Limit</th>',
    ]
    for o in options:
        out.append(f'<th class="num">{_column_head(comparison, o, colors)}</th>')
    out.append("<th>Source and note</th></tr></thead><tbody>")
    group = None
    previous = None
    # the calibration's spread belongs to estimated IMRT/VMAT doses (the calibrated model)
    estimated = {
        r.name
        for r in comparison.results
        if r.dose_source == "estimated" and "imrt" in r.option.techniques
    }
    for r in table.rows:
        if r.group != group:
            group = r.group
            title = _GROUP_TITLES.get(group, group)
            out.append(
                f'<tr class="group"><th colspan="{len(options) + 5}">{_esc(title)}</th></tr>'
            )
            previous = None
        unit = f" [{r.unit}]" if r.unit else ""
        repeat = r.structure == previous
        previous = r.structure
        cls = ' class="rep"' if repeat else ' class="first"'
        out.append(
            f'<tr data-row="{_esc(r.label)}" data-group="{_esc(r.group)}" '
            f'data-basis="{_esc(r.basis)}"{cls}>'
            f"<th>{_esc(r.structure)}</th><td>{_esc(r.metric)}{_esc(unit)}</td>"
            f'<td class="basis">{_esc(r.basis or _MISSING)}</td>'
            f'<td class="lim">{_esc(r.limit or "")}</td>'
        )
        out += [_value_cell(r, o, estimated) for o in options]
        note = f'<span class="row-note">Note: {_prose(r.note)}</span>' if r.note else ""
        out.append(f'<td class="src">{_prose(r.source)}{note}</td></tr>')
    out.append("</tbody></table>")
    out.append(
        f'<p class="note">{_PASS_MARK} pass, {_FAIL_MARK} fail; the signed number is the '
        "headroom to the limit in the row's unit. A dash: the metric does not apply to "
        "that option; <i>not evaluated</i>: the constraint could not be checked (its note "
        "says why, e.g. an organ the anatomy lacks). <b>Dose (basis)</b> says which dose a "
        "row is of: the courses treating a target (physical), the sum of every course "
        "(composite physical), the composite converted to EQD2 with the alpha/beta shown "
        "(limits converted alike, see the note), the conventional courses summed (target "
        "hot spots), or one SBRT course. "
        + _calibration_sentence(any('class="unc"' in line for line in out))
        + "</p>"
    )
    return "\n".join(out)


def _protocol_sources(comparison: Comparison) -> list[str]:
    """Sources of the protocol's values and constraints and of the table rows, unique."""
    protocol = comparison.protocol
    seen: dict[str, None] = {}
    for _, _, source in protocol.rows():
        if source:
            seen[source] = None
    for c in protocol.constraints:
        if c.source:
            seen[c.source] = None
    for r in comparison.table.rows:
        if r.source:
            seen[r.source] = None
    return list(seen)


#: Tracer whose figures the report shows when none is given: the tracer of the
#: detection-rate study by PSA band (Fendler et al., JAMA Oncol 2019); a tool default.
DEFAULT_TRACER = "68Ga-PSMA-11"


def _context_lines(comparison: Comparison) -> list[str]:
    """What the PET result means at this PSA, and the published subgroups it falls in."""
    stage = comparison.stage
    if stage is None:
        return []
    context = comparison.context if comparison.context is not None else ClinicalContext()
    tracer = comparison.tracer.name if comparison.tracer is not None else DEFAULT_TRACER
    lines = scan_meaning(stage.string, context, tracer)
    if comparison.tracer is None and context.psa_ng_ml is not None:
        lines.append(f"Tracer not given: the {DEFAULT_TRACER} figures are shown.")
    return lines + subgroup_lines(stage.string, context)


def _context_section(comparison: Comparison) -> str:
    """The clinical inputs and what the scan's result means at this PSA (empty without a stage)."""
    lines = _context_lines(comparison)
    if not lines:
        return ""
    out = ['<section id="context">', "<h2>The scan in its clinical context</h2>"]
    given = comparison.context.lines() if comparison.context is not None else []
    if comparison.tracer is not None:
        given.insert(0, f"Tracer {comparison.tracer.name}")
    if given:
        out.append(f"<p>{_esc('; '.join(given))}.</p>")
    out.append('<ul class="evidence">')
    out += [f"<li>{_prose(line)}</li>" for line in lines]
    out.append("</ul>")
    out.append(
        '<p class="note">Published figures for the group; not a prediction for this patient.</p>'
    )
    out.append("</section>")
    return "\n".join(out)


def _model_section(comparison: Comparison) -> str:
    protocol = comparison.protocol
    out = [
        '<section id="model" class="page">',
        "<h2>Dose model, protocol and provenance</h2>",
        "<h3>Dose model and its limits</h3>",
    ]
    model = comparison.dose_model or "(the dose model did not describe itself)"
    out.append(f"<p>{_esc(model)}</p>")
    out.append(f'<p class="disclaimer">{_esc(_model_limits(comparison))}</p>')
    out.append(_imported_doses_text(comparison))
    out.append('<h3>Protocol</h3><table class="kv">')
    out.append(f"<tr><th>Name</th><td>{_esc(protocol.name)}</td></tr>")
    for label, value in (("Title", protocol.title), ("File", protocol.path)):
        if value:
            out.append(f"<tr><th>{label}</th><td>{_esc(value)}</td></tr>")
    out.append("</table>")
    sources = _protocol_sources(comparison)
    if sources:
        out.append(
            '<p class="note">Sources of the protocol values and constraints:</p>'
            '<ul class="sources">'
        )
        out += [f"<li>{_prose(s)}</li>" for s in sources]
        out.append("</ul>")
    created = comparison.created
    out.append('<h3>Provenance</h3><table class="kv">')
    out.append(f"<tr><th>rtplan version</th><td>{_esc(_rtplan_version())}</td></tr>")
    out.append(f"<tr><th>Comparison computed</th><td>{created:%Y-%m-%d %H:%M}</td></tr>")
    out.append(f"<tr><th>Report written</th><td>{datetime.now():%Y-%m-%d %H:%M}</td></tr>")
    out.append("</table></section>")
    return "\n".join(out)


def _imported_doses_text(comparison: Comparison) -> str:
    """What each imported column's dose is, and what it does not cover (``""`` if none)."""
    imported = _imported(comparison)
    if not imported:
        return ""
    out = [
        '<h3>Imported doses</h3><p class="note">The model and its limits above apply to the '
        "estimated columns only. The imported columns hold doses rtplan did not compute: it "
        "read their units, grid, summation type and frame of reference, interpolated them "
        "(trilinear) onto its dose grid and evaluated them on the same structures as the "
        "estimates.</p>",
        '<ul class="imported-doses">',
    ]
    for r in imported:
        text = f"<b>{_esc(r.name)}</b>: {_esc(r.dose_note)}"
        if r.uncovered_pct:
            parts = ", ".join(f"{name} {pct:.1f} %" for name, pct in r.uncovered_pct.items())
            text += (
                f"; its dose grid does not cover all of {_esc(parts)} (the part outside "
                "counts as 0 Gy)"
            )
        out.append(f"<li>{text}</li>")
    out.append("</ul>")
    return "\n".join(out)


def _extra_axial_figure(
    comparison: Comparison, result: OptionResult, window: list[FloatArray], planes: list[_Plane]
) -> str | None:
    """Axial planes through the PTVs that ``planes`` miss, as a ``<figure>``, or ``None``."""
    extras = _unseen_ptvs(result.option, planes, limit=3)
    if not extras:
        return None
    display = _subsample(window)
    axials = [
        dataclasses.replace(_make_plane("axial", display, p.centroid_mm, window), label=p.name)
        for p in extras
    ]
    uri = _option_images(comparison, result, window, axials, max_height_in=3.2)
    names = ", ".join(p.name for p in extras)
    return (
        f'<figure class="keep"><img alt="Dose of {_esc(result.name)} through {_esc(names)}"'
        f' src="{uri}"><figcaption>{_esc(result.name)}: axial planes through the '
        f"centroids of the targets the planes above miss ({_esc(names)})."
        "</figcaption></figure>"
    )


def _images_section(comparison: Comparison, colors: dict[str, str]) -> str:
    out = ['<section id="images" class="page"><h2>Dose distributions</h2>']
    atlas = comparison.atlas
    ct_grid = atlas.grid
    out.append(
        '<p class="note">Per option: planes through the centroid of its highest-dose PTV '
        "(and through any PTV those planes miss). CT W400/L40; dose colour-wash of the "
        f"total physical dose from {100 * _WASH_FROM:.0f} % of the highest prescription; "
        "isodose lines at 95 % of each target's prescription and at 50 % of the highest, "
        "each drawn on the dose of the courses that prescription belongs to (the legend "
        "names them). White: PTV, magenta dashed: CTV, magenta: GTV, dotted: organs at "
        "risk in their legend colours.</p>"
    )
    window = _display_window(comparison, ct_grid)
    for r in comparison.results:
        centre, ptv = _image_centre(r, ct_grid)
        planes = _three_planes(window, centre)
        uri = _option_images(comparison, r, window, planes)
        where = f"through the centroid of {ptv.name}" if ptv is not None else ""
        source = f" ({comparison.table.dose_label(r.name)})" if r.is_imported else ""
        out.append(
            f'<figure class="keep"><h3>{_column_head(comparison, r.name, colors)}</h3>'
            f'<img alt="Axial, coronal and sagittal dose of {_esc(r.name)} {_esc(where)}" '
            f'src="{uri}"><figcaption>{_esc(r.name)}{_esc(source)}: planes {_esc(where)}.'
            "</figcaption></figure>"
        )
        extra = _extra_axial_figure(comparison, r, window, planes)
        if extra is not None:
            out.append(extra)
    out.append("</section>")
    return "\n".join(out)


def _css() -> str:
    """The report stylesheet (``rtplan/report.css``, package data)."""
    return resources.files("rtplan").joinpath("report.css").read_text(encoding="utf-8")


def _same_dose_caption(comparison: Comparison) -> str:
    """A sentence naming the options whose doses are identical (their curves coincide)."""
    same = [g for g in _same_dose_groups(comparison) if len(g) > 1]
    if not same:
        return ""
    text = "; ".join(" = ".join(g) for g in same)
    return (
        f" Identical doses (the options differ only in what the dose does not show, e.g. "
        f"ADT), so their curves coincide: {_esc(text)}."
    )


def _dvh_section(comparison: Comparison, colors: dict[str, str]) -> str:
    dvh_uri = _dvh_figure(comparison, colors)
    body = ['<section id="dvh" class="page"><h2>Dose-volume histograms</h2>']
    if dvh_uri:
        body.append(
            f'<figure><img alt="Cumulative DVHs, one panel per structure" '
            f'src="{dvh_uri}"><figcaption>Cumulative DVHs of the total physical dose (the '
            "sum of every course), one colour per option; \u25bc / \u25b2 mark the upper / "
            "lower dose-volume limits evaluated on that dose (limits in cc, and limits on "
            "EQD2 or on one SBRT course, are in the table only)."
            f"{_same_dose_caption(comparison)}</figcaption></figure>"
        )
    else:
        body.append('<p class="note">No DVH was computed.</p>')
    body.append("</section>")
    return "\n".join(body)


def _report_header(comparison: Comparison, title: str) -> str:
    """Title, the case / stage / protocol / version / date line and the disclaimer."""
    stage = comparison.stage
    protocol = comparison.protocol
    created = comparison.created
    meta = [f"case {_esc(comparison.case)}"]
    if stage is not None:
        meta.append(f"stage {_esc(_stage_headline(stage))}")
    meta += [f"protocol {_esc(protocol.name)}", f"rtplan {_esc(_rtplan_version())}"]
    meta.append(_esc(f"{created:%Y-%m-%d}"))
    sep = " \u00b7 "
    if _imported(comparison):
        disclaimer = (
            '<p class="disclaimer"><b>Estimated columns: an estimate for comparing options, '
            "not a treatment plan.</b> Their doses come from a fast analytic model; see the "
            "last section for its limits. Columns marked <i>imported</i> hold doses imported "
            "from a planning system (the file is named under the column), not checked by "
            "rtplan.</p>"
        )
    else:
        disclaimer = (
            '<p class="disclaimer"><b>Estimate for comparing options, not a treatment '
            "plan.</b> Doses come from a fast analytic model; see the last section for "
            "its limits.</p>"
        )
    return "\n".join(
        [
            '<header class="report-head">',
            f"<h1>{_esc(title)}</h1>",
            f'<div class="meta">{sep.join(meta)}</div></header>',
            disclaimer,
        ]
    )


# ---------------------------------------------------------------------------- public API
def render_report(comparison: Comparison, *, title: str | None = None) -> str:
    """The report of one case as an HTML document (a string).

    Parameters
    ----------
    comparison : Comparison
        The options of one case (:class:`rtplan.compare.Comparison`).
    title : str, optional
        Page title; default ``"<case>: comparison of field options"``.

    Returns
    -------
    str
        A self-contained HTML5 document: inline CSS, plots as ``data:`` URIs, no script,
        no external font or link.

    Raises
    ------
    TypeError
        If the anatomy, protocol, stage or lesions of ``comparison`` are not the rtplan
        types (:class:`~rtplan.atlas.Atlas`, :class:`~rtplan.protocol.Protocol`,
        :class:`~rtplan.staging.Stage` or ``None``, :class:`~rtplan.lesions.Lesions` or
        ``None``); the message names the attribute.
    """
    _check_comparison(comparison)
    title = title or f"{comparison.case}: comparison of field options"
    colors = _option_colors(comparison.options)
    body = [
        _report_header(comparison, title),
        _glance_section(comparison, colors),
        _stage_section(comparison),
        _context_section(comparison),
        _options_section(comparison, colors),
        _dvh_section(comparison, colors),
        _images_section(comparison, colors),
        _model_section(comparison),
    ]
    text, keys = _numbered_citations("\n".join(body))
    footer = (
        f"<footer>Generated by rtplan {_esc(_rtplan_version())} on "
        f"{datetime.now():%Y-%m-%d %H:%M}. Decision support for comparing options; "
        "not a prescription.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{_css()}\n</style>\n</head>\n<body>\n"
        + _FACT_SHEET.sub("", text)  # a safety net: every free text went through _prose
        + "\n"
        + _references_section(keys)
        + "\n"
        + footer
        + "\n</body>\n</html>\n"
    )


def write_report(
    comparison: Comparison, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Write the HTML report of one case, atomically.

    Parameters
    ----------
    comparison : Comparison
        The options of one case (:class:`rtplan.compare.Comparison`).
    path : str or path-like
        Output file; if it is an existing directory, ``report.html`` inside it. The parent
        directory must exist.
    title : str, optional
        Page title; default ``"<case>: comparison of field options"``.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    FileNotFoundError
        If the parent directory does not exist.
    TypeError
        If a part of ``comparison`` is not of its rtplan type (see :func:`render_report`).

    Notes
    -----
    The document is written to a temporary file next to ``path`` and renamed over it
    (:func:`os.replace`), so a failure leaves no half-written report.
    """
    out = Path(path)
    if out.is_dir():
        out = out / "report.html"
    if not out.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write the report {out}: folder {out.parent} does not exist"
        )
    text = render_report(comparison, title=title)
    return atomic_write_text(out, text)
