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
  the date.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from contourpy import contour_generator
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator
from scipy import ndimage

from rtplan._io import atomic_write_text
from rtplan.grid import ImageGrid

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

#: The fixed paragraph on what the dose estimate is (and is not).
MODEL_LIMITS = (
    "The doses in this report are an estimate from a fast analytic model, made to compare "
    "field options with each other. They are not a treatment plan and not a dose "
    "calculation: there is no beam arrangement, no optimisation, no heterogeneity "
    "correction and no delivery uncertainty beyond the PTV margins, and no OAR sparing: "
    "the dose falls off with the distance to each PTV only, so organs next to a PTV get "
    "more intermediate dose than an optimised plan would give them. Real plans differ, "
    "especially where targets and organs overlap or lie close together. Every number must "
    "be checked in a treatment planning system by the treating team before any clinical "
    "decision."
)

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


# ---------------------------------------------------------------------------- adapters
def _dvh_curve(dvh: Any) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative DVH of ``dvh`` as ``(dose_gy, volume_pct)`` arrays.

    The one place that knows the layout of :class:`rtplan.dvh.DVH` (``dose_gy``,
    ``cumulative_cc``, ``volume_cc``, ``cumulative_pct``); stand-ins with ``dose_gy`` and
    ``volume_pct`` are accepted too.
    """
    dose = np.asarray(dvh.dose_gy, dtype=float)
    if hasattr(dvh, "cumulative_pct"):
        vol = np.asarray(dvh.cumulative_pct, dtype=float)
    elif hasattr(dvh, "volume_pct"):
        vol = np.asarray(dvh.volume_pct, dtype=float)
    else:
        total = float(dvh.volume_cc)
        vol = 100.0 * np.asarray(dvh.cumulative_cc, dtype=float) / (total if total > 0 else 1.0)
    return dose, vol


def _thin_curve(dose: np.ndarray, vol: np.ndarray, n: int = _DVH_MAX_POINTS) -> tuple:
    """At most ``n`` points of a curve (uniform in dose), keeping its end points."""
    if dose.size <= n:
        return dose, vol
    grid = np.linspace(dose[0], dose[-1], n)
    return grid, np.interp(grid, dose, vol)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``getattr`` that also tolerates a property raising."""
    try:
        return getattr(obj, name, default)
    except Exception:  # a property of a half-built object must not kill the report
        return default


# ---------------------------------------------------------------------------- formatting
def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _format_value(value: float | None, unit: str = "") -> str:
    """A metric value as shown in the tables: one decimal, two below 1 (NTCP, small %).

    ``None`` or NaN gives an em dash.
    """
    if _is_missing(value):
        return _MISSING
    v = float(value)  # type: ignore[arg-type]
    if v != 0 and abs(v) < 1:
        return f"{v:.2f}"
    return f"{v:.1f}"


def _format_headroom(value: float | None) -> str:
    """Signed headroom to a limit (``+2.3``, ``-1.5``); empty when unknown."""
    if _is_missing(value):
        return ""
    v = float(value)  # type: ignore[arg-type]
    text = f"{abs(v):.2f}" if v != 0 and abs(v) < 1 else f"{abs(v):.1f}"
    return ("+" if v >= 0 else "\u2212") + text


def _format_gy(value: float) -> str:
    return f"{value:.4g}"


def _norm_metric(text: str) -> str:
    return re.sub(r"\s+|\[.*?\]", "", text or "").lower()


def _norm_name(text: str) -> str:
    return re.sub(r"[\s_]+", "", text or "").lower()


# ---------------------------------------------------------------------------- content helpers
@dataclass(frozen=True)
class _TargetInfo:
    course: str
    technique: str
    fractions: int
    ptv: str
    prescription_gy: float
    ptv_cc: float | None
    ctv: str | None
    ctv_cc: float | None
    gtv: str | None
    gtv_cc: float | None


def _targets(option: Any) -> list[_TargetInfo]:
    out = []
    for course in _get(option, "courses", ()) or ():
        for t in _get(course, "targets", ()) or ():
            ptv, ctv, gtv = _get(t, "ptv"), _get(t, "ctv"), _get(t, "gtv")
            out.append(
                _TargetInfo(
                    course=str(_get(course, "name", "")),
                    technique=str(_get(course, "technique", "")),
                    fractions=int(_get(course, "fractions", 0) or 0),
                    ptv=str(_get(ptv, "name", ptv)),
                    prescription_gy=float(_get(t, "prescription_gy", float("nan"))),
                    ptv_cc=_get(ptv, "volume_cc"),
                    ctv=None if ctv is None else str(_get(ctv, "name", ctv)),
                    ctv_cc=None if ctv is None else _get(ctv, "volume_cc"),
                    gtv=None if gtv is None else str(_get(gtv, "name", gtv)),
                    gtv_cc=None if gtv is None else _get(gtv, "volume_cc"),
                )
            )
    return out


def _overlap_fraction(part: Any, whole: Any) -> float:
    """Fraction of the voxels of ``part`` that lie inside ``whole`` (same grid), else 0."""
    pb, wb = _get(part, "bbox"), _get(whole, "bbox")
    if pb is None or wb is None:
        return 0.0
    if part.grid is not whole.grid and not part.grid.equals(whole.grid):
        return 1.0 if _contains_point(whole, part.centroid_mm) else 0.0
    lo = [max(p.start, w.start) for p, w in zip(pb, wb)]
    hi = [min(p.stop, w.stop) for p, w in zip(pb, wb)]
    if any(h <= low for low, h in zip(lo, hi)):
        return 0.0
    a = part.cropped_mask[tuple(slice(lo[d] - pb[d].start, hi[d] - pb[d].start) for d in range(3))]
    b = whole.cropped_mask[tuple(slice(lo[d] - wb[d].start, hi[d] - wb[d].start) for d in range(3))]
    n = int(np.count_nonzero(part.cropped_mask))
    return float(np.count_nonzero(a & b)) / n if n else 0.0


def _contains_point(structure: Any, point_mm: Sequence[float]) -> bool:
    """Whether the voxel of ``structure`` nearest to ``point_mm`` (LPS) is inside it."""
    bbox = _get(structure, "bbox")
    if bbox is None or any(math.isnan(float(c)) for c in point_mm):
        return False
    k, j, i = (int(v) for v in structure.grid.lps_to_nearest_index(point_mm))
    local = structure.cropped_mask
    k, j, i = k - bbox[0].start, j - bbox[1].start, i - bbox[2].start
    inside = 0 <= k < local.shape[0] and 0 <= j < local.shape[1] and 0 <= i < local.shape[2]
    return bool(inside and local[k, j, i])


