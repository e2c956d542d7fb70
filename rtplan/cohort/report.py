"""The cohort report: one self-contained HTML page of a results folder.

:func:`write_cohort_report` reads the results of :func:`~rtplan.cohort.run_cohort` and
writes ``report.html``: the stage distribution (beside the published one when the
cohort was simulated like a series), the options and how many patients had each,
constraint pass rates per option, box plots of each OAR metric per option, paired
differences between options of the same patient (e.g. bowel-space V45Gy of PBRT+WPRT
minus PBRT), NTCP distributions, failed patients and where the time went. Figures are inline SVG
drawn by :mod:`rtplan.cohort.svg` (a few milliseconds each, so a report of a large
cohort stays quick); the page has no network reference and prints to PDF.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rtplan._version import __version__
from rtplan.cohort.results import Cell, CohortResults, atomic_write_text, load_results
from rtplan.cohort.simulate import PUBLISHED_STAGES
from rtplan.cohort.svg import svg_bars, svg_boxplot
from rtplan.errors import InvalidInputError
from rtplan.volumes import DISCLAIMER

__all__ = ["DOSE_STATEMENT", "render_cohort_report", "write_cohort_report"]

#: Shown at the top of every cohort report.
DOSE_STATEMENT = (
    "Doses are rtplan's analytic estimate, made to compare options with one another; they "
    "are never a treatment dose calculation."
)

_GROUPS = ("T0N0M0", "TrN0M0", "N1M0", "M1")
# components of option names that do not change the dose (androgen deprivation)
_NON_DOSE_COMPONENTS = ("ADT", "STAD")
_HEADLINE = (
    ("Spc_Bowel", "V45Gy"),
    ("Spc_Bowel", "Dmean"),
    ("Rectum", "V40Gy"),
    ("Rectum", "V65Gy"),
    ("Bladder", "V40Gy"),
    ("Bladder", "V65Gy"),
)
_LIMIT_RE = re.compile(r"^\s*([<>]=?)\s*([-+0-9.eE]+)")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #ccc}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}td{white-space:nowrap}
.wide{overflow-x:auto}
.warn{background:#fff4d6;border:1px solid #e0b84c;padding:.7em 1em;margin:1em 0}
.muted{color:#666;font-size:.9em}.fail{color:#a00}
.panels{display:flex;flex-wrap:wrap;gap:.5em 1.5em;margin:.5em 0}
svg text{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif}
details{margin:.5em 0}summary{cursor:pointer}
@media print{details{display:block}body{max-width:none}}
"""


# ============================================================================ data
@dataclass
class _Data:
    """The results, indexed for the report."""

    results: CohortResults
    patients: list[dict[str, Cell]]
    ok: list[dict[str, Cell]]
    # (protocol, option) -> patient ids having it
    option_patients: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # (group, structure, metric, unit) -> (protocol, option) -> patient -> value
    values: dict[tuple[str, str, str, str], dict[tuple[str, str], dict[str, float]]] = field(
        default_factory=dict
    )
    # same key -> (protocol, option) -> list of "pass"/"fail"
    status: dict[tuple[str, str, str, str], dict[tuple[str, str], list[str]]] = field(
        default_factory=dict
    )
    limits: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    protocols: list[str] = field(default_factory=list)

    def label(self, po: tuple[str, str]) -> str:
        """Option label, with the protocol when the cohort has several."""
        return f"{po[0]}: {po[1]}" if len(self.protocols) > 1 else po[1]

    def options(self) -> list[tuple[str, str]]:
        """(protocol, option) pairs, the most common first."""
        return sorted(self.option_patients, key=lambda k: (-len(self.option_patients[k]), k))


