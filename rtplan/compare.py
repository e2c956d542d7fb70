"""Compare field options side by side: targets, dose estimate, DVH metrics, constraints, NTCP.

:func:`compare_options` runs every option of a case and gathers one :class:`Comparison`,
whose :attr:`Comparison.table` has one row per metric and one column per option. The
report, the CSV/JSON export and the DICOM export all read the comparison.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rtplan._io import atomic_write_text
from rtplan._progress import as_progress
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.plan import FieldOption
from rtplan.structures import Structure

__all__ = [
    "DEFAULT_OARS",
    "Comparison",
    "ComparisonTable",
    "MetricRow",
    "OptionResult",
    "compare_options",
]


@dataclass(frozen=True)
class MetricRow:
    """One row of the comparison table: a metric of one structure across options.

    Parameters
    ----------
    group : str
        Section of the table: ``"Target"``, ``"OAR"``, ``"NTCP"`` or ``"Plan"``.
    structure : str
        Structure name (TG-263), or ``""`` for plan-level rows.
    metric : str
        Metric label, e.g. ``"V65Gy"``, ``"D95%"``, ``"Dmean"``, ``"Volume"``, ``"NTCP"``.
    unit : str
        Unit of the values: ``"%"``, ``"cc"``, ``"Gy"``, ``"%Rx"``, ``""``.
    values : dict of str to float or None
        Option name -> value (``None`` where the metric does not apply).
    limit : str or None
        The protocol constraint as text (e.g. ``"<= 35 %"``), if any.
    status : dict of str to str or None
        Option name -> ``"pass"`` / ``"fail"`` / ``None`` (no constraint).
    headroom : dict of str to float or None
        Option name -> distance to the limit in the row's unit, positive when passing.
    source : str
        Source of the constraint or model parameters.
    """

    group: str
    structure: str
    metric: str
    unit: str
    values: dict[str, float | None]
    limit: str | None = None
    status: dict[str, str | None] = field(default_factory=dict)
    headroom: dict[str, float | None] = field(default_factory=dict)
    source: str = ""

    @property
    def label(self) -> str:
        """``"Rectum V65Gy [%]"``-style row label."""
        unit = f" [{self.unit}]" if self.unit else ""
        name = f"{self.structure} " if self.structure else ""
        return f"{name}{self.metric}{unit}"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class ComparisonTable:
    """The options side by side: one :class:`MetricRow` per metric, options as columns."""

    options: tuple[str, ...]
    rows: tuple[MetricRow, ...]

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts: metadata keys, one value key and one status key per option."""
        out = []
        for r in self.rows:
            rec: dict[str, Any] = {
                "group": r.group,
                "structure": r.structure,
                "metric": r.metric,
                "unit": r.unit,
                "limit": r.limit or "",
            }
            for o in self.options:
                rec[o] = r.values.get(o)
            for o in self.options:
                rec[f"{o} status"] = r.status.get(o) or ""
            rec["source"] = r.source
            out.append(rec)
        return out

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text (options as columns); written to ``path`` when given."""
        buf = io.StringIO()
        recs = self.records()
        fieldnames = (
            ["group", "structure", "metric", "unit", "limit"]
            + list(self.options)
            + [f"{o} status" for o in self.options]
            + ["source"]
        )
        writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        for rec in recs:
            writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text ``{"options": [...], "rows": [...]}``; written to ``path`` when given."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        payload = {
            "options": list(self.options),
            "rows": [
                {
                    "group": r.group,
                    "structure": r.structure,
                    "metric": r.metric,
                    "unit": r.unit,
                    "limit": r.limit,
                    "values": {o: clean(r.values.get(o)) for o in self.options},
                    "status": {o: r.status.get(o) for o in self.options},
                    "headroom": {o: clean(r.headroom.get(o)) for o in self.options},
                    "source": r.source,
                }
                for r in self.rows
            ],
        }
        text = json.dumps(payload, indent=2)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_pandas(self):  # pragma: no cover - optional dependency
        """A pandas DataFrame indexed by row label (needs pandas installed)."""
        import pandas as pd

        data = {o: [r.values.get(o) for r in self.rows] for o in self.options}
        return pd.DataFrame(data, index=[r.label for r in self.rows])

    def row(self, structure: str, metric: str) -> MetricRow:
        """The row of one structure's metric; ``KeyError`` if absent."""
        for r in self.rows:
            if r.structure == structure and r.metric == metric:
                return r
        raise KeyError(f"no row for {structure!r} {metric!r}")

    def __str__(self) -> str:
        labels = [r.label for r in self.rows]
        w0 = max([len("metric"), *map(len, labels)])
        widths = [max(len(o), 9) for o in self.options]
        lines = [
            "  ".join(["metric".ljust(w0), *(o.rjust(w) for o, w in zip(self.options, widths))])
        ]
        for r, label in zip(self.rows, labels):
            cells = []
            for o, w in zip(self.options, widths):
                mark = {"pass": " ", "fail": "!"}.get(r.status.get(o) or "", " ")
                cells.append((_fmt(r.values.get(o)) + mark).rjust(w))
            lines.append("  ".join([label.ljust(w0), *cells]))
        return "\n".join(lines)


