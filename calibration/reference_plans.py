"""Plan the reference options with pyRadPlan and store their metrics; resumable.

Run from the repository root, in an environment with the ``calibration`` extra::

    python -m calibration.reference_plans --list
    python -m calibration.reference_plans --threads 1            # every plan not yet stored
    python -m calibration.reference_plans --only pbrt__atlas      # one plan
    python -m calibration.reference_plans --dry-run               # build, do not plan

Each plan runs in its own process (its peak memory is its own) and is stored as soon as
it finishes (:class:`calibration.store.ReferenceStore`: ``reference_metrics.csv`` and
``reference_plans.json`` next to this file); plans already stored are skipped, so a rerun
continues where the last one stopped. The dose arrays go to ``--dose-dir`` (default
``../caldata`` beside the repository), one ``<plan_id>.npz`` per plan, not into the
repository.
"""

from __future__ import annotations

import os
import sys


def _thread_count(argv: list[str]) -> str | None:
    """The value of ``--threads`` in ``argv`` (read before NumPy is imported)."""
    for n, arg in enumerate(argv):
        if arg == "--threads" and n + 1 < len(argv):
            return argv[n + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


def _configure_environment(argv: list[str]) -> None:
    """Thread counts (``--threads``) and quiet progress bars, set before NumPy is imported."""
    threads = _thread_count(argv)
    if threads is not None:
        for var in (
            "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS",
            "NUMEXPR_NUM_THREADS",
            "NUMBA_NUM_THREADS",
        ):
            os.environ[var] = threads
    os.environ.setdefault("TQDM_DISABLE", "1")  # pyRadPlan's progress bars (one per ray)


if __name__ == "__main__":  # only when run, never when imported (e.g. by the tests)
    _configure_environment(sys.argv[1:])

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from scipy import ndimage  # noqa: E402

from calibration.objectives import (  # noqa: E402
    DoseLevel,
    ObjectiveWeights,
    OptStructure,
    course_structures,
    describe_structures,
    primary_level,
)
from calibration.plans import (  # noqa: E402
    PLAN_LIST_VERSION,
    PLANS,
    PROTOCOL,
    PlanSpec,
    build_plan_option,
    load_plan_atlas,
)
from calibration.scoring import (  # noqa: E402
    BOWEL_NAMES,
    MetricValue,
    ScoredTarget,
    ct_on_dose_grid,
    distance_metrics,
    dose_grid_for,
    mask_on_dose_grid,
    normalisation_factor,
    oar_metrics,
    present_oars,
    signed_distance_mm,
    target_metrics,
    union_structure,
)
from calibration.store import (  # noqa: E402
    JsonValue,
    MetricRecord,
    ReferenceStore,
    StoreError,
)
from rtplan.atlas import Atlas  # noqa: E402
from rtplan.dvh import compute_dvh, structure_on_dose_grid  # noqa: E402
from rtplan.grid import ImageGrid  # noqa: E402
from rtplan.plan import FieldOption, target_levels  # noqa: E402
from rtplan.structures import Structure  # noqa: E402

FloatArray = npt.NDArray[np.float64]

#: Where the store lives: this folder.
STORE_DIR = Path(__file__).resolve().parent
#: Default folder of the dose arrays: ``caldata`` beside the repository.
DEFAULT_DOSE_DIR = STORE_DIR.parent.parent / "caldata"
#: A course is acceptable when every level's D2% is at most this % of its prescription.
HOT_SPOT_LIMIT_PCT = 110.0
#: Normalisation: the primary level's PTV D95% = this % of its prescription ...
NORMALISATION_D95_PCT = 100.0
#: ... lowered as far as this where that brings every level's D2% within the limit.
LOWEST_D95_PCT = 98.0
#: Course label of the physical sum of the courses.
COMPOSITE = "composite"


# ---------------------------------------------------------------------------- progress
@dataclass
class _Progress:
    """Prints ``[plan n/N id] elapsed: step`` lines."""

    label: str
    start: float

    def __call__(self, step: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"[{self.label}] {elapsed:7.0f} s: {step}", flush=True)


# ---------------------------------------------------------------------------- scoring
def _structure_on(mask: npt.NDArray[np.bool_], grid: ImageGrid, name: str) -> Structure:
    return Structure(name, mask, grid, role="ptv")


def _rows(
    spec: PlanSpec, course: str, structure: str, values: Sequence[MetricValue]
) -> list[MetricRecord]:
    return [
        MetricRecord(
            plan_id=spec.plan_id,
            case=spec.case,
            option=spec.option,
            course=course,
            structure=structure,
            metric=v.metric,
            value=v.value,
            unit=v.unit,
        )
        for v in values
    ]


def _score_dose(
    spec: PlanSpec,
    course: str,
    dose_gy: FloatArray,
    dose_grid: ImageGrid,
    targets: Sequence[ScoredTarget],
    organs: Sequence[Structure],
    references: Sequence[tuple[str, Structure]],
) -> list[MetricRecord]:
    """Target and organ metrics, and organ dose by distance to each reference PTV."""
    rows: list[MetricRecord] = []
    for t in targets:
        dvh = compute_dvh(dose_gy, dose_grid, t.structure)
        rows += _rows(spec, course, t.structure.name, target_metrics(dvh, t.prescription_gy))
    distances = [
        (prefix, signed_distance_mm(mask_on_dose_grid(ptv, dose_grid), dose_grid))
        for prefix, ptv in references
    ]
    for organ in organs:
        sd = structure_on_dose_grid(organ, dose_grid)
        dvh = compute_dvh(dose_gy, dose_grid, sd)
        bowel = organ.name in BOWEL_NAMES or organ.name == "Colon_Sigmoid"
        rows += _rows(spec, course, organ.name, oar_metrics(dvh, bowel=bowel))
        for prefix, signed in distances:
            rows += _rows(
                spec, course, organ.name, distance_metrics(dose_gy, sd, signed, prefix=prefix)
            )
    return rows


def _composite_targets(option: FieldOption) -> list[ScoredTarget]:
    """Every PTV (at its summed prescription) and its CTV, in order, names unique."""
    ctvs: dict[str, Structure] = {}
    for t in option.targets:
        if t.ctv is not None:
            ctvs.setdefault(t.whole_ptv.name, t.ctv)
    out: list[ScoredTarget] = []
    for level in target_levels(option):
        out.append(ScoredTarget(level.ptv, level.total_gy))
        if level.ptv.name in ctvs:
            out.append(ScoredTarget(ctvs[level.ptv.name], level.total_gy))
    return out


def course_targets(option: FieldOption, index: int) -> list[ScoredTarget]:
    """The PTVs and CTVs of course ``index`` of ``option``, at that course's prescriptions."""
    out: list[ScoredTarget] = []
    for t in option.courses[index].targets:
        out.append(ScoredTarget(t.ptv, t.prescription_gy))
        if t.ctv is not None:
            out.append(ScoredTarget(t.ctv, t.prescription_gy))
    return out


def highest_ptv(targets: Sequence[ScoredTarget]) -> Structure:
    """The PTV of the highest prescription (several at that level: their union)."""
    ptvs = [t for t in targets if t.structure.role == "ptv"]
    top = max(t.prescription_gy for t in ptvs)
    at_top = [t.structure for t in ptvs if abs(t.prescription_gy - top) < 1e-6]
    if len(at_top) == 1:
        return at_top[0]
    return union_structure("+".join(s.name for s in at_top), at_top, role="ptv")


def _several_levels(targets: Sequence[ScoredTarget]) -> bool:
    """Whether the PTVs have more than one prescription (1e-6 Gy apart, as :func:`highest_ptv`)."""
    doses = sorted(t.prescription_gy for t in targets if t.structure.role == "ptv")
    return bool(doses) and doses[-1] - doses[0] >= 1e-6


def _ptv_union(targets: Sequence[ScoredTarget]) -> Structure:
    return union_structure(
        "PTV_union", [t.structure for t in targets if t.structure.role == "ptv"], role="ptv"
    )


def _distance_references(targets: Sequence[ScoredTarget]) -> list[tuple[str, Structure]]:
    """The PTVs the distance rows refer to: ``("dist", highest PTV)``, and more.

    When PTVs of lower levels lie beside the highest, also ``("dist_union", the union of
    every PTV)``: the surface a course's dose falls off from when it boosts part of its PTV
    (a simultaneous integrated boost).
    """
    refs = [("dist", highest_ptv(targets))]
    if _several_levels(targets):
        refs.append(("dist_union", _ptv_union(targets)))
    return refs


def fall_off_reference(targets: Sequence[ScoredTarget]) -> tuple[str, Structure, float]:
    """The distance rows a dose's fall-off is measured by: prefix, PTV and prescription (Gy).

    One level: ``"dist"``, its PTV (several PTVs: their union) and its prescription. Several
    levels (a boost inside a larger PTV): ``"dist_union"``, the union of every PTV and the
    lowest prescription: the dose falls off from the outer PTV, the boost lying inside it.
    """
    ptvs = [t for t in targets if t.structure.role == "ptv"]
    if _several_levels(targets):
        return "dist_union", _ptv_union(targets), min(t.prescription_gy for t in ptvs)
    return "dist", highest_ptv(targets), ptvs[0].prescription_gy


# ---------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class _Normalised:
    factor: float
    record: dict[str, JsonValue]
    acceptable: bool


def _hot_spot_regions(
    levels: Sequence[DoseLevel], dose_grid: ImageGrid, transition_mm: float
) -> list[tuple[DoseLevel, Structure]]:
    """Each level's region for the hot-spot check.

    The highest level's PTV; for a lower level, its voxels on the dose grid minus the
    higher levels grown by ``transition_mm`` (where the dose falls from the higher level).
    """
    out = [(levels[0], levels[0].ptv)]
    higher = levels[0].core
    for lv in levels[1:]:
        grown = ndimage.distance_transform_edt(~higher, sampling=dose_grid.spacing_mm)
        region = lv.core & (grown > transition_mm)
        out.append((lv, _structure_on(region, dose_grid, f"{lv.ptv.name}_own")))
        higher = higher | lv.core
    return out


def _hot_spot_checks(
    dose_gy: FloatArray, dose_grid: ImageGrid, regions: Sequence[tuple[DoseLevel, Structure]]
) -> list[tuple[DoseLevel, Structure, float, float]]:
    """Each level's region with its D2% and D95% (% of the level's prescription)."""
    out = []
    for lv, region in regions:
        dvh = compute_dvh(dose_gy, dose_grid, region)
        d2 = 100.0 * dvh.dose_at_volume_pct(2.0) / lv.prescription_gy
        d95 = 100.0 * dvh.dose_at_volume_pct(95.0) / lv.prescription_gy
        out.append((lv, region, d2, d95))
    return out


def _normalise(
    dose_gy: FloatArray,
    dose_grid: ImageGrid,
    levels: Sequence[DoseLevel],
    transition_mm: float,
) -> _Normalised:
    """Scale a course to its primary PTV's D95% = 100 % Rx, or down to 98 % for hot spots.

    When every level's D2% is within :data:`HOT_SPOT_LIMIT_PCT` at D95% = 100 %, that is
    the normalisation; otherwise the D95% is lowered (not below :data:`LOWEST_D95_PCT`)
    until the worst D2% is just within the limit. The course is acceptable when every
    level's D2% then is within the limit.
    """
    primary = primary_level(levels)
    sd = structure_on_dose_grid(primary.ptv, dose_grid)
    raw_d95 = compute_dvh(dose_gy, dose_grid, sd).dose_at_volume_pct(95.0)
    rx = primary.prescription_gy
    regions = _hot_spot_regions(levels, dose_grid, transition_mm)
    factor = normalisation_factor(dose_gy, dose_grid, sd, rx, d95_pct_of_rx=NORMALISATION_D95_PCT)
    worst = max(d2 for _, _, d2, _ in _hot_spot_checks(factor * dose_gy, dose_grid, regions))
    target = NORMALISATION_D95_PCT
    if worst > HOT_SPOT_LIMIT_PCT:
        # D2% scales with the dose; 0.1 % below the limit so the DVH's bins cannot tip it over
        wanted = NORMALISATION_D95_PCT * HOT_SPOT_LIMIT_PCT / worst * 0.999
        target = max(LOWEST_D95_PCT, wanted)
        factor = normalisation_factor(dose_gy, dose_grid, sd, rx, d95_pct_of_rx=target)
    checks: list[JsonValue] = []
    acceptable = True
    for lv, region, d2, d95 in _hot_spot_checks(factor * dose_gy, dose_grid, regions):
        ok = d2 <= HOT_SPOT_LIMIT_PCT
        acceptable = acceptable and ok
        checks.append(
            {
                "structure": region.name,
                "prescription_gy": lv.prescription_gy,
                "D2_pct_rx": round(d2, 3),
                "D95_pct_rx": round(d95, 3),
                "ok": ok,
            }
        )
    record: dict[str, JsonValue] = {
        "structure": primary.ptv.name,
        "ptvs": list(primary.ptv_names),
        "prescription_gy": rx,
        "metric": "D95%",
        "rule": (
            f"D95% = {NORMALISATION_D95_PCT:g} % Rx, lowered (not below {LOWEST_D95_PCT:g} %) "
            f"until every level's D2% <= {HOT_SPOT_LIMIT_PCT:g} % Rx"
        ),
        "target_pct_rx": round(target, 3),
        "raw_D95_pct_rx": round(100.0 * raw_d95 / rx, 3),
        "worst_D2_pct_rx_at_100": round(worst, 3),
        "factor": round(factor, 6),
        "hot_spot_limit_D2_pct_rx": HOT_SPOT_LIMIT_PCT,
        "hot_spot_checks": checks,
        "acceptable": acceptable,
    }
    return _Normalised(factor, record, acceptable)


# ---------------------------------------------------------------------------- one plan
#: Distributions whose versions a plan records (rescoring needs the last three only).
_PLAN_DISTRIBUTIONS = ("pyradplan", "pydantic", "simpleitk", "numpy", "scipy", "rtplan")
_SCORE_DISTRIBUTIONS = ("numpy", "scipy", "rtplan")


def _versions(distributions: Sequence[str] = _PLAN_DISTRIBUTIONS) -> dict[str, JsonValue]:
    """Versions of the distributions and the rtplan git revision."""
    out: dict[str, JsonValue] = {}
    for dist in distributions:
        out[dist] = importlib.metadata.version(dist)
    commit = subprocess.run(
        ["git", "-C", str(STORE_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["rtplan_git"] = commit.stdout.strip() if commit.returncode == 0 else "unknown"
    return out


def _grid_json(grid: ImageGrid) -> dict[str, JsonValue]:
    return {
        "shape_zyx": list(grid.shape),
        "spacing_mm_zyx": list(grid.spacing_mm),
        "origin_mm_xyz": list(grid.origin_mm),
    }


def _course_json(option: FieldOption, index: int) -> dict[str, JsonValue]:
    course = option.courses[index]
    targets: list[JsonValue] = [
        {
            "ptv": t.ptv.name,
            "ctv": t.ctv.name if t.ctv is not None else None,
            "prescription_gy": round(t.prescription_gy, 4),
            "ptv_volume_cc": round(t.ptv.volume_cc, 3),
        }
        for t in course.targets
    ]
    return {
        "name": course.name,
        "technique": course.technique,
        "fractions": course.fractions,
        "targets": targets,
    }


@dataclass(frozen=True, eq=False)
class _Setup:
    """An option's geometry, ready for the engine."""

    atlas: Atlas
    option: FieldOption
    dose_grid: ImageGrid
    organs: list[Structure]
    levels: list[list[DoseLevel]]
    structures: list[list[OptStructure]]
    beam_structures: list[OptStructure]


def _setup(spec: PlanSpec, weights: ObjectiveWeights, report: _Progress) -> _Setup:
    report("anatomy and option")
    atlas = load_plan_atlas(spec)
    option = build_plan_option(spec, atlas)
    dose_grid = dose_grid_for(atlas)
    organs = present_oars(atlas.structures)
    report(f"masks on the dose grid {dose_grid.shape}")
    masks = {o.name: mask_on_dose_grid(o, dose_grid) for o in organs}
    levels, structures = [], []
    for course in option.courses:
        lv, st = course_structures(course, masks, dose_grid, weights=weights)
        levels.append(lv)
        structures.append(st)
    targets = np.zeros(dose_grid.shape, bool)
    for per_course in levels:
        for level in per_course:
            targets |= level.cover(weights.cover_occupancy)
    beam_structures = [
        OptStructure("Targets", "TARGET", targets, (), "every course's target cover"),
        OptStructure("Body", "EXTERNAL", masks["Body"], (), "Body"),
    ]
    return _Setup(atlas, option, dose_grid, organs, levels, structures, beam_structures)


def _score_plan(
    spec: PlanSpec, setup: _Setup, course_doses: Sequence[FloatArray]
) -> tuple[list[MetricRecord], dict[str, JsonValue]]:
    """The metric rows of the composite (and of each course of a multi-course option).

    Returns the rows and the PTVs the distance metrics of the composite refer to.
    """
    option, grid = setup.option, setup.dose_grid
    all_targets = _composite_targets(option)
    composite_refs = _distance_references(all_targets)
    composite = np.sum(course_doses, axis=0)
    rows = _score_dose(spec, COMPOSITE, composite, grid, all_targets, setup.organs, composite_refs)
    if len(option.courses) > 1:
        for n, course in enumerate(option.courses):
            targets = course_targets(option, n)
            rows += _score_dose(
                spec,
                course.name,
                course_doses[n],
                grid,
                targets,
                setup.organs,
                _distance_references(targets),
            )
    references: dict[str, JsonValue] = {prefix: ptv.name for prefix, ptv in composite_refs}
    return rows, references


def plan_weights(spec: PlanSpec) -> ObjectiveWeights:
    """The common objective set with the plan's own changes (``spec.weight_changes``).

    Raises
    ------
    TypeError
        When a change names no field of :class:`ObjectiveWeights`.
    """
    changes: dict[str, Any] = dict(spec.weight_changes)  # field names from the plan list
    return dataclasses.replace(ObjectiveWeights(), **changes)


def run_plan(spec: PlanSpec, store: ReferenceStore, dose_dir: Path, label: str) -> None:
    """Plan one option, score it and store it (the body of a plan's process)."""
    from calibration import engine  # pyRadPlan is imported here only, where a plan is made

    start = time.perf_counter()
    report = _Progress(label, start)
    weights = plan_weights(spec)
    beams, cutoffs, settings = engine.BeamSetup(), engine.Cutoffs(), engine.OptimiserSettings()
    setup = _setup(spec, weights, report)
    planned = engine.plan_courses(
        ct_on_dose_grid(setup.atlas, setup.dose_grid),
        setup.dose_grid,
        setup.beam_structures,
        setup.structures,
        beams=beams,
        cutoffs=cutoffs,
        settings=settings,
        report=report,
    )
    report("normalisation and metrics")
    course_doses: list[FloatArray] = []
    factors: list[float] = []
    courses_json: list[JsonValue] = []
    acceptable = True
    for n, (fluence, levels) in enumerate(zip(planned.courses, setup.levels)):
        norm = _normalise(fluence.dose_final_gy, setup.dose_grid, levels, weights.transition_mm)
        opt_norm = _normalise(fluence.dose_opt_gy, setup.dose_grid, levels, weights.transition_mm)
        course_doses.append(norm.factor * fluence.dose_final_gy)
        factors.append(norm.factor)
        acceptable = acceptable and norm.acceptable
        info = _course_json(setup.option, n)
        info["normalisation"] = norm.record
        info["at_optimisation_cutoff"] = opt_norm.record
        info["optimiser"] = {
            "iterations": fluence.iterations,
            "message": fluence.message,
            "objective": fluence.objective,
            "bixels_used": fluence.bixels_used,
        }
        info["objectives"] = describe_structures(setup.structures[n])
        courses_json.append(info)
    rows, references = _score_plan(spec, setup, course_doses)
    option, grid = setup.option, setup.dose_grid
    dose_dir.mkdir(parents=True, exist_ok=True)
    dose_path = dose_dir / f"{spec.plan_id}.npz"
    _save_doses(dose_path, option, course_doses, grid, factors)
    runtime = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    record: dict[str, JsonValue] = {
        "plan_list_version": PLAN_LIST_VERSION,
        "case": spec.case,
        "atlas_kwargs": dict(spec.atlas_kwargs),
        "atlas_parameters": _jsonable(setup.atlas.parameters),
        "lesion_case": spec.lesion_case,
        "option": spec.option,
        "protocol": PROTOCOL,
        "courses": courses_json,
        "beams": beams.as_json(),
        "isocenter_mm_xyz": [round(v, 3) for v in planned.isocenter_mm],
        "bixels": planned.bixels,
        "dij_nonzeros": planned.dij_nonzeros,
        "cutoffs_mm": {
            "optimisation": cutoffs.optimisation_mm,
            "final": cutoffs.final_mm,
            "final_how": "forward dose of the bixels of weight > 0, per course",
        },
        "optimiser": {
            "solver": settings.solver,
            "method": "L-BFGS-B",
            "max_iter": settings.max_iter,
        },
        "objective_weights": weights.as_json(),
        "dose_grid": _grid_json(grid),
        "distance_reference_ptvs": references,
        "acceptable": acceptable,
        "runtime_s": round(runtime, 1),
        "step_seconds": {k: round(v, 1) for k, v in planned.step_seconds.items()},
        "peak_rss_gb": round(peak_gb, 2),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dose_file": str(dose_path),
    }
    store.add_plan(spec.plan_id, record, rows)
    report(
        f"stored: {len(rows)} metrics, acceptable {acceptable}, {runtime:.0f} s, "
        f"peak {peak_gb:.2f} GB"
    )


def _object(value: JsonValue, what: str) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise StoreError(f"{what} is not a JSON object")
    return value


def recorded_weights(value: JsonValue) -> ObjectiveWeights:
    """The objective set a stored plan recorded (its record's ``objective_weights``).

    Raises
    ------
    calibration.store.StoreError
        When the value is not an object of every weight.
    """
    try:
        return ObjectiveWeights.from_json(_object(value, "objective_weights"))
    except ValueError as err:
        raise StoreError(f"objective_weights: {err}") from err


def rescore_plan(spec: PlanSpec, store: ReferenceStore, label: str) -> None:
    """Normalise and score a stored plan again from its dose file; no pyRadPlan needed.

    The stored (normalised) course doses are scaled back by their recorded factors and
    go through :func:`_normalise` and the scoring of the current code; the record keeps
    everything else of the planning run and says when it was rescored.

    Raises
    ------
    StoreError
        When the plan is not stored or its record is not as written by :func:`run_plan`.
    FileNotFoundError
        When its dose file is missing.
    """
    report = _Progress(label, time.perf_counter())
    plans = store.plans()
    if spec.plan_id not in plans:
        raise StoreError(f"plan {spec.plan_id} is not stored")
    record = dict(_object(plans[spec.plan_id], spec.plan_id))
    dose_path = Path(str(record["dose_file"]))
    with np.load(dose_path) as stored:
        doses = stored["doses_gy"].astype(np.float64)
        # the factors the doses were scaled with travel with them; dose files written
        # before they did (the first plans) match their own record's factors
        in_file = stored["normalisation_factors"] if "normalisation_factors" in stored else None
    setup = _setup(spec, recorded_weights(record["objective_weights"]), report)
    courses = record["courses"]
    if not isinstance(courses, list) or len(courses) != len(setup.option.courses):
        raise StoreError(f"{spec.plan_id}: courses do not match the option's")
    if doses.shape[1:] != setup.dose_grid.shape:
        raise StoreError(f"{dose_path}: doses of shape {doses.shape[1:]}, not the dose grid's")
    transition_mm = recorded_weights(record["objective_weights"]).transition_mm
    course_doses: list[FloatArray] = []
    acceptable = True
    new_courses: list[JsonValue] = []
    factors: list[float] = []
    for n, (info_value, levels) in enumerate(zip(courses, setup.levels)):
        info = dict(_object(info_value, f"{spec.plan_id} course {n}"))
        factor = (
            float(in_file[n])
            if in_file is not None
            else _object(info["normalisation"], "normalisation")["factor"]
        )
        if not isinstance(factor, (int, float)) or not factor > 0:
            raise StoreError(f"{spec.plan_id} course {n}: normalisation factor {factor!r}")
        raw = doses[n] / factor
        norm = _normalise(raw, setup.dose_grid, levels, transition_mm)
        course_doses.append(norm.factor * raw)
        factors.append(norm.factor)
        acceptable = acceptable and norm.acceptable
        info["normalisation"] = norm.record
        new_courses.append(info)
    report("metrics")
    rows, references = _score_plan(spec, setup, course_doses)
    _save_doses(dose_path, setup.option, course_doses, setup.dose_grid, factors)
    record["courses"] = new_courses
    record["acceptable"] = acceptable
    record["distance_reference_ptvs"] = references
    record["rescored"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(_SCORE_DISTRIBUTIONS),
        "what": "normalisation and metrics recomputed from the stored doses",
    }
    store.add_plan(spec.plan_id, record, rows)
    report(f"rescored: {len(rows)} metrics, acceptable {acceptable}")


def _jsonable(value: object) -> JsonValue:
    """An atlas parameter value (numbers, strings, None, lists and dicts of them) as JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    raise TypeError(f"atlas parameter of type {type(value).__name__} is not JSON")


def _save_doses(
    path: Path,
    option: FieldOption,
    course_doses: Sequence[FloatArray],
    grid: ImageGrid,
    factors: Sequence[float],
) -> None:
    """Write the normalised course doses, their factors and the grid (atomically).

    Doses float32 in Gy, indexed [course, z, y, x].
    """
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        course_names=np.array([c.name for c in option.courses]),
        course_fractions=np.array([c.fractions for c in option.courses]),
        doses_gy=np.stack([d.astype(np.float32) for d in course_doses]),
        normalisation_factors=np.array(factors, dtype=np.float64),
        shape_zyx=np.array(grid.shape),
        spacing_mm_zyx=np.array(grid.spacing_mm),
        origin_mm_xyz=np.array(grid.origin_mm),
    )
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- CLI
def _dry_run(spec: PlanSpec, label: str) -> None:
    report = _Progress(label, time.perf_counter())
    setup = _setup(spec, plan_weights(spec), report)
    for n, (course, levels) in enumerate(zip(setup.option.courses, setup.levels)):
        rx = ", ".join(f"{lv.prescription_gy:g} Gy ({'+'.join(lv.ptv_names)})" for lv in levels)
        report(f"course {n + 1} {course.name}: {course.fractions} fx, levels {rx}")
        for s in setup.structures[n]:
            terms = ", ".join(f"{o.kind} {o.dose_gy:.1f} Gy x{o.priority:g}" for o in s.objectives)
            report(f"    {s.name:<22} {int(s.mask.sum()):>8} voxels: {terms}")


def _child(spec: PlanSpec, store_dir: str, dose_dir: str, label: str) -> None:
    run_plan(spec, ReferenceStore(store_dir), Path(dose_dir), label)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m calibration.reference_plans",
        description="Plan rtplan's options with pyRadPlan and store reference metrics.",
    )
    parser.add_argument("--list", action="store_true", help="list the plans and whether stored")
    parser.add_argument("--only", nargs="+", metavar="PLAN_ID", help="plan only these")
    parser.add_argument(
        "--threads", type=int, help="threads of OpenMP/BLAS (set before NumPy is imported)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="build anatomy, option and objectives; no plan"
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="normalise and score stored plans again from their dose files (no pyRadPlan)",
    )
    parser.add_argument("--store", type=Path, default=STORE_DIR, help="folder of the store")
    parser.add_argument(
        "--dose-dir", type=Path, default=DEFAULT_DOSE_DIR, help="folder of the dose arrays"
    )
    return parser.parse_args(argv)


def selected_plans(only: Sequence[str] | None = None) -> list[PlanSpec]:
    """The plans of :data:`calibration.plans.PLANS` to consider, in their order.

    Raises
    ------
    KeyError
        When ``only`` names a plan that does not exist.
    """
    if not only:
        return list(PLANS)
    known = {s.plan_id for s in PLANS}
    unknown = [p for p in only if p not in known]
    if unknown:
        raise KeyError(f"unknown plan ids {unknown}; see --list")
    return [s for s in PLANS if s.plan_id in only]


def pending_plans(store: ReferenceStore, only: Sequence[str] | None = None) -> list[PlanSpec]:
    """The selected plans the store does not hold yet (a rerun continues with these)."""
    stored = store.stored_ids()
    return [s for s in selected_plans(only) if s.plan_id not in stored]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (1 when a plan failed, 2 on bad ids)."""
    args = _parse(argv)
    store = ReferenceStore(args.store)
    stored = store.stored_ids()
    try:
        wanted = selected_plans(args.only)
    except KeyError as err:
        print(err.args[0], file=sys.stderr)
        return 2
    if args.list:
        for spec in wanted:
            mark = "stored" if spec.plan_id in stored else "to do"
            what = f"{spec.option:<22} {spec.lesion_case:<7} {dict(spec.atlas_kwargs)}"
            print(f"{spec.plan_id:<22} {mark:<7} {what}")
        return 0
    if args.rescore:
        done = [s for s in wanted if s.plan_id in stored]
        for n, spec in enumerate(done, start=1):
            rescore_plan(spec, store, f"rescore {n}/{len(done)} {spec.plan_id}")
        return 0
    pending = pending_plans(store, args.only)
    print(
        f"{len(wanted) - len(pending)} of {len(wanted)} plans stored; {len(pending)} to do",
        flush=True,
    )
    failed = []
    context = multiprocessing.get_context("fork")
    for n, spec in enumerate(pending, start=1):
        label = f"plan {n}/{len(pending)} {spec.plan_id}"
        if args.dry_run:
            _dry_run(spec, label)
            continue
        proc = context.Process(
            target=_child, args=(spec, str(args.store), str(args.dose_dir), label)
        )
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"[{label}] FAILED (exit code {proc.exitcode})", flush=True)
            failed.append(spec.plan_id)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
