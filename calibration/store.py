"""The reference-plan store: one CSV of metrics and one JSON of plan records.

``reference_metrics.csv`` has one row per plan x dose x structure x metric (columns
:data:`CSV_FIELDS`); ``reference_plans.json`` holds ``{"format_version": 1, "plans":
{plan_id: record}}`` with the settings, versions and timings of every plan. A plan is
stored when its record is in the JSON: the CSV is written first and the JSON last, each
through a temporary file renamed over the old one, so a run killed at any moment leaves
either the old store or the new one, and a plan whose JSON record is missing is planned
again (its stale CSV rows, if any, are replaced).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TypeAlias

__all__ = [
    "CSV_FIELDS",
    "CSV_NAME",
    "JSON_NAME",
    "STORE_FORMAT_VERSION",
    "JsonValue",
    "MetricRecord",
    "ReferenceStore",
    "StoreError",
    "atomic_write_text",
]

#: A JSON value (what :func:`json.loads` returns).
JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"

CSV_NAME = "reference_metrics.csv"
JSON_NAME = "reference_plans.json"
#: Columns of the metrics CSV, in order.
CSV_FIELDS: tuple[str, ...] = (
    "plan_id",
    "case",
    "option",
    "course",
    "structure",
    "metric",
    "value",
    "unit",
)
#: Version of the JSON layout (``format_version``); bumped when the layout changes.
STORE_FORMAT_VERSION = 1
#: Permissions of the store files (rw-r--r--).
_FILE_MODE = 0o644
#: Significant digits of the values written to the CSV.
_VALUE_DIGITS = 6


class StoreError(ValueError):
    """A store file that cannot be read as a reference store, or rows that do not fit."""


@dataclass(frozen=True)
class MetricRecord:
    """One row of the metrics CSV.

    Parameters
    ----------
    plan_id : str
        The plan (see :data:`calibration.plans.PLANS`).
    case : str
        The anatomy (``"atlas"``, ``"scale0.85"``...).
    option : str
        The rtplan option name (``"PBRT"``, ``"PBRT+WPRT"``...).
    course : str
        ``"composite"`` (physical sum of the courses) or a course name.
    structure : str
        Structure name (TG-263).
    metric : str
        The metric, in :func:`rtplan.dvh.parse_metric` syntax where it is a DVH metric
        (``"D95%"``, ``"V40Gy"``, ``"V45Gy[cc]"``), else a name such as ``"Volume"`` or
        ``"dist_mean_Gy[5.0,7.5)"``.
    value : float
        The value (finite).
    unit : str
        ``"Gy"``, ``"%"``, ``"%Rx"`` or ``"cc"``.
    """

    plan_id: str
    case: str
    option: str
    course: str
    structure: str
    metric: str
    value: float
    unit: str

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise StoreError(
                f"{self.plan_id} {self.course} {self.structure} {self.metric}: value must be "
                f"finite, got {self.value!r}"
            )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder.

    The temporary file is flushed to disk, made readable by all (``rw-r--r--``) and
    renamed over ``path`` (:func:`os.replace`), so readers see the old content or the
    new one, never a part.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private; the store is shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _format_value(value: float) -> str:
    return format(value, f".{_VALUE_DIGITS}g")


def _csv_text(rows: Iterable[MetricRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        cells = list(astuple(r))
        cells[CSV_FIELDS.index("value")] = _format_value(r.value)
        writer.writerow(cells)
    return buf.getvalue()


def _parse_rows(text: str, source: Path) -> list[MetricRecord]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header) != CSV_FIELDS:
        raise StoreError(f"{source}: header {header} is not {list(CSV_FIELDS)}")
    rows = []
    for line_no, cells in enumerate(reader, start=2):
        if len(cells) != len(CSV_FIELDS):
            raise StoreError(f"{source}:{line_no}: {len(cells)} cells, expected {len(CSV_FIELDS)}")
        fields = dict(zip(CSV_FIELDS, cells))
        try:
            value = float(fields["value"])
        except ValueError as err:
            raise StoreError(
                f"{source}:{line_no}: value {fields['value']!r} is not a number"
            ) from err
        rows.append(
            MetricRecord(
                plan_id=fields["plan_id"],
                case=fields["case"],
                option=fields["option"],
                course=fields["course"],
                structure=fields["structure"],
                metric=fields["metric"],
                value=value,
                unit=fields["unit"],
            )
        )
    return rows


class ReferenceStore:
    """The CSV + JSON store of reference plans in one folder.

    Parameters
    ----------
    folder : str or Path
        Where ``reference_metrics.csv`` and ``reference_plans.json`` live (created on the
        first write).

    Examples
    --------
    >>> import tempfile
    >>> store = ReferenceStore(tempfile.mkdtemp())
    >>> sorted(store.stored_ids())
    []
    >>> row = MetricRecord("p1", "atlas", "PBRT", "composite", "Rectum", "V40Gy", 36.2, "%")
    >>> store.add_plan("p1", {"option": "PBRT"}, [row])
    >>> sorted(store.stored_ids()), store.rows("p1")[0].value
    (['p1'], 36.2)
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @property
    def csv_path(self) -> Path:
        """The metrics CSV."""
        return self.folder / CSV_NAME

    @property
    def json_path(self) -> Path:
        """The plan records JSON."""
        return self.folder / JSON_NAME

    def plans(self) -> dict[str, JsonValue]:
        """Plan id -> record of every stored plan, in the order they were stored."""
        if not self.json_path.exists():
            return {}
        try:
            payload = json.loads(self.json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise StoreError(f"{self.json_path}: not valid JSON ({err})") from err
        if not isinstance(payload, dict) or not isinstance(payload.get("plans"), dict):
            raise StoreError(f'{self.json_path}: expected an object with a "plans" object')
        version = payload.get("format_version")
        if version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{self.json_path}: format_version {version!r}, this code reads "
                f"{STORE_FORMAT_VERSION}"
            )
        plans: dict[str, JsonValue] = payload["plans"]
        return plans

    def stored_ids(self) -> set[str]:
        """Ids of the plans stored (their JSON record exists)."""
        return set(self.plans())

    def rows(self, plan_id: str | None = None) -> list[MetricRecord]:
        """Rows of the metrics CSV (of one plan when ``plan_id`` is given)."""
        if not self.csv_path.exists():
            return []
        rows = _parse_rows(self.csv_path.read_text(encoding="utf-8"), self.csv_path)
        return [r for r in rows if plan_id is None or r.plan_id == plan_id]

    def add_plan(
        self, plan_id: str, record: Mapping[str, JsonValue], rows: Sequence[MetricRecord]
    ) -> None:
        """Store one plan: its metric rows, then its record (replacing earlier ones).

        Parameters
        ----------
        plan_id : str
            The plan.
        record : mapping
            The plan's JSON record (settings, versions, timings); JSON-serialisable with
            finite numbers.
        rows : sequence of MetricRecord
            The plan's metrics; every row's ``plan_id`` must be ``plan_id``.

        Raises
        ------
        StoreError
            Rows of another plan, or a record that is not JSON (e.g. holds NaN).
        """
        other = sorted({r.plan_id for r in rows if r.plan_id != plan_id})
        if other:
            raise StoreError(f"rows for plan {plan_id!r} name other plans: {other}")
        with self._locked():
            self._write_plan(plan_id, record, rows)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Lock the store's folder: writers (runs, rescoring, merges) take turns.

        The lock is on the folder itself (:func:`fcntl.flock`), so no lock file is left.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write_plan(
        self, plan_id: str, record: Mapping[str, JsonValue], rows: Sequence[MetricRecord]
    ) -> None:
        plans = self.plans()
        plans[plan_id] = dict(record)
        try:
            json_text = json.dumps(
                {"format_version": STORE_FORMAT_VERSION, "plans": plans},
                indent=1,
                allow_nan=False,
            )
        except (TypeError, ValueError) as err:
            raise StoreError(f"record of plan {plan_id!r} is not JSON: {err}") from err
        kept = [r for r in self.rows() if r.plan_id != plan_id]
        atomic_write_text(self.csv_path, _csv_text([*kept, *rows]))
        atomic_write_text(self.json_path, json_text + "\n")
