"""Cohort manifests: one row per patient, read from CSV or TOML and validated at once.

A manifest lists, per patient, the anatomy, the lesions, the protocol(s) and optional
clinical fields. It is checked completely before anything runs: every bad row and
column is listed in one :class:`ManifestError`. The format (also in docs/cohort.md):

============== ========= ================================================================
column         required  value
============== ========= ================================================================
patient_id     yes       unique; letters, digits, ``.``, ``_``, ``-`` (1-64 characters;
                         it names the patient's result files)
anatomy        yes       ``atlas:<name>`` (a shipped atlas, e.g. ``male_pelvis_postop``,
                         or a folder with an ``atlas.toml``), ``dicom:<folder>`` (CT
                         series + RTSTRUCT) or ``labels:<folder>`` (NIfTI label maps)
lesions        yes       ``none``; ``mask:<file>`` (NIfTI ``.nii``/``.nii.gz`` in the CT's
                         coordinates, or ``.npy`` on the anatomy grid; a binary mask or a
                         label map); ``rtstruct:<file>[#ROI,ROI]`` (the ROIs, default the
                         GTV-type ROIs); ``roi:ROI[,ROI]`` (ROIs of the anatomy's own
                         RTSTRUCT, ``dicom:`` anatomy only); ``pet:<method>`` (segmented
                         on the PET of the ``pet`` column: ``suv:4``, ``pct:41``,
                         ``liver[:SUVmean]``, ``blood[:SUVmean]``); or lesions placed by
                         region and size, ``node:external_iliac_L:8mm;bone:VB_S1:12mm``
                         (grammar in :mod:`rtplan.cohort.lesion_spec`)
protocol       no        shipped protocol name or TOML file; several separated by ``;``
                         (each patient is planned under each); default ``nrg_salvage``
scale          no        atlas size factor, 0.8-1.25 (``atlas:`` only)
bladder_filling no       relative bladder volume, 0.3-2.5 (``atlas:`` only)
rectal_filling no        relative rectal cross-section, 0.3-2.5 (``atlas:`` only)
seed           no        integer >= 0: a seeded random anatomical variant (``atlas:`` only)
pet            no        PET DICOM folder (for ``pet:`` lesions)
psa_ng_ml      no        PSA at PET in ng/mL, a number >= 0 (stored, not used)
tracer         no        PET tracer, free text up to 64 characters (stored, not used)
x_<anything>   no        any other clinical field, stored as text
============== ========= ================================================================

Relative paths are relative to the manifest's folder. Empty cells are missing values.
A CSV manifest may start with ``#`` comment lines; ``# key: value`` lines there are
cohort metadata (``like``, ``seed``, ``n``, ``description``). A TOML manifest has an
optional ``[cohort]`` table of metadata and one ``[[patient]]`` table per patient with
the same keys (``protocol`` may be a list).
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rtplan.atlas import list_atlases
from rtplan.cohort.lesion_spec import LesionItem, format_lesion_items, lesion_item_problems
from rtplan.errors import InvalidInputError, OutputExistsError, RtplanError
from rtplan.protocol import list_protocols, load_protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_PROTOCOL",
    "LIKE_COHORTS",
    "MANIFEST_COLUMNS",
    "METADATA_KEYS",
    "REQUIRED_COLUMNS",
    "Anatomy",
    "LesionSource",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "PatientRow",
    "manifest_from_records",
    "read_manifest",
    "write_manifest",
]

#: Columns every manifest must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "anatomy", "lesions")
#: Every column a manifest may have (besides ``x_*`` columns), in the order written.
MANIFEST_COLUMNS: tuple[str, ...] = (
    *REQUIRED_COLUMNS,
    "protocol",
    "scale",
    "bladder_filling",
    "rectal_filling",
    "seed",
    "pet",
    "psa_ng_ml",
    "tracer",
)
_ATLAS_ONLY = ("scale", "bladder_filling", "rectal_filling", "seed")
#: Cohort metadata keys (CSV ``# key: value`` lines, TOML ``[cohort]`` table).
METADATA_KEYS: tuple[str, ...] = ("like", "seed", "n", "description")
#: Published cohorts a simulated cohort can be "like" (compared in the report).
LIKE_COHORTS: tuple[str, ...] = ("ucla2026",)
#: The protocol of a row without one.
DEFAULT_PROTOCOL = "nrg_salvage"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RANGES = {"scale": (0.8, 1.25), "bladder_filling": (0.3, 2.5), "rectal_filling": (0.3, 2.5)}
_MAX_TRACER = 64
_PET_FORMS = "suv:<SUV>, pct:<percent of SUVmax>, liver[:<SUVmean>] or blood[:<SUVmean>]"

AnatomyKind = Literal["atlas", "dicom", "labels"]
LesionKind = Literal["none", "mask", "rtstruct", "roi", "pet", "spec"]


# ============================================================================ values
@dataclass(frozen=True)
class Anatomy:
    """Where a patient's anatomy comes from.

    Parameters
    ----------
    kind : {"atlas", "dicom", "labels"}
        A parametric atlas (shipped or a folder with ``atlas.toml``), a DICOM folder
        (CT + RTSTRUCT) or a folder of NIfTI label maps.
    name : str
        Shipped atlas name, or the folder as written in the manifest.
    path : str or None
        Absolute folder path (``None`` for a shipped atlas).
    scale, bladder_filling, rectal_filling : float or None
        Atlas variant parameters (see :func:`rtplan.load_atlas`); ``None`` = atlas default.
    seed : int or None
        Seed of a random atlas variant.
    """

    kind: str
    name: str
    path: str | None = None
    scale: float | None = None
    bladder_filling: float | None = None
    rectal_filling: float | None = None
    seed: int | None = None

    @property
    def text(self) -> str:
        """The manifest form, e.g. ``"atlas:male_pelvis_postop"``."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class LesionSource:
    """Where a patient's lesions come from (see the module table).

    Parameters
    ----------
    kind : {"none", "mask", "rtstruct", "roi", "pet", "spec"}
        The source.
    path : str or None
        Absolute file path (``mask``, ``rtstruct``).
    rois : tuple of str
        ROI names (``rtstruct``, ``roi``).
    pet_method : str
        ``pet`` method as written (``"pct:41"``).
    items : tuple of LesionItem
        Placed lesions (``spec``).
    written : str
        The value as written in the manifest.
    """

    kind: str
    path: str | None = None
    rois: tuple[str, ...] = ()
    pet_method: str = ""
    items: tuple[LesionItem, ...] = ()
    written: str = ""

    @property
    def text(self) -> str:
        """A canonical manifest form (placed lesions with explicit sizes)."""
        if self.kind == "spec":
            return format_lesion_items(self.items)
        return self.written


