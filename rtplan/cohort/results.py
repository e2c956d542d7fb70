"""Cohort results on disk: Parquet part files per patient, CSV copies, and reading them back.

A results folder (``run_cohort(..., out=DIR)``) holds:

=========================  ==============================================================
``run.json``               settings, cohort metadata, rtplan version, start/end, counts
``patients/<id>.parquet``  one row per patient: stage, options, timings, error, input hash
``metrics/<id>.parquet``   one row per patient x protocol x option x metric
``patients.csv``           the patient rows as CSV (appended as patients finish, rewritten
                           in manifest order when a run completes)
``metrics.csv``            the metric rows as CSV (likewise)
``patients.parquet``,      all patients / all metrics in one file each (written when a run
``metrics.parquet``        completes)
``files/<id>/``            per-patient DICOM and report (``write_patient_files``)
``report.html``            the cohort report
=========================  ==============================================================

Each patient's part files are written to a temporary name and renamed, so a run that is
killed loses only the patients in flight; the part files are what
:func:`load_results` reads.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtplan._version import __version__
from rtplan.errors import InvalidInputError

__all__ = [
    "METRIC_COLUMNS",
    "PATIENT_COLUMNS",
    "Cell",
    "CohortResults",
    "PatientOutcome",
    "ResultsStore",
    "atomic_write_text",
    "load_results",
]

#: A table cell: text, number, flag, or None for a missing value.
Cell = str | float | int | bool | None

#: Columns of the patient table and their types (pyarrow type names).
PATIENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patient_id", "string"),
    ("status", "string"),  # "ok" or "failed"
    ("error", "string"),  # one line, "" when ok
    ("failed_step", "string"),  # atlas, lesions, stage, options, dose, files, dask
    ("stage", "string"),  # UCLA form, e.g. "T0N1M0"
    ("stage_detailed", "string"),  # PROMISE form with regions
    ("ucla_group", "string"),  # T0N0M0, TrN0M0, N1M0, M1
    ("n_lesions", "int32"),
    ("lesion_sites", "string"),  # "N1:EI;M1b:bone"
    ("protocols", "string"),  # ";"-joined protocol names
    ("options", "string"),  # ";"-joined option names (all protocols)
    ("anatomy", "string"),
    ("lesions", "string"),
    ("psa_ng_ml", "float64"),
    ("tracer", "string"),
    ("extra", "string"),  # JSON object of the x_* columns
    ("warnings", "string"),  # rtplan warnings raised for this patient, "; "-joined
    ("input_hash", "string"),
    ("rtplan_version", "string"),
    ("worker", "string"),
    ("seconds_total", "float64"),
    ("seconds_atlas", "float64"),
    ("seconds_lesions", "float64"),
    ("seconds_stage", "float64"),
    ("seconds_options", "float64"),
    ("seconds_dose", "float64"),
    ("seconds_files", "float64"),
    ("cpu_seconds", "float64"),
    ("peak_rss_mb", "float64"),
)

#: Columns of the metric table (long form: patient x protocol x option x metric).
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patient_id", "string"),
    ("protocol", "string"),
    ("option", "string"),
    ("adt", "bool"),
    ("group", "string"),  # Target, OAR, OAR (SBRT), NTCP
    ("structure", "string"),
    ("metric", "string"),
    ("unit", "string"),
    ("value", "float64"),
    ("limit", "string"),  # the constraint as text, "" without one
    ("status", "string"),  # pass, fail, "" without a constraint
    ("headroom", "float64"),  # distance to the limit in the row's unit, > 0 passing
)


def _schema(columns: Sequence[tuple[str, str]]) -> Any:  # Any: pyarrow ships no types
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "float64": pa.float64(),
        "int32": pa.int32(),
        "bool": pa.bool_(),
    }
    return pa.schema([(name, types[kind]) for name, kind in columns])


@dataclass
class PatientOutcome:
    """What one patient's task returns: small tables, never arrays.

    Attributes
    ----------
    patient : dict
        One row of the patient table (keys: :data:`PATIENT_COLUMNS`).
    metrics : dict of str to list
        Columns of the patient's metric rows (keys: :data:`METRIC_COLUMNS`).
    """

    patient: dict[str, Cell]
    metrics: dict[str, list[Cell]] = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        """The patient."""
        return str(self.patient["patient_id"])

    @property
    def ok(self) -> bool:
        """True when every step succeeded."""
        return str(self.patient["status"]) == "ok"

    @property
    def n_metric_rows(self) -> int:
        """Number of metric rows."""
        return len(self.metrics.get("value", []))


def empty_metrics() -> dict[str, list[Cell]]:
    """Empty metric columns."""
    return {name: [] for name, _ in METRIC_COLUMNS}


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_parquet(table: Any, path: Path) -> None:  # Any: a pyarrow Table
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _csv_cell(value: Cell) -> str | int | bool:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


class ResultsStore:
    """The results folder of a cohort run: writes part files, CSVs, and reads hashes.

    Parameters
    ----------
    folder : path
        The results folder (created with its ``patients/`` and ``metrics/`` folders).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.patients_dir = self.folder / "patients"
        self.metrics_dir = self.folder / "metrics"

    def create(self) -> None:
        """Make the folders."""
        self.patients_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writing
    def write(self, outcome: PatientOutcome) -> None:
        """Store one patient: its two part files (atomically), then the CSV rows."""
        import pyarrow as pa

        pid = outcome.patient_id
        metrics = outcome.metrics or empty_metrics()
        m_table = pa.Table.from_pydict(
            {k: metrics[k] for k, _ in METRIC_COLUMNS}, schema=_schema(METRIC_COLUMNS)
        )
        p_table = pa.Table.from_pylist([outcome.patient], schema=_schema(PATIENT_COLUMNS))
        # metrics first: a patient file only exists once its metrics do
        _write_parquet(m_table, self.metrics_dir / f"{pid}.parquet")
        _write_parquet(p_table, self.patients_dir / f"{pid}.parquet")
        self._append_csv(self.folder / "patients.csv", PATIENT_COLUMNS, [outcome.patient])
        rows = [dict(zip(metrics, vals)) for vals in zip(*metrics.values())]
        self._append_csv(self.folder / "metrics.csv", METRIC_COLUMNS, rows)

    @staticmethod
    def _append_csv(
        path: Path, columns: Sequence[tuple[str, str]], rows: Iterable[Mapping[str, Cell]]
    ) -> None:
        names = [n for n, _ in columns]
        new = not path.exists()
        with open(path, "a", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=names, lineterminator="\n")
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_cell(row.get(k)) for k in names})

    def remove(self, patient_ids: Iterable[str]) -> None:
        """Delete the part files of these patients."""
        for pid in patient_ids:
            (self.patients_dir / f"{pid}.parquet").unlink(missing_ok=True)
            (self.metrics_dir / f"{pid}.parquet").unlink(missing_ok=True)

    def consolidate(self, order: Sequence[str]) -> None:
        """Rewrite the CSVs and the single-file Parquet tables from the part files.

        Patients are in ``order`` (the manifest's), then any other stored patient.
        """
        results = load_results(self.folder, order=order)
        for name, table, columns in (
            ("patients", results.patients, PATIENT_COLUMNS),
            ("metrics", results.metrics, METRIC_COLUMNS),
        ):
            _write_parquet(table, self.folder / f"{name}.parquet")
            tmp = self.folder / f".{name}.csv.{os.getpid()}.tmp"
            try:
                tmp.unlink(missing_ok=True)
                self._append_csv(tmp, columns, table.to_pylist())
                if not tmp.exists():  # no rows and no header written yet
                    self._append_csv(tmp, columns, [])
                os.replace(tmp, self.folder / f"{name}.csv")
            finally:
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def stored(self) -> dict[str, tuple[str, str]]:
        """Stored patients: id -> (input hash, status)."""
        import pyarrow.parquet as pq

        out: dict[str, tuple[str, str]] = {}
        for f in sorted(self.patients_dir.glob("*.parquet")):
            if not (self.metrics_dir / f.name).is_file():
                continue
            t = pq.read_table(f, columns=["patient_id", "input_hash", "status"]).to_pylist()
            for row in t:
                out[str(row["patient_id"])] = (str(row["input_hash"]), str(row["status"]))
        return out


