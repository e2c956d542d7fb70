"""Finding and reading the DICOM files of a folder and grouping them into series (private).

A folder scan reads every regular file's header and skips, silently, the files that do
not parse as DICOM (:data:`_NOT_DICOM_ERRORS`); an error of the operating system (a file
that cannot be opened or read) is not a "not DICOM" answer and propagates. Only regular
files are opened: symbolic links are followed to regular files and to folders (each folder
read once, never a folder holding the scanned one), and anything else (a FIFO, a socket,
a device such as ``/dev/zero``, which would block or never end) is skipped with an
:class:`~rtplan.errors.RtplanWarning` naming it.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rtplan._typing import FloatArray
from rtplan.dicom_io._common import (
    _DICOMDIR_STORAGE,
    _caller_stacklevel,
    _hint,
    _number,
    _tag_name,
)
from rtplan.errors import DicomInputError, RtplanWarning

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
    DICOMDIR files are skipped silently, and so is a second path to a file already read
    (a symbolic link); files that are not regular files are skipped with a warning. A
    symbolic link to a folder is followed unless the folder overlaps the scanned one or
    another followed folder (which is read anyway, or would loop).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DicomInputError(f"{root} is not a folder (expected a folder of DICOM files)")
    found: list[tuple[Path, Dataset]] = []
    linked = [os.path.realpath(root)]
    files_seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = _folders_to_walk(Path(dirpath), dirnames, linked)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            real = os.path.realpath(path)
            if name.startswith(".") or real in files_seen or not _is_regular_file(path):
                continue
            files_seen.add(real)
            ds = _read_header(path)
            if ds is not None:
                found.append((path, ds))
    return found


def _folders_to_walk(parent: Path, names: list[str], linked: list[str]) -> list[str]:
    """The sub-folders of ``parent`` to descend into, sorted (hidden ones left out).

    A symbolic link to a folder is kept, and its target added to ``linked`` (which starts
    with the scanned folder), unless the target overlaps (is, holds or lies in) a folder
    of ``linked``.
    """
    keep = []
    for name in sorted(d for d in names if not d.startswith(".")):
        path = parent / name
        if path.is_symlink():
            real = os.path.realpath(path)
            if any(_overlaps(real, other) for other in linked):
                continue
            linked.append(real)
        keep.append(name)
    return keep


def _overlaps(a: str, b: str) -> bool:
    """True when the real paths ``a`` and ``b`` are the same folder or one holds the other."""
    a_, b_ = a.rstrip(os.sep) + os.sep, b.rstrip(os.sep) + os.sep
    return a_.startswith(b_) or b_.startswith(a_)


#: Kinds of files that are not regular files, as ``(stat test, text)``.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _is_regular_file(path: Path) -> bool:
    """True for a regular file (a link is followed); False, with a warning, for the rest.

    A FIFO would block the reader, a character device (``/dev/zero``, ``/dev/urandom``)
    never ends; neither is opened. A broken link raises the operating system's error.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return True
    if stat.S_ISDIR(mode):  # a link to a folder listed among files: never here
        return False
    kind = next((text for test, text in _SPECIAL_FILES if test(mode)), "a special file")
    warnings.warn(
        f"{path} is {kind}, not a regular file; skipped",
        RtplanWarning,
        stacklevel=_caller_stacklevel(),
    )
    return False


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


#: What reading a file that is not (or no longer) a whole DICOM file raises.
_READ_ERRORS: tuple[type[Exception], ...] = (*_NOT_DICOM_ERRORS, OSError)


def _read_file(path: Path, what: str) -> Dataset:
    """The dataset of the single file ``path`` (a ``what``, e.g. "an RTSTRUCT file").

    Only a regular file is opened (a FIFO would block, a device never end); a file that
    does not parse raises an error naming it, an operating-system error propagates.
    """
    if not path.exists():
        raise DicomInputError(f"{path}: no such file (expected {what})")
    if not path.is_file():
        raise DicomInputError(f"{path}: not a regular file (expected {what})")
    try:
        return _dcmread(path)
    except _READ_ERRORS as exc:
        if isinstance(exc, OSError) and not _is_parse_error(exc):
            raise
        raise DicomInputError(f"{path}: not a readable DICOM file ({exc})") from exc


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
            f"{len(groups)} {modality} series under {folder}; choose one "
            f"({_hint('series_uid')} with its SeriesInstanceUID): {_describe_groups(groups)}"
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


def _pixels(path: Path, rescale: bool = True, max_abs: float | None = None) -> FloatArray:
    """The pixels of a single-frame image file, times RescaleSlope plus RescaleIntercept.

    RescaleSlope must be a finite number > 0 and RescaleIntercept finite (absent: 1 and
    0); the rescaled values must be finite and, when ``max_abs`` is given, at most that in
    magnitude. Otherwise an error names the file and the tags.
    """
    ds: Dataset | None = None
    try:
        ds = _dcmread(path)
        arr = ds.pixel_array
    except OSError as exc:
        if not _is_parse_error(exc):
            raise
        raise _pixel_data_error(path, exc, ds) from exc
    except _PIXEL_DATA_ERRORS as exc:
        raise _pixel_data_error(path, exc, ds) from exc
    out = np.asarray(arr, dtype=np.float64)
    if not rescale:
        return out
    slope = _number(ds, "RescaleSlope", path, 1.0)
    if slope <= 0:
        raise DicomInputError(
            f"{path}: tag {_tag_name('RescaleSlope')} is {slope:g}; it must be greater than 0"
        )
    intercept = _number(ds, "RescaleIntercept", path, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        out = out * slope + intercept
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if not np.isfinite(peak) or (max_abs is not None and peak > max_abs):
        limit = "" if max_abs is None else f" (at most {max_abs:g} expected)"
        raise DicomInputError(
            f"{path}: pixel values times {_tag_name('RescaleSlope')} {slope:g} plus "
            f"{_tag_name('RescaleIntercept')} {intercept:g} reach {peak:g}{limit}; check "
            "the rescale tags"
        )
    return out


def _pixel_data_error(path: Path, exc: Exception, ds: Dataset | None) -> DicomInputError:
    """The error for PixelData that cannot be decoded, naming its transfer syntax."""
    uid = None if ds is None else ds.file_meta.get("TransferSyntaxUID", None)
    syntax = "" if uid is None else f"{uid.name}; "
    return DicomInputError(
        f"{path}: cannot decode tag {_tag_name('PixelData')} ({syntax}{type(exc).__name__}: "
        f"{exc}); compressed images need the pylibjpeg plugins (pylibjpeg, "
        "pylibjpeg-libjpeg, pylibjpeg-openjpeg) that rtplan depends on"
    )