@dataclass(frozen=True)
class PatientRow:
    """One validated manifest row.

    Parameters
    ----------
    patient_id : str
        Unique identifier (names the result files).
    anatomy : Anatomy
        The anatomy source.
    lesions : LesionSource
        The lesion source.
    protocols : tuple of str
        Shipped protocol names or absolute protocol file paths (one or more).
    pet : str or None
        Absolute PET folder path.
    psa_ng_ml : float or None
        PSA at PET, ng/mL.
    tracer : str or None
        PET tracer.
    extra : tuple of (str, str)
        ``x_*`` columns and their text.
    where : str
        Where the row is in its manifest (``"line 4"``, ``"patient 3"``).
    """

    patient_id: str
    anatomy: Anatomy
    lesions: LesionSource
    protocols: tuple[str, ...] = (DEFAULT_PROTOCOL,)
    pet: str | None = None
    psa_ng_ml: float | None = None
    tracer: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    where: str = ""

    def record(self) -> dict[str, str]:
        """The row as manifest text, one entry per column (empty for missing values)."""
        a = self.anatomy

        def num(v: float | int | None) -> str:
            return "" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

        rec = {
            "patient_id": self.patient_id,
            "anatomy": a.text,
            "lesions": self.lesions.text,
            "protocol": ";".join(self.protocols),
            "scale": num(a.scale),
            "bladder_filling": num(a.bladder_filling),
            "rectal_filling": num(a.rectal_filling),
            "seed": num(a.seed),
            "pet": self.pet or "",
            "psa_ng_ml": num(self.psa_ng_ml),
            "tracer": self.tracer or "",
        }
        rec.update(dict(self.extra))
        return rec


