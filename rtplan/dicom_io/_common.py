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


def _patient_info(ds: Dataset) -> PatientInfo:
    """The patient and study attributes of ``ds`` (``""`` for an absent one)."""

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value)

    return PatientInfo(
        name=text("PatientName"),
        patient_id=text("PatientID"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_id=text("StudyID"),
        accession_number=text("AccessionNumber"),
        referring_physician_name=text("ReferringPhysicianName"),
        study_description=text("StudyDescription"),
    )


# ====================================================================== tags
def _tag_name(keyword: str) -> str:
    """``keyword`` with its tag, e.g. ``"Modality (0008,0060)"``, for error messages."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


# The value of a DICOM element is whatever its VR decodes to (str, float, list, Sequence...).
def _require(ds: Dataset, keyword: str, path: Path | str) -> Any:
    """The value of ``keyword`` in ``ds``; an error naming the file and tag when absent or empty."""
    value = ds.get(keyword, None)
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        raise DicomInputError(f"{path}: tag {_tag_name(keyword)} is missing or empty")
    return value


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
    message: str, on_invalid: OnInvalid, exc: type[Exception] = DicomInputError
) -> None:
    """Raise ``exc(message)``, warn with :class:`RtplanWarning`, or do nothing."""
    if on_invalid == "raise":
        raise exc(message)
    if on_invalid == "warn":
        warnings.warn(message, RtplanWarning, stacklevel=_caller_stacklevel())


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
                "another folder or pass allow_input_folder=True"
            )
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path")


def _atomic_write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` to ``path`` through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path