@dataclass
class OptionResult:
    """Everything computed for one option.

    Attributes
    ----------
    option : FieldOption
        The option (courses, targets, ADT flag, evidence line).
    dose_grid : ImageGrid
        Grid of the dose arrays (default 2.5 mm cubic).
    dose_gy : ndarray of float, shape ``dose_grid.shape``
        Total physical dose of all courses, Gy.
    eqd2_gy : ndarray of float or None
        Composite EQD2 (alpha/beta 3 Gy unless stated), Gy, where courses differ in
        fractionation.
    course_doses_gy : dict of str to ndarray
        Physical dose per course.
    dvhs : dict of str to object
        Structure name -> DVH (:class:`rtplan.dvh.DVH`) of the total dose.
    structures : list of Structure
        The option's own structures (GTV/CTV/PTV) on the CT grid.
    """

    option: FieldOption
    dose_grid: ImageGrid
    dose_gy: np.ndarray
    eqd2_gy: np.ndarray | None = None
    course_doses_gy: dict[str, np.ndarray] = field(default_factory=dict)
    dvhs: dict[str, Any] = field(default_factory=dict)
    structures: list[Structure] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Option name."""
        return self.option.name


@dataclass
class Comparison:
    """The options of one case side by side.

    Attributes
    ----------
    case : str
        Case label (e.g. ``"TrN0M0"`` or a patient-free identifier).
    atlas : object
        The :class:`rtplan.atlas.Atlas` (CT, structures, landmarks).
    lesions : object
        The :class:`rtplan.lesions.Lesions`.
    stage : object
        The :class:`rtplan.staging.Stage`.
    protocol : object
        The :class:`rtplan.protocol.Protocol` used.
    results : list of OptionResult
        One per option, in order.
    table : ComparisonTable
        Metrics as rows, options as columns.
    dose_model : str
        Name and parameters of the dose model (for reports).
    created : datetime
        When the comparison was computed.
    """

    case: str
    atlas: Any
    lesions: Any
    stage: Any
    protocol: Any
    results: list[OptionResult]
    table: ComparisonTable
    dose_model: str = ""
    created: datetime = field(default_factory=datetime.now)

    @property
    def options(self) -> list[str]:
        """Option names in order."""
        return [r.name for r in self.results]

    def result(self, option: str) -> OptionResult:
        """The result of one option by name."""
        for r in self.results:
            if r.name == option:
                return r
        raise KeyError(f"no option {option!r}; options are {', '.join(self.options)}")

    def all_structures(self, options: Sequence[str] | None = None) -> list[Structure]:
        """Atlas structures followed by the target structures of the options, names unique."""
        seen: dict[str, Structure] = {s.name: s for s in self.atlas.structures.values()}
        for r in self.results:
            if options is not None and r.name not in options:
                continue
            for s in r.structures:
                seen.setdefault(s.name, s)
        return list(seen.values())

    def write_rtstruct(
        self,
        path: str | Path,
        *,
        ct_folder: str | Path,
        options: Sequence[str] | None = None,
        label: str | None = None,
    ) -> Path:
        """Write the anatomy and the targets of the options as one RTSTRUCT.

        Parameters
        ----------
        path : str or Path
            Output file (or a folder, which gets ``RS_<case>.dcm``).
        ct_folder : str or Path
            The CT series the structures refer to (e.g. from :meth:`Atlas.export_ct`).
        options : sequence of str, optional
            Options whose targets to include; default all.
        label : str, optional
            Structure Set Label; default ``"rtplan <case>"``.
        """
        from rtplan.dicom_io import write_rtstruct

        out = Path(path)
        if out.is_dir():
            out = out / f"RS_{_safe(self.case or 'rtplan')}.dcm"
        structures = [s for s in self.all_structures(options) if not s.is_empty]
        return write_rtstruct(
            structures, ct_folder, out, label=(label or f"rtplan {self.case}".strip())[:16]
        )

    def write_rtdose(
        self, folder: str | Path, *, ct_folder: str | Path, options: Sequence[str] | None = None
    ) -> list[Path]:
        """Write one RTDOSE (total physical dose estimate) per option into ``folder``.

        Files are named ``RD_<option>.dcm``; each says in its description and comment
        that it is an rtplan estimate, not a calculated plan.
        """
        from rtplan.dicom_io import write_rtdose

        paths = []
        for r in self.results:
            if options is not None and r.name not in options:
                continue
            paths.append(
                write_rtdose(
                    r.dose_gy,
                    r.dose_grid,
                    Path(folder) / f"RD_{_safe(r.name)}.dcm",
                    ct_folder=ct_folder,
                    description=f"rtplan estimate: {r.name}",
                )
            )
        return paths

    def write_metrics(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``metrics.csv`` and ``metrics.json`` (options as columns) into ``folder``."""
        folder = Path(folder)
        csv_path, json_path = folder / "metrics.csv", folder / "metrics.json"
        atomic_write_text(csv_path, self.table.to_csv())
        atomic_write_text(json_path, self.table.to_json())
        return csv_path, json_path

    def write_report(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (see :func:`rtplan.report.write_report`)."""
        from rtplan.report import write_report

        return write_report(self, path)


def _safe(name: str) -> str:
    """File-name-safe version of an option or case name (``PBRT+WPRT`` -> ``PBRT+WPRT``)."""
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in name)


# ---------------------------------------------------------------------------- running options
#: OARs reported for every option when the anatomy has them (in this order); structures
#: named by the protocol's constraints and NTCP models are added after these.
DEFAULT_OARS: tuple[str, ...] = (
    "Rectum",
    "Bladder",
    "Spc_Bowel",
    "Colon_Sigmoid",
    "Canal_Anal",
    "PenileBulb",
    "Femur_Head_L",
    "Femur_Head_R",
)


def _unique_by_name(structures: Sequence[Structure]) -> list[Structure]:
    seen: dict[str, Structure] = {}
    for s in structures:
        seen.setdefault(s.name, s)
    return list(seen.values())


def _option_structures(option: FieldOption) -> list[Structure]:
    out: list[Structure] = []
    for t in option.targets:
        out.extend(s for s in (t.gtv, t.ctv, t.ptv) if s is not None)
    out.extend(option.extra_structures)
    return _unique_by_name(out)


def _oar_names(atlas: Any, protocol: Any, oars: Sequence[str] | None) -> list[str]:
    ss = atlas.structures
    wanted = list(oars) if oars is not None else list(DEFAULT_OARS)
    if oars is None:
        wanted += [c.structure for c in protocol.constraints]
        wanted += list(protocol.ntcp_models)
    names: list[str] = []
    for n in wanted:
        key = ss.resolve(n)
        if key is not None and key not in names and not ss[key].is_empty:
            names.append(key)
    return names


def compare_options(
    atlas: Any,
    lesions: Any,
    options: Sequence[FieldOption],
    *,
    protocol: Any = "nrg_salvage",
    stage: Any = None,
    case: str = "",
    dose_spacing_mm: float = 2.5,
    oars: Sequence[str] | None = None,
    dose_parameters: Any = None,
    progress: Any = None,
) -> Comparison:
    """Estimate the dose of every option and lay the options side by side.

    Parameters
    ----------
    atlas : Atlas
        Anatomy (CT grid, structures incl. ``Body``).
    lesions : Lesions or None
        The PSMA-positive lesions (kept for the report).
    options : sequence of FieldOption or of OptionSpec
        Built options (:func:`rtplan.volumes.build_options`), or the specifications of
        :func:`rtplan.volumes.suggest_options`, which are built here; names must be unique.
    protocol : str, path or Protocol
        Constraints, NTCP model choices and alpha/beta values.
    stage : Stage, optional
        The miTNM stage (kept for the report).
    case : str
        Case label for the report and file names.
    dose_spacing_mm : float
        Dose grid spacing, mm (default 2.5 mm cubic, tool default).
    oars : sequence of str, optional
        OARs to report; default :data:`DEFAULT_OARS` plus every structure the protocol's
        constraints and NTCP models name, where the anatomy has it.
    dose_parameters : DoseModelParameters, optional
        Dose model parameters (defaults documented in docs/dose_model.md).
    progress : Progress, callable or bool, optional
        Told about each option as it starts (see :func:`rtplan._progress.as_progress`);
        default silent.

    Returns
    -------
    Comparison

    Notes
    -----
    Conventional-course constraints and target coverage are evaluated on the physical
    dose of the conventional courses (which share a fraction size regime); SBRT
    constraints on each SBRT course's own dose, for its number of fractions (the worst
    course is reported). NTCP uses the EQD2 composite of all courses with the model's
    alpha/beta. The dose is an estimate for comparing options, not a treatment plan.
    """
    from rtplan.dose_estimate import DoseModelParameters, estimate_option_dose, make_dose_grid
    from rtplan.dvh import compute_dvh, evaluate_constraint, lkb_ntcp, structure_on_dose_grid
    from rtplan.protocol import load_protocol

    protocol = load_protocol(protocol)
    if options and all(not isinstance(o, FieldOption) for o in options):
        # option specifications (rtplan.volumes.suggest_options): build their volumes first
        from rtplan.volumes import build_options

        options = build_options(list(options), atlas, lesions, protocol)
    bad = [type(o).__name__ for o in options if not isinstance(o, FieldOption)]
    if bad:
        raise TypeError(
            f"options must be FieldOptions (rtplan.volumes.build_options) or all OptionSpecs "
            f"(rtplan.volumes.suggest_options); got {', '.join(sorted(set(bad)))}"
        )
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"option names must be unique, got {names}")
    if not options:
        raise InvalidInputError("compare_options needs at least one option")
    report = as_progress(False if progress is None else progress)
    params = dose_parameters or DoseModelParameters()
    body = atlas.structures["Body"] if "Body" in atlas.structures else None
    dose_grid = make_dose_grid(atlas.grid, spacing_mm=dose_spacing_mm, body=body)
    oar_names = _oar_names(atlas, protocol, oars)
    resampled: dict[int, Any] = {}

    def on_grid(s: Structure) -> Any:
        key = id(s)
        if key not in resampled:
            resampled[key] = (s, structure_on_dose_grid(s, dose_grid))
        return resampled[key][1]

    oar_structs = [atlas.structures[n] for n in oar_names]
    results: list[OptionResult] = []
    per_option: dict[str, dict[str, Any]] = {}
    for option in options:
        report.step(f"{case + ': ' if case else ''}dose estimate for option {option.name}")
        od = estimate_option_dose(option, dose_grid, body=body, params=params)
        total = od.total_gy
        conv = [c for c in od.courses if c.technique != "sbrt"]
        conv_dose = total if len(conv) == len(od.courses) else sum(c.dose_gy for c in conv)
        structs = _option_structures(option)
        dvhs = {s.name: compute_dvh(total, dose_grid, on_grid(s)) for s in oar_structs + structs}
        # values keyed (group, structure, metric, unit) -> (value, status, headroom, limit, source)
        vals: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}

        # targets: each is evaluated on the dose of the courses that treat it, against the
        # sum of its prescriptions in those courses; the hot spot (D2%) on the PTV minus
        # the PTVs of higher prescription (TG-263 "PTV!") so a SIB is not counted as one
        rx: dict[str, float] = {}
        target_dose: dict[str, np.ndarray] = {}
        in_courses: dict[str, set[int]] = {}
        for n_course, (course, cd) in enumerate(zip(option.courses, od.courses)):
            for t in course.targets:
                in_courses.setdefault(t.name, set()).add(n_course)
                rx[t.name] = rx.get(t.name, 0.0) + t.prescription_gy
                prev = target_dose.get(t.name)
                target_dose[t.name] = cd.dose_gy if prev is None else prev + cd.dose_gy
        targets = _unique_targets(option)
        for t in targets:
            d, p = target_dose[t.name], rx[t.name]
            tdvh = compute_dvh(d, dose_grid, on_grid(t.ptv))
            vals[("Target", t.name, "Volume", "cc")] = (t.ptv.volume_cc,)
            vals[("Target", t.name, "Rx", "Gy")] = (p,)
            vals[("Target", t.name, "D95%", "Gy")] = (tdvh.dose_at_volume_pct(95.0),)
            vals[("Target", t.name, "V95%Rx", "%")] = (tdvh.volume_at_dose_pct(0.95 * p),)
            higher = [
                u.ptv
                for u in targets
                if rx[u.name] > p and u.ptv is not t.ptv and in_courses[u.name] & in_courses[t.name]
            ]
            hot = _minus(t.ptv, higher)
            if hot is not None:
                hdvh = tdvh if hot is t.ptv else compute_dvh(d, dose_grid, hot)
                vals[("Target", t.name, "D2%", "%Rx")] = (100.0 * hdvh.dose_at_volume_pct(2.0) / p,)
            if t.ctv is not None and not t.ctv.is_empty:
                cdvh = compute_dvh(d, dose_grid, on_grid(t.ctv))
                vals[("Target", t.ctv.name, "Volume", "cc")] = (t.ctv.volume_cc,)
                vals[("Target", t.ctv.name, "D98%", "%Rx")] = (
                    100.0 * cdvh.dose_at_volume_pct(98.0) / p,
                )

        # OAR constraints of the conventional courses (physical dose of those courses)
        conv_dvhs = (
            dvhs
            if conv_dose is total
            else {s.name: compute_dvh(conv_dose, dose_grid, on_grid(s)) for s in oar_structs}
        )
        if conv:
            for c in protocol.constraints_for("conventional"):
                key = atlas.structures.resolve(c.structure)
                if key is None or key not in conv_dvhs:
                    continue
                r = evaluate_constraint(c, conv_dvhs[key])
                vals[("OAR", key, c.metric, c.unit)] = (
                    r.value,
                    "pass" if r.passed else "fail",
                    r.margin,
                    c.text,
                    c.source,
                )
        for course, cd in zip(option.courses, od.courses):
            if course.technique != "sbrt":
                continue
            for c in protocol.constraints_for("sbrt", fractions=course.fractions):
                key = atlas.structures.resolve(c.structure)
                if key is None or key not in oar_names:
                    continue
                r = evaluate_constraint(
                    c, compute_dvh(cd.dose_gy, dose_grid, on_grid(atlas.structures[key]))
                )
                row_key = ("OAR (SBRT)", key, c.metric, c.unit)
                old = vals.get(row_key)
                if old is None or r.margin < old[2]:
                    vals[row_key] = (
                        r.value,
                        "pass" if r.passed else "fail",
                        r.margin,
                        f"{c.text} ({course.fractions} fx)",
                        c.source,
                    )
        for s in oar_structs:
            vals[("OAR", s.name, "Dmean", "Gy")] = (dvhs[s.name].mean_gy,)
            vals[("OAR", s.name, "D0.03cc", "Gy")] = (dvhs[s.name].dose_at_volume_cc(0.03),)

        # NTCP on the EQD2 composite
        eqd2_cache: dict[float, np.ndarray] = {}
        for sname, model in protocol.ntcp_models.items():
            key = atlas.structures.resolve(sname)
            if key is None:
                continue
            ab = float(model.alpha_beta_gy)
            if ab not in eqd2_cache:
                eqd2_cache[ab] = od.eqd2_gy(ab)
            edvh = compute_dvh(eqd2_cache[ab], dose_grid, on_grid(atlas.structures[key]))
            vals[("NTCP", key, f"NTCP {model.parameter_set}", "%")] = (
                100.0 * lkb_ntcp(edvh, model.to_lkb()),
                None,
                None,
                None,
                f"LKB TD50={model.td50_gy:g} Gy, m={model.m:g}, n={model.n:g}, "
                f"alpha/beta={ab:g} Gy; {model.source}",
            )
        eqd2 = eqd2_cache.get(3.0)
        if eqd2 is None and len({c.fractions for c in od.courses}) > 1:
            eqd2 = od.eqd2_gy(3.0)
        results.append(
            OptionResult(
                option=option,
                dose_grid=dose_grid,
                dose_gy=total,
                eqd2_gy=eqd2,
                course_doses_gy={c.name: c.dose_gy for c in od.courses},
                dvhs=dvhs,
                structures=structs,
            )
        )
        per_option[option.name] = vals

    table = _assemble_table(names, per_option)
    return Comparison(
        case=case,
        atlas=atlas,
        lesions=lesions,
        stage=stage,
        protocol=protocol,
        results=results,
        table=table,
        dose_model=_describe_model(params, dose_spacing_mm),
    )


def _minus(ptv: Structure, others: Sequence[Structure]) -> Structure | None:
    """``ptv`` without the voxels of ``others`` (itself when nothing overlaps; None if empty)."""
    if not others:
        return ptv
    mask = ptv.mask
    for o in others:
        if o.grid.equals(ptv.grid):
            mask &= ~o.mask
    if not mask.any():
        return None
    if np.count_nonzero(mask) == ptv.voxel_count:
        return ptv
    return Structure(f"{ptv.name}!", mask, ptv.grid, role="ptv")


def _unique_targets(option: FieldOption) -> list[Any]:
    seen: dict[str, Any] = {}
    for t in option.targets:
        seen.setdefault(t.name, t)
    return list(seen.values())


_GROUP_ORDER = {"Target": 0, "OAR": 1, "OAR (SBRT)": 2, "NTCP": 3}


def _assemble_table(
    options: Sequence[str], per_option: dict[str, dict[tuple[str, str, str, str], tuple[Any, ...]]]
) -> ComparisonTable:
    keys: list[tuple[str, str, str, str]] = []
    for o in options:
        for k in per_option[o]:
            if k not in keys:
                keys.append(k)
    keys.sort(key=lambda k: _GROUP_ORDER.get(k[0], 9))  # stable: keeps first-seen order
    rows = []
    for k in keys:
        values, status, headroom = {}, {}, {}
        limit, source = None, ""
        for o in options:
            v = per_option[o].get(k)
            values[o] = None if v is None else float(v[0])
            if v is not None and len(v) > 1:
                status[o], headroom[o] = v[1], v[2]
                limit = v[3] or limit
                source = v[4] or source
        rows.append(
            MetricRow(
                group=k[0],
                structure=k[1],
                metric=k[2],
                unit=k[3],
                values=values,
                limit=limit,
                status=status,
                headroom=headroom,
                source=source,
            )
        )
    return ComparisonTable(tuple(options), tuple(rows))


def _describe_model(params: Any, dose_spacing_mm: float) -> str:
    from dataclasses import fields

    parts = [f"{f.name}={getattr(params, f.name)!r}" for f in fields(params)]
    return (
        "rtplan analytic dose estimate (distance-to-PTV fall-off for IMRT/VMAT and SBRT, "
        "static-beam box with depth attenuation for 3D-CRT; see docs/dose_model.md) on a "
        f"{dose_spacing_mm:g} mm dose grid; parameters: " + ", ".join(parts)
    )