@dataclass(frozen=True)
class CohortResults:
    """The stored results of a cohort run.

    Attributes
    ----------
    folder : Path
        The results folder.
    patients : pyarrow.Table
        One row per patient (:data:`PATIENT_COLUMNS`).
    metrics : pyarrow.Table
        One row per patient x protocol x option x metric (:data:`METRIC_COLUMNS`).
    run : dict
        ``run.json``: settings, cohort metadata, counts.
    """

    folder: Path
    patients: Any  # Any: a pyarrow Table (pyarrow ships no types)
    metrics: Any  # Any: a pyarrow Table
    run: dict[str, Any]  # Any: JSON values

    @property
    def like(self) -> str | None:
        """The published cohort the manifest was simulated like, if any."""
        meta = self.run.get("metadata", {})
        like = meta.get("like") if isinstance(meta, dict) else None
        return str(like) if like else None

    @property
    def n_patients(self) -> int:
        """Number of stored patients."""
        return int(self.patients.num_rows)

    def patient_rows(self) -> list[dict[str, Cell]]:
        """The patient table as a list of dicts."""
        rows: list[dict[str, Cell]] = self.patients.to_pylist()
        return rows


def read_run_info(folder: str | Path) -> dict[str, Any]:  # Any: JSON values
    """``run.json`` of a results folder (empty dict when absent)."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a JSON object")
    return data


def load_results(folder: str | Path, *, order: Sequence[str] | None = None) -> CohortResults:
    """Read a cohort results folder.

    Parameters
    ----------
    folder : path
        The ``out`` folder of :func:`rtplan.cohort.run_cohort`.
    order : sequence of str, optional
        Patient order; default: the manifest order stored in ``run.json``, then any
        other stored patient by name.

    Returns
    -------
    CohortResults

    Raises
    ------
    InvalidInputError
        When the folder holds no cohort results.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(folder)
    store = ResultsStore(path)
    if not store.patients_dir.is_dir() or not store.metrics_dir.is_dir():
        raise InvalidInputError(
            f"{path} holds no cohort results (no patients/ and metrics/ folders); run "
            "'rtplan cohort run MANIFEST --out DIR' first"
        )
    run = read_run_info(path)
    wanted = list(order) if order is not None else list(run.get("patient_ids", []))
    files = {f.stem: f for f in store.patients_dir.glob("*.parquet")}
    files = {k: v for k, v in files.items() if (store.metrics_dir / v.name).is_file()}
    ids = [p for p in wanted if p in files] + sorted(set(files) - set(wanted))
    p_schema, m_schema = _schema(PATIENT_COLUMNS), _schema(METRIC_COLUMNS)
    p_tables = [pq.read_table(files[p], schema=p_schema) for p in ids]
    m_tables = [pq.read_table(store.metrics_dir / f"{p}.parquet", schema=m_schema) for p in ids]
    patients = pa.concat_tables(p_tables) if p_tables else p_schema.empty_table()
    metrics = pa.concat_tables(m_tables) if m_tables else m_schema.empty_table()
    return CohortResults(path, patients, metrics, run)


