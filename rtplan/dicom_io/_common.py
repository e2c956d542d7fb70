"""Shared pieces of the DICOM package: SOP classes, tag names, UIDs, DS text, safe output.

Private to :mod:`rtplan.dicom_io` apart from the SOP Class UID constants and
:class:`PatientInfo`, which the package re-exports.
"""

from __future__ import annotations

import datetime as _dt
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from rtplan._io import atomic_path
from rtplan.errors import DicomInputError, InvalidInputError, OutputExistsError, RtplanWarning

__all__ = [
    "CT_IMAGE_STORAGE",
    "PET_IMAGE_STORAGE",
    "RTDOSE_STORAGE",
    "RTPLAN_STORAGE",
    "RTSTRUCT_STORAGE",
    "PatientInfo",
]

#: SOP Class UIDs used here.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
_DICOMDIR_STORAGE = "1.2.840.10008.1.3.10"
#: Referenced SOP Class of the study in an RT Referenced Study Sequence (as rt-utils writes).
_STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"

_MANUFACTURER = "rtplan"
_DS_MAX_CHARS = 16

#: What a reader does with invalid content: raise, warn and skip it, or skip it silently.
OnInvalid = Literal["raise", "warn", "ignore"]

#: The name prefix of this package's modules (frames skipped when a warning is attributed).
_PACKAGE = __name__.rpartition(".")[0]


# ====================================================================== patient
@dataclass(frozen=True)
class PatientInfo:
    """Patient and study attributes copied to derived objects; never logged or printed.

    The ``repr`` hides every identifier, so a ``CtSeries`` can be printed or logged safely.
    """

    name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    birth_date: str = field(default="", repr=False)
    sex: str = field(default="", repr=False)
    study_date: str = field(default="", repr=False)
    study_time: str = field(default="", repr=False)
    study_id: str = field(default="", repr=False)
    accession_number: str = field(default="", repr=False)
    referring_physician_name: str = field(default="", repr=False)
    study_description: str = field(default="", repr=False)


#: The patient and study attributes copied to derived objects: PatientInfo field, keyword,
#: VR.
_PATIENT_ATTRIBUTES = (
    ("name", "PatientName", "PN"),
    ("patient_id", "PatientID", "LO"),
    ("birth_date", "PatientBirthDate", "DA"),
    ("sex", "PatientSex", "CS"),
    ("study_date", "StudyDate", "DA"),
    ("study_time", "StudyTime", "TM"),
    ("study_id", "StudyID", "SH"),
    ("accession_number", "AccessionNumber", "SH"),
    ("referring_physician_name", "ReferringPhysicianName", "PN"),
    ("study_description", "StudyDescription", "LO"),
)
#: PatientSex (0010,0040) enumerated values (DICOM PS3.3 C.7.1.1).
_PATIENT_SEXES = ("M", "F", "O")


def _patient_info(ds: Dataset, path: Path | str) -> PatientInfo:
    """The patient and study attributes of ``ds`` (``""`` for an absent one).

    A value that is not valid for its VR (a birth date that is no date, a name component
    over 64 characters, an accession number over 16...) or, for PatientSex, not M, F or
    O, is left empty with an :class:`RtplanWarning` naming the tag (never the value), so
    that the objects rtplan writes stay valid DICOM even when the input is not.
    """
    values: dict[str, str] = {}
    dropped: list[str] = []
    for field_name, keyword, vr in _PATIENT_ATTRIBUTES:
        value = _value(ds, keyword, path)
        text = "" if value is None else str(value)
        if text and not _valid_value(vr, keyword, text):
            dropped.append(_tag_name(keyword))
            text = ""
        values[field_name] = text
    if dropped:
        warnings.warn(
            f"{path}: {', '.join(dropped)} not valid DICOM; left empty in the files rtplan writes",
            RtplanWarning,
            stacklevel=_caller_stacklevel(),
        )
    return PatientInfo(**values)


