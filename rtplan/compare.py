"""Compare field options side by side: targets, dose estimate, DVH metrics, constraints, NTCP.

:func:`compare_options` runs every option of a case and gathers one :class:`Comparison`,
whose :attr:`Comparison.table` has one row per metric and one column per option. The
report, the CSV/JSON export and the DICOM export all read the comparison.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from rtplan._io import atomic_write_text
from rtplan._progress import Progress, ProgressLike, as_progress
from rtplan._typing import BoolMask, FloatArray
from rtplan.atlas import Atlas
from rtplan.context import ClinicalContext
from rtplan.derived import derived_oars
from rtplan.dose_estimate import (
    ALPHA_BETA_GY,
    CourseDose,
    DoseModelParameters,
    OptionDose,
    eqd2_gy,
    estimate_option_dose,
    make_dose_grid,
    physical_dose_gy,
    spared_organ_names,
)
from rtplan.dvh import (
    DVH,
    Constraint,
    StructureOnDoseGrid,
    compute_dvh,
    evaluate_constraint,
    lkb_ntcp,
    structure_on_dose_grid,
)
from rtplan.errors import InvalidInputError, RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.imported_dose import ImportedDose, dose_on_grid, read_imported_dose, uncovered_pct
from rtplan.lesions import Lesions
from rtplan.level_zones import HOT_SPOT_LIMIT_PCT, LevelZones, level_zones
from rtplan.plan import FieldOption, TargetLevel, resolve_overlaps, target_levels
from rtplan.protocol import Protocol, ProtocolConstraint, load_protocol
from rtplan.staging import Stage
from rtplan.structures import Structure, StructureSet
from rtplan.tracers import Tracer
from rtplan.volumes import OptionSpec, SkippedOption, build_options

__all__ = [
    "BASIS_CONVENTIONAL",
    "BASIS_COURSES",
    "BASIS_INTENDED",
    "BASIS_PHYSICAL",
    "DEFAULT_OARS",
    "HOT_SPOT_LIMIT_PCT",
    "IMPORTED_SUFFIX",
    "NOT_EVALUATED",
    "UNCOVERED_WARN_PCT",
    "Comparison",
    "ComparisonTable",
    "DoseSource",
    "ImportedDoseInput",
    "MetricRow",
    "OptionResult",
    "basis_eqd2",
    "basis_sbrt_course",
    "boost_spared_organs",
    "compare_options",
    "imported_column",
]

#: A value of :meth:`ComparisonTable.records`: text, a number, or nothing.
RecordValue = str | float | None
#: Where a column's dose comes from: rtplan's estimate, or a file (or array) imported.
DoseSource = Literal["estimated", "imported"]
#: An imported dose as :func:`compare_options` takes it: an RTDOSE file, or the dose itself.
ImportedDoseInput = str | os.PathLike[str] | ImportedDose

#: Appended to an option's name for the column of its imported dose.
IMPORTED_SUFFIX = " [imported]"
#: An imported dose grid that leaves more than this percentage of a reported structure
#: outside is said in a warning and in the notes of the structure's rows.
UNCOVERED_WARN_PCT = 0.1


def imported_column(option: str) -> str:
    """The column of an option's imported dose, e.g. ``"PBRT [imported]"``."""
    return f"{option}{IMPORTED_SUFFIX}"


#: Basis of a prescription row: the intended dose, not a dose estimate.
BASIS_INTENDED = "intended (prescription)"
#: Basis of coverage rows: the physical dose of the courses that treat the target.
BASIS_COURSES = "courses treating it, physical"
#: Basis of rows on the physical dose summed over every course of the option.
BASIS_PHYSICAL = "composite physical"
#: Basis of target hot spots: the conventional (non-SBRT) courses summed.
BASIS_CONVENTIONAL = "conventional courses summed"
#: Status of a constraint that could not be evaluated (its note says why).
NOT_EVALUATED = "not evaluated"
#: Volume of the hot-spot near-maximum, cc (D0.03cc, as the protocol's point-dose limits).
HOT_SPOT_VOLUME_CC = 0.03
_HOT_SPOT_SOURCE = (
    "hot spot at most 107 % of the intended level: target dose never above 107 % "
    "@pmc8744000_constraints [V]; ICRU 50 range 95-107 % @icru50_1993 [V-3p]"
)
#: SBRT targets: maximum dose at most twice the prescription (RTOG radiosurgery QA
#: criteria, @shaw1993 [V-3p]), on the SBRT course's own dose.
SBRT_MAX_LIMIT_PCT = 200.0
_SBRT_MAX_SOURCE = "maximum dose / prescription <= 2.0 per protocol @shaw1993 [V-3p]"


def basis_eqd2(alpha_beta_gy: float) -> str:
    """Basis of rows on the composite EQD2, e.g. ``"composite EQD2 (alpha/beta 3 Gy)"``."""
    return f"composite EQD2 (alpha/beta {alpha_beta_gy:g} Gy)"


