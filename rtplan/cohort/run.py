"""Run a cohort on Dask: one task per patient, results stored as patients finish.

:func:`run_cohort` validates the manifest, works out which patients need running
(with ``resume``, those whose content hash is not stored with status ok), and sends one
:func:`~rtplan.cohort.patient.run_patient` task per patient to a Dask cluster: an
embedded :class:`distributed.LocalCluster` sized to the machine (worker processes with
one thread each), a scheduler address, or a :class:`distributed.Client` you made.
Tasks return small tables (a patient row and its metric rows); the CT, masks and dose
arrays stay in the workers. Each outcome is written as it arrives
(:class:`~rtplan.cohort.results.ResultsStore`), so a killed run loses only the patients
in flight. A patient that fails is stored with its one-line error and the cohort goes
on.

The content hash of a patient is the SHA-256 of its manifest row (paths made absolute),
the run settings that change results (atlas grid, dose grid, patient files), the rtplan
version and a digest of its code and shipped data (:func:`~rtplan.cohort.results.code_digest`:
a changed model, calibration or check between two runs is not resumed over), the text of
its protocols and the bytes of every file it refers to (DICOM and
label-map folders, mask, RTSTRUCT, PET folder, protocol files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rtplan.cohort.manifest import Manifest, PatientRow, read_manifest
from rtplan.cohort.patient import RunSettings, failed_outcome, one_line, run_patient
from rtplan.cohort.results import (
    PatientOutcome,
    ResultsStore,
    atomic_write_text,
    code_digest,
    read_run_info,
    rtplan_version,
)
from rtplan.errors import InvalidInputError, OutputExistsError
from rtplan.protocol import list_protocols, protocol_text

__all__ = ["CohortSummary", "ProgressArg", "input_hash", "run_cohort"]

#: What ``progress`` may be: None (shown on a terminal), a bool, or a callable.
ProgressArg = bool | Callable[[str], object] | None

_CHUNK = 1 << 20
_CONNECT_TIMEOUT = "30s"
_ENVIRON_KEY = "distributed.nanny.pre-spawn-environ"


@dataclass
class CohortSummary:
    """What a cohort run did.

    Attributes
    ----------
    out : Path
        The results folder.
    n_patients : int
        Patients in the manifest.
    n_run : int
        Patients computed in this run.
    n_ok, n_failed : int
        Of those, how many succeeded and failed.
    n_skipped : int
        Patients skipped by ``resume`` (stored with the same content hash).
    failed : list of (str, str)
        Patient id and one-line error of each failure.
    seconds : float
        Wall time of the run, s.
    workers : int
        Dask workers used (0 when nothing ran).
    report : Path or None
        The cohort report, when written.
    """

    out: Path
    n_patients: int = 0
    n_run: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    report: Path | None = None

    @property
    def all_ok(self) -> bool:
        """True when no patient of this run failed."""
        return self.n_failed == 0

    def as_dict(self) -> dict[str, Any]:  # Any: JSON values
        """The counts as a JSON-ready dict."""
        return {
            "n_patients": self.n_patients,
            "n_run": self.n_run,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "n_skipped": self.n_skipped,
            "failed": [list(f) for f in self.failed],
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
        }

    def text(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"cohort of {self.n_patients} patients: {self.n_run} run ({self.n_ok} ok, "
            f"{self.n_failed} failed), {self.n_skipped} skipped (unchanged) in "
            f"{self.seconds:.1f} s on {self.workers} worker(s); results in {self.out}"
        ]
        lines += [f"  failed: {pid}: {error}" for pid, error in self.failed]
        if self.report is not None:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


# ============================================================================ hashing
def _hash_file(path: Path, update: Callable[[bytes], object]) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            update(chunk)


def _path_digest(path: str, cache: dict[str, str]) -> str:
    """SHA-256 of a file, or of a folder's relative file names and contents."""
    if path in cache:
        return cache[path]
    h = hashlib.sha256()
    p = Path(path)
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            _hash_file(f, h.update)
    elif p.is_file():
        _hash_file(p, h.update)
    else:
        h.update(b"missing")
    cache[path] = h.hexdigest()
    return cache[path]


