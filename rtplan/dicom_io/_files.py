"""Finding and reading the DICOM files of a folder and grouping them into series (private).

A folder scan reads every file's header and skips, silently, the files that do not parse
as DICOM (:data:`_NOT_DICOM_ERRORS`); an error of the operating system (a file that cannot
be opened or read) is not a "not DICOM" answer and propagates.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rtplan._typing import FloatArray
from rtplan.dicom_io._common import _DICOMDIR_STORAGE, _tag_name
from rtplan.errors import DicomInputError

__all__: list[str] = []

#: What pydicom raises for bytes that do not parse as DICOM: no preamble and no dataset
#: (InvalidDicomError), a value of the wrong length (BytesLengthException), a sequence or
#: item that runs past the end of the file (EOFError), an unknown VR (NotImplementedError)
#: or an undecodable value (ValueError). pydicom also raises an :class:`OSError` without an
#: ``errno`` ("No tag to read at file position ...") for a truncated element; see
#: :func:`_is_parse_error`.
_NOT_DICOM_ERRORS: tuple[type[Exception], ...] = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    NotImplementedError,
    ValueError,
)

#: What decoding PixelData raises besides the parse errors: a missing or inconsistent
#: image attribute (AttributeError, ValueError), an unsupported transfer syntax
#: (NotImplementedError) or no decoder able to decode it (RuntimeError).
_PIXEL_DATA_ERRORS: tuple[type[Exception], ...] = (
    *_NOT_DICOM_ERRORS,
    AttributeError,
    RuntimeError,
)


def _is_parse_error(exc: OSError) -> bool:
    """True for pydicom's own OSError about unparseable bytes (the OS sets ``errno``)."""
    return exc.errno is None


def _find_dicom_files(folder: str | os.PathLike[str]) -> list[tuple[Path, Dataset]]:
    """Every DICOM file under ``folder`` (recursively) with its header (no pixel data).

    Files that are not DICOM (no ``DICM`` preamble / unparseable), hidden files and
    DICOMDIR files are skipped silently.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DicomInputError(f"{root} is not a folder (expected a folder of DICOM files)")
    found: list[tuple[Path, Dataset]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            ds = _read_header(path)
            if ds is not None:
                found.append((path, ds))
    return found


def _dcmread(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file, also one without the 128-byte preamble and ``DICM`` prefix.

    Files written without File Meta Information (older systems, pydicom's own example
    RTSTRUCT) are read with ``force=True`` and accepted only when they hold a
    SOPClassUID; their transfer syntax is set from the encoding pydicom detected.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # a forced read of a non-DICOM file makes pydicom warn about its guessed encoding;
        # such files are skipped, so the warning would only confuse the user
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" not in ds:
            raise
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit
                else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            )
        return ds


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file in a folder scan; None for a file that is not DICOM."""
    try:
        ds = _dcmread(path, stop_before_pixels=True)
    except _NOT_DICOM_ERRORS:
        return None
    except OSError as exc:
        if not _is_parse_error(exc):
            raise  # the file cannot be read (permissions, I/O): a real error
        return None
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_STORAGE or "DirectoryRecordSequence" in ds:
        return None
    return ds


def _select_series(
    found: list[tuple[Path, Dataset]],
    folder: str | os.PathLike[str],
    *,
    modality: str,
    sop_classes: tuple[str, ...],
    series_uid: str | None,
) -> list[tuple[Path, Dataset]]:
    """The files of one series of ``modality``: by UID, or the only one; else an error."""
    groups = _group_by_series(found, modality=modality, sop_classes=sop_classes)
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomInputError(
                f"no {modality} series with SeriesInstanceUID {series_uid} under {folder}; "
                f"found: {_describe_groups(groups) or 'none'}"
            )
        return groups[series_uid]
    if not groups:
        modalities = sorted({str(ds.get("Modality", "?")) for _, ds in found})
        raise DicomInputError(
            f"no {modality} series under {folder} ({len(found)} DICOM files found, "
            f"modalities: {', '.join(modalities) or 'none'})"
        )
    if len(groups) > 1:
        raise DicomInputError(
            f"{len(groups)} {modality} series under {folder}; choose one with series_uid=: "
            f"{_describe_groups(groups)}"
        )
    return next(iter(groups.values()))


def _group_by_series(
    found: list[tuple[Path, Dataset]], *, modality: str, sop_classes: tuple[str, ...]
) -> dict[str, list[tuple[Path, Dataset]]]:
    """The files of ``modality`` (or of one of ``sop_classes``) by SeriesInstanceUID."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, ds in found:
        if str(ds.get("Modality", "")) != modality and str(ds.get("SOPClassUID", "")) not in (
            sop_classes
        ):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            raise DicomInputError(f"{path}: tag {_tag_name('SeriesInstanceUID')} is missing")
        groups.setdefault(uid, []).append((path, ds))
    return groups


def _describe_groups(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    """One line per series: UID, SeriesNumber, SeriesDescription and number of files."""
    parts = []
    for uid, items in groups.items():
        ds = items[0][1]
        desc = str(ds.get("SeriesDescription", "") or "")
        number = ds.get("SeriesNumber", "")
        parts.append(f"{uid} (SeriesNumber {number}, {desc!r}, {len(items)} files)")
    return "; ".join(parts)


def _pixels(path: Path, rescale: bool = True) -> FloatArray:
    """The pixels of a single-frame image file, times RescaleSlope plus RescaleIntercept."""
    try:
        ds = _dcmread(path)
        arr = ds.pixel_array
    except OSError as exc:
        if not _is_parse_error(exc):
            raise
        raise _pixel_data_error(path, exc) from exc
    except _PIXEL_DATA_ERRORS as exc:
        raise _pixel_data_error(path, exc) from exc
    out = np.asarray(arr, dtype=np.float64)
    if rescale:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        out = out * slope + intercept
    return out


def _pixel_data_error(path: Path, exc: Exception) -> DicomInputError:
    return DicomInputError(
        f"{path}: cannot decode tag {_tag_name('PixelData')} ({type(exc).__name__}: {exc})"
    )