def _valid_value(vr: str, keyword: str, text: str) -> bool:
    """Whether ``text`` is a valid value of the VR ``vr`` (and of PatientSex's values)."""
    if keyword == "PatientSex":
        return text.strip() in _PATIENT_SEXES
    try:
        pydicom.valuerep.validate_value(vr, text, pydicom.config.RAISE)
    except ValueError:
        return False
    return True


# ====================================================================== tags
def _tag_name(keyword: str) -> str:
    """``keyword`` with its tag, e.g. ``"Modality (0008,0060)"``, for error messages."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


#: What pydicom raises when it converts an element's bytes to a value (a malformed number,
#: a value of the wrong length, text it cannot decode).
_VALUE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError, EOFError)


# The value of a DICOM element is whatever its VR decodes to (str, float, list, Sequence...).
def _value(ds: Dataset, keyword: str, path: Path | str) -> Any:
    """The value of ``keyword`` in ``ds``, None when absent.

    An element pydicom cannot decode raises an error naming the file and tag.
    """
    try:
        return ds.get(keyword, None)
    except _VALUE_ERRORS as exc:
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc


def _is_empty(value: object) -> bool:
    """True for an absent or empty element value (None, blank text, no values)."""
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


# The value of a DICOM element is whatever its VR decodes to (str, float, list, Sequence...).
def _require(ds: Dataset, keyword: str, path: Path | str) -> Any:
    """The value of ``keyword`` in ``ds``; an error naming the file and tag when absent or empty."""
    value = _value(ds, keyword, path)
    if _is_empty(value):
        raise DicomInputError(f"{path}: tag {_tag_name(keyword)} is missing or empty")
    return value


def _finite(value: object, keyword: str, path: Path | str) -> npt.NDArray[np.float64]:
    """``value`` (one number or several) as a 1-D float array.

    A value that is not a number or not finite (NaN, infinity) raises an error naming the
    file and tag.
    """
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    except _VALUE_ERRORS as exc:
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} is not a number: {value!r}"
        ) from exc
    if not np.all(np.isfinite(arr)):
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} holds a value that is not a finite number: "
            f"{arr.tolist()}"
        )
    return arr


def _numbers(
    ds: Dataset, keyword: str, path: Path | str, count: int | None = None
) -> npt.NDArray[np.float64]:
    """The finite numbers of the required tag ``keyword`` (``count`` of them when given)."""
    arr = _finite(_require(ds, keyword, path), keyword, path)
    if count is not None and arr.size != count:
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} must have {count} values, got {arr.size}"
        )
    return arr


def _number(ds: Dataset, keyword: str, path: Path | str, default: float | None = None) -> float:
    """The finite number of ``keyword``; ``default`` when absent or empty (required without)."""
    value = _value(ds, keyword, path)
    if _is_empty(value):
        if default is None:
            raise DicomInputError(f"{path}: tag {_tag_name(keyword)} is missing or empty")
        return default
    arr = _finite(value, keyword, path)
    if arr.size != 1:
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} must have one value, got {arr.tolist()}"
        )
    return float(arr[0])


def _integer(ds: Dataset, keyword: str, path: Path | str, default: int | None = None) -> int:
    """The whole number of ``keyword``; ``default`` when absent or empty (required without)."""
    value = _number(ds, keyword, path, None if default is None else float(default))
    if value != round(value):
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} must be a whole number, got {value:g}"
        )
    return int(value)


def _hint(argument: str) -> str:
    """``"pass <argument>="``: how to give a reader the value a message asks for.

    Always this form, the Python keyword argument, so that the command line can name its
    own option instead (:mod:`rtplan.cli` rewrites ``<argument>=`` into the option that
    sets it).
    """
    return f"pass {argument}="


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this package, for ``warnings.warn``.

    Attributes a warning to the user's call of a public reader however deep inside the
    package it is raised (as pandas' ``find_stack_level`` does).
    """
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _in_package(str(frame.f_globals.get("__name__", ""))):
        frame = frame.f_back
        level += 1
    return level


