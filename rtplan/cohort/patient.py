"""One patient of a cohort: anatomy, lesions, stage, options, dose estimate, metric rows.

:func:`run_patient` is the task a cohort run sends to a Dask worker. It loads the
patient's anatomy and lesions, stages them, builds and compares the suggested options
under each of the patient's protocols, and returns a :class:`PatientOutcome`: one
patient row (stage, options, timings, error) and the metric rows. The CT, masks and
dose arrays stay in the worker. A failing step does not raise: the outcome records the
step and a one-line error, so the cohort goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtplan.atlas import Atlas, atlas_from_dicom, atlas_from_label_maps, load_atlas
from rtplan.cohort.lesion_spec import place_lesions
from rtplan.cohort.manifest import PatientRow, pet_method_kwargs
from rtplan.cohort.results import Cell, PatientOutcome, empty_metrics, rtplan_version
from rtplan.compare import Comparison, compare_options
from rtplan.dicom_io import read_pet_suv, read_rtstruct
from rtplan.errors import InvalidInputError, RtplanError, RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.lesions import Lesions, lesions_from_mask, lesions_from_pet, lesions_from_structures
from rtplan.protocol import Protocol, load_protocol
from rtplan.staging import stage as stage_lesions
from rtplan.volumes import build_options, suggest_options

__all__ = ["STEPS", "RunSettings", "failed_outcome", "load_anatomy", "load_lesions", "run_patient"]

#: The timed steps of a patient, in order.
STEPS: tuple[str, ...] = ("atlas", "lesions", "stage", "options", "dose", "files")

# Organs with physiological PSMA-ligand uptake or excretion, never segmented as lesions.
_PHYSIOLOGICAL = ("Bladder", "Kidney_L", "Kidney_R", "Bowel", "Bowel_Small", "Colon")
_REFERENCE_STRUCTURES = {"liver": "Liver", "blood_pool": "A_Aorta"}


@dataclass(frozen=True)
class RunSettings:
    """Settings shared by every patient of a run (part of each patient's input hash).

    Parameters
    ----------
    atlas_spacing_mm : (z, y, x) mm or None
        Grid of ``atlas:`` anatomies; ``None`` = the atlas's own default grid.
    dose_spacing_mm : float
        Cubic dose-grid voxel size, mm.
    write_patient_files : bool
        Write each patient's RTSTRUCT, RTDOSE, CT (atlas anatomies) and report.
    files_dir : str or None
        Absolute folder for the patient files (``<out>/files``); the workers write
        there, so on a multi-machine cluster it must be on a shared file system.
    """

    atlas_spacing_mm: tuple[float, float, float] | None = None
    dose_spacing_mm: float = 2.5
    write_patient_files: bool = False
    files_dir: str | None = None

    def fingerprint(self) -> dict[str, Any]:  # Any: JSON values
        """The settings that change a patient's results (for the input hash)."""
        return {
            "atlas_spacing_mm": None
            if self.atlas_spacing_mm is None
            else [float(v) for v in self.atlas_spacing_mm],
            "dose_spacing_mm": float(self.dose_spacing_mm),
            "write_patient_files": bool(self.write_patient_files),
        }


class _Failed(Exception):
    """A step failed; carries the step name and the one-line message."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


def one_line(exc: BaseException) -> str:
    """An exception as one line; the type is named unless it is one of rtplan's errors."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if isinstance(exc, RtplanError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Timer:
    """Times the steps of one patient and turns a failing step into :class:`_Failed`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STEPS, 0.0)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except _Failed:
            raise
        except Exception as exc:  # recorded in the outcome, the cohort goes on
            raise _Failed(name, one_line(exc)) from exc
        finally:
            self.seconds[name] += time.perf_counter() - t0


# ============================================================================ inputs
def load_anatomy(row: PatientRow, settings: RunSettings) -> Atlas:
    """The patient's anatomy (an :class:`~rtplan.Atlas`) from its manifest row."""
    a = row.anatomy
    if a.kind == "atlas":
        return load_atlas(
            a.path or a.name,
            spacing_mm=settings.atlas_spacing_mm,
            scale=1.0 if a.scale is None else a.scale,
            bladder_filling=1.0 if a.bladder_filling is None else a.bladder_filling,
            rectal_filling=1.0 if a.rectal_filling is None else a.rectal_filling,
            seed=a.seed,
        )
    assert a.path is not None  # validated: dicom and labels anatomies have a folder
    if a.kind == "labels":
        return atlas_from_label_maps(a.path)
    return atlas_from_dicom(a.path)


def _mask_lesions(path: str, atlas: Atlas) -> Lesions:
    if path.lower().endswith(".npy"):
        data = np.load(path, allow_pickle=False)
        if data.shape != atlas.grid.shape:
            raise InvalidInputError(
                f"mask {path} has shape {data.shape}; a .npy mask must be on the anatomy grid "
                f"{atlas.grid.shape} (use NIfTI for another grid)"
            )
        return lesions_from_mask(data, atlas.grid)
    try:
        import nibabel
    except ImportError:  # pragma: no cover - nibabel is installed with rtplan[nifti]
        raise InvalidInputError(
            "reading NIfTI lesion masks needs nibabel: pip install 'rtplan[nifti]'"
        ) from None
    img: Any = nibabel.load(path)  # Any: nibabel image classes are untyped
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidInputError(f"mask {path}: expected a 3-D image, got shape {data.shape}")
    grid = ImageGrid.from_affine(img.affine, data.shape, convention="RAS")
    labels = np.ascontiguousarray(ImageGrid.array_from_ijk(data))
    if grid.equals(atlas.grid):
        return lesions_from_mask(labels, atlas.grid)
    return lesions_from_mask(labels, grid, target_grid=atlas.grid)


def _rtstruct_lesions(path: str, rois: tuple[str, ...], atlas: Atlas) -> Lesions:
    structures = read_rtstruct(path, atlas.grid, map_names=False)
    if rois:
        missing = [r for r in rois if r not in structures]
        if missing:
            raise InvalidInputError(
                f"ROIs {', '.join(missing)} not in {Path(path).name}; it has "
                f"{', '.join(structures.names)}"
            )
        return lesions_from_structures(structures, names=list(rois))
    gtvs = structures.by_role("gtv")
    if not gtvs:
        raise InvalidInputError(
            f"{Path(path).name} has no GTV-type ROI; name the lesion ROIs (rtstruct:FILE#A,B)"
        )
    return lesions_from_structures(gtvs)


def _pet_lesions(row: PatientRow, atlas: Atlas) -> Lesions:
    assert row.pet is not None  # validated: pet: lesions need the pet column
    suv, _ = read_pet_suv(row.pet, atlas.grid)
    kwargs = pet_method_kwargs(row.lesions.pet_method)
    ss = atlas.structures
    ref = kwargs.get("reference")
    if isinstance(ref, str) and "references" not in kwargs:
        organ = _REFERENCE_STRUCTURES[ref]
        if organ not in ss:
            raise InvalidInputError(
                f"pet:{row.lesions.pet_method}: the anatomy has no {organ} to measure the "
                "reference SUVmean in; give it as a number (e.g. liver:5.0)"
            )
        kwargs["references"] = {ref: ss[organ].mask}
    exclude = np.zeros(atlas.grid.shape, bool)
    for name in _PHYSIOLOGICAL:
        if name in ss:
            exclude |= ss[name].mask
    body = ss["Body"].mask if "Body" in ss else None
    return lesions_from_pet(
        suv,
        atlas.grid,
        exclude=exclude,
        search_region=body,
        **kwargs,  # type: ignore[arg-type]  # validated method keywords of lesions_from_pet
    )


def load_lesions(row: PatientRow, atlas: Atlas) -> Lesions:
    """The patient's lesions on ``atlas.grid`` from its manifest row."""
    src = row.lesions
    if src.kind == "none":
        return Lesions([], grid=atlas.grid)
    if src.kind == "spec":
        return place_lesions(src.items, atlas)
    if src.kind == "mask":
        assert src.path is not None  # validated
        return _mask_lesions(src.path, atlas)
    if src.kind == "rtstruct":
        assert src.path is not None  # validated
        return _rtstruct_lesions(src.path, src.rois, atlas)
    if src.kind == "roi":
        return lesions_from_structures(atlas.structures, names=list(src.rois))
    return _pet_lesions(row, atlas)


# ============================================================================ outputs
def _metric_rows(
    comparison: Comparison, pid: str, protocol: str, out: dict[str, list[Cell]]
) -> None:
    """Append the comparison table in long form (skipping metrics an option lacks)."""
    adt = {r.option.name: bool(r.option.adt) for r in comparison.results}
    table = comparison.table
    for r in table.rows:
        for option in table.options:
            value = r.values.get(option)
            if value is None:
                continue
            headroom = r.headroom.get(option)
            out["patient_id"].append(pid)
            out["protocol"].append(protocol)
            out["option"].append(option)
            out["adt"].append(adt.get(option, False))
            out["group"].append(r.group)
            out["structure"].append(r.structure)
            out["metric"].append(r.metric)
            out["unit"].append(r.unit)
            out["value"].append(float(value))
            out["limit"].append(r.limit or "")
            out["status"].append(r.status.get(option) or "")
            out["headroom"].append(None if headroom is None else float(headroom))


def _write_files(
    folder: Path, atlas: Atlas, row: PatientRow, comparisons: list[tuple[str, Comparison]]
) -> None:
    """Write the patient's files into ``folder`` (built beside it, renamed at the end)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if row.anatomy.kind == "dicom" and row.anatomy.path is not None:
            ct = Path(row.anatomy.path)
        else:
            ct = atlas.export_ct(tmp / "ct", patient_id=row.patient_id[:64])
        for name, comparison in comparisons:
            sub = tmp / _safe(name) if len(comparisons) > 1 else tmp
            sub.mkdir(exist_ok=True)
            comparison.write_rtstruct(sub, ct_folder=ct)
            comparison.write_rtdose(sub, ct_folder=ct)
            comparison.write_metrics(sub)
            comparison.write_report(sub / "report.html")
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe(name: str) -> str:
    stem = Path(name).stem if ("/" in name or "\\" in name) else name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) or "protocol"


def _protocol_label(name: str, protocol: Protocol) -> str:
    """The protocol's name for the tables: the shipped name, or the file's protocol name."""
    if "/" in name or "\\" in name:
        return str(protocol.name)
    return name


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (NaN where unknown)."""
    if sys.platform == "win32":  # pragma: no cover - no resource module
        return float("nan")
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0**2


def _worker_name() -> str:
    """The Dask worker running this task, or ``"local"`` outside a worker."""
    if "distributed" not in sys.modules:
        return "local"
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return "local"


def _base_patient_row(row: PatientRow, input_hash: str) -> dict[str, Cell]:
    return {
        "patient_id": row.patient_id,
        "status": "ok",
        "error": "",
        "failed_step": "",
        "stage": "",
        "stage_detailed": "",
        "ucla_group": "",
        "n_lesions": None,
        "lesion_sites": "",
        "protocols": ";".join(row.protocols),
        "options": "",
        "anatomy": row.anatomy.text,
        "lesions": row.lesions.text,
        "psa_ng_ml": row.psa_ng_ml,
        "tracer": row.tracer or "",
        "extra": json.dumps(dict(row.extra), sort_keys=True) if row.extra else "",
        "warnings": "",
        "input_hash": input_hash,
        "rtplan_version": rtplan_version(),
        "worker": _worker_name(),
    }


def failed_outcome(row: PatientRow, input_hash: str, step: str, error: str) -> PatientOutcome:
    """The outcome of a patient whose task never returned (worker lost, cancelled...)."""
    patient = _base_patient_row(row, input_hash)
    patient.update(status="failed", error=error, failed_step=step, worker="")
    for s in STEPS:
        patient[f"seconds_{s}"] = None
    patient.update(seconds_total=None, cpu_seconds=None, peak_rss_mb=None)
    return PatientOutcome(patient, empty_metrics())


def run_patient(row: PatientRow, settings: RunSettings, input_hash: str = "") -> PatientOutcome:
    """Plan one patient: every suggested option under each of its protocols.

    Parameters
    ----------
    row : PatientRow
        The validated manifest row.
    settings : RunSettings
        Grids and outputs of the run.
    input_hash : str
        The patient's content hash (stored with the results for ``resume``).

    Returns
    -------
    PatientOutcome
        Status ``"ok"`` with the metric rows, or ``"failed"`` with the step that failed
        and its one-line error (and whatever was known by then, e.g. the stage).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    patient = _base_patient_row(row, input_hash)
    metrics = empty_metrics()
    timer = _Timer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _plan(row, settings, timer, patient, metrics)
        except _Failed as failed:
            patient.update(status="failed", error=failed.message, failed_step=failed.step)
            metrics = empty_metrics()
    messages = [str(w.message) for w in caught if issubclass(w.category, RtplanWarning)]
    patient["warnings"] = "; ".join(dict.fromkeys(" ".join(m.split()) for m in messages))
    for s in STEPS:
        patient[f"seconds_{s}"] = timer.seconds[s]
    patient["seconds_total"] = time.perf_counter() - t0
    patient["cpu_seconds"] = time.process_time() - c0
    patient["peak_rss_mb"] = _peak_rss_mb()
    return PatientOutcome(patient, metrics)


def _plan(
    row: PatientRow,
    settings: RunSettings,
    timer: _Timer,
    patient: dict[str, Cell],
    metrics: dict[str, list[Cell]],
) -> None:
    """The steps of :func:`run_patient`; fills ``patient`` and ``metrics`` as it goes."""
    with timer.step("atlas"):
        atlas = load_anatomy(row, settings)
    with timer.step("lesions"):
        lesions = load_lesions(row, atlas)
    patient["n_lesions"] = len(lesions)
    with timer.step("stage"):
        stage = stage_lesions(lesions, atlas)
    patient.update(
        stage=stage.string,
        stage_detailed=stage.detailed,
        ucla_group=stage.ucla_group,
        lesion_sites=";".join(f"{les.category}:{les.region_code}" for les in stage.lesions),
    )
    comparisons: list[tuple[str, Comparison]] = []
    options_seen: list[str] = []
    for name in row.protocols:
        with timer.step("options"):
            protocol = load_protocol(name)
            options = build_options(suggest_options(stage, protocol), atlas, lesions, protocol)
        label = _protocol_label(name, protocol)
        with timer.step("dose"):
            comparison = compare_options(
                atlas,
                lesions,
                options,
                protocol=protocol,
                stage=stage,
                case=row.patient_id,
                dose_spacing_mm=settings.dose_spacing_mm,
            )
        _metric_rows(comparison, row.patient_id, label, metrics)
        comparisons.append((label, comparison))
        options_seen += [o for o in comparison.options if o not in options_seen]
    patient["protocols"] = ";".join(label for label, _ in comparisons)
    patient["options"] = ";".join(options_seen)
    if settings.write_patient_files:
        if settings.files_dir is None:
            raise _Failed("files", "write_patient_files needs a files folder")
        with timer.step("files"):
            _write_files(Path(settings.files_dir) / row.patient_id, atlas, row, comparisons)