def basis_sbrt_course(fractions: int) -> str:
    """Basis of rows on one SBRT course's own dose, e.g. ``"SBRT course, physical (3 fx)"``."""
    return f"SBRT course, physical ({fractions} fx)"


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
    basis : str
        Which dose the values are of: :data:`BASIS_COURSES` (the courses that treat the
        target, physical), :data:`BASIS_PHYSICAL` (every course summed), a composite EQD2
        (:func:`basis_eqd2`, with its alpha/beta), the conventional courses summed
        (:data:`BASIS_CONVENTIONAL`, target hot spots), one SBRT course
        (:func:`basis_sbrt_course`), :data:`BASIS_INTENDED`, or ``""`` (a volume).
    note : str
        The protocol's note on the constraint, how a limit was converted, or why it was
        not evaluated (status :data:`NOT_EVALUATED`, e.g. ``"not evaluated: SacralPlex
        missing"``).
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
    basis: str = ""
    note: str = ""

    @property
    def label(self) -> str:
        """``"Rectum V65Gy [%]"``-style row label."""
        unit = f" [{self.unit}]" if self.unit else ""
        name = f"{self.structure} " if self.structure else ""
        return f"{name}{self.metric}{unit}"

    @property
    def not_evaluated(self) -> bool:
        """Whether the row is a constraint that could not be evaluated (see :attr:`note`)."""
        return any(s == NOT_EVALUATED for s in self.status.values())


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` for NaN and infinities (which JSON cannot hold)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ComparisonTable:
    """The options side by side: one :class:`MetricRow` per metric, options as columns.

    Attributes
    ----------
    options : tuple of str
        The columns: option names, and ``"<option> [imported]"`` for an imported dose.
    rows : tuple of MetricRow
        One per metric.
    dose_sources : dict of str to str
        Column -> ``"estimated"`` or ``"imported"`` (a column not listed is estimated).
    dose_files : dict of str to str
        Column -> the file name (or label) of its imported dose.
    """

    options: tuple[str, ...]
    rows: tuple[MetricRow, ...]
    dose_sources: dict[str, DoseSource] = field(default_factory=dict)
    dose_files: dict[str, str] = field(default_factory=dict)

    def dose_source(self, option: str) -> DoseSource:
        """``"estimated"`` or ``"imported"``: where the dose of a column comes from."""
        return self.dose_sources.get(option, "estimated")

    def dose_label(self, option: str) -> str:
        """``"estimated"``, or ``"imported: <file>"``: a column's dose, for its header."""
        if self.dose_source(option) == "imported":
            return f"imported: {self.dose_files.get(option, '')}".strip()
        return "estimated"

    def records(self) -> list[dict[str, RecordValue]]:
        """Rows as dicts: metadata keys; one value, status and dose key per option.

        The ``"<option> dose"`` key says where the column's dose comes from
        (:meth:`dose_label`), the same in every row.
        """
        out = []
        for r in self.rows:
            rec: dict[str, RecordValue] = {
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
            for o in self.options:
                rec[f"{o} dose"] = self.dose_label(o)
            rec["basis"] = r.basis
            rec["note"] = r.note
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
            + [f"{o} dose" for o in self.options]
            + ["basis", "note", "source"]
        )
        writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        for rec in recs:
            writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_json(
        self, path: str | Path | None = None, *, dose_model: Mapping[str, object] | None = None
    ) -> str:
        """JSON text ``{"options": [...], "dose_sources": {...}, "rows": [...]}``.

        ``dose_sources`` maps each column to ``{"source": "estimated" | "imported",
        "file": <file name or "">}``. With ``dose_model`` (what
        :meth:`Comparison.write_metrics` passes: the model's description and the organs
        it spared) the payload gets a ``"dose_model"`` entry. Written to ``path`` when
        given.
        """
        payload: dict[str, object] = {
            "options": list(self.options),
            "dose_sources": {
                o: {"source": self.dose_source(o), "file": self.dose_files.get(o, "")}
                for o in self.options
            },
            "rows": [
                {
                    "group": r.group,
                    "structure": r.structure,
                    "metric": r.metric,
                    "unit": r.unit,
                    "limit": r.limit,
                    "values": {o: _finite_or_none(r.values.get(o)) for o in self.options},
                    "status": {o: r.status.get(o) for o in self.options},
                    "headroom": {o: _finite_or_none(r.headroom.get(o)) for o in self.options},
                    "basis": r.basis,
                    "note": r.note,
                    "source": r.source,
                }
                for r in self.rows
            ],
        }
        if dose_model is not None:
            payload["dose_model"] = dict(dose_model)
        text = json.dumps(payload, indent=2)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_pandas(self) -> object:
        """A ``pandas.DataFrame`` of the values: options as columns, row labels as index.

        pandas is optional and rtplan does not install it (nor its type information,
        hence the return type ``object``).

        Returns
        -------
        pandas.DataFrame
            One column per option, indexed by :attr:`MetricRow.label`.

        Raises
        ------
        ImportError
            When pandas is not installed; the message says ``pip install pandas``.
        """
        try:
            pandas = importlib.import_module("pandas")
        except ImportError as err:
            raise ImportError(
                "ComparisonTable.to_pandas needs pandas, which rtplan does not install; "
                "install it with `pip install pandas` (or use to_csv / to_json / records)"
            ) from err
        data = {o: [r.values.get(o) for r in self.rows] for o in self.options}
        frame: object = pandas.DataFrame(data, index=[r.label for r in self.rows])
        return frame

    def row(self, structure: str, metric: str, *, basis: str | None = None) -> MetricRow:
        """The first row of a structure's metric (of ``basis`` if given); KeyError if none."""
        for r in self.rows:
            if r.structure == structure and r.metric == metric and basis in (None, r.basis):
                return r
        raise KeyError(f"no row for {structure!r} {metric!r}" + (f" ({basis})" if basis else ""))

    def __str__(self) -> str:
        labels = [r.label for r in self.rows]
        w0 = max([len("metric"), *map(len, labels)])
        doses = [self.dose_label(o) for o in self.options]
        widths = [max(len(o), len(d), 9) for o, d in zip(self.options, doses)]
        lines = [
            "  ".join(["metric".ljust(w0), *(o.rjust(w) for o, w in zip(self.options, widths))]),
            "  ".join(["dose".ljust(w0), *(d.rjust(w) for d, w in zip(doses, widths))]),
        ]
        for r, label in zip(self.rows, labels):
            cells = []
            for o, w in zip(self.options, widths):
                mark = {"pass": " ", "fail": "!", NOT_EVALUATED: "?"}.get(
                    r.status.get(o) or "", " "
                )
                cells.append((_fmt(r.values.get(o)) + mark).rjust(w))
            lines.append("  ".join([label.ljust(w0), *cells]))
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class OptionResult:
    """Everything computed for one option.

    Attributes
    ----------
    option : FieldOption
        The option (courses, targets, ADT flag, evidence line).
    dose_grid : ImageGrid
        Grid of the dose arrays (default 2.5 mm cubic).
    dose_gy : ndarray of float64, shape ``dose_grid.shape``
        Total physical dose of all courses, Gy.
    eqd2_gy : ndarray of float64 or None
        Composite EQD2 (alpha/beta 3 Gy unless stated), Gy, where courses differ in
        fractionation.
    course_doses_gy : dict of str to ndarray of float64
        Physical dose per course, Gy (after the plan-sum ceiling of
        :func:`rtplan.dose_estimate.estimate_option_dose`).
    dvhs : dict of str to DVH
        Structure name -> :class:`rtplan.dvh.DVH` of the total dose.
    structures : list of Structure
        The option's own structures (GTV/CTV/PTV, cropped later-phase PTVs) on the CT
        grid.
    dose_source : {"estimated", "imported"}
        Where the dose comes from: rtplan's estimate, or imported (an RTDOSE of a
        planning system, see ``imported_doses`` of :func:`compare_options`).
    dose_file : str
        File name(s) (or label) of an imported dose; ``""`` for an estimate.
    dose_note : str
        What an imported dose is and what rtplan did with it (its DoseSummationType, the
        checks, a plan sum split over the courses), for the report.
    uncovered_pct : dict of str to float
        Structures that the imported dose grid does not cover (more than
        :data:`UNCOVERED_WARN_PCT`) -> the percentage of their volume outside, counted
        as 0 Gy.
    """

    option: FieldOption
    dose_grid: ImageGrid
    dose_gy: FloatArray
    eqd2_gy: FloatArray | None = None
    course_doses_gy: dict[str, FloatArray] = field(default_factory=dict)
    dvhs: dict[str, DVH] = field(default_factory=dict)
    structures: list[Structure] = field(default_factory=list)
    dose_source: DoseSource = "estimated"
    dose_file: str = ""
    dose_note: str = ""
    uncovered_pct: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Option name: the column (``"<option> [imported]"`` for an imported dose)."""
        return self.option.name

    @property
    def is_imported(self) -> bool:
        """Whether the dose is imported rather than estimated by rtplan."""
        return self.dose_source == "imported"


@dataclass(frozen=True, eq=False)
class Comparison:
    """The options of one case side by side.

    Attributes
    ----------
    case : str
        Case label (e.g. ``"TrN0M0"`` or a patient-free identifier).
    atlas : Atlas
        The :class:`rtplan.atlas.Atlas` (CT, structures, landmarks).
    lesions : Lesions or None
        The :class:`rtplan.lesions.Lesions`.
    stage : Stage or None
        The :class:`rtplan.staging.Stage`.
    protocol : Protocol
        The :class:`rtplan.protocol.Protocol` used.
    results : list of OptionResult
        One per option, in order.
    table : ComparisonTable
        Metrics as rows, options as columns.
    dose_model : str
        Name and parameters of the dose model (for reports).
    created : datetime
        When the comparison was computed.
    context : ClinicalContext or None
        PSA and pathology (:class:`rtplan.context.ClinicalContext`) that set the PET
        result in context in the report.
    tracer : Tracer or None
        The PET tracer (:class:`rtplan.tracers.Tracer`), when known.
    derived : tuple of Structure
        Organs rtplan derived because the anatomy lacked them
        (:func:`rtplan.derived.derived_oars`); each says how in its ``derivation``.
    skipped : tuple of SkippedOption
        Options that could not be built on this anatomy, each with what it lacks
        (:func:`rtplan.volumes.build_options_partial`); empty when every option was built.
    spared_organs : tuple of str
        The organs whose dose the estimate of the IMRT/VMAT courses lowered by the
        calibrated sparing and hold (:mod:`rtplan.sparing`): the model's spared organs
        found in the anatomy. Empty when no option has an IMRT/VMAT course or the model
        spares none; the report's statement of the model's limits depends on it.
    """

    case: str
    atlas: Atlas
    lesions: Lesions | None
    stage: Stage | None
    protocol: Protocol
    results: list[OptionResult]
    table: ComparisonTable
    dose_model: str = ""
    created: datetime = field(default_factory=datetime.now)
    context: ClinicalContext | None = None
    tracer: Tracer | None = None
    derived: tuple[Structure, ...] = ()
    skipped: tuple[SkippedOption, ...] = ()
    spared_organs: tuple[str, ...] = ()

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

    def not_evaluated(self) -> list[str]:
        """The constraints that could not be evaluated, one line each, e.g. for stderr.

        Examples of lines: ``"CaudaEquina V30Gy < 5 cc (OAR (SBRT course), SBRT course,
        physical (5 fx)): not evaluated: CaudaEquina missing"``.
        """
        lines: list[str] = []
        for r in self.table.rows:
            if not r.not_evaluated:
                continue
            what = " ".join(p for p in (r.structure, r.metric, r.limit or "") if p)
            line = f"{what} ({r.group}, {r.basis}): {r.note}"
            if line not in lines:
                lines.append(line)
        return lines

    def all_structures(self, options: Sequence[str] | None = None) -> list[Structure]:
        """Atlas structures, derived organs, then the options' target structures; names unique."""
        seen: dict[str, Structure] = {s.name: s for s in self.atlas.structures.values()}
        for s in self.derived:
            seen.setdefault(s.name, s)
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
        """Write the anatomy, the landmarks and the targets of the options as one RTSTRUCT.

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
        from rtplan.dicom_io import write_rtstruct_with_points

        out = Path(path)
        if out.is_dir():
            out = out / f"RS_{_safe(self.case or 'rtplan')}.dcm"
        structures = [s for s in self.all_structures(options) if not s.is_empty]
        # derived structures and landmarks are written as such (ROIGenerationAlgorithm
        # AUTOMATIC with how they were derived), the landmarks as POINT ROIs
        return write_rtstruct_with_points(
            structures,
            ct_folder,
            out,
            points=self.atlas.landmarks,
            point_derivations=self.atlas.landmark_derivations,
            label=(label or f"rtplan {self.case}".strip())[:16],
        )

    def write_rtdose(
        self, folder: str | Path, *, ct_folder: str | Path, options: Sequence[str] | None = None
    ) -> list[Path]:
        """Write one RTDOSE (total physical dose estimate) per option into ``folder``.

        Files are named ``RD_<option>.dcm``; each says in its description and comment
        that it is an rtplan estimate, not a calculated plan. Imported doses are not
        written again (they are the user's own files).
        """
        from rtplan.dicom_io import write_rtdose

        paths = []
        for r in self.results:
            if r.is_imported or (options is not None and r.name not in options):
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
        """Write ``metrics.csv`` and ``metrics.json`` (options as columns) into ``folder``.

        ``metrics.json`` also carries ``"dose_model"``: ``{"description": ...,
        "spared_organs": [...]}`` (:attr:`dose_model`, :attr:`spared_organs`).
        """
        folder = Path(folder)
        csv_path, json_path = folder / "metrics.csv", folder / "metrics.json"
        model = {"description": self.dose_model, "spared_organs": list(self.spared_organs)}
        atomic_write_text(csv_path, self.table.to_csv())
        atomic_write_text(json_path, self.table.to_json(dose_model=model))
        return csv_path, json_path

    def write_report(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (see :func:`rtplan.report.write_report`)."""
        from rtplan.report import write_report  # report reads Comparison: import when used

        return write_report(self, path)


def _safe(name: str) -> str:
    """File-name-safe version of an option or case name (``PBRT+WPRT`` -> ``PBRT+WPRT``)."""
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in name)


# ---------------------------------------------------------------------------- checking input
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


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_case_inputs(
    atlas: Atlas,
    lesions: Lesions | None,
    stage: Stage | None,
    protocol: str | Path | Protocol,
    case: str,
) -> None:
    """Raise TypeError naming the first argument of :func:`compare_options` of a wrong type."""
    if not isinstance(atlas, Atlas):
        raise TypeError(f"atlas must be an rtplan.atlas.Atlas, got {_type_name(atlas)}")
    if lesions is not None and not isinstance(lesions, Lesions):
        raise TypeError(
            f"lesions must be rtplan.lesions.Lesions (e.g. from lesions_from_mask) or None, "
            f"got {_type_name(lesions)}"
        )
    if stage is not None and not isinstance(stage, Stage):
        raise TypeError(
            f"stage must be an rtplan.staging.Stage (from rtplan.staging.stage) or None, "
            f"got {_type_name(stage)}"
        )
    if not isinstance(protocol, (str, Path, Protocol)):
        raise TypeError(
            f"protocol must be a protocol name, a TOML path or an rtplan.protocol.Protocol, "
            f"got {_type_name(protocol)}"
        )
    if not isinstance(case, str):
        raise TypeError(f"case must be a str, got {_type_name(case)}")


def _check_context(context: ClinicalContext | None, tracer: Tracer | None) -> None:
    """Raise TypeError when ``context`` or ``tracer`` is not of its contract type."""
    if context is not None and not isinstance(context, ClinicalContext):
        raise TypeError(
            f"context must be an rtplan.context.ClinicalContext or None, got {_type_name(context)}"
        )
    if tracer is not None and not isinstance(tracer, Tracer):
        raise TypeError(
            "tracer must be an rtplan.tracers.Tracer (rtplan.tracers.get_tracer(name)) or None, "
            f"got {_type_name(tracer)}"
        )


def _check_model_inputs(
    dose_spacing_mm: float,
    oars: Sequence[str] | None,
    dose_parameters: DoseModelParameters | None,
) -> float:
    """Check the dose-model arguments of :func:`compare_options`; the spacing as a float."""
    given: object = dose_spacing_mm  # checked as the caller gave it, whatever its type
    if isinstance(given, bool) or not isinstance(given, numbers.Real):
        raise TypeError(f"dose_spacing_mm must be a number of mm, got {_type_name(given)}")
    spacing_mm = float(given)
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise InvalidInputError(
            f"dose_spacing_mm must be a positive number of mm, got {spacing_mm}"
        )
    if oars is not None and (
        isinstance(oars, str)
        or not isinstance(oars, Sequence)
        or not all(isinstance(n, str) for n in oars)
    ):
        raise TypeError(f"oars must be a sequence of structure names (str) or None, got {oars!r}")
    if dose_parameters is not None and not isinstance(dose_parameters, DoseModelParameters):
        raise TypeError(
            f"dose_parameters must be rtplan.dose_estimate.DoseModelParameters or None, "
            f"got {_type_name(dose_parameters)}"
        )
    return spacing_mm


def _field_options(
    options: Sequence[FieldOption] | Sequence[OptionSpec],
    atlas: Atlas,
    lesions: Lesions | None,
    protocol: Protocol,
) -> list[FieldOption]:
    """The options as built FieldOptions (OptionSpecs are built here), checked."""
    given: object = options  # checked as the caller gave it, whatever its type
    if isinstance(given, str) or not isinstance(given, Sequence):
        raise TypeError(
            f"options must be a sequence of FieldOption (rtplan.volumes.build_options) or of "
            f"OptionSpec (rtplan.volumes.suggest_options), got {_type_name(given)}"
        )
    items: list[object] = list(given)
    specs = [o for o in items if isinstance(o, OptionSpec)]
    if items and len(specs) == len(items):
        # option specifications (rtplan.volumes.suggest_options): build their volumes first
        items = list(build_options(specs, atlas, lesions, protocol))
    built = [o for o in items if isinstance(o, FieldOption)]
    if len(built) != len(items):
        bad = {_type_name(o) for o in items if not isinstance(o, FieldOption)}
        raise TypeError(
            f"options must be FieldOptions (rtplan.volumes.build_options) or all OptionSpecs "
            f"(rtplan.volumes.suggest_options); got {', '.join(sorted(bad))}"
        )
    names = [o.name for o in built]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"option names must be unique, got {names}")
    if not built:
        raise InvalidInputError("compare_options needs at least one option")
    return built


def _oar_names(
    structures: StructureSet, protocol: Protocol, oars: Sequence[str] | None
) -> list[str]:
    wanted = list(oars) if oars is not None else list(DEFAULT_OARS)
    if oars is None:
        wanted += [c.structure for c in protocol.constraints]
        wanted += list(protocol.ntcp_models)
    names: list[str] = []
    for n in wanted:
        key = structures.resolve(n)
        if key is not None and key not in names and not structures[key].is_empty:
            names.append(key)
    return names


def _with_derived(structures: StructureSet, derived: Sequence[Structure]) -> StructureSet:
    """The anatomy plus the organs rtplan derived for it (a new set)."""
    out = StructureSet(structures.values(), grid=structures.grid)
    for s in derived:
        out.add(s)
    return out


# ---------------------------------------------------------------------------- radiobiology
#: Tissue of the protocol's ``[alpha_beta]`` table used for each structure; any other
#: structure is ``normal_tissue``.
_TISSUE_OF: dict[str, str] = {
    "Rectum": "rectum",
    "Bladder": "bladder",
    "Bladder-CTV": "bladder",
    "CaudaEquina": "spinal_cord",
    "SacralPlex": "spinal_cord",
    "SpinalCord": "spinal_cord",
    "SpinalCanal": "spinal_cord",
}
#: rtplan's defaults for a tissue the protocol does not list (equal to the shipped
#: protocols' values, which the tests check).
_DEFAULT_ALPHA_BETA_GY: dict[str, float] = {
    "prostate": ALPHA_BETA_GY["prostate"],
    "rectum": ALPHA_BETA_GY["Rectum"],
    "bladder": ALPHA_BETA_GY["Bladder"],
    "normal_tissue": ALPHA_BETA_GY["late"],
    "spinal_cord": ALPHA_BETA_GY["SpinalCord"],
}


@dataclass(frozen=True)
class _AlphaBeta:
    """alpha/beta (Gy) per tissue: the protocol's ``[alpha_beta]``, else rtplan's default."""

    table: dict[str, float]

    def tissue(self, name: str) -> float:
        if name in self.table:
            return self.table[name]
        return _DEFAULT_ALPHA_BETA_GY[name]

    @property
    def target(self) -> float:
        """alpha/beta of the targets (prostate cancer)."""
        return self.tissue("prostate")

    def of_structure(self, name: str) -> float:
        """alpha/beta of an organ, by the tissue it is (:data:`_TISSUE_OF`)."""
        return self.tissue(_TISSUE_OF.get(name, "normal_tissue"))


class _Eqd2:
    """The composite EQD2 of one option, computed once per alpha/beta."""

    def __init__(self, od: OptionDose) -> None:
        self._od = od
        self._cache: dict[float, FloatArray] = {}

    def __call__(self, alpha_beta_gy: float) -> FloatArray:
        ab = float(alpha_beta_gy)
        if ab not in self._cache:
            self._cache[ab] = self._od.eqd2_gy(ab)
        return self._cache[ab]


# ---------------------------------------------------------------------------- running options
def compare_options(
    atlas: Atlas,
    lesions: Lesions | None,
    options: Sequence[FieldOption] | Sequence[OptionSpec],
    *,
    protocol: str | Path | Protocol = "nrg_salvage",
    stage: Stage | None = None,
    case: str = "",
    dose_spacing_mm: float = 2.5,
    oars: Sequence[str] | None = None,
    dose_parameters: DoseModelParameters | None = None,
    progress: Progress | ProgressLike | bool | None = None,
    context: ClinicalContext | None = None,
    tracer: Tracer | None = None,
    skipped: Sequence[SkippedOption] = (),
    imported_doses: Mapping[str, ImportedDoseInput] | None = None,
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
    context : ClinicalContext, optional
        PSA and pathology; the report then says what the PET result means at this PSA.
    tracer : Tracer, optional
        The PET tracer (:func:`rtplan.tracers.get_tracer`); sets the detection-rate source.
    skipped : sequence of SkippedOption, optional
        Options that could not be built (kept for the report and the command's exit status).
    imported_doses : mapping of str to path or ImportedDose, optional
        Real plan doses to compare with the estimates: option name -> an RTDOSE file
        (:func:`rtplan.imported_dose.read_imported_dose`) or an
        :class:`~rtplan.imported_dose.ImportedDose`, the whole option's physical dose
        (the plan, or the plan sum of its courses); or ``"<option>/<course>"`` -> one
        course's dose, given for every course of the option. Each such option gets a
        second column, ``"<option> [imported]"`` (:func:`imported_column`), right after
        its estimated one (see Notes).

    Returns
    -------
    Comparison

    Raises
    ------
    TypeError
        An argument of the wrong type (the message names it), e.g. ``options`` that are
        not a sequence of FieldOption, or of OptionSpec.
    InvalidInputError
        No option, option names that repeat, a spacing that is not positive; a
        protocol whose NTCP model states an alpha/beta other than its ``[alpha_beta]``
        value for that tissue; an ``imported_doses`` key that names no option (or
        course), per-course doses missing a course or given with a plan sum; an imported
        dose of a DoseSummationType or DoseType rtplan cannot compare.
    DicomInputError
        An imported RTDOSE that cannot be read (DoseUnits RELATIVE, an oblique grid...).
    GridMismatchError
        An imported dose whose FrameOfReferenceUID differs from the CT's.

    Notes
    -----
    Every option is first resolved so that boosts do not stack
    (:func:`rtplan.plan.resolve_overlaps`: a later phase's PTV is cropped by the earlier
    courses' higher targets) and dosed planned on the sum
    (:func:`rtplan.dose_estimate.estimate_option_dose`); the results hold the resolved
    options, so the report and the RTSTRUCT show the cropped targets.

    Every row names its basis (:attr:`MetricRow.basis`):

    * target coverage (D95%, V95%Rx, CTV D98%) on the physical dose of the courses that
      treat the target, against its summed prescription; the hot spot (D0.03cc) of
      every conventional target on the composite of the conventional courses, each part
      against the intended level governing it (:mod:`rtplan.level_zones`: its own, a
      higher PTV's within 5 mm of it, a nested boost's in a container), limit 107 %; when any
      option mixes doses per fraction the composite is taken in EQD2 at the prostate
      alpha/beta and read back as the % of that level's physical prescription giving it;
    * conventional constraints on the composite: physical when no option has an SBRT
      course, else EQD2 at the organ's alpha/beta with the limit converted from plans of
      the constraint's ``fractions`` (default: the protocol's prostate-bed fractions);
    * SBRT constraints per SBRT course, at its number of fractions (a fraction number the
      protocol does not tabulate gets the nearest one's limits converted with the same
      EQD2), and their maximum-dose limits as EQD2 on the composite of every course;
    * NTCP on the composite EQD2 at the protocol's alpha/beta of the organ.

    A constraint whose organ the anatomy lacks (and rtplan cannot derive, see
    :func:`rtplan.derived.derived_oars`) is a row with status :data:`NOT_EVALUATED` and
    a note ``"not evaluated: <name> missing"`` (:meth:`Comparison.not_evaluated`). A
    constraint on ``"<Organ>-CTV"`` is evaluated on the organ minus the option's CTVs.
    The dose is an estimate for comparing options, not a treatment plan.

    An imported dose is interpolated (trilinear) onto the same dose grid as the estimate
    (:func:`rtplan.imported_dose.dose_on_grid`) and its column is evaluated by the same
    code as the estimated one, on the same structures: its metrics differ from the
    planning system's own DVHs only by that resampling and the structure occupancy of
    the dose grid. Where the imported grid does not cover a reported structure, the
    part outside counts as 0 Gy (as dicompyler-core counts contours outside the dose
    grid), an :class:`~rtplan.errors.RtplanWarning` lists the structures with the
    percentage outside, and their rows say so in the note. A plan sum of an option of
    several courses is split over the courses voxel by voxel in proportion to the
    estimated course doses (in proportion to the fractions where the estimate is 0 Gy):
    rows on the composite physical dose are exact, rows on one course's dose, on EQD2 or
    on the conventional courses of an option with SBRT ones are then an approximation and
    their note says so; per-course files (``"<option>/<course>"``) avoid it. rtplan
    checks an imported dose's units, geometry, summation type and frame of reference,
    not its values.
    """
    _check_case_inputs(atlas, lesions, stage, protocol, case)
    _check_context(context, tracer)
    spacing_mm = _check_model_inputs(dose_spacing_mm, oars, dose_parameters)
    proto = load_protocol(protocol)
    alpha_beta = _AlphaBeta(proto.alpha_beta_gy)
    _check_ntcp_alpha_beta(proto, alpha_beta)
    spare = boost_spared_organs(atlas, proto)
    built = [
        resolve_overlaps(o, alpha_beta_gy=alpha_beta.target, spare=spare)
        for o in _field_options(options, atlas, lesions, proto)
    ]
    requests = _import_requests(imported_doses, built)
    report = as_progress(False if progress is None else progress)
    params = DoseModelParameters() if dose_parameters is None else dose_parameters
    body = atlas.structures["Body"] if "Body" in atlas.structures else None
    dose_grid = make_dose_grid(atlas.grid, spacing_mm=spacing_mm, body=body)
    derived = derived_oars(atlas.structures)
    structures = _with_derived(atlas.structures, derived)
    setting = _Setting.of(
        structures, proto, dose_grid, _oar_names(structures, proto, oars), alpha_beta, built
    )
    results: list[OptionResult] = []
    per_option: dict[str, dict[_RowKey, _Cell]] = {}
    prefix = f"{case}: " if case else ""
    for option in built:
        report.step(f"{prefix}dose estimate for option {option.name}")
        od = estimate_option_dose(
            option,
            dose_grid,
            body=body,
            params=params,
            target_alpha_beta_gy=alpha_beta.target,
            organs=structures,
        )
        result, cells = _evaluate_option(setting, option, od)
        results.append(result)
        per_option[option.name] = cells
        request = requests.get(option.name)
        if request is None:
            continue
        report.step(f"{prefix}imported dose for option {option.name}")
        column = _imported_column(request, option, od)
        result, cells = _evaluate_option(setting, column.option, column.dose, column)
        results.append(result)
        per_option[result.name] = cells
    return Comparison(
        case=case,
        atlas=atlas,
        lesions=lesions,
        stage=stage,
        protocol=proto,
        results=results,
        table=_assemble_table(
            [r.name for r in results],
            per_option,
            dose_sources={r.name: r.dose_source for r in results},
            dose_files={r.name: r.dose_file for r in results if r.is_imported},
        ),
        dose_model=_describe_model(params, spacing_mm),
        context=context,
        tracer=tracer,
        derived=derived,
        skipped=tuple(skipped),
        spared_organs=_spared_organs(params, structures, built),
    )


def _spared_organs(
    params: DoseModelParameters, structures: StructureSet, options: Sequence[FieldOption]
) -> tuple[str, ...]:
    """The organs of ``params.imrt_sparing`` the estimate of these options spared."""
    if not any("imrt" in o.techniques for o in options):
        return ()
    return spared_organ_names(structures, params)


def boost_spared_organs(
    atlas: Atlas, protocol: Protocol, *, strict: bool = False
) -> list[Structure]:
    """The organs the protocol's boost PTVs are cropped by (``technique.boost_spare_organs``).

    Parameters
    ----------
    atlas : Atlas
        The anatomy.
    protocol : Protocol
        The protocol naming the organs.
    strict : bool
        An organ the anatomy lacks cannot be spared: False (what :func:`compare_options`
        does) says so in a warning and spares the others; True raises (the calibration's
        reference plans must be built exactly as specified).

    Raises
    ------
    InvalidInputError
        With ``strict``, when the anatomy lacks one of the organs.
    """
    if protocol.get("technique.boost_spare_organs") is None:
        return []
    names = protocol.names("technique.boost_spare_organs")
    missing = [n for n in names if n not in atlas.structures]
    if missing and strict:
        raise InvalidInputError(f"the anatomy lacks the boost-spared organs {missing}")
    if missing:
        warnings.warn(
            f"protocol {protocol.name}: boost PTVs cannot be cropped by "
            f"{', '.join(missing)} (not in the anatomy)",
            RtplanWarning,
            stacklevel=3,
        )
    return [atlas.structures[n] for n in names if n in atlas.structures]


def _check_ntcp_alpha_beta(protocol: Protocol, alpha_beta: _AlphaBeta) -> None:
    """Refuse a protocol whose NTCP models disagree with its ``[alpha_beta]`` table."""
    for name, model in protocol.ntcp_models.items():
        tissue = _TISSUE_OF.get(name, "normal_tissue")
        expected = alpha_beta.tissue(tissue)
        if not math.isclose(model.alpha_beta_gy, expected):
            raise InvalidInputError(
                f"protocol {protocol.name!r}: ntcp.{name}.alpha_beta_gy is "
                f"{model.alpha_beta_gy:g} Gy but alpha_beta.{tissue} is {expected:g} Gy; "
                "rtplan uses one alpha/beta per tissue: make them equal"
            )


# ---------------------------------------------------------------------------- one option
#: Row of the table: (group, structure, metric, unit, basis).
_RowKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class _Verdict:
    """What a constraint (or a model) says about a value: status, headroom, limit, source."""

    status: str | None
    headroom: float | None
    limit: str | None
    source: str
    note: str = ""


@dataclass(frozen=True)
class _Cell:
    """One option's entry of a table row: the value and, for checked rows, the verdict."""

    value: float | None
    verdict: _Verdict | None = None


def _missing_cell(limit: str | None, source: str, note: str) -> _Cell:
    return _Cell(None, _Verdict(NOT_EVALUATED, None, limit, source, f"not evaluated: {note}"))


class _OnDoseGrid:
    """Structures resampled to the dose grid, each once (keyed by identity)."""

    def __init__(self, dose_grid: ImageGrid) -> None:
        self.dose_grid = dose_grid
        # the structure is kept with its resampling so that its id() is not reused
        self._resampled: dict[int, tuple[Structure, StructureOnDoseGrid]] = {}

    def __call__(self, structure: Structure) -> StructureOnDoseGrid:
        key = id(structure)
        if key not in self._resampled:
            self._resampled[key] = (structure, structure_on_dose_grid(structure, self.dose_grid))
        return self._resampled[key][1]

    def dvh(self, dose_gy: FloatArray, structure: Structure) -> DVH:
        """DVH of ``structure`` for a dose on the dose grid."""
        return compute_dvh(dose_gy, self.dose_grid, self(structure))


def _mixed_fractionation(option: FieldOption) -> bool:
    """Whether the option's conventional target levels differ in dose per fraction (> 1 %)."""
    doses = [d for lv in target_levels(option) if not lv.is_sbrt for d in lv.doses_per_fraction_gy]
    return bool(doses) and max(doses) > 1.01 * min(doses)


@dataclass(frozen=True)
class _Setting:
    """What every option of one comparison is evaluated against, and on which bases.

    ``composite_eqd2``: conventional constraints on the composite EQD2 (some option has
    an SBRT course); ``hot_spot_eqd2``: target hot spots in EQD2 (some option mixes
    doses per fraction). Decided once so that a row has one basis for every option.
    """

    structures: StructureSet
    protocol: Protocol
    dose_grid: ImageGrid
    oar_names: tuple[str, ...]
    oars: tuple[Structure, ...]
    on_grid: _OnDoseGrid
    alpha_beta: _AlphaBeta
    composite_eqd2: bool
    hot_spot_eqd2: bool
    sbrt_fractions: tuple[int, ...]

    @classmethod
    def of(
        cls,
        structures: StructureSet,
        protocol: Protocol,
        dose_grid: ImageGrid,
        oars: list[str],
        alpha_beta: _AlphaBeta,
        options: Sequence[FieldOption],
    ) -> _Setting:
        sbrt = sorted({c.fractions for o in options for c in o.courses if c.technique == "sbrt"})
        return cls(
            structures,
            protocol,
            dose_grid,
            tuple(oars),
            tuple(structures[n] for n in oars),
            _OnDoseGrid(dose_grid),
            alpha_beta,
            composite_eqd2=bool(sbrt),
            hot_spot_eqd2=any(_mixed_fractionation(o) for o in options),
            sbrt_fractions=tuple(sbrt),
        )

    @property
    def reference_fractions(self) -> int:
        """Fractions the conventional constraints were written for: the prostate bed's."""
        fractions = self.protocol.prescription("prostate_bed").fractions
        if fractions is None:  # the protocol schema requires it; a hand-made mapping may not
            raise InvalidInputError(
                f"protocol {self.protocol.name!r}: prescription.prostate_bed.fractions is needed "
                "to convert its conventional constraints to EQD2"
            )
        return fractions

    def hot_spot_basis(self) -> str:
        """Basis of the hot-spot rows: the conventional courses summed."""
        kind = (
            f"EQD2 (alpha/beta {self.alpha_beta.target:g} Gy) read back as % of the prescription"
            if self.hot_spot_eqd2
            else "physical"
        )
        return f"{BASIS_CONVENTIONAL}, {kind}"


def _evaluate_option(
    setting: _Setting,
    option: FieldOption,
    od: OptionDose,
    imported: _ImportedColumn | None = None,
) -> tuple[OptionResult, dict[_RowKey, _Cell]]:
    """The result of one option and its cells of the table, row by row in table order.

    With ``imported``, ``od`` is the imported dose of the column ``option.name``: the
    structures it does not cover and a plan sum's split are said in a warning and notes.
    """
    total = od.total_gy
    eqd2 = _Eqd2(od)
    structs = _option_structures(option)
    dvhs = {s.name: setting.on_grid.dvh(total, s) for s in (*setting.oars, *structs)}
    cells = _target_cells(setting, option, od)
    organs = _OptionOrgans(setting, option)
    cells.update(_conventional_constraint_cells(setting, organs, total, eqd2))
    cells.update(_sbrt_constraint_cells(setting, organs, option, od, eqd2))
    for key, cell in _oar_summary_cells(setting, dvhs).items():
        cells.setdefault(key, cell)  # a protocol constraint on the same metric keeps its row
    cells.update(_ntcp_cells(setting, eqd2))
    composite = eqd2(3.0) if len({c.fractions for c in od.courses}) > 1 else None
    result = OptionResult(
        option=option,
        dose_grid=setting.dose_grid,
        dose_gy=total,
        eqd2_gy=composite,
        course_doses_gy={c.name: c.dose_gy for c in od.courses},
        dvhs=dvhs,
        structures=structs,
    )
    if imported is None:
        return result, cells
    reported = _unique_by_name([*setting.oars, *structs, *organs.found()])
    uncovered = _uncovered(setting, reported, imported.covered)
    _warn_uncovered(option.name, imported.files, uncovered)
    result = replace(
        result,
        dose_source="imported",
        dose_file=imported.files,
        dose_note=imported.note,
        uncovered_pct=uncovered,
    )
    return result, _annotated(cells, option, imported.split, uncovered)


def _unique_by_name(structures: Sequence[Structure]) -> list[Structure]:
    seen: dict[str, Structure] = {}
    for s in structures:
        seen.setdefault(s.name, s)
    return list(seen.values())


def _option_structures(option: FieldOption) -> list[Structure]:
    out: list[Structure] = []
    for t in option.targets:
        out.extend(s for s in (t.gtv, t.ctv, t.whole_ptv, t.ptv) if s is not None)
    out.extend(option.extra_structures)
    return _unique_by_name(out)


# ---- targets -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _TargetDose:
    """A PTV's dose over the courses that treat it, against its summed prescription."""

    level: TargetLevel
    dose_gy: FloatArray
    courses: frozenset[int]
    ctv: Structure | None


def _target_doses(option: FieldOption, od: OptionDose) -> dict[str, _TargetDose]:
    """Per PTV as drawn: its level, the physical dose of its courses and its CTV."""
    levels = {lv.name: lv for lv in target_levels(option)}
    dose: dict[str, FloatArray] = {}
    in_courses: dict[str, set[int]] = {}
    ctvs: dict[str, Structure] = {}
    for n_course, (course, cd) in enumerate(zip(option.courses, od.courses)):
        names = {t.whole_ptv.name for t in course.targets}
        for t in course.targets:
            if t.ctv is not None:
                ctvs.setdefault(t.whole_ptv.name, t.ctv)
        for name in names:
            in_courses.setdefault(name, set()).add(n_course)
            prev = dose.get(name)
            dose[name] = cd.dose_gy if prev is None else prev + cd.dose_gy
    return {
        n: _TargetDose(levels[n], dose[n], frozenset(in_courses[n]), ctvs.get(n)) for n in levels
    }


def _coverage_cells(
    setting: _Setting, td: _TargetDose, doses: dict[str, _TargetDose]
) -> dict[_RowKey, _Cell]:
    """Volume, prescription, D95%, V95%Rx, D2% and CTV D98% of one target."""
    grid = setting.dose_grid
    lv = td.level
    ptv, d, p = lv.ptv, td.dose_gy, lv.total_gy
    tdvh = compute_dvh(d, grid, setting.on_grid(ptv))
    cells: dict[_RowKey, _Cell] = {
        ("Target", ptv.name, "Volume", "cc", ""): _Cell(ptv.volume_cc),
        ("Target", ptv.name, "Rx", "Gy", BASIS_INTENDED): _Cell(p),
        ("Target", ptv.name, "D95%", "Gy", BASIS_COURSES): _Cell(tdvh.dose_at_volume_pct(95.0)),
        ("Target", ptv.name, "V95%Rx", "%", BASIS_COURSES): _Cell(
            tdvh.volume_at_dose_pct(0.95 * p)
        ),
    }
    higher = [
        u.level.ptv
        for u in doses.values()
        if u.level.total_gy > p and u.level.ptv is not ptv and u.courses & td.courses
    ]
    hot = _minus(ptv, higher)
    if hot is not None:
        hdvh = tdvh if hot is ptv else compute_dvh(d, grid, hot)
        cells[("Target", ptv.name, "D2%", "%Rx", BASIS_COURSES)] = _Cell(
            100.0 * hdvh.dose_at_volume_pct(2.0) / p
        )
    ctv = td.ctv
    if ctv is not None and not ctv.is_empty:
        cdvh = compute_dvh(d, grid, setting.on_grid(ctv))
        cells[("Target", ctv.name, "Volume", "cc", "")] = _Cell(ctv.volume_cc)
        cells[("Target", ctv.name, "D98%", "%Rx", BASIS_COURSES)] = _Cell(
            100.0 * cdvh.dose_at_volume_pct(98.0) / p
        )
    return cells


def _levels_note(levels: Sequence[TargetLevel], intended_gy: float, eqd2: bool) -> str:
    """Levels of one scheme and that scheme, for a hot-spot note."""
    scheme = " + ".join(f"{d:g} Gy in {n} fx" for d, n in levels[0].parts)
    eq = f", {intended_gy:.1f} Gy EQD2" if eqd2 else ""
    return f"{', '.join(lv.name for lv in levels)} ({scheme}{eq})"


@dataclass(frozen=True)
class _HotPart:
    """Part of a target read against the levels governing it (one scheme): %, cc."""

    levels: tuple[TargetLevel, ...]
    pct: float
    volume_cc: float


def _hot_spot_parts(
    setting: _Setting,
    zones: LevelZones,
    lv: TargetLevel,
    composite: FloatArray,
    intended: dict[str, float],
) -> tuple[list[_HotPart], float]:
    """Near-maximum of each part of a target, in % of the level governing it.

    The parts and their near-maxima of :meth:`~rtplan.level_zones.LevelZones.near_maxima`
    (D :data:`HOT_SPOT_VOLUME_CC`); returns the parts read, lowest level first, and the
    volume of those not read (cc).
    """
    ab = setting.alpha_beta.target
    parts, unread_cc = zones.near_maxima(lv, composite, setting.on_grid(lv.ptv), HOT_SPOT_VOLUME_CC)
    out = []
    for part in parts:
        level = part.levels[0]
        if setting.hot_spot_eqd2:
            pct = 100.0 * level.scale_giving_eqd2(part.near_max_gy, ab)
        else:
            pct = 100.0 * part.near_max_gy / intended[level.name]
        out.append(_HotPart(part.levels, pct, part.volume_cc))
    return out, unread_cc


def _parts_note(
    lv: TargetLevel,
    parts: list[_HotPart],
    unread_cc: float,
    intended: dict[str, float],
    eqd2: bool,
) -> str:
    """Which parts of a target were read against which level (empty: all of it, its own)."""

    def name(levels: Sequence[TargetLevel]) -> str:
        return _levels_note(levels, intended[levels[0].name], eqd2)

    if len(parts) == 1 and not unread_cc:
        levels = parts[0].levels
        return "" if lv in levels else f"in % of {name(levels)}, the level governing it"
    read = "; ".join(
        f"{p.pct:.2f} % of "
        + ("its own prescription" if lv in p.levels else name(p.levels))
        + f" over {p.volume_cc:.1f} cc"
        for p in parts
    )
    note = f"read by the level governing each part: {read}"
    if unread_cc:
        note += f" (parts under {HOT_SPOT_VOLUME_CC:g} cc, {unread_cc:.3f} cc in all: not read)"
    return note


def _conventional_composite(od: OptionDose, alpha_beta_gy: float | None) -> FloatArray:
    """Sum of the conventional (non-SBRT) courses: physical, or EQD2 at ``alpha_beta_gy``."""
    out = np.zeros(od.dose_grid.shape, np.float64)
    for c in od.courses:
        if c.technique == "sbrt":
            continue
        if alpha_beta_gy is None:
            out += c.dose_gy
        else:
            out += eqd2_gy(c.dose_gy, c.fractions, alpha_beta_gy)
    return out


def _sbrt_hot_spot_cell(setting: _Setting, td: _TargetDose) -> tuple[_RowKey, _Cell]:
    """An SBRT target's near-maximum on its course's own dose, against twice its Rx."""
    lv = td.level
    dvh = compute_dvh(td.dose_gy, setting.dose_grid, setting.on_grid(lv.ptv))
    pct = 100.0 * dvh.dose_at_volume_cc(0.03) / lv.total_gy
    margin = SBRT_MAX_LIMIT_PCT - pct
    key = ("Target", lv.name, "D0.03cc", "%Rx", basis_sbrt_course(lv.parts[0][1]))
    limit = f"<= {SBRT_MAX_LIMIT_PCT:g} %Rx"
    return key, _Cell(pct, _Verdict(_status(margin), margin, limit, _SBRT_MAX_SOURCE))


def _hot_spot_cells(
    setting: _Setting, doses: dict[str, _TargetDose], od: OptionDose
) -> dict[_RowKey, _Cell]:
    """Near-maximum (D0.03cc) of every target against its intended level.

    Conventional targets: the sum of the conventional courses (SBRT boosts add to the
    elective dose by design and are checked on their own), each part of the target in %
    of the level governing it (:mod:`rtplan.level_zones`, the plan-sum ceiling's rule:
    its own level, a higher one within reach of a PTV intended higher, a container's
    highest nested level), the worst part giving the row (:func:`_hot_spot_parts`),
    limit :data:`HOT_SPOT_LIMIT_PCT`, and the worst of them as the option's hot spot. On
    the EQD2 basis (some option mixes doses per fraction, see :class:`_Setting`) the
    near-maximum EQD2 is read back as the fraction of that level's physical prescription
    giving it (:meth:`~rtplan.plan.TargetLevel.scale_giving_eqd2`): the limit is a
    physical one (ICRU 50), and 107 % of the prescription in every course is 107 % on
    either basis (as an EQD2 ratio at 1.8 Gy per fraction it would read 111 %). SBRT
    targets: their course's own dose in % of the prescription, limit
    :data:`SBRT_MAX_LIMIT_PCT`.
    """
    grid = setting.dose_grid
    levels = [td.level for td in doses.values() if not td.level.is_sbrt]
    ab = setting.alpha_beta.target
    if setting.hot_spot_eqd2:
        composite = _conventional_composite(od, ab)
        intended = {lv.name: lv.eqd2_gy(ab) for lv in levels}
    else:
        composite = _conventional_composite(od, None)
        intended = {lv.name: lv.total_gy for lv in levels}
    basis = setting.hot_spot_basis()
    limit = f"<= {HOT_SPOT_LIMIT_PCT:g} %"
    cells: dict[_RowKey, _Cell] = {}
    worst: float | None = None
    zones = level_zones(levels, grid, ab) if levels else None
    for td in doses.values():
        if td.level.is_sbrt:
            key, cell = _sbrt_hot_spot_cell(setting, td)
            cells[key] = cell
            continue
        lv = td.level
        assert zones is not None  # lv is a conventional level
        parts, unread_cc = _hot_spot_parts(setting, zones, lv, composite, intended)
        pct = max(p.pct for p in parts)
        margin = HOT_SPOT_LIMIT_PCT - pct
        note = _parts_note(lv, parts, unread_cc, intended, setting.hot_spot_eqd2)
        note = f"{od.option}: {note}" if note else ""
        key = ("Target", lv.name, "D0.03cc", "% intended", basis)
        cells[key] = _Cell(pct, _Verdict(_status(margin), margin, limit, _HOT_SPOT_SOURCE, note))
        worst = pct if worst is None else max(worst, pct)
    if worst is not None:
        margin = HOT_SPOT_LIMIT_PCT - worst
        cells[("Plan", "", "Hot spot (worst target D0.03cc)", "% intended", basis)] = _Cell(
            worst, _Verdict(_status(margin), margin, limit, _HOT_SPOT_SOURCE)
        )
    return cells


def _status(margin: float) -> str:
    return "pass" if margin >= -1e-9 else "fail"


def _target_cells(setting: _Setting, option: FieldOption, od: OptionDose) -> dict[_RowKey, _Cell]:
    """Coverage of every target (courses treating it) and its hot spot (composite)."""
    doses = _target_doses(option, od)
    cells: dict[_RowKey, _Cell] = {}
    for td in doses.values():
        cells.update(_coverage_cells(setting, td, doses))
    cells.update(_hot_spot_cells(setting, doses, od))
    return cells


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


# ---- organs of the constraints --------------------------------------------------------
_MINUS_CTV = re.compile(r"^\s*(?P<organ>.+?)\s*-\s*CTV\s*$", re.IGNORECASE)


class _OptionOrgans:
    """The structure a constraint names, for one option (``"Bladder-CTV"`` derived here)."""

    def __init__(self, setting: _Setting, option: FieldOption) -> None:
        self._setting = setting
        self._option = option
        self._cache: dict[str, Structure | None] = {}

    def get(self, name: str) -> Structure | None:
        """The structure, or ``None`` when the anatomy lacks it (or it is empty)."""
        if name not in self._cache:
            self._cache[name] = self._find(name)
        return self._cache[name]

    def found(self) -> list[Structure]:
        """The structures looked up so far that the anatomy has (derived ones too)."""
        return [s for s in self._cache.values() if s is not None]

    def _find(self, name: str) -> Structure | None:
        structures = self._setting.structures
        m = _MINUS_CTV.match(name)
        key = structures.resolve(m.group("organ") if m else name)
        if key is None or structures[key].is_empty:
            return None
        organ = structures[key]
        if m is None:
            return organ
        ctvs = _unique_by_name([t.ctv for t in self._option.targets if t.ctv is not None])
        mask = organ.mask
        for ctv in ctvs:
            if ctv.grid.equals(organ.grid):
                mask &= ~ctv.mask
        if not mask.any():
            return None
        return Structure(
            f"{key}-CTV",
            mask,
            organ.grid,
            derivation=f"{key} minus {', '.join(c.name for c in ctvs)} (the option's CTVs)",
        )


def _limit_text(c: Constraint) -> str:
    return f"{c.op} {c.limit:g} {c.unit}"


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _converted(c: Constraint, dose_map: Callable[[float], float]) -> Constraint | None:
    """``c`` with its dose threshold (V metrics) or dose limit (D metrics) mapped.

    ``None`` when the constraint has no dose in Gy to map (a %Rx metric or limit).
    """
    m = c.parsed
    if m.kind == "V":
        if m.at_unit != "Gy" or m.at is None:
            return None
        metric = f"V{round(dose_map(m.at), 1):g}Gy"
        return Constraint(c.structure, metric, c.op, c.limit, c.unit, c.source)
    if c.unit != "Gy":
        return None
    return Constraint(c.structure, c.metric, c.op, round(dose_map(c.limit), 2), "Gy", c.source)


def _to_eqd2(fractions: int, alpha_beta_gy: float) -> Callable[[float], float]:
    """A map from a dose in ``fractions`` fractions to its EQD2, Gy."""

    def convert(dose_gy: float) -> float:
        return float(eqd2_gy(dose_gy, fractions, alpha_beta_gy))

    return convert


def _checked_cell(c: Constraint, dvh: DVH, limit: str, source: str, note: str) -> _Cell:
    r = evaluate_constraint(c, dvh)
    status = "pass" if r.passed else "fail"
    return _Cell(r.value, _Verdict(status, r.margin, limit, source, note))


# ---- conventional constraints -----------------------------------------------------------
def _conventional_constraint_cells(
    setting: _Setting, organs: _OptionOrgans, total: FloatArray, eqd2: _Eqd2
) -> dict[_RowKey, _Cell]:
    """Conventional OAR constraints on the composite (physical, or EQD2 with SBRT courses)."""
    cells: dict[_RowKey, _Cell] = {}
    for c in setting.protocol.constraints_for("conventional"):
        # the fractions of the plans a limit was written for: its own, else the protocol's
        n_ref = setting.reference_fractions if c.fractions is None else c.fractions
        s = organs.get(c.structure)
        name = c.structure if s is None else s.name
        if not setting.composite_eqd2:
            key = ("OAR", name, c.metric, c.unit, BASIS_PHYSICAL)
            if s is None:
                cells[key] = _missing_cell(c.text, c.source, f"{c.structure} missing")
            else:
                dvh = setting.on_grid.dvh(total, s)
                cells[key] = _checked_cell(c, dvh, c.text, c.source, c.note)
            continue
        ab = setting.alpha_beta.of_structure(name)
        conv = _converted(c, _to_eqd2(n_ref, ab))
        basis = basis_eqd2(ab)
        if conv is None:
            key = ("OAR", name, c.metric, c.unit, basis)
            cells[key] = _missing_cell(
                c.text, c.source, f"{c.metric} [{c.unit}] cannot be converted to EQD2"
            )
            continue
        key = ("OAR", name, conv.metric, conv.unit, basis)
        if s is None:
            cells[key] = _missing_cell(_limit_text(conv), c.source, f"{c.structure} missing")
            continue
        note = _joined(
            c.note,
            f"{c.metric} {c.text} of {n_ref}-fraction plans as EQD2 (alpha/beta {ab:g} Gy): "
            f"{conv.metric} {_limit_text(conv)}",
        )
        dvh = setting.on_grid.dvh(eqd2(ab), s)
        cells[key] = _checked_cell(conv, dvh, _limit_text(conv), c.source, note)
    return cells


# ---- SBRT constraints ---------------------------------------------------------------------
@dataclass(frozen=True)
class _SbrtLimit:
    """An SBRT constraint at one fraction number: as written, or converted from another."""

    original: ProtocolConstraint
    constraint: Constraint | None  # None: could not be converted
    note: str


def _sbrt_limits(setting: _Setting, fractions: int) -> list[_SbrtLimit]:
    """The protocol's SBRT limits for ``fractions`` (the nearest tabulated ones converted)."""
    sbrt = setting.protocol.constraints_for("sbrt")
    tabulated = sorted({c.fractions for c in sbrt if c.fractions is not None})
    out = [_SbrtLimit(c, c, c.note) for c in sbrt if c.fractions in (None, fractions)]
    if fractions in tabulated or not tabulated:
        return out
    nearest = min(tabulated, key=lambda f: (abs(f - fractions), f))
    for c in sbrt:
        if c.fractions != nearest:
            continue
        ab = setting.alpha_beta.of_structure(c.structure)

        def to_course(d: float, ab: float = ab) -> float:
            return float(physical_dose_gy(eqd2_gy(d, nearest, ab), fractions, ab))

        note = (
            f"no limit for {fractions} fractions: the {nearest}-fraction limit {c.metric} "
            f"{c.text} converted with the same EQD2 (alpha/beta {ab:g} Gy)"
        )
        out.append(_SbrtLimit(c, _converted(c, to_course), _joined(c.note, note)))
    return out


def _keep_worst(cells: dict[_RowKey, _Cell], key: _RowKey, cell: _Cell) -> None:
    """Store ``cell`` unless the row already holds a worse (smaller) headroom."""
    old = cells.get(key)
    if old is not None and old.verdict is not None and cell.verdict is not None:
        h_old, h_new = old.verdict.headroom, cell.verdict.headroom
        if h_old is not None and (h_new is None or h_new >= h_old):
            return
    cells[key] = cell


def _sbrt_course_cells(
    setting: _Setting, organs: _OptionOrgans, dose_gy: FloatArray, fractions: int, eqd2: _Eqd2
) -> dict[_RowKey, _Cell]:
    """One SBRT course's limits on its own dose and, as EQD2, on the composite."""
    cells: dict[_RowKey, _Cell] = {}
    limits = _sbrt_limits(setting, fractions)
    course_basis = basis_sbrt_course(fractions)
    if not limits:
        key = ("OAR (SBRT course)", "", "SBRT constraints", "", course_basis)
        note = f"no constraint for {fractions} fractions in protocol {setting.protocol.name}"
        cells[key] = _missing_cell(None, "", note)
        return cells
    for lim in limits:
        c, orig = lim.constraint, lim.original
        s = organs.get(orig.structure)
        name = orig.structure if s is None else s.name
        if c is None:
            key = ("OAR (SBRT course)", name, orig.metric, orig.unit, course_basis)
            cells[key] = _missing_cell(orig.text, orig.source, lim.note + " (not convertible)")
            continue
        limit = f"{_limit_text(c)} ({fractions} fx)"
        key = ("OAR (SBRT course)", name, c.metric, c.unit, course_basis)
        if s is None:
            cells[key] = _missing_cell(limit, orig.source, f"{orig.structure} missing")
        else:
            dvh = setting.on_grid.dvh(dose_gy, s)
            _keep_worst(cells, key, _checked_cell(c, dvh, limit, orig.source, lim.note))
        if c.parsed.kind == "V":
            continue  # volume limits are for the SBRT course alone (see _sbrt_constraint_cells)
        ab = setting.alpha_beta.of_structure(name)
        comp = _converted(c, _to_eqd2(fractions, ab))
        assert comp is not None  # c has a dose in Gy, as it was converted or checked above
        comp_key = (
            "OAR (SBRT composite)",
            name,
            f"{comp.metric} ({fractions}-fx limit)",
            comp.unit,
            basis_eqd2(ab),
        )
        if s is None:
            note = f"{orig.structure} missing"
            cells[comp_key] = _missing_cell(_limit_text(comp), orig.source, note)
            continue
        note = _joined(
            lim.note,
            f"the {fractions}-fraction limit {c.metric} {_limit_text(c)} as EQD2 (alpha/beta "
            f"{ab:g} Gy) on the sum of every course",
        )
        dvh = setting.on_grid.dvh(eqd2(ab), s)
        _keep_worst(cells, comp_key, _checked_cell(comp, dvh, _limit_text(comp), orig.source, note))
    return cells


def _sbrt_constraint_cells(
    setting: _Setting, organs: _OptionOrgans, option: FieldOption, od: OptionDose, eqd2: _Eqd2
) -> dict[_RowKey, _Cell]:
    """SBRT limits per SBRT course and on the composite; the worst course kept per row.

    Every limit of the course's fraction number is checked on the course's own dose. On
    the composite of every course (EQD2 at the organ's alpha/beta) the maximum-dose
    limits are checked, converted to EQD2: TG-101's volume limits (e.g. bladder wall
    V16.8Gy < 15 cc in 3 fractions) describe an SBRT course alone, and any pelvic course
    exceeds them; the composite's volumes are judged by the conventional limits, which
    are then evaluated on the composite EQD2 too.
    """
    cells: dict[_RowKey, _Cell] = {}
    for course, cd in zip(option.courses, od.courses):
        if course.technique != "sbrt":
            continue
        for key, cell in _sbrt_course_cells(
            setting, organs, cd.dose_gy, course.fractions, eqd2
        ).items():
            _keep_worst(cells, key, cell)
    return cells


# ---- summaries and NTCP -------------------------------------------------------------------
def _oar_summary_cells(setting: _Setting, dvhs: dict[str, DVH]) -> dict[_RowKey, _Cell]:
    """Mean and near-maximum dose of every OAR on the total physical dose."""
    cells: dict[_RowKey, _Cell] = {}
    for s in setting.oars:
        cells[("OAR", s.name, "Dmean", "Gy", BASIS_PHYSICAL)] = _Cell(dvhs[s.name].mean_gy)
        cells[("OAR", s.name, "D0.03cc", "Gy", BASIS_PHYSICAL)] = _Cell(
            dvhs[s.name].dose_at_volume_cc(0.03)
        )
    return cells


def _ntcp_cells(setting: _Setting, eqd2: _Eqd2) -> dict[_RowKey, _Cell]:
    """LKB NTCP on the EQD2 composite at the protocol's alpha/beta of each organ."""
    cells: dict[_RowKey, _Cell] = {}
    for sname, model in setting.protocol.ntcp_models.items():
        key = setting.structures.resolve(sname)
        if key is None:
            continue
        ab = setting.alpha_beta.of_structure(key)
        edvh = setting.on_grid.dvh(eqd2(ab), setting.structures[key])
        source = (
            f"LKB TD50={model.td50_gy:g} Gy, m={model.m:g}, n={model.n:g}, "
            f"alpha/beta={ab:g} Gy; {model.source}"
        )
        row = ("NTCP", key, f"NTCP {model.parameter_set}", "%", basis_eqd2(ab))
        cells[row] = _Cell(
            100.0 * lkb_ntcp(edvh, model.to_lkb()),
            _Verdict(None, None, None, source, model.caveat),
        )
    return cells


# ---------------------------------------------------------------------------- the table
_GROUP_ORDER = {
    "Target": 0,
    "Plan": 1,
    "OAR": 2,
    "OAR (SBRT course)": 3,
    "OAR (SBRT composite)": 4,
    "NTCP": 5,
}


def _assemble_table(
    options: Sequence[str],
    per_option: dict[str, dict[_RowKey, _Cell]],
    *,
    dose_sources: Mapping[str, DoseSource] | None = None,
    dose_files: Mapping[str, str] | None = None,
) -> ComparisonTable:
    keys: list[_RowKey] = []
    for o in options:
        for k in per_option[o]:
            if k not in keys:
                keys.append(k)
    keys.sort(key=lambda k: _GROUP_ORDER.get(k[0], 9))  # stable: keeps first-seen order
    rows = []
    for k in keys:
        values: dict[str, float | None] = {}
        status: dict[str, str | None] = {}
        headroom: dict[str, float | None] = {}
        limit: str | None = None
        source = ""
        notes: list[str] = []
        for o in options:
            cell = per_option[o].get(k)
            values[o] = None if cell is None or cell.value is None else float(cell.value)
            if cell is not None and cell.verdict is not None:
                v = cell.verdict
                status[o], headroom[o] = v.status, v.headroom
                limit = v.limit or limit
                source = v.source or source
                # the parts of a note (joined with "; ") once each: an imported column's
                # note repeats the estimated column's and adds its own
                notes += [n for n in v.note.split("; ") if n and n not in notes]
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
                basis=k[4],
                note="; ".join(notes),
            )
        )
    return ComparisonTable(
        tuple(options),
        tuple(rows),
        dose_sources=dict(dose_sources or {}),
        dose_files=dict(dose_files or {}),
    )


# ---------------------------------------------------------------------------- imported doses
@dataclass(frozen=True)
class _ImportRequest:
    """The imported dose of one option: one for the whole option, or one per course."""

    whole: ImportedDose | None
    per_course: tuple[ImportedDose, ...] = ()


def _import_keys(
    imported_doses: Mapping[str, ImportedDoseInput], by_name: Mapping[str, FieldOption]
) -> dict[tuple[str, str | None], ImportedDoseInput]:
    """``imported_doses`` keyed by (option, course or None); unknown keys refused."""
    out: dict[tuple[str, str | None], ImportedDoseInput] = {}
    for key, value in imported_doses.items():
        if not isinstance(key, str):
            raise TypeError(f"imported_doses keys must be option names (str), got {key!r}")
        if imported_column(key) in by_name:
            raise InvalidInputError(
                f"imported dose for {key!r}: its column {imported_column(key)!r} is already "
                "the name of an option"
            )
        if key in by_name:
            out[(key, None)] = value
            continue
        option, sep, course = key.rpartition("/")
        if sep and option in by_name and course in {c.name for c in by_name[option].courses}:
            out[(option, course)] = value
            continue
        per_course = [
            f"{o.name}/{c.name}" for o in by_name.values() if len(o.courses) > 1 for c in o.courses
        ]
        also = f" (or one course's dose: {', '.join(per_course)})" if per_course else ""
        raise InvalidInputError(
            f"imported dose for {key!r}: no such option; the options are {', '.join(by_name)}{also}"
        )
    return out


def _as_imported(value: ImportedDoseInput, key: str) -> ImportedDose:
    """An imported dose as given, or read from its RTDOSE file."""
    if isinstance(value, ImportedDose):
        return value
    if isinstance(value, (str, os.PathLike)):
        return read_imported_dose(value)
    raise TypeError(
        f"imported_doses[{key!r}] must be an RTDOSE path or an rtplan.imported_dose."
        f"ImportedDose, got {_type_name(value)}"
    )


def _import_requests(
    imported_doses: Mapping[str, ImportedDoseInput] | None, options: Sequence[FieldOption]
) -> dict[str, _ImportRequest]:
    """Option name -> its imported dose(s), checked and read (before any estimate runs)."""
    if imported_doses is None:
        return {}
    if not isinstance(imported_doses, Mapping):
        raise TypeError(
            "imported_doses must be a mapping of option name to an RTDOSE path or an "
            f"ImportedDose, got {_type_name(imported_doses)}"
        )
    by_name = {o.name: o for o in options}
    keys = _import_keys(imported_doses, by_name)
    out: dict[str, _ImportRequest] = {}
    for name, option in by_name.items():
        courses = [c.name for c in option.courses]
        given = [c for c in courses if (name, c) in keys]
        if (name, None) in keys and given:
            raise InvalidInputError(
                f"imported doses for {name!r}: both a plan sum and per-course doses "
                f"({', '.join(f'{name}/{c}' for c in given)}) were given: give one or the other"
            )
        if (name, None) in keys:
            out[name] = _ImportRequest(_as_imported(keys[(name, None)], name))
        elif given:
            missing = [f"{name}/{c}" for c in courses if c not in given]
            if missing:
                raise InvalidInputError(
                    f"imported doses for {name!r}: one is needed for every course, "
                    f"{', '.join(missing)} missing (or give the plan sum as {name!r})"
                )
            doses = tuple(_as_imported(keys[(name, c)], f"{name}/{c}") for c in courses)
            out[name] = _ImportRequest(None, doses)
    return out


@dataclass(frozen=True, eq=False)
class _ImportedColumn:
    """An option's imported dose on the dose grid, as a column of its own.

    ``option`` is the option renamed to its column (:func:`imported_column`); ``dose``
    its courses' imported doses; ``covered`` the dose voxels every imported grid covers;
    ``split`` whether a plan sum was split over several courses.
    """

    option: FieldOption
    dose: OptionDose
    covered: BoolMask
    split: bool
    files: str
    note: str


def _split_plan_sum(total_gy: FloatArray, estimated: OptionDose) -> list[FloatArray]:
    """A plan-sum dose split over the courses in proportion to their estimated doses.

    Where the estimate is 0 Gy the split follows the courses' numbers of fractions (the
    same dose per fraction in every course).
    """
    courses = estimated.courses
    if len(courses) == 1:
        return [total_gy]
    est_total = estimated.total_gy
    dosed = est_total > 0.0
    denominator = np.where(dosed, est_total, 1.0)
    all_fractions = float(sum(c.fractions for c in courses))
    return [
        total_gy * np.where(dosed, c.dose_gy / denominator, c.fractions / all_fractions)
        for c in courses
    ]


def _frame_text(doses: Sequence[ImportedDose], dose_grid: ImageGrid) -> str:
    """What the frame-of-reference check found (it refuses a mismatch before this)."""
    ct = dose_grid.frame_of_reference_uid
    if ct is None:
        return "frame of reference not checked (the CT has no FrameOfReferenceUID)"
    if any(d.frame_of_reference_uid is None for d in doses):
        return "frame of reference not checked (the RTDOSE has no FrameOfReferenceUID)"
    return f"FrameOfReferenceUID that of the CT ({ct})"


def _import_note(doses: Sequence[ImportedDose], dose_grid: ImageGrid, split_courses: int) -> str:
    """The sentence the report shows for an imported column."""
    kinds = ", ".join(sorted({d.summation_type for d in doses}))
    note = (
        f"dose imported from {', '.join(d.name for d in doses)} ({kinds}), not checked by "
        f"rtplan; {_frame_text(doses, dose_grid)}"
    )
    if split_courses > 1:
        note += (
            f"; the plan sum is split over the {split_courses} courses voxel by voxel in "
            "proportion to the estimated course doses (an approximation for the rows on one "
            "course's dose or on EQD2)"
        )
    return note


def _imported_column(
    request: _ImportRequest, option: FieldOption, estimated: OptionDose
) -> _ImportedColumn:
    """The imported dose of ``option`` on the estimate's dose grid, per course."""
    grid = estimated.dose_grid
    if request.whole is not None:
        doses: tuple[ImportedDose, ...] = (request.whole,)
        total, covered = dose_on_grid(request.whole, grid)
        parts = _split_plan_sum(total, estimated)
        split = len(parts) > 1
    else:
        doses = request.per_course
        on_grid = [dose_on_grid(d, grid) for d in doses]
        parts = [d for d, _ in on_grid]
        covered = np.logical_and.reduce([c for _, c in on_grid])
        split = False
    column = imported_column(option.name)
    courses = tuple(
        CourseDose(c.name, c.technique, c.fractions, part, dict(c.prescriptions_gy))
        for c, part in zip(estimated.courses, parts)
    )
    return _ImportedColumn(
        option=replace(option, name=column),
        dose=OptionDose(column, grid, courses),
        covered=covered,
        split=split,
        files=", ".join(d.name for d in doses),
        note=_import_note(doses, grid, len(parts) if split else 1),
    )


def _uncovered(
    setting: _Setting, structures: Sequence[Structure], covered: BoolMask
) -> dict[str, float]:
    """Structure name -> % of it outside the imported grid (above :data:`UNCOVERED_WARN_PCT`)."""
    out: dict[str, float] = {}
    for s in structures:
        pct = uncovered_pct(setting.on_grid(s), covered)
        if pct > UNCOVERED_WARN_PCT:
            out[s.name] = pct
    return out


def _warn_uncovered(column: str, files: str, uncovered: Mapping[str, float]) -> None:
    """One warning listing the structures an imported dose does not cover."""
    if not uncovered:
        return
    listed = ", ".join(f"{name} {pct:.1f} %" for name, pct in uncovered.items())
    warnings.warn(
        f"{column}: the dose grid of {files} does not cover all of {listed} (the percentage "
        "of each volume outside it); the part outside counts as 0 Gy, as dicompyler-core "
        "counts contours outside the dose grid",
        RtplanWarning,
        stacklevel=4,  # the caller of compare_options
    )


def _courses_treating(option: FieldOption, structure: str) -> int:
    """How many courses of ``option`` treat the target (PTV as drawn, or its CTV) ``structure``."""
    return sum(
        any(
            structure == t.whole_ptv.name or (t.ctv is not None and structure == t.ctv.name)
            for t in course.targets
        )
        for course in option.courses
    )


def _depends_on_split(key: _RowKey, option: FieldOption) -> bool:
    """Whether a row's value depends on how a plan sum is split over the courses."""
    basis = key[4]
    if basis in (BASIS_PHYSICAL, BASIS_INTENDED, ""):
        return False
    if basis == BASIS_COURSES:
        return _courses_treating(option, key[1]) < len(option.courses)
    if basis == f"{BASIS_CONVENTIONAL}, physical":
        return "sbrt" in option.techniques
    return True  # one course's dose, or EQD2 (not linear in the course doses)


def _noted(cell: _Cell, note: str) -> _Cell:
    """``cell`` with ``note`` added to its verdict's note (a verdict made for it if none)."""
    if cell.verdict is None:
        return _Cell(cell.value, _Verdict(None, None, None, "", note))
    return _Cell(cell.value, replace(cell.verdict, note=_joined(cell.verdict.note, note)))


def _annotated(
    cells: dict[_RowKey, _Cell], option: FieldOption, split: bool, uncovered: Mapping[str, float]
) -> dict[_RowKey, _Cell]:
    """The cells of an imported column, with notes on coverage and on a split plan sum."""
    column = option.name
    out: dict[_RowKey, _Cell] = {}
    for key, cell in cells.items():
        pct = uncovered.get(key[1])
        notes = []
        if pct is not None:
            notes.append(
                f"{column}: {pct:.1f} % of {key[1]} outside the imported dose grid, counted as 0 Gy"
            )
        if split and _depends_on_split(key, option):
            notes.append(
                f"{column}: plan sum split over the courses in proportion to the estimate "
                "(approximation)"
            )
        out[key] = _noted(cell, _joined(*notes)) if notes else cell
    return out


def _describe_model(params: DoseModelParameters, dose_spacing_mm: float) -> str:
    parts = [
        f"{f.name}={getattr(params, f.name)!r}" for f in fields(params) if f.name != "imrt_sparing"
    ]
    spared = "; ".join(
        f"{o.organ} s={o.strength:g} L={o.length_mm:g} mm"
        + (f" yield={o.interface_yield:g}/1000 cc" if o.interface_yield > 0 else "")
        + (f" hold={o.hold_level:g} Rx L_h={o.hold_length_mm:g} mm" if o.hold_level > 0 else "")
        for o in params.imrt_sparing
    )
    parts.append(f"imrt_sparing=({spared or 'none'})")
    return (
        "rtplan analytic dose estimate (distance-to-PTV fall-off for IMRT/VMAT and SBRT, "
        "static-beam box with depth attenuation for 3D-CRT, organ sparing and hold, "
        "hot-spot texture and PTV-organ interface yield of IMRT courses; "
        "see docs/dose_model.md) on a "
        f"{dose_spacing_mm:g} mm dose grid; later-phase PTVs cropped by higher targets of "
        "earlier courses and the composite held under the plan-sum ceiling "
        "(plan_sum_ceiling times the intended level governing each voxel, EQD2); parameters: "
        + ", ".join(parts)
    )