def rtplan_version() -> str:
    """The installed rtplan version."""
    return str(__version__)


#: Files of the package whose bytes make a result: code and shipped data (protocols,
#: model calibration, atlases' recipes); caches and compiled files are not.
_CODE_SUFFIXES = (".py", ".toml", ".json", ".css", ".npz")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the installed rtplan package's code and shipped data.

    The version number alone does not change when the model, its calibration or a
    check does between releases (or in a working copy), so a cohort resumed after such
    a change would mix results of two codes; the content hash of a patient includes this
    digest. Computed once per process (a few ms).

    Returns
    -------
    str
        Hexadecimal SHA-256 over the relative path and bytes of every file of
        :data:`_CODE_SUFFIXES` under the package and the shipped atlases, in path order.
    """
    # the shipped atlases' recipes are a package of their own (a folder beside rtplan/)
    atlases = importlib.util.find_spec("rtplan.atlases")
    roots = {"rtplan": Path(__file__).resolve().parents[1]}
    if atlases is not None and atlases.submodule_search_locations:
        roots["atlases"] = Path(next(iter(atlases.submodule_search_locations))).resolve()
    return _tree_digest(roots)


def _tree_digest(roots: Mapping[str, Path]) -> str:
    """SHA-256 over the :data:`_CODE_SUFFIXES` files under each root (name -> folder)."""
    digest = hashlib.sha256()
    for name, root in roots.items():
        for path in sorted(root.rglob("*")):
            if path.suffix not in _CODE_SUFFIXES or "__pycache__" in path.parts:
                continue
            if path.is_file():
                digest.update(f"{name}/{path.relative_to(root).as_posix()}".encode())
                digest.update(b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()
