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
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from rtplan._io import atomic_write_text
from rtplan._progress import Progress, ProgressLike, as_progress
from rtplan._typing import FloatArray
from rtplan.atlas import Atlas
from rtplan.context import ClinicalContext
from rtplan.dose_estimate import (
    DoseModelParameters,
    OptionDose,
    estimate_option_dose,
    make_dose_grid,
)
from rtplan.dvh import (
    DVH,
    StructureOnDoseGrid,
    compute_dvh,
    evaluate_constraint,
    lkb_ntcp,
    structure_on_dose_grid,
)
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesions
from rtplan.plan import FieldOption, Target
from rtplan.protocol import Protocol, load_protocol
from rtplan.staging import Stage
from rtplan.structures import Structure, StructureSet
from rtplan.tracers import Tracer
from rtplan.volumes import OptionSpec, build_options

__all__ = [
    "DEFAULT_OARS",
    "Comparison",
    "ComparisonTable",
    "MetricRow",
    "OptionResult",
    "compare_options",
]

#: A value of :meth:`ComparisonTable.records`: text, a number, or nothing.
RecordValue = str | float | None


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


def _finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` for NaN and infinities (which JSON cannot hold)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ComparisonTable:
    """The options side by side: one :class:`MetricRow` per metric, options as columns."""

    options: tuple[str, ...]
    rows: tuple[MetricRow, ...]

    def records(self) -> list[dict[str, RecordValue]]:
        """Rows as dicts: metadata keys, one value key and one status key per option."""
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
        payload = {
            "options": list(self.options),
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
                    "source": r.source,
                }
                for r in self.rows
            ],
        }
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
        Physical dose per course, Gy.
    dvhs : dict of str to DVH
        Structure name -> :class:`rtplan.dvh.DVH` of the total dose.
    structures : list of Structure
        The option's own structures (GTV/CTV/PTV) on the CT grid.
    """

    option: FieldOption
    dose_grid: ImageGrid
    dose_gy: FloatArray
    eqd2_gy: FloatArray | None = None
    course_doses_gy: dict[str, FloatArray] = field(default_factory=dict)
    dvhs: dict[str, DVH] = field(default_factory=dict)
    structures: list[Structure] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Option name."""
        return self.option.name


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


def _oar_names(atlas: Atlas, protocol: Protocol, oars: Sequence[str] | None) -> list[str]:
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

    Returns
    -------
    Comparison

    Raises
    ------
    TypeError
        An argument of the wrong type (the message names it), e.g. ``options`` that are
        not a sequence of FieldOption, or of OptionSpec.
    InvalidInputError
        No option, option names that repeat, a spacing that is not positive.

    Notes
    -----
    Conventional-course constraints and target coverage are evaluated on the physical
    dose of the conventional courses (which share a fraction size regime); SBRT
    constraints on each SBRT course's own dose, for its number of fractions (the worst
    course is reported). NTCP uses the EQD2 composite of all courses with the model's
    alpha/beta. The dose is an estimate for comparing options, not a treatment plan.
    """
    _check_case_inputs(atlas, lesions, stage, protocol, case)
    _check_context(context, tracer)
    spacing_mm = _check_model_inputs(dose_spacing_mm, oars, dose_parameters)
    proto = load_protocol(protocol)
    built = _field_options(options, atlas, lesions, proto)
    report = as_progress(False if progress is None else progress)
    params = DoseModelParameters() if dose_parameters is None else dose_parameters
    body = atlas.structures["Body"] if "Body" in atlas.structures else None
    dose_grid = make_dose_grid(atlas.grid, spacing_mm=spacing_mm, body=body)
    setting = _Setting.of(atlas.structures, proto, dose_grid, _oar_names(atlas, proto, oars))
    results: list[OptionResult] = []
    per_option: dict[str, dict[_RowKey, _Cell]] = {}
    for option in built:
        report.step(f"{case + ': ' if case else ''}dose estimate for option {option.name}")
        od = estimate_option_dose(option, dose_grid, body=body, params=params)
        result, cells = _evaluate_option(setting, option, od)
        results.append(result)
        per_option[option.name] = cells
    return Comparison(
        case=case,
        atlas=atlas,
        lesions=lesions,
        stage=stage,
        protocol=proto,
        results=results,
        table=_assemble_table([o.name for o in built], per_option),
        dose_model=_describe_model(params, spacing_mm),
        context=context,
        tracer=tracer,
    )


# ---------------------------------------------------------------------------- one option
#: Row of the table: (group, structure, metric, unit).
_RowKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class _Verdict:
    """What a constraint (or a model) says about a value: status, headroom, limit, source."""

    status: str | None
    headroom: float | None
    limit: str | None
    source: str


@dataclass(frozen=True)
class _Cell:
    """One option's entry of a table row: the value and, for checked rows, the verdict."""

    value: float
    verdict: _Verdict | None = None


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


@dataclass(frozen=True)
class _Setting:
    """What every option of one comparison is evaluated against."""

    structures: StructureSet
    protocol: Protocol
    dose_grid: ImageGrid
    oar_names: tuple[str, ...]
    oars: tuple[Structure, ...]
    on_grid: _OnDoseGrid

    @classmethod
    def of(
        cls, structures: StructureSet, protocol: Protocol, dose_grid: ImageGrid, oars: list[str]
    ) -> _Setting:
        return cls(
            structures,
            protocol,
            dose_grid,
            tuple(oars),
            tuple(structures[n] for n in oars),
            _OnDoseGrid(dose_grid),
        )


def _evaluate_option(
    setting: _Setting, option: FieldOption, od: OptionDose
) -> tuple[OptionResult, dict[_RowKey, _Cell]]:
    """The result of one option and its cells of the table, row by row in table order."""
    total = od.total_gy
    structs = _option_structures(option)
    dvhs = {s.name: setting.on_grid.dvh(total, s) for s in (*setting.oars, *structs)}
    # later steps overwrite a cell of an earlier step in place (same row, new value)
    cells = _target_cells(setting, option, od)
    cells.update(_conventional_constraint_cells(setting, od, total, dvhs))
    cells.update(_sbrt_constraint_cells(setting, option, od))
    cells.update(_oar_summary_cells(setting, dvhs))
    eqd2_by_alpha_beta: dict[float, FloatArray] = {}
    cells.update(_ntcp_cells(setting, od, eqd2_by_alpha_beta))
    eqd2 = eqd2_by_alpha_beta.get(3.0)
    if eqd2 is None and len({c.fractions for c in od.courses}) > 1:
        eqd2 = od.eqd2_gy(3.0)
    result = OptionResult(
        option=option,
        dose_grid=setting.dose_grid,
        dose_gy=total,
        eqd2_gy=eqd2,
        course_doses_gy={c.name: c.dose_gy for c in od.courses},
        dvhs=dvhs,
        structures=structs,
    )
    return result, cells


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


def _unique_targets(option: FieldOption) -> list[Target]:
    seen: dict[str, Target] = {}
    for t in option.targets:
        seen.setdefault(t.name, t)
    return list(seen.values())


@dataclass(frozen=True, eq=False)
class _TargetDose:
    """A target's dose over the courses that treat it, against its summed prescription."""

    dose_gy: FloatArray
    prescription_gy: float
    courses: frozenset[int]


def _target_doses(option: FieldOption, od: OptionDose) -> dict[str, _TargetDose]:
    rx: dict[str, float] = {}
    dose: dict[str, FloatArray] = {}
    in_courses: dict[str, set[int]] = {}
    for n_course, (course, cd) in enumerate(zip(option.courses, od.courses)):
        for t in course.targets:
            in_courses.setdefault(t.name, set()).add(n_course)
            rx[t.name] = rx.get(t.name, 0.0) + t.prescription_gy
            prev = dose.get(t.name)
            dose[t.name] = cd.dose_gy if prev is None else prev + cd.dose_gy
    return {n: _TargetDose(dose[n], rx[n], frozenset(in_courses[n])) for n in rx}


def _target_cells(setting: _Setting, option: FieldOption, od: OptionDose) -> dict[_RowKey, _Cell]:
    """Coverage of every target on the dose of the courses that treat it.

    Each target is evaluated against the sum of its prescriptions in those courses; the
    hot spot (D2%) on the PTV minus the PTVs of higher prescription (TG-263 ``"PTV!"``)
    so that a simultaneous integrated boost is not counted as one.
    """
    grid = setting.dose_grid
    doses = _target_doses(option, od)
    targets = _unique_targets(option)
    cells: dict[_RowKey, _Cell] = {}
    for t in targets:
        td = doses[t.name]
        d, p = td.dose_gy, td.prescription_gy
        tdvh = compute_dvh(d, grid, setting.on_grid(t.ptv))
        cells[("Target", t.name, "Volume", "cc")] = _Cell(t.ptv.volume_cc)
        cells[("Target", t.name, "Rx", "Gy")] = _Cell(p)
        cells[("Target", t.name, "D95%", "Gy")] = _Cell(tdvh.dose_at_volume_pct(95.0))
        cells[("Target", t.name, "V95%Rx", "%")] = _Cell(tdvh.volume_at_dose_pct(0.95 * p))
        higher = [
            u.ptv
            for u in targets
            if doses[u.name].prescription_gy > p
            and u.ptv is not t.ptv
            and doses[u.name].courses & td.courses
        ]
        hot = _minus(t.ptv, higher)
        if hot is not None:
            hdvh = tdvh if hot is t.ptv else compute_dvh(d, grid, hot)
            cells[("Target", t.name, "D2%", "%Rx")] = _Cell(
                100.0 * hdvh.dose_at_volume_pct(2.0) / p
            )
        if t.ctv is not None and not t.ctv.is_empty:
            cdvh = compute_dvh(d, grid, setting.on_grid(t.ctv))
            cells[("Target", t.ctv.name, "Volume", "cc")] = _Cell(t.ctv.volume_cc)
            cells[("Target", t.ctv.name, "D98%", "%Rx")] = _Cell(
                100.0 * cdvh.dose_at_volume_pct(98.0) / p
            )
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


def _conventional_constraint_cells(
    setting: _Setting, od: OptionDose, total: FloatArray, dvhs: dict[str, DVH]
) -> dict[_RowKey, _Cell]:
    """OAR constraints of the conventional courses, on the physical dose of those courses."""
    conv = [c for c in od.courses if c.technique != "sbrt"]
    if not conv:
        return {}
    if len(conv) == len(od.courses):
        conv_dvhs = dvhs
    else:
        conv_dose = np.zeros(setting.dose_grid.shape, np.float64)
        for course in conv:
            conv_dose += course.dose_gy
        conv_dvhs = {s.name: setting.on_grid.dvh(conv_dose, s) for s in setting.oars}
    cells: dict[_RowKey, _Cell] = {}
    for c in setting.protocol.constraints_for("conventional"):
        key = setting.structures.resolve(c.structure)
        if key is None or key not in conv_dvhs:
            continue
        r = evaluate_constraint(c, conv_dvhs[key])
        verdict = _Verdict("pass" if r.passed else "fail", r.margin, c.text, c.source)
        cells[("OAR", key, c.metric, c.unit)] = _Cell(r.value, verdict)
    return cells


def _sbrt_constraint_cells(
    setting: _Setting, option: FieldOption, od: OptionDose
) -> dict[_RowKey, _Cell]:
    """SBRT constraints on each SBRT course's own dose; the worst course is kept per row."""
    cells: dict[_RowKey, _Cell] = {}
    worst_margin: dict[_RowKey, float] = {}
    for course, cd in zip(option.courses, od.courses):
        if course.technique != "sbrt":
            continue
        for c in setting.protocol.constraints_for("sbrt", fractions=course.fractions):
            key = setting.structures.resolve(c.structure)
            if key is None or key not in setting.oar_names:
                continue
            r = evaluate_constraint(c, setting.on_grid.dvh(cd.dose_gy, setting.structures[key]))
            row_key = ("OAR (SBRT)", key, c.metric, c.unit)
            if row_key in worst_margin and not r.margin < worst_margin[row_key]:
                continue
            worst_margin[row_key] = r.margin
            limit = f"{c.text} ({course.fractions} fx)"
            verdict = _Verdict("pass" if r.passed else "fail", r.margin, limit, c.source)
            cells[row_key] = _Cell(r.value, verdict)
    return cells


def _oar_summary_cells(setting: _Setting, dvhs: dict[str, DVH]) -> dict[_RowKey, _Cell]:
    """Mean and near-maximum dose of every OAR on the total physical dose."""
    cells: dict[_RowKey, _Cell] = {}
    for s in setting.oars:
        cells[("OAR", s.name, "Dmean", "Gy")] = _Cell(dvhs[s.name].mean_gy)
        cells[("OAR", s.name, "D0.03cc", "Gy")] = _Cell(dvhs[s.name].dose_at_volume_cc(0.03))
    return cells


def _ntcp_cells(
    setting: _Setting, od: OptionDose, eqd2_by_alpha_beta: dict[float, FloatArray]
) -> dict[_RowKey, _Cell]:
    """LKB NTCP on the EQD2 composite; the EQD2 doses are left in ``eqd2_by_alpha_beta``."""
    cells: dict[_RowKey, _Cell] = {}
    for sname, model in setting.protocol.ntcp_models.items():
        key = setting.structures.resolve(sname)
        if key is None:
            continue
        ab = float(model.alpha_beta_gy)
        if ab not in eqd2_by_alpha_beta:
            eqd2_by_alpha_beta[ab] = od.eqd2_gy(ab)
        edvh = setting.on_grid.dvh(eqd2_by_alpha_beta[ab], setting.structures[key])
        source = (
            f"LKB TD50={model.td50_gy:g} Gy, m={model.m:g}, n={model.n:g}, "
            f"alpha/beta={ab:g} Gy; {model.source}"
        )
        cells[("NTCP", key, f"NTCP {model.parameter_set}", "%")] = _Cell(
            100.0 * lkb_ntcp(edvh, model.to_lkb()), _Verdict(None, None, None, source)
        )
    return cells


# ---------------------------------------------------------------------------- the table
_GROUP_ORDER = {"Target": 0, "OAR": 1, "OAR (SBRT)": 2, "NTCP": 3}


def _assemble_table(
    options: Sequence[str], per_option: dict[str, dict[_RowKey, _Cell]]
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
        for o in options:
            cell = per_option[o].get(k)
            values[o] = None if cell is None else float(cell.value)
            if cell is not None and cell.verdict is not None:
                v = cell.verdict
                status[o], headroom[o] = v.status, v.headroom
                limit = v.limit or limit
                source = v.source or source
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


def _describe_model(params: DoseModelParameters, dose_spacing_mm: float) -> str:
    parts = [f"{f.name}={getattr(params, f.name)!r}" for f in fields(params)]
    return (
        "rtplan analytic dose estimate (distance-to-PTV fall-off for IMRT/VMAT and SBRT, "
        "static-beam box with depth attenuation for 3D-CRT; see docs/dose_model.md) on a "
        f"{dose_spacing_mm:g} mm dose grid; parameters: " + ", ".join(parts)
    )