def _ptv_totals(option: Any) -> list[tuple[Any, float]]:
    """``(PTV structure, total prescription in Gy)`` for every PTV of the option.

    A course adds to a PTV the highest prescription among its targets whose PTV is this
    one or holds at least half of it: a PTV nested in the PTV of another course (a
    sequential boost) or of another level (a SIB) is credited with that dose too.
    """
    ptvs: dict[str, Any] = {}
    for course in _get(option, "courses", ()) or ():
        for t in _get(course, "targets", ()) or ():
            ptv = _get(t, "ptv")
            if ptv is not None:
                ptvs.setdefault(str(_get(ptv, "name", ptv)), ptv)
    out = []
    for name, ptv in ptvs.items():
        total = 0.0
        for course in _get(option, "courses", ()) or ():
            best = 0.0
            for t in _get(course, "targets", ()) or ():
                other = _get(t, "ptv")
                rx = float(_get(t, "prescription_gy", 0.0) or 0.0)
                if not math.isfinite(rx):
                    continue
                if str(_get(other, "name", other)) == name or (
                    other is not None and _overlap_fraction(ptv, other) >= 0.5
                ):
                    best = max(best, rx)
            total += best
        out.append((ptv, total))
    return out


def _total_rx_by_ptv(option: Any) -> dict[str, float]:
    """PTV name -> total prescription over all courses (Gy), see :func:`_ptv_totals`."""
    return {str(_get(p, "name", p)): rx for p, rx in _ptv_totals(option)}


def _main_ptv(option: Any) -> Any:
    """The PTV with the highest total prescription (ties: the smallest), or ``None``."""
    best, key = None, None
    for ptv, rx in _ptv_totals(option):
        if _get(ptv, "is_empty", False):
            continue
        k = (round(rx, 6), -float(_get(ptv, "volume_cc", 0) or 0))
        if key is None or k > key:
            best, key = ptv, k
    return best


def _failed_rows(rows: Sequence[Any], option: str) -> list[Any]:
    return [r for r in rows if (r.status or {}).get(option) == "fail"]


def _checked_rows(rows: Sequence[Any], option: str) -> list[Any]:
    return [r for r in rows if (r.status or {}).get(option) in ("pass", "fail")]


def _find_key_row(
    rows: Sequence[Any], structures: tuple[str, ...], metrics: tuple[str, ...], group: str | None
) -> Any:
    names = [_norm_name(s) for s in structures]
    wanted = [_norm_metric(m) for m in metrics]
    for want_name in names:  # preference order of the structure candidates
        for r in rows:
            if _norm_name(r.structure) != want_name:
                continue
            is_ntcp = str(r.group).upper() == "NTCP" or _norm_metric(r.metric).startswith("ntcp")
            if group == "NTCP":
                if is_ntcp:
                    return r
                continue
            if not is_ntcp and _norm_metric(r.metric) in wanted:
                return r
    return None


def _option_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: OPTION_COLORS[i % len(OPTION_COLORS)] for i, n in enumerate(names)}


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


def _dvh_panels(comparison: Any) -> list[list[tuple[str, str]]]:
    """DVH panels: each a list of ``(structure, line style)``.

    One panel per target (its PTV solid, CTV dashed, GTV dotted; highest total dose
    first), then one per other structure of the table, in table order. Structures without
    a DVH are left out.
    """
    have: dict[str, None] = {}
    for r in comparison.results:
        for name in r.dvhs or {}:
            have[name] = None
    if not have:
        return []
    panels: list[list[tuple[str, str]]] = []
    used: set[str] = set()
    targets = []
    for r in comparison.results:
        totals = _total_rx_by_ptv(r.option)
        for t in _targets(r.option):
            targets.append((-totals.get(t.ptv, t.prescription_gy), len(targets), t))
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


def _limit_markers(comparison: Any, structure: str) -> list[tuple[float, float, str, str]]:
    """``(dose_gy, volume_pct, label, marker)`` points of the dose-volume limits of a structure.

    ``V<d>Gy <= x %`` (or ``cc``, converted with the structure volume) and
    ``D<x>% <= d Gy`` limits; other metrics (Dmean, Dmax, %Rx) have no point on a DVH.
    """
    out = []
    volume_cc = None
    for r in comparison.results:
        dvh = (r.dvhs or {}).get(structure)
        if dvh is not None and _get(dvh, "volume_cc"):
            volume_cc = float(dvh.volume_cc)
            break
    for row in comparison.table.rows:
        if row.structure != structure or not row.limit:
            continue
        if "sbrt" in str(row.group).lower() or "fx" in row.limit:
            continue  # limits of an SBRT course's own dose, not of this (total) DVH
        m = _LIMIT_NUMBER.search(row.limit)
        if m is None:
            continue
        limit = float(m.group(1))
        marker = "^" if row.limit.lstrip().startswith(">") else "v"
        vm, dm = _V_METRIC.match(row.metric), _D_METRIC.match(row.metric)
        if vm and row.unit == "%":
            out.append((float(vm.group(1)), limit, row.metric, marker))
        elif vm and row.unit == "cc" and volume_cc:
            out.append((float(vm.group(1)), 100.0 * limit / volume_cc, row.metric, marker))
        elif dm and row.unit == "Gy":
            out.append((limit, float(dm.group(1)), row.metric, marker))
    return [p for p in out if 0 <= p[1] <= 100]