def _index(results: CohortResults) -> _Data:
    patients = results.patient_rows()
    ok = [p for p in patients if p["status"] == "ok"]
    data = _Data(results, patients, ok)
    cols = results.metrics.to_pydict()
    seen_po: dict[tuple[str, str], set[str]] = defaultdict(set)
    protocols: dict[str, None] = {}
    for pid, proto, option, group, structure, metric, unit, value, limit, status in zip(
        cols["patient_id"],
        cols["protocol"],
        cols["option"],
        cols["group"],
        cols["structure"],
        cols["metric"],
        cols["unit"],
        cols["value"],
        cols["limit"],
        cols["status"],
    ):
        po = (str(proto), str(option))
        protocols[po[0]] = None
        seen_po[po].add(str(pid))
        key = (str(group), str(structure), str(metric), str(unit))
        if value is not None:
            data.values.setdefault(key, {}).setdefault(po, {})[str(pid)] = float(value)
        if status:
            data.status.setdefault(key, {}).setdefault(po, []).append(str(status))
            if limit:
                data.limits[key] = str(limit)
    data.option_patients = {po: sorted(ids) for po, ids in seen_po.items()}
    data.protocols = list(protocols)
    return data


# ============================================================================ html bits
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], *, left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned."""
    cls = [' class="l"' if i < left else "" for i in range(len(header))]
    out = ["<table><thead><tr>"]
    out += [f"<th{c}>{_e(h)}</th>" for h, c in zip(header, cls)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{c}>{_e(v)}</td>" for v, c in zip(row, cls)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _kv_table(rows: Iterable[tuple[str, object]]) -> str:
    """A two-column table of names and values, without a header."""
    body = "".join(
        f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in rows
    )
    return f"<table><tbody>{body}</tbody></table>"


def _float(value: Cell) -> float:
    """A numeric cell as float; NaN for a missing or non-numeric one."""
    if isinstance(value, (int, float)):
        return float(value)
    return float("nan")


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:.1f}%" if n else "-"


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.{digits}f}"


def _limit_value(text: str) -> float | None:
    m = _LIMIT_RE.match(text)
    return float(m.group(2)) if m else None


# ============================================================================ sections
def _header(data: _Data, like: str | None) -> str:
    run = data.results.run
    settings = run.get("settings", {})
    spacing = settings.get("atlas_spacing_mm")
    grid = "atlas default" if spacing is None else " x ".join(f"{v:g}" for v in spacing) + " mm"
    n = len(data.patients)
    failed = n - len(data.ok)
    rows = [
        ("results folder", str(data.results.folder)),
        ("manifest", run.get("manifest") or "-"),
        ("patients", f"{n} ({len(data.ok)} ok, {failed} failed)"),
        ("atlas grid", grid),
        ("dose grid", f"{settings.get('dose_spacing_mm', '-')} mm"),
        ("rtplan", run.get("rtplan_version", __version__)),
        ("run finished", run.get("finished_at") or "not finished"),
        ("report written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
    if like:
        rows.insert(2, ("simulated like", like))
    return (
        "<h1>rtplan cohort report</h1>"
        f'<div class="warn"><b>{_e(DOSE_STATEMENT)}</b> {_e(DISCLAIMER)}</div>' + _kv_table(rows)
    )


def _stage_section(data: _Data, like: str | None) -> str:
    counts = Counter(str(p["ucla_group"]) for p in data.patients if p["ucla_group"])
    n = sum(counts.values())
    published = PUBLISHED_STAGES.get(like or "")
    header = ["stage group", "patients", "%"]
    if published is not None:
        header += [f"{like} n", f"{like} %"]
    rows = []
    for g in _GROUPS:
        row: list[object] = [g, counts.get(g, 0), _pct(counts.get(g, 0), n)]
        if published is not None:
            ref = published[0]
            total = sum(ref.values())
            row += [ref.get(g, 0), _pct(ref.get(g, 0), total)]
        rows.append(row)
    total_row: list[object] = ["all staged", n, "100%" if n else "-"]
    if published is not None:
        total_row += [sum(published[0].values()), "100%"]
    rows.append(total_row)
    out = ["<h2>Stage distribution (PSMA PET, UCLA groups)</h2>", _table(header, rows)]
    not_staged = len(data.patients) - n
    if not_staged:
        out.append(f'<p class="muted">{not_staged} patient(s) failed before staging.</p>')
    if published is not None:
        out.append(f'<p class="muted">Published series: {_e(published[1])}.</p>')
        out.append(_stage_figure(counts, n, published[0], str(like)))
    out.append(_simulated_check(data))
    out.append(_detailed_stages(data))
    return "".join(out)


def _stage_figure(counts: Mapping[str, int], n: int, ref: Mapping[str, int], like: str) -> str:
    total = sum(ref.values())
    bars = [
        (g, [100.0 * counts.get(g, 0) / max(n, 1), 100.0 * ref.get(g, 0) / total]) for g in _GROUPS
    ]
    return svg_bars(bars, ["cohort", like], "% of patients")


def _simulated_check(data: _Data) -> str:
    pairs = []
    for p in data.patients:
        extra = json.loads(str(p["extra"])) if p["extra"] else {}
        if "x_simulated_group" in extra and p["ucla_group"]:
            pairs.append((extra["x_simulated_group"], p["ucla_group"]))
    if not pairs:
        return ""
    same = sum(a == b for a, b in pairs)
    return (
        f"<p>Simulated cohort: staging gave back the group each patient was drawn for in "
        f"{same} of {len(pairs)} staged patients.</p>"
    )


def _detailed_stages(data: _Data) -> str:
    counts = Counter(str(p["stage"]) for p in data.ok)
    rows = [(s, k, _pct(k, len(data.ok))) for s, k in counts.most_common()]
    if not rows:
        return ""
    return (
        "<details><summary>miTNM stages (UCLA form)</summary>"
        + _table(["stage", "patients", "%"], rows)
        + "</details>"
    )


def _options_section(data: _Data) -> str:
    group_of = {p["patient_id"]: p["ucla_group"] for p in data.ok}
    rows = []
    for po in data.options():
        ids = data.option_patients[po]
        by = Counter(group_of.get(i, "") for i in ids)
        rows.append([data.label(po), len(ids), *(by.get(g, 0) for g in _GROUPS)])
    return (
        "<h2>Options compared</h2><p>Each patient's options are those rtplan suggests for "
        "the stage (rtplan.suggest_options); a patient has two or more.</p>"
        + _table(["option", "patients", *_GROUPS], rows)
    )


def _pass_rate_section(data: _Data) -> str:
    options = data.options()
    keys = [k for k in data.status if k[0].startswith("OAR")]
    if not keys:
        return "<h2>Constraint pass rates</h2><p>No constraint was evaluated.</p>"
    rows = []
    for key in keys:
        cells: list[object] = [key[1], key[2], data.limits.get(key, "")]
        for po in options:
            st = data.status[key].get(po, [])
            ok = sum(s == "pass" for s in st)
            cells.append(f"{round(100.0 * ok / len(st))}% ({ok}/{len(st)})" if st else "")
        rows.append(cells)
    header = ["structure", "metric", "limit", *(data.label(po) for po in options)]
    return (
        "<h2>Constraint pass rates per option</h2><p>Share of the patients with that option "
        "whose estimate meets the protocol constraint (SBRT constraints for the SBRT "
        "courses' own fractionation).</p>"
        + '<div class="wide">'
        + _table(header, rows, left=3)
        + "</div>"
    )


def _panel_grid(
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float]]], float | None]],
    *,
    zero: bool = False,
) -> str:
    """Box-plot panels side by side (wrapping); ``zero`` marks x = 0 instead of a limit."""
    if not panels:
        return ""
    figs = [
        svg_boxplot(series, title, ref_x=limit, ref_label="0" if zero else "limit")
        for title, series, limit in panels
    ]
    return '<div class="panels">' + "".join(figs) + "</div>"


def _series(data: _Data, key: tuple[str, str, str, str]) -> list[tuple[str, Sequence[float]]]:
    by_po = data.values.get(key, {})
    return [(data.label(po), list(by_po[po].values())) for po in data.options() if by_po.get(po)]


def _distribution_section(data: _Data) -> str:
    out = [
        "<h2>OAR metrics per option</h2><p>Box plots over the patients with each option "
        "(box: quartiles, line: median, whiskers: 1.5 IQR); the dashed line is the protocol "
        "limit.</p>"
    ]
    constrained = [k for k in data.values if k[0] == "OAR" and k in data.limits]
    structures = list(dict.fromkeys(k[1] for k in constrained))
    for s in structures:
        panels = [
            (f"{k[1]} {k[2]} [{k[3]}]", _series(data, k), _limit_value(data.limits[k]))
            for k in constrained
            if k[1] == s
        ]
        out.append(f"<h3>{_e(s)}</h3>" + _panel_grid(panels))
    means = [k for k in data.values if k[0] == "OAR" and k[2] == "Dmean"]
    if means:
        panels = [(f"{k[1]} Dmean [Gy]", _series(data, k), None) for k in means]
        out.append("<h3>Mean doses</h3>" + _panel_grid(panels))
    return "".join(out)


def _components(option: str) -> frozenset[str]:
    return frozenset(option.split("+"))


def _pairs(data: _Data) -> dict[tuple[str, str, str], list[str]]:
    """Option pairs that differ by one dose component, and the patients having both.

    Keys are (protocol, with, without): ``with`` adds one component (WPRT, Nboost,
    LRboost, SBRT...; not ADT or STAD, which do not change the dose) to ``without``.
    """
    by_patient: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (proto, option), ids in data.option_patients.items():
        for pid in ids:
            by_patient[(proto, pid)].append(option)
    out: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for (proto, pid), options in by_patient.items():
        for a in options:
            for b in options:
                extra = _components(a) - _components(b)
                if len(extra) == 1 and _components(b) < _components(a):
                    if next(iter(extra)) not in _NON_DOSE_COMPONENTS:
                        out[(proto, a, b)].append(pid)
    return dict(sorted(out.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _differences(
    data: _Data, key: tuple[str, str, str, str], proto: str, a: str, b: str, ids: Sequence[str]
) -> list[float]:
    va = data.values.get(key, {}).get((proto, a), {})
    vb = data.values.get(key, {}).get((proto, b), {})
    return [va[i] - vb[i] for i in ids if i in va and i in vb]


def _summary_cells(diffs: Sequence[float]) -> list[object]:
    if not diffs:
        return ["0", "-", "-", "-"]
    d = np.asarray(diffs, float)
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    return [
        len(d),
        _num(float(med)),
        f"{_num(float(q1))} to {_num(float(q3))}",
        f"{_num(float(d.min()))} to {_num(float(d.max()))}",
    ]


def _pair_label(a: str, b: str) -> str:
    """``"+WPRT to PBRT"``: the component ``a`` adds to ``b``."""
    added = sorted(_components(a) - _components(b))
    return f"+{'+'.join(added)} to {b}"


def _paired_section(data: _Data) -> str:
    pairs = _pairs(data)
    out = [
        "<h2>Paired differences between options</h2><p>For each patient who has both "
        "options of a pair (same anatomy, same lesions): the metric of the option with one "
        "more component minus the option without it, e.g. <i>+WPRT to PBRT</i> is "
        "PBRT+WPRT minus PBRT. Positive means the added component gives more.</p>"
    ]
    if not pairs:
        return "".join(out) + "<p>No patient has two options that differ by one component.</p>"
    keys = [k for k in data.values if k[0] == "OAR" and (k in data.limits or k[2] == "Dmean")]
    keys += [k for k in data.values if k[0] == "NTCP"]
    headline = [k for k in keys if (k[1], k[2]) in _HEADLINE or k[0] == "NTCP"]
    panels = []
    for k in headline:
        series = [
            (
                _pair_label(a, b) + (f" ({proto})" if len(data.protocols) > 1 else ""),
                _differences(data, k, proto, a, b, ids),
            )
            for (proto, a, b), ids in pairs.items()
        ]
        if any(vals for _, vals in series):
            panels.append((f"{k[1]} {k[2]} [{k[3]}]: difference", series, 0.0))
    out.append(_panel_grid(panels, zero=True))
    for (proto, a, b), ids in pairs.items():
        title = f"{a} minus {b}" + (f" ({proto})" if len(data.protocols) > 1 else "")
        rows = [
            [f"{k[1]} {k[2]}", k[3], *_summary_cells(_differences(data, k, proto, a, b, ids))]
            for k in keys
        ]
        out.append(
            f"<details><summary>{_e(title)}: {len(ids)} patient{'s' if len(ids) != 1 else ''}, "
            "every OAR and NTCP "
            "metric</summary>"
            + _table(["metric", "unit", "patients", "median", "IQR", "range"], rows)
            + "</details>"
        )
    return "".join(out)


def _ntcp_section(data: _Data) -> str:
    keys = [k for k in data.values if k[0] == "NTCP"]
    if not keys:
        return ""
    panels = [(f"{k[1]}: {k[2]} [%]", _series(data, k), None) for k in keys]
    return (
        "<h2>NTCP per option</h2><p>Lyman-Kutcher-Burman NTCP of the EQD2 composite, with "
        "the protocol's model parameters; as uncertain as the dose estimate it is "
        "computed from.</p>" + _panel_grid(panels)
    )


def _failed_section(data: _Data) -> str:
    failed = [p for p in data.patients if p["status"] != "ok"]
    if not failed:
        return "<h2>Failed patients</h2><p>None.</p>"
    rows = [(p["patient_id"], p["failed_step"], p["error"]) for p in failed]
    return f'<h2 class="fail">Failed patients ({len(failed)})</h2>' + _table(
        ["patient", "step", "error"], rows, left=3
    )


def _timing_section(data: _Data) -> str:
    steps = ("atlas", "lesions", "stage", "options", "dose", "files", "total")
    rows = []
    for s in steps:
        vals = [_float(p.get(f"seconds_{s}")) for p in data.ok]
        vals = [v for v in vals if np.isfinite(v)]
        if vals:
            rows.append([s, _num(float(np.median(vals))), _num(float(np.sum(vals)), 1)])
    workers: dict[str, list[float]] = defaultdict(list)
    for p in data.ok:
        rss = _float(p.get("peak_rss_mb"))
        if np.isfinite(rss):
            workers[str(p["worker"])].append(rss)
    wrows = [(w, len(v), _num(max(v), 0)) for w, v in sorted(workers.items())]
    return (
        "<h2>Where the time went</h2>"
        + _table(["step", "median per patient [s]", "sum [s]"], rows)
        + _table(["worker", "patients", "peak memory [MB]"], wrows)
    )


def _notes(like: str | None) -> str:
    sim = (
        f"<p>The cohort was simulated like {_e(like)}: atlas variants with lesions placed by "
        "region and size; the site and size distributions are sourced where CLINICAL.md has "
        "them and otherwise tool defaults (rtplan.cohort.simulate, docs/cohort.md).</p>"
        if like
        else ""
    )
    return (
        "<h2>Notes</h2>" + sim + "<p>" + _e(DOSE_STATEMENT) + " The model, its parameters and "
        "limits are in docs/dose_model.md of rtplan and in each patient's report.</p>"
    )


def render_cohort_report(results: CohortResults, *, like: str | None = None) -> str:
    """The cohort report as HTML text.

    Parameters
    ----------
    results : CohortResults
        From :func:`~rtplan.cohort.load_results`.
    like : str, optional
        Compare the stage mix with this published cohort (default: the one the manifest
        was simulated like, if any).

    Returns
    -------
    str
        A self-contained HTML page.
    """
    data = _index(results)
    like = like or results.like
    body = [
        _header(data, like),
        _stage_section(data, like),
        _options_section(data),
        _pass_rate_section(data),
        _distribution_section(data),
        _paired_section(data),
        _ntcp_section(data),
        _failed_section(data),
        _timing_section(data),
        _notes(like),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>rtplan cohort report</title>"
        f"<style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write_cohort_report(
    results_dir: str | Path,
    *,
    out: str | Path | None = None,
    like: str | None = None,
) -> Path:
    """Write the cohort report of a results folder.

    Parameters
    ----------
    results_dir : path
        The ``out`` folder of :func:`~rtplan.cohort.run_cohort`.
    out : path, optional
        The HTML file; default ``results_dir/report.html``.
    like : str, optional
        Published cohort to compare the stage mix with (default: from the manifest).

    Returns
    -------
    Path
        The file written.
    """
    results = load_results(results_dir)
    if like is not None and like not in PUBLISHED_STAGES:
        raise InvalidInputError(f"like must be one of {', '.join(PUBLISHED_STAGES)}, got {like!r}")
    path = Path(out) if out is not None else Path(results_dir) / "report.html"
    return atomic_write_text(path, render_cohort_report(results, like=like))