def _in_package(module_name: str) -> bool:
    return module_name == _PACKAGE or module_name.startswith(_PACKAGE + ".")


def _handle_invalid(
    problem: str,
    on_invalid: OnInvalid,
    consequence: str = "skipped",
    exc: type[Exception] = DicomInputError,
) -> None:
    """Raise ``exc(problem)``, warn ``"<problem>; <consequence>"`` (RtplanWarning), or pass.

    The consequence (what the reader does instead) is said only in the warning: an error
    stops the read, so its message never says "skipped".
    """
    if on_invalid == "raise":
        raise exc(problem)
    if on_invalid == "warn":
        warnings.warn(f"{problem}; {consequence}", RtplanWarning, stacklevel=_caller_stacklevel())


# ====================================================================== UIDs, dates, meta
def _new_uid(seed: str | None, *parts: object) -> str:
    """A new UID; deterministic (from ``seed`` and ``parts``) when a seed is given."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)])


def _now() -> tuple[str, str]:
    """The current date and time as DICOM DA and TM text."""
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    """File Meta Information for an explicit-VR little-endian file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    return meta


def _check_lo(value: str, name: str, limit: int = 64) -> str:
    """``value`` when it fits a LO (or shorter) element, else an error naming ``name``."""
    if len(value) > limit or "\\" in value:
        raise InvalidInputError(
            f"{name} must be at most {limit} characters without '\\', got {value!r}"
        )
    return value


# ====================================================================== DS text
def _ds_str(value: float) -> str:
    """A DS string of at most 16 characters (0.0001 mm resolution for coordinates)."""
    v = round(float(value), 4)
    s = f"{v:.4f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    if len(s) > _DS_MAX_CHARS:
        s = f"{v:.10g}"
        if len(s) > _DS_MAX_CHARS:
            raise InvalidInputError(f"{value} cannot be written as a 16-character DS")
    return s


def _ds_geom(value: float) -> str:
    """A DS string of at most 16 characters with as many digits as fit (geometry tags)."""
    v = float(value)
    if v == 0:
        return "0"
    return pydicom.valuerep.format_number_as_ds(v)


def _ds_strs(values: npt.ArrayLike) -> list[str]:
    """Vectorised :func:`_ds_str` for coordinates (|value| < 1e9 mm)."""
    v = np.round(np.asarray(values, float), 4)
    if v.size and np.abs(v).max() >= 1e9:
        return [_ds_str(x) for x in v]
    s = np.char.rstrip(np.char.rstrip(np.char.mod("%.4f", v), "0"), ".")
    s = np.where((s == "-0") | (s == ""), "0", s)
    texts: list[str] = s.tolist()
    return texts


def _raw_element(tag: BaseTag, vr: str, value: bytes) -> RawDataElement:
    """A raw explicit-VR little-endian element holding an already valid, encoded value.

    Setting thousands of contour items (tens of thousands of coordinates) through
    pydicom's value conversion and validation takes seconds; the values here are valid
    (DS text from :func:`_ds_str`, UIDs, integers), so they are stored as bytes, padded to
    an even length, and written as they are.
    """
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return RawDataElement(tag, vr, len(value), value, 0, False, True)


# ====================================================================== output safety
def _check_output(
    path: Path,
    *,
    overwrite: bool,
    inputs: Sequence[Path],
    input_folder: Path | None,
    allow_input_folder: bool,
) -> None:
    """Refuse an output path that is an input, lies in the input folder, or exists."""
    resolved = path.resolve()
    for f in inputs:
        if f.resolve() == resolved:
            raise InvalidInputError(f"refusing to overwrite the input file {path}")
    if input_folder is not None and not allow_input_folder:
        folder = input_folder.resolve()
        if resolved.parent == folder or folder in resolved.parents:
            raise InvalidInputError(
                f"refusing to write {path.name} into the input CT folder {input_folder}; choose "
                "another folder or pass allow_input_folder=True (API)"
            )
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (API) to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path")


def _atomic_write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` to ``path`` through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path