@dataclass(frozen=True)
class Manifest:
    """A validated cohort manifest.

    Parameters
    ----------
    rows : tuple of PatientRow
        The patients, in manifest order.
    metadata : dict of str to str
        Cohort metadata (``like``, ``seed``, ``n``, ``description``).
    path : Path or None
        The file it was read from.
    """

    rows: tuple[PatientRow, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def like(self) -> str | None:
        """The published cohort this one was simulated like (``"ucla2026"``), if any."""
        return self.metadata.get("like") or None

    @property
    def patient_ids(self) -> list[str]:
        """Patient identifiers in order."""
        return [r.patient_id for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class ManifestProblem:
    """One problem found in a manifest: where, which patient and column, what."""

    where: str
    patient_id: str
    column: str
    message: str

    def __str__(self) -> str:
        who = f" ({self.patient_id})" if self.patient_id else ""
        col = f", {self.column}" if self.column else ""
        return f"{self.where}{who}{col}: {self.message}"


class ManifestError(InvalidInputError):
    """A manifest with one or more bad rows or columns; :attr:`problems` lists them all."""

    def __init__(self, source: str, problems: Sequence[ManifestProblem]) -> None:
        self.problems: tuple[ManifestProblem, ...] = tuple(problems)
        n = len(self.problems)
        text = "; ".join(str(p) for p in self.problems)
        super().__init__(f"manifest {source}: {n} problem{'s' if n != 1 else ''}: {text}")


# ============================================================================ cells
_Cell = tuple[str, str]  # (column, text)


class _Row:
    """Collects one raw row's values and problems."""

    def __init__(self, where: str, values: Mapping[str, str], base: Path) -> None:
        self.where = where
        self.values = values
        self.base = base
        self.problems: list[ManifestProblem] = []
        self.pid = values.get("patient_id", "")

    def bad(self, column: str, message: str) -> None:
        self.problems.append(ManifestProblem(self.where, self.pid, column, message))

    def text(self, column: str) -> str:
        return self.values.get(column, "").strip()

    def number(self, column: str, lo: float, hi: float) -> float | None:
        raw = self.text(column)
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and lo <= value <= hi):
            self.bad(column, f"{raw!r} is not a number in [{lo:g}, {hi:g}]")
            return None
        return value

    def path(self, column: str, raw: str, *, folder: bool) -> str | None:
        if not raw:
            self.bad(column, "a path is missing")
            return None
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else self.base / p
        if folder and not p.is_dir():
            self.bad(column, f"folder {raw!r} does not exist ({p})")
            return None
        if not folder and not p.is_file():
            self.bad(column, f"file {raw!r} does not exist ({p})")
            return None
        return str(p.resolve())


def _check_id(row: _Row) -> str:
    pid = row.text("patient_id")
    if not pid:
        row.bad("patient_id", "missing")
    elif not _ID_RE.match(pid):
        row.bad(
            "patient_id",
            f"{pid!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
            "or digit)",
        )
    return pid


def _check_anatomy(row: _Row) -> Anatomy | None:
    raw = row.text("anatomy")
    kind, sep, rest = raw.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if not raw:
        row.bad("anatomy", "missing (atlas:<name>, dicom:<folder> or labels:<folder>)")
        return None
    if not sep or kind not in ("atlas", "dicom", "labels") or not rest:
        row.bad(
            "anatomy",
            f"{raw!r} is not atlas:<name>, dicom:<folder> or labels:<folder>",
        )
        return None
    path: str | None = None
    if kind == "atlas":
        shipped = list_atlases()
        if rest not in shipped:
            folder = Path(rest).expanduser()
            folder = folder if folder.is_absolute() else row.base / folder
            if not (folder / "atlas.toml").is_file():
                row.bad(
                    "anatomy",
                    f"no atlas {rest!r}: not a shipped atlas ({', '.join(shipped)}) and not "
                    "a folder with an atlas.toml",
                )
                return None
            path = str(folder.resolve())
    else:
        path = row.path("anatomy", rest, folder=True)
        if path is None:
            return None
    params = _check_variant(row, kind)
    return Anatomy(kind, rest, path, *params)


def _check_variant(
    row: _Row, kind: str
) -> tuple[float | None, float | None, float | None, int | None]:
    given = [c for c in _ATLAS_ONLY if row.text(c)]
    if kind != "atlas":
        for c in given:
            row.bad(c, f"only applies to an atlas: anatomy, not {kind}:")
        return None, None, None, None
    scale = row.number("scale", *_RANGES["scale"])
    bladder = row.number("bladder_filling", *_RANGES["bladder_filling"])
    rectal = row.number("rectal_filling", *_RANGES["rectal_filling"])
    seed: int | None = None
    raw = row.text("seed")
    if raw:
        if re.fullmatch(r"[0-9]{1,18}", raw):
            seed = int(raw)
        else:
            row.bad("seed", f"{raw!r} is not a whole number >= 0")
    return scale, bladder, rectal, seed


def pet_method_kwargs(text: str) -> dict[str, object]:
    """Keyword arguments of :func:`rtplan.lesions_from_pet` for a ``pet:`` method.

    Parameters
    ----------
    text : str
        ``suv:<SUV>`` (fixed threshold), ``pct:<percent>`` (of each lesion's SUVmax),
        ``liver`` / ``blood`` (above the reference region's SUVmean, measured in
        ``Liver`` / ``A_Aorta``) or ``liver:<SUVmean>`` / ``blood:<SUVmean>``.

    Returns
    -------
    dict
        ``method`` and its parameters.

    Raises
    ------
    InvalidInputError
        Naming the accepted forms.

    Examples
    --------
    >>> pet_method_kwargs("pct:41")
    {'method': 'percent_max', 'percent': 41.0}
    >>> pet_method_kwargs("blood:1.8")
    {'method': 'reference', 'reference': 'blood_pool', 'references': {'blood_pool': 1.8}}
    """
    name, _, arg = text.strip().partition(":")
    name = name.strip().lower()
    arg = arg.strip()
    try:
        value = float(arg.rstrip("%")) if arg else math.nan
    except ValueError:
        value = math.nan
    if name == "suv" and 0 < value < 1000:
        return {"method": "fixed", "threshold_suv": value}
    if name == "pct" and 0 < value < 100:
        return {"method": "percent_max", "percent": value}
    if name in ("liver", "blood"):
        ref = "liver" if name == "liver" else "blood_pool"
        if not arg:
            return {"method": "reference", "reference": ref}
        if 0 < value < 1000:
            return {"method": "reference", "reference": ref, "references": {ref: value}}
    raise InvalidInputError(f"PET method {text!r} is not understood; expected {_PET_FORMS}")


def _check_lesions(row: _Row, anatomy: Anatomy | None) -> LesionSource | None:
    raw = row.text("lesions")
    if not raw:
        row.bad("lesions", "missing (write none for a patient without PSMA-positive lesions)")
        return None
    head, sep, rest = raw.partition(":")
    head = head.strip().lower()
    rest = rest.strip()
    if raw.lower() == "none":
        return LesionSource("none", written="none")
    if sep and head == "mask":
        path = row.path("lesions", rest, folder=False)
        if path is not None and not path.lower().endswith((".nii", ".nii.gz", ".npy")):
            row.bad("lesions", f"mask file {rest!r} must be .nii, .nii.gz or .npy")
            return None
        return None if path is None else LesionSource("mask", path=path, written=raw)
    if sep and head == "rtstruct":
        file_part, _, roi_part = rest.partition("#")
        path = row.path("lesions", file_part.strip(), folder=False)
        rois = tuple(r.strip() for r in roi_part.split(",") if r.strip())
        if path is None:
            return None
        return LesionSource("rtstruct", path=path, rois=rois, written=raw)
    if sep and head == "roi":
        rois = tuple(r.strip() for r in rest.split(",") if r.strip())
        if not rois:
            row.bad("lesions", "roi: needs one or more ROI names, e.g. roi:GTVn1,GTVn2")
            return None
        if anatomy is not None and anatomy.kind != "dicom":
            row.bad("lesions", f"roi: reads the anatomy's RTSTRUCT; {anatomy.kind}: has none")
            return None
        return LesionSource("roi", rois=rois, written=raw)
    if sep and head == "pet":
        try:
            pet_method_kwargs(rest)
        except InvalidInputError as exc:
            row.bad("lesions", str(exc))
            return None
        if not row.text("pet"):
            row.bad("lesions", "pet: lesions need the PET folder in the pet column")
            return None
        return LesionSource("pet", pet_method=rest, written=raw)
    items, problems = lesion_item_problems(raw)
    for p in problems:
        row.bad("lesions", p)
    if problems:
        return None
    return LesionSource("spec", items=items, written=raw)


def _check_protocols(row: _Row, known: dict[str, str | None]) -> tuple[str, ...]:
    raw = row.text("protocol")
    names = [p.strip() for p in raw.split(";")] if raw else [DEFAULT_PROTOCOL]
    out: list[str] = []
    for name in names:
        if not name:
            row.bad("protocol", f"an empty protocol in {raw!r}")
            continue
        if name in list_protocols():
            out.append(name)
            continue
        p = Path(name).expanduser()
        p = p if p.is_absolute() else row.base / p
        if not p.is_file():
            row.bad(
                "protocol",
                f"no protocol {name!r}: not a shipped protocol "
                f"({', '.join(list_protocols())}) and not a file ({p})",
            )
            continue
        key = str(p.resolve())
        if key not in known:
            try:
                load_protocol(key)
                known[key] = None
            except RtplanError as exc:
                known[key] = str(exc)
        problem = known[key]
        if problem is not None:
            row.bad("protocol", problem)
            continue
        out.append(key)
    if len(set(out)) != len(out):
        row.bad("protocol", f"a protocol is listed twice in {raw!r}")
    return tuple(out)


def _check_clinical(row: _Row) -> tuple[float | None, str | None]:
    psa = row.number("psa_ng_ml", 0.0, 1e6)
    tracer = row.text("tracer") or None
    if tracer is not None and (len(tracer) > _MAX_TRACER or not tracer.isprintable()):
        row.bad("tracer", f"must be printable text of at most {_MAX_TRACER} characters")
        tracer = None
    return psa, tracer


def _check_row(row: _Row, known_protocols: dict[str, str | None]) -> PatientRow | None:
    pid = _check_id(row)
    anatomy = _check_anatomy(row)
    lesions = _check_lesions(row, anatomy)
    protocols = _check_protocols(row, known_protocols)
    pet: str | None = None
    if row.text("pet"):
        pet = row.path("pet", row.text("pet"), folder=True)
    psa, tracer = _check_clinical(row)
    extra = tuple((k, v.strip()) for k, v in row.values.items() if k.startswith("x_"))
    if row.problems or anatomy is None or lesions is None:
        return None
    return PatientRow(
        patient_id=pid,
        anatomy=anatomy,
        lesions=lesions,
        protocols=protocols,
        pet=pet,
        psa_ng_ml=psa,
        tracer=tracer,
        extra=extra,
        where=row.where,
    )


def _column_problems(columns: Iterable[str], where: str) -> list[ManifestProblem]:
    cols = list(columns)
    out: list[ManifestProblem] = []
    for c in REQUIRED_COLUMNS:
        if c not in cols:
            out.append(ManifestProblem(where, "", c, "required column missing"))
    for c in cols:
        if c in MANIFEST_COLUMNS or c.startswith("x_"):
            continue
        close = difflib.get_close_matches(c, MANIFEST_COLUMNS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.append(
            ManifestProblem(
                where,
                "",
                c,
                f"unknown column{hint}; columns are {', '.join(MANIFEST_COLUMNS)} and x_<name> "
                "for other clinical fields",
            )
        )
    seen: set[str] = set()
    for c in cols:
        if c in seen:
            out.append(ManifestProblem(where, "", c, "column given twice"))
        seen.add(c)
    return out


def _metadata_problems(metadata: Mapping[str, str], where: str) -> list[ManifestProblem]:
    out = []
    for k, v in metadata.items():
        if k not in METADATA_KEYS:
            out.append(
                ManifestProblem(
                    where,
                    "",
                    k,
                    f"unknown cohort metadata key; keys are {', '.join(METADATA_KEYS)}",
                )
            )
        elif k == "like" and v not in LIKE_COHORTS:
            out.append(
                ManifestProblem(where, "", k, f"{v!r} is not one of {', '.join(LIKE_COHORTS)}")
            )
    return out


def manifest_from_records(
    records: Sequence[Mapping[str, str]],
    *,
    base_dir: str | Path = ".",
    metadata: Mapping[str, str] | None = None,
    wheres: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    source: str = "(records)",
    path: Path | None = None,
) -> Manifest:
    """Validate manifest rows given as text mappings (column -> value).

    Parameters
    ----------
    records : sequence of mapping of str to str
        One mapping per patient; missing keys and empty strings are missing values.
    base_dir : path
        Folder relative paths are relative to.
    metadata : mapping, optional
        Cohort metadata (``like``...).
    wheres : sequence of str, optional
        Where each record is (for messages); default ``"row <n>"``.
    columns : sequence of str, optional
        The header, when the records come from a table (checked for required and
        unknown columns); default: the union of the records' keys.
    source : str
        Name of the manifest for the error message.
    path : Path, optional
        The manifest file.

    Returns
    -------
    Manifest

    Raises
    ------
    ManifestError
        Listing every problem: columns, metadata, and each bad row and column.

    Examples
    --------
    >>> m = manifest_from_records(
    ...     [{"patient_id": "P1", "anatomy": "atlas:male_pelvis_postop", "lesions": "none"}]
    ... )
    >>> m.rows[0].protocols, m.rows[0].lesions.kind
    (('nrg_salvage',), 'none')
    """
    base = Path(base_dir).expanduser().resolve()
    cols = (
        list(columns) if columns is not None else list(dict.fromkeys(k for r in records for k in r))
    )
    problems = _column_problems(cols, "header")
    problems += _metadata_problems(metadata or {}, "metadata")
    if not records:
        problems.append(ManifestProblem("manifest", "", "", "no patient rows"))
    rows: list[PatientRow] = []
    known_protocols: dict[str, str | None] = {}
    first_seen: dict[str, str] = {}
    for n, rec in enumerate(records, start=1):
        where = wheres[n - 1] if wheres is not None else f"row {n}"
        raw = _Row(where, {k: "" if v is None else str(v) for k, v in rec.items()}, base)
        parsed = _check_row(raw, known_protocols)
        pid = raw.text("patient_id")
        if pid and pid in first_seen:
            raw.bad("patient_id", f"{pid!r} repeats the patient of {first_seen[pid]}")
            parsed = None
        elif pid:
            first_seen[pid] = where
        problems += raw.problems
        if parsed is not None:
            rows.append(parsed)
    if problems:
        raise ManifestError(source, problems)
    return Manifest(tuple(rows), dict(metadata or {}), path)


# ============================================================================ files
def _read_csv(path: Path) -> Manifest:
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines(keepends=True)
    metadata: dict[str, str] = {}
    skip = 0
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        skip += 1
        key, sep, value = stripped.lstrip("#").partition(":")
        if sep and re.fullmatch(r"\s*[A-Za-z_]+\s*", key):
            metadata[key.strip()] = value.strip()
    reader = csv.reader(io.StringIO("".join(lines[skip:])))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(str(path), [ManifestProblem("file", "", "", "no header row")]) from None
    records: list[dict[str, str]] = []
    wheres: list[str] = []
    start = reader.line_num
    for cells in reader:
        if not any(c.strip() for c in cells):
            start = reader.line_num
            continue
        where = f"line {skip + start + 1}"
        start = reader.line_num
        if len(cells) > len(header):
            extra_cells = [c for c in cells[len(header) :] if c.strip()]
            if extra_cells:
                raise ManifestError(
                    str(path),
                    [
                        ManifestProblem(
                            where, "", "", f"{len(cells)} cells for {len(header)} columns"
                        )
                    ],
                )
        records.append({h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header)})
        wheres.append(where)
    return manifest_from_records(
        records,
        base_dir=path.parent,
        metadata=metadata,
        wheres=wheres,
        columns=header,
        source=str(path),
        path=path,
    )


def _toml_text(value: object) -> str | None:
    """A TOML value as cell text; None when it has no text form."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ";".join(value)
    return None


def _read_toml(path: Path) -> Manifest:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(
            str(path), [ManifestProblem("file", "", "", f"not valid TOML: {exc}")]
        ) from None
    problems: list[ManifestProblem] = []
    for key in data:
        if key not in ("cohort", "patient"):
            problems.append(
                ManifestProblem("file", "", key, "unknown table; use [cohort] and [[patient]]")
            )
    cohort = data.get("cohort", {})
    metadata: dict[str, str] = {}
    if isinstance(cohort, dict):
        for k, v in cohort.items():
            text = _toml_text(v)
            if text is None:
                problems.append(ManifestProblem("[cohort]", "", k, "must be text or a number"))
            else:
                metadata[k] = text
    patients = data.get("patient", [])
    if not isinstance(patients, list):
        patients = []
        problems.append(ManifestProblem("file", "", "patient", "must be [[patient]] tables"))
    records: list[dict[str, str]] = []
    wheres: list[str] = []
    for n, table in enumerate(patients, start=1):
        where = f"patient {n}"
        rec: dict[str, str] = {}
        for k, v in table.items():
            text = _toml_text(v)
            if text is None:
                pid = str(table.get("patient_id", ""))
                problems.append(
                    ManifestProblem(
                        where, pid, k, f"{v!r} must be text, a number or a list of text"
                    )
                )
                continue
            rec[k] = text
        records.append(rec)
        wheres.append(where)
    columns = list(dict.fromkeys(k for t in patients for k in t))
    try:
        manifest = manifest_from_records(
            records,
            base_dir=path.parent,
            metadata=metadata,
            wheres=wheres,
            columns=columns,
            source=str(path),
            path=path,
        )
    except ManifestError as exc:
        raise ManifestError(str(path), [*problems, *exc.problems]) from None
    if problems:
        raise ManifestError(str(path), problems)
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a cohort manifest (``.csv`` or ``.toml``).

    Parameters
    ----------
    path : path
        The manifest file; relative paths inside it are relative to its folder.

    Returns
    -------
    Manifest

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ManifestError
        Listing every bad row and column at once (an :class:`~rtplan.InvalidInputError`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        return _read_toml(p)
    if suffix in (".csv", ".txt"):
        return _read_csv(p)
    raise InvalidInputError(f"manifest {p}: expected a .csv or .toml file")


def _columns_of(rows: Sequence[PatientRow]) -> list[str]:
    recs = [r.record() for r in rows]
    cols = [c for c in MANIFEST_COLUMNS if c in REQUIRED_COLUMNS or any(rec.get(c) for rec in recs)]
    extra = sorted({k for rec in recs for k in rec if k.startswith("x_")})
    return cols + extra


def _toml_value(column: str, text: str) -> str:
    if column in ("scale", "bladder_filling", "rectal_filling", "psa_ng_ml"):
        return repr(float(text))
    if column == "seed":
        return str(int(text))
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def manifest_text(manifest: Manifest, *, fmt: Literal["csv", "toml"] = "csv") -> str:
    """The manifest as CSV or TOML text (paths as stored, absolute).

    Parameters
    ----------
    manifest : Manifest
        The manifest.
    fmt : {"csv", "toml"}
        Output format.

    Returns
    -------
    str
    """
    cols = _columns_of(manifest.rows)
    if fmt == "toml":
        lines = []
        if manifest.metadata:
            lines.append("[cohort]")
            for k, v in manifest.metadata.items():
                lines.append(f"{k} = {_toml_value(k, v)}")
            lines.append("")
        for row in manifest.rows:
            rec = row.record()
            lines.append("[[patient]]")
            lines += [f"{c} = {_toml_value(c, rec[c])}" for c in cols if rec.get(c)]
            lines.append("")
        return "\n".join(lines)
    buf = io.StringIO()
    for k, v in manifest.metadata.items():
        buf.write(f"# {k}: {v}\n")
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in manifest.rows:
        writer.writerow(row.record())
    return buf.getvalue()


def write_manifest(
    manifest: Manifest, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write a manifest as CSV or TOML (by the file's suffix), atomically.

    Parameters
    ----------
    manifest : Manifest
        The manifest.
    path : path
        ``.csv`` or ``.toml`` file to write.
    force : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    OutputExistsError
        When the file exists and ``force`` is not given.
    """
    from rtplan.cohort.results import atomic_write_text

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".toml"):
        raise InvalidInputError(f"manifest {p}: the file name must end in .csv or .toml")
    if p.exists() and not force:
        raise OutputExistsError(f"{p} exists; choose another file or replace it with force")
    fmt: Literal["csv", "toml"] = "toml" if suffix == ".toml" else "csv"
    return atomic_write_text(p, manifest_text(manifest, fmt=fmt))