def _dvh_figure(comparison: Any, colors: dict[str, str]) -> str | None:
    """Small multiples of cumulative DVHs as a ``data:`` URI, or ``None`` without DVHs.

    One panel per target or structure, one colour per option; within a target panel the
    PTV is solid, the CTV dashed and the GTV dotted.
    """
    panels = _dvh_panels(comparison)
    if not panels:
        return None
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # fixed layout in inches (no tight_layout / tight bbox: each costs a full draw)
    pw, ph, left, right, top, bottom, gap_w, gap_h = 2.9, 1.75, 0.55, 0.1, 0.62, 0.42, 0.2, 0.42
    width = left + right + ncols * pw + (ncols - 1) * gap_w
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
    dmax = 0.0
    for r in comparison.results:
        for panel in panels:
            for name, _ in panel:
                dvh = (r.dvhs or {}).get(name)
                if dvh is not None:
                    d, v = _dvh_curve(dvh)
                    nz = d[v > 0.05]
                    if nz.size:
                        dmax = max(dmax, float(nz.max()))
    dmax = max(5.0, 5.0 * math.ceil(dmax * 1.03 / 5.0))
    first = axes[0][0]
    first.set_xlim(0, dmax)
    first.set_ylim(0, 102)
    # few ticks: tick objects are most of the drawing time of small multiples
    step = 10.0 if dmax <= 50 else 20.0
    first.xaxis.set_major_locator(FixedLocator(np.arange(0.0, dmax + 0.1, step)))
    first.yaxis.set_major_locator(FixedLocator([0.0, 25.0, 50.0, 75.0, 100.0]))
    styles_used: set[str] = set()
    for n, panel in enumerate(panels):
        ax = axes[n // ncols][n % ncols]
        for name, ls in panel:
            for i, r in enumerate(comparison.results):
                dvh = (r.dvhs or {}).get(name)
                if dvh is None:
                    continue
                d, v = _thin_curve(*_dvh_curve(dvh))
                # later options thinner, so that identical curves still show every colour
                lw = max(2.4 - 0.5 * i, 0.9)
                ax.plot(d, v, color=colors[r.name], lw=lw, ls=ls)
                styles_used.add(ls)
        title = " / ".join(name for name, _ in panel)
        ax.set_title(
            title, fontsize=8 if len(title) > 30 else 8.5, pad=2, loc="left", fontweight="bold"
        )
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
                ax.annotate(
                    met,
                    (dose_gy, vol_pct),
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=6.5,
                    color="#222222",
                )
        ax.grid(True, lw=0.4, alpha=0.5)
        bottom_row = n + ncols >= len(panels)
        ax.tick_params(
            labelsize=7, length=2, pad=1, labelbottom=bottom_row, labelleft=n % ncols == 0
        )
        if n % ncols == 0:
            ax.set_ylabel("Volume (%)", fontsize=8)
        if bottom_row:
            ax.set_xlabel("Dose (Gy)", fontsize=8)
    for n in range(len(panels), nrows * ncols):
        axes[n // ncols][n % ncols].set_visible(False)
    handles = [Line2D([], [], color=colors[r.name], lw=2, label=r.name) for r in comparison.results]
    if len(styles_used) > 1:
        handles += [
            Line2D([], [], color="#333333", lw=1.3, ls=ls, label=lab)
            for ls, lab in (("-", "PTV / organ"), ("--", "CTV"), (":", "GTV"))
            if ls in styles_used
        ]
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=min(len(handles), 7),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    return _fig_to_data_uri(fig, _DVH_FORMAT)


# ---- planes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plane:
    """A display plane: ascending row / column coordinates (mm) and a fixed normal position.

    ``axes`` are LPS axis numbers (0 = x, 1 = y, 2 = z) of rows, columns and normal.
    """

    view: str
    rows_mm: np.ndarray
    cols_mm: np.ndarray
    normal_mm: float
    axes: tuple[int, int, int]
    label: str = ""

    @property
    def extent(self) -> tuple[float, float, float, float]:
        def edges(c: np.ndarray) -> tuple[float, float]:
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


def _axis_coords(grid: ImageGrid, lps_axis: int) -> np.ndarray:
    return grid.axis_coordinates_mm()[_LPS_TO_ARRAY[lps_axis]]


def _fractional_index(grid: ImageGrid, lps_axis: int, coords_mm: np.ndarray) -> np.ndarray:
    """Fractional array index along one axis of ``grid`` for coordinates in mm."""
    c = _axis_coords(grid, lps_axis)
    if c.size == 1:
        step = grid.spacing_mm[_LPS_TO_ARRAY[lps_axis]] * grid.axis_signs[_LPS_TO_ARRAY[lps_axis]]
    else:
        step = float(c[1] - c[0])
    return (np.asarray(coords_mm, dtype=float) - float(c[0])) / step


def _display_window(comparison: Any, grid: ImageGrid) -> list[np.ndarray]:
    """Coordinates (x, y, z, ascending, mm) of the CT voxels to display: the body + 10 mm."""
    coords = [np.sort(_axis_coords(grid, a)) for a in range(3)]
    structures = _get(comparison.atlas, "structures")
    body = None
    if structures is not None:
        for name in ("Body", "External"):
            try:
                body = structures[name]
                break
            except (KeyError, Exception):
                continue
    if body is not None and not _get(body, "is_empty", True):
        bounds = body.bounds_mm
        for a in range(2):  # crop x and y only; keep the whole z range
            lo, hi = bounds[a][0] - 10.0, bounds[a][1] + 10.0
            keep = (coords[a] >= lo) & (coords[a] <= hi)
            if np.count_nonzero(keep) >= 2:
                coords[a] = coords[a][keep]
    return coords


def _subsample(window: list[np.ndarray], max_pixels: int = _MAX_PLANE_PIXELS) -> list[np.ndarray]:
    """Every n-th coordinate so that no axis has more than ``max_pixels`` pixels."""
    return [c[:: max(1, math.ceil(c.size / max_pixels))] for c in window]


def _make_plane(
    view: str,
    window: list[np.ndarray],
    centre_mm: Sequence[float],
    normal_window: list[np.ndarray] | None = None,
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
    array: np.ndarray,
    grid: ImageGrid,
    plane: _Plane,
    offset: Sequence[int] = (0, 0, 0),
    fill: Any = 0,
) -> np.ndarray:
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


def _sample_linear(array: np.ndarray, grid: ImageGrid, plane: _Plane) -> np.ndarray:
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
    return ndimage.map_coordinates(
        np.asarray(array, dtype=np.float32),
        coords,
        order=1,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )


def _structure_plane(structure: Any, plane: _Plane) -> np.ndarray | None:
    """The structure's mask on the plane, or ``None`` when it does not cross it."""
    bbox = _get(structure, "bbox")
    if bbox is None:
        return None
    offset = tuple(s.start for s in bbox)
    m = _sample_nearest(structure.cropped_mask, structure.grid, plane, offset, fill=False)
    return m if m.any() else None


def _draw_contour(
    ax: Any, plane: _Plane, values: np.ndarray, level: float, color: Any, lw: float, ls: str
) -> None:
    """Draw the ``level`` contour of a plane array.

    contourpy and one LineCollection: far cheaper than ``Axes.contour`` for a few lines.
    """
    gen = contour_generator(plane.cols_mm, plane.rows_mm, np.asarray(values, dtype=np.float64))
    lines = [seg for seg in gen.lines(level) if len(seg) > 1]
    if lines:
        ax.add_collection(
            LineCollection(lines, colors=[color], linewidths=lw, linestyles=ls, zorder=3),
            autolim=False,
        )


def _isodose_levels(option: Any, dmax_gy: float) -> list[float]:
    """95 % of each total PTV prescription, and 50 % of the highest (Gy, descending)."""
    rx = sorted(set(_total_rx_by_ptv(option).values()), reverse=True)
    if not rx:
        return [lvl for lvl in (0.95 * dmax_gy, 0.5 * dmax_gy) if lvl > 0]
    levels = [0.95 * r for r in rx] + [0.5 * rx[0]]
    out: list[float] = []
    for lvl in levels:
        if all(abs(lvl - o) > 0.04 * rx[0] for o in out):
            out.append(lvl)
    return out[:_MAX_ISODOSE_LINES]


def _image_centre(result: Any, ct_grid: ImageGrid) -> tuple[tuple[float, float, float], Any]:
    """Centre of the images of an option: the centroid of its highest-dose PTV.

    Without a PTV, the hottest dose voxel; without dose, the CT centre. Returns the centre
    (LPS mm) and the PTV (or ``None``).
    """
    ptv = _main_ptv(result.option)
    if ptv is not None:
        return tuple(ptv.centroid_mm), ptv  # type: ignore[return-value]
    dose, dose_grid = _get(result, "dose_gy"), _get(result, "dose_grid")
    if dose is not None and dose_grid is not None and np.size(dose) and np.max(dose) > 0:
        k = np.unravel_index(int(np.argmax(dose)), np.shape(dose))
        return tuple(float(v) for v in dose_grid.index_to_lps(k)), None  # type: ignore[return-value]
    return ct_grid.center_mm, None


def _outline_structures(comparison: Any, option: Any) -> tuple[list, list]:
    """Target outlines ``(structure, colour, line style, width)`` and OARs to outline."""
    outlines: list[tuple[Any, str, str, float]] = []
    seen: set[str] = set()
    for course in _get(option, "courses", ()) or ():
        for t in _get(course, "targets", ()) or ():
            for s, col, ls, lw in (
                (_get(t, "ptv"), _PTV_COLOR, "-", 1.3),
                (_get(t, "ctv"), _CTV_COLOR, "--", 1.1),
                (_get(t, "gtv"), _GTV_COLOR, "-", 0.8),
            ):
                if s is not None and not _get(s, "is_empty", False) and s.name not in seen:
                    seen.add(s.name)
                    outlines.append((s, col, ls, lw))
    structures = _get(comparison.atlas, "structures")
    oars: list[Any] = []
    if structures is not None:
        for name in _OAR_OUTLINES:
            try:
                s = structures[name]
            except Exception:
                continue
            if s.name not in seen and not _get(s, "is_empty", True):
                seen.add(s.name)
                oars.append(s)
    return outlines, oars


def _unseen_ptvs(option: Any, planes: Sequence[_Plane], limit: int = 3) -> list[Any]:
    """PTVs of the option that none of ``planes`` crosses (e.g. a distant SBRT target)."""
    out = []
    for ptv, _ in sorted(_ptv_totals(option), key=lambda x: -x[1]):
        if _get(ptv, "is_empty", True):
            continue
        if all(_structure_plane(ptv, p) is None for p in planes):
            out.append(ptv)
    return out[:limit]


def _three_planes(window: list[np.ndarray], centre: Sequence[float]) -> list[_Plane]:
    display = _subsample(window)
    return [_make_plane(v, display, centre, window) for v in ("axial", "coronal", "sagittal")]


def _option_images(
    comparison: Any,
    result: Any,
    window: list[np.ndarray],
    planes: Sequence[_Plane] | None = None,
    *,
    max_height_in: float = 4.8,
) -> str | None:
    """Axial, coronal and sagittal images of one option as a PNG ``data:`` URI.

    CT (W400/L40), dose colour-wash, isodose lines, PTV/CTV/GTV and OAR outlines;
    ``planes`` default to the planes through the centroid of the highest-dose PTV.
    """
    atlas = comparison.atlas
    ct = _get(atlas, "ct_hu")
    ct_grid = _get(atlas, "grid")
    dose = _get(result, "dose_gy")
    dose_grid = _get(result, "dose_grid")
    if ct is None or ct_grid is None:
        return None
    option = result.option
    if planes is None:
        planes = _three_planes(window, _image_centre(result, ct_grid)[0])
    rx_total = _total_rx_by_ptv(option)
    rx_max = max(rx_total.values()) if rx_total else None
    dmax = float(np.max(dose)) if dose is not None and np.size(dose) else 0.0
    scale = rx_max or dmax or 1.0
    vmax = 1.08 * max(scale, dmax if dmax < 1.5 * scale else scale)
    levels = _isodose_levels(option, dmax)
    cmap = matplotlib.colormaps["jet"]
    level_colors = {lv: cmap(min(lv / vmax, 1.0)) for lv in levels}
    outlines, oars = _outline_structures(comparison, option)

    ratios = []
    for p in planes:
        e = p.extent
        ratios.append(abs(e[1] - e[0]) / max(abs(e[3] - e[2]), 1e-6))
    # fixed layout in inches: panels of equal height side by side, colour bar, legend below
    gap, cbar_w, cbar_lab, top, bottom, left = 0.08, 0.14, 0.55, 0.28, 0.36, 0.04
    fixed = left + len(planes) * gap + cbar_w + cbar_lab
    height = float(np.clip((_IMAGE_WIDTH_IN - fixed) / sum(ratios), 2.2, max_height_in))
    width = fixed + height * sum(ratios)
    fig_h = height + top + bottom
    fig = Figure(figsize=(width, fig_h))
    rects = []
    x = left
    for ratio in ratios:
        rects.append((x / width, bottom / fig_h, height * ratio / width, height / fig_h))
        x += height * ratio + gap
    cbar_rect = (x / width, bottom / fig_h, cbar_w / width, height / fig_h)
    norm = Normalize(0.0, vmax)
    drawn_oars: list[str] = []
    has_gtv = False
    for n, p in enumerate(planes):
        ax = fig.add_axes(rects[n])
        ext = p.extent
        ct_plane = _sample_nearest(np.asarray(ct), ct_grid, p, fill=-1000.0)
        ax.imshow(
            ct_plane,
            cmap="gray",
            vmin=CT_WINDOW_HU[0],
            vmax=CT_WINDOW_HU[1],
            extent=ext,
            origin="lower",
            interpolation="bilinear",
        )
        if dose is not None and dose_grid is not None:
            d_plane = _sample_linear(np.asarray(dose), dose_grid, p)
            wash = np.ma.masked_less(d_plane, _WASH_FROM * scale)
            ax.imshow(
                wash,
                cmap=cmap,
                norm=norm,
                alpha=0.32,
                extent=ext,
                origin="lower",
                interpolation="bilinear",
            )
            peak = float(d_plane.max()) if d_plane.size else 0.0
            for lv in levels:
                if peak >= lv:
                    _draw_contour(ax, p, d_plane, lv, level_colors[lv], 1.0, "-")
        for s in oars:
            m = _structure_plane(s, p)
            if m is not None:
                rgb = tuple(c / 255 for c in _get(s, "color", (200, 200, 200)))
                _draw_contour(ax, p, m, 0.5, rgb, 0.8, ":")
                if s.name not in drawn_oars:
                    drawn_oars.append(s.name)
        for s, col, ls, lw in outlines:
            m = _structure_plane(s, p)
            if m is not None:
                _draw_contour(ax, p, m, 0.5, col, lw, ls)
                has_gtv = has_gtv or s.role == "gtv"
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
        lab = {"axial": ("R", "L"), "coronal": ("R", "L"), "sagittal": ("A", "P")}[p.view]
        for xpos, text, ha in ((0.01, lab[0], "left"), (0.99, lab[1], "right")):
            ax.text(
                xpos,
                0.5,
                text,
                transform=ax.transAxes,
                color="white",
                fontsize=8,
                ha=ha,
                va="center",
                fontweight="bold",
            )
    cax = fig.add_axes(cbar_rect)
    if dose is not None and dose_grid is not None:
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        cb.set_label("Dose (Gy)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        for lv in levels:
            cb.ax.axhline(lv, color="black", lw=0.8)
    else:
        cax.set_visible(False)
    handles = [
        Line2D([], [], color=_PTV_COLOR, lw=1.5, label="PTV"),
        Line2D([], [], color=_CTV_COLOR, lw=1.3, ls="--", label="CTV"),
    ]
    if has_gtv:
        handles.append(Line2D([], [], color=_GTV_COLOR, lw=1.0, label="GTV"))
    handles += [
        Line2D([], [], color=level_colors[lv], lw=1.6, label=f"{lv:.1f} Gy") for lv in levels
    ]
    if drawn_oars:
        handles.append(
            Line2D([], [], color="#999999", lw=1.0, ls=":", label="OARs: " + ", ".join(drawn_oars))
        )
    leg = fig.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        fontsize=7.5,
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
    return _fig_to_data_uri(fig, "png")


# ---------------------------------------------------------------------------- HTML pieces
def _stage_section(comparison: Any) -> str:
    stage = comparison.stage
    parts = ['<section id="case">', "<h2>Case</h2>", '<div class="two-col">']
    # inputs
    atlas = comparison.atlas
    grid = _get(atlas, "grid")
    rows: list[tuple[str, str]] = [("Case", _esc(comparison.case))]
    inputs = _get(comparison, "inputs")
    if isinstance(inputs, dict):
        rows += [(_esc(k), _esc(v)) for k, v in inputs.items()]
    rows.append(("Anatomy", _esc(_get(atlas, "name", type(atlas).__name__))))
    if grid is not None:
        sp = grid.spacing_mm
        rows.append(
            (
                "CT grid",
                _esc(
                    f"{grid.shape[2]} \u00d7 {grid.shape[1]} \u00d7 "
                    f"{grid.shape[0]} voxels of {sp[2]:.3g} \u00d7 {sp[1]:.3g} "
                    f"\u00d7 {sp[0]:.3g} mm (x \u00d7 y \u00d7 z)"
                ),
            )
        )
    n_structures = len(_get(atlas, "structures", ()) or ())
    if n_structures:
        rows.append(("Structures", f"{n_structures} in the anatomy"))
    protocol = comparison.protocol
    rows.append(("Protocol", _esc(_get(protocol, "name", None) or str(protocol))))
    rows.append(("Options compared", _esc(", ".join(comparison.options))))
    parts.append('<div><h3>Inputs</h3><table class="kv">')
    parts += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    parts.append("</table></div>")
    # stage
    parts.append("<div><h3>PROMISE miTNM stage</h3>")
    if stage is None:
        parts.append('<p class="note">No stage was given.</p>')
    else:
        code = _get(stage, "string") or str(stage)
        parts.append(f'<p class="stage-line">miTNM <span class="code">{_esc(code)}</span></p>')
        kv = []
        detailed = _get(stage, "detailed")
        if detailed and detailed != code:
            kv.append(("Detailed", detailed))
        ucla = _get(stage, "ucla_group")
        if ucla is not None:
            kv.append(("UCLA group", ucla))
        oligo = _get(stage, "oligometastatic")
        if oligo is not None:
            n_dist = _get(stage, "n_distant_lesions")
            extra = f" ({n_dist} distant lesion{'s' if n_dist != 1 else ''})" if n_dist else ""
            kv.append(("Oligometastatic", ("yes" if oligo else "no") + extra))
        for label, attr in (
            ("Nodal regions", "nodal_regions"),
            ("Distant", "m_categories"),
            ("Bone pattern", "bone_pattern"),
            ("PROMISE version", "promise_version"),
        ):
            v = _get(stage, attr)
            if not _is_blank(v):
                kv.append((label, _fmt_plain(v)))
        if kv:
            parts.append('<table class="kv">')
            parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in kv]
            parts.append("</table>")
        notes = _get(stage, "notes")
        if notes and not isinstance(notes, str):
            parts.append('<ul class="sources">')
            parts += [f"<li>{_esc(n)}</li>" for n in notes]
            parts.append("</ul>")
    parts.append("</div></div>")
    parts.append(_lesion_table(comparison))
    parts.append("</section>")
    return "\n".join(parts)


def _fmt_plain(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return _format_value(v)
    if isinstance(v, (tuple, list)):
        return ", ".join(_fmt_plain(x) for x in v)
    return str(v)


def _fmt_region(r: dict[str, Any]) -> str:
    text = _fmt_plain(r.get("region"))
    side = r.get("side")
    if side and str(side) not in text:
        text = f"{text} ({side})" if text else str(side)
    if r.get("region_uncertain"):
        text += " (uncertain)"
    return text


def _fmt_number(v: Any, small: int = 2) -> str:
    if _is_missing(v):
        return _MISSING
    f = float(v)
    return f"{f:.{small}f}" if f != 0 and abs(f) < 1 else f"{f:.1f}"


# lesion table columns: (header, numeric, formatter of a row dict, keys that enable it)
_LESION_COLUMNS: tuple[tuple[str, bool, Any, tuple[str, ...]], ...] = (
    ("Lesion", False, lambda r: _fmt_plain(r.get("name") or r.get("id")), ("name", "id")),
    ("miTNM", False, lambda r: _fmt_plain(r.get("category")), ("category",)),
    ("Region", False, _fmt_region, ("region", "side")),
    ("Volume (cc)", True, lambda r: _fmt_number(r.get("volume_cc")), ("volume_cc",)),
    ("SUVmax", True, lambda r: _fmt_number(r.get("suv_max")), ("suv_max",)),
    ("SUVpeak", True, lambda r: _fmt_number(r.get("suv_peak")), ("suv_peak",)),
    ("miPSMA", True, lambda r: _fmt_plain(r.get("mipsma_score")), ("mipsma_score",)),
    ("Centroid x, y, z (mm)", True, lambda r: _fmt_plain(r.get("centroid_mm")), ("centroid_mm",)),
    ("Notes", False, lambda r: _fmt_plain(r.get("notes")), ("notes",)),
)


def _lesion_rows(comparison: Any) -> list[dict[str, Any]]:
    """Per-lesion rows of the stage (staged lesions), else of the lesions, else none."""
    for owner in (comparison.stage, comparison.lesions):
        table = _get(owner, "table")
        if callable(table):
            return [dict(r) for r in table()]
    return []


def _lesion_table(comparison: Any) -> str:
    rows = _lesion_rows(comparison)
    if not rows:
        return (
            '<h3>Lesions</h3><p class="note">No PSMA-positive lesion '
            "(no target beyond the standard volumes).</p>"
        )
    cols = [c for c in _LESION_COLUMNS if any(not _is_blank(r.get(k)) for r in rows for k in c[3])]
    out = ['<h3>Lesions</h3><table id="lesions"><thead><tr>']
    for header, numeric, _, _ in cols:
        cls = ' class="num"' if numeric else ""
        out.append(f"<th{cls}>{_esc(header)}</th>")
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for _, numeric, fmt, _ in cols:
            cls = ' class="num"' if numeric else ""
            out.append(f"<td{cls}>{_esc(fmt(r))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _is_blank(v: Any) -> bool:
    return v is None or v == "" or v == () or v == []


def _targets_cell(option: Any, *, volumes: bool) -> str:
    """Targets of an option as HTML lines.

    Short form (``volumes=False``), one line per PTV: its prescription per course and
    the total, e.g. ``PTV_6660 45 Gy / 25 fx + 21.6 Gy / 12 fx = 66.6 Gy``. Long form, one
    line per target and course with the course, technique and volumes.
    """
    totals = _total_rx_by_ptv(option)
    infos = _targets(option)
    lines = []
    if not volumes:
        by_ptv: dict[str, list[_TargetInfo]] = {}
        for t in infos:
            by_ptv.setdefault(t.ptv, []).append(t)
        for name, ts in sorted(by_ptv.items(), key=lambda kv: -totals.get(kv[0], 0.0)):
            parts = " + ".join(f"{_format_gy(t.prescription_gy)} Gy / {t.fractions} fx" for t in ts)
            total = totals.get(name)
            if total is not None and (len(ts) > 1 or abs(total - ts[0].prescription_gy) > 1e-6):
                parts += f" \u2192 {_format_gy(total)} Gy"
            lines.append(f'<div class="keep"><b>{_esc(name)}</b> {parts}</div>')
        return "".join(lines)
    for t in infos:
        text = f"<b>{_esc(t.ptv)}</b> {_format_gy(t.prescription_gy)} Gy / {t.fractions} fx"
        total = totals.get(t.ptv)
        if total is not None and abs(total - t.prescription_gy) > 1e-6:
            text += f" (total {_format_gy(total)} Gy)"
        text += f' <span class="note">{_esc(t.course)}, {_esc(t.technique.upper())}</span>'
        vol = [] if _is_missing(t.ptv_cc) else [f"PTV {float(t.ptv_cc):.1f} cc"]
        if t.ctv:
            vol.append(f"{_esc(t.ctv)} {_format_value(t.ctv_cc)} cc")
        if t.gtv:
            vol.append(f"{_esc(t.gtv)} {_format_value(t.gtv_cc)} cc")
        if vol:
            text += '<span class="hr">' + " \u00b7 ".join(vol) + "</span>"
        lines.append(f'<div class="keep">{text}</div>')
    return "".join(lines)


def _glance_section(comparison: Any, colors: dict[str, str]) -> str:
    rows = comparison.table.rows
    results = comparison.results
    out = [
        '<section id="glance">',
        "<h2>At a glance</h2>",
        '<table id="glance-table" class="wide"><thead><tr><th></th>',
    ]
    for r in results:
        out.append(f'<th data-option="{_esc(r.name)}">{_swatch(colors[r.name])}{_esc(r.name)}</th>')
    out.append("</tr></thead><tbody>")

    def row(label: str, cells: Iterable[str], attrs: str = "") -> None:
        out.append(f"<tr{attrs}><th>{label}</th>{''.join(cells)}</tr>")

    row("Targets (Rx)", (f"<td>{_targets_cell(r.option, volumes=False)}</td>" for r in results))
    row("ADT", (f"<td>{'yes' if _get(r.option, 'adt', False) else 'no'}</td>" for r in results))
    cells = []
    for r in results:
        failed = _failed_rows(rows, r.name)
        checked = _checked_rows(rows, r.name)
        cls = "fail" if failed else "pass"
        mark = _FAIL_MARK if failed else _PASS_MARK
        names = "".join(
            f'<span class="hr">{_esc(f.label)} ({_format_headroom(f.headroom.get(r.name))})</span>'
            for f in failed
        )
        cells.append(
            f'<td class="{cls}" data-failed="{len(failed)}"><span class="badge {cls}">'
            f"{mark} {len(failed)} of {len(checked)} failed</span>{names}</td>"
        )
    row("Constraints", cells, ' id="glance-failed"')
    coverage = [
        r
        for r in rows
        if str(r.group).lower().startswith("target") and _norm_metric(r.metric) == "v95%rx"
    ]
    if coverage:
        cells = []
        for res in results:
            vals = [
                (float(r.values[res.name]), r.structure)
                for r in coverage
                if not _is_missing((r.values or {}).get(res.name))
            ]
            if not vals:
                cells.append(f'<td class="num" data-option="{_esc(res.name)}">{_MISSING}</td>')
                continue
            v, name = min(vals)
            cells.append(
                f'<td class="num" data-option="{_esc(res.name)}"><span class="v">'
                f'{_format_value(v)}</span><span class="hr">{_esc(name)}</span></td>'
            )
        row(
            'PTV coverage [%]<span class="hr">lowest V95%Rx</span>',
            cells,
            ' id="glance-coverage" data-row="PTV coverage"',
        )
    for label, structs, metrics, group in _KEY_METRICS:
        krow = _find_key_row(rows, structs, metrics, group)
        if krow is None:
            continue
        cells = [_value_cell(krow, r.name) for r in results]
        unit = f" [{krow.unit}]" if krow.unit else ""
        lim = f'<span class="hr">{_esc(krow.limit)}</span>' if krow.limit else ""
        row(f"{_esc(label)}{_esc(unit)}{lim}", cells, f' data-row="{_esc(krow.label)}"')
    out.append("</tbody></table>")
    out.append(
        f'<p class="note">{_PASS_MARK} meets the protocol limit, {_FAIL_MARK} fails it; '
        "the signed number under a value is the headroom to the limit in the row's unit "
        "(negative: by how much it fails). Estimated doses, not a treatment plan. "
        "The model has no OAR sparing: intermediate-dose metrics (V40-V50) of organs next to "
        "a PTV (rectum, bladder) are pessimistic and fail more often than an optimised plan "
        "would; compare them between options rather than with the limit.</p>"
    )
    out.append("</section>")
    return "\n".join(out)


def _value_cell(row: Any, option: str) -> str:
    value = (row.values or {}).get(option)
    status = (row.status or {}).get(option)
    text = _format_value(value, row.unit)
    cls = ["num"]
    mark = ""
    hr = ""
    if status in ("pass", "fail") and not _is_missing(value):
        cls.append(status)
        mark = f'<span class="mark">{_PASS_MARK if status == "pass" else _FAIL_MARK}</span>'
        h = _format_headroom((row.headroom or {}).get(option))
        if h:
            hr = f'<span class="hr">{h}</span>'
    st = f' data-status="{status}"' if status else ""
    return (
        f'<td class="{" ".join(cls)}" data-option="{_esc(option)}"{st}>'
        f'<span class="v">{text}</span>{mark}{hr}</td>'
    )


def _options_section(comparison: Any, colors: dict[str, str]) -> str:
    results = comparison.results
    out = [
        '<section id="options" class="page">',
        "<h2>Options side by side</h2>",
        '<table id="options-table" class="wide"><thead><tr><th></th>',
    ]
    for r in results:
        out.append(f"<th>{_swatch(colors[r.name])}{_esc(r.name)}</th>")
    out.append("</tr></thead><tbody>")

    def row(label: str, cells: Iterable[str]) -> None:
        out.append(f"<tr><th>{label}</th>{''.join(cells)}</tr>")

    row("Description", (f"<td>{_esc(_get(r.option, 'description', ''))}</td>" for r in results))
    course_cells = []
    for r in results:
        lines = []
        for c in _get(r.option, "courses", ()) or ():
            lines.append(f"{_esc(c.name)}: {_esc(str(c.technique).upper())}, {c.fractions} fx")
        course_cells.append(f"<td>{'<br>'.join(lines)}</td>")
    row("Courses", course_cells)
    row(
        "Targets, Rx, volumes",
        (f"<td>{_targets_cell(r.option, volumes=True)}</td>" for r in results),
    )
    row("ADT", (f"<td>{'yes' if _get(r.option, 'adt', False) else 'no'}</td>" for r in results))
    row(
        "Evidence",
        (
            f'<td class="evidence">{_esc(_get(r.option, "evidence", "") or _MISSING)}</td>'
            for r in results
        ),
    )
    out.append("</tbody></table>")
    out.append(_metrics_table(comparison, colors))
    out.append("</section>")
    return "\n".join(out)


_GROUP_TITLES = {
    "Target": "Targets: coverage",
    "OAR": "Organs at risk against the protocol constraints",
    "OAR (SBRT)": "Organs at risk: SBRT constraints (on each SBRT course's own dose)",
    "NTCP": "NTCP (LKB model)",
    "Plan": "Plan",
}


def _metrics_table(comparison: Any, colors: dict[str, str]) -> str:
    table = comparison.table
    options = list(table.options)
    out = [
        "<h3>Dose-volume metrics and constraints</h3>",
        '<table id="metrics" class="wide"><thead><tr><th>Structure</th><th>Metric</th>'
        "<th>Limit</th>",
    ]
    for o in options:
        out.append(f'<th class="num">{_swatch(colors.get(o, "#888"))}{_esc(o)}</th>')
    out.append("<th>Source</th></tr></thead><tbody>")
    group = None
    previous = None
    for r in table.rows:
        if r.group != group:
            group = r.group
            title = _GROUP_TITLES.get(group, group)
            out.append(
                f'<tr class="group"><th colspan="{len(options) + 4}">{_esc(title)}</th></tr>'
            )
            previous = None
        unit = f" [{r.unit}]" if r.unit else ""
        repeat = r.structure == previous
        previous = r.structure
        cls = ' class="rep"' if repeat else ' class="first"'
        out.append(
            f'<tr data-row="{_esc(r.label)}" data-group="{_esc(r.group)}"{cls}>'
            f"<th>{_esc(r.structure)}</th><td>{_esc(r.metric)}{_esc(unit)}</td>"
            f'<td class="lim">{_esc(r.limit or "")}</td>'
        )
        out += [_value_cell(r, o) for o in options]
        out.append(f'<td class="src">{_esc(r.source)}</td></tr>')
    out.append("</tbody></table>")
    out.append(
        f'<p class="note">{_PASS_MARK} pass, {_FAIL_MARK} fail; the signed number is the '
        "headroom to the limit in the row's unit. A dash: the metric does not apply to "
        "that option.</p>"
    )
    return "\n".join(out)


def _protocol_sources(comparison: Any) -> list[str]:
    protocol = comparison.protocol
    seen: dict[str, None] = {}
    sources = _get(protocol, "sources")
    if isinstance(sources, dict):
        sources = list(sources.values())
    if isinstance(sources, (list, tuple)):
        for s in sources:
            if s:
                seen[str(s)] = None
    rows = _get(protocol, "rows")
    if callable(rows):
        for item in rows():
            if len(item) >= 3 and item[2]:
                seen[str(item[2])] = None
    for c in _get(protocol, "constraints", ()) or ():
        src = _get(c, "source")
        if src:
            seen[str(src)] = None
    for r in comparison.table.rows:
        if r.source:
            seen[str(r.source)] = None
    return list(seen)


def _model_section(comparison: Any) -> str:
    import rtplan

    protocol = comparison.protocol
    out = [
        '<section id="model" class="page">',
        "<h2>Dose model, protocol and provenance</h2>",
        "<h3>Dose model and its limits</h3>",
    ]
    model = comparison.dose_model or "(the dose model did not describe itself)"
    out.append(f"<p>{_esc(model)}</p>")
    out.append(f'<p class="disclaimer">{_esc(MODEL_LIMITS)}</p>')
    out.append('<h3>Protocol</h3><table class="kv">')
    name = _get(protocol, "name") or str(protocol)
    out.append(f"<tr><th>Name</th><td>{_esc(name)}</td></tr>")
    for label, attr in (("Title", "title"), ("File", "path")):
        v = _get(protocol, attr)
        if v:
            out.append(f"<tr><th>{label}</th><td>{_esc(v)}</td></tr>")
    out.append("</table>")
    sources = _protocol_sources(comparison)
    if sources:
        out.append(
            '<p class="note">Sources of the protocol values and constraints:</p>'
            '<ul class="sources">'
        )
        out += [f"<li>{_esc(s)}</li>" for s in sources]
        out.append("</ul>")
    created = _get(comparison, "created")
    created_s = created.strftime("%Y-%m-%d %H:%M") if isinstance(created, datetime) else ""
    out.append('<h3>Provenance</h3><table class="kv">')
    out.append(f"<tr><th>rtplan version</th><td>{_esc(rtplan.__version__)}</td></tr>")
    if created_s:
        out.append(f"<tr><th>Comparison computed</th><td>{_esc(created_s)}</td></tr>")
    out.append(f"<tr><th>Report written</th><td>{datetime.now():%Y-%m-%d %H:%M}</td></tr>")
    out.append("</table></section>")
    return "\n".join(out)


def _images_section(comparison: Any, colors: dict[str, str]) -> str:
    out = ['<section id="images" class="page"><h2>Dose distributions</h2>']
    atlas = comparison.atlas
    ct_grid = _get(atlas, "grid")
    if ct_grid is None or _get(atlas, "ct_hu") is None:
        out.append('<p class="note">No CT image in the comparison.</p></section>')
        return "\n".join(out)
    out.append(
        '<p class="note">Per option: planes through the centroid of its highest-dose PTV '
        "(and through any PTV those planes miss). CT W400/L40; dose colour-wash from "
        f"{100 * _WASH_FROM:.0f} % of the highest prescription; isodose lines at 95 % of "
        "each prescription level and at 50 % of the highest. White: PTV, magenta dashed: "
        "CTV, magenta: GTV, dotted: organs at risk.</p>"
    )
    window = _display_window(comparison, ct_grid)
    for r in comparison.results:
        centre, ptv = _image_centre(r, ct_grid)
        planes = _three_planes(window, centre)
        uri = _option_images(comparison, r, window, planes)
        if uri is None:
            continue
        where = f"through the centroid of {ptv.name}" if ptv is not None else ""
        out.append(
            f'<figure class="keep"><h3>{_swatch(colors[r.name])}{_esc(r.name)}</h3>'
            f'<img alt="Axial, coronal and sagittal dose of {_esc(r.name)} {_esc(where)}" '
            f'src="{uri}"><figcaption>{_esc(r.name)}: planes {_esc(where)}.</figcaption>'
            "</figure>"
        )
        extras = _unseen_ptvs(r.option, planes, limit=3)
        if extras:
            display = _subsample(window)
            axials = [
                dataclasses.replace(
                    _make_plane("axial", display, p.centroid_mm, window), label=p.name
                )
                for p in extras
            ]
            uri = _option_images(comparison, r, window, axials, max_height_in=3.2)
            names = ", ".join(p.name for p in extras)
            if uri is not None:
                out.append(
                    f'<figure class="keep"><img alt="Dose of {_esc(r.name)} through {_esc(names)}"'
                    f' src="{uri}"><figcaption>{_esc(r.name)}: axial planes through the '
                    f"centroids of the targets the planes above miss ({_esc(names)})."
                    "</figcaption></figure>"
                )
    out.append("</section>")
    return "\n".join(out)


def _css() -> str:
    try:
        return resources.files("rtplan").joinpath("report.css").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # pragma: no cover - broken installation
        return "body{font-family:sans-serif}"


# ---------------------------------------------------------------------------- public API
def render_report(comparison: Any, *, title: str | None = None) -> str:
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
    """
    import rtplan

    title = title or f"{comparison.case}: comparison of field options"
    colors = _option_colors(comparison.options)
    stage_code = _get(comparison.stage, "string") if comparison.stage is not None else None
    protocol_name = _get(comparison.protocol, "name") or str(comparison.protocol)
    created = _get(comparison, "created")
    date = created.strftime("%Y-%m-%d") if isinstance(created, datetime) else ""

    body = []
    body.append('<header class="report-head">')
    body.append(f"<h1>{_esc(title)}</h1>")
    meta = [f"case {_esc(comparison.case)}"]
    if stage_code:
        meta.append(f"miTNM {_esc(stage_code)}")
    meta += [f"protocol {_esc(protocol_name)}", f"rtplan {_esc(rtplan.__version__)}"]
    if date:
        meta.append(_esc(date))
    sep = " \u00b7 "
    body.append(f'<div class="meta">{sep.join(meta)}</div></header>')
    body.append(
        '<p class="disclaimer"><b>Estimate for comparing options, not a treatment '
        "plan.</b> Doses come from a fast analytic model; see the last section for "
        "its limits.</p>"
    )
    body.append(_glance_section(comparison, colors))
    body.append(_stage_section(comparison))
    body.append(_options_section(comparison, colors))

    dvh_uri = _dvh_figure(comparison, colors)
    body.append('<section id="dvh" class="page"><h2>Dose-volume histograms</h2>')
    if dvh_uri:
        body.append(
            f'<figure><img alt="Cumulative DVHs, one panel per structure" '
            f'src="{dvh_uri}"><figcaption>Cumulative DVHs of the total physical dose, '
            "one colour per option; \u25bc / \u25b2 mark the upper / lower dose-volume "
            "limits of the protocol."
            "</figcaption></figure>"
        )
    else:
        body.append('<p class="note">No DVH was computed.</p>')
    body.append("</section>")

    body.append(_images_section(comparison, colors))
    body.append(_model_section(comparison))
    body.append(
        f"<footer>Generated by rtplan {_esc(rtplan.__version__)} on "
        f"{datetime.now():%Y-%m-%d %H:%M}. Decision support for comparing options; "
        "not a prescription.</footer>"
    )

    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{_css()}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(
    comparison: Any, path: str | os.PathLike[str], *, title: str | None = None
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