def input_hash(row: PatientRow, settings: RunSettings, cache: dict[str, str] | None = None) -> str:
    """The content hash of one patient's inputs (see the module notes).

    Parameters
    ----------
    row : PatientRow
        The validated manifest row.
    settings : RunSettings
        The run settings.
    cache : dict, optional
        File digests already computed (shared between patients of a run).

    Returns
    -------
    str
        Hexadecimal SHA-256.
    """
    files = cache if cache is not None else {}
    record = row.record()
    paths = [row.anatomy.path, row.lesions.path, row.pet]
    protocols = {}
    for name in row.protocols:
        if name in list_protocols():
            protocols[name] = hashlib.sha256(protocol_text(name).encode()).hexdigest()
        else:
            paths.append(name)
    payload = {
        "row": record,
        "settings": settings.fingerprint(),
        "rtplan": rtplan_version(),
        "rtplan_code": code_digest(),
        "protocols": protocols,
        "files": {p: _path_digest(p, files) for p in paths if p is not None},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ============================================================================ helpers
def _as_progress(progress: ProgressArg) -> Callable[[str], object]:
    if callable(progress):
        return progress
    show = sys.stderr.isatty() if progress is None else bool(progress)

    def emit(message: str) -> None:
        if show:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    return emit


def _prepare_out(out: Path, resume: bool) -> None:
    """Check the results folder: new, empty, or (with resume) an earlier run's."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    is_results = (out / "run.json").is_file() or (out / "patients").is_dir()
    if not is_results:
        raise OutputExistsError(
            f"{out} is not empty and holds no cohort results; choose an empty or new folder"
        )
    if not resume:
        raise OutputExistsError(
            f"{out} holds the results of an earlier cohort run; continue it with resume "
            "(--resume) or choose another folder"
        )


def _spacing(value: Sequence[float] | float | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        vals = [float(value)] * 3
    else:
        vals = [float(v) for v in value]
    if len(vals) != 3 or any(not 0.2 <= v <= 20.0 for v in vals):
        raise InvalidInputError(
            f"atlas_spacing_mm must be one or three numbers of 0.2-20 mm, got {value!r}"
        )
    return (vals[0], vals[1], vals[2])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass
class _Cluster:
    """The Dask client of a run, and whatever this run started (closed at the end)."""

    client: Any  # Any: distributed.Client (distributed's types are not used by mypy here)
    owned_client: bool = False
    cluster: Any = None  # Any: distributed.LocalCluster

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        if self.owned_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _worker_environ() -> dict[str, Any]:  # Any: environment values as dask configures them
    """Dask's pre-spawn environment of worker processes, without ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets it to 64 KiB to hand memory back to the system sooner; setting it turns
    off glibc's dynamic mmap threshold, so every large array rtplan makes (full-grid
    masks and dose grids) is a fresh ``mmap`` with page faults. Measured on rtplan
    patients: about 30 % more CPU time per patient with it (tool default: left unset in
    the embedded cluster; see docs/cohort.md for external clusters).
    """
    import dask

    environ = dict(dask.config.get(_ENVIRON_KEY, default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def _connect(
    client: Any,  # Any: a distributed.Client
    scheduler: str | None,
    n_workers: int | None,
    n_tasks: int,
) -> _Cluster:
    """The given client, a client of the scheduler, or an embedded LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    if client is not None:
        return _Cluster(client)
    if scheduler is not None:
        try:
            # distributed's constructors are not annotated (stub defect, not ours)
            client = Client(scheduler, timeout=_CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
            return _Cluster(client, owned_client=True)
        except (OSError, TimeoutError) as exc:
            raise InvalidInputError(
                f"cannot reach the Dask scheduler at {scheduler} within {_CONNECT_TIMEOUT} "
                f"({one_line(exc)})"
            ) from None
    workers = n_workers if n_workers is not None else min(_default_workers(), max(1, n_tasks))
    with dask.config.set({_ENVIRON_KEY: _worker_environ()}):
        cluster = LocalCluster(  # type: ignore[no-untyped-call]  # not annotated in distributed
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    try:
        client = Client(cluster)  # type: ignore[no-untyped-call]  # not annotated in distributed
        return _Cluster(client, owned_client=True, cluster=cluster)
    except BaseException:
        cluster.close()
        raise


def _status_line(n: int, total: int, outcome: PatientOutcome) -> str:
    p = outcome.patient
    width = len(str(total))
    if outcome.ok:
        state = f"{p['stage'] or '?':<9} ok      {float(p['seconds_total'] or 0.0):6.1f} s"
    else:
        state = f"{p['stage'] or '-':<9} FAILED  ({p['failed_step']}) {p['error']}"
    return f"[{n:>{width}}/{total}] {outcome.patient_id}  {state}"


def _write_run_info(out: Path, info: dict[str, Any]) -> None:  # Any: JSON values
    atomic_write_text(out / "run.json", json.dumps(info, indent=2, sort_keys=True) + "\n")


# ============================================================================ run
def run_cohort(
    manifest: str | os.PathLike[str] | Manifest,
    *,
    out: str | os.PathLike[str],
    client: Any = None,  # Any: a distributed.Client
    scheduler: str | None = None,
    n_workers: int | None = None,
    resume: bool = False,
    write_patient_files: bool = False,
    atlas_spacing_mm: Sequence[float] | float | None = None,
    dose_spacing_mm: float = 2.5,
    report: bool = True,
    progress: ProgressArg = None,
) -> CohortSummary:
    """Plan every patient of a manifest on Dask and store the results as they finish.

    Parameters
    ----------
    manifest : path or Manifest
        A ``.csv`` / ``.toml`` manifest (validated first; every problem is listed in one
        :class:`~rtplan.cohort.manifest.ManifestError`) or a :class:`Manifest`.
    out : path
        Results folder: new or empty, or (with ``resume``) an earlier run's.
    client : distributed.Client, optional
        Run on this client's cluster (left open).
    scheduler : str, optional
        Address of a running Dask scheduler (``"tcp://host:8786"``); a client is made
        and closed at the end. With neither, an embedded ``LocalCluster`` runs
        ``n_workers`` worker processes with one thread each.
    n_workers : int, optional
        Workers of the embedded cluster; default the number of cores available (at
        most the number of patients to run).
    resume : bool
        Continue in ``out``: patients whose content hash is stored with status ok are
        skipped; the others (changed, failed or never finished) run.
    write_patient_files : bool
        Also write each patient's CT (atlas anatomies), RTSTRUCT, RTDOSE, metrics and
        report to ``out/files/<patient_id>/`` (written by the workers, so on a
        multi-machine cluster ``out`` must be on a shared file system).
    atlas_spacing_mm : float or (z, y, x), optional
        Grid of ``atlas:`` anatomies in mm (default: the atlas's own grid). Coarser is
        faster (``(5, 3, 3)`` for a quick look).
    dose_spacing_mm : float
        Cubic dose-grid voxel size, mm (default 2.5).
    report : bool
        Write ``out/report.html`` at the end (:func:`~rtplan.cohort.write_cohort_report`).
    progress : bool or callable, optional
        One line per finished patient; default shown on a terminal (stderr).

    Returns
    -------
    CohortSummary
        Counts, failures and time; ``summary.all_ok`` is False when a patient failed.

    Raises
    ------
    ManifestError
        When the manifest has bad rows or columns (nothing runs).
    OutputExistsError
        When ``out`` holds other files, or an earlier run's results without ``resume``.
    InvalidInputError
        On inconsistent arguments.
    """
    t0 = time.perf_counter()
    emit = _as_progress(progress)
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if client is not None and scheduler is not None:
        raise InvalidInputError("give either client or scheduler, not both")
    if n_workers is not None and (client is not None or scheduler is not None):
        raise InvalidInputError("n_workers sizes the embedded cluster; not with client/scheduler")
    if n_workers is not None and (int(n_workers) != n_workers or n_workers < 1):
        raise InvalidInputError(f"n_workers must be a positive integer, got {n_workers!r}")
    if not float(dose_spacing_mm) > 0:
        raise InvalidInputError(f"dose_spacing_mm must be > 0, got {dose_spacing_mm!r}")
    out_dir = Path(out).expanduser().resolve()
    settings = RunSettings(
        atlas_spacing_mm=_spacing(atlas_spacing_mm),
        dose_spacing_mm=float(dose_spacing_mm),
        write_patient_files=write_patient_files,
        files_dir=str(out_dir / "files") if write_patient_files else None,
    )
    _prepare_out(out_dir, resume)
    store = ResultsStore(out_dir)
    store.create()
    if write_patient_files:
        (out_dir / "files").mkdir(exist_ok=True)
    previous = read_run_info(out_dir)
    info: dict[str, Any] = {  # Any: JSON values
        "rtplan_version": rtplan_version(),
        "manifest": str(m.path) if m.path is not None else None,
        "metadata": dict(m.metadata),
        "patient_ids": m.patient_ids,
        "settings": settings.fingerprint(),
        "started_at": _now(),
        "finished_at": None,
        "runs": int(previous.get("runs", 0)) + 1,
    }
    _write_run_info(out_dir, info)

    cache: dict[str, str] = {}
    hashes = {row.patient_id: input_hash(row, settings, cache) for row in m.rows}
    stored = store.stored()
    stale = sorted(set(stored) - set(hashes))
    if stale:
        store.remove(stale)
        emit(f"removed the stored results of {len(stale)} patient(s) not in the manifest")
    todo = [
        r
        for r in m.rows
        if not (resume and stored.get(r.patient_id) == (hashes[r.patient_id], "ok"))
    ]
    summary = CohortSummary(out=out_dir, n_patients=len(m), n_skipped=len(m) - len(todo))
    if summary.n_skipped:
        emit(f"resume: {summary.n_skipped} patient(s) unchanged and stored, skipped")
    if todo:
        _run_tasks(todo, hashes, settings, store, summary, client, scheduler, n_workers, emit)
    store.consolidate(m.patient_ids)
    summary.seconds = time.perf_counter() - t0
    info.update(finished_at=_now(), summary=summary.as_dict())
    _write_run_info(out_dir, info)
    if report:
        from rtplan.cohort.report import write_cohort_report

        summary.report = write_cohort_report(out_dir)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_tasks(
    todo: Sequence[PatientRow],
    hashes: dict[str, str],
    settings: RunSettings,
    store: ResultsStore,
    summary: CohortSummary,
    client: Any,  # Any: distributed.Client
    scheduler: str | None,
    n_workers: int | None,
    emit: Callable[[str], object],
) -> None:
    """Submit one task per patient and store each outcome as it completes."""
    from distributed import as_completed

    cluster = _connect(client, scheduler, n_workers, len(todo))
    try:
        summary.workers = cluster.n_workers
        emit(f"running {len(todo)} patient(s) on {summary.workers} Dask worker(s)")
        by_key: dict[str, PatientRow] = {}
        futures = []
        for row in todo:
            key = f"rtplan-patient-{row.patient_id}-{uuid.uuid4().hex[:8]}"
            fut = cluster.client.submit(
                run_patient, row, settings, hashes[row.patient_id], key=key, pure=False
            )
            by_key[fut.key] = row
            futures.append(fut)
        try:
            done = as_completed(futures)  # type: ignore[no-untyped-call]  # not annotated upstream
            for n, fut in enumerate(done, start=1):
                row = by_key[fut.key]
                outcome = _collect(fut, row, hashes[row.patient_id])
                store.write(outcome)
                fut.release()
                summary.n_run += 1
                if outcome.ok:
                    summary.n_ok += 1
                else:
                    summary.n_failed += 1
                    summary.failed.append((row.patient_id, str(outcome.patient["error"])))
                emit(_status_line(n, len(todo), outcome))
        except BaseException:
            cluster.client.cancel(futures)
            raise
    finally:
        cluster.close()


def _collect(fut: Any, row: PatientRow, digest: str) -> PatientOutcome:  # Any: a Future
    """The outcome of a finished future; a task that raised (lost worker...) is a failure."""
    try:
        outcome = fut.result()
    except Exception as exc:  # recorded for this patient; the cohort goes on
        return failed_outcome(row, digest, "dask", one_line(exc))
    if not isinstance(outcome, PatientOutcome):
        return failed_outcome(row, digest, "dask", f"unexpected task result {type(outcome)}")
    return outcome
